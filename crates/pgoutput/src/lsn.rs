//! Log sequence numbers and Postgres timestamps.
//!
//! Both live here rather than in the replication client because every layer
//! that talks about WAL positions or commit times (decoder, ack tracker,
//! status updates, logs) must agree on one representation.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A position in the write-ahead log: a byte offset into the WAL stream.
///
/// Postgres prints an LSN as two hexadecimal halves, `XXXXXXXX/YYYYYYYY`
/// (high 32 bits / low 32 bits, no leading zeros), e.g. `16/B374D848`.
/// [`Display`](fmt::Display) and [`FromStr`] use exactly that format so
/// values can be pasted between our logs, `pg_replication_slots` and
/// `START_REPLICATION` commands without conversion.
///
/// Ordering is plain numeric ordering, which is WAL order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

impl Lsn {
    /// `0/0`: "no position". `START_REPLICATION ... 0/0` means "resume from
    /// the slot's confirmed flush position".
    pub const ZERO: Lsn = Lsn(0);

    /// The raw 64-bit WAL byte position.
    pub const fn as_u64(self) -> u64 {
        self.0
    }
}

impl From<u64> for Lsn {
    fn from(value: u64) -> Self {
        Lsn(value)
    }
}

impl From<Lsn> for u64 {
    fn from(value: Lsn) -> Self {
        value.0
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

/// Why a string is not an LSN in Postgres' `X/Y` notation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid LSN {input:?}: expected two hexadecimal numbers of 1 to 8 digits separated by '/', like 16/B374D848")]
pub struct LsnParseError {
    input: String,
}

impl LsnParseError {
    /// The text that failed to parse.
    pub fn input(&self) -> &str {
        &self.input
    }
}

impl FromStr for Lsn {
    type Err = LsnParseError;

    /// Parses `X/Y` the way Postgres' `pg_lsn` input does: each half is 1 to 8
    /// hex digits (either case), nothing else is allowed — no sign, no
    /// whitespace, no `0x` prefix.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || LsnParseError {
            input: s.to_owned(),
        };
        let (hi, lo) = s.split_once('/').ok_or_else(err)?;
        let half = |part: &str| -> Option<u64> {
            if part.is_empty() || part.len() > 8 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
                return None;
            }
            u32::from_str_radix(part, 16).ok().map(u64::from)
        };
        let hi = half(hi).ok_or_else(err)?;
        let lo = half(lo).ok_or_else(err)?;
        Ok(Lsn((hi << 32) | lo))
    }
}

/// Seconds between the Unix epoch and the Postgres epoch (2000-01-01 00:00 UTC).
pub const PG_EPOCH_UNIX_SECS: u64 = 946_684_800;

fn pg_epoch() -> SystemTime {
    // Cannot overflow: 2000-01-01 is representable on every platform.
    UNIX_EPOCH + Duration::from_secs(PG_EPOCH_UNIX_SECS)
}

/// Converts a Postgres `TimestampTz` on the wire (microseconds since
/// 2000-01-01 UTC, may be negative) to a [`SystemTime`].
///
/// Every `i64` value is representable on Unix-like platforms. Where the
/// platform's `SystemTime` has a narrower range the result saturates to the
/// Postgres epoch instead of panicking, since the input comes from the
/// network.
pub fn pg_time_to_system_time(micros: i64) -> SystemTime {
    let epoch = pg_epoch();
    let offset = Duration::from_micros(micros.unsigned_abs());
    let t = if micros >= 0 {
        epoch.checked_add(offset)
    } else {
        epoch.checked_sub(offset)
    };
    t.unwrap_or(epoch)
}

/// Converts a [`SystemTime`] to Postgres wire time (microseconds since
/// 2000-01-01 UTC), saturating at `i64::MIN`/`i64::MAX` (about ±292,000
/// years), e.g. for the client clock field of standby status updates.
pub fn system_time_to_pg_time(time: SystemTime) -> i64 {
    match time.duration_since(pg_epoch()) {
        Ok(after) => i64::try_from(after.as_micros()).unwrap_or(i64::MAX),
        Err(before) => {
            let micros = before.duration().as_micros();
            // i64::MIN has magnitude i64::MAX + 1.
            i64::try_from(micros).map_or(i64::MIN, |m| -m)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_matches_postgres() {
        assert_eq!(Lsn(0).to_string(), "0/0");
        assert_eq!(Lsn(0x16_B374_D848).to_string(), "16/B374D848");
        assert_eq!(Lsn(u64::MAX).to_string(), "FFFFFFFF/FFFFFFFF");
        assert_eq!(Lsn(0x1_0000_0000).to_string(), "1/0");
    }

    #[test]
    fn parse_roundtrips_and_accepts_lowercase() {
        for v in [0, 1, 0x16_B374_D848, u64::MAX, 0xFFFF_FFFF, 0x1_0000_0000] {
            assert_eq!(Lsn(v).to_string().parse::<Lsn>(), Ok(Lsn(v)));
        }
        assert_eq!("16/b374d848".parse::<Lsn>(), Ok(Lsn(0x16_B374_D848)));
        assert_eq!("00000016/0000000A".parse::<Lsn>(), Ok(Lsn(0x16_0000_000A)));
    }

    #[test]
    fn parse_rejects_malformed() {
        for bad in [
            "",
            "/",
            "0/",
            "/0",
            "0",
            "0/0/0",
            "+1/0",
            "1/-0",
            " 1/0",
            "1/0 ",
            "0x1/0",
            "123456789/0",
            "0/123456789",
            "g/0",
            "1/é",
        ] {
            let err = bad.parse::<Lsn>().unwrap_err();
            assert_eq!(err.input(), bad);
        }
    }

    #[test]
    fn lsn_helpers() {
        assert_eq!(Lsn::ZERO, Lsn::default());
        assert_eq!(Lsn(42).as_u64(), 42);
        assert_eq!(u64::from(Lsn::from(7)), 7);
        assert!(Lsn(1) < Lsn(0x1_0000_0000));
    }

    #[test]
    fn pg_time_conversions() {
        assert_eq!(pg_time_to_system_time(0), pg_epoch());
        assert_eq!(
            pg_time_to_system_time(-946_684_800_000_000),
            UNIX_EPOCH,
            "negative values reach back before 2000"
        );
        // 2024-01-01T00:00:00Z is 1704067200 Unix seconds.
        let micros = (1_704_067_200 - 946_684_800) * 1_000_000 + 123_456;
        let t = pg_time_to_system_time(micros);
        assert_eq!(
            t.duration_since(UNIX_EPOCH).unwrap(),
            Duration::new(1_704_067_200, 123_456_000)
        );
        assert_eq!(system_time_to_pg_time(t), micros);
        assert_eq!(system_time_to_pg_time(UNIX_EPOCH), -946_684_800_000_000);
        for v in [i64::MIN, i64::MIN + 1, -1, 1, i64::MAX] {
            assert_eq!(system_time_to_pg_time(pg_time_to_system_time(v)), v);
        }
    }

    #[test]
    fn system_time_to_pg_time_truncates_sub_microsecond() {
        let t = pg_epoch() + Duration::from_nanos(1_999);
        assert_eq!(system_time_to_pg_time(t), 1);
    }
}

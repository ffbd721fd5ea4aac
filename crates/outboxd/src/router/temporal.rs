//! PostgreSQL's date and time text (DateStyle ISO, which the replication
//! connection asks for) to what Debezium makes of it: epoch days, milliseconds and
//! microseconds, and `ZonedTimestamp`'s ISO-8601 text in UTC.

/// Microseconds per second and per day.
const MICROS_PER_SECOND: i64 = 1_000_000;
const SECONDS_PER_DAY: i64 = 86_400;

/// `YYYY-MM-DD` → days since 1970-01-01.
pub fn parse_date(text: &str) -> Result<i32, String> {
    let days = civil_days(text).ok_or_else(|| format!("'{text}' is not an ISO date"))?;
    i32::try_from(days).map_err(|_| format!("'{text}' is out of range"))
}

/// `YYYY-MM-DD HH:MM:SS[.ffffff]` (no zone, read as UTC as Debezium does) or
/// the same with an offset (`+02`, `-05:30`) → microseconds since the epoch.
pub fn parse_timestamp(text: &str) -> Result<i64, String> {
    let bad = || format!("'{text}' is not an ISO timestamp");
    if text.ends_with(" BC") || text.contains("infinity") {
        return Err(format!(
            "'{text}' cannot be represented (outboxd supports timestamps from year 1 to 9999)"
        ));
    }
    let (date, rest) = text.split_once(' ').ok_or_else(bad)?;
    let days = civil_days(date).ok_or_else(bad)?;
    // The offset starts at the first sign after the time.
    let (time, offset) = match rest.find(['+', '-']) {
        Some(i) => (&rest[..i], Some(&rest[i..])),
        None => (rest, None),
    };
    let (hms, fraction) = time.split_once('.').unwrap_or((time, ""));
    let mut parts = hms.split(':').map(|p| p.parse::<i64>().ok());
    let (Some(Some(h)), Some(Some(m)), Some(Some(s)), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad());
    };
    if fraction.len() > 6 || !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let micros: i64 = format!("{fraction:0<6}").parse().map_err(|_| bad())?;
    let offset_seconds = match offset {
        Some(o) => parse_offset(o).ok_or_else(bad)?,
        None => 0,
    };
    let seconds = days * SECONDS_PER_DAY + h * 3600 + m * 60 + s - offset_seconds;
    Ok(seconds * MICROS_PER_SECOND + micros)
}

/// `+HH`, `+HH:MM` or `+HH:MM:SS` → seconds east of UTC.
fn parse_offset(text: &str) -> Option<i64> {
    let (sign, digits) = match text.as_bytes().first()? {
        b'+' => (1, &text[1..]),
        b'-' => (-1, &text[1..]),
        _ => return None,
    };
    let mut seconds = 0;
    for (part, unit) in digits.split(':').zip([3600, 60, 1]) {
        seconds += part.parse::<i64>().ok()? * unit;
    }
    Some(sign * seconds)
}

/// `YYYY-MM-DD` → days since 1970-01-01 (proleptic Gregorian).
fn civil_days(text: &str) -> Option<i64> {
    let mut parts = text.split('-');
    let (y, m, d) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || y.len() < 4 || m.len() != 2 || d.len() != 2 {
        return None;
    }
    let (y, m, d): (i64, i64, i64) = (y.parse().ok()?, m.parse().ok()?, d.parse().ok()?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return None;
    }
    // Howard Hinnant's days_from_civil.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    Some(era * 146_097 + doe - 719_468)
}

/// Days since 1970-01-01 → (year, month, day).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// Debezium's `ZonedTimestamp` text for a `timestamptz(precision)`: UTC with a `Z`,
/// exactly `precision` fractional digits (6 without a declared precision), or
/// none when the precision is 0 and the value has no fraction.
pub fn zoned_timestamp(micros: i64, precision: Option<u32>) -> String {
    let seconds = micros.div_euclid(MICROS_PER_SECOND);
    let fraction = micros.rem_euclid(MICROS_PER_SECOND);
    let (y, mo, d) = civil_from_days(seconds.div_euclid(SECONDS_PER_DAY));
    let tod = seconds.rem_euclid(SECONDS_PER_DAY);
    let mut out = format!(
        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}",
        tod / 3600,
        tod % 3600 / 60,
        tod % 60
    );
    let width = precision.unwrap_or(6).min(6) as usize;
    if width > 0 {
        let digits = format!("{fraction:06}");
        out.push('.');
        out.push_str(&digits[..width]);
    } else if fraction > 0 {
        // ISO_OFFSET_DATE_TIME: as many digits as needed.
        let digits = format!("{fraction:06}");
        out.push('.');
        out.push_str(digits.trim_end_matches('0'));
    }
    out.push('Z');
    out
}

/// Java's `long / long` (truncating towards zero), which Debezium uses to turn
/// microseconds into the record's milliseconds.
pub fn micros_to_millis(micros: i64) -> i64 {
    micros / 1000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_postgres_prints() {
        assert_eq!(parse_date("1970-01-01").unwrap(), 0);
        assert_eq!(parse_date("2024-02-29").unwrap(), 19_782);
        assert_eq!(
            parse_timestamp("2024-01-02 03:04:05.123456").unwrap(),
            1_704_164_645_123_456
        );
        assert_eq!(
            parse_timestamp("2024-01-02 03:04:05.12+02").unwrap(),
            1_704_157_445_120_000
        );
        assert_eq!(
            parse_timestamp("2024-01-02 03:04:05-05:30").unwrap(),
            1_704_164_645_000_000 + 19_800_000_000
        );
        assert_eq!(parse_timestamp("1969-12-31 23:59:59.9995").unwrap(), -500);
        assert!(parse_timestamp("infinity").is_err());
        assert!(parse_timestamp("2024-13-01 00:00:00").is_err());
    }

    /// As Debezium 3.7.0 wrote them (docs/configuration.md, "Column values").
    #[test]
    fn zoned_timestamps_as_debezium_writes_them() {
        let t = parse_timestamp("2024-01-02 03:04:05.12+02").unwrap();
        assert_eq!(zoned_timestamp(t, None), "2024-01-02T01:04:05.120000Z");
        let t = parse_timestamp("2024-01-02 03:04:05.1+00").unwrap();
        assert_eq!(zoned_timestamp(t, Some(3)), "2024-01-02T03:04:05.100Z");
        let t = parse_timestamp("2024-01-02 03:04:06+00").unwrap();
        assert_eq!(zoned_timestamp(t, Some(0)), "2024-01-02T03:04:06Z");
        assert_eq!(
            zoned_timestamp(-500_000, None),
            "1969-12-31T23:59:59.500000Z"
        );
        assert_eq!(micros_to_millis(-500), 0);
    }
}

//! The streaming replication sub-protocol carried in CopyData frames.
//!
//! Server → client: `w` XLogData (one pgoutput message with its WAL position) and
//! `k` primary keepalive. Client → server: `r` standby status update. Pure functions,
//! so they are tested on bytes and fuzzed with the decoder.

use std::time::SystemTime;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use outboxd_pgoutput::{system_time_to_pg_time, Lsn};

use crate::error::Error;

/// One server → client CopyData payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerFrame {
    /// WAL data: the pgoutput message starting at `wal_start`.
    XLogData {
        wal_start: Lsn,
        wal_end: Lsn,
        server_time: i64,
        data: Bytes,
    },
    /// The server's position and whether it wants an immediate status update.
    Keepalive {
        wal_end: Lsn,
        server_time: i64,
        reply_requested: bool,
    },
}

impl ServerFrame {
    /// Parses a CopyData payload.
    pub fn parse(mut payload: Bytes) -> Result<ServerFrame, Error> {
        let Some(&tag) = payload.first() else {
            return Err(Error::protocol("empty CopyData frame from the server"));
        };
        payload.advance(1);
        match tag {
            b'w' => {
                if payload.len() < 24 {
                    return Err(Error::protocol(format!(
                        "XLogData header truncated: {} of 24 bytes",
                        payload.len()
                    )));
                }
                let wal_start = Lsn(payload.get_u64());
                let wal_end = Lsn(payload.get_u64());
                let server_time = payload.get_i64();
                Ok(ServerFrame::XLogData {
                    wal_start,
                    wal_end,
                    server_time,
                    data: payload,
                })
            }
            b'k' => {
                if payload.len() != 17 {
                    return Err(Error::protocol(format!(
                        "keepalive must be 17 bytes after its tag, got {}",
                        payload.len()
                    )));
                }
                let wal_end = Lsn(payload.get_u64());
                let server_time = payload.get_i64();
                let reply_requested = payload.get_u8() != 0;
                Ok(ServerFrame::Keepalive {
                    wal_end,
                    server_time,
                    reply_requested,
                })
            }
            other => Err(Error::protocol(format!(
                "unknown replication frame '{}' (expected 'w' or 'k')",
                other.escape_ascii()
            ))),
        }
    }
}

/// A standby status update: how far we received (`write`) and what is durable
/// downstream (`flush`, `apply`). Only `flush` moves a logical slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusUpdate {
    pub write: Lsn,
    pub flush: Lsn,
    pub apply: Lsn,
    pub reply_requested: bool,
}

impl StatusUpdate {
    /// The `r` payload, stamped with `now`.
    pub fn encode(&self, now: SystemTime) -> Bytes {
        let mut buf = BytesMut::with_capacity(34);
        buf.put_u8(b'r');
        buf.put_u64(self.write.0);
        buf.put_u64(self.flush.0);
        buf.put_u64(self.apply.0);
        buf.put_i64(system_time_to_pg_time(now));
        buf.put_u8(u8::from(self.reply_requested));
        buf.freeze()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_xlogdata_zero_copy() {
        let mut b = BytesMut::new();
        b.put_u8(b'w');
        b.put_u64(0x16_B374_D848);
        b.put_u64(0x16_B374_D900);
        b.put_i64(12345);
        b.put_slice(b"Bpayload");
        let frame = ServerFrame::parse(b.freeze()).unwrap();
        assert_eq!(
            frame,
            ServerFrame::XLogData {
                wal_start: Lsn(0x16_B374_D848),
                wal_end: Lsn(0x16_B374_D900),
                server_time: 12345,
                data: Bytes::from_static(b"Bpayload"),
            }
        );
    }

    #[test]
    fn parses_keepalive() {
        let mut b = BytesMut::new();
        b.put_u8(b'k');
        b.put_u64(42);
        b.put_i64(7);
        b.put_u8(1);
        assert_eq!(
            ServerFrame::parse(b.freeze()).unwrap(),
            ServerFrame::Keepalive {
                wal_end: Lsn(42),
                server_time: 7,
                reply_requested: true
            }
        );
    }

    #[test]
    fn status_update_layout() {
        let update = StatusUpdate {
            write: Lsn(3),
            flush: Lsn(2),
            apply: Lsn(2),
            reply_requested: false,
        };
        let bytes = update.encode(SystemTime::UNIX_EPOCH);
        assert_eq!(bytes.len(), 34);
        assert_eq!(bytes[0], b'r');
        assert_eq!(&bytes[1..9], &3u64.to_be_bytes());
        assert_eq!(&bytes[9..17], &2u64.to_be_bytes());
        assert_eq!(&bytes[17..25], &2u64.to_be_bytes());
        // 1970 is 946 684 800 s before the Postgres epoch.
        assert_eq!(&bytes[25..33], &(-946_684_800_000_000i64).to_be_bytes());
        assert_eq!(bytes[33], 0);
    }

    #[test]
    fn rejects_bad_frames() {
        assert!(ServerFrame::parse(Bytes::new()).is_err());
        assert!(ServerFrame::parse(Bytes::from_static(b"w123")).is_err());
        assert!(ServerFrame::parse(Bytes::from_static(b"k1")).is_err());
        assert!(ServerFrame::parse(Bytes::from_static(b"x")).is_err());
    }

    proptest! {
        #[test]
        fn never_panics(data in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = ServerFrame::parse(Bytes::from(data));
        }
    }
}

//! The durable checkpoint: what this relay has delivered, kept in a compacted Kafka
//! topic under one key per relay identity (system identifier, database, slot).
//!
//! The slot never stands past the checkpoint: a position is confirmed to
//! PostgreSQL only after a checkpoint covering it is acknowledged by Kafka. So the
//! checkpoint, not the slot, is the record of what was delivered, and a slot that
//! vanished or moved can be told from one that merely lags (docs/architecture.md,
//! "The checkpoint").

use std::cmp::Ordering;
use std::fmt;
use std::time::SystemTime;

use outboxd_pgoutput::Lsn;
use serde::{Deserialize, Serialize};

/// The format written today; readers refuse newer ones.
pub const FORMAT: u32 = 1;

/// An event's place in the source: its transaction's commit LSN and its index
/// among the transaction's events. Ordered as the events were committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventPosition {
    #[serde(with = "lsn_text")]
    pub commit_lsn: Lsn,
    pub index: u32,
}

impl Ord for EventPosition {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.commit_lsn, self.index).cmp(&(other.commit_lsn, other.index))
    }
}

impl PartialOrd for EventPosition {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for EventPosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} #{}", self.commit_lsn, self.index)
    }
}

/// Who a checkpoint belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayIdentity {
    pub system_identifier: String,
    pub database: String,
    pub slot: String,
}

impl RelayIdentity {
    /// The record key in the checkpoint topic.
    pub fn key(&self) -> String {
        format!("{}/{}/{}", self.system_identifier, self.database, self.slot)
    }
}

/// One checkpoint record's value (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub format: u32,
    pub system_identifier: String,
    pub timeline: u32,
    pub database: String,
    pub slot: String,
    pub publication: String,
    pub tables: Vec<String>,
    /// Everything that committed before this position is delivered: the slot may
    /// be confirmed up to here, and a restart resumes here.
    #[serde(with = "lsn_text")]
    pub confirmed_lsn: Lsn,
    /// The last event delivered; `None` before the first one. In exactly-once mode
    /// it may lie inside a transaction not yet complete (past `confirmed_lsn`): a
    /// restart then skips that transaction's events up to it.
    pub last_event: Option<EventPosition>,
    pub outboxd_version: String,
    /// RFC 3339.
    pub written_at: String,
}

impl Checkpoint {
    pub fn identity(&self) -> RelayIdentity {
        RelayIdentity {
            system_identifier: self.system_identifier.clone(),
            database: self.database.clone(),
            slot: self.slot.clone(),
        }
    }

    /// The same checkpoint moved on to `confirmed_lsn` (and `last_event`, if any).
    pub fn advanced(&self, confirmed_lsn: Lsn, last_event: Option<EventPosition>) -> Checkpoint {
        Checkpoint {
            confirmed_lsn,
            last_event: last_event.or(self.last_event),
            written_at: now_rfc3339(),
            ..self.clone()
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Parses a stored value; `key` names it in the error.
    pub fn from_json(key: &str, value: &[u8]) -> Result<Checkpoint, String> {
        let checkpoint: Checkpoint = serde_json::from_slice(value).map_err(|e| {
            format!("the checkpoint under key '{key}' is not an outboxd checkpoint: {e}")
        })?;
        if checkpoint.format > FORMAT {
            return Err(format!(
                "the checkpoint under key '{key}' has format {} (this outboxd reads up to \
                 {FORMAT}): it was written by a newer outboxd; run that version",
                checkpoint.format
            ));
        }
        Ok(checkpoint)
    }
}

pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

/// LSNs as PostgreSQL prints them (`16/B374D848`), so operators can paste them.
mod lsn_text {
    use outboxd_pgoutput::Lsn;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(lsn: &Lsn, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(lsn)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Lsn, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn checkpoint(confirmed: u64, last_event: Option<(u64, u32)>) -> Checkpoint {
        Checkpoint {
            format: FORMAT,
            system_identifier: "7301".to_owned(),
            timeline: 1,
            database: "shop".to_owned(),
            slot: "outboxd".to_owned(),
            publication: "outboxd".to_owned(),
            tables: vec!["public.outbox".to_owned()],
            confirmed_lsn: Lsn(confirmed),
            last_event: last_event.map(|(lsn, index)| EventPosition {
                commit_lsn: Lsn(lsn),
                index,
            }),
            outboxd_version: "0.1.0".to_owned(),
            written_at: "2026-11-30T20:00:00.000Z".to_owned(),
        }
    }

    #[test]
    fn round_trips_as_json_with_postgres_lsns() {
        let c = checkpoint(0x16_B374_D848, Some((0x16_B374_D800, 3)));
        let json = String::from_utf8(c.to_json()).unwrap();
        assert!(json.contains(r#""confirmed_lsn":"16/B374D848""#), "{json}");
        assert!(
            json.contains(r#""commit_lsn":"16/B374D800","index":3"#),
            "{json}"
        );
        assert_eq!(Checkpoint::from_json("k", json.as_bytes()).unwrap(), c);
    }

    #[test]
    fn refuses_garbage_and_newer_formats() {
        let e = Checkpoint::from_json("k1", b"{}").unwrap_err();
        assert!(
            e.contains("k1") && e.contains("not an outboxd checkpoint"),
            "{e}"
        );
        let mut c = checkpoint(1, None);
        c.format = FORMAT + 1;
        let e = Checkpoint::from_json("k2", &c.to_json()).unwrap_err();
        assert!(e.contains("newer outboxd"), "{e}");
    }

    #[test]
    fn event_positions_order_by_commit_then_index() {
        let p = |lsn, index| EventPosition {
            commit_lsn: Lsn(lsn),
            index,
        };
        assert!(p(1, 9) < p(2, 0));
        assert!(p(2, 0) < p(2, 1));
        assert_eq!(p(3, 4).to_string(), "0/3 #4");
    }

    #[test]
    fn the_key_names_system_database_and_slot() {
        assert_eq!(checkpoint(0, None).identity().key(), "7301/shop/outboxd");
    }
}

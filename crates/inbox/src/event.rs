//! One Kafka record read as an outbox event: its id, its aggregate, its version.

use std::fmt;
use std::str::FromStr;

use rdkafka::message::{Headers, Message, OwnedMessage};

/// Header carrying the event id (Debezium's and outboxd's).
pub const ID_HEADER: &str = "id";
/// Header with the commit LSN of the source transaction, `X/Y` as PostgreSQL prints it.
pub const LSN_HEADER: &str = "outboxd.lsn";
/// Header with the event's 0-based index within its source transaction.
pub const INDEX_HEADER: &str = "outboxd.index";
/// Header that marks a record re-published by a replay (value `true`).
pub const REPLAY_HEADER: &str = "outboxd.replay";

/// Where an event sits in the source database's history: the commit LSN of its
/// transaction and its index within it. Versions of one aggregate's events grow in
/// commit order, so they order the aggregate's history (compared as (lsn, index)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version {
    /// Commit LSN as a 64-bit WAL position.
    pub lsn: u64,
    /// 0-based index within the transaction.
    pub index: u32,
}

impl Version {
    /// Reads the version from the `outboxd.lsn` and `outboxd.index` header values.
    pub fn from_headers(lsn: &str, index: &str) -> Result<Version, String> {
        Ok(Version {
            lsn: parse_lsn(lsn).ok_or_else(|| {
                format!("header {LSN_HEADER} is '{lsn}', not an LSN like 16/B374D848")
            })?,
            index: index.parse().map_err(|_| {
                format!("header {INDEX_HEADER} is '{index}', not a non-negative integer")
            })?,
        })
    }

    /// The LSN as PostgreSQL prints it (`16/B374D848`).
    pub fn lsn_text(&self) -> String {
        format!("{:X}/{:X}", self.lsn >> 32, self.lsn & 0xFFFF_FFFF)
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.lsn_text(), self.index)
    }
}

impl FromStr for Version {
    type Err = String;

    /// Parses the [`Display`](fmt::Display) form, `16/B374D848:3`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (lsn, index) = s
            .rsplit_once(':')
            .ok_or_else(|| format!("'{s}' is not a version like 16/B374D848:3"))?;
        Version::from_headers(lsn, index)
    }
}

/// `X/Y` with each half at most 32 bits of hex, as PostgreSQL writes an LSN.
fn parse_lsn(text: &str) -> Option<u64> {
    let (hi, lo) = text.split_once('/')?;
    let half = |h: &str| {
        (!h.is_empty() && h.len() <= 8)
            .then(|| u32::from_str_radix(h, 16).ok())
            .flatten()
    };
    Some(u64::from(half(hi)?) << 32 | u64::from(half(lo)?))
}

/// Where a record came from, to name it in logs and errors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordRef {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    /// The event id, when the record has one.
    pub id: Option<String>,
}

impl fmt::Display for RecordRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.id {
            Some(id) => write!(f, "event {id} ")?,
            None => write!(f, "record ")?,
        }
        write!(f, "at {}[{}]@{}", self.topic, self.partition, self.offset)
    }
}

/// An event as the handler sees it.
#[derive(Debug, Clone)]
pub struct Event {
    id: String,
    at: RecordRef,
    aggregate_id: Option<String>,
    payload: Option<Vec<u8>>,
    headers: Vec<(String, Option<Vec<u8>>)>,
    version: Option<Version>,
    replayed: bool,
    pub(crate) late_after: Option<Version>,
}

impl Event {
    /// Reads a record. Fails, naming the record, when the `id` header is missing or
    /// not UTF-8, the key is not UTF-8, or the version headers are incomplete or
    /// malformed: such a record cannot be deduplicated, so it is never guessed at.
    pub fn from_message(m: &OwnedMessage) -> Result<Event, (RecordRef, String)> {
        let mut at = RecordRef {
            topic: m.topic().to_owned(),
            partition: m.partition(),
            offset: m.offset(),
            id: None,
        };
        let headers: Vec<(String, Option<Vec<u8>>)> = m
            .headers()
            .map(|hs| {
                hs.iter()
                    .map(|h| (h.key.to_owned(), h.value.map(<[u8]>::to_vec)))
                    .collect()
            })
            .unwrap_or_default();
        let text = |name: &str| -> Result<Option<String>, String> {
            match headers.iter().find(|(k, _)| k == name) {
                None | Some((_, None)) => Ok(None),
                Some((_, Some(v))) => String::from_utf8(v.clone())
                    .map(Some)
                    .map_err(|_| format!("header {name} is not UTF-8")),
            }
        };
        let parsed = (|| {
            let id = text(ID_HEADER)?.ok_or_else(|| {
                format!(
                    "no '{ID_HEADER}' header: the record was not produced by outboxd (or \
                     Debezium's outbox router), so it cannot be deduplicated"
                )
            })?;
            let version = match (text(LSN_HEADER)?, text(INDEX_HEADER)?) {
                (Some(lsn), Some(index)) => Some(Version::from_headers(&lsn, &index)?),
                (None, None) => None,
                _ => {
                    return Err(format!(
                        "only one of the {LSN_HEADER} and {INDEX_HEADER} headers is set"
                    ))
                }
            };
            let aggregate_id = m
                .key()
                .map(|k| String::from_utf8(k.to_vec()))
                .transpose()
                .map_err(|_| "the key (aggregate id) is not UTF-8".to_owned())?;
            let replayed = text(REPLAY_HEADER)?.as_deref() == Some("true");
            Ok((id, version, aggregate_id, replayed))
        })();
        match parsed {
            Ok((id, version, aggregate_id, replayed)) => {
                at.id = Some(id.clone());
                Ok(Event {
                    id,
                    at,
                    aggregate_id,
                    payload: m.payload().map(<[u8]>::to_vec),
                    headers,
                    version,
                    replayed,
                    late_after: None,
                })
            }
            Err(reason) => {
                at.id = text(ID_HEADER).ok().flatten();
                Err((at, reason))
            }
        }
    }

    /// The event id (`id` header): unique per event, the same on every re-delivery.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Topic, partition, offset and id, for logs and errors.
    pub fn record(&self) -> &RecordRef {
        &self.at
    }

    pub fn topic(&self) -> &str {
        &self.at.topic
    }

    pub fn partition(&self) -> i32 {
        self.at.partition
    }

    pub fn offset(&self) -> i64 {
        self.at.offset
    }

    /// The record key: the aggregate id.
    pub fn aggregate_id(&self) -> Option<&str> {
        self.aggregate_id.as_deref()
    }

    /// The record value: the outbox row's payload as stored.
    pub fn payload(&self) -> Option<&[u8]> {
        self.payload.as_deref()
    }

    /// The first header called `name`.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| v.as_deref())
    }

    /// All headers, in record order.
    pub fn headers(&self) -> &[(String, Option<Vec<u8>>)] {
        &self.headers
    }

    /// (commit LSN, index) from the `outboxd.lsn` and `outboxd.index` headers;
    /// `None` when the relay adds no source headers.
    pub fn version(&self) -> Option<Version> {
        self.version
    }

    /// True for a record re-published by a replay (`outboxd.replay: true`).
    pub fn is_replay(&self) -> bool {
        self.replayed
    }

    /// For a replayed event older than the newest event already applied to its
    /// aggregate: that newer version. The event was never applied (its id is not
    /// in the inbox), so the inbox applies it, late; a handler whose effect
    /// overwrites state ("status = shipped") should not let it roll that state back.
    pub fn late_after(&self) -> Option<Version> {
        self.late_after
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::message::{Header, OwnedHeaders, Timestamp};

    fn message(headers: &[(&str, &str)], key: Option<&[u8]>) -> OwnedMessage {
        let mut hs = OwnedHeaders::new();
        for (k, v) in headers {
            hs = hs.insert(Header {
                key: k,
                value: Some(v.as_bytes()),
            });
        }
        OwnedMessage::new(
            Some(b"{}".to_vec()),
            key.map(<[u8]>::to_vec),
            "outbox.event.order".to_owned(),
            Timestamp::NotAvailable,
            2,
            41,
            Some(hs),
        )
    }

    #[test]
    fn reads_an_outboxd_record() {
        let m = message(
            &[
                ("id", "e-1"),
                ("outboxd.lsn", "16/B374D848"),
                ("outboxd.index", "3"),
            ],
            Some(b"order-1"),
        );
        let e = Event::from_message(&m).unwrap();
        assert_eq!(e.id(), "e-1");
        assert_eq!(e.aggregate_id(), Some("order-1"));
        assert_eq!(
            e.version(),
            Some(Version {
                lsn: 0x16_B374_D848,
                index: 3
            })
        );
        assert!(!e.is_replay());
        assert_eq!(e.version().unwrap().to_string(), "16/B374D848:3");
        assert_eq!(
            e.record().to_string(),
            "event e-1 at outbox.event.order[2]@41"
        );
    }

    #[test]
    fn versions_order_by_lsn_then_index() {
        let v = |s: &str| s.parse::<Version>().unwrap();
        assert!(v("0/FF:9") < v("1/0:0"));
        assert!(v("1/0:1") < v("1/0:2"));
        assert!(v("1/A:0") > v("1/9:7"));
        assert_eq!(v("1/A:0"), v("1/a:0"));
    }

    #[test]
    fn replay_header() {
        let m = message(&[("id", "e"), ("outboxd.replay", "true")], Some(b"a"));
        assert!(Event::from_message(&m).unwrap().is_replay());
        let m = message(&[("id", "e"), ("outboxd.replay", "false")], Some(b"a"));
        assert!(!Event::from_message(&m).unwrap().is_replay());
    }

    #[test]
    fn malformed_records_are_named_not_guessed() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[], "no 'id' header"),
            (&[("id", "e"), ("outboxd.lsn", "1/2")], "only one of"),
            (
                &[("id", "e"), ("outboxd.lsn", "12"), ("outboxd.index", "0")],
                "not an LSN",
            ),
            (
                &[
                    ("id", "e"),
                    ("outboxd.lsn", "1/123456789"),
                    ("outboxd.index", "0"),
                ],
                "not an LSN",
            ),
            (
                &[("id", "e"), ("outboxd.lsn", "1/2"), ("outboxd.index", "-1")],
                "not a non-negative integer",
            ),
        ];
        for (headers, expected) in cases {
            let (at, reason) = Event::from_message(&message(headers, Some(b"a"))).unwrap_err();
            assert!(reason.contains(expected), "{headers:?}: {reason}");
            assert_eq!(at.offset, 41);
        }
        let (at, reason) =
            Event::from_message(&message(&[("id", "e")], Some(&[0xff]))).unwrap_err();
        assert!(reason.contains("not UTF-8"), "{reason}");
        assert_eq!(at.id.as_deref(), Some("e"));
    }
}

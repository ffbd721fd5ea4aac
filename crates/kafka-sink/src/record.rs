//! What goes into the sink (records of a source transaction) and what comes out
//! (one completion per transaction).

use std::borrow::Cow;
use std::fmt;

use bytes::Bytes;

/// Identifies a source transaction to the sink.
///
/// The sink does not interpret it: the caller picks the numbering (the relay uses a
/// sequence number per transaction) and uses it to match completions to its own
/// bookkeeping. An id must not be reused while its transaction is still tracked.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TxnId(pub u64);

impl fmt::Display for TxnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "txn {}", self.0)
    }
}

/// Where a record came from, carried along so that a failure or a dead-letter record
/// can name the event precisely. The sink never interprets these values.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct RecordMeta {
    /// The outbox event id (e.g. the outbox row's `id`).
    pub event_id: String,
    /// The source position, opaque to the sink (a Postgres LSN for outboxd); shown in
    /// messages in the Postgres `X/Y` notation.
    pub lsn: u64,
    /// The record's position within its source transaction.
    pub index: u32,
}

/// A header name: usually a constant, so that building a record need not allocate it.
pub type HeaderName = Cow<'static, str>;

/// One Kafka record to produce.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Record {
    pub topic: String,
    /// Placed with murmur2 (as Java producers do) when present; a record without a key
    /// goes to a random partition.
    pub key: Option<Bytes>,
    /// An explicit partition, which overrides the key's placement.
    pub partition: Option<i32>,
    /// `None` produces a tombstone.
    pub value: Option<Bytes>,
    /// A `None` value is a header without a value (as Kafka Connect writes a null).
    pub headers: Vec<(HeaderName, Option<Bytes>)>,
    /// Milliseconds since the Unix epoch; `None` lets the producer stamp the send time.
    pub timestamp_ms: Option<i64>,
    pub meta: RecordMeta,
}

impl Record {
    /// The bytes this record counts against the in-flight byte cap: key, value, and
    /// header names and values. librdkafka's own per-message overhead (a few hundred
    /// bytes) is not included, so the cap bounds payload memory, not process memory.
    pub fn payload_size(&self) -> usize {
        let key = self.key.as_ref().map_or(0, Bytes::len);
        let value = self.value.as_ref().map_or(0, Bytes::len);
        let headers: usize = self
            .headers
            .iter()
            .map(|(k, v)| k.len() + v.as_ref().map_or(0, Bytes::len))
            .sum();
        key + value + headers
    }

    /// What the record costs the process while in flight, as counted against the
    /// in-flight byte cap: librdkafka's copy of the payload plus its per-message
    /// bookkeeping, and the delivery context we keep to name the event in reports.
    /// Counting only the payload let 100k small records in flight cost ~2× the cap.
    pub fn in_flight_size(&self) -> usize {
        self.payload_size() + self.topic.len() + self.meta.event_id.len() + PER_RECORD_OVERHEAD
    }
}

/// Estimated fixed cost of one in-flight record: librdkafka's message and header
/// structures, and our delivery context.
const PER_RECORD_OVERHEAD: usize = 256;

/// The outcome of one transaction: exactly one per transaction that was sent to or
/// ended on the sink (unless the sink is dropped first).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Completion {
    /// Every record of the transaction was acknowledged by the broker (with
    /// `acks=all`), `dead_lettered` of them on the dead-letter topic instead of their
    /// own.
    Delivered {
        txn: TxnId,
        records: usize,
        dead_lettered: usize,
    },
    /// A record of the transaction could not be delivered (nor dead-lettered). Sent at
    /// the first failure; the transaction's other records may still be in flight.
    Failed {
        txn: TxnId,
        failure: DeliveryFailure,
    },
}

impl Completion {
    /// The transaction this completion is about.
    pub fn txn(&self) -> TxnId {
        match self {
            Completion::Delivered { txn, .. } | Completion::Failed { txn, .. } => *txn,
        }
    }
}

/// Why a record of a transaction could not be delivered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeliveryFailure {
    pub event_id: String,
    pub lsn: u64,
    pub index: u32,
    /// The record's own topic (also when it was the dead-letter attempt that failed).
    pub topic: String,
    /// The broker's or librdkafka's reason, as an operator should read it.
    pub reason: String,
    /// Whether the cause is passing (a timeout, unreachable brokers): a new producer
    /// resending from the last confirmed position may succeed.
    pub transient: bool,
}

impl DeliveryFailure {
    pub(crate) fn new(meta: &RecordMeta, topic: &str, reason: String, transient: bool) -> Self {
        DeliveryFailure {
            event_id: meta.event_id.clone(),
            lsn: meta.lsn,
            index: meta.index,
            topic: topic.to_owned(),
            reason,
            transient,
        }
    }
}

impl fmt::Display for DeliveryFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "event {} (LSN {}, #{}) to topic {}: {}",
            self.event_id,
            PgLsn(self.lsn),
            self.index,
            self.topic,
            self.reason
        )
    }
}

/// Formats a u64 position the way Postgres prints an LSN (`16/B374D848`), so that
/// operators can paste it into `pg_replication_slots` queries.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct PgLsn(pub u64);

impl fmt::Display for PgLsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsn_is_formatted_like_postgres() {
        assert_eq!(PgLsn(0).to_string(), "0/0");
        assert_eq!(PgLsn(0x16_B374_D848).to_string(), "16/B374D848");
        assert_eq!(PgLsn(0x0000_0001_0000_000A).to_string(), "1/A");
        assert_eq!(PgLsn(u64::MAX).to_string(), "FFFFFFFF/FFFFFFFF");
    }

    #[test]
    fn failure_names_event_lsn_index_and_topic() {
        let meta = RecordMeta {
            event_id: "e-1".into(),
            lsn: 0x1_0000_00FF,
            index: 3,
        };
        let f = DeliveryFailure::new(
            &meta,
            "orders",
            "Broker: Message size too large".into(),
            false,
        );
        assert_eq!(
            f.to_string(),
            "event e-1 (LSN 1/FF, #3) to topic orders: Broker: Message size too large"
        );
    }

    #[test]
    fn payload_size_counts_key_value_and_headers() {
        let r = Record {
            topic: "t".into(),
            key: Some(Bytes::from_static(b"key")),
            value: Some(Bytes::from_static(b"value")),
            headers: vec![("id".into(), Some(Bytes::from_static(b"1234")))],
            ..Record::default()
        };
        assert_eq!(r.payload_size(), 3 + 5 + 2 + 4);
        assert_eq!(Record::default().payload_size(), 0);
        assert_eq!(r.in_flight_size(), 14 + 1 + PER_RECORD_OVERHEAD);
    }
}

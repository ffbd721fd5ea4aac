//! A record's way through librdkafka: what travels with it (the delivery opaque), how a
//! [`Record`] becomes a librdkafka record, and how a refused message becomes a
//! [`Record`] again. Every record the crate produces is built by [`base_record`].

use bytes::Bytes;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::BaseRecord;
use rdkafka::util::IntoOpaque;

use crate::record::{Record, RecordMeta, TxnId};

/// What travels with a record through librdkafka (the `DeliveryOpaque`).
#[derive(Debug)]
pub(crate) struct Delivery {
    pub txn: TxnId,
    pub meta: RecordMeta,
    /// The record's own topic (not the dead-letter topic).
    pub topic: String,
    /// Bytes counted against the in-flight cap ([`Record::in_flight_size`]), released
    /// at settlement.
    pub charged: usize,
    /// Payload bytes ([`Record::payload_size`]), for the delivered-bytes statistic.
    pub payload_bytes: usize,
    /// The record's own timestamp, kept for its dead-letter record: librdkafka reports
    /// no timestamp for a failed message.
    pub timestamp: Option<i64>,
    pub attempt: Attempt,
}

impl Delivery {
    /// The opaque of `record`'s first attempt, on its own topic.
    pub(crate) fn original(txn: TxnId, record: &Record, charged: usize) -> Box<Delivery> {
        Box::new(Delivery {
            txn,
            meta: record.meta.clone(),
            topic: record.topic.clone(),
            charged,
            payload_bytes: record.payload_size(),
            timestamp: record.timestamp_ms,
            attempt: Attempt::Original,
        })
    }
}

#[derive(Debug)]
pub(crate) enum Attempt {
    /// The record on its own topic.
    Original,
    /// The record on the dead-letter topic after the original attempt failed.
    DeadLetter {
        original_reason: String,
        value_dropped: bool,
    },
}

/// `record` as librdkafka takes it, carrying `opaque` to its delivery report. The
/// caller may still set a partition; otherwise the producer's partitioner places it.
pub(crate) fn base_record<D: IntoOpaque>(
    record: &Record,
    opaque: D,
) -> BaseRecord<'_, [u8], [u8], D> {
    let mut headers = OwnedHeaders::new_with_capacity(record.headers.len());
    for (key, value) in &record.headers {
        headers = headers.insert(Header {
            key,
            value: value.as_deref(),
        });
    }
    let mut base = BaseRecord::with_opaque_to(&record.topic, opaque).headers(headers);
    if let Some(key) = record.key.as_deref() {
        base = base.key(key);
    }
    if let Some(value) = record.value.as_deref() {
        base = base.payload(value);
    }
    if let Some(ts) = record.timestamp_ms {
        base = base.timestamp(ts);
    }
    if let Some(partition) = record.partition {
        base = base.partition(partition);
    }
    base
}

/// Copies a refused message out of its delivery report, to dead-letter it (on the
/// dead-letter topic's own partitions).
pub(crate) fn record_from_message<M: Message>(m: &M, delivery: &Delivery) -> Record {
    let headers = m
        .headers()
        .map(|hs| {
            hs.iter()
                .map(|h| (h.key.to_owned().into(), h.value.map(Bytes::copy_from_slice)))
                .collect()
        })
        .unwrap_or_default();
    Record {
        topic: m.topic().to_owned(),
        key: m.key().map(Bytes::copy_from_slice),
        partition: None,
        value: m.payload().map(Bytes::copy_from_slice),
        headers,
        timestamp_ms: m.timestamp().to_millis().or(delivery.timestamp),
        meta: delivery.meta.clone(),
    }
}

/// Whether a delivery error is passing: the broker was unreachable or slow, not the
/// record wrong. A new producer resending from the last confirmed position may
/// succeed, so the relay reconnects instead of stopping.
pub(crate) fn transient(code: Option<RDKafkaErrorCode>) -> bool {
    use RDKafkaErrorCode as E;
    matches!(
        code,
        Some(
            E::MessageTimedOut
                | E::RequestTimedOut
                | E::AllBrokersDown
                | E::BrokerTransportFailure
                | E::NetworkException
                | E::BrokerNotAvailable
                | E::LeaderNotAvailable
                | E::NotLeaderForPartition
                | E::NotEnoughReplicas
                | E::NotEnoughReplicasAfterAppend
        )
    )
}

/// An operator-readable reason for a record-level error.
pub(crate) fn describe(err: &KafkaError) -> String {
    match err.rdkafka_error_code() {
        Some(code) => code.to_string(),
        None => err.to_string(),
    }
}

//! The dead-letter topic: which refusals go there, what a dead-letter record looks
//! like, and the queue of dead-letter records waiting to be produced.
//!
//! One shape for every dead-letter record, whether the broker refused the record (the
//! sink diverts it) or the event never became a record (the relay calls
//! [`for_unroutable`]): the original key, value and headers as far as they exist,
//! then [`ERROR`], [`ORIGINAL_TOPIC`] (when a topic was known), [`EVENT_ID`], [`LSN`]
//! and [`INDEX`]; [`VALUE_DROPPED`] when the value itself was too large.
//!
//! [`ERROR`]: crate::headers::ERROR
//! [`ORIGINAL_TOPIC`]: crate::headers::ORIGINAL_TOPIC
//! [`EVENT_ID`]: crate::headers::EVENT_ID
//! [`LSN`]: crate::headers::LSN
//! [`INDEX`]: crate::headers::INDEX
//! [`VALUE_DROPPED`]: crate::headers::VALUE_DROPPED

use std::collections::VecDeque;
use std::sync::Mutex;

use bytes::Bytes;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::BaseProducer;

use crate::context::SinkContext;
use crate::delivery::{base_record, describe, transient, Attempt, Delivery};
use crate::record::{HeaderName, PgLsn, Record, RecordMeta};
use crate::{headers, lock};

/// The dead-letter record for an event that never became a record (the relay could
/// not route it): no key, no value, `source_headers` (what the record would have
/// carried, e.g. [`headers::XID`]) and the dead-letter headers. `original_topic` is the
/// topic the event was meant for, if routing got that far.
pub fn for_unroutable(
    dead_letter_topic: &str,
    original_topic: Option<&str>,
    meta: RecordMeta,
    source_headers: Vec<(HeaderName, Bytes)>,
    reason: &str,
) -> Record {
    let original = Record {
        topic: String::new(),
        headers: source_headers
            .into_iter()
            .map(|(name, value)| (name, Some(value)))
            .collect(),
        meta,
        ..Record::default()
    };
    wrap(dead_letter_topic, original_topic, original, reason)
}

/// The dead-letter record for `original`, which the broker or the producer refused.
fn for_refused(dead_letter_topic: &str, original: Record, reason: &str) -> Record {
    let topic = original.topic.clone();
    wrap(dead_letter_topic, Some(&topic), original, reason)
}

/// The one shape: `original` moved to the dead-letter topic, with the dead-letter
/// headers appended after its own.
fn wrap(
    dead_letter_topic: &str,
    original_topic: Option<&str>,
    mut original: Record,
    reason: &str,
) -> Record {
    let meta = &original.meta;
    let mut added: Vec<(HeaderName, Option<Bytes>)> = Vec::with_capacity(5);
    added.push((headers::ERROR.into(), Some(Bytes::from(reason.to_owned()))));
    if let Some(topic) = original_topic.filter(|t| !t.is_empty()) {
        added.push((
            headers::ORIGINAL_TOPIC.into(),
            Some(Bytes::from(topic.to_owned())),
        ));
    }
    added.extend([
        (
            headers::EVENT_ID.into(),
            Some(Bytes::from(meta.event_id.clone())),
        ),
        (
            headers::LSN.into(),
            Some(Bytes::from(PgLsn(meta.lsn).to_string())),
        ),
        (
            headers::INDEX.into(),
            Some(Bytes::from(meta.index.to_string())),
        ),
    ]);
    original.headers.extend(added);
    original.topic = dead_letter_topic.to_owned();
    original.partition = None;
    original
}

/// Whether a record refused with this error belongs on the dead-letter topic.
///
/// Only errors that are about the record itself and would recur on every retry:
/// its size or format, or the topic it names. Timeouts, unreachable or unhappy
/// brokers, authorization, a purge at shutdown and fatal producer errors fail the
/// transaction instead: the relay then stops before confirming it, and a restart
/// resends the record. Dead-lettering those would skip records that a retry
/// delivers, and break per-key order for a transient outage.
pub(crate) fn dead_letterable(code: Option<RDKafkaErrorCode>) -> bool {
    use RDKafkaErrorCode as E;
    matches!(
        code,
        Some(
            E::MessageSizeTooLarge
                | E::MessageBatchTooLarge
                | E::InvalidMessageSize
                | E::InvalidMessage
                | E::InvalidRecord
                | E::InvalidTimestamp
                | E::PolicyViolation
                | E::UnsupportedForMessageFormat
                | E::InvalidTopic
                | E::UnknownTopic
                | E::UnknownTopicOrPartition
                | E::UnknownPartition
                | E::BadMessage
                | E::InvalidArgument
        )
    )
}

fn is_size_error(code: Option<RDKafkaErrorCode>) -> bool {
    matches!(
        code,
        Some(
            RDKafkaErrorCode::MessageSizeTooLarge
                | RDKafkaErrorCode::MessageBatchTooLarge
                | RDKafkaErrorCode::InvalidMessageSize
        )
    )
}

/// What became of a refused record.
#[derive(Debug)]
pub(crate) enum Diverted {
    /// A dead-letter record is queued; its acknowledgement will settle the original.
    Queued,
    /// Not dead-lettered: fail the record's transaction.
    Fail {
        delivery: Box<Delivery>,
        reason: String,
        transient: bool,
    },
}

/// Dead-letter records waiting to be enqueued. They are produced from the poll thread
/// (or right after a refusal in `send`), never from inside a delivery callback, where
/// a full librdkafka queue could not be waited out.
#[derive(Debug)]
pub(crate) struct DeadLetterQueue {
    topic: Option<String>,
    pending: Mutex<VecDeque<(Box<Delivery>, Record)>>,
}

impl DeadLetterQueue {
    /// `topic`: the dead-letter topic; `None` fails every refused record.
    pub(crate) fn new(topic: Option<String>) -> DeadLetterQueue {
        DeadLetterQueue {
            topic,
            pending: Mutex::new(VecDeque::new()),
        }
    }

    /// The dead-letter topic, if any.
    pub(crate) fn topic(&self) -> Option<&str> {
        self.topic.as_deref()
    }

    /// Dead-letters a refused record when a dead-letter topic is configured and the
    /// error is about the record; a dead-letter record refused as too large is tried
    /// once more without its value. `content` is the refused record.
    pub(crate) fn divert(
        &self,
        mut delivery: Box<Delivery>,
        code: Option<RDKafkaErrorCode>,
        reason: String,
        content: impl FnOnce(&Delivery) -> Record,
    ) -> Diverted {
        let fail = |delivery, reason, transient| Diverted::Fail {
            delivery,
            reason,
            transient,
        };
        let Some(dlq) = self.topic.as_deref() else {
            return fail(delivery, reason, transient(code));
        };
        let (original_reason, value_dropped) = match &delivery.attempt {
            Attempt::Original if dead_letterable(code) => {
                tracing::warn!(
                    event_id = %delivery.meta.event_id,
                    lsn = %PgLsn(delivery.meta.lsn),
                    topic = %delivery.topic,
                    dead_letter_topic = %dlq,
                    %reason,
                    "dead-lettering a record"
                );
                let record = for_refused(dlq, content(&delivery), &reason);
                delivery.attempt = Attempt::DeadLetter {
                    original_reason: reason,
                    value_dropped: false,
                };
                lock(&self.pending).push_back((delivery, record));
                return Diverted::Queued;
            }
            Attempt::Original => return fail(delivery, reason, transient(code)),
            Attempt::DeadLetter {
                original_reason,
                value_dropped,
            } => (original_reason.clone(), *value_dropped),
        };
        if value_dropped || !is_size_error(code) {
            let reason = format!("{original_reason}; dead-lettering to {dlq} failed too: {reason}");
            return fail(delivery, reason, transient(code));
        }
        // The value itself may be what is too large (for the dead-letter topic too):
        // keep the event's identity and the error, drop the value.
        let mut record = content(&delivery);
        if record.value.take().is_none() {
            let reason = format!(
                "{original_reason}; dead-lettering failed too, even without a value: {reason}"
            );
            return fail(delivery, reason, false);
        }
        tracing::warn!(
            event_id = %delivery.meta.event_id,
            lsn = %PgLsn(delivery.meta.lsn),
            "dead-letter record too large; dead-lettering it without its value"
        );
        record.headers.push((
            headers::VALUE_DROPPED.into(),
            Some(Bytes::from_static(b"true")),
        ));
        delivery.attempt = Attempt::DeadLetter {
            original_reason,
            value_dropped: true,
        };
        lock(&self.pending).push_back((delivery, record));
        Diverted::Queued
    }

    /// Whether dead-letter records wait to be enqueued.
    pub(crate) fn is_empty(&self) -> bool {
        lock(&self.pending).is_empty()
    }

    /// Enqueues waiting dead-letter records until none is left or librdkafka's queue is
    /// full (the rest waits for the next call). A record librdkafka refuses for another
    /// reason goes to `refused`, which decides its fate (and may queue it again).
    pub(crate) fn pump(
        &self,
        producer: &BaseProducer<SinkContext>,
        mut refused: impl FnMut(Box<Delivery>, Option<RDKafkaErrorCode>, String, Record),
    ) {
        loop {
            let Some((delivery, record)) = lock(&self.pending).pop_front() else {
                return;
            };
            let (err, delivery) = match producer.send(base_record(&record, delivery)) {
                Ok(()) => continue,
                Err((err, base)) => (err, base.delivery_opaque),
            };
            if let KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull) = err {
                lock(&self.pending).push_front((delivery, record));
                return;
            }
            refused(delivery, err.rdkafka_error_code(), describe(&err), record);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::TxnId;

    fn meta() -> RecordMeta {
        RecordMeta {
            event_id: "e-7".into(),
            lsn: 0x1_0000_00FF,
            index: 3,
        }
    }

    fn names(r: &Record) -> Vec<&str> {
        r.headers.iter().map(|(k, _)| k.as_ref()).collect()
    }

    fn value<'a>(r: &'a Record, name: &str) -> Option<&'a [u8]> {
        r.headers
            .iter()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| v.as_deref())
    }

    #[test]
    fn refused_and_unroutable_dead_letters_have_one_shape() {
        let original = Record {
            topic: "orders".into(),
            key: Some(Bytes::from_static(b"k")),
            value: Some(Bytes::from_static(b"v")),
            headers: vec![(headers::XID.into(), Some(Bytes::from_static(b"742")))],
            timestamp_ms: Some(5),
            meta: meta(),
            ..Record::default()
        };
        let refused = for_refused("dlq", original, "InvalidRecord");
        let unroutable = for_unroutable(
            "dlq",
            Some("orders"),
            meta(),
            vec![(headers::XID.into(), Bytes::from_static(b"742"))],
            "InvalidRecord",
        );
        for r in [&refused, &unroutable] {
            assert_eq!(r.topic, "dlq");
            assert_eq!(
                names(r),
                [
                    headers::XID,
                    headers::ERROR,
                    headers::ORIGINAL_TOPIC,
                    headers::EVENT_ID,
                    headers::LSN,
                    headers::INDEX
                ]
            );
            assert_eq!(value(r, headers::ORIGINAL_TOPIC), Some(&b"orders"[..]));
            assert_eq!(value(r, headers::LSN), Some(&b"1/FF"[..]));
            assert_eq!(value(r, headers::INDEX), Some(&b"3"[..]));
            assert_eq!(value(r, headers::EVENT_ID), Some(&b"e-7"[..]));
            assert_eq!(r.meta, meta());
        }
        assert_eq!(refused.key.as_deref(), Some(&b"k"[..]));
        assert_eq!(refused.timestamp_ms, Some(5));
        assert_eq!(
            (unroutable.key.as_ref(), unroutable.value.as_ref()),
            (None, None)
        );
    }

    #[test]
    fn unroutable_without_a_topic_has_no_original_topic_header() {
        let r = for_unroutable("dlq", None, meta(), Vec::new(), "aggregate type is NULL");
        assert_eq!(value(&r, headers::ORIGINAL_TOPIC), None);
        assert_eq!(
            value(&r, headers::ERROR),
            Some(&b"aggregate type is NULL"[..])
        );
    }

    fn delivery(attempt: Attempt) -> Box<Delivery> {
        let mut d = Delivery::original(TxnId(1), &Record::default(), 10);
        d.attempt = attempt;
        d
    }

    #[test]
    fn only_record_errors_are_diverted_and_only_with_a_topic() {
        let none = DeadLetterQueue::new(None);
        let d = none.divert(
            delivery(Attempt::Original),
            Some(RDKafkaErrorCode::InvalidRecord),
            "InvalidRecord".into(),
            |_| Record::default(),
        );
        assert!(matches!(
            d,
            Diverted::Fail {
                transient: false,
                ..
            }
        ));

        let q = DeadLetterQueue::new(Some("dlq".into()));
        let d = q.divert(
            delivery(Attempt::Original),
            Some(RDKafkaErrorCode::MessageTimedOut),
            "MessageTimedOut".into(),
            |_| unreachable!("a timeout is not dead-lettered"),
        );
        assert!(matches!(
            d,
            Diverted::Fail {
                transient: true,
                ..
            }
        ));
        assert!(q.is_empty());

        let d = q.divert(
            delivery(Attempt::Original),
            Some(RDKafkaErrorCode::InvalidRecord),
            "InvalidRecord".into(),
            |_| Record::default(),
        );
        assert!(matches!(d, Diverted::Queued));
        assert!(!q.is_empty());
    }

    #[test]
    fn a_too_large_dead_letter_is_retried_once_without_its_value() {
        let q = DeadLetterQueue::new(Some("dlq".into()));
        let first = Attempt::DeadLetter {
            original_reason: "MessageSizeTooLarge".into(),
            value_dropped: false,
        };
        let with_value = |_: &Delivery| Record {
            value: Some(Bytes::from_static(b"big")),
            ..Record::default()
        };
        let code = Some(RDKafkaErrorCode::MessageSizeTooLarge);
        let d = q.divert(delivery(first), code, "again".into(), with_value);
        assert!(matches!(d, Diverted::Queued));
        let (d, record) = lock(&q.pending).pop_front().unwrap();
        assert_eq!(record.value, None);
        assert_eq!(value(&record, headers::VALUE_DROPPED), Some(&b"true"[..]));
        // Still too large without the value: give up.
        match q.divert(d, code, "still".into(), |_| Record::default()) {
            Diverted::Fail { reason, .. } => {
                assert!(
                    reason.contains("dead-lettering to dlq failed too"),
                    "{reason}"
                )
            }
            Diverted::Queued => panic!("retried twice"),
        }
    }
}

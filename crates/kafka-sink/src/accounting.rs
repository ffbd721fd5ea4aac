//! Delivery accounting shared by the enqueue path (`send`, on the caller's task) and
//! librdkafka's delivery reports (on the poll thread).
//!
//! Every record is registered before it is handed to librdkafka and settled exactly
//! once: acknowledged (on its own topic or the dead-letter topic) or failed. Settling
//! releases its in-flight budget and may complete its transaction. Delivery reports
//! can arrive in any order across partitions (and, field notes §6, even within one
//! when something flushes while the poll thread polls), so nothing here depends on
//! their order.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use bytes::Bytes;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord};
use tokio::sync::mpsc::UnboundedSender;
use tokio::sync::Notify;

use crate::context::SinkContext;
use crate::record::{Completion, DeliveryFailure, PgLsn, RecordMeta, TxnId};

/// Header names added to dead-letter records.
pub mod dead_letter_headers {
    /// Why the record was dead-lettered (librdkafka's or the broker's reason).
    pub const ERROR: &str = "outboxd.error";
    /// The topic the record was meant for.
    pub const ORIGINAL_TOPIC: &str = "outboxd.original.topic";
    /// The record's event id.
    pub const EVENT_ID: &str = "outboxd.event.id";
    /// The record's source position, in Postgres `X/Y` notation.
    pub const LSN: &str = "outboxd.lsn";
    /// The record's index within its source transaction (decimal).
    pub const INDEX: &str = "outboxd.index";
    /// `true` when the value was left out because it was itself too large.
    pub const VALUE_DROPPED: &str = "outboxd.error.value_dropped";
}

/// What travels with a record through librdkafka (the `DeliveryOpaque`).
#[derive(Debug)]
pub(crate) struct Delivery {
    pub txn: TxnId,
    pub meta: RecordMeta,
    /// The record's own topic (not the dead-letter topic).
    pub topic: String,
    /// Bytes counted against the in-flight cap ([`Record::in_flight_size`]), released
    /// at settlement.
    ///
    /// [`Record::in_flight_size`]: crate::Record::in_flight_size
    pub charged: usize,
    /// Payload bytes ([`Record::payload_size`]), for the delivered-bytes statistic.
    ///
    /// [`Record::payload_size`]: crate::Record::payload_size
    pub payload_bytes: usize,
    /// The record's own timestamp, kept for its dead-letter record: librdkafka reports
    /// no timestamp for a failed message.
    pub timestamp: Option<i64>,
    pub attempt: Attempt,
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

/// The contents of a record that failed, kept to build its dead-letter record.
#[derive(Debug, Default)]
pub(crate) struct Content {
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: Vec<(String, Option<Bytes>)>,
    pub timestamp: Option<i64>,
}

impl Content {
    /// Copies a failed message out of its delivery report.
    pub(crate) fn from_message<M: Message>(m: &M) -> Content {
        let headers = m
            .headers()
            .map(|hs| {
                hs.iter()
                    .map(|h| (h.key.to_owned(), h.value.map(Bytes::copy_from_slice)))
                    .collect()
            })
            .unwrap_or_default();
        Content {
            key: m.key().map(Bytes::copy_from_slice),
            value: m.payload().map(Bytes::copy_from_slice),
            headers,
            timestamp: m.timestamp().to_millis(),
        }
    }
}

/// A dead-letter record waiting to be enqueued.
#[derive(Debug)]
pub(crate) struct DeadLetter {
    delivery: Box<Delivery>,
    content: Content,
}

#[derive(Debug, Default)]
struct TxnState {
    /// Records registered (handed to librdkafka, or refused by it and being handled).
    sent: usize,
    /// Records settled, successfully or not.
    settled: usize,
    acked: usize,
    dead_lettered: usize,
    /// Set by `end_transaction`.
    expected: Option<usize>,
    /// A `Failed` completion was sent.
    failed: bool,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub records_delivered: AtomicU64,
    pub bytes_delivered: AtomicU64,
    pub delivery_errors: AtomicU64,
    pub dead_lettered: AtomicU64,
}

/// State shared between the sink and its producer context.
#[derive(Debug)]
pub(crate) struct Shared {
    txns: Mutex<HashMap<TxnId, TxnState>>,
    completions: UnboundedSender<Completion>,
    in_flight_records: AtomicUsize,
    in_flight_bytes: AtomicUsize,
    /// Woken whenever in-flight budget is released (senders waiting for room, flush).
    pub changed: Notify,
    fatal: Mutex<Option<String>>,
    /// The reason of the latest non-fatal client error (connection, TLS, SASL).
    last_client_error: Mutex<Option<String>>,
    pub stats: Counters,
    dead_letter_topic: Option<String>,
    dead_letters: Mutex<VecDeque<DeadLetter>>,
}

/// Locks a mutex whose data stays consistent even if a holder panicked (every
/// critical section here leaves the data valid at each step), so that a panic
/// elsewhere cannot turn into a panic on the delivery path.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
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

/// An operator-readable reason for a record-level error.
pub(crate) fn describe(err: &KafkaError) -> String {
    match err.rdkafka_error_code() {
        Some(code) => code.to_string(),
        None => err.to_string(),
    }
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

impl Shared {
    pub(crate) fn new(
        completions: UnboundedSender<Completion>,
        dead_letter_topic: Option<String>,
    ) -> Shared {
        Shared {
            txns: Mutex::new(HashMap::new()),
            completions,
            in_flight_records: AtomicUsize::new(0),
            in_flight_bytes: AtomicUsize::new(0),
            changed: Notify::new(),
            fatal: Mutex::new(None),
            last_client_error: Mutex::new(None),
            stats: Counters::default(),
            dead_letter_topic,
            dead_letters: Mutex::new(VecDeque::new()),
        }
    }

    pub(crate) fn in_flight(&self) -> (usize, usize) {
        (
            self.in_flight_records.load(Ordering::Acquire),
            self.in_flight_bytes.load(Ordering::Acquire),
        )
    }

    /// Whether one more record of `bytes` fits the caps. A record larger than the byte
    /// cap is admitted when nothing else is in flight, or it would wait forever.
    pub(crate) fn has_room(&self, bytes: usize, max_records: usize, max_bytes: usize) -> bool {
        let (records, in_bytes) = self.in_flight();
        records < max_records && (records == 0 || in_bytes.saturating_add(bytes) <= max_bytes)
    }

    pub(crate) fn set_last_client_error(&self, reason: String) {
        *lock(&self.last_client_error) = Some(reason);
    }

    pub(crate) fn last_client_error(&self) -> Option<String> {
        lock(&self.last_client_error).clone()
    }

    pub(crate) fn set_fatal(&self, reason: String) {
        let mut fatal = lock(&self.fatal);
        if fatal.is_none() {
            *fatal = Some(reason);
        }
        drop(fatal);
        self.changed.notify_waiters();
    }

    pub(crate) fn fatal(&self) -> Option<String> {
        lock(&self.fatal).clone()
    }

    /// Counts a record of `txn` as sent and reserves its budget, before it is handed
    /// to librdkafka (its delivery report may come at once).
    pub(crate) fn register(&self, txn: TxnId, bytes: usize) -> Result<(), String> {
        let mut txns = lock(&self.txns);
        let state = txns.entry(txn).or_default();
        if let Some(expected) = state.expected {
            return Err(format!(
                "send for {txn} after end_transaction({txn}, {expected})"
            ));
        }
        state.sent += 1;
        self.in_flight_records.fetch_add(1, Ordering::AcqRel);
        self.in_flight_bytes.fetch_add(bytes, Ordering::AcqRel);
        Ok(())
    }

    /// Undoes `register` for a record librdkafka did not take (queue full, fatal).
    pub(crate) fn unregister(&self, txn: TxnId, bytes: usize) {
        let mut txns = lock(&self.txns);
        if let Some(state) = txns.get_mut(&txn) {
            state.sent = state.sent.saturating_sub(1);
            if state.sent == 0 && state.expected.is_none() {
                txns.remove(&txn);
            }
        }
        drop(txns);
        self.release(bytes);
    }

    fn release(&self, bytes: usize) {
        // Saturating, so that an accounting bug shows as a wrong number, not a wrap.
        let _ = self
            .in_flight_records
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                Some(n.saturating_sub(1))
            });
        let _ = self
            .in_flight_bytes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                Some(n.saturating_sub(bytes))
            });
        self.changed.notify_waiters();
    }

    fn emit(&self, completion: Completion) {
        // A dropped receiver means nobody waits for completions anymore (shutdown).
        let _ = self.completions.send(completion);
    }

    /// Sends `Delivered` once the transaction is ended and every record is reported,
    /// and forgets the transaction then. Call with the map locked.
    fn maybe_finish(&self, txns: &mut HashMap<TxnId, TxnState>, txn: TxnId) {
        let Some(state) = txns.get(&txn) else { return };
        let Some(expected) = state.expected else {
            return;
        };
        if state.settled < state.sent {
            return;
        }
        if !state.failed {
            self.emit(Completion::Delivered {
                txn,
                records: expected,
                dead_lettered: state.dead_lettered,
            });
        }
        txns.remove(&txn);
    }

    /// `end_transaction`: no more records for `txn`, `record_count` were sent.
    pub(crate) fn end(&self, txn: TxnId, record_count: usize) {
        let mut txns = lock(&self.txns);
        let state = txns.entry(txn).or_default();
        if state.expected.is_some() {
            tracing::warn!(%txn, "end_transaction called twice; ignoring the second call");
            return;
        }
        state.expected = Some(record_count);
        if state.sent != record_count && !state.failed {
            // The caller's count and ours disagree: something upstream lost or invented
            // a record. Completing the transaction could confirm a position whose
            // records never reached Kafka, so fail it.
            state.failed = true;
            let reason = format!(
                "end_transaction declared {record_count} records but {} were sent",
                state.sent
            );
            tracing::error!(%txn, %reason, "transaction record count mismatch");
            self.emit(Completion::Failed {
                txn,
                failure: DeliveryFailure {
                    event_id: String::new(),
                    lsn: 0,
                    index: 0,
                    topic: String::new(),
                    reason,
                    transient: false,
                },
            });
        }
        self.maybe_finish(&mut txns, txn);
    }

    /// A record was acknowledged, on its own topic or the dead-letter topic.
    pub(crate) fn settle_ok(&self, delivery: &Delivery) {
        let dead_lettered = matches!(delivery.attempt, Attempt::DeadLetter { .. });
        if dead_lettered {
            self.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
        } else {
            self.stats.records_delivered.fetch_add(1, Ordering::Relaxed);
            self.stats
                .bytes_delivered
                .fetch_add(delivery.payload_bytes as u64, Ordering::Relaxed);
        }
        let mut txns = lock(&self.txns);
        match txns.get_mut(&delivery.txn) {
            Some(state) => {
                state.settled += 1;
                state.acked += 1;
                if dead_lettered {
                    state.dead_lettered += 1;
                }
                self.maybe_finish(&mut txns, delivery.txn);
            }
            None => {
                tracing::warn!(txn = %delivery.txn, "delivery report for an unknown transaction")
            }
        }
        drop(txns);
        // Release after the completion went out: once `flush` sees nothing in flight,
        // every completion of what was in flight is in the channel.
        self.release(delivery.charged);
    }

    /// A record could neither be delivered nor dead-lettered: fail its transaction.
    fn settle_failed(&self, delivery: &Delivery, reason: String, transient: bool) {
        let mut txns = lock(&self.txns);
        match txns.get_mut(&delivery.txn) {
            Some(state) => {
                state.settled += 1;
                if !state.failed {
                    state.failed = true;
                    let failure =
                        DeliveryFailure::new(&delivery.meta, &delivery.topic, reason, transient);
                    tracing::warn!(txn = %delivery.txn, %failure, "transaction failed");
                    self.emit(Completion::Failed {
                        txn: delivery.txn,
                        failure,
                    });
                } else {
                    tracing::debug!(txn = %delivery.txn, %reason, "another record of a failed transaction failed");
                }
                self.maybe_finish(&mut txns, delivery.txn);
            }
            None => {
                tracing::warn!(txn = %delivery.txn, "failure report for an unknown transaction")
            }
        }
        drop(txns);
        self.release(delivery.charged);
    }

    /// A record was refused, at enqueue time or in its delivery report. Dead-letters
    /// it when that is configured and the error is about the record; fails its
    /// transaction otherwise.
    pub(crate) fn record_failed(
        &self,
        mut delivery: Box<Delivery>,
        code: Option<RDKafkaErrorCode>,
        reason: String,
        content: impl FnOnce() -> Content,
    ) {
        self.stats.delivery_errors.fetch_add(1, Ordering::Relaxed);
        match (&delivery.attempt, &self.dead_letter_topic) {
            (Attempt::Original, Some(dlq)) if dead_letterable(code) => {
                tracing::warn!(
                    event_id = %delivery.meta.event_id,
                    lsn = %PgLsn(delivery.meta.lsn),
                    topic = %delivery.topic,
                    dead_letter_topic = %dlq,
                    %reason,
                    "dead-lettering a record"
                );
                let meta = &delivery.meta;
                let mut content = content();
                content.timestamp = content.timestamp.or(delivery.timestamp);
                content.headers.extend([
                    (
                        dead_letter_headers::ERROR.to_owned(),
                        Some(Bytes::from(reason.clone())),
                    ),
                    (
                        dead_letter_headers::ORIGINAL_TOPIC.to_owned(),
                        Some(Bytes::from(delivery.topic.clone())),
                    ),
                    (
                        dead_letter_headers::EVENT_ID.to_owned(),
                        Some(Bytes::from(meta.event_id.clone())),
                    ),
                    (
                        dead_letter_headers::LSN.to_owned(),
                        Some(Bytes::from(PgLsn(meta.lsn).to_string())),
                    ),
                    (
                        dead_letter_headers::INDEX.to_owned(),
                        Some(Bytes::from(meta.index.to_string())),
                    ),
                ]);
                delivery.attempt = Attempt::DeadLetter {
                    original_reason: reason,
                    value_dropped: false,
                };
                lock(&self.dead_letters).push_back(DeadLetter { delivery, content });
            }
            (
                Attempt::DeadLetter {
                    original_reason,
                    value_dropped: false,
                },
                Some(_),
            ) if is_size_error(code) => {
                // The value itself may be what is too large (for the dead-letter
                // topic too): keep the event's identity and the error, drop the value.
                let mut content = content();
                if content.value.take().is_none() {
                    let reason = format!(
                        "{original_reason}; dead-lettering failed too, even without a value: {reason}"
                    );
                    self.settle_failed(&delivery, reason, false);
                    return;
                }
                tracing::warn!(
                    event_id = %delivery.meta.event_id,
                    lsn = %PgLsn(delivery.meta.lsn),
                    "dead-letter record too large; dead-lettering it without its value"
                );
                content.headers.push((
                    dead_letter_headers::VALUE_DROPPED.to_owned(),
                    Some(Bytes::from_static(b"true")),
                ));
                delivery.attempt = Attempt::DeadLetter {
                    original_reason: original_reason.clone(),
                    value_dropped: true,
                };
                lock(&self.dead_letters).push_back(DeadLetter { delivery, content });
            }
            (
                Attempt::DeadLetter {
                    original_reason, ..
                },
                dlq,
            ) => {
                let dlq = dlq.as_deref().unwrap_or("?");
                let reason =
                    format!("{original_reason}; dead-lettering to {dlq} failed too: {reason}");
                self.settle_failed(&delivery, reason, transient(code));
            }
            (Attempt::Original, _) => self.settle_failed(&delivery, reason, transient(code)),
        }
    }

    /// Whether dead-letter records wait to be enqueued.
    pub(crate) fn has_dead_letters(&self) -> bool {
        !lock(&self.dead_letters).is_empty()
    }

    /// Enqueues waiting dead-letter records until none is left or librdkafka's queue is
    /// full (the rest then waits for the next call). Runs on the poll thread after each
    /// poll, and in `send` right after a refusal, never inside a delivery callback.
    pub(crate) fn pump_dead_letters(&self, producer: &BaseProducer<SinkContext>) {
        let Some(topic) = self.dead_letter_topic.as_deref() else {
            return;
        };
        loop {
            let Some(dl) = lock(&self.dead_letters).pop_front() else {
                return;
            };
            let DeadLetter { delivery, content } = dl;
            let mut headers = OwnedHeaders::new_with_capacity(content.headers.len());
            for (key, value) in &content.headers {
                headers = headers.insert(Header {
                    key,
                    value: value.as_deref(),
                });
            }
            let mut record =
                BaseRecord::<[u8], [u8], Box<Delivery>>::with_opaque_to(topic, delivery)
                    .headers(headers);
            if let Some(key) = content.key.as_deref() {
                record = record.key(key);
            }
            if let Some(value) = content.value.as_deref() {
                record = record.payload(value);
            }
            if let Some(ts) = content.timestamp {
                record = record.timestamp(ts);
            }
            let refused = match producer.send(record) {
                Ok(()) => None,
                Err((err, record)) => Some((err, record.delivery_opaque)),
            };
            match refused {
                None => {}
                Some((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), delivery)) => {
                    lock(&self.dead_letters).push_front(DeadLetter { delivery, content });
                    return;
                }
                Some((err, delivery)) => {
                    let code = err.rdkafka_error_code();
                    self.record_failed(delivery, code, describe(&err), || content);
                }
            }
        }
    }
}

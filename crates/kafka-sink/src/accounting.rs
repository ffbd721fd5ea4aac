//! Delivery accounting shared by the enqueue path (`send`, on the caller's task) and
//! librdkafka's delivery reports (on the poll thread): composes the per-transaction
//! [`Ledger`], the [`InFlightBudget`], the [`ClientHealth`] and the
//! [`DeadLetterQueue`], and emits the completions.
//!
//! Every record is registered before it is handed to librdkafka and settled exactly
//! once: acknowledged (on its own topic or the dead-letter topic) or failed. Settling
//! emits its transaction's completion, if that is due, and then releases its budget.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::BaseProducer;
use tokio::sync::mpsc::UnboundedSender;

use crate::budget::InFlightBudget;
use crate::context::SinkContext;
use crate::dead_letter::{DeadLetterQueue, Diverted};
use crate::delivery::{transient, Attempt, Delivery};
use crate::health::ClientHealth;
use crate::ledger::Ledger;
use crate::lock;
use crate::record::{Completion, DeliveryFailure, Record, TxnId};
use crate::SinkConfig;

/// Counters since the sink was created.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct SinkStats {
    /// Records acknowledged on their own topic.
    pub records_delivered: u64,
    /// Payload bytes ([`Record::payload_size`]) of `records_delivered`.
    pub bytes_delivered: u64,
    /// Failed attempts: refusals at enqueue time and failed delivery reports, of
    /// original and dead-letter records alike (a dead-lettered record counts one).
    pub delivery_errors: u64,
    /// Records acknowledged on the dead-letter topic instead of their own.
    pub dead_lettered: u64,
}

#[derive(Debug, Default)]
struct Counters {
    records_delivered: AtomicU64,
    bytes_delivered: AtomicU64,
    delivery_errors: AtomicU64,
    dead_lettered: AtomicU64,
    /// Records that failed and were not dead-lettered: their transactions failed.
    undelivered: AtomicU64,
}

/// Where a record was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// librdkafka did not take it (`produce` failed): nothing reached a broker.
    Local,
    /// Its delivery report failed: a broker refused it, or it never got an answer.
    Delivery,
}

/// State shared between the sink and its producer context.
#[derive(Debug)]
pub(crate) struct Shared {
    ledger: Mutex<Ledger>,
    completions: UnboundedSender<Completion>,
    pub budget: InFlightBudget,
    pub health: ClientHealth,
    pub dead_letters: DeadLetterQueue,
    stats: Counters,
    /// Records go into Kafka transactions (see `record_failed`).
    transactional: bool,
    /// At least once: the first delivery that timed out. The sink sends nothing
    /// after it (see [`Shared::stopped`]).
    stopped: OnceLock<DeliveryFailure>,
}

impl Shared {
    pub(crate) fn new(completions: UnboundedSender<Completion>, config: &SinkConfig) -> Shared {
        Shared {
            ledger: Mutex::new(Ledger::default()),
            completions,
            budget: InFlightBudget::new(config.max_in_flight_records, config.max_in_flight_bytes),
            health: ClientHealth::default(),
            dead_letters: DeadLetterQueue::new(config.dead_letter_topic.clone()),
            stats: Counters::default(),
            transactional: config.transactional_id.is_some(),
            stopped: OnceLock::new(),
        }
    }

    /// At least once, the delivery that timed out and stopped the sink: a younger
    /// record reaching Kafka before its resend would break per-key order.
    pub(crate) fn stopped(&self) -> Option<&DeliveryFailure> {
        self.stopped.get()
    }

    /// Records that failed without being dead-lettered, since the sink was created.
    pub(crate) fn undelivered(&self) -> u64 {
        self.stats.undelivered.load(Ordering::Relaxed)
    }

    pub(crate) fn stats(&self) -> SinkStats {
        let s = &self.stats;
        SinkStats {
            records_delivered: s.records_delivered.load(Ordering::Relaxed),
            bytes_delivered: s.bytes_delivered.load(Ordering::Relaxed),
            delivery_errors: s.delivery_errors.load(Ordering::Relaxed),
            dead_lettered: s.dead_lettered.load(Ordering::Relaxed),
        }
    }

    /// A client error from librdkafka's error callback; returns whether it was fatal.
    /// A fatal error wakes senders waiting for room, so that they notice.
    pub(crate) fn client_error(&self, error: &KafkaError, reason: &str) -> bool {
        let fatal = self.health.record(error, reason);
        if fatal {
            self.budget.wake();
        }
        fatal
    }

    fn emit(&self, completion: Option<Completion>) {
        if let Some(completion) = completion {
            // A dropped receiver means nobody waits for completions anymore (shutdown).
            let _ = self.completions.send(completion);
        }
    }

    /// Counts a record of `txn` as sent and reserves its budget, before it is handed
    /// to librdkafka (its delivery report may come at once).
    pub(crate) fn register(&self, txn: TxnId, bytes: usize) -> Result<(), String> {
        lock(&self.ledger).register(txn)?;
        self.budget.reserve(bytes);
        Ok(())
    }

    /// Undoes `register` for a record librdkafka did not take (queue full, fatal).
    pub(crate) fn unregister(&self, txn: TxnId, bytes: usize) {
        lock(&self.ledger).unregister(txn);
        self.budget.release(bytes);
    }

    /// `end_transaction`: no more records for `txn`, `record_count` were sent.
    pub(crate) fn end(&self, txn: TxnId, record_count: usize) {
        let completion = lock(&self.ledger).end(txn, record_count);
        self.emit(completion);
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
        let completion = lock(&self.ledger).settle_ok(delivery.txn, dead_lettered);
        self.emit(completion);
        // Release after the completion went out: once `flush` sees nothing in flight,
        // every completion of what was in flight is in the channel.
        self.budget.release(delivery.charged);
    }

    /// A record was refused, at enqueue time or in its delivery report: dead-letter it
    /// or fail its transaction. `content` gives the refused record (only called when
    /// it is dead-lettered: copying it out of a delivery report costs).
    ///
    /// Inside a Kafka transaction only a local refusal can be dead-lettered: a failed
    /// delivery report makes the transaction abortable, so its records, the
    /// dead-letter record included, would never be committed.
    ///
    /// Returns true when this failure stopped the sink (the first timeout, at least
    /// once): the caller must purge the producer at once.
    #[must_use]
    pub(crate) fn record_failed(
        &self,
        delivery: Box<Delivery>,
        refusal: Refusal,
        code: Option<RDKafkaErrorCode>,
        reason: String,
        content: impl FnOnce(&Delivery) -> Record,
    ) -> bool {
        self.stats.delivery_errors.fetch_add(1, Ordering::Relaxed);
        let diverted = if self.transactional && refusal == Refusal::Delivery {
            let reason = match self.dead_letters.topic() {
                Some(dlq) => format!(
                    "{reason} (not dead-lettered to {dlq}: a refusal by the broker aborts the \
                     Kafka transaction; exactly once, only records the producer refuses \
                     itself can be dead-lettered)"
                ),
                None => reason,
            };
            Diverted::Fail {
                delivery,
                reason,
                transient: transient(code),
            }
        } else {
            self.dead_letters.divert(delivery, code, reason, content)
        };
        match diverted {
            Diverted::Queued => false,
            Diverted::Fail {
                delivery,
                reason,
                transient,
            } => {
                self.stats.undelivered.fetch_add(1, Ordering::Relaxed);
                let failure =
                    DeliveryFailure::new(&delivery.meta, &delivery.topic, reason, transient);
                // Set before the completion goes out, so that no `send` after the
                // caller learned of the failure can slip a younger record in.
                let stops = transient
                    && refusal == Refusal::Delivery
                    && !self.transactional
                    && self.stopped.get().is_none()
                    && self.stopped.set(failure.clone()).is_ok();
                let completion = lock(&self.ledger).settle_failed(delivery.txn, || failure);
                self.emit(completion);
                self.budget.release(delivery.charged);
                stops
            }
        }
    }

    /// Enqueues waiting dead-letter records. Runs on the poll thread after each poll,
    /// and in `send` right after a refusal, never inside a delivery callback.
    pub(crate) fn pump_dead_letters(&self, producer: &BaseProducer<SinkContext>) {
        self.dead_letters
            .pump(producer, |delivery, code, reason, record| {
                // A local refusal is never a timeout: it cannot stop the sink.
                let _ = self.record_failed(delivery, Refusal::Local, code, reason, |_| record);
            });
    }
}

//! The sink: strictly ordered enqueue, in-flight caps, flush, cluster check.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::Producer;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

use crate::accounting::{Refusal, Shared, SinkStats};
use crate::client_logs::LoggingContext;
use crate::cluster_check::ClusterCheck;
use crate::config::SinkConfig;
use crate::delivery::{base_record, describe, Delivery};
use crate::error::SinkError;
use crate::record::{Completion, Record, TxnId};
use crate::turns::Turns;

/// How often a waiting `send` re-checks for a fatal producer error (and retries after
/// a full librdkafka queue) when no delivery report wakes it earlier.
const WAIT_SLICE: Duration = Duration::from_millis(100);

/// Produces the records of source transactions to Kafka and reports, per
/// transaction, when all of them are acknowledged.
///
/// - Records are handed to librdkafka strictly in `send` order (one `send` at a time;
///   concurrent calls queue up in call order), so the idempotent producer keeps that
///   order per partition, retries included.
/// - A full librdkafka queue or reached in-flight caps make `send` wait: backpressure,
///   never an error, and memory stays bounded while the broker is slow or down.
/// - Delivery reports are counted per transaction on a dedicated poll thread; the
///   transaction's [`Completion`] goes to the channel returned by [`KafkaSink::new`].
///
/// Dropping the sink purges what is still in flight (their transactions complete as
/// `Failed`, if anyone still listens): call [`KafkaSink::flush`] first on a graceful
/// shutdown. The drop blocks briefly (the poll thread's round, then up to 500 ms of
/// librdkafka cleanup).
pub struct KafkaSink {
    /// The producer, or with overlapping commits the two taking turns.
    pub(crate) turns: Turns,
    pub(crate) shared: Arc<Shared>,
    /// Serializes `send` (librdkafka keeps per-partition order only for what is
    /// enqueued in order, so concurrent sends must not overtake each other) and, in
    /// transactional mode, sends against commits and aborts.
    pub(crate) enqueue: tokio::sync::Mutex<()>,
    pub(crate) config: SinkConfig,
}

impl fmt::Debug for KafkaSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaSink")
            .field("config", &self.config)
            .field("in_flight", &self.shared.budget.in_flight())
            .field("fatal", &self.shared.health.fatal())
            .finish_non_exhaustive()
    }
}

/// The outcome of one enqueue attempt.
enum Enqueued {
    /// librdkafka took the record, or refused it for good and the refusal went the
    /// dead-letter / failure path. Either way the record is accounted for.
    Accounted,
    /// librdkafka's queue is full: nothing was registered, try again later.
    QueueFull,
}

impl KafkaSink {
    /// Creates the producer (with overlapping commits, the two) and its poll thread.
    /// Nothing connects yet (librdkafka connects in the background); use
    /// [`KafkaSink::check`] to see the cluster.
    ///
    /// The receiver gets one [`Completion`] per transaction. It is unbounded because
    /// the callback thread must never block; its length is bounded by the number of
    /// transactions in flight, which the in-flight caps bound in turn.
    pub fn new(
        config: SinkConfig,
    ) -> Result<(KafkaSink, UnboundedReceiver<Completion>), SinkError> {
        config.validate()?;
        let (tx, rx) = unbounded_channel();
        let shared = Arc::new(Shared::new(tx, &config));
        let turns = Turns::new(&config, &shared)?;
        Ok((
            KafkaSink {
                turns,
                shared,
                enqueue: tokio::sync::Mutex::new(()),
                config,
            },
            rx,
        ))
    }

    /// Enqueues one record of transaction `txn`, after every record of earlier `send`
    /// calls. Waits while the in-flight caps are reached or librdkafka's queue is full.
    ///
    /// A record that librdkafka refuses at once (larger than `message.max.bytes`,
    /// unknown partition, topic known not to exist…) is not an error of this call: it
    /// takes the same path as a failed delivery report (dead-letter topic, else
    /// `Completion::Failed` for `txn`), so the caller handles record failures in one
    /// place.
    ///
    /// Errors: [`SinkError::Fatal`] once the producer failed fatally (the record was
    /// not taken), [`SinkError::Usage`] for a record of an ended transaction.
    ///
    /// Cancel safety: if the future is dropped before it completes, the record was not
    /// enqueued and not counted.
    pub async fn send(&self, txn: TxnId, record: Record) -> Result<(), SinkError> {
        let _in_order = self.enqueue.lock().await;
        self.after_the_last_commit().await;
        let bytes = record.in_flight_size();
        let budget = &self.shared.budget;
        let has_room = || budget.has_room(bytes);
        let mut queue_full = false;
        loop {
            if let Some(fatal) = self.fatal_error() {
                return Err(if self.is_fenced() {
                    SinkError::Transaction {
                        call: "send",
                        kind: crate::TransactionError::Fenced,
                        reason: fatal,
                    }
                } else {
                    SinkError::Fatal(fatal)
                });
            }
            if let Some(failure) = self.shared.stopped() {
                return Err(SinkError::Stopped(failure.clone()));
            }
            if !queue_full && has_room() {
                self.begin_if_needed()?;
                match self.try_enqueue(txn, &record, bytes)? {
                    Enqueued::Accounted => return Ok(()),
                    Enqueued::QueueFull => {
                        tracing::trace!("librdkafka queue full; waiting for deliveries");
                        queue_full = true;
                    }
                }
            }
            // Only now (the common case has room) register interest, then check
            // again, so that a release between the check and the wait is not missed.
            let woken = budget.changed();
            tokio::pin!(woken);
            woken.as_mut().enable();
            if !queue_full && has_room() {
                continue;
            }
            let _ = tokio::time::timeout(WAIT_SLICE, woken).await;
            queue_full = false;
        }
    }

    /// One synchronous enqueue attempt: register, hand to librdkafka, and either keep
    /// the registration or undo it. No await in between, which is what makes `send`
    /// cancel-safe.
    fn try_enqueue(
        &self,
        txn: TxnId,
        record: &Record,
        bytes: usize,
    ) -> Result<Enqueued, SinkError> {
        self.shared.register(txn, bytes).map_err(SinkError::Usage)?;
        let delivery = Delivery::original(txn, record, bytes);
        let producer = &self.turns.active().producer;
        let (err, delivery) = match producer.send(base_record(record, delivery)) {
            Ok(()) => return Ok(Enqueued::Accounted),
            Err((err, base)) => (err, base.delivery_opaque),
        };
        let code = match &err {
            // A NUL byte in the topic name: the record names a topic that cannot exist.
            KafkaError::Nul(_) => Some(RDKafkaErrorCode::InvalidTopic),
            other => other.rdkafka_error_code(),
        };
        match code {
            Some(RDKafkaErrorCode::QueueFull) => {
                self.shared.unregister(txn, bytes);
                Ok(Enqueued::QueueFull)
            }
            Some(RDKafkaErrorCode::Fatal) => {
                self.shared.unregister(txn, bytes);
                Err(SinkError::Fatal(
                    self.fatal_error().unwrap_or_else(|| describe(&err)),
                ))
            }
            // A transactional producer takes no record while its transaction is
            // failed (e.g. records timed out in it): the transaction's fault, not
            // this record's.
            Some(RDKafkaErrorCode::State) if self.config.transactional_id.is_some() => {
                self.shared.unregister(txn, bytes);
                Err(SinkError::Transaction {
                    call: "send",
                    kind: crate::TransactionError::Abortable,
                    reason: format!(
                        "{}: the open Kafka transaction failed before this record",
                        describe(&err)
                    ),
                })
            }
            _ => {
                tracing::debug!(%txn, topic = %record.topic, error = %err, "librdkafka refused a record");
                // librdkafka words some local refusals like broker errors ("Broker:
                // Message size too large"): say where it happened.
                let reason = match code {
                    Some(RDKafkaErrorCode::MessageSizeTooLarge) => format!(
                        "{}; refused by the producer: larger than its message.max.bytes",
                        describe(&err)
                    ),
                    _ => format!("{}; refused by the producer", describe(&err)),
                };
                // A local refusal is never a timeout: it cannot stop the sink.
                let _ = self
                    .shared
                    .record_failed(delivery, Refusal::Local, code, reason, |_| record.clone());
                self.shared.pump_dead_letters(producer);
                Ok(Enqueued::Accounted)
            }
        }
    }

    /// No more records for `txn`; `record_count` were sent. `Completion::Delivered`
    /// follows once all of them are acknowledged (at once when they already are, or
    /// for 0). If `record_count` differs from the number of `send`s the sink counted,
    /// the transaction fails: confirming it could skip records.
    ///
    /// Completions of different transactions arrive in any order.
    pub fn end_transaction(&self, txn: TxnId, record_count: usize) {
        self.shared.end(txn, record_count);
    }

    /// Waits until nothing is in flight, at most `timeout`. Relies on the sink's own
    /// delivery accounting rather than librdkafka's `flush` (which costs ≥ 100 ms per
    /// call with anything outstanding): on `Ok`, every completion of what was in
    /// flight is already in the channel.
    pub async fn flush(&self, timeout: Duration) -> Result<(), SinkError> {
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let woken = self.shared.budget.changed();
            tokio::pin!(woken);
            woken.as_mut().enable();
            if self.in_flight().0 == 0 {
                return Ok(());
            }
            if tokio::time::timeout_at(deadline, woken).await.is_err() {
                let (records, bytes) = self.in_flight();
                if records == 0 {
                    return Ok(());
                }
                return Err(SinkError::Timeout {
                    waited: started.elapsed(),
                    records,
                    bytes,
                });
            }
        }
    }

    /// Records and payload bytes sent but not yet settled (acknowledged, dead-lettered
    /// or failed).
    pub fn in_flight(&self) -> (usize, usize) {
        self.shared.budget.in_flight()
    }

    /// `None` while the producers are healthy; the reason once one failed fatally
    /// (e.g. the idempotent producer lost a sequence, or was fenced). A fatal producer
    /// cannot recover: recreate the sink and resend from the last confirmed position.
    pub fn fatal_error(&self) -> Option<String> {
        self.shared.health.fatal().or_else(|| {
            self.turns.all().iter().find_map(|turn| {
                turn.producer
                    .client()
                    .fatal_error()
                    .map(|(code, reason)| format!("{code}: {reason}"))
            })
        })
    }

    /// Transactional mode: whether a newer producer with one of the sink's
    /// transactional ids fenced it (it can never write again).
    pub fn is_fenced(&self) -> bool {
        self.turns.all().iter().any(|turn| {
            turn.producer
                .client()
                .fatal_error()
                .is_some_and(|(code, _)| crate::transaction::fenced(code))
        })
    }

    /// Asks the cluster for its metadata: whether brokers answer (an error if none
    /// does within `timeout`), and for each of `topics` (plus the dead-letter topic,
    /// if configured) whether it exists. Asks for all topics rather than the given
    /// ones, because a metadata request naming a missing topic can make a broker with
    /// `auto.create.topics.enable` create it.
    pub async fn check(
        &self,
        topics: &[String],
        timeout: Duration,
    ) -> Result<ClusterCheck, SinkError> {
        let mut wanted = topics.to_vec();
        if let Some(dlq) = &self.config.dead_letter_topic {
            if !wanted.contains(dlq) {
                wanted.push(dlq.clone());
            }
        }
        let producer = Arc::clone(&self.turns.active().producer);
        let answer = tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_metadata(None, timeout)
                .map(|md| ClusterCheck::from_metadata(&md, &wanted))
        })
        .await
        .map_err(|e| SinkError::Internal(format!("metadata request task: {e}")))?;
        answer.map_err(|source| match self.shared.health.last_client_error() {
            Some(last_client_error) => SinkError::Unreachable {
                source,
                last_client_error,
            },
            None => SinkError::Kafka(source),
        })
    }

    /// A broker's configuration value (e.g. `auto.create.topics.enable`), read with
    /// the same connection settings as the producer. `None` when the broker does not
    /// report it (some managed services hide broker configs).
    pub async fn broker_setting(
        &self,
        broker_id: i32,
        name: &str,
        timeout: Duration,
    ) -> Result<Option<String>, SinkError> {
        use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
        let admin: AdminClient<LoggingContext> = self
            .config
            .client_config()
            .create_with_context(LoggingContext::default())
            .map_err(SinkError::Kafka)?;
        let options = AdminOptions::new().request_timeout(Some(timeout));
        let results = admin
            .describe_configs([&ResourceSpecifier::Broker(broker_id)], &options)
            .await
            .map_err(SinkError::Kafka)?;
        Ok(results
            .into_iter()
            .flatten()
            .flat_map(|resource| resource.entries)
            .find(|entry| entry.name == name)
            .and_then(|entry| entry.value))
    }

    /// Counters since the sink was created.
    pub fn stats(&self) -> SinkStats {
        self.shared.stats()
    }
}

impl Drop for KafkaSink {
    fn drop(&mut self) {
        if !self.shared.dead_letters.is_empty() {
            tracing::warn!("dropping the Kafka sink with dead-letter records not yet enqueued");
        }
        // Then the producers' poll threads stop, and the producers purge what is
        // still queued or in flight.
    }
}

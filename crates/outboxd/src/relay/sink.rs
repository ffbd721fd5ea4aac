//! The Kafka side of the relay, as a narrow trait, and its implementation on
//! [`KafkaSink`].

use std::future::Future;
use std::time::Duration;

use outboxd_kafka_sink::{
    Completion, KafkaSink, PendingCommit, Record, Registration, SinkConfig, SinkError, TxnId,
};
use tokio::sync::mpsc::UnboundedReceiver;

/// Where records go, with one [`Completion`] per ended transaction.
pub(crate) trait Sink {
    /// Exactly-once: a commit under way, ready once the broker answered it.
    type Commit: Future<Output = Result<(), SinkError>> + Unpin;
    /// Enqueues a record of `txn` after every earlier one; waits while the sink is
    /// full. Record-level failures arrive as completions, not as errors here.
    async fn send(&self, txn: TxnId, record: Record) -> Result<(), SinkError>;
    /// No more records for `txn`; `records` were sent.
    fn end_transaction(&self, txn: TxnId, records: usize);
    /// The next completion. Cancellation-safe.
    async fn next_completion(&mut self) -> Option<Completion>;
    /// Drops completions already waiting (of a session that ended).
    fn discard_completions(&mut self);
    /// Waits (at most `timeout`) until nothing is in flight.
    async fn flush(&self, timeout: Duration) -> Result<(), SinkError>;
    /// The reason once the sink can no longer produce; it must then be replaced.
    fn fatal_error(&self) -> Option<String>;
    /// Exactly-once: another relay's producer fenced this one.
    fn fenced(&self) -> bool;
    fn in_flight_records(&self) -> usize;
    /// Payload bytes acknowledged since the previous call.
    fn take_bytes_delivered(&mut self) -> u64;
    /// Exactly-once: the transactional ids of the sink's producers.
    fn transactional_ids(&self) -> Vec<String>;
    /// Exactly-once: fences older producers with the same transactional ids.
    async fn init_transactions(&self, timeout: Duration) -> Result<(), SinkError>;
    /// Exactly-once: the same, but gives up at once when the broker is still
    /// aborting an older producer's transaction; the sink must then be dropped.
    async fn try_init_transactions(&self, timeout: Duration) -> Result<Registration, SinkError>;
    /// Exactly-once: waits until everything sent since the last commit is
    /// acknowledged, then starts the commit that makes it visible at once. What is
    /// sent meanwhile goes into the next transaction; await this commit before the
    /// next `begin_commit`, and abort after its failure.
    async fn begin_commit(&self, timeout: Duration) -> Result<Self::Commit, SinkError>;
    /// Exactly-once: discards every open transaction.
    async fn abort_transaction(&self, timeout: Duration) -> Result<(), SinkError>;
}

/// Makes a fresh sink, at start and whenever one must be replaced; transactional
/// (exactly-once) with a `transactional_id`.
pub(crate) trait SinkFactory {
    type Sink: Sink;
    fn create(&self, transactional_id: Option<&str>) -> Result<Self::Sink, SinkError>;
    /// Drops `sink` and returns once it is gone: its producer sends nothing more.
    async fn dispose(&self, sink: Self::Sink);
}

/// A [`KafkaSink`] and its completion channel.
#[derive(Debug)]
pub(crate) struct KafkaPort {
    sink: KafkaSink,
    completions: UnboundedReceiver<Completion>,
    /// `bytes_delivered` already counted by [`Sink::take_bytes_delivered`]; a new
    /// producer starts again at zero.
    bytes_counted: u64,
}

impl SinkFactory for SinkConfig {
    type Sink = KafkaPort;

    fn create(&self, transactional_id: Option<&str>) -> Result<KafkaPort, SinkError> {
        let (sink, completions) = KafkaSink::new(SinkConfig {
            transactional_id: transactional_id.map(str::to_owned),
            ..self.clone()
        })?;
        Ok(KafkaPort {
            sink,
            completions,
            bytes_counted: 0,
        })
    }

    async fn dispose(&self, sink: KafkaPort) {
        // Dropping a producer blocks (its threads stop): not on the runtime.
        if let Err(e) = tokio::task::spawn_blocking(move || drop(sink)).await {
            tracing::error!(error = %e, "dropping a Kafka producer failed");
        }
    }
}

impl Sink for KafkaPort {
    type Commit = PendingCommit;

    async fn send(&self, txn: TxnId, record: Record) -> Result<(), SinkError> {
        self.sink.send(txn, record).await
    }

    fn end_transaction(&self, txn: TxnId, records: usize) {
        self.sink.end_transaction(txn, records);
    }

    async fn next_completion(&mut self) -> Option<Completion> {
        self.completions.recv().await
    }

    fn discard_completions(&mut self) {
        while self.completions.try_recv().is_ok() {}
    }

    async fn flush(&self, timeout: Duration) -> Result<(), SinkError> {
        self.sink.flush(timeout).await
    }

    fn fatal_error(&self) -> Option<String> {
        self.sink.fatal_error()
    }

    fn fenced(&self) -> bool {
        self.sink.is_fenced()
    }

    fn in_flight_records(&self) -> usize {
        self.sink.in_flight().0
    }

    fn take_bytes_delivered(&mut self) -> u64 {
        let total = self.sink.stats().bytes_delivered;
        let new = total.saturating_sub(self.bytes_counted);
        self.bytes_counted = total;
        new
    }

    fn transactional_ids(&self) -> Vec<String> {
        self.sink.transactional_ids()
    }

    async fn init_transactions(&self, timeout: Duration) -> Result<(), SinkError> {
        self.sink.init_transactions(timeout).await
    }

    async fn try_init_transactions(&self, timeout: Duration) -> Result<Registration, SinkError> {
        self.sink.try_init_transactions(timeout).await
    }

    async fn begin_commit(&self, timeout: Duration) -> Result<PendingCommit, SinkError> {
        self.sink.begin_commit(timeout).await
    }

    async fn abort_transaction(&self, timeout: Duration) -> Result<(), SinkError> {
        self.sink.abort_transaction(timeout).await
    }
}

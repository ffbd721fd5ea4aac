//! The transactional (exactly-once) mode of the sink: Kafka transactions around the
//! records sent, committed or aborted by the caller.
//!
//! A transaction begins with the first record sent after the previous one ended
//! (`send` calls [`KafkaSink::begin_if_needed`]). librdkafka's blocking calls run off
//! the async runtime. Before committing, the sink has librdkafka send what is queued
//! at once and waits until librdkafka counts no message, so every delivery report is
//! settled: rust-rdkafka's commit flushes first, and its flush polls for a whole
//! 100 ms whenever librdkafka still counts a message (it did for ~2 % of commits,
//! adding 100 ms to their events' latency).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, Producer};

use crate::context::SinkContext;
use crate::error::{SinkError, TransactionError};
use crate::lock;
use crate::sink::KafkaSink;

/// How long [`KafkaSink::try_init_transactions`] may wait to learn that the broker
/// refused its registration. librdkafka asks again a fixed 500 ms after a refusal;
/// dropped within this window, the producer never does, so it cannot fence its
/// successor.
const REFUSAL_WINDOW: Duration = Duration::from_millis(300);

/// How often [`KafkaSink::try_init_transactions`] looks for a refusal.
const REFUSAL_CHECK: Duration = Duration::from_millis(10);

/// How a registration of a transactional producer ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Registration {
    /// Registered: older producers with this transactional id are fenced.
    Registered,
    /// The broker refused it while it aborts an older producer's open transaction
    /// (`CONCURRENT_TRANSACTIONS`; the abort has begun). Drop this sink and register
    /// a new one: librdkafka itself would ask again only after 500 ms.
    AbortInProgress,
}

/// How long after a commit the next transaction begins. The broker writes the commit
/// markers after it answered the commit; a transaction that adds a partition before
/// they are written is answered CONCURRENT_TRANSACTIONS, and librdkafka retries only
/// after a fixed 20 ms. At 1,000 records/s in 10 ms transactions, 55 of ~700
/// transactions met that without a pause and 1 with 3 ms (librdkafka's own client
/// against the same broker); docs/benchmarks.md.
const NEXT_TRANSACTION_AFTER: Duration = Duration::from_millis(3);

impl KafkaSink {
    /// Registers this producer's transactional id with the broker: any older producer
    /// with the same id is fenced (its open transaction aborted; it can never write
    /// again). Call once, before the first `send`.
    pub async fn init_transactions(&self, timeout: Duration) -> Result<(), SinkError> {
        self.transactional_id()?;
        self.blocking("init", move |p| p.init_transactions(timeout))
            .await
    }

    /// Like [`init_transactions`](Self::init_transactions), but returns
    /// [`Registration::AbortInProgress`] as soon as the broker refuses the first
    /// request because an older producer's transaction is being aborted (what a
    /// takeover after a crash meets). Drop the sink right away, before librdkafka's
    /// own retry: that is what makes a new producer's request safe.
    pub async fn try_init_transactions(
        &self,
        timeout: Duration,
    ) -> Result<Registration, SinkError> {
        self.transactional_id()?;
        self.blocking("init", move |p| register(p, timeout)).await
    }

    /// Commits the open transaction (everything sent since it began) once every
    /// record is acknowledged; `Ok` also when none is open. On
    /// [`TransactionError::Abortable`] call [`abort_transaction`](Self::abort_transaction).
    pub async fn commit_transaction(&self, timeout: Duration) -> Result<(), SinkError> {
        self.transactional_id()?;
        let _no_sends = self.enqueue.lock().await;
        if !self.in_transaction.load(Ordering::Acquire) {
            return Ok(());
        }
        let started = Instant::now();
        self.blocking("flush", move |p| {
            send_now_and_wait(p, timeout);
            Ok(())
        })
        .await?;
        // Returns at once unless librdkafka's wait timed out; then it names what is
        // still in flight.
        self.flush(timeout.saturating_sub(started.elapsed()))
            .await?;
        if self.is_fenced() {
            return Err(SinkError::Transaction {
                call: "commit",
                kind: TransactionError::Fenced,
                reason: self.fatal_error().unwrap_or_default(),
            });
        }
        // librdkafka need not refuse the commit when a record failed before it was
        // sent (a timeout in its queue): the sink's own count decides. A record the
        // producer refused and the dead-letter topic took is not a failure.
        let failed = self.shared.undelivered() - self.errors_at_begin.load(Ordering::Acquire);
        if failed > 0 {
            return Err(SinkError::Transaction {
                call: "commit",
                kind: TransactionError::Abortable,
                reason: format!("{failed} record(s) of the transaction failed delivery"),
            });
        }
        let remaining = timeout.saturating_sub(started.elapsed());
        let result = self
            .blocking("commit", move |p| p.commit_transaction(remaining))
            .await;
        if result.is_ok() {
            self.in_transaction.store(false, Ordering::Release);
            *lock(&self.committed_at) = Some(Instant::now());
        }
        result
    }

    /// Before the first record of a transaction: waits out what is left of
    /// [`NEXT_TRANSACTION_AFTER`] since the last commit.
    pub(crate) async fn after_the_last_commit(&self) {
        if self.config.transactional_id.is_none() || self.in_transaction.load(Ordering::Acquire) {
            return;
        }
        let Some(at) = *lock(&self.committed_at) else {
            return;
        };
        tokio::time::sleep_until((at + NEXT_TRANSACTION_AFTER).into()).await;
    }

    /// Aborts the open transaction: its records are never visible to `read_committed`
    /// consumers. Records still queued are purged (their transactions complete as
    /// failed).
    pub async fn abort_transaction(&self, timeout: Duration) -> Result<(), SinkError> {
        self.transactional_id()?;
        let _no_sends = self.enqueue.lock().await;
        if !self.in_transaction.load(Ordering::Acquire) {
            return Ok(());
        }
        let result = self
            .blocking("abort", move |p| p.abort_transaction(timeout))
            .await;
        if result.is_ok() {
            self.in_transaction.store(false, Ordering::Release);
        }
        result
    }

    /// Begins a transaction if the sink is transactional and none is open. Called
    /// with the enqueue lock held.
    pub(crate) fn begin_if_needed(&self) -> Result<(), SinkError> {
        if self.config.transactional_id.is_none() || self.in_transaction.load(Ordering::Acquire) {
            return Ok(());
        }
        self.producer
            .begin_transaction()
            .map_err(|e| transaction_error("begin", e))?;
        self.errors_at_begin
            .store(self.shared.undelivered(), Ordering::Release);
        self.in_transaction.store(true, Ordering::Release);
        Ok(())
    }

    fn transactional_id(&self) -> Result<&str, SinkError> {
        self.config.transactional_id.as_deref().ok_or_else(|| {
            SinkError::Usage("a transaction call on a sink without a transactional id".into())
        })
    }

    /// Runs a blocking librdkafka transaction call on a thread of the blocking pool.
    async fn blocking<T: Send + 'static>(
        &self,
        call: &'static str,
        f: impl FnOnce(&BaseProducer<SinkContext>) -> Result<T, KafkaError> + Send + 'static,
    ) -> Result<T, SinkError> {
        let producer: Arc<BaseProducer<SinkContext>> = Arc::clone(&self.producer);
        tokio::task::spawn_blocking(move || f(&producer))
            .await
            .map_err(|e| SinkError::Internal(format!("transaction {call} task: {e}")))?
            .map_err(|e| transaction_error(call, e))
    }
}

/// Sends every queued record at once and waits (at most `timeout`) until librdkafka
/// counts no message. librdkafka ignores `linger.ms` only while a flush runs, and
/// rust-rdkafka's own flush holds it for an instant between 100 ms polls; a commit
/// would wait out the linger of the transaction's last records and of its
/// checkpoint record. The poll thread serves the delivery reports meanwhile
/// (event mode: librdkafka's flush only waits for its count to reach zero).
#[allow(unsafe_code)]
fn send_now_and_wait(producer: &BaseProducer<SinkContext>, timeout: Duration) {
    let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: the handle is the producer's own and lives as long as `producer`;
    // rd_kafka_flush may be called from any thread.
    unsafe { rdkafka::bindings::rd_kafka_flush(producer.client().native_ptr(), ms) };
}

/// Registers `producer` in slices of [`REFUSAL_CHECK`], so that a refusal within
/// [`REFUSAL_WINDOW`] is seen in time (librdkafka resumes an initialization that
/// timed out, and reports the refusal that made it wait as the timeout's error).
///
/// Only a `CONCURRENT_TRANSACTIONS` refusal as the first answer gives up: librdkafka
/// then asks again only from its 500 ms timer. After other refusals (a coordinator
/// moving or loading) it may ask again at once, so a request could be in flight
/// when the producer is dropped, and reach the broker after its successor's: that
/// one would be fenced. Those registrations wait for librdkafka instead.
fn register(
    producer: &BaseProducer<SinkContext>,
    timeout: Duration,
) -> Result<Registration, KafkaError> {
    let started = Instant::now();
    let mut watching = true;
    loop {
        watching &= started.elapsed() < REFUSAL_WINDOW;
        let slice = if watching {
            REFUSAL_CHECK
        } else {
            timeout.saturating_sub(started.elapsed())
        };
        match producer.init_transactions(slice) {
            Ok(()) => return Ok(Registration::Registered),
            Err(KafkaError::Transaction(e)) if watching => match e.code() {
                RDKafkaErrorCode::ConcurrentTransactions => {
                    return Ok(Registration::AbortInProgress)
                }
                RDKafkaErrorCode::OperationTimedOut => {}
                _ if e.is_retriable() => watching = false,
                _ => return Err(KafkaError::Transaction(e)),
            },
            Err(e) => return Err(e),
        }
    }
}

/// Sorts a failed transaction call into what the caller must do next.
fn transaction_error(call: &'static str, error: KafkaError) -> SinkError {
    let reason = error.to_string();
    let kind = match &error {
        KafkaError::Transaction(e) if fenced(e.code()) => TransactionError::Fenced,
        KafkaError::Transaction(e) if e.is_fatal() => TransactionError::Fatal,
        KafkaError::Transaction(e) if e.txn_requires_abort() => TransactionError::Abortable,
        KafkaError::Transaction(e) if e.is_retriable() => TransactionError::Retriable,
        _ => TransactionError::Fatal,
    };
    SinkError::Transaction { call, kind, reason }
}

/// Another producer with the same transactional id took over.
pub(crate) fn fenced(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::ProducerFenced
            | RDKafkaErrorCode::Fenced
            | RDKafkaErrorCode::InvalidProducerEpoch
    )
}

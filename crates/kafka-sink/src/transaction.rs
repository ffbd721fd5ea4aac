//! The transactional (exactly-once) mode of the sink: Kafka transactions around the
//! records sent, committed or aborted by the caller.
//!
//! A transaction begins with the first record sent after the previous one ended
//! (`send` calls [`KafkaSink::begin_if_needed`]). [`KafkaSink::begin_commit`] waits
//! until every record of the active producer's transaction is acknowledged and
//! starts its commit. With one producer it returns once the commit is answered.
//! With [`SinkConfig::overlap_commits`](crate::SinkConfig::overlap_commits) the
//! sink's two producers take turns (see `turns`): it passes the turn at once, so
//! the next records go into the other producer's transaction while the broker
//! commits. The caller awaits that commit before it begins the next one, and aborts
//! every open transaction if it fails (docs/architecture.md, "Overlapping commits").
//!
//! librdkafka's blocking calls run off the async runtime. Before committing, the sink
//! has librdkafka send what is queued at once and waits until librdkafka counts no
//! message, so every delivery report is settled: rust-rdkafka's commit flushes
//! first, and its flush polls for a whole 100 ms whenever librdkafka still counts a
//! message (it did for ~2 % of commits, adding 100 ms to their events' latency).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, Producer};
use tokio::sync::mpsc::unbounded_channel;
use tokio::task::JoinHandle;

use crate::accounting::Shared;
use crate::context::SinkContext;
use crate::error::{SinkError, TransactionError};
use crate::lock;
use crate::sink::KafkaSink;
use crate::turns::{create_producer, second_transactional_id, Turn};

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
    /// Registers the sink's transactional ids with the broker: any older producer
    /// with one of them is fenced (its open transaction aborted; it can never write
    /// again). Call once, before the first `send`.
    pub async fn init_transactions(&self, timeout: Duration) -> Result<(), SinkError> {
        self.transactional_id()?;
        let answers = self
            .on_every_id("init", move |p| p.init_transactions(timeout))
            .await?;
        answers.into_iter().collect()
    }

    /// Like [`init_transactions`](Self::init_transactions), but returns
    /// [`Registration::AbortInProgress`] as soon as the broker refuses a first
    /// request because an older producer's transaction is being aborted (what a
    /// takeover after a crash meets). Drop the sink right away, before librdkafka's
    /// own retry: that is what makes a new producer's request safe.
    pub async fn try_init_transactions(
        &self,
        timeout: Duration,
    ) -> Result<Registration, SinkError> {
        self.transactional_id()?;
        let answers = self
            .on_every_id("init", move |p| register(p, timeout))
            .await?;
        let mut outcome = Ok(Registration::Registered);
        for answer in answers {
            match (answer, &outcome) {
                (Err(e), Ok(_)) => outcome = Err(e),
                (Ok(Registration::AbortInProgress), Ok(_)) => {
                    outcome = Ok(Registration::AbortInProgress);
                }
                _ => {}
            }
        }
        outcome
    }

    /// Commits the open transaction (everything sent since it began) once every
    /// record is acknowledged; `Ok` also when none is open. On
    /// [`TransactionError::Abortable`] call [`abort_transaction`](Self::abort_transaction).
    pub async fn commit_transaction(&self, timeout: Duration) -> Result<(), SinkError> {
        // The commit call itself is bounded by what is left of `timeout`.
        self.begin_commit(timeout).await?.await
    }

    /// Waits until every record of the open transaction is acknowledged, starts its
    /// commit and passes the turn: records sent from now on go into the other
    /// producer's transaction. The returned commit must be awaited before the next
    /// `begin_commit`, and after its failure every open transaction aborted
    /// ([`abort_transaction`](Self::abort_transaction)): a transaction may commit
    /// only after the one before it did. With one producer
    /// ([`SinkConfig::overlap_commits`](crate::SinkConfig::overlap_commits) off)
    /// it returns once the commit is answered.
    pub async fn begin_commit(&self, timeout: Duration) -> Result<PendingCommit, SinkError> {
        self.transactional_id()?;
        let _no_sends = self.enqueue.lock().await;
        let turn = Arc::clone(self.turns.active());
        if !turn.in_transaction.load(Ordering::Acquire) {
            return Ok(PendingCommit(None));
        }
        let other = self.turns.other();
        if other.is_some_and(|o| o.in_transaction.load(Ordering::Acquire)) {
            return Err(SinkError::Usage(
                "a commit began before the previous one ended (await it, or abort after \
                 its failure)"
                    .into(),
            ));
        }
        let started = Instant::now();
        let producer = Arc::clone(&turn.producer);
        run_blocking("flush", move || {
            send_now_and_wait(&producer, timeout);
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
        let failed = self.shared.undelivered() - turn.errors_at_begin.load(Ordering::Acquire);
        if failed > 0 {
            return Err(SinkError::Transaction {
                call: "commit",
                kind: TransactionError::Abortable,
                reason: format!("{failed} record(s) of the transaction failed delivery"),
            });
        }
        let remaining = timeout.saturating_sub(started.elapsed());
        let commit = tokio::task::spawn_blocking(move || {
            let result = turn.producer.commit_transaction(remaining);
            if result.is_ok() {
                turn.in_transaction.store(false, Ordering::Release);
                *lock(&turn.committed_at) = Some(Instant::now());
            }
            result
        });
        if other.is_none() {
            // One producer: no record may be sent before the answer.
            PendingCommit(Some(commit)).await?;
            return Ok(PendingCommit(None));
        }
        self.turns.pass();
        Ok(PendingCommit(Some(commit)))
    }

    /// Before the first record of a transaction: waits out what is left of
    /// [`NEXT_TRANSACTION_AFTER`] since the active producer's last commit.
    pub(crate) async fn after_the_last_commit(&self) {
        let turn = self.turns.active();
        if self.config.transactional_id.is_none() || turn.in_transaction.load(Ordering::Acquire) {
            return;
        }
        let Some(at) = *lock(&turn.committed_at) else {
            return;
        };
        tokio::time::sleep_until((at + NEXT_TRANSACTION_AFTER).into()).await;
    }

    /// Aborts every open transaction: their records are never visible to
    /// `read_committed` consumers. Records still queued are purged (their
    /// transactions complete as failed). Await a pending commit first: a producer
    /// refuses an abort while it commits.
    pub async fn abort_transaction(&self, timeout: Duration) -> Result<(), SinkError> {
        self.transactional_id()?;
        let _no_sends = self.enqueue.lock().await;
        let mut outcome = Ok(());
        for turn in self.turns.all() {
            if !turn.in_transaction.load(Ordering::Acquire) {
                continue;
            }
            let producer = Arc::clone(&turn.producer);
            let aborted = run_blocking("abort", move || producer.abort_transaction(timeout)).await;
            if aborted.is_ok() {
                turn.in_transaction.store(false, Ordering::Release);
            }
            outcome = outcome.and(aborted);
        }
        outcome
    }

    /// Begins a transaction if the sink is transactional and none is open. Called
    /// with the enqueue lock held.
    pub(crate) fn begin_if_needed(&self) -> Result<(), SinkError> {
        let turn = self.turns.active();
        if self.config.transactional_id.is_none() || turn.in_transaction.load(Ordering::Acquire) {
            return Ok(());
        }
        turn.producer
            .begin_transaction()
            .map_err(|e| transaction_error("begin", e))?;
        turn.errors_at_begin
            .store(self.shared.undelivered(), Ordering::Release);
        turn.in_transaction.store(true, Ordering::Release);
        Ok(())
    }

    /// The transactional ids of the sink's producers (none at least once).
    pub fn transactional_ids(&self) -> Vec<String> {
        self.config
            .transactional_id
            .iter()
            .flat_map(|id| [id.clone(), second_transactional_id(id)])
            .collect()
    }

    fn transactional_id(&self) -> Result<&str, SinkError> {
        self.config.transactional_id.as_deref().ok_or_else(|| {
            SinkError::Usage("a transaction call on a sink without a transactional id".into())
        })
    }

    /// Runs a blocking librdkafka call for each transactional id at once, and
    /// returns every answer: a sink must not be dropped while a registration is in
    /// flight, which could fence its successor. Without overlapping commits the
    /// second id has no producer of its own: one is made for the call and dropped
    /// after it, so that a previous holder that overlapped is fenced all the same.
    /// If the relay may not use that id (a literal ACL on the first one, as before
    /// overlapping commits), no relay with its credentials can have used it, and
    /// the refusal is left out.
    async fn on_every_id<T: Send + 'static>(
        &self,
        call: &'static str,
        f: impl Fn(&BaseProducer<SinkContext>) -> Result<T, KafkaError> + Clone + Send + 'static,
    ) -> Result<Vec<Result<T, SinkError>>, SinkError> {
        let mut producers: Vec<_> = self
            .turns
            .all()
            .iter()
            .map(|turn: &Arc<Turn>| Arc::clone(&turn.producer))
            .collect();
        let spare = match (&self.config.transactional_id, self.turns.other()) {
            // Its own accounting: its errors are not the sink's.
            (Some(id), None) => Some(create_producer(
                &self.config,
                &Arc::new(Shared::new(unbounded_channel().0, &self.config)),
                Some(&second_transactional_id(id)),
            )?),
            _ => None,
        };
        let spare_index = spare.is_some().then_some(producers.len());
        producers.extend(spare.clone());
        // The first producer has the first id, the second (or the spare) the second.
        let ids = self.transactional_ids();
        let calls: Vec<_> = producers
            .into_iter()
            .zip(ids)
            .enumerate()
            .map(|(index, (producer, id))| {
                let f = f.clone();
                let is_spare = spare_index == Some(index);
                let answer = run_blocking(call, move || match f(&producer) {
                    Err(KafkaError::Transaction(e))
                        if is_spare
                            && e.code() == RDKafkaErrorCode::TransactionalIdAuthorizationFailed =>
                    {
                        Ok(None)
                    }
                    answer => answer.map(Some),
                });
                async move { answer.await.map_err(|e| naming_transactional_id(e, &id)) }
            })
            .collect();
        let mut answers = Vec::with_capacity(calls.len());
        for call in calls {
            match call.await {
                Ok(Some(answer)) => answers.push(Ok(answer)),
                Ok(None) => tracing::debug!("not authorized for the second transactional id; no relay of these credentials can have used it"),
                Err(e) => answers.push(Err(e)),
            }
        }
        if let Some(spare) = spare {
            // Dropping a producer blocks while its threads stop.
            run_blocking("drop", move || {
                drop(spare);
                Ok(())
            })
            .await?;
        }
        Ok(answers)
    }
}

/// A commit under way ([`KafkaSink::begin_commit`]): ready once the broker answered
/// it.
#[must_use = "a transaction may commit only after the one before it did"]
#[derive(Debug)]
pub struct PendingCommit(Option<JoinHandle<Result<(), KafkaError>>>);

impl Future for PendingCommit {
    type Output = Result<(), SinkError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Some(commit) = self.0.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        let joined = std::task::ready!(Pin::new(commit).poll(cx));
        self.0 = None;
        Poll::Ready(
            joined
                .map_err(|e| SinkError::Internal(format!("transaction commit task: {e}")))?
                .map_err(|e| transaction_error("commit", e)),
        )
    }
}

/// Runs a blocking librdkafka transaction call on a thread of the blocking pool. The
/// call starts at once, whether or not the returned future is awaited.
fn run_blocking<T: Send + 'static>(
    call: &'static str,
    f: impl FnOnce() -> Result<T, KafkaError> + Send + 'static,
) -> impl Future<Output = Result<T, SinkError>> {
    let task = tokio::task::spawn_blocking(f);
    async move {
        task.await
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
    let mut reason = error.to_string();
    if matches!(&error, KafkaError::Transaction(e) if e.code() == RDKafkaErrorCode::TransactionalIdAuthorizationFailed)
    {
        reason.push_str(
            ": grant the relay's principal Write and Describe on this TransactionalId \
             (docs/operations.md, \"The exactly-once producer cannot register\")",
        );
    }
    let kind = match &error {
        KafkaError::Transaction(e) if fenced(e.code()) => TransactionError::Fenced,
        KafkaError::Transaction(e) if e.is_fatal() => TransactionError::Fatal,
        KafkaError::Transaction(e) if e.txn_requires_abort() => TransactionError::Abortable,
        KafkaError::Transaction(e) if e.is_retriable() => TransactionError::Retriable,
        _ => TransactionError::Fatal,
    };
    SinkError::Transaction { call, kind, reason }
}

/// With two transactional ids, which one a call failed for.
fn naming_transactional_id(error: SinkError, id: &str) -> SinkError {
    match error {
        SinkError::Transaction { call, kind, reason } => SinkError::Transaction {
            call,
            kind,
            reason: format!("transactional id {id}: {reason}"),
        },
        other => other,
    }
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

//! How a session makes what it sent durable before confirming it to PostgreSQL.
//!
//! - At least once: the broker acknowledges records per PostgreSQL transaction; the
//!   tracker turns that into a completed prefix; a checkpoint write records it; then
//!   the source may confirm it.
//! - Exactly once: records go into a Kafka transaction; a commit, with the
//!   checkpoint inside, makes them and their record visible together; once the
//!   checkpoint record is visible, the source may confirm it. While one commit is
//!   under way the next records go into the next transaction, which commits only
//!   after it (docs/architecture.md, "Overlapping commits").

use std::future::Future;
use std::time::Duration;

use outboxd_kafka_sink::{SinkError, TxnId};
use outboxd_pgoutput::Lsn;
use tokio::time::Instant;

use super::Pipeline;
use crate::checkpoint::{Checkpoint, EventPosition};
use crate::relay::checkpoints::{Checkpointer, Checkpoints};
use crate::relay::committer::{Closed, Committer};
use crate::relay::sink::Sink;
use crate::relay::source::Source;
use crate::relay::visibility::Visibility;
use crate::relay::RelayError;

/// How long one Kafka transaction call may take.
const TRANSACTION_TIMEOUT: Duration = Duration::from_secs(30);

/// The delivery mode and its settings.
#[derive(Debug, Clone)]
pub(crate) enum Mode {
    AtLeastOnce {
        /// The shortest time between two checkpoint writes.
        checkpoint_interval: Duration,
    },
    ExactlyOnce {
        checkpoint_topic: String,
        /// A Kafka transaction is committed at the latest this long after its first
        /// record, or once its records reach `max_bytes`.
        max_age: Duration,
        max_bytes: usize,
    },
}

pub(super) enum Durability {
    AtLeastOnce(Checkpointer),
    ExactlyOnce(Committer, Visibility),
}

/// A closed Kafka transaction whose commit is under way.
pub(super) struct Committing<C> {
    commit: C,
    closed: Closed,
    started: Instant,
}

/// The broker's answer to the commit under way; never ready when none is.
/// Cancellation-safe.
pub(super) async fn commit_answer<C: Future + Unpin>(
    committing: &mut Option<Committing<C>>,
) -> C::Output {
    match committing {
        Some(c) => (&mut c.commit).await,
        None => std::future::pending().await,
    }
}

/// What the durability side has to say.
pub(super) enum Next {
    /// A checkpoint write finished, or a committed checkpoint became visible: up to
    /// here is durable.
    Durable(Lsn),
    /// The open Kafka transaction is due for its commit.
    CommitDue,
}

impl Durability {
    pub fn new(mode: &Mode, from: Checkpoint) -> Self {
        match mode {
            Mode::AtLeastOnce {
                checkpoint_interval,
            } => Durability::AtLeastOnce(Checkpointer::new(from, *checkpoint_interval)),
            Mode::ExactlyOnce {
                checkpoint_topic,
                max_age,
                max_bytes,
            } => {
                let visibility = Visibility::new(from.identity());
                Durability::ExactlyOnce(
                    Committer::new(from, checkpoint_topic.clone(), *max_age, *max_bytes),
                    visibility,
                )
            }
        }
    }

    /// Exactly once: how long the awaited commit has not been visible (zero when
    /// none is awaited, and at least once).
    pub fn unsettled_for(&self) -> Duration {
        match self {
            Durability::ExactlyOnce(_, v) => v.unsettled_for(),
            Durability::AtLeastOnce(_) => Duration::ZERO,
        }
    }

    /// Waits until there is something to do; `more_received`: the source has
    /// messages waiting. Cancellation-safe.
    pub async fn next(
        &mut self,
        store: &impl Checkpoints,
        more_received: bool,
    ) -> Result<Next, RelayError> {
        match self {
            Durability::AtLeastOnce(c) => c.next_durable(store).await.map(Next::Durable),
            Durability::ExactlyOnce(c, v) => {
                let due = if v.overdue() {
                    None
                } else {
                    c.due(more_received)
                };
                let commit_due = async {
                    match due {
                        // Not through a timer when passed: the runtime's timer wheel
                        // learns the time only when it turns, which a relay busy with
                        // a backlog seldom lets it do (seen: a 150,000-event
                        // transaction far past both limits).
                        Some(at) if at <= Instant::now() => {}
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    visible = v.next_visible(store) => visible.map(Next::Durable),
                    () = commit_due => Ok(Next::CommitDue),
                }
            }
        }
    }
}

impl<S: Source, K: Sink, W: Checkpoints> Pipeline<'_, S, K, W> {
    /// A PostgreSQL transaction that committed at `commit_time` began to arrive; the
    /// server sent it at `sent_at`, if known (both microseconds since 2000-01-01 on
    /// the server's clock).
    pub(super) fn transaction_began(&mut self, commit_time: i64, sent_at: Option<i64>) {
        if let (Durability::ExactlyOnce(c, _), Some(sent_at)) = (&mut self.durability, sent_at) {
            let lag = u64::try_from(sent_at.saturating_sub(commit_time)).unwrap_or(0);
            c.sender_lag(Duration::from_micros(lag));
        }
    }

    /// An event record of `bytes` was sent; its change arrived at `received_at`.
    pub(super) fn record_sent(&mut self, bytes: usize, at: EventPosition, received_at: Instant) {
        if let Durability::ExactlyOnce(c, _) = &mut self.durability {
            c.sent(bytes, at, received_at);
        }
    }

    /// A PostgreSQL transaction's records were all sent; it ended at `end_lsn`.
    pub(super) fn transaction_ended(&mut self, txn: TxnId, end_lsn: Lsn) {
        if let Durability::ExactlyOnce(c, _) = &mut self.durability {
            c.ended(txn, end_lsn);
        }
    }

    /// The broker acknowledged every record of `txn`. At least once that makes it
    /// complete; exactly once only a commit does.
    pub(super) fn transaction_acknowledged(&mut self, txn: TxnId, published: u64) {
        if let Durability::AtLeastOnce(c) = &mut self.durability {
            self.state.metrics.events_published.inc_by(published);
            self.tracker.complete(txn);
            if let Some(lsn) = self.tracker.confirmed() {
                c.want(lsn, self.tracker.last_event());
            }
        }
    }

    /// When nothing is in flight the server's WAL end may be confirmed (so an idle
    /// outbox on a busy database holds back no WAL); it is recorded like any other
    /// position first.
    pub(super) fn follow_idle_wal_end(&mut self) {
        let Some(wal_end) = self.source.positions().idle_wal_end else {
            return;
        };
        if self.tracker.in_flight() > 0 {
            return;
        }
        match &mut self.durability {
            Durability::AtLeastOnce(c) => c.want(wal_end, None),
            Durability::ExactlyOnce(c, _) => c.idle(wal_end),
        }
    }

    pub(super) async fn on_durability(&mut self, next: Next) -> Result<(), RelayError> {
        match next {
            Next::Durable(lsn) => {
                self.confirm(lsn);
                Ok(())
            }
            Next::CommitDue => self.commit().await,
        }
    }

    /// Exactly once: closes the open Kafka transaction with the checkpoint of its
    /// last event and begins its commit, once the commit before it ended.
    async fn commit(&mut self) -> Result<(), RelayError> {
        let Durability::ExactlyOnce(_, visibility) = &self.durability else {
            return Ok(());
        };
        // Due before the awaited commit became overdue, while it was being waited for.
        if visibility.overdue() {
            return Ok(());
        }
        self.settle_commit().await?;
        let Durability::ExactlyOnce(committer, _) = &mut self.durability else {
            return Ok(());
        };
        let (checkpoint, record) = committer.checkpoint_record();
        self.state.last_txn += 1;
        let txn = TxnId(self.state.last_txn);
        self.sink
            .send(txn, record)
            .await
            .map_err(RelayError::from_sink)?;
        self.sink.end_transaction(txn, 1);
        let started = Instant::now();
        let commit = self
            .sink
            .begin_commit(TRANSACTION_TIMEOUT)
            .await
            .map_err(RelayError::from_sink)?;
        let closed = committer.closed(checkpoint);
        self.committing = Some(Committing {
            commit,
            closed,
            started,
        });
        Ok(())
    }

    /// Waits for the commit under way, if any, and takes in its answer.
    async fn settle_commit(&mut self) -> Result<(), RelayError> {
        if self.committing.is_none() {
            return Ok(());
        }
        let answer = commit_answer(&mut self.committing).await;
        self.on_commit_answer(answer)
    }

    /// The broker answered the commit under way: on success its PostgreSQL
    /// transactions are complete, and its checkpoint is awaited until visible.
    pub(super) fn on_commit_answer(
        &mut self,
        answer: Result<(), SinkError>,
    ) -> Result<(), RelayError> {
        let Some(Committing {
            closed, started, ..
        }) = self.committing.take()
        else {
            return Ok(());
        };
        answer.map_err(RelayError::from_sink)?;
        let metrics = &self.state.metrics;
        metrics.kafka_transactions.inc();
        metrics
            .commit_seconds
            .observe(started.elapsed().as_secs_f64());
        tracing::debug!(confirmed = %closed.confirmed, records = closed.records, "Kafka transaction committed");
        metrics.events_published.inc_by(closed.records);
        for txn in closed.ended {
            self.tracker.complete(txn);
        }
        if let Durability::ExactlyOnce(_, visibility) = &mut self.durability {
            visibility.committed(closed.confirmed);
        }
        Ok(())
    }

    /// Something is durable up to `lsn`: the source may confirm it.
    pub(super) fn confirm(&mut self, lsn: Lsn) {
        if lsn > self.state.confirmed {
            self.state.metrics.transactions_confirmed.inc();
            self.state.metrics.checkpoint_writes.inc();
            self.state.confirmed = lsn;
            self.source.acknowledge(lsn);
        }
    }

    /// At the end of a session: makes what completed durable and confirms it,
    /// within `deadline`. Exactly once after an error, the open Kafka transaction is
    /// aborted instead (its records come again in the next session).
    pub(super) async fn make_durable(&mut self, ok: bool, deadline: tokio::time::Instant) {
        enum Last {
            Flush,
            Commit,
            Abort,
            Nothing,
        }
        let last = match &self.durability {
            Durability::AtLeastOnce(_) => Last::Flush,
            Durability::ExactlyOnce(..) if !ok => Last::Abort,
            Durability::ExactlyOnce(_, v) if v.overdue() => Last::Abort,
            Durability::ExactlyOnce(c, _) if c.pending() => Last::Commit,
            Durability::ExactlyOnce(..) => Last::Nothing,
        };
        match last {
            Last::Flush => {
                let Durability::AtLeastOnce(c) = &mut self.durability else {
                    return;
                };
                match tokio::time::timeout_at(deadline, c.flush(self.store)).await {
                    Ok(Ok(lsn)) => self.confirm(lsn),
                    Ok(Err(e)) => tracing::error!(error = %e, "the last checkpoint could not be written; what it covers will be re-sent after restart"),
                    Err(_) => tracing::warn!("the last checkpoint was not acknowledged in time; what it covers will be re-sent after restart"),
                }
            }
            Last::Commit => {
                let committed = async {
                    self.commit().await?;
                    self.settle_commit().await
                };
                match tokio::time::timeout_at(deadline, committed).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        tracing::error!(error = %e, "the last Kafka transaction could not be committed; its events come again after restart");
                        self.abort(deadline).await;
                    }
                    Err(_) => {
                        tracing::warn!("the last Kafka transaction was not committed in time; its events come again after restart");
                        self.abort(deadline).await;
                    }
                }
            }
            Last::Abort => self.abort(deadline).await,
            Last::Nothing => {
                if let Ok(Err(e)) = tokio::time::timeout_at(deadline, self.settle_commit()).await {
                    tracing::error!(error = %e, "the last Kafka transaction could not be committed; its events come again after restart");
                }
            }
        }
        if ok {
            self.await_visibility(deadline).await;
        }
    }

    /// Exactly once, at the end of a session: waits (until `deadline`) for what
    /// committed to become visible, and confirms it. What is left is confirmed by the
    /// next session; the slot only lags behind meanwhile.
    async fn await_visibility(&mut self, deadline: tokio::time::Instant) {
        loop {
            let store = self.store;
            let Durability::ExactlyOnce(_, visibility) = &mut self.durability else {
                return;
            };
            if !visibility.waiting() {
                return;
            }
            let next = visibility.next_visible(store);
            match tokio::time::timeout_at(deadline, next).await {
                Ok(Ok(lsn)) => self.confirm(lsn),
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "not confirmed at the end of the session");
                    return;
                }
                Err(_) => return,
            }
        }
    }

    /// Best effort: a read_committed consumer then need not wait for the broker's
    /// transaction timeout, and the next session's producer fences this one anyway.
    /// A commit under way is let finish first (until `deadline`): a producer refuses
    /// an abort while it commits.
    async fn abort(&mut self, deadline: tokio::time::Instant) {
        let settled = tokio::time::timeout_at(deadline, self.settle_commit()).await;
        if let Ok(Err(e)) = settled {
            tracing::debug!(error = %e, "the Kafka transaction before the aborted one");
        }
        if let Err(e) = self.sink.abort_transaction(TRANSACTION_TIMEOUT).await {
            tracing::debug!(error = %e, "aborting the Kafka transaction");
        }
    }
}

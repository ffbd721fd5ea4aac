//! In-process stand-ins for the replication source and the Kafka sink, so the
//! relay's session, failure and reconnect logic is tested in milliseconds. The
//! end-to-end tests run the same logic against the real services.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use outboxd_kafka_sink::checkpoint::PartitionOffsets;
use outboxd_kafka_sink::{Record, TxnId};
use outboxd_pgoutput::{
    Begin, Column, ColumnValue, Commit, Insert, LogicalMessage, Lsn, Message, Relation,
    ReplicaIdentity, SharedRelation,
};
use outboxd_replication::{ReplicationEvent, StreamPositions};
use tokio_util::sync::CancellationToken;

use crate::checkpoint::tests::checkpoint;
use crate::checkpoint::{Checkpoint, EventPosition, RelayIdentity};
use crate::relay::checkpoints::{Checkpoints, Loaded, OffsetsQuery, Write};
use crate::relay::source::{Connector, Fence, OpenRequest, Opened, Source};
use crate::relay::RelayError;

mod sink;
pub use sink::{Completing, FakeSinks};

/// One step of a scripted session.
#[derive(Debug)]
pub enum Step {
    Event(ReplicationEvent),
    /// Cancel the shutdown token (as SIGTERM would) at this point of the stream.
    Shutdown,
    /// From here on, the server's WAL end may be confirmed: nothing is in flight.
    Idle(Lsn),
    /// Nothing arrives for this long.
    Pause(Duration),
}

/// How a scripted session ends once its steps are used up.
#[derive(Debug)]
pub enum End {
    /// The stream stays open with nothing to say (a live, quiet server).
    Quiet,
    /// The stream fails with this error.
    Fail(outboxd_replication::Error),
}

/// A session the fake connector opens, or its refusal.
#[derive(Debug)]
pub enum Script {
    Session(Vec<Step>, End),
    Refuse(outboxd_replication::Error),
}

/// What the fakes observed, shared with the test.
#[derive(Debug, Default)]
pub struct Observed {
    /// What this run had confirmed at every `open` (zero on the first).
    pub opened_after: Vec<Lsn>,
    /// Every acknowledgement, in order.
    pub acknowledged: Vec<Lsn>,
    /// Every durable checkpoint, in order.
    pub checkpoints: Vec<Checkpoint>,
    /// Acknowledgements that were ahead of every durable checkpoint.
    pub acks_past_checkpoint: Vec<Lsn>,
    /// Every record sent: (sink generation, transaction, record).
    pub sent: Vec<(usize, TxnId, Record)>,
    pub sinks_created: usize,
    /// Exactly-once: transactional ids registered, and commits and aborts made.
    pub transactional_ids: Vec<String>,
    /// Registrations that waited out the broker's refusals.
    pub patient_registrations: usize,
    pub commits: usize,
    pub aborts: usize,
    /// Records sent while a commit was under way.
    pub sent_while_committing: usize,
}

pub type Shared = Rc<RefCell<Observed>>;

#[derive(Debug)]
pub struct FakeConnector {
    pub scripts: VecDeque<Script>,
    pub observed: Shared,
    pub shutdown: CancellationToken,
    /// Events delivered before the first session (a partly delivered transaction).
    pub skip_through: Option<EventPosition>,
}

impl Connector for FakeConnector {
    type Source = FakeSource;

    async fn wait_until_free(&mut self) -> Result<(), RelayError> {
        Ok(())
    }

    async fn open(
        &mut self,
        request: OpenRequest,
        _store: &impl Checkpoints,
        fence: &mut impl Fence,
    ) -> Result<Opened<FakeSource>, RelayError> {
        let already_delivered = request.this_run.unwrap_or(Lsn::ZERO);
        fence.fence(&checkpoint(0, None).identity()).await?;
        self.observed
            .borrow_mut()
            .opened_after
            .push(already_delivered);
        match self.scripts.pop_front() {
            None => Err(outboxd_replication::Error::Config("script exhausted".into()).into()),
            Some(Script::Refuse(e)) => Err(e.into()),
            Some(Script::Session(steps, end)) => Ok(Opened {
                source: FakeSource {
                    steps: steps.into(),
                    end: Some(end),
                    failed: None,
                    in_transaction: false,
                    stop_requested: RefCell::new(false),
                    observed: Rc::clone(&self.observed),
                    shutdown: self.shutdown.clone(),
                    acknowledged: RefCell::new(already_delivered),
                    idle_wal_end: None,
                    paused_until: None,
                },
                checkpoint: checkpoint(already_delivered.0, None),
                skip_before: already_delivered,
                skip_through: self.skip_through.take(),
                catalog: crate::router::Catalog::default(),
            }),
        }
    }
}

#[derive(Debug)]
pub struct FakeSource {
    steps: VecDeque<Step>,
    end: Option<End>,
    failed: Option<outboxd_replication::Error>,
    in_transaction: bool,
    stop_requested: RefCell<bool>,
    observed: Shared,
    shutdown: CancellationToken,
    acknowledged: RefCell<Lsn>,
    idle_wal_end: Option<Lsn>,
    paused_until: Option<tokio::time::Instant>,
}

impl Source for FakeSource {
    async fn recv(&mut self) -> Option<ReplicationEvent> {
        loop {
            if *self.stop_requested.borrow() && !self.in_transaction {
                return None;
            }
            match self.steps.pop_front() {
                Some(Step::Shutdown) => self.shutdown.cancel(),
                Some(Step::Idle(wal_end)) => self.idle_wal_end = Some(wal_end),
                Some(Step::Pause(pause)) => {
                    // Cancellation-safe: the step stays until its time has passed.
                    let until = *self
                        .paused_until
                        .get_or_insert_with(|| tokio::time::Instant::now() + pause);
                    self.steps.push_front(Step::Pause(pause));
                    tokio::time::sleep_until(until).await;
                    self.steps.pop_front();
                    self.paused_until = None;
                }
                Some(Step::Event(event)) => {
                    match event.message {
                        LogicalMessage::Begin(_) => self.in_transaction = true,
                        LogicalMessage::Commit(_) => self.in_transaction = false,
                        _ => {}
                    }
                    return Some(event);
                }
                None => match self.end.take() {
                    Some(End::Fail(e)) => {
                        self.failed = Some(e);
                        return None;
                    }
                    Some(End::Quiet) | None => std::future::pending::<()>().await,
                },
            }
        }
    }

    fn has_ready(&self) -> bool {
        matches!(self.steps.front(), Some(Step::Event(_)))
    }

    fn acknowledge(&self, lsn: Lsn) {
        let mut observed = self.observed.borrow_mut();
        observed.acknowledged.push(lsn);
        let recorded = observed.checkpoints.iter().map(|c| c.confirmed_lsn).max();
        if recorded.is_none_or(|c| c < lsn) {
            observed.acks_past_checkpoint.push(lsn);
        }
        drop(observed);
        let mut acked = self.acknowledged.borrow_mut();
        *acked = (*acked).max(lsn);
    }

    fn stop_at_transaction_boundary(&self) {
        *self.stop_requested.borrow_mut() = true;
    }

    fn positions(&self) -> StreamPositions {
        let acked = *self.acknowledged.borrow();
        StreamPositions {
            acknowledged: acked,
            reported_flush: acked,
            idle_wal_end: self.idle_wal_end.filter(|end| *end > acked),
            ..StreamPositions::default()
        }
    }

    async fn close(self) -> Result<Lsn, outboxd_replication::Error> {
        match self.failed {
            Some(e) => Err(e),
            None => Ok(*self.acknowledged.borrow()),
        }
    }
}

/// A checkpoint store that keeps what it is given; every write takes `delay`.
#[derive(Debug)]
pub struct FakeStore {
    pub observed: Shared,
    pub delay: Duration,
    /// Exactly once: the checkpoint of this commit (the first is 1) stays open, and
    /// holds back the partition's last stable offset, until this time.
    pub hang: Option<(usize, tokio::time::Instant)>,
}

impl Checkpoints for FakeStore {
    async fn load(&self, _identity: &RelayIdentity) -> Result<Loaded, RelayError> {
        Ok(Loaded {
            ours: self.observed.borrow().checkpoints.last().cloned(),
            ..Loaded::default()
        })
    }

    async fn create_topic(&self) -> Result<(), RelayError> {
        Ok(())
    }

    fn write(&self, checkpoint: &Checkpoint) -> Write {
        let observed = Rc::clone(&self.observed);
        let checkpoint = checkpoint.clone();
        let delay = self.delay;
        Box::pin(async move {
            tokio::time::sleep(delay).await;
            observed.borrow_mut().checkpoints.push(checkpoint);
            Ok(())
        })
    }

    /// Every checkpoint written or committed is visible at once, one record each,
    /// except a hanging one.
    fn offsets(&self, _identity: &RelayIdentity) -> OffsetsQuery {
        let observed = self.observed.borrow();
        let written = (observed.checkpoints.len() + observed.commits) as i64;
        let stable = match self.hang {
            Some((commit, until)) if tokio::time::Instant::now() < until => {
                written.min(commit as i64 - 1)
            }
            _ => written,
        };
        Box::pin(std::future::ready(Ok(PartitionOffsets {
            end: written,
            stable,
        })))
    }
}

/// Builds the messages of scripted transactions.
#[derive(Debug)]
pub struct Wal {
    next_lsn: u64,
    outbox: SharedRelation,
    other: SharedRelation,
}

impl Default for Wal {
    fn default() -> Self {
        let text = |name: &str| Column {
            flags: 0,
            name: name.to_owned(),
            type_oid: 25,
            type_modifier: -1,
        };
        let relation = |oid, name: &str, columns: &[&str]| {
            Arc::new(Relation {
                oid,
                namespace: "public".to_owned(),
                name: name.to_owned(),
                replica_identity: ReplicaIdentity::Default,
                columns: columns.iter().map(|c| text(c)).collect(),
            })
        };
        Wal {
            next_lsn: 0x1000,
            outbox: relation(
                1,
                "outbox",
                &["id", "aggregatetype", "aggregateid", "type", "payload"],
            ),
            other: relation(2, "orders", &["id"]),
        }
    }
}

/// A change inside a scripted transaction.
#[derive(Debug, Clone)]
pub enum Change {
    /// An outbox row: (id, aggregate type or NULL, aggregate id).
    Outbox(&'static str, Option<&'static str>, &'static str),
    /// A row of a table that is not an outbox.
    Other,
    /// A logical message: (prefix, transactional, content).
    Message(&'static str, bool, &'static str),
}

impl Wal {
    /// A whole transaction; returns its steps and its end LSN.
    pub fn transaction(&mut self, changes: &[Change]) -> (Vec<Step>, Lsn) {
        let begin_lsn = self.next_lsn;
        let final_lsn = Lsn(begin_lsn + 0x100);
        let end_lsn = Lsn(begin_lsn + 0x108);
        self.next_lsn += 0x200;
        let event = |message, relation| {
            Step::Event(ReplicationEvent::new(Lsn(begin_lsn), message, relation))
        };
        let mut steps = vec![event(
            LogicalMessage::Begin(Begin {
                final_lsn,
                commit_time: 0,
                xid: 700,
            }),
            None,
        )];
        for change in changes {
            let value = |s: &str| ColumnValue::Text(Bytes::from(s.to_owned()));
            steps.push(match change {
                Change::Outbox(id, aggregate_type, aggregate_id) => event(
                    LogicalMessage::Insert(Insert {
                        relation_oid: 1,
                        new: vec![
                            value(id),
                            aggregate_type.map_or(ColumnValue::Null, value),
                            value(aggregate_id),
                            value("Created"),
                            value("{}"),
                        ],
                    }),
                    Some(Arc::clone(&self.outbox)),
                ),
                Change::Other => event(
                    LogicalMessage::Insert(Insert {
                        relation_oid: 2,
                        new: vec![value("o-1")],
                    }),
                    Some(Arc::clone(&self.other)),
                ),
                Change::Message(prefix, transactional, content) => event(
                    LogicalMessage::Message(Message {
                        transactional: *transactional,
                        lsn: Lsn(begin_lsn + 0x10),
                        prefix: (*prefix).to_owned(),
                        content: Bytes::from(content.to_owned()),
                    }),
                    None,
                ),
            });
        }
        steps.push(event(
            LogicalMessage::Commit(Commit {
                flags: 0,
                commit_lsn: final_lsn,
                end_lsn,
                commit_time: 0,
            }),
            None,
        ));
        (steps, end_lsn)
    }
}

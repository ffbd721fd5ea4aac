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
use outboxd_kafka_sink::{Completion, DeliveryFailure, Record, Registration, SinkError, TxnId};
use outboxd_pgoutput::{
    Begin, Column, ColumnValue, Commit, Insert, LogicalMessage, Lsn, Message, Relation,
    ReplicaIdentity, SharedRelation,
};
use outboxd_replication::{ReplicationEvent, StreamPositions};
use tokio_util::sync::CancellationToken;

use crate::checkpoint::tests::checkpoint;
use crate::checkpoint::{Checkpoint, EventPosition, RelayIdentity};
use crate::relay::checkpoints::{Checkpoints, Loaded, OffsetsQuery, Write};
use crate::relay::sink::{Sink, SinkFactory};
use crate::relay::source::{Connector, Fence, OpenRequest, Opened, Source};
use crate::relay::RelayError;

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

    /// Every checkpoint committed is visible at once: one record each.
    fn offsets(&self, _identity: &RelayIdentity) -> OffsetsQuery {
        let written = self.observed.borrow().checkpoints.len() as i64;
        Box::pin(std::future::ready(Ok(PartitionOffsets {
            end: written,
            stable: written,
        })))
    }
}

/// When the fake sink completes transactions.
#[derive(Debug, Clone)]
pub enum Completing {
    /// Each transaction as soon as it ends.
    AtOnce,
    /// In groups of this many ended transactions, newest first.
    Reversed(usize),
}

/// Makes fake sinks that share one [`Observed`]; records whose event id is in
/// `fail` fail their transaction (`transient` as given), in the first sink only.
/// The first `refusals` transactional sinks are refused a quick registration (the
/// broker still aborting an older producer's transaction).
#[derive(Debug)]
pub struct FakeSinks {
    pub observed: Shared,
    pub completing: Completing,
    pub fail: Vec<(&'static str, bool)>,
    pub refusals: usize,
}

impl SinkFactory for FakeSinks {
    type Sink = FakeSink;

    fn create(&self, transactional_id: Option<&str>) -> Result<FakeSink, SinkError> {
        let generation = {
            let mut o = self.observed.borrow_mut();
            o.sinks_created += 1;
            o.transactional_ids
                .extend(transactional_id.map(str::to_owned));
            o.sinks_created
        };
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        Ok(FakeSink {
            generation,
            observed: Rc::clone(&self.observed),
            completing: self.completing.clone(),
            fail: if generation == 1 {
                self.fail.clone()
            } else {
                Vec::new()
            },
            refused: transactional_id.is_some() && generation <= self.refusals,
            state: RefCell::new(SinkState::default()),
            tx,
            rx,
        })
    }

    async fn dispose(&self, sink: FakeSink) {
        drop(sink);
    }
}

#[derive(Debug, Default)]
struct SinkState {
    /// Ended transactions not yet completed: (txn, records).
    ended: Vec<(TxnId, usize)>,
    /// Transactions that failed at send time.
    failed: Vec<TxnId>,
    bytes_delivered: u64,
    bytes_taken: u64,
    bytes_by_txn: Vec<(TxnId, u64)>,
}

#[derive(Debug)]
pub struct FakeSink {
    generation: usize,
    observed: Shared,
    completing: Completing,
    fail: Vec<(&'static str, bool)>,
    refused: bool,
    state: RefCell<SinkState>,
    tx: tokio::sync::mpsc::UnboundedSender<Completion>,
    rx: tokio::sync::mpsc::UnboundedReceiver<Completion>,
}

impl FakeSink {
    fn deliver(&self, state: &mut SinkState, txn: TxnId, records: usize) {
        let bytes: u64 = state
            .bytes_by_txn
            .iter()
            .filter(|(t, _)| *t == txn)
            .map(|(_, b)| b)
            .sum();
        state.bytes_delivered += bytes;
        let _ = self.tx.send(Completion::Delivered {
            txn,
            records,
            dead_lettered: 0,
        });
    }
}

impl Sink for FakeSink {
    async fn send(&self, txn: TxnId, record: Record) -> Result<(), SinkError> {
        let mut state = self.state.borrow_mut();
        if let Some((_, transient)) = self.fail.iter().find(|(id, _)| *id == record.meta.event_id) {
            state.failed.push(txn);
            let failure = DeliveryFailure {
                event_id: record.meta.event_id.clone(),
                lsn: record.meta.lsn,
                index: record.meta.index,
                topic: record.topic.clone(),
                reason: if *transient {
                    "Local: Message timed out"
                } else {
                    "Broker: Message size too large"
                }
                .into(),
                transient: *transient,
            };
            let _ = self.tx.send(Completion::Failed { txn, failure });
        }
        state.bytes_by_txn.push((txn, record.payload_size() as u64));
        self.observed
            .borrow_mut()
            .sent
            .push((self.generation, txn, record));
        Ok(())
    }

    fn end_transaction(&self, txn: TxnId, records: usize) {
        let mut state = self.state.borrow_mut();
        if state.failed.contains(&txn) {
            return;
        }
        match self.completing {
            Completing::AtOnce => self.deliver(&mut state, txn, records),
            Completing::Reversed(group) => {
                state.ended.push((txn, records));
                if state.ended.len() == group {
                    let ended = std::mem::take(&mut state.ended);
                    for (txn, records) in ended.into_iter().rev() {
                        self.deliver(&mut state, txn, records);
                    }
                }
            }
        }
    }

    async fn next_completion(&mut self) -> Option<Completion> {
        self.rx.recv().await
    }

    fn discard_completions(&mut self) {
        while self.rx.try_recv().is_ok() {}
    }

    async fn flush(&self, _timeout: Duration) -> Result<(), SinkError> {
        Ok(())
    }

    fn fatal_error(&self) -> Option<String> {
        None
    }

    fn fenced(&self) -> bool {
        false
    }

    fn in_flight_records(&self) -> usize {
        0
    }

    fn take_bytes_delivered(&mut self) -> u64 {
        let state = self.state.get_mut();
        let new = state.bytes_delivered - state.bytes_taken;
        state.bytes_taken = state.bytes_delivered;
        new
    }

    async fn init_transactions(&self, _timeout: Duration) -> Result<(), SinkError> {
        self.observed.borrow_mut().patient_registrations += 1;
        Ok(())
    }

    async fn try_init_transactions(&self, _timeout: Duration) -> Result<Registration, SinkError> {
        Ok(if self.refused {
            Registration::AbortInProgress
        } else {
            Registration::Registered
        })
    }

    async fn commit_transaction(&self, _timeout: Duration) -> Result<(), SinkError> {
        tokio::time::sleep(Duration::from_millis(2)).await;
        self.observed.borrow_mut().commits += 1;
        Ok(())
    }

    async fn abort_transaction(&self, _timeout: Duration) -> Result<(), SinkError> {
        self.observed.borrow_mut().aborts += 1;
        Ok(())
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

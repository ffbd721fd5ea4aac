//! One session's pipeline: source → router → sink, and completions → ack tracker →
//! acknowledgements back to the source.
//!
//! The pipeline owns the [`AckTracker`], the one place that decides which LSN may be
//! confirmed. Whatever ends a session, the source is acknowledged only up to the
//! completed prefix, never further.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use outboxd_kafka_sink::{dead_letter, headers, Completion, Record, RecordMeta, TxnId};
use outboxd_pgoutput::{pg_time_to_system_time, Begin, LogicalMessage, Lsn, Message, Relation};
use outboxd_replication::ReplicationEvent;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::checkpoint::EventPosition;
use crate::health::Health;
use crate::metrics::Metrics;
use crate::relay::checkpoints::Checkpoints;
use crate::relay::sink::Sink;
use crate::relay::source::{Opened, Source};
use crate::relay::tracker::AckTracker;
use crate::relay::RelayError;
use crate::router::{RouteError, Router, SourcePosition};
use crate::topics::TopicCreator;

mod durability;

pub(crate) use durability::Mode;
use durability::{commit_answer, Committing, Durability};

/// How often gauges are refreshed.
const GAUGE_INTERVAL: Duration = Duration::from_secs(1);

/// What is relayed and how: shared by every session. The router knows the outbox
/// tables and message prefixes.
#[derive(Debug)]
pub(crate) struct Routing {
    pub router: Router,
    pub dead_letter_topic: Option<String>,
    /// Creates missing topics before their first record (kafka.topic_creation).
    pub topics: Option<TopicCreator>,
}

impl Routing {
    /// Whether a change belongs to an outbox table (no allocation: this runs for
    /// every change).
    fn is_outbox(&self, relation: &Relation) -> bool {
        self.router.is_outbox_table(relation)
    }

    fn is_outbox_message(&self, m: &Message) -> bool {
        self.router.relays_message(&m.prefix)
    }
}

/// State that outlives sessions.
#[derive(Debug)]
pub(crate) struct RelayState {
    pub routing: Routing,
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
    /// Transaction ids keep counting across sessions, so a late completion of an
    /// earlier session can never be taken for one of the current session.
    pub last_txn: u64,
    /// The newest position confirmed to the source: checkpointed, and so the
    /// acknowledged prefix or an idle WAL end.
    pub confirmed: Lsn,
    /// How long to wait for in-flight transactions when a session ends.
    pub drain_timeout: Duration,
    /// At least once or exactly once, with the mode's settings.
    pub mode: Mode,
}

/// The transaction being received.
#[derive(Debug)]
struct OpenTxn {
    txn: TxnId,
    begin: Begin,
    /// The index of the transaction's next event.
    events: u32,
    /// Records sent to the sink (events left out as already delivered are not).
    records: usize,
}

/// One session.
pub(crate) struct Pipeline<'a, S: Source, K: Sink, W: Checkpoints> {
    source: S,
    sink: &'a mut K,
    store: &'a W,
    state: &'a mut RelayState,
    tracker: AckTracker,
    durability: Durability,
    /// Exactly once: the commit under way.
    committing: Option<Committing<K::Commit>>,
    /// Transactions that committed before this were delivered before.
    skip_before: Lsn,
    /// Events up to here were delivered before (a partly delivered transaction).
    skip_through: Option<EventPosition>,
    current: Option<OpenTxn>,
}

impl<'a, S: Source, K: Sink, W: Checkpoints> Pipeline<'a, S, K, W> {
    pub fn new(
        opened: Opened<S>,
        sink: &'a mut K,
        store: &'a W,
        state: &'a mut RelayState,
    ) -> Self {
        state.routing.router.set_catalog(opened.catalog);
        Pipeline {
            source: opened.source,
            sink,
            store,
            durability: Durability::new(&state.mode, opened.checkpoint),
            committing: None,
            state,
            tracker: AckTracker::new(),
            skip_before: opened.skip_before,
            skip_through: opened.skip_through,
            current: None,
        }
    }

    /// Relays until `shutdown` (then `Ok`, after the transaction in progress) or an
    /// error. Either way it waits (bounded) for what is in flight and confirms the
    /// acknowledged prefix before closing the source, so a restart repeats as little
    /// as possible.
    pub async fn run(mut self, shutdown: &CancellationToken) -> Result<(), RelayError> {
        let mut gauges = tokio::time::interval(GAUGE_INTERVAL);
        let mut stopping = shutdown.is_cancelled();
        if stopping {
            self.source.stop_at_transaction_boundary();
        }
        let outcome = loop {
            let more_received = self.source.has_ready();
            tokio::select! {
                biased;
                () = shutdown.cancelled(), if !stopping => {
                    tracing::info!("stopping at the next transaction boundary");
                    stopping = true;
                    self.source.stop_at_transaction_boundary();
                }
                Some(completion) = self.sink.next_completion() => {
                    if let Err(e) = self.on_completion(completion) {
                        break Err(e);
                    }
                }
                answer = commit_answer(&mut self.committing) => {
                    if let Err(e) = self.on_commit_answer(answer) {
                        break Err(e);
                    }
                }
                next = self.durability.next(self.store, more_received) => {
                    let done = match next {
                        Ok(next) => self.on_durability(next).await,
                        Err(e) => Err(e),
                    };
                    if let Err(e) = done {
                        break Err(e);
                    }
                }
                event = self.source.recv() => match event {
                    Some(event) => {
                        if let Err(e) = self.on_event(event).await {
                            break Err(e);
                        }
                    }
                    None => break Ok(()),
                },
                _ = gauges.tick() => {
                    self.follow_idle_wal_end();
                    self.update_gauges();
                }
            }
        };
        self.drain(outcome.is_ok()).await;
        self.update_gauges();
        // The drain may have confirmed more than when the error happened.
        let outcome = outcome.map_err(|e| match e {
            RelayError::Delivery { failure, .. } => RelayError::Delivery {
                failure,
                confirmed: self.state.confirmed,
            },
            other => other,
        });
        let closed = self.source.close().await;
        match (outcome, closed) {
            (Err(e), _) => Err(e),
            (Ok(()), Err(e)) => Err(e.into()),
            (Ok(()), Ok(flushed)) if stopping => {
                self.state.confirmed = self.state.confirmed.max(flushed);
                Ok(())
            }
            (Ok(()), Ok(_)) => Err(outboxd_replication::Error::StreamClosed.into()),
        }
    }

    async fn on_event(&mut self, event: ReplicationEvent) -> Result<(), RelayError> {
        let received_at = event.received_at;
        match event.message {
            LogicalMessage::Begin(begin) => {
                self.transaction_began(begin.commit_time, event.server_time);
                self.state.last_txn += 1;
                let txn = TxnId(self.state.last_txn);
                self.tracker.begin(txn, begin.commit_time);
                self.current = Some(OpenTxn {
                    txn,
                    begin,
                    events: 0,
                    records: 0,
                });
            }
            LogicalMessage::Insert(insert) => {
                let Some(relation) = event.relation else {
                    return Ok(());
                };
                if !self.state.routing.is_outbox(&relation) {
                    return Ok(());
                }
                let Some((txn, position)) = self.next_event()? else {
                    return Ok(());
                };
                let router = &mut self.state.routing.router;
                let routed = router
                    .event_from_row(&relation, &insert.new, position)
                    .and_then(|e| router.route(e, position));
                self.emit(txn, routed, position, received_at).await?;
            }
            LogicalMessage::Message(m) => {
                if !self.state.routing.is_outbox_message(&m) {
                    return Ok(());
                }
                if !m.transactional {
                    tracing::warn!(lsn = %m.lsn, prefix = %m.prefix, "ignoring a non-transactional outbox message: emit outbox messages with pg_logical_emit_message(true, …) so they commit with the business transaction");
                    self.state.metrics.ignored_changes.inc();
                    return Ok(());
                }
                let Some((txn, position)) = self.next_event()? else {
                    return Ok(());
                };
                let router = &mut self.state.routing.router;
                let routed = router
                    .event_from_message(&m.content, position)
                    .and_then(|e| router.route(e, position));
                self.emit(txn, routed, position, received_at).await?;
            }
            LogicalMessage::Update(update) => {
                // Debezium's router: an UPDATE of an outbox table is unexpected
                // (routing.invalid_operation: warn, error or fatal).
                let routing = &self.state.routing;
                if let Some(relation) = event.relation.as_ref().filter(|r| routing.is_outbox(r)) {
                    self.state.metrics.ignored_changes.inc();
                    if let Some(open) = &self.current {
                        let position = SourcePosition {
                            commit_lsn: open.begin.final_lsn,
                            index: open.events,
                            commit_time: open.begin.commit_time,
                            xid: open.begin.xid,
                        };
                        routing
                            .router
                            .unexpected_update(relation, &update.new, position)
                            .map_err(RelayError::Unroutable)?;
                    }
                }
            }
            LogicalMessage::Delete(_) | LogicalMessage::Truncate(_) => {
                // Only inserts are events (as with Debezium's router); deleting outbox
                // rows in the same transaction is the supported way to keep the table
                // small.
                let routing = &self.state.routing;
                if event.relation.as_ref().is_none_or(|r| routing.is_outbox(r)) {
                    self.state.metrics.ignored_changes.inc();
                }
            }
            LogicalMessage::Commit(commit) => {
                let open = self.current.take().ok_or_else(|| {
                    outboxd_replication::Error::Protocol(
                        "Commit without Begin reached the relay".to_owned(),
                    )
                })?;
                let last_event = open.events.checked_sub(1).map(|index| EventPosition {
                    commit_lsn: open.begin.final_lsn,
                    index,
                });
                self.tracker.commit(open.txn, commit.end_lsn, last_event);
                self.sink.end_transaction(open.txn, open.records);
                self.transaction_ended(open.txn, commit.end_lsn);
            }
            LogicalMessage::Relation(_) | LogicalMessage::Type(_) | LogicalMessage::Origin(_) => {}
        }
        Ok(())
    }

    /// Counts an event of the open transaction: its transaction and position, or
    /// `None` when it was delivered before (up to `skip_through`).
    fn next_event(&mut self) -> Result<Option<(TxnId, SourcePosition)>, RelayError> {
        let open = self.current.as_mut().ok_or_else(|| {
            outboxd_replication::Error::Protocol(
                "a change outside a transaction reached the relay".to_owned(),
            )
        })?;
        let position = SourcePosition {
            commit_lsn: open.begin.final_lsn,
            index: open.events,
            commit_time: open.begin.commit_time,
            xid: open.begin.xid,
        };
        open.events = open.events.saturating_add(1);
        let at = EventPosition {
            commit_lsn: position.commit_lsn,
            index: position.index,
        };
        let delivered_before =
            at.commit_lsn < self.skip_before || self.skip_through.is_some_and(|done| at <= done);
        if delivered_before {
            self.state.metrics.skipped_events.inc();
            return Ok(None);
        }
        Ok(Some((open.txn, position)))
    }

    /// Sends a routed record, or handles the routing failure: dead-letter it when a
    /// dead-letter topic is configured, stop otherwise. `received_at`: when its
    /// change came off the replication socket.
    async fn emit(
        &mut self,
        txn: TxnId,
        routed: Result<Record, RouteError>,
        position: SourcePosition,
        received_at: Instant,
    ) -> Result<(), RelayError> {
        let record = match routed {
            Ok(record) => record,
            Err(error) => match &self.state.routing.dead_letter_topic {
                Some(topic) => {
                    tracing::warn!(event_id = %error.event_id, lsn = %position.commit_lsn, reason = %error.reason, dead_letter_topic = %topic, "unroutable event sent to the dead-letter topic");
                    self.state.metrics.dead_lettered.inc();
                    let meta = RecordMeta {
                        event_id: error.event_id.clone(),
                        lsn: position.commit_lsn.0,
                        index: position.index,
                    };
                    let xid = (headers::XID.into(), Bytes::from(position.xid.to_string()));
                    dead_letter::for_unroutable(topic, None, meta, vec![xid], &error.reason)
                }
                None => {
                    // The transaction stays open in the tracker: the prefix stops before it.
                    tracing::error!(event_id = %error.event_id, lsn = %position.commit_lsn, reason = %error.reason, "unroutable event");
                    return Err(RelayError::Unroutable(error));
                }
            },
        };
        if let Some(topics) = &self.state.routing.topics {
            topics
                .ensure(&record.topic)
                .await
                .map_err(|e| RelayError::Topic(Box::new(e)))?;
        }
        let bytes = record.payload_size();
        self.sink
            .send(txn, record)
            .await
            .map_err(RelayError::from_sink)?;
        if let Some(open) = self.current.as_mut() {
            open.records += 1;
        }
        let at = EventPosition {
            commit_lsn: position.commit_lsn,
            index: position.index,
        };
        self.record_sent(bytes, at, received_at);
        Ok(())
    }

    fn on_completion(&mut self, completion: Completion) -> Result<(), RelayError> {
        if let Completion::Failed { failure, .. } = &completion {
            // A fenced producer's records fail as purged: that is the news, not them.
            if self.sink.fenced() {
                return Err(RelayError::Fenced(
                    outboxd_kafka_sink::SinkError::Transaction {
                        call: "send",
                        kind: outboxd_kafka_sink::TransactionError::Fenced,
                        reason: failure.to_string(),
                    },
                ));
            }
        }
        let metrics = &self.state.metrics;
        match completion {
            Completion::Delivered {
                txn,
                records,
                dead_lettered,
            } => {
                metrics.dead_lettered.inc_by(dead_lettered as u64);
                self.transaction_acknowledged(txn, (records - dead_lettered) as u64);
                Ok(())
            }
            Completion::Failed { txn, failure } if failure.transient => {
                metrics.delivery_errors.inc();
                // The sink stopped and purged itself in the delivery report: nothing
                // younger reaches Kafka before this record's resend.
                self.tracker.fail(txn);
                tracing::warn!(event_id = %failure.event_id, lsn = %Lsn(failure.lsn), topic = %failure.topic, reason = %failure.reason, "delivery timed out");
                Err(RelayError::KafkaUnavailable(failure))
            }
            Completion::Failed { txn, failure } => {
                metrics.delivery_errors.inc();
                self.tracker.fail(txn);
                tracing::error!(event_id = %failure.event_id, lsn = %Lsn(failure.lsn), topic = %failure.topic, reason = %failure.reason, "delivery failed");
                Err(RelayError::Delivery {
                    failure,
                    confirmed: self.state.confirmed,
                })
            }
        }
    }

    /// Waits (bounded) for in-flight transactions, makes what completed durable and
    /// confirms it; `ok`: the session ended without an error.
    async fn drain(&mut self, ok: bool) {
        let deadline = tokio::time::Instant::now() + self.state.drain_timeout;
        while self.tracker.awaiting_sink() && matches!(self.durability, Durability::AtLeastOnce(_))
        {
            let completion = tokio::select! {
                c = self.sink.next_completion() => c,
                () = tokio::time::sleep_until(deadline) => {
                    tracing::warn!(in_flight = self.tracker.in_flight(), "in-flight transactions not acknowledged in time; they will be re-sent after restart");
                    break;
                }
            };
            let Some(completion) = completion else { break };
            if let Err(e) = self.on_completion(completion) {
                tracing::error!(error = %e, "while draining");
                break;
            }
        }
        self.make_durable(ok, deadline).await;
    }

    fn update_gauges(&mut self) {
        let positions = self.source.positions();
        let m = &self.state.metrics;
        m.confirmed_lsn.set(self.state.confirmed.0 as i64);
        m.checkpoint_lsn.set(self.state.confirmed.0 as i64);
        m.server_wal_end.set(positions.server_wal_end.0 as i64);
        m.lag_bytes.set(
            positions
                .server_wal_end
                .0
                .saturating_sub(positions.reported_flush.0) as i64,
        );
        let lag = self
            .tracker
            .oldest_pending_commit_time()
            .and_then(|t| {
                SystemTime::now()
                    .duration_since(pg_time_to_system_time(t))
                    .ok()
            })
            .map_or(0.0, |d| d.as_secs_f64());
        m.lag_seconds.set(lag);
        m.commit_unsettled_seconds
            .set(self.durability.unsettled_for().as_secs_f64());
        m.in_flight_transactions
            .set(self.tracker.in_flight() as i64);
        m.in_flight_records
            .set(self.sink.in_flight_records() as i64);
        m.bytes_published.inc_by(self.sink.take_bytes_delivered());
        self.state
            .health
            .set_producer_problem(self.sink.fatal_error());
    }
}

//! The relay: replication stream → router → Kafka sink, with the ack tracker deciding
//! what may be confirmed.
//!
//! One *session* is one replication connection. A session ends cleanly (shutdown),
//! with a retryable error (the network, a restarting server, a slot held by another
//! relay: reconnect with backoff) or with a fatal one (a record Kafka refused, an
//! unroutable row without a dead-letter topic, an invalidated slot: exit non-zero).
//! Whatever ends it, the confirmed position is the acknowledged prefix, never more.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use outboxd_kafka_sink::{Completion, KafkaSink, Record, RecordMeta, TxnId};
use outboxd_pgoutput::{pg_time_to_system_time, Begin, LogicalMessage, Lsn, Relation};
use outboxd_replication::{
    open_stream, Admin, ConnectOptions, ReaderConfig, ReplicationEvent, ReplicationReader,
    SourceSpec, StreamSettings, TableName,
};
use rand::Rng;
use tokio::sync::{mpsc, watch};

use crate::config::Config;
use crate::http::{Health, Metrics};
use crate::router::{RouteError, Router, SourcePosition};
use crate::tracker::AckTracker;

/// Why the relay stopped.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error(transparent)]
    Replication(#[from] outboxd_replication::Error),
    #[error(
        "Kafka refused an event, so the slot stays at {confirmed}: {reason}. Fix the cause \
             (topic, ACLs, size limits) and restart; or set kafka.dead_letter_topic to divert \
             such events"
    )]
    Delivery { reason: String, confirmed: Lsn },
    #[error(
        "cannot route {0}; the slot stays before it. Fix the row or the routing \
             configuration and restart, or set kafka.dead_letter_topic to divert such events"
    )]
    Unroutable(RouteError),
    #[error(
        "Kafka did not acknowledge an event in time ({0}); reconnecting with a new \
             producer and resending from the last confirmed position"
    )]
    KafkaUnavailable(String),
    #[error("the Kafka producer failed: {0}")]
    Producer(String),
    #[error("{0}")]
    Config(String),
}

impl RelayError {
    fn is_retryable(&self) -> bool {
        match self {
            RelayError::Replication(e) => e.is_retryable(),
            RelayError::KafkaUnavailable(_) => true,
            _ => false,
        }
    }
}

/// The relay's fixed parts, shared by its sessions.
pub struct Relay {
    config: Config,
    connect: ConnectOptions,
    /// The outbox tables, parsed once.
    tables: Vec<TableName>,
    router: Router,
    sink: KafkaSink,
    completions: mpsc::UnboundedReceiver<Completion>,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    next_txn: u64,
    confirmed: Lsn,
    /// Whether the current session got as far as streaming (resets the backoff).
    attached: bool,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("slot", &self.config.postgres.slot)
            .field("confirmed", &self.confirmed)
            .finish_non_exhaustive()
    }
}

impl Relay {
    pub fn new(
        config: Config,
        sink: KafkaSink,
        completions: mpsc::UnboundedReceiver<Completion>,
        metrics: Arc<Metrics>,
        health: Arc<Health>,
    ) -> Result<Relay, RelayError> {
        let mut connect: ConnectOptions = config
            .postgres
            .url
            .parse()
            .map_err(|e: outboxd_replication::Error| RelayError::Config(e.to_string()))?;
        if connect.password.is_none() {
            connect.password = config.postgres.password.clone();
        }
        let tables = config
            .postgres
            .tables
            .iter()
            .map(|t| TableName::parse(t))
            .collect::<Result<_, _>>()?;
        Ok(Relay {
            router: Router::new(config.routing.clone()),
            config,
            connect,
            tables,
            sink,
            completions,
            metrics,
            health,
            next_txn: 0,
            confirmed: Lsn::ZERO,
            attached: false,
        })
    }

    /// Runs sessions until `shutdown` fires or a fatal error occurs.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) -> Result<(), RelayError> {
        let mut attempt = 0u32;
        loop {
            let result = self.session(&mut shutdown).await;
            self.health.set_stream_attached(false);
            match result {
                Ok(()) => {
                    self.sink
                        .flush(self.config.server.shutdown_timeout())
                        .await
                        .map_err(|e| RelayError::Producer(e.to_string()))?;
                    tracing::info!(confirmed = %self.confirmed, "outboxd stopped cleanly");
                    return Ok(());
                }
                Err(e) if e.is_retryable() && !*shutdown.borrow() => {
                    // A session that streamed was a success: the next failure starts
                    // the backoff afresh, so isolated faults days apart do not each
                    // wait the maximum.
                    if std::mem::take(&mut self.attached) {
                        attempt = 0;
                    }
                    attempt += 1;
                    let delay = backoff(attempt);
                    self.metrics.reconnects.inc();
                    tracing::warn!(error = %e, attempt, retry_in_ms = delay.as_millis() as u64, "replication session ended; reconnecting");
                    if matches!(e, RelayError::KafkaUnavailable(_))
                        || self.sink.fatal_error().is_some()
                    {
                        // Records after a timed-out one must not reach Kafka before the
                        // replay of that one: a new producer (dropping the old one
                        // purges its queue) resends everything unconfirmed, in order.
                        let (sink, completions) = KafkaSink::new(crate::sink_config(&self.config))
                            .map_err(|e| RelayError::Producer(e.to_string()))?;
                        self.sink = sink;
                        self.completions = completions;
                    } else {
                        // What is in flight is unconfirmed and will be re-sent by the
                        // next session; let it finish so its completions do not linger.
                        let _ = self.sink.flush(Duration::from_secs(10)).await;
                        while self.completions.try_recv().is_ok() {}
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = shutdown.changed() => return Ok(()),
                    }
                }
                Err(e) => {
                    let _ = self.sink.flush(Duration::from_secs(10)).await;
                    return Err(e);
                }
            }
        }
    }

    /// One replication session; `Ok(())` only when it ended because of `shutdown`.
    async fn session(&mut self, shutdown: &mut watch::Receiver<bool>) -> Result<(), RelayError> {
        let admin = Admin::connect(&self.connect).await?;
        admin.check_wal_level().await?;
        if !self.tables.is_empty() {
            admin
                .ensure_publication(
                    &self.config.postgres.publication,
                    &self.tables,
                    self.config.postgres.create_publication,
                )
                .await?;
        }
        let spec = SourceSpec {
            slot: self.config.postgres.slot.clone(),
            publications: vec![self.config.postgres.publication.clone()],
            messages: !self.config.routing.message_prefix.is_empty(),
            create_slot: self.config.postgres.create_slot,
            expected_resume: None,
            already_delivered: self.confirmed,
            settings: StreamSettings {
                status_interval: Duration::from_millis(
                    self.config.postgres.status_interval_ms.max(100),
                ),
                receive_timeout: self.config.postgres.receive_timeout(),
                ..StreamSettings::default()
            },
        };
        let (stream, started) = open_stream(&self.connect, &admin, &spec).await?;
        self.confirmed = self.confirmed.max(started.resume_lsn);
        tracing::info!(
            slot = %spec.slot,
            resume = %started.resume_lsn,
            created_slot = started.created_slot,
            server_version = started.server_major_version,
            "relaying"
        );
        let mut reader = ReplicationReader::spawn(
            stream,
            ReaderConfig {
                max_buffered_bytes: self.config.postgres.max_buffered_bytes,
                ..ReaderConfig::default()
            },
        );
        self.health.set_stream_attached(true);
        self.attached = true;
        let mut session = Session {
            tracker: AckTracker::new(),
            current: None,
        };
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut stopping = *shutdown.borrow();
        if stopping {
            reader.stop_at_transaction_boundary();
        }
        let outcome = loop {
            tokio::select! {
                biased;
                changed = shutdown.changed(), if !stopping => {
                    if changed.is_err() || *shutdown.borrow() {
                        tracing::info!("stopping at the next transaction boundary");
                        stopping = true;
                        reader.stop_at_transaction_boundary();
                    }
                }
                Some(completion) = self.completions.recv() => {
                    if let Err(e) = self.on_completion(completion, &mut session, &reader) {
                        break Err(e);
                    }
                }
                event = reader.recv() => match event {
                    Some(event) => {
                        if let Err(e) = self.on_event(event, &mut session).await {
                            break Err(e);
                        }
                    }
                    None => break Ok(()),
                },
                _ = tick.tick() => self.update_gauges(&session, &reader),
            }
        };
        // Whatever happened, wait (bounded) for what is in flight and confirm the
        // acknowledged prefix before closing, so a restart repeats as little as possible.
        self.drain(&mut session, &reader).await;
        let closed = reader.close().await;
        match (outcome, closed) {
            (Err(e), _) => Err(e),
            (Ok(()), Err(e)) => Err(e.into()),
            (Ok(()), Ok(flushed)) if stopping => {
                self.confirmed = self.confirmed.max(flushed);
                Ok(())
            }
            (Ok(()), Ok(_)) => Err(outboxd_replication::Error::StreamClosed.into()),
        }
    }

    /// Whether a change belongs to one of the outbox tables (no allocation: this
    /// runs for every change).
    fn is_outbox(&self, relation: &Relation) -> bool {
        self.tables
            .iter()
            .any(|t| t.schema == relation.namespace && t.name == relation.name)
    }

    async fn on_event(
        &mut self,
        event: ReplicationEvent,
        session: &mut Session,
    ) -> Result<(), RelayError> {
        match event.message {
            LogicalMessage::Begin(begin) => {
                self.next_txn += 1;
                let txn = TxnId(self.next_txn);
                session.tracker.begin(txn, begin.commit_time);
                session.current = Some(OpenTxn {
                    txn,
                    begin,
                    records: 0,
                });
            }
            LogicalMessage::Insert(insert) => {
                let Some(relation) = event.relation else {
                    return Ok(());
                };
                if !self.is_outbox(&relation) {
                    return Ok(());
                }
                let (txn, position) = session.next_position()?;
                let routed = self
                    .router
                    .event_from_row(&relation, &insert.new, position)
                    .and_then(|e| self.router.route(e, position));
                self.emit(txn, routed, position, session).await?;
            }
            LogicalMessage::Message(m) => {
                let prefix = &self.config.routing.message_prefix;
                if prefix.is_empty() || &m.prefix != prefix {
                    return Ok(());
                }
                if !m.transactional {
                    tracing::warn!(lsn = %m.lsn, prefix = %m.prefix, "ignoring a non-transactional outbox message: emit outbox messages with pg_logical_emit_message(true, …) so they commit with the business transaction");
                    self.metrics.ignored_changes.inc();
                    return Ok(());
                }
                let (txn, position) = session.next_position()?;
                let routed = self
                    .router
                    .event_from_message(&m.content, position)
                    .and_then(|e| self.router.route(e, position));
                self.emit(txn, routed, position, session).await?;
            }
            LogicalMessage::Update(_) | LogicalMessage::Delete(_) | LogicalMessage::Truncate(_) => {
                // Only inserts are events (as with Debezium's router); deleting outbox
                // rows in the same transaction is the supported way to keep the table
                // small.
                if event.relation.as_ref().is_none_or(|r| self.is_outbox(r)) {
                    self.metrics.ignored_changes.inc();
                }
            }
            LogicalMessage::Commit(commit) => {
                let Some(open) = session.current.take() else {
                    return Err(outboxd_replication::Error::Protocol(
                        "Commit without Begin reached the relay".to_owned(),
                    )
                    .into());
                };
                session.tracker.commit(open.txn, commit.end_lsn);
                self.sink.end_transaction(open.txn, open.records);
            }
            LogicalMessage::Relation(_) | LogicalMessage::Type(_) | LogicalMessage::Origin(_) => {}
        }
        Ok(())
    }

    /// Sends a routed record, or handles the routing failure: dead-letter it when a
    /// dead-letter topic is configured, stop otherwise.
    async fn emit(
        &mut self,
        txn: TxnId,
        routed: Result<Record, RouteError>,
        position: SourcePosition,
        session: &mut Session,
    ) -> Result<(), RelayError> {
        let record = match routed {
            Ok(record) => record,
            Err(error) => match &self.config.kafka.dead_letter_topic {
                Some(topic) => {
                    tracing::warn!(event_id = %error.event_id, lsn = %position.commit_lsn, reason = %error.reason, dead_letter_topic = %topic, "unroutable event sent to the dead-letter topic");
                    self.metrics.dead_lettered.inc();
                    dead_letter_record(topic, &error)
                }
                None => {
                    // The transaction stays open in the tracker: the prefix stops before it.
                    tracing::error!(event_id = %error.event_id, lsn = %position.commit_lsn, reason = %error.reason, "unroutable event");
                    return Err(RelayError::Unroutable(error));
                }
            },
        };
        self.sink
            .send(txn, record)
            .await
            .map_err(|e| RelayError::Producer(e.to_string()))?;
        if let Some(open) = session.current.as_mut() {
            open.records += 1;
        }
        Ok(())
    }

    fn on_completion(
        &mut self,
        completion: Completion,
        session: &mut Session,
        reader: &ReplicationReader,
    ) -> Result<(), RelayError> {
        match completion {
            Completion::Delivered {
                txn,
                records,
                dead_lettered,
            } => {
                self.metrics
                    .events_published
                    .inc_by((records - dead_lettered) as u64);
                self.metrics.dead_lettered.inc_by(dead_lettered as u64);
                session.tracker.complete(txn);
                if let Some(lsn) = session.tracker.confirmed() {
                    if lsn > self.confirmed {
                        self.metrics.transactions_confirmed.inc();
                        self.confirmed = lsn;
                        reader.acknowledge(lsn);
                    }
                }
                Ok(())
            }
            Completion::Failed { txn, failure } if failure.transient => {
                self.metrics.delivery_errors.inc();
                session.tracker.fail(txn);
                // Younger records must not overtake this one: stop them now.
                self.sink.purge();
                tracing::warn!(event_id = %failure.event_id, lsn = %Lsn(failure.lsn), topic = %failure.topic, reason = %failure.reason, "delivery timed out");
                Err(RelayError::KafkaUnavailable(failure.to_string()))
            }
            Completion::Failed { txn, failure } => {
                self.metrics.delivery_errors.inc();
                session.tracker.fail(txn);
                tracing::error!(event_id = %failure.event_id, lsn = %Lsn(failure.lsn), topic = %failure.topic, reason = %failure.reason, "delivery failed");
                Err(RelayError::Delivery {
                    reason: failure.to_string(),
                    confirmed: self.confirmed,
                })
            }
        }
    }

    /// Waits (bounded) for in-flight transactions and confirms what completed.
    async fn drain(&mut self, session: &mut Session, reader: &ReplicationReader) {
        let deadline = tokio::time::Instant::now() + self.config.server.shutdown_timeout();
        while session.tracker.awaiting_sink() {
            let completion = tokio::select! {
                c = self.completions.recv() => c,
                _ = tokio::time::sleep_until(deadline) => {
                    tracing::warn!(in_flight = session.tracker.in_flight(), "in-flight transactions not acknowledged in time; they will be re-sent after restart");
                    break;
                }
            };
            let Some(completion) = completion else { break };
            if let Err(e) = self.on_completion(completion, session, reader) {
                tracing::error!(error = %e, "while draining");
                break;
            }
        }
    }

    fn update_gauges(&self, session: &Session, reader: &ReplicationReader) {
        let positions = reader.positions();
        let m = &self.metrics;
        m.confirmed_lsn.set(self.confirmed.0 as i64);
        m.server_wal_end.set(positions.server_wal_end.0 as i64);
        m.lag_bytes.set(
            positions
                .server_wal_end
                .0
                .saturating_sub(positions.reported_flush.0) as i64,
        );
        let lag = session
            .tracker
            .oldest_pending_commit_time()
            .and_then(|t| {
                SystemTime::now()
                    .duration_since(pg_time_to_system_time(t))
                    .ok()
            })
            .map_or(0.0, |d| d.as_secs_f64());
        m.lag_seconds.set(lag);
        m.in_flight_transactions
            .set(session.tracker.in_flight() as i64);
        let (records, _) = self.sink.in_flight();
        m.in_flight_records.set(records as i64);
        let stats = self.sink.stats();
        let published = m.bytes_published.get();
        m.bytes_published
            .inc_by(stats.bytes_delivered.saturating_sub(published));
        self.health.set_producer_problem(self.sink.fatal_error());
    }
}

/// State of one replication session.
struct Session {
    tracker: AckTracker,
    current: Option<OpenTxn>,
}

struct OpenTxn {
    txn: TxnId,
    begin: Begin,
    records: usize,
}

impl Session {
    fn next_position(&self) -> Result<(TxnId, SourcePosition), RelayError> {
        let open = self.current.as_ref().ok_or_else(|| {
            RelayError::Replication(outboxd_replication::Error::Protocol(
                "a change outside a transaction reached the relay".to_owned(),
            ))
        })?;
        Ok((
            open.txn,
            SourcePosition {
                commit_lsn: open.begin.final_lsn,
                index: u32::try_from(open.records).unwrap_or(u32::MAX),
                commit_time: open.begin.commit_time,
                xid: open.begin.xid,
            },
        ))
    }
}

/// A dead-letter record for an event that could not be routed.
fn dead_letter_record(topic: &str, error: &RouteError) -> Record {
    let p = error.position;
    Record {
        topic: topic.to_owned(),
        key: None,
        value: None,
        headers: vec![
            ("outboxd.error".into(), Bytes::from(error.reason.clone())),
            (
                "outboxd.event.id".into(),
                Bytes::from(error.event_id.clone()),
            ),
            ("outboxd.lsn".into(), Bytes::from(p.commit_lsn.to_string())),
            ("outboxd.index".into(), Bytes::from(p.index.to_string())),
            ("outboxd.xid".into(), Bytes::from(p.xid.to_string())),
        ],
        timestamp_ms: None,
        meta: RecordMeta {
            event_id: error.event_id.clone(),
            lsn: p.commit_lsn.0,
            index: p.index,
        },
    }
}

/// Exponential backoff with full jitter: 0.5 s, 1 s, 2 s … capped at 30 s.
fn backoff(attempt: u32) -> Duration {
    let cap_ms = 500u64.saturating_mul(1 << attempt.min(6)).min(30_000);
    Duration::from_millis(rand::rng().random_range(cap_ms / 2..=cap_ms))
}

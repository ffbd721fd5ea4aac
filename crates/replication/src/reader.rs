//! A task that owns the replication stream and hands decoded messages to a consumer
//! through a channel bounded in bytes.
//!
//! Why a task of its own: status updates must keep flowing while the consumer is
//! slow (a stalled broker, a huge transaction). If the consumer drove the socket,
//! backpressure would silence us and the server would drop the connection after
//! `wal_sender_timeout`. Here the task waits for buffer space *and* the status timer
//! at the same time; while it waits it stops reading, so TCP pushes back on the
//! walsender and memory stays bounded.

use std::sync::Arc;
use std::time::Duration;

use outboxd_pgoutput::{LogicalMessage, Lsn, SharedRelation};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::error::Error;
use crate::stream::{LogicalStream, StreamEvent, StreamPositions};

/// Memory accounting overhead charged per message on top of its wire size.
const PER_MESSAGE_OVERHEAD: usize = 128;

/// At most this many messages go to the consumer in one hand-over. Messages that
/// arrived in one socket read travel together: one wake-up of the consumer per
/// batch instead of one per message (at 10k events/s, per-message hand-over spent
/// ~40% of the relay's CPU samples on context switches).
const MAX_BATCH: usize = 256;

/// Knobs of the reader.
#[derive(Debug, Clone)]
pub struct ReaderConfig {
    /// Bytes of decoded messages that may wait for the consumer.
    pub max_buffered_bytes: usize,
    /// How long an acknowledgement may wait before it is reported, so that a burst
    /// of small transactions costs one status update, not one each.
    pub ack_delay: Duration,
}

impl Default for ReaderConfig {
    fn default() -> Self {
        ReaderConfig {
            max_buffered_bytes: 4 << 20,
            ack_delay: Duration::from_millis(20),
        }
    }
}

/// A decoded message for the consumer. Holding it holds its share of the buffer.
#[derive(Debug)]
pub struct ReplicationEvent {
    pub wal_start: Lsn,
    pub message: LogicalMessage,
    pub relation: Option<SharedRelation>,
    /// When the reader took it off the socket: how long it has waited since, so
    /// that a consumer can bound an event's wait rather than only its own.
    pub received_at: Instant,
    /// When the server sent it (microseconds since 2000-01-01 on the server's
    /// clock); `None` for events made elsewhere.
    pub server_time: Option<i64>,
    /// The event's share of the reader's buffer; `None` for events made elsewhere.
    _budget: Option<OwnedSemaphorePermit>,
}

impl ReplicationEvent {
    /// An event that holds no reader budget: for consumers fed from somewhere other
    /// than a [`ReplicationReader`] (a recorded stream, a test).
    pub fn new(wal_start: Lsn, message: LogicalMessage, relation: Option<SharedRelation>) -> Self {
        ReplicationEvent {
            wal_start,
            message,
            relation,
            received_at: Instant::now(),
            server_time: None,
            _budget: None,
        }
    }
}

/// The consumer's side of a running reader.
#[derive(Debug)]
pub struct ReplicationReader {
    events: mpsc::UnboundedReceiver<Vec<ReplicationEvent>>,
    /// The rest of the batch being handed out, in reverse order (popped from the end).
    batch: Vec<ReplicationEvent>,
    ack: watch::Sender<Lsn>,
    stop: watch::Sender<Phase>,
    positions: watch::Receiver<StreamPositions>,
    task: JoinHandle<Result<Lsn, Error>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    Run,
    /// Stop reading after the current transaction.
    StopAtBoundary,
    /// Report the final position and close.
    Close,
}

impl ReplicationReader {
    /// Starts the reader task over `stream`.
    pub fn spawn(stream: LogicalStream, config: ReaderConfig) -> Self {
        let start = stream.positions();
        let (event_tx, events) = mpsc::unbounded_channel();
        let (ack, ack_rx) = watch::channel(start.acknowledged);
        let (stop, stop_rx) = watch::channel(Phase::Run);
        let (positions_tx, positions) = watch::channel(start);
        let task = tokio::spawn(run(stream, config, event_tx, ack_rx, stop_rx, positions_tx));
        ReplicationReader {
            events,
            batch: Vec::new(),
            ack,
            stop,
            positions,
            task,
        }
    }

    /// The next message; `None` once the reader stopped (at a transaction boundary
    /// after [`stop_at_transaction_boundary`](Self::stop_at_transaction_boundary), or
    /// because of an error that [`close`](Self::close) returns).
    ///
    /// Cancellation-safe: a message is either returned or stays queued.
    pub async fn recv(&mut self) -> Option<ReplicationEvent> {
        if self.batch.is_empty() {
            let mut batch = self.events.recv().await?;
            batch.reverse();
            self.batch = batch;
        }
        self.batch.pop()
    }

    /// Whether a message is already waiting: [`recv`](Self::recv) would return it at
    /// once.
    pub fn has_ready(&self) -> bool {
        !self.batch.is_empty() || !self.events.is_empty()
    }

    /// Everything up to `lsn` (the end LSN of a fully delivered transaction) is
    /// durable downstream. Never moves backwards.
    pub fn acknowledge(&self, lsn: Lsn) {
        self.ack.send_if_modified(|current| {
            let moved = lsn > *current;
            if moved {
                *current = lsn;
            }
            moved
        });
    }

    /// Asks the reader to stop after the transaction it is in (or now, if between
    /// transactions), so that a graceful shutdown leaves no half-sent transaction.
    pub fn stop_at_transaction_boundary(&self) {
        self.stop.send_if_modified(|p| {
            let moved = *p < Phase::StopAtBoundary;
            *p = (*p).max(Phase::StopAtBoundary);
            moved
        });
    }

    /// The stream's latest positions.
    pub fn positions(&self) -> StreamPositions {
        *self.positions.borrow()
    }

    /// Whether the task has ended (cleanly or not).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Reports the last acknowledged position, closes the stream cleanly and returns
    /// the final flush position — or the error that ended the reader.
    pub async fn close(self) -> Result<Lsn, Error> {
        let _ = self.stop.send(Phase::Close);
        drop(self.events);
        match self.task.await {
            Ok(result) => result,
            Err(e) => Err(Error::protocol(format!(
                "replication reader task failed: {e}"
            ))),
        }
    }
}

async fn run(
    mut stream: LogicalStream,
    config: ReaderConfig,
    events: mpsc::UnboundedSender<Vec<ReplicationEvent>>,
    mut ack: watch::Receiver<Lsn>,
    mut stop: watch::Receiver<Phase>,
    positions: watch::Sender<StreamPositions>,
) -> Result<Lsn, Error> {
    let budget = Arc::new(Semaphore::new(config.max_buffered_bytes));
    let max_charge = u32::try_from(config.max_buffered_bytes).unwrap_or(u32::MAX);
    let mut report_at: Option<Instant> = None;
    let far = Duration::from_secs(86_400);

    // Phase 1: read and deliver until asked to stop (at a transaction boundary).
    loop {
        if *stop.borrow() >= Phase::StopAtBoundary && !stream.in_transaction() {
            break;
        }
        let report_deadline = report_at.unwrap_or_else(|| Instant::now() + far);
        tokio::select! {
            biased;
            changed = ack.changed() => {
                if changed.is_err() {
                    break;
                }
                stream.acknowledge(*ack.borrow_and_update());
                report_at.get_or_insert_with(|| Instant::now() + config.ack_delay);
            }
            _ = tokio::time::sleep_until(report_deadline), if report_at.is_some() => {
                stream.send_status(false).await?;
                report_at = None;
                positions.send_replace(stream.positions());
            }
            changed = stop.changed() => {
                if changed.is_err() {
                    break;
                }
            }
            event = stream.next_event() => {
                // Take everything that arrived with this event, up to the end of the
                // transaction we are asked to stop after.
                let mut batch = Vec::new();
                let mut consumer_gone = false;
                let received_at = Instant::now();
                let mut next = Some(event?);
                while let Some(event) = next.take() {
                    match event {
                        StreamEvent::Message { wal_start, message, relation, wire_bytes, server_time } => {
                            let charge = u32::try_from(wire_bytes + PER_MESSAGE_OVERHEAD)
                                .unwrap_or(u32::MAX)
                                .min(max_charge);
                            let permit = match budget.clone().try_acquire_many_owned(charge) {
                                Ok(permit) => permit,
                                Err(_) => {
                                    // The consumer frees budget only for what it has:
                                    // hand over the batch before waiting.
                                    if !batch.is_empty() && events.send(std::mem::take(&mut batch)).is_err() {
                                        consumer_gone = true;
                                        break;
                                    }
                                    let acks = Acks { rx: &mut ack, report_at: &mut report_at, delay: config.ack_delay };
                                    wait_for_budget(&mut stream, &budget, charge, acks).await?
                                }
                            };
                            batch.push(ReplicationEvent { wal_start, message, relation, received_at, server_time: Some(server_time), _budget: Some(permit) });
                        }
                        StreamEvent::Keepalive { .. } => {
                            positions.send_replace(stream.positions());
                        }
                    }
                    let stopping = *stop.borrow() >= Phase::StopAtBoundary && !stream.in_transaction();
                    if batch.len() < MAX_BATCH && !stopping && stream.has_buffered_event() {
                        next = Some(stream.next_event().await?);
                    }
                }
                if consumer_gone || (!batch.is_empty() && events.send(batch).is_err()) {
                    break;
                }
            }
        }
    }
    drop(events);
    positions.send_replace(stream.positions());

    // Phase 2: the consumer drains what it has; keep reporting its acknowledgements
    // (and the server happy) until it asks us to close.
    loop {
        if *stop.borrow() == Phase::Close {
            break;
        }
        let due = stream.status_due();
        tokio::select! {
            changed = ack.changed() => {
                if changed.is_err() {
                    break;
                }
                stream.acknowledge(*ack.borrow_and_update());
            }
            changed = stop.changed() => {
                if changed.is_err() {
                    break;
                }
            }
            _ = tokio::time::sleep_until(due) => {
                stream.send_status(false).await?;
                positions.send_replace(stream.positions());
            }
        }
    }
    stream.acknowledge(*ack.borrow());
    let flushed = stream.close().await?;
    Ok(flushed)
}

/// The acknowledgement side of the reader: where acks arrive and when the next
/// one is due to be reported.
struct Acks<'a> {
    rx: &'a mut watch::Receiver<Lsn>,
    report_at: &'a mut Option<Instant>,
    delay: Duration,
}

/// Waits for buffer space while keeping status updates going, acknowledgements
/// included: a backpressured reader is the normal state while catching up, and
/// reporting acks only on the status timer (seconds) would make a crash then
/// replay seconds of delivered events.
async fn wait_for_budget(
    stream: &mut LogicalStream,
    budget: &Arc<Semaphore>,
    charge: u32,
    acks: Acks<'_>,
) -> Result<OwnedSemaphorePermit, Error> {
    loop {
        let due = match *acks.report_at {
            Some(at) => at.min(stream.status_due()),
            None => stream.status_due(),
        };
        tokio::select! {
            permit = budget.clone().acquire_many_owned(charge) => {
                return permit.map_err(|_| Error::protocol("reader budget closed"));
            }
            changed = acks.rx.changed() => {
                if changed.is_ok() {
                    stream.acknowledge(*acks.rx.borrow_and_update());
                    acks.report_at.get_or_insert_with(|| Instant::now() + acks.delay);
                } else {
                    // The consumer is gone; nothing will free the budget.
                    return Err(Error::StreamClosed);
                }
            }
            _ = tokio::time::sleep_until(due) => {
                stream.send_status(false).await?;
                *acks.report_at = None;
            }
        }
    }
}

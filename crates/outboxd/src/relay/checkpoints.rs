//! Writing checkpoints from a session: at most one write in flight and at most one
//! per `interval`, each covering everything acknowledged when it started. A
//! position is confirmed to PostgreSQL only once its checkpoint is durable.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use outboxd_kafka_sink::checkpoint::PartitionOffsets;
use outboxd_pgoutput::Lsn;
use tokio::time::Instant;

use crate::checkpoint::{Checkpoint, EventPosition, RelayIdentity};
use crate::relay::RelayError;

/// A checkpoint write in progress; it owns what it needs.
pub(crate) type Write = Pin<Box<dyn Future<Output = Result<(), RelayError>>>>;

/// A question for the checkpoint partition's offsets; it owns what it needs.
pub(crate) type OffsetsQuery = Pin<Box<dyn Future<Output = Result<PartitionOffsets, RelayError>>>>;

/// What the checkpoint topic holds for a relay.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Loaded {
    /// The topic does not exist (then there is no checkpoint either).
    pub topic_missing: bool,
    pub ours: Option<Checkpoint>,
    /// This relay's record exists but cannot be read (why, naming its key).
    pub unreadable: Option<String>,
    /// A checkpoint for the same database and slot from another cluster.
    pub foreign: Option<Checkpoint>,
}

/// Where checkpoints are kept.
pub(crate) trait Checkpoints {
    /// This relay's checkpoint, and any other cluster's for its database and slot.
    async fn load(&self, identity: &RelayIdentity) -> Result<Loaded, RelayError>;
    /// Creates the topic (first start).
    async fn create_topic(&self) -> Result<(), RelayError>;
    /// Starts writing `checkpoint`; the future completes once it is durable.
    fn write(&self, checkpoint: &Checkpoint) -> Write;
    /// Starts asking where the partition holding `identity`'s checkpoint stands.
    fn offsets(&self, identity: &RelayIdentity) -> OffsetsQuery;
}

/// A session's checkpoint writer.
pub(crate) struct Checkpointer {
    /// The newest durable checkpoint.
    durable: Checkpoint,
    /// The position to record next (never behind `durable`).
    wanted: (Lsn, Option<EventPosition>),
    in_flight: Option<(Checkpoint, Write)>,
    interval: Duration,
    next_write_at: Instant,
}

impl std::fmt::Debug for Checkpointer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpointer")
            .field("durable", &self.durable.confirmed_lsn)
            .field("wanted", &self.wanted)
            .field(
                "writing",
                &self.in_flight.as_ref().map(|(c, _)| c.confirmed_lsn),
            )
            .finish()
    }
}

impl Checkpointer {
    /// Starts from `durable`, the checkpoint the session resumed from.
    pub fn new(durable: Checkpoint, interval: Duration) -> Self {
        Checkpointer {
            wanted: (durable.confirmed_lsn, durable.last_event),
            durable,
            in_flight: None,
            interval,
            next_write_at: Instant::now(),
        }
    }

    /// Everything before `lsn` is delivered, the last event being `last_event` (or
    /// the one recorded before, if `None`). Positions never move back.
    pub fn want(&mut self, lsn: Lsn, last_event: Option<EventPosition>) {
        if lsn > self.wanted.0 {
            self.wanted = (lsn, last_event.or(self.wanted.1));
        }
    }

    /// The newest durable position.
    pub fn durable(&self) -> Lsn {
        self.durable.confirmed_lsn
    }

    /// Whether a position waits to be recorded.
    pub fn behind(&self) -> bool {
        self.wanted.0 > self.durable.confirmed_lsn
    }

    /// Waits for the next checkpoint to become durable (starting the write when one
    /// is due) and returns its position. Pending while there is nothing to record.
    /// Cancellation-safe: a write in progress continues on the next call.
    pub async fn next_durable(&mut self, store: &impl Checkpoints) -> Result<Lsn, RelayError> {
        loop {
            if let Some((_, write)) = self.in_flight.as_mut() {
                let result = write.await;
                if let Some((checkpoint, _)) = self.in_flight.take() {
                    result?;
                    self.durable = checkpoint;
                    return Ok(self.durable.confirmed_lsn);
                }
            }
            if !self.behind() {
                std::future::pending::<()>().await;
            }
            tokio::time::sleep_until(self.next_write_at).await;
            self.start(store);
        }
    }

    /// Records what is wanted at once, ignoring the interval: for the end of a
    /// session. Returns the durable position.
    pub async fn flush(&mut self, store: &impl Checkpoints) -> Result<Lsn, RelayError> {
        self.next_write_at = Instant::now();
        while self.behind() || self.in_flight.is_some() {
            self.next_durable(store).await?;
        }
        Ok(self.durable())
    }

    fn start(&mut self, store: &impl Checkpoints) {
        let (lsn, last_event) = self.wanted;
        let checkpoint = self.durable.advanced(lsn, last_event);
        let write = store.write(&checkpoint);
        self.in_flight = Some((checkpoint, write));
        self.next_write_at = Instant::now() + self.interval;
    }
}

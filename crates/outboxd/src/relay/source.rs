//! The replication side of the relay, as narrow traits: a [`Connector`] opens one
//! [`Source`] per session (the PostgreSQL implementation is in `connector`).

use outboxd_pgoutput::Lsn;
use outboxd_replication::{ReplicationEvent, ReplicationReader, StreamPositions};

use crate::checkpoint::{Checkpoint, EventPosition, RelayIdentity};
use crate::relay::checkpoints::Checkpoints;
use crate::relay::RelayError;
use crate::router::Catalog;

/// One session's stream of decoded messages.
pub(crate) trait Source {
    /// The next message; `None` once the source stopped (at a transaction boundary
    /// after [`stop_at_transaction_boundary`](Source::stop_at_transaction_boundary),
    /// or because of an error that [`close`](Source::close) returns).
    /// Cancellation-safe: a message is either returned or stays queued.
    async fn recv(&mut self) -> Option<ReplicationEvent>;
    /// Whether a message is already waiting (`recv` would return at once).
    fn has_ready(&self) -> bool;
    /// Everything up to `lsn` (the end LSN of a transaction) is durable downstream.
    fn acknowledge(&self, lsn: Lsn);
    /// Finish the transaction in progress, then end the stream.
    fn stop_at_transaction_boundary(&self);
    fn positions(&self) -> StreamPositions;
    /// Reports the final position and closes: the last flush position, or the
    /// error that ended the stream.
    async fn close(self) -> Result<Lsn, outboxd_replication::Error>;
}

/// A session's source, and the checkpoint it starts from.
#[derive(Debug)]
pub(crate) struct Opened<S> {
    pub source: S,
    /// Where the stream resumes, as a checkpoint to advance from.
    pub checkpoint: Checkpoint,
    /// Transactions that committed before this were delivered already: the stream
    /// may still bring them (it started at the slot's position) and they are left
    /// out.
    pub skip_before: Lsn,
    /// Events up to here were delivered before (a partly delivered transaction).
    pub skip_through: Option<EventPosition>,
    /// The outbox tables' column nullability and defaults, when the routing needs them.
    pub catalog: Catalog,
}

/// Exactly-once: makes the sink's producer the only one of its transactional id,
/// fencing the previous holder of the slot. A no-op at least once.
pub(crate) trait Fence {
    async fn fence(&mut self, identity: &RelayIdentity) -> Result<(), RelayError>;
}

/// What the supervisor knows when it opens a session.
#[derive(Debug, Clone, Copy)]
pub(crate) struct OpenRequest {
    /// What this process confirmed, once it has streamed from the slot.
    pub this_run: Option<Lsn>,
    /// The operator accepted a gap for this start (`--accept-gap`).
    pub accept_gap: bool,
}

/// Opens a source per session.
pub(crate) trait Connector {
    type Source: Source;
    /// Compares the slot, the server and the checkpoint in `store`, then opens a
    /// stream where the relay must resume, or refuses.
    async fn open(
        &mut self,
        request: OpenRequest,
        store: &impl Checkpoints,
        fence: &mut impl Fence,
    ) -> Result<Opened<Self::Source>, RelayError>;
    /// Waits (polling) until the slot is no longer held by another process.
    async fn wait_until_free(&mut self) -> Result<(), RelayError>;
}

impl Source for ReplicationReader {
    async fn recv(&mut self) -> Option<ReplicationEvent> {
        ReplicationReader::recv(self).await
    }

    fn has_ready(&self) -> bool {
        ReplicationReader::has_ready(self)
    }

    fn acknowledge(&self, lsn: Lsn) {
        ReplicationReader::acknowledge(self, lsn);
    }

    fn stop_at_transaction_boundary(&self) {
        ReplicationReader::stop_at_transaction_boundary(self);
    }

    fn positions(&self) -> StreamPositions {
        ReplicationReader::positions(self)
    }

    async fn close(self) -> Result<Lsn, outboxd_replication::Error> {
        ReplicationReader::close(self).await
    }
}

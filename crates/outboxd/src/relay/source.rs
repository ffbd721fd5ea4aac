//! The replication side of the relay, as narrow traits, and their PostgreSQL
//! implementation: a [`Connector`] opens one [`Source`] per session.

use outboxd_pgoutput::Lsn;
use outboxd_replication::{
    Admin, ConnectOptions, ReaderConfig, ReplicationEvent, ReplicationReader, SourceSession,
    SourceSpec, StreamPositions, TableName,
};

use crate::checkpoint::{self, Checkpoint, EventPosition, RelayIdentity};
use crate::relay::checkpoints::Checkpoints;
use crate::relay::resume::{self, Plan, Situation, Stored};
use crate::relay::RelayError;
use crate::router::Catalog;
use crate::table_catalog;

/// One session's stream of decoded messages.
pub(crate) trait Source {
    /// The next message; `None` once the source stopped (at a transaction boundary
    /// after [`stop_at_transaction_boundary`](Source::stop_at_transaction_boundary),
    /// or because of an error that [`close`](Source::close) returns).
    /// Cancellation-safe: a message is either returned or stays queued.
    async fn recv(&mut self) -> Option<ReplicationEvent>;
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
    /// Where the stream resumed, as a checkpoint to advance from.
    pub checkpoint: Checkpoint,
    /// Events up to here were delivered before (a partly delivered transaction).
    pub skip_through: Option<EventPosition>,
    /// The outbox tables' column nullability and defaults, when the routing needs them.
    pub catalog: Catalog,
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
    ) -> Result<Opened<Self::Source>, RelayError>;
}

impl Source for ReplicationReader {
    async fn recv(&mut self) -> Option<ReplicationEvent> {
        ReplicationReader::recv(self).await
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

/// Opens replication sessions on PostgreSQL: preflight, publication, slot, resume
/// decision, stream.
#[derive(Debug)]
pub(crate) struct PgConnector {
    pub connect: ConnectOptions,
    pub tables: Vec<TableName>,
    pub create_publication: bool,
    pub create_slot: bool,
    /// Create the slot with failover enabled (PostgreSQL 17+).
    pub failover_slot: bool,
    pub spec: SourceSpec,
    pub reader: ReaderConfig,
    /// Read the outbox tables' column details for the router ([`Catalog`]).
    pub load_catalog: bool,
}

impl Connector for PgConnector {
    type Source = ReplicationReader;

    async fn open(
        &mut self,
        request: OpenRequest,
        store: &impl Checkpoints,
    ) -> Result<Opened<ReplicationReader>, RelayError> {
        let admin = Admin::connect(&self.connect).await?;
        admin.check_wal_level().await?;
        let publication = self.spec.publications.first().map_or("", String::as_str);
        if !self.tables.is_empty() {
            admin
                .ensure_publication(publication, &self.tables, self.create_publication)
                .await?;
        }
        let catalog = if self.load_catalog {
            table_catalog::load(&admin, &self.tables).await?
        } else {
            Catalog::default()
        };
        let mut session = SourceSession::connect(&self.connect, &admin, &self.spec.slot).await?;
        let identity = RelayIdentity {
            system_identifier: session.identity.system_id.clone(),
            database: self.connect.database().to_owned(),
            slot: self.spec.slot.clone(),
        };
        let loaded = store.load(&identity).await?;
        let topic_missing = loaded.topic_missing;
        let stored = match (&loaded.ours, &loaded.foreign) {
            _ if topic_missing => Stored::TopicMissing,
            (Some(c), _) => Stored::Ours(c),
            (None, Some(c)) => Stored::Foreign(c),
            (None, None) => Stored::Nothing,
        };
        let history = match stored {
            Stored::Ours(c) if c.timeline < session.identity.timeline => {
                session.timeline_history().await?
            }
            _ => Vec::new(),
        };
        let situation = Situation {
            slot_name: &self.spec.slot,
            server: &session.identity,
            history: &history,
            slot: session.slot.as_ref(),
            stored,
            this_run: request.this_run,
        };
        let (plan, accepted) = match resume::plan(&situation) {
            Ok(plan) => (plan, false),
            Err(gap) if request.accept_gap && gap.overridable() => {
                tracing::error!(slot = %gap.slot, range = %gap.range(), reason = %gap, "accepting a possible gap in the events (--accept-gap): events committed in this range may be missing from Kafka");
                (resume::accept(&gap, session.slot.as_ref()), true)
            }
            Err(gap) => return Err(RelayError::Gap(gap)),
        };
        if topic_missing && (accepted || plan == Plan::CreateSlot) {
            store.create_topic().await?;
        }
        let mut checkpoint = Checkpoint {
            format: checkpoint::FORMAT,
            system_identifier: identity.system_identifier,
            timeline: session.identity.timeline,
            database: identity.database,
            slot: identity.slot,
            publication: publication.to_owned(),
            tables: self.tables.iter().map(ToString::to_string).collect(),
            confirmed_lsn: Lsn::ZERO,
            last_event: None,
            outboxd_version: env!("CARGO_PKG_VERSION").to_owned(),
            written_at: checkpoint::now_rfc3339(),
        };
        let (start, skip_through, first_checkpoint) = match plan {
            Plan::CreateSlot if !self.create_slot && !accepted => {
                return Err(outboxd_replication::Error::SlotMissing {
                    slot: self.spec.slot.clone(),
                }
                .into())
            }
            Plan::CreateSlot => {
                let slot = session.create_slot(&admin, self.failover_slot).await?;
                (slot.confirmed_flush_lsn.unwrap_or(Lsn::ZERO), None, true)
            }
            Plan::Resume {
                start,
                skip_through,
                first_checkpoint,
            } => (start, skip_through, first_checkpoint),
        };
        checkpoint.confirmed_lsn = start;
        checkpoint.last_event = skip_through;
        if first_checkpoint {
            // From now on any loss of the slot is seen, even before the first event.
            store.write(&checkpoint).await?;
            tracing::info!(slot = %checkpoint.slot, confirmed = %start, "first checkpoint written");
        }
        let (stream, started) = session
            .start(
                &admin,
                &self.spec.publications,
                self.spec.messages,
                start,
                self.spec.settings.clone(),
            )
            .await?;
        tracing::info!(
            slot = %self.spec.slot,
            resume = %started.resume_lsn,
            created_slot = started.created_slot,
            timeline = checkpoint.timeline,
            server_version = started.server_major_version,
            "relaying"
        );
        checkpoint.confirmed_lsn = started.resume_lsn;
        Ok(Opened {
            source: ReplicationReader::spawn(stream, self.reader.clone()),
            checkpoint,
            skip_through,
            catalog,
        })
    }
}

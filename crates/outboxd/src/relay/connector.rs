//! Opening replication sessions on PostgreSQL: preflight, publication, the slot,
//! the comparison of slot, server and checkpoint, and the stream.
//!
//! At least once, the checkpoint is read first and the stream starts where it says.
//! Exactly once, the relay takes the slot first (starting at the slot's position),
//! then fences the previous holder's producer, then reads the checkpoint: only the
//! relay that holds the slot may fence, and the checkpoint can be read (with
//! `read_committed`) only once no fenced producer holds a transaction open.

use std::time::Duration;

use outboxd_pgoutput::Lsn;
use outboxd_replication::{
    Admin, ConnectOptions, LogicalStream, ReaderConfig, ReplicationReader, SlotInfo, SourceSession,
    SourceSpec, Started, SystemIdentity, TableName, TimelineSwitch,
};

use crate::checkpoint::{self, Checkpoint, RelayIdentity};
use crate::config::{Config, Delivery};
use crate::relay::checkpoints::{Checkpoints, Loaded};
use crate::relay::resume::{self, Plan, Situation, Stored};
use crate::relay::source::{Connector, Fence, OpenRequest, Opened};
use crate::relay::RelayError;
use crate::router::Catalog;
use crate::{settings, table_catalog};

/// How often a standby looks whether the slot is free.
const STANDBY_POLL: Duration = Duration::from_millis(250);

/// Opens replication sessions on PostgreSQL.
#[derive(Debug)]
pub(crate) struct PgConnector {
    connect: ConnectOptions,
    tables: Vec<TableName>,
    create_publication: bool,
    create_slot: bool,
    /// Create the slot with failover enabled (PostgreSQL 17+).
    failover_slot: bool,
    /// Take the slot before fencing and reading the checkpoint (exactly-once).
    slot_first: bool,
    spec: SourceSpec,
    reader: ReaderConfig,
    /// Read the outbox tables' column details for the router ([`Catalog`]).
    load_catalog: bool,
    /// The standby's connection for watching the slot.
    watcher: Option<Admin>,
}

impl PgConnector {
    /// The PostgreSQL side as the configuration says; `load_catalog` when the
    /// routing needs the tables' column details.
    pub fn new(config: &Config, load_catalog: bool) -> Result<Self, RelayError> {
        Ok(PgConnector {
            connect: settings::connect_options(config)?,
            tables: settings::outbox_tables(config)?,
            create_publication: config.postgres.create_publication,
            create_slot: config.postgres.create_slot,
            failover_slot: config.postgres.failover_slot,
            slot_first: config.kafka.delivery == Delivery::ExactlyOnce,
            spec: settings::source_spec(config),
            reader: settings::reader_config(config),
            load_catalog,
            watcher: None,
        })
    }

    async fn start(
        &self,
        session: SourceSession,
        admin: &Admin,
        at: Lsn,
    ) -> Result<(LogicalStream, Started), RelayError> {
        let spec = &self.spec;
        Ok(session
            .start(
                admin,
                &spec.publications,
                spec.messages,
                at,
                spec.settings.clone(),
            )
            .await?)
    }
}

/// What the comparison of slot, server and checkpoint decided.
struct Compared {
    plan: Plan,
    /// The operator accepted a gap to get this plan.
    accepted: bool,
}

/// Compares the slot, the server and the checkpoint (`resume::plan`); a gap is
/// refused unless the operator accepted it for this start.
fn compare(
    slot_name: &str,
    server: &SystemIdentity,
    history: &[TimelineSwitch],
    slot: Option<&SlotInfo>,
    loaded: &Loaded,
    request: OpenRequest,
) -> Result<Compared, RelayError> {
    let stored = match (&loaded.ours, &loaded.foreign) {
        _ if loaded.topic_missing => Stored::TopicMissing,
        _ if loaded.unreadable.is_some() => {
            Stored::Unreadable(loaded.unreadable.as_deref().unwrap_or_default())
        }
        (Some(c), _) => Stored::Ours(c),
        (None, Some(c)) => Stored::Foreign(c),
        (None, None) => Stored::Nothing,
    };
    // This run wrote checkpoints (a first start writes one before streaming), so
    // finding none, or no topic, means the broker answered wrongly, as one did
    // while restarting. Not a first start: wait for the real answer.
    if let (Stored::Nothing | Stored::TopicMissing, Some(confirmed)) = (&stored, request.this_run) {
        return Err(RelayError::CheckpointVanished {
            slot: slot_name.to_owned(),
            confirmed,
        });
    }
    let situation = Situation {
        slot_name,
        server,
        history,
        slot,
        stored,
        this_run: request.this_run,
    };
    match resume::plan(&situation) {
        Ok(plan) => Ok(Compared {
            plan,
            accepted: false,
        }),
        Err(gap) if request.accept_gap && gap.overridable() => {
            tracing::error!(slot = %gap.slot, range = %gap.range(), reason = %gap, "accepting a possible gap in the events (--accept-gap): events committed in this range may be missing from Kafka");
            Ok(Compared {
                plan: resume::accept(&gap, slot),
                accepted: true,
            })
        }
        Err(gap) => Err(RelayError::Gap(gap)),
    }
}

/// What `outboxd check` shows about the slot and the checkpoint.
#[derive(Debug)]
pub struct Preview {
    pub slot: Option<SlotInfo>,
    pub checkpoint: Option<Checkpoint>,
    /// Where `run` would resume (`None`: it would create the slot).
    pub resume: Option<Lsn>,
}

impl PgConnector {
    /// What a session would decide now, without taking the slot: the comparison of
    /// slot, server and checkpoint, or the gap `run` would refuse.
    pub async fn preview(&self, store: &impl Checkpoints) -> Result<Preview, RelayError> {
        let admin = Admin::connect(&self.connect).await?;
        let mut session = SourceSession::connect(&self.connect, &admin, &self.spec.slot).await?;
        let history = session.timeline_history().await?;
        let identity = RelayIdentity {
            system_identifier: session.identity.system_id.clone(),
            database: self.connect.database().to_owned(),
            slot: self.spec.slot.clone(),
        };
        let loaded = store.load(&identity).await?;
        let mut server = session.identity.clone();
        server.xlog_pos = server.xlog_pos.max(admin.wal_end().await?);
        let request = OpenRequest {
            this_run: None,
            accept_gap: false,
        };
        let slot = session.slot.clone();
        let Compared { plan, .. } = compare(
            &self.spec.slot,
            &server,
            &history,
            slot.as_ref(),
            &loaded,
            request,
        )?;
        Ok(Preview {
            slot,
            checkpoint: loaded.ours,
            resume: match plan {
                Plan::CreateSlot => None,
                Plan::Resume { start, .. } => Some(start),
            },
        })
    }
}

/// A session before or after it took the slot.
enum Stage {
    Connected(SourceSession),
    Streaming(LogicalStream, Started),
}

impl Connector for PgConnector {
    type Source = ReplicationReader;

    async fn open(
        &mut self,
        request: OpenRequest,
        store: &impl Checkpoints,
        fence: &mut impl Fence,
    ) -> Result<Opened<ReplicationReader>, RelayError> {
        self.watcher = None;
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
        let mut server = session.identity.clone();
        let slot = session.slot.clone();
        if let Some(pid) = slot.as_ref().and_then(|s| s.active_pid) {
            if !self.slot_first {
                // A standby: nothing to compare while another relay holds the slot.
                return Err(outboxd_replication::Error::SlotInUse {
                    slot: self.spec.slot.clone(),
                    pid: Some(pid),
                }
                .into());
            }
        }
        let history = session.timeline_history().await?;
        let identity = RelayIdentity {
            system_identifier: server.system_id.clone(),
            database: self.connect.database().to_owned(),
            slot: self.spec.slot.clone(),
        };
        let mut stage = if self.slot_first && slot.is_some() {
            let (stream, started) = self.start(session, &admin, Lsn::ZERO).await?;
            Stage::Streaming(stream, started)
        } else {
            Stage::Connected(session)
        };
        fence.fence(&identity).await?;
        let loaded = store.load(&identity).await?;
        // Read after the checkpoint: a relay that held the slot until just now may
        // have recorded a WAL end newer than the one IDENTIFY_SYSTEM reported.
        server.xlog_pos = server.xlog_pos.max(admin.wal_end().await?);
        let Compared { plan, accepted } = compare(
            &self.spec.slot,
            &server,
            &history,
            slot.as_ref(),
            &loaded,
            request,
        )?;
        if loaded.topic_missing && (accepted || plan == Plan::CreateSlot) {
            store.create_topic().await?;
        }
        let mut checkpoint = Checkpoint {
            format: checkpoint::FORMAT,
            system_identifier: identity.system_identifier,
            timeline: server.timeline,
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
                // Only a missing slot is created, and a stream starts only on an
                // existing one.
                let Stage::Connected(session) = &mut stage else {
                    return Err(outboxd_replication::Error::Protocol(
                        "asked to create a slot that is streaming".to_owned(),
                    )
                    .into());
                };
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
        if let Some(event) = skip_through.filter(|e| e.commit_lsn >= start) {
            tracing::info!(after = %event, "resuming inside a partly delivered transaction: its events up to the last delivered one are left out");
        }
        if first_checkpoint {
            // From now on any loss of the slot is seen, even before the first event.
            store.write(&checkpoint).await?;
            tracing::info!(slot = %checkpoint.slot, confirmed = %start, "first checkpoint written");
        }
        let (stream, started) = match stage {
            Stage::Streaming(stream, started) => (stream, started),
            Stage::Connected(session) => self.start(session, &admin, start).await?,
        };
        tracing::info!(
            slot = %self.spec.slot,
            resume = %start,
            stream_start = %started.resume_lsn,
            created_slot = started.created_slot,
            timeline = checkpoint.timeline,
            server_version = started.server_major_version,
            "relaying"
        );
        Ok(Opened {
            source: ReplicationReader::spawn(stream, self.reader.clone()),
            checkpoint,
            skip_before: start,
            skip_through,
            catalog,
        })
    }

    async fn wait_until_free(&mut self) -> Result<(), RelayError> {
        loop {
            let admin = match self.watcher.take() {
                Some(admin) => admin,
                None => Admin::connect(&self.connect).await?,
            };
            let slot = admin.slot(&self.spec.slot).await?;
            if slot.is_none_or(|s| s.active_pid.is_none()) {
                return Ok(());
            }
            self.watcher = Some(admin);
            tokio::time::sleep(STANDBY_POLL).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_later_session_that_finds_no_checkpoint_tries_again() {
        let server = SystemIdentity {
            system_id: "7301".to_owned(),
            timeline: 1,
            xlog_pos: Lsn(0x9000),
            dbname: Some("shop".to_owned()),
        };
        let request = |this_run| OpenRequest {
            this_run,
            accept_gap: false,
        };
        let nothing = Loaded::default();
        let no_topic = Loaded {
            topic_missing: true,
            ..Loaded::default()
        };
        for loaded in [&nothing, &no_topic] {
            let later = compare("s", &server, &[], None, loaded, request(Some(Lsn(0x100))));
            assert!(
                matches!(&later, Err(e @ RelayError::CheckpointVanished { confirmed: Lsn(0x100), .. }) if e.is_retryable()),
                "{:?}",
                later.err()
            );
        }
        // A first start with no slot and no checkpoint creates the slot.
        let first = compare("s", &server, &[], None, &nothing, request(None));
        assert!(matches!(
            first,
            Ok(Compared {
                plan: Plan::CreateSlot,
                ..
            })
        ));
    }
}

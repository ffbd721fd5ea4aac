//! Opening a stream the safe way: identify the server, look at the slot, let the
//! caller decide (create it? where to resume?), start, and check that the server
//! resumed where it was asked to.

use outboxd_pgoutput::Lsn;

use crate::admin::{Admin, SlotInfo};
use crate::client::{ReplicationClient, StartOptions, SystemIdentity, TimelineSwitch};
use crate::config::ConnectOptions;
use crate::error::Error;
use crate::stream::{LogicalStream, StreamSettings};

/// What to stream, for [`open_stream`].
#[derive(Debug, Clone)]
pub struct SourceSpec {
    pub slot: String,
    pub publications: Vec<String>,
    /// Ask for `pg_logical_emit_message` messages.
    pub messages: bool,
    /// Create the slot when it does not exist.
    pub create_slot: bool,
    /// Everything up to here is already durable downstream. The stream starts no
    /// earlier (the server skips transactions that committed before the requested
    /// start), and a slot confirmed *beyond* it is refused with
    /// [`Error::SlotJumped`]: something else confirmed changes the caller never saw.
    /// `Lsn::ZERO`: the slot's confirmed position is the truth.
    pub already_delivered: Lsn,
    pub settings: StreamSettings,
}

/// How a stream was opened.
#[derive(Debug, Clone)]
pub struct Started {
    pub slot: SlotInfo,
    /// Whether the slot was created for this stream.
    pub created_slot: bool,
    pub resume_lsn: Lsn,
    pub server_major_version: Option<u32>,
}

/// A replication connection that has identified the server and looked at its slot,
/// but does not stream yet: the caller decides between the two steps.
#[derive(Debug)]
pub struct SourceSession {
    client: ReplicationClient,
    slot_name: String,
    /// The server's system identifier and timeline.
    pub identity: SystemIdentity,
    /// The slot as `pg_replication_slots` showed it; `None` when missing.
    pub slot: Option<SlotInfo>,
    created_slot: bool,
}

impl SourceSession {
    /// Connects, runs IDENTIFY_SYSTEM and reads the slot's state on `admin`.
    pub async fn connect(opts: &ConnectOptions, admin: &Admin, slot: &str) -> Result<Self, Error> {
        let mut client = ReplicationClient::connect(opts).await?;
        let identity = client.identify_system().await?;
        let info = admin.slot(slot).await?;
        if let Some(info) = &info {
            Admin::verify_slot(info, opts.database())?;
        }
        Ok(SourceSession {
            client,
            slot_name: slot.to_owned(),
            identity,
            slot: info,
            created_slot: false,
        })
    }

    /// The server's major version (14, 15, …).
    pub fn server_major_version(&self) -> Option<u32> {
        self.client.server_major_version()
    }

    /// Where each earlier timeline of the server's current one ended.
    pub async fn timeline_history(&mut self) -> Result<Vec<TimelineSwitch>, Error> {
        self.client.timeline_history(self.identity.timeline).await
    }

    /// Creates the slot (it must be missing); `failover` needs PostgreSQL 17+.
    pub async fn create_slot(&mut self, admin: &Admin, failover: bool) -> Result<&SlotInfo, Error> {
        let point = self.client.create_slot(&self.slot_name, failover).await?;
        tracing::info!(slot = %self.slot_name, consistent_point = %point, failover, "replication slot created");
        self.created_slot = true;
        let info = admin
            .slot(&self.slot_name)
            .await?
            .ok_or_else(|| Error::protocol("slot vanished right after creation"))?;
        Ok(self.slot.insert(info))
    }

    /// Starts streaming at `start` or at the slot's confirmed position, whichever is
    /// later; fails if the slot is missing or in use, or if the server confirmed
    /// beyond the start by the time it began.
    pub async fn start(
        self,
        admin: &Admin,
        publications: &[String],
        messages: bool,
        start: Lsn,
        settings: StreamSettings,
    ) -> Result<(LogicalStream, Started), Error> {
        let SourceSession {
            mut client,
            slot_name,
            slot,
            created_slot,
            ..
        } = self;
        let slot = slot.ok_or_else(|| Error::SlotMissing {
            slot: slot_name.clone(),
        })?;
        if let Some(pid) = slot.active_pid {
            return Err(Error::SlotInUse {
                slot: slot_name,
                pid: Some(pid),
            });
        }
        let version = client.server_major_version();
        let resume = start.max(slot.confirmed_flush_lsn.unwrap_or(Lsn::ZERO));
        let timeout = client.wal_sender_timeout().await?;
        let stream = client
            .start(
                &StartOptions {
                    slot: slot_name.clone(),
                    start_lsn: resume,
                    publications: publications.to_vec(),
                    messages: messages && version.is_none_or(|v| v >= 14),
                },
                settings.for_timeout(timeout),
            )
            .await?;
        // The server silently starts at confirmed_flush when asked for less. Anything
        // beyond where we meant to resume means changes we never saw were confirmed.
        let actual = admin
            .slot(&slot_name)
            .await?
            .and_then(|s| s.confirmed_flush_lsn)
            .unwrap_or(Lsn::ZERO);
        if actual > resume {
            return Err(Error::SlotJumped {
                slot: slot_name,
                expected: resume,
                actual,
            });
        }
        Ok((
            stream,
            Started {
                slot,
                created_slot,
                resume_lsn: resume,
                server_major_version: version,
            },
        ))
    }
}

/// Opens the replication stream for `spec`: creates the slot if it is missing and
/// allowed, refuses a slot confirmed beyond `already_delivered`, and starts.
pub async fn open_stream(
    opts: &ConnectOptions,
    admin: &Admin,
    spec: &SourceSpec,
) -> Result<(LogicalStream, Started), Error> {
    let mut session = SourceSession::connect(opts, admin, &spec.slot).await?;
    match &session.slot {
        Some(slot) => {
            let confirmed = slot.confirmed_flush_lsn.unwrap_or(Lsn::ZERO);
            if spec.already_delivered > Lsn::ZERO && confirmed > spec.already_delivered {
                return Err(Error::SlotJumped {
                    slot: spec.slot.clone(),
                    expected: spec.already_delivered,
                    actual: confirmed,
                });
            }
        }
        None if spec.create_slot => {
            session.create_slot(admin, false).await?;
        }
        None => {
            return Err(Error::SlotMissing {
                slot: spec.slot.clone(),
            })
        }
    }
    session
        .start(
            admin,
            &spec.publications,
            spec.messages,
            spec.already_delivered,
            spec.settings.clone(),
        )
        .await
}

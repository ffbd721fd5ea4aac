//! Opening a stream the safe way: preflight, slot, start, and a check that the
//! server resumed where we meant to.

use outboxd_pgoutput::Lsn;

use crate::admin::{Admin, SlotInfo};
use crate::client::{ReplicationClient, StartOptions};
use crate::config::ConnectOptions;
use crate::error::Error;
use crate::stream::{LogicalStream, StreamSettings};

/// What to stream.
#[derive(Debug, Clone)]
pub struct SourceSpec {
    pub slot: String,
    pub publications: Vec<String>,
    /// Ask for `pg_logical_emit_message` messages.
    pub messages: bool,
    /// Create the slot when it does not exist.
    pub create_slot: bool,
    /// Where the caller believes the stream must resume (e.g. from a checkpoint of
    /// its own). `None`: the slot's confirmed position is the checkpoint.
    pub expected_resume: Option<Lsn>,
    /// Everything up to here is already durable downstream (a reconnecting relay
    /// knows more than the slot when its last confirmations never reached the
    /// server). The stream starts no earlier, so those events are not sent twice:
    /// the server skips transactions that committed before the requested start.
    pub already_delivered: Lsn,
    pub settings: StreamSettings,
}

/// How a stream was opened.
#[derive(Debug, Clone)]
pub struct Started {
    pub slot: SlotInfo,
    /// Whether this call created the slot.
    pub created_slot: bool,
    pub resume_lsn: Lsn,
    pub server_major_version: Option<u32>,
}

/// Opens the replication stream for `spec`, checking the slot on `admin`.
pub async fn open_stream(
    opts: &ConnectOptions,
    admin: &Admin,
    spec: &SourceSpec,
) -> Result<(LogicalStream, Started), Error> {
    let mut client = ReplicationClient::connect(opts).await?;
    let version = client.server_major_version();
    let mut created_slot = false;
    let slot = match admin.slot(&spec.slot).await? {
        Some(slot) => slot,
        None if spec.create_slot => {
            let point = client.create_slot(&spec.slot).await?;
            tracing::info!(slot = %spec.slot, consistent_point = %point, "replication slot created");
            created_slot = true;
            admin
                .slot(&spec.slot)
                .await?
                .ok_or_else(|| Error::protocol("slot vanished right after creation"))?
        }
        None => {
            return Err(Error::SlotMissing {
                slot: spec.slot.clone(),
            })
        }
    };
    Admin::verify_slot(&slot, opts.database())?;
    if let Some(pid) = slot.active_pid {
        return Err(Error::SlotInUse {
            slot: spec.slot.clone(),
            pid: Some(pid),
        });
    }
    let confirmed = slot.confirmed_flush_lsn.unwrap_or(Lsn::ZERO);
    let resume = spec
        .expected_resume
        .unwrap_or(confirmed)
        .max(spec.already_delivered);
    let timeout = client.wal_sender_timeout().await?;
    let settings = spec.settings.clone().for_timeout(timeout);
    let stream = client
        .start(
            &StartOptions {
                slot: spec.slot.clone(),
                start_lsn: resume,
                publications: spec.publications.clone(),
                messages: spec.messages && version.is_none_or(|v| v >= 14),
            },
            settings,
        )
        .await?;
    // The server silently starts at confirmed_flush when asked for less. Anything
    // beyond where we meant to resume means events we never saw were confirmed.
    let after = admin.slot(&spec.slot).await?;
    let actual = after
        .as_ref()
        .and_then(|s| s.confirmed_flush_lsn)
        .unwrap_or(Lsn::ZERO);
    if actual > resume {
        return Err(Error::SlotJumped {
            slot: spec.slot.clone(),
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

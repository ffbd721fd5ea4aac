//! `check`'s view of what makes recovery possible: the checkpoint topic, whether
//! the slot and the checkpoint agree (what `run` would decide), and whether the slot
//! survives a failover to the standbys named in the URL.

use std::time::Duration;

use outboxd_kafka_sink::checkpoint::CheckpointStore;
use outboxd_replication::{Admin, ConnectOptions, TargetSessionAttrs};

use super::{explained, Report};
use crate::config::{Config, Delivery};
use crate::relay::{self, RelayError};
use crate::settings::{connect_options, sink_config};

/// How long a topic check may take.
const TIMEOUT: Duration = Duration::from_secs(10);

pub(super) async fn check_checkpoint(config: &Config, report: &mut Report) {
    let topic = &config.kafka.checkpoint_topic;
    let what = format!("checkpoint topic '{topic}' compacted");
    let store = match CheckpointStore::new(&sink_config(config), topic, TIMEOUT) {
        Ok(store) => store,
        Err(e) => return report.line(&what, Err(e.to_string())),
    };
    let described = store.check().await;
    let checked = match &described {
        Ok(t) => t
            .verify()
            .map(|()| {
                format!(
                    " ({} partition(s), replication factor {})",
                    t.partitions, t.replication_factor
                )
            })
            .map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    report.line(&what, checked);
    if let Some(advice) = described.as_ref().ok().and_then(|t| t.long_history()) {
        report.warn(
            &format!("checkpoint topic '{topic}' keeps a short history"),
            &advice,
        );
    }
    let unreplicated = described.ok().filter(|t| t.replication_factor < 2);
    if let (Some(t), Delivery::ExactlyOnce) = (unreplicated, config.kafka.delivery) {
        report.warn(
            &format!("checkpoint topic '{topic}' replicated"),
            &format!(
                "replication factor {}: exactly once, a broker that stops cleanly while it \
                 alone holds the checkpoint partition can leave a committed Kafka \
                 transaction hanging, and the relay then waits for an operator \
                 (docs/delivery.md, \"Transaction timeouts\"); give it and the outbox \
                 topics a replication factor of at least 2 in production",
                t.replication_factor
            ),
        );
    }
    let agreement = match relay::preview(config).await {
        Ok(preview) => Ok(match (&preview.checkpoint, preview.resume) {
            (Some(c), Some(resume)) => format!(
                " (checkpoint {} written {} by outboxd {}; slot confirmed {}; run resumes at {resume})",
                c.confirmed_lsn,
                c.written_at,
                c.outboxd_version,
                slot_position(&preview.slot),
            ),
            (None, Some(resume)) => format!(
                " (no checkpoint yet; run starts from the slot at {resume} and records one)"
            ),
            (_, None) => {
                " (first start: run creates the slot and records a first checkpoint)".to_owned()
            }
        }),
        Err(RelayError::Replication(e)) => Err(explained(&e)),
        Err(e) => Err(e.to_string()),
    };
    report.line("slot and checkpoint agree", agreement);
}

fn slot_position(slot: &Option<outboxd_replication::SlotInfo>) -> String {
    slot.as_ref()
        .and_then(|s| s.confirmed_flush_lsn)
        .map_or_else(|| "-".to_owned(), |l| l.to_string())
}

/// PostgreSQL 17+: whether the slot would survive a failover to the standbys named
/// in `postgres.url`; skipped when failover slots are not in play.
pub(super) async fn check_failover(config: &Config, report: &mut Report) {
    let Ok(opts) = connect_options(config) else {
        return;
    };
    let slot = &config.postgres.slot;
    let what = format!("slot '{slot}' synchronized to standbys");
    let primary = match Admin::connect(&opts).await {
        Ok(admin) => admin,
        Err(_) => return, // reported by the PostgreSQL checks
    };
    let failover = match primary.slot(slot).await {
        Ok(Some(info)) => info.failover,
        _ => return,
    };
    match failover {
        None if !config.postgres.failover_slot => return,
        None => {
            return report.line(
                &what,
                Err(
                    "this server has no failover slots (PostgreSQL 17 or later needed); set \
                     postgres.failover_slot = false"
                        .to_owned(),
                ),
            )
        }
        Some(false) => {
            let advice = if config.postgres.failover_slot {
                Err(
                    "the slot was created without failover: run ALTER_REPLICATION_SLOT on a \
                     replication connection (see docs/operations.md, \"Failover of \
                     PostgreSQL\")"
                        .to_owned(),
                )
            } else {
                Ok(
                    " (not a failover slot: after a failover outboxd refuses until the \
                    runbook is followed; set postgres.failover_slot = true to change that)"
                        .to_owned(),
                )
            };
            return report.line(&what, advice);
        }
        Some(true) => {}
    }
    let mut standbys = Vec::new();
    for host in &opts.hosts {
        let one = ConnectOptions {
            hosts: vec![host.clone()],
            target_session_attrs: TargetSessionAttrs::Any,
            ..opts.clone()
        };
        let Ok(admin) = Admin::connect(&one).await else {
            standbys.push(format!("{host}: unreachable"));
            continue;
        };
        let in_recovery = admin
            .client()
            .query_one("SELECT pg_is_in_recovery()", &[])
            .await
            .map(|r| r.get::<_, bool>(0))
            .unwrap_or(false);
        if !in_recovery {
            continue;
        }
        standbys.push(match admin.slot(slot).await {
            Ok(Some(s)) if s.synced == Some(true) && !s.temporary => format!(
                "{host}: synchronized, persistent, confirmed {}",
                slot_position(&Some(s.clone()))
            ),
            Ok(Some(_)) => format!(
                "{host}: a temporary copy, not yet safe for failover (it becomes persistent \
                 after the slot is confirmed past a checkpoint; see docs/architecture.md, \
                 \"Failover slots\")"
            ),
            Ok(None) => format!("{host}: no copy (sync_replication_slots off on it?)"),
            Err(e) => format!("{host}: {e}"),
        });
    }
    let ready = !standbys.is_empty() && standbys.iter().all(|s| s.contains("persistent"));
    let detail = if standbys.is_empty() {
        "a failover slot; no standby in postgres.url to look at".to_owned()
    } else {
        standbys.join("; ")
    };
    report.line(
        &what,
        if ready || standbys.is_empty() {
            Ok(format!(" ({detail})"))
        } else {
            Err(detail)
        },
    );
}

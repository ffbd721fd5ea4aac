//! Where a session resumes, or why it must not: the slot, the server and the
//! checkpoint are compared before every session. Pure, so every case is tested.

use std::fmt;

use outboxd_pgoutput::Lsn;
use outboxd_replication::{SlotInfo, SystemIdentity, TimelineSwitch};

use crate::checkpoint::{Checkpoint, EventPosition};

/// What the checkpoint topic holds for this relay.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Stored<'a> {
    /// The topic does not exist.
    TopicMissing,
    /// No checkpoint for this database and slot.
    Nothing,
    /// This relay's checkpoint.
    Ours(&'a Checkpoint),
    /// This relay's record, which cannot be read (why).
    Unreadable(&'a str),
    /// A checkpoint for this database and slot, written on another PostgreSQL
    /// cluster (another system identifier).
    Foreign(&'a Checkpoint),
}

/// Everything the decision looks at.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Situation<'a> {
    pub slot_name: &'a str,
    pub server: &'a SystemIdentity,
    /// The server's timeline history (needed when the checkpoint's timeline is older).
    pub history: &'a [TimelineSwitch],
    pub slot: Option<&'a SlotInfo>,
    pub stored: Stored<'a>,
    /// What this process confirmed, once it has streamed from the slot.
    pub this_run: Option<Lsn>,
}

/// What to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Plan {
    /// First start: create the slot, then record it in a first checkpoint.
    CreateSlot,
    /// Stream from the existing slot, starting no earlier than `start`, leaving
    /// out events up to `skip_through` (already delivered).
    Resume {
        start: Lsn,
        skip_through: Option<EventPosition>,
        /// No checkpoint of ours exists yet: write one before streaming.
        first_checkpoint: bool,
    },
}

/// Why events may be missing from Kafka.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum GapKind {
    /// The slot disappeared while this process was relaying from it.
    SlotVanished,
    /// There is a checkpoint, but no slot.
    SlotMissing,
    /// The slot was confirmed beyond the checkpoint by someone else.
    SlotAhead { slot_confirmed: Lsn },
    /// The checkpoint for this database and slot came from another cluster.
    OtherCluster { checkpoint_system: String },
    /// This server's timeline left the checkpoint's before the checkpoint's position
    /// (a failover that lost WAL the relay had already published), or is not a
    /// descendant of it at all.
    TimelineDiverged {
        checkpoint_timeline: u32,
        switchpoint: Option<Lsn>,
    },
    /// The checkpoint lies beyond this server's WAL end.
    CheckpointAheadOfServer,
    /// The checkpoint topic is gone, but the slot exists.
    CheckpointTopicMissing,
    /// This relay's record cannot be read (not a checkpoint, or a newer format).
    CheckpointUnreadable { reason: String },
}

/// A refusal: what is wrong and which positions may be affected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gap {
    pub(crate) kind: GapKind,
    pub slot: String,
    /// Events that committed after this may be missing (the last delivered position).
    pub from: Lsn,
    /// ... up to here, when known.
    pub to: Option<Lsn>,
}

impl Gap {
    /// Whether `--accept-gap` may override it: only at start, never for a slot that
    /// vanished under a running relay.
    pub(crate) fn overridable(&self) -> bool {
        self.kind != GapKind::SlotVanished
    }

    /// The runbook section for it in docs/operations.md.
    pub fn runbook(&self) -> &'static str {
        match self.kind {
            GapKind::SlotVanished | GapKind::SlotMissing => "Refusal: the slot is missing",
            GapKind::SlotAhead { .. } => "Refusal: the slot is ahead of the checkpoint",
            GapKind::OtherCluster { .. } => "Refusal: another cluster",
            GapKind::TimelineDiverged { .. } | GapKind::CheckpointAheadOfServer => {
                "Refusal: the server is behind the checkpoint"
            }
            GapKind::CheckpointTopicMissing => "Refusal: the checkpoint topic is missing",
            GapKind::CheckpointUnreadable { .. } => "Refusal: the checkpoint cannot be read",
        }
    }

    /// The range that may be missing, as an operator reads it.
    pub fn range(&self) -> String {
        match self.to {
            Some(to) => format!("after {} up to {to}", self.from),
            None => format!("after {}", self.from),
        }
    }
}

impl fmt::Display for Gap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let slot = &self.slot;
        match &self.kind {
            GapKind::SlotVanished => write!(
                f,
                "replication slot '{slot}' disappeared while outboxd was relaying from it \
                 (dropped, or a failover to a server without it); the last delivered \
                 position is {}",
                self.from
            )?,
            GapKind::SlotMissing => write!(
                f,
                "replication slot '{slot}' does not exist, but the checkpoint says events \
                 up to {} were delivered from it (dropped, or a failover to a server without \
                 it); outboxd does not recreate it, because a new slot starts at the \
                 current WAL end",
                self.from
            )?,
            GapKind::SlotAhead { slot_confirmed } => write!(
                f,
                "replication slot '{slot}' is confirmed up to {slot_confirmed}, beyond the \
                 checkpoint at {}: another client consumed or advanced it",
                self.from
            )?,
            GapKind::OtherCluster { checkpoint_system } => write!(
                f,
                "the checkpoint for slot '{slot}' was written on PostgreSQL system \
                 {checkpoint_system}, but this server is another system: outboxd is \
                 pointed at a different cluster (or a new one, e.g. after pg_upgrade). If \
                 this Kafka cluster serves relays of several PostgreSQL clusters with the \
                 same database and slot names, give each its own kafka.checkpoint_topic"
            )?,
            GapKind::TimelineDiverged {
                checkpoint_timeline,
                switchpoint,
            } => match switchpoint {
                Some(at) => write!(
                    f,
                    "this server's history left timeline {checkpoint_timeline} at {at}, but \
                     the relay had published events committed after that from the old \
                     primary (checkpoint at {}): a promoted standby that lacks WAL whose \
                     events are already in Kafka. Set synchronized_standby_slots on the \
                     primary so this cannot happen",
                    self.from
                )?,
                None => write!(
                    f,
                    "the checkpoint was written on timeline {checkpoint_timeline}, which is not \
                     in this server's history: this server is not a descendant of the one \
                     the relay streamed from (an old primary, or a diverged copy)"
                )?,
            },
            GapKind::CheckpointAheadOfServer => write!(
                f,
                "the checkpoint at {} lies beyond this server's WAL end on the same timeline: \
                 the server lacks WAL the relay had already published (restored from a backup?)",
                self.from
            )?,
            GapKind::CheckpointTopicMissing => write!(
                f,
                "the checkpoint topic does not exist, but replication slot '{slot}' does: \
                 the record of what was delivered is gone (deleted topic, or another Kafka \
                 cluster). If this relay never ran with checkpoints (an upgrade, a slot \
                 made by `outboxd init --apply` or taken over from Debezium), create the \
                 topic with `outboxd init --apply`"
            )?,
            GapKind::CheckpointUnreadable { reason } => write!(
                f,
                "{reason}; what was delivered from replication slot '{slot}' is unknown (a \
                 newer outboxd's record: run that version; anything else: another program \
                 writes to outboxd's checkpoint topic)"
            )?,
        }
        write!(
            f,
            ". Events committed {} may be missing from Kafka. Follow docs/operations.md, \
             \"{}\"; once handled, `outboxd run --accept-gap` goes on from the slot",
            self.range(),
            self.runbook()
        )
    }
}

/// Decides where to resume, or refuses with the gap. A missing slot with nothing
/// on record is a first start ([`Plan::CreateSlot`]); whether that is allowed is
/// the caller's policy.
pub(crate) fn plan(s: &Situation<'_>) -> Result<Plan, Gap> {
    let gap = |kind, from, to| Gap {
        kind,
        slot: s.slot_name.to_owned(),
        from,
        to,
    };
    let checkpoint = match s.stored {
        Stored::Ours(c) => Some(c),
        Stored::Foreign(c) => {
            let kind = GapKind::OtherCluster {
                checkpoint_system: c.system_identifier.clone(),
            };
            return Err(gap(kind, c.confirmed_lsn, None));
        }
        Stored::Unreadable(reason) => {
            let kind = GapKind::CheckpointUnreadable {
                reason: reason.to_owned(),
            };
            // Nothing before the slot's position can be vouched for.
            let to = s.slot.and_then(|slot| slot.confirmed_flush_lsn);
            return Err(gap(kind, Lsn::ZERO, to));
        }
        Stored::TopicMissing | Stored::Nothing => None,
    };
    let mut delivered = checkpoint
        .map(|c| c.confirmed_lsn)
        .max(s.this_run)
        .unwrap_or(Lsn::ZERO);
    if let Some(c) = checkpoint {
        match fork_point(s, c).map_err(|kind| gap(kind, c.confirmed_lsn, None))? {
            // WAL after the fork differs between the timelines: what the relay
            // confirmed beyond it was the old timeline's, and the new one's changes
            // from the fork on are still to be delivered.
            Some(fork) => delivered = delivered.min(fork),
            None if c.confirmed_lsn > s.server.xlog_pos => {
                let kind = GapKind::CheckpointAheadOfServer;
                return Err(gap(kind, c.confirmed_lsn, Some(s.server.xlog_pos)));
            }
            None => {}
        }
    }
    let Some(slot) = s.slot else {
        return match (s.this_run, checkpoint) {
            (Some(_), _) => Err(gap(GapKind::SlotVanished, delivered, None)),
            (None, Some(_)) => Err(gap(
                GapKind::SlotMissing,
                delivered,
                Some(s.server.xlog_pos),
            )),
            (None, None) => Ok(Plan::CreateSlot),
        };
    };
    let slot_confirmed = slot.confirmed_flush_lsn.unwrap_or(Lsn::ZERO);
    let known = checkpoint.is_some() || s.this_run.is_some();
    if !known && matches!(s.stored, Stored::TopicMissing) {
        return Err(gap(GapKind::CheckpointTopicMissing, slot_confirmed, None));
    }
    if known && slot_confirmed > delivered {
        let kind = GapKind::SlotAhead { slot_confirmed };
        return Err(gap(kind, delivered, Some(slot_confirmed)));
    }
    Ok(Plan::Resume {
        start: delivered.max(slot_confirmed),
        skip_through: checkpoint.and_then(|c| c.last_event),
        first_checkpoint: checkpoint.is_none(),
    })
}

/// The plan after an operator accepted `gap`: go on from the slot as it is.
pub(crate) fn accept(gap: &Gap, slot: Option<&SlotInfo>) -> Plan {
    match (&gap.kind, slot) {
        (_, None) => Plan::CreateSlot,
        (_, Some(slot)) => Plan::Resume {
            start: slot.confirmed_flush_lsn.unwrap_or(Lsn::ZERO),
            skip_through: None,
            first_checkpoint: true,
        },
    }
}

/// Where this server's timeline forked from the checkpoint's (`None`: the same
/// timeline). A later timeline must descend from the checkpoint's, and no event
/// the relay published may lie past the fork: those came from WAL the promoted
/// server never had.
fn fork_point(s: &Situation<'_>, c: &Checkpoint) -> Result<Option<Lsn>, GapKind> {
    if c.timeline == s.server.timeline {
        return Ok(None);
    }
    let diverged = |switchpoint| GapKind::TimelineDiverged {
        checkpoint_timeline: c.timeline,
        switchpoint,
    };
    if c.timeline > s.server.timeline {
        return Err(diverged(None));
    }
    let fork = s
        .history
        .iter()
        .find(|h| h.timeline == c.timeline)
        .ok_or_else(|| diverged(None))?
        .switchpoint;
    match c.last_event {
        Some(event) if event.commit_lsn >= fork => Err(diverged(Some(fork))),
        _ => Ok(Some(fork)),
    }
}

#[cfg(test)]
#[path = "resume_tests.rs"]
mod tests;

//! Every way the slot, the server and the checkpoint can disagree.

use outboxd_pgoutput::Lsn;
use outboxd_replication::{SlotInfo, SystemIdentity, TimelineSwitch};

use super::{accept, plan, Gap, GapKind, Plan, Situation, Stored};
use crate::checkpoint::tests::checkpoint;
use crate::checkpoint::EventPosition;

fn server(timeline: u32, wal_end: u64) -> SystemIdentity {
    SystemIdentity {
        system_id: "7301".to_owned(),
        timeline,
        xlog_pos: Lsn(wal_end),
        dbname: Some("shop".to_owned()),
    }
}

fn slot(confirmed: u64) -> SlotInfo {
    SlotInfo {
        name: "outboxd".to_owned(),
        plugin: Some("pgoutput".to_owned()),
        slot_type: "logical".to_owned(),
        database: Some("shop".to_owned()),
        active_pid: None,
        restart_lsn: Some(Lsn(confirmed)),
        confirmed_flush_lsn: Some(Lsn(confirmed)),
        wal_status: Some("reserved".to_owned()),
        lag_bytes: Some(0),
        temporary: false,
        failover: None,
        synced: None,
    }
}

struct Case {
    server: SystemIdentity,
    history: Vec<TimelineSwitch>,
    slot: Option<SlotInfo>,
    stored: Option<crate::checkpoint::Checkpoint>,
    topic_missing: bool,
    foreign: bool,
    unreadable: Option<&'static str>,
    this_run: Option<Lsn>,
}

impl Case {
    fn new() -> Case {
        Case {
            server: server(1, 0x9000),
            history: Vec::new(),
            slot: Some(slot(0x1000)),
            stored: None,
            topic_missing: false,
            foreign: false,
            unreadable: None,
            this_run: None,
        }
    }

    fn plan(&self) -> Result<Plan, Gap> {
        let stored = match &self.stored {
            _ if self.unreadable.is_some() => Stored::Unreadable(self.unreadable.unwrap_or("")),
            Some(c) if self.foreign => Stored::Foreign(c),
            Some(c) => Stored::Ours(c),
            None if self.topic_missing => Stored::TopicMissing,
            None => Stored::Nothing,
        };
        plan(&Situation {
            slot_name: "outboxd",
            server: &self.server,
            history: &self.history,
            slot: self.slot.as_ref(),
            stored,
            this_run: self.this_run,
        })
    }
}

fn resume(start: u64, skip: Option<(u64, u32)>, first: bool) -> Plan {
    Plan::Resume {
        start: Lsn(start),
        skip_through: skip.map(|(lsn, index)| EventPosition {
            commit_lsn: Lsn(lsn),
            index,
        }),
        first_checkpoint: first,
    }
}

#[test]
fn a_first_start_creates_the_slot() {
    let mut case = Case::new();
    case.slot = None;
    assert_eq!(case.plan(), Ok(Plan::CreateSlot));
    case.topic_missing = true;
    assert_eq!(case.plan(), Ok(Plan::CreateSlot));
}

#[test]
fn an_existing_slot_without_a_checkpoint_starts_from_the_slot_and_records_it() {
    assert_eq!(Case::new().plan(), Ok(resume(0x1000, None, true)));
}

#[test]
fn a_slot_behind_the_checkpoint_resumes_from_the_checkpoint() {
    let mut case = Case::new();
    case.stored = Some(checkpoint(0x2000, Some((0x1f00, 4))));
    assert_eq!(case.plan(), Ok(resume(0x2000, Some((0x1f00, 4)), false)));
    case.slot = Some(slot(0x2000));
    assert_eq!(case.plan(), Ok(resume(0x2000, Some((0x1f00, 4)), false)));
}

#[test]
fn a_missing_slot_with_a_checkpoint_is_refused_whatever_create_slot_says() {
    let mut case = Case::new();
    case.slot = None;
    case.stored = Some(checkpoint(0x2000, None));
    let gap = case.plan().unwrap_err();
    assert_eq!(gap.kind, GapKind::SlotMissing);
    assert_eq!((gap.from, gap.to), (Lsn(0x2000), Some(Lsn(0x9000))));
    let text = gap.to_string();
    assert!(text.contains("after 0/2000 up to 0/9000"), "{text}");
    assert!(text.contains("--accept-gap"), "{text}");
    assert!(text.contains("docs/operations.md"), "{text}");
    assert_eq!(accept(&gap, None), Plan::CreateSlot);
}

#[test]
fn a_slot_that_vanishes_mid_run_is_fatal_and_not_overridable() {
    let mut case = Case::new();
    case.slot = None;
    case.this_run = Some(Lsn(0x3000));
    let gap = case.plan().unwrap_err();
    assert_eq!(gap.kind, GapKind::SlotVanished);
    assert_eq!(gap.from, Lsn(0x3000));
    assert!(!gap.overridable());
}

#[test]
fn a_slot_ahead_of_the_checkpoint_is_refused_with_the_range() {
    let mut case = Case::new();
    case.stored = Some(checkpoint(0x2000, None));
    case.slot = Some(slot(0x5000));
    let gap = case.plan().unwrap_err();
    assert!(matches!(gap.kind, GapKind::SlotAhead { .. }));
    assert_eq!((gap.from, gap.to), (Lsn(0x2000), Some(Lsn(0x5000))));
    assert_eq!(accept(&gap, case.slot.as_ref()), resume(0x5000, None, true));
}

#[test]
fn a_slot_ahead_of_what_this_run_delivered_is_refused_on_reconnect() {
    let mut case = Case::new();
    case.this_run = Some(Lsn(0x2000));
    case.slot = Some(slot(0x2400));
    let gap = case.plan().unwrap_err();
    assert!(matches!(gap.kind, GapKind::SlotAhead { .. }));
}

#[test]
fn another_clusters_checkpoint_is_refused() {
    let mut case = Case::new();
    case.stored = Some(checkpoint(0x2000, None));
    case.foreign = true;
    let gap = case.plan().unwrap_err();
    assert!(matches!(gap.kind, GapKind::OtherCluster { .. }));
    assert!(gap.to_string().contains("7301"), "{gap}");
}

#[test]
fn a_promoted_standby_resumes_from_the_fork_when_nothing_past_it_was_published() {
    let mut case = Case::new();
    case.server = server(2, 0x9000);
    case.history = vec![TimelineSwitch {
        timeline: 1,
        switchpoint: Lsn(0x1800),
    }];
    // Confirmed past the fork (an idle WAL end), but the last event is before it.
    case.stored = Some(checkpoint(0x2000, Some((0x1700, 0))));
    case.slot = Some(slot(0x1600));
    assert_eq!(case.plan(), Ok(resume(0x1800, Some((0x1700, 0)), false)));
}

#[test]
fn events_published_past_the_fork_are_refused() {
    let mut case = Case::new();
    case.server = server(2, 0x9000);
    case.history = vec![TimelineSwitch {
        timeline: 1,
        switchpoint: Lsn(0x1800),
    }];
    case.stored = Some(checkpoint(0x2000, Some((0x1900, 2))));
    let gap = case.plan().unwrap_err();
    assert_eq!(
        gap.kind,
        GapKind::TimelineDiverged {
            checkpoint_timeline: 1,
            switchpoint: Some(Lsn(0x1800))
        }
    );
    assert!(
        gap.to_string().contains("synchronized_standby_slots"),
        "{gap}"
    );
}

#[test]
fn a_server_not_descending_from_the_checkpoints_timeline_is_refused() {
    let mut case = Case::new();
    case.stored = Some(checkpoint(0x2000, None));
    case.server = server(3, 0x9000);
    case.history = vec![TimelineSwitch {
        timeline: 2,
        switchpoint: Lsn(0x1800),
    }];
    let gap = case.plan().unwrap_err();
    assert!(matches!(
        gap.kind,
        GapKind::TimelineDiverged {
            switchpoint: None,
            ..
        }
    ));
    // An older server than the one the relay streamed from.
    let mut old = Case::new();
    let mut c = checkpoint(0x2000, None);
    c.timeline = 2;
    old.stored = Some(c);
    assert!(old.plan().is_err());
}

#[test]
fn a_checkpoint_beyond_the_servers_wal_end_is_refused() {
    let mut case = Case::new();
    case.stored = Some(checkpoint(0xA000, None));
    let gap = case.plan().unwrap_err();
    assert_eq!(gap.kind, GapKind::CheckpointAheadOfServer);
}

#[test]
fn a_missing_checkpoint_topic_with_an_existing_slot_is_refused() {
    let mut case = Case::new();
    case.topic_missing = true;
    let gap = case.plan().unwrap_err();
    assert_eq!(gap.kind, GapKind::CheckpointTopicMissing);
    assert!(gap.to_string().contains("outboxd init --apply"), "{gap}");
    assert!(gap.overridable());
}

#[test]
fn an_unreadable_checkpoint_is_refused_and_accepting_it_starts_from_the_slot() {
    let mut case = Case::new();
    case.unreadable = Some("the checkpoint under key 'k' is not an outboxd checkpoint");
    let gap = case.plan().unwrap_err();
    assert_eq!(
        gap.kind,
        GapKind::CheckpointUnreadable {
            reason: "the checkpoint under key 'k' is not an outboxd checkpoint".to_owned()
        }
    );
    assert_eq!(gap.range(), "after 0/0 up to 0/1000");
    assert!(gap.overridable());
    assert!(gap.to_string().contains("is unknown"), "{gap}");
    assert_eq!(
        accept(&gap, case.slot.as_ref()),
        resume(0x1000, None, true),
        "accepted: from the slot, with a new checkpoint over the unreadable one"
    );
}

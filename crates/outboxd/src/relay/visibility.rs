//! Exactly once: a committed position is confirmed to PostgreSQL only once its
//! checkpoint record is visible to `read_committed` consumers, not as soon as the
//! commit returns. The broker answers a commit before it writes the transaction's
//! markers, and can fail to write them at all (a partition without a leader is
//! skipped, docs/architecture.md, "Lost commit markers"); the transaction then hangs
//! and the checkpoint topic still shows the previous checkpoint. The slot must never
//! pass that.
//!
//! Visible means settled: once the partition's last stable offset reaches an end
//! read after the commit returned, every transaction that wrote below that end,
//! this one included, has its markers.

use std::time::Duration;

use outboxd_kafka_sink::checkpoint::PartitionOffsets;
use outboxd_pgoutput::Lsn;
use tokio::time::Instant;

/// How often the checkpoint partition's offsets are asked for while a committed
/// position waits to be confirmed.
pub(crate) const CHECK_INTERVAL: Duration = Duration::from_millis(100);

/// Committed positions on their way to being confirmed.
#[derive(Debug)]
pub(crate) struct Visibility {
    /// The newest committed position not yet waited for.
    committed: Option<Lsn>,
    /// A committed position and the partition's end read after its commit: it is
    /// visible once the last stable offset reaches that end.
    awaited: Option<(Lsn, i64)>,
    next_check: Instant,
}

impl Visibility {
    pub fn new() -> Self {
        Visibility {
            committed: None,
            awaited: None,
            next_check: Instant::now(),
        }
    }

    /// A Kafka transaction whose checkpoint records `lsn` committed.
    pub fn committed(&mut self, lsn: Lsn) {
        if self.committed.is_none() && self.awaited.is_none() {
            self.next_check = Instant::now() + CHECK_INTERVAL;
        }
        self.committed = Some(self.committed.map_or(lsn, |c| c.max(lsn)));
    }

    /// When to ask for the offsets next; `None` while nothing waits.
    pub fn due(&self) -> Option<Instant> {
        (self.committed.is_some() || self.awaited.is_some()).then_some(self.next_check)
    }

    /// The offsets could not be read: ask again after the interval.
    pub fn retry_later(&mut self) {
        self.next_check = Instant::now() + CHECK_INTERVAL;
    }

    /// What the checkpoint partition's offsets, read now, say: the position that has
    /// become visible, if one has.
    pub fn observe(&mut self, offsets: PartitionOffsets) -> Option<Lsn> {
        self.next_check = Instant::now() + CHECK_INTERVAL;
        let visible = match self.awaited {
            Some((lsn, end)) if offsets.stable >= end => {
                self.awaited = None;
                Some(lsn)
            }
            _ => None,
        };
        if self.awaited.is_none() {
            // Read after these commits returned, so their records lie below it.
            self.awaited = self.committed.take().map(|lsn| (lsn, offsets.end));
        }
        visible
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(end: i64, stable: i64) -> PartitionOffsets {
        PartitionOffsets { end, stable }
    }

    #[test]
    fn confirms_a_commit_once_the_stable_offset_passes_an_end_read_after_it() {
        let mut v = Visibility::new();
        assert_eq!(v.due(), None, "nothing committed");
        v.committed(Lsn(100));
        assert!(v.due().is_some());
        assert_eq!(v.observe(at(10, 8)), None, "the end after the commit is 10");
        v.committed(Lsn(200));
        assert_eq!(v.observe(at(12, 9)), None, "not settled up to 10 yet");
        assert_eq!(v.observe(at(14, 10)), Some(Lsn(100)));
        // 200 committed before the read that answered end 14.
        assert_eq!(v.observe(at(15, 13)), None);
        assert_eq!(v.observe(at(16, 14)), Some(Lsn(200)));
        assert_eq!(v.due(), None, "everything confirmed");
    }

    #[test]
    fn a_commit_whose_markers_never_come_is_never_confirmed() {
        let mut v = Visibility::new();
        v.committed(Lsn(100));
        assert_eq!(v.observe(at(10, 9)), None);
        v.committed(Lsn(200));
        for _ in 0..5 {
            assert_eq!(v.observe(at(11, 9)), None, "a transaction hangs at 9");
        }
        assert!(v.due().is_some(), "still waiting");
    }
}

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
//! this one included, has its markers. Settled is not committed, though: an operator
//! may abort a transaction whose markers were lost. So a commit still invisible after
//! [`OVERDUE_AFTER`] is *overdue*: the session commits nothing more, and when it
//! settles it is not confirmed; the session ends, and the next one resumes from what
//! the checkpoint topic then holds (docs/architecture.md, "Lost commit markers").

use std::time::Duration;

use outboxd_kafka_sink::checkpoint::PartitionOffsets;
use outboxd_pgoutput::Lsn;
use tokio::time::Instant;

use crate::checkpoint::RelayIdentity;
use crate::relay::checkpoints::{Checkpoints, OffsetsQuery};
use crate::relay::RelayError;

/// How often the checkpoint partition's offsets are asked for while a committed
/// position waits to be confirmed.
pub(crate) const CHECK_INTERVAL: Duration = Duration::from_millis(100);

/// A commit not visible after this long is overdue: its markers are late or lost.
/// It is reported, and from then on the session commits nothing more.
pub(crate) const OVERDUE_AFTER: Duration = Duration::from_secs(10);

/// Committed positions on their way to being confirmed.
pub(crate) struct Visibility {
    /// The newest committed position not yet waited for.
    committed: Option<Lsn>,
    /// The newest position committed before the question in flight was asked:
    /// the end in its answer was read after that commit. Commits made while it is
    /// in flight wait for the next question.
    asked_for: Option<Lsn>,
    /// A committed position and the partition's end read after its commit: it is
    /// visible once the last stable offset reaches that end.
    awaited: Option<(Lsn, i64)>,
    /// Since when `awaited` waits.
    awaited_since: Instant,
    /// An answer showed `awaited` still unsettled after [`OVERDUE_AFTER`] (it was
    /// reported, and no further commit may be made).
    awaited_overdue: bool,
    next_check: Instant,
    /// The offsets asked for, not answered yet.
    in_flight: Option<OffsetsQuery>,
    /// Whose checkpoint partition is asked about.
    identity: RelayIdentity,
}

impl std::fmt::Debug for Visibility {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Visibility")
            .field("committed", &self.committed)
            .field("asked_for", &self.asked_for)
            .field("awaited", &self.awaited)
            .field("asking", &self.in_flight.is_some())
            .finish()
    }
}

impl Visibility {
    pub fn new(identity: RelayIdentity) -> Self {
        Visibility {
            identity,
            committed: None,
            asked_for: None,
            awaited: None,
            awaited_since: Instant::now(),
            awaited_overdue: false,
            next_check: Instant::now(),
            in_flight: None,
        }
    }

    /// A Kafka transaction whose checkpoint records `lsn` committed.
    pub fn committed(&mut self, lsn: Lsn) {
        if !self.waiting() {
            self.next_check = Instant::now() + CHECK_INTERVAL;
        }
        self.committed = newest(self.committed, Some(lsn));
    }

    /// Whether a committed position waits to be confirmed.
    pub fn waiting(&self) -> bool {
        self.committed.is_some() || self.asked_for.is_some() || self.awaited.is_some()
    }

    /// Whether an answer showed the awaited commit still invisible after
    /// [`OVERDUE_AFTER`]: no further Kafka transaction may be committed. One
    /// committed after an operator aborted the awaited one would carry a checkpoint
    /// that covers the aborted events, and the next session would resume after them.
    /// Told by an answer, not by the clock alone: a relay that was itself stopped
    /// (SIGSTOP) for that long finds its commit settled in time.
    pub fn overdue(&self) -> bool {
        self.awaited.is_some() && self.awaited_overdue
    }

    /// How long the awaited commit has not been visible; zero when none is awaited.
    pub fn unsettled_for(&self) -> Duration {
        match self.awaited {
            Some(_) => self.awaited_since.elapsed(),
            None => Duration::ZERO,
        }
    }

    /// Waits until a committed position has become visible, asking
    /// `store` every [`CHECK_INTERVAL`], and returns it. Pending while nothing
    /// waits. Cancellation-safe: a question asked continues on the next call. An
    /// unanswered question is asked again later: only the confirmation waits.
    ///
    /// An overdue commit that settles is an error, not a confirmation: whether it
    /// committed or was aborted, only a read of the checkpoint topic can tell.
    pub async fn next_visible(&mut self, store: &impl Checkpoints) -> Result<Lsn, RelayError> {
        loop {
            if let Some(query) = self.in_flight.as_mut() {
                let answer = query.await;
                self.in_flight = None;
                self.next_check = Instant::now() + CHECK_INTERVAL;
                match answer {
                    Ok(offsets) => {
                        if let Some(settled) = self.answer(offsets) {
                            return settled;
                        }
                    }
                    Err(e) => {
                        self.committed = newest(self.committed, self.asked_for.take());
                        tracing::debug!(error = %e, "reading the checkpoint partition's offsets; asking again");
                    }
                }
            }
            if !self.waiting() {
                std::future::pending::<()>().await;
            }
            tokio::time::sleep_until(self.next_check).await;
            self.ask();
            self.in_flight = Some(store.offsets(&self.identity));
        }
    }

    /// A question is about to be asked: its answer covers what committed so far.
    fn ask(&mut self) {
        self.asked_for = newest(self.asked_for, self.committed.take());
    }

    /// The answer to the last question: the position that has become visible, if
    /// one has, or the overdue commit that settled.
    fn answer(&mut self, offsets: PartitionOffsets) -> Option<Result<Lsn, RelayError>> {
        let visible = match self.awaited {
            Some((lsn, end)) if offsets.stable >= end => {
                let overdue = self.overdue();
                self.awaited = None;
                Some(if overdue {
                    Err(RelayError::CommitSettledLate {
                        committed: lsn,
                        waited_secs: self.awaited_since.elapsed().as_secs(),
                    })
                } else {
                    Ok(lsn)
                })
            }
            _ => None,
        };
        if self.awaited.is_none() {
            // Read after these commits returned, so their records lie below it.
            self.awaited = self.asked_for.take().map(|lsn| (lsn, offsets.end));
            self.awaited_since = Instant::now();
            self.awaited_overdue = false;
        } else {
            self.report_if_late(offsets);
            // Still waiting for an older one: ask for these again later.
            self.committed = newest(self.committed, self.asked_for.take());
        }
        visible
    }

    /// Marks the awaited commit overdue, and warns, once it has waited
    /// [`OVERDUE_AFTER`].
    fn report_if_late(&mut self, offsets: PartitionOffsets) {
        if self.awaited_overdue || self.unsettled_for() < OVERDUE_AFTER {
            return;
        }
        self.awaited_overdue = true;
        if let Some((lsn, end)) = self.awaited {
            tracing::warn!(committed = %lsn, end, stable = offsets.stable, waited_secs = OVERDUE_AFTER.as_secs(), "a committed Kafka transaction's checkpoint is still not visible: a transaction below it is open or hangs (Kafka may have skipped its markers). Until it settles, the slot is not confirmed past it and no further Kafka transaction is committed; once it settles, the session restarts from the checkpoint topic. If this lasts, follow docs/operations.md, \"The checkpoint topic is held by an open transaction\"");
        }
    }
}

fn newest(a: Option<Lsn>, b: Option<Lsn>) -> Option<Lsn> {
    a.max(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity() -> RelayIdentity {
        crate::checkpoint::tests::checkpoint(0x100, None).identity()
    }

    fn at(end: i64, stable: i64) -> PartitionOffsets {
        PartitionOffsets { end, stable }
    }

    /// Asks, then answers with `offsets`; the visible position, if any.
    fn check(v: &mut Visibility, offsets: PartitionOffsets) -> Option<Lsn> {
        v.ask();
        visible(v, offsets)
    }

    fn visible(v: &mut Visibility, offsets: PartitionOffsets) -> Option<Lsn> {
        v.answer(offsets)
            .map(|settled| settled.expect("settled in time"))
    }

    #[test]
    fn confirms_a_commit_once_the_stable_offset_passes_an_end_read_after_it() {
        let mut v = Visibility::new(identity());
        assert!(!v.waiting(), "nothing committed");
        v.committed(Lsn(100));
        assert!(v.waiting());
        assert_eq!(
            check(&mut v, at(10, 8)),
            None,
            "the end after the commit is 10"
        );
        v.committed(Lsn(200));
        assert_eq!(check(&mut v, at(12, 9)), None, "not settled up to 10 yet");
        assert_eq!(check(&mut v, at(14, 10)), Some(Lsn(100)));
        // 200 committed before the question that answered end 14.
        assert_eq!(check(&mut v, at(15, 13)), None);
        assert_eq!(check(&mut v, at(16, 14)), Some(Lsn(200)));
        assert!(!v.waiting(), "everything confirmed");
    }

    #[test]
    fn a_commit_during_a_question_waits_for_the_next_one() {
        let mut v = Visibility::new(identity());
        v.committed(Lsn(100));
        v.ask();
        // Committed while the question is on its way: the end in its answer may
        // have been read before this commit's checkpoint record was written.
        v.committed(Lsn(200));
        assert_eq!(visible(&mut v, at(10, 10)), None);
        assert_eq!(check(&mut v, at(12, 10)), Some(Lsn(100)));
        assert_eq!(check(&mut v, at(12, 11)), None, "200's end is 12, not 10");
        assert_eq!(check(&mut v, at(12, 12)), Some(Lsn(200)));
    }

    #[test]
    fn a_commit_whose_markers_never_come_is_never_confirmed() {
        let mut v = Visibility::new(identity());
        v.committed(Lsn(100));
        assert_eq!(check(&mut v, at(10, 9)), None);
        v.committed(Lsn(200));
        for _ in 0..5 {
            assert_eq!(check(&mut v, at(11, 9)), None, "a transaction hangs at 9");
        }
        assert!(v.waiting(), "still waiting");
    }

    #[tokio::test(start_paused = true)]
    async fn an_overdue_commit_that_settles_ends_the_session_instead_of_confirming() {
        let mut v = Visibility::new(identity());
        v.committed(Lsn(100));
        assert_eq!(check(&mut v, at(10, 9)), None);
        tokio::time::advance(OVERDUE_AFTER - Duration::from_millis(1)).await;
        assert_eq!(check(&mut v, at(10, 9)), None);
        assert!(!v.overdue());
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(!v.overdue(), "known only from an answer");
        assert_eq!(check(&mut v, at(10, 9)), None, "still hanging");
        assert!(v.overdue(), "no further commit from here");
        // Settled: committed late, or aborted by an operator; the offsets cannot
        // tell which.
        v.ask();
        match v.answer(at(12, 12)) {
            Some(Err(RelayError::CommitSettledLate { committed, .. })) => {
                assert_eq!(committed, Lsn(100));
            }
            other => panic!("expected CommitSettledLate, got {other:?}"),
        }
        assert!(!v.overdue());
    }

    #[tokio::test(start_paused = true)]
    async fn a_commit_seen_settled_at_the_next_answer_is_confirmed_however_late() {
        let mut v = Visibility::new(identity());
        v.committed(Lsn(100));
        assert_eq!(check(&mut v, at(10, 9)), None);
        // The relay itself was stopped (SIGSTOP) meanwhile; no answer saw it hang.
        tokio::time::advance(OVERDUE_AFTER * 3).await;
        assert!(!v.overdue());
        assert_eq!(check(&mut v, at(10, 10)), Some(Lsn(100)));
    }
}

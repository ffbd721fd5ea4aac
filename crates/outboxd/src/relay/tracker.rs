//! The acknowledgement tracker: which LSN may be confirmed to PostgreSQL.
//!
//! Transactions enter in commit order (the order the slot delivers them); the sink
//! reports completions in any order (different partitions, retries, callbacks racing
//! a flush). The confirmable position is the end LSN of the newest transaction whose
//! every predecessor is complete too — the contiguous prefix. A failed transaction
//! blocks the prefix for good: nothing from it on is ever confirmed.

use std::collections::VecDeque;

use outboxd_kafka_sink::TxnId;
use outboxd_pgoutput::Lsn;

use crate::checkpoint::EventPosition;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Begun; its Commit has not been seen yet.
    Open,
    /// Committed at the source; waiting for the sink.
    Pending,
    /// Every record is acknowledged.
    Done,
    /// A record could not be delivered.
    Failed,
}

#[derive(Debug)]
struct Entry {
    txn: TxnId,
    end_lsn: Lsn,
    /// The transaction's last event, if it had any.
    last_event: Option<EventPosition>,
    /// Commit time (µs since 2000-01-01), for the lag metric.
    commit_time: i64,
    state: State,
}

/// Tracks transactions from Begin to acknowledgement.
#[derive(Debug, Default)]
pub struct AckTracker {
    queue: VecDeque<Entry>,
    confirmed: Option<Lsn>,
    /// The last event of the completed prefix.
    last_event: Option<EventPosition>,
    /// Completions that arrived for transactions not yet committed at the source.
    early: Vec<TxnId>,
}

impl AckTracker {
    pub fn new() -> Self {
        Self::default()
    }

    /// A transaction began (Begin). Transactions must begin in commit order.
    pub fn begin(&mut self, txn: TxnId, commit_time: i64) {
        debug_assert!(self.queue.back().is_none_or(|e| e.txn < txn));
        self.queue.push_back(Entry {
            txn,
            end_lsn: Lsn::ZERO,
            last_event: None,
            commit_time,
            state: State::Open,
        });
    }

    /// The transaction's Commit arrived with its end LSN; `last_event` is its last
    /// event, if it had any.
    pub fn commit(&mut self, txn: TxnId, end_lsn: Lsn, last_event: Option<EventPosition>) {
        if let Some(e) = self.entry(txn) {
            e.end_lsn = end_lsn;
            e.last_event = last_event;
            e.state = State::Pending;
        }
        if let Some(pos) = self.early.iter().position(|t| *t == txn) {
            self.early.swap_remove(pos);
            self.complete(txn);
        }
    }

    /// Every record of `txn` is durable in the sink.
    pub fn complete(&mut self, txn: TxnId) {
        match self.entry(txn) {
            Some(e) if e.state == State::Pending => e.state = State::Done,
            Some(e) if e.state == State::Open => self.early.push(txn),
            _ => {}
        }
        self.advance();
    }

    /// A record of `txn` could not be delivered: the prefix stops before it.
    pub fn fail(&mut self, txn: TxnId) {
        if let Some(e) = self.entry(txn) {
            e.state = State::Failed;
        }
    }

    fn entry(&mut self, txn: TxnId) -> Option<&mut Entry> {
        // Transactions are ordered by id, so a binary search finds the entry.
        let idx = self.queue.binary_search_by_key(&txn, |e| e.txn).ok()?;
        self.queue.get_mut(idx)
    }

    fn advance(&mut self) {
        while let Some(front) = self.queue.front() {
            if front.state != State::Done {
                break;
            }
            self.confirmed = Some(front.end_lsn);
            self.last_event = front.last_event.or(self.last_event);
            self.queue.pop_front();
        }
    }

    /// The end LSN of the newest transaction in the completed prefix, if any.
    pub fn confirmed(&self) -> Option<Lsn> {
        self.confirmed
    }

    /// The last event of the completed prefix, if it had any.
    pub fn last_event(&self) -> Option<EventPosition> {
        self.last_event
    }

    /// Commit time of the oldest transaction not yet confirmed.
    pub fn oldest_pending_commit_time(&self) -> Option<i64> {
        self.queue.front().map(|e| e.commit_time)
    }

    /// Transactions begun and not yet confirmed.
    pub fn in_flight(&self) -> usize {
        self.queue.len()
    }

    /// Whether the oldest unconfirmed transaction is committed and waits only for
    /// the sink — i.e. whether waiting for completions can still move the prefix.
    pub fn awaiting_sink(&self) -> bool {
        self.queue
            .front()
            .is_some_and(|e| e.state == State::Pending)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn lsn(n: u64) -> Lsn {
        Lsn(n * 100)
    }

    #[test]
    fn confirms_only_the_contiguous_prefix() {
        let mut t = AckTracker::new();
        for i in 1..=3 {
            t.begin(TxnId(i), 0);
            t.commit(TxnId(i), lsn(i), None);
        }
        t.complete(TxnId(2));
        assert_eq!(t.confirmed(), None, "1 is still pending");
        t.complete(TxnId(1));
        assert_eq!(t.confirmed(), Some(lsn(2)));
        t.complete(TxnId(3));
        assert_eq!(t.confirmed(), Some(lsn(3)));
        assert_eq!(t.in_flight(), 0);
    }

    #[test]
    fn an_open_transaction_blocks_the_prefix_even_if_its_records_are_acked() {
        let mut t = AckTracker::new();
        t.begin(TxnId(1), 0);
        t.complete(TxnId(1)); // the sink cannot know the transaction is not over
        assert_eq!(t.confirmed(), None);
        t.commit(TxnId(1), lsn(1), None);
        assert_eq!(t.confirmed(), Some(lsn(1)));
    }

    #[test]
    fn a_failed_transaction_blocks_the_prefix_for_good() {
        let mut t = AckTracker::new();
        for i in 1..=3 {
            t.begin(TxnId(i), 0);
            t.commit(TxnId(i), lsn(i), None);
        }
        t.fail(TxnId(2));
        t.complete(TxnId(3));
        assert!(t.awaiting_sink(), "1 may still complete");
        t.complete(TxnId(1));
        assert_eq!(t.confirmed(), Some(lsn(1)));
        assert!(
            !t.awaiting_sink(),
            "2 failed: nothing can move the prefix any more"
        );
        t.complete(TxnId(2));
        assert_eq!(t.confirmed(), Some(lsn(1)));
    }

    proptest! {
        /// Whatever order completions arrive in, the confirmed position is exactly the
        /// end of the longest completed prefix, and it never moves backwards.
        #[test]
        fn any_completion_order_confirms_the_prefix(
            order in Just((1..=40u64).collect::<Vec<_>>()).prop_shuffle(),
            commit_first in any::<bool>(),
        ) {
            let mut t = AckTracker::new();
            for i in 1..=40 {
                t.begin(TxnId(i), 0);
                if commit_first {
                    t.commit(TxnId(i), lsn(i), None);
                }
            }
            if !commit_first {
                for i in 1..=40 {
                    t.commit(TxnId(i), lsn(i), None);
                }
            }
            let mut done = std::collections::BTreeSet::new();
            let mut last = None;
            for txn in order {
                t.complete(TxnId(txn));
                done.insert(txn);
                let prefix = (1..=40).take_while(|i| done.contains(i)).last();
                prop_assert_eq!(t.confirmed(), prefix.map(lsn));
                prop_assert!(t.confirmed() >= last);
                last = t.confirmed();
            }
            prop_assert_eq!(t.confirmed(), Some(lsn(40)));
        }
    }
}

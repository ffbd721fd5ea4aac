//! Exactly-once: when to commit the open Kafka transaction, and the checkpoint that
//! goes into it. A Kafka transaction holds the records of one or more whole or
//! partial PostgreSQL transactions and, last, the checkpoint of its last event, so a
//! `read_committed` consumer sees the events and the record of their delivery
//! together or not at all (docs/architecture.md, "Exactly-once").

use std::time::Duration;

use outboxd_kafka_sink::{Record, RecordMeta, TxnId};
use outboxd_pgoutput::Lsn;
use tokio::time::Instant;

use crate::checkpoint::{Checkpoint, EventPosition};

/// Behind a backlog a Kafka transaction stays open at least this long after its
/// first send (or until `transaction_max_bytes`): latency is lost already, and a
/// commit every `transaction_max_ms` would spend much of the time committing.
const BACKLOG_MIN_AGE: Duration = Duration::from_millis(100);

/// The server sending a transaction this long after its commit means a backlog
/// waits in the slot, even when the reader has taken all that was sent (the
/// server's decoding, not the relay, sets the pace then).
const SLOT_BACKLOG: Duration = Duration::from_secs(1);

/// Behind a backlog in the slot a Kafka transaction stays open at least this long
/// after its first send: fewer, larger commits drain faster (docs/benchmarks.md).
const SLOT_BACKLOG_MIN_AGE: Duration = Duration::from_millis(500);

/// The state of the open Kafka transaction.
#[derive(Debug)]
pub(crate) struct Committer {
    /// The checkpoint of the newest closed transaction: committed, or with its
    /// commit under way (the next commits only after it, or none does).
    closed: Checkpoint,
    /// The checkpoint topic.
    topic: String,
    max_age: Duration,
    max_bytes: usize,
    /// When the open Kafka transaction got its first record, if one is open.
    opened: Option<Opened>,
    bytes: usize,
    /// Event records sent since the last commit.
    records: u64,
    /// PostgreSQL transactions ended since the last commit.
    ended: Vec<TxnId>,
    /// Everything before this is sent: the end LSN of the last ended transaction, or
    /// an idle WAL end.
    confirmed: Lsn,
    /// The last event sent.
    last_event: Option<EventPosition>,
    /// The server sent the latest PostgreSQL transaction [`SLOT_BACKLOG`] or more
    /// after its commit.
    slot_backlog: bool,
}

/// When the open transaction's first record was sent, and when its change arrived
/// from PostgreSQL (earlier when it waited behind the previous commit).
#[derive(Debug, Clone, Copy)]
struct Opened {
    sent: Instant,
    arrived: Instant,
}

/// What a closed transaction's commit makes durable.
#[derive(Debug)]
pub(crate) struct Closed {
    /// The PostgreSQL transactions now complete.
    pub ended: Vec<TxnId>,
    pub confirmed: Lsn,
    pub records: u64,
}

impl Committer {
    pub fn new(committed: Checkpoint, topic: String, max_age: Duration, max_bytes: usize) -> Self {
        Committer {
            confirmed: committed.confirmed_lsn,
            last_event: committed.last_event,
            closed: committed,
            topic,
            max_age,
            max_bytes,
            opened: None,
            bytes: 0,
            records: 0,
            ended: Vec::new(),
            slot_backlog: false,
        }
    }

    /// The server sent a PostgreSQL transaction `lag` after its commit.
    pub fn sender_lag(&mut self, lag: Duration) {
        self.slot_backlog = lag >= SLOT_BACKLOG;
    }

    /// An event record of `bytes` went into the open transaction; its change
    /// arrived at `received_at`.
    pub fn sent(&mut self, bytes: usize, event: EventPosition, received_at: Instant) {
        self.opened.get_or_insert_with(|| Opened {
            sent: Instant::now(),
            arrived: received_at,
        });
        self.bytes += bytes;
        self.records += 1;
        self.last_event = Some(event);
    }

    /// A PostgreSQL transaction ended at `end_lsn`; all its records were sent.
    pub fn ended(&mut self, txn: TxnId, end_lsn: Lsn) {
        self.ended.push(txn);
        self.confirmed = self.confirmed.max(end_lsn);
    }

    /// Nothing is in flight and the server's WAL end is `wal_end`: record it too.
    pub fn idle(&mut self, wal_end: Lsn) {
        self.confirmed = self.confirmed.max(wal_end);
    }

    /// When the open transaction must be committed; `None` while there is nothing
    /// to commit. `more_received`: changes that arrived already wait to be sent.
    ///
    /// The age limit counts from the first record's arrival, so that records that
    /// waited behind the previous commit do not wait a whole transaction more; but
    /// only once the transaction has taken what had arrived. Otherwise, behind a
    /// backlog, every record would be due at once, one commit each; there it counts
    /// from the first send, and is at least [`BACKLOG_MIN_AGE`], or
    /// [`SLOT_BACKLOG_MIN_AGE`] while the backlog is in the slot (the reader's queue
    /// then empties and fills by turns, and would end transactions early).
    pub fn due(&self, more_received: bool) -> Option<Instant> {
        match self.opened {
            Some(_) if self.bytes >= self.max_bytes => Some(Instant::now()),
            Some(opened) if self.slot_backlog => {
                Some(opened.sent + self.max_age.max(SLOT_BACKLOG_MIN_AGE))
            }
            Some(opened) if more_received => Some(opened.sent + self.max_age.max(BACKLOG_MIN_AGE)),
            Some(opened) => Some(opened.arrived + self.max_age),
            // Only a position to record (an idle WAL end, or transactions without
            // events): a commit with just the checkpoint.
            None if self.confirmed > self.closed.confirmed_lsn => Some(Instant::now()),
            None => None,
        }
    }

    /// Whether records or a position wait to be committed.
    pub fn pending(&self) -> bool {
        self.opened.is_some() || self.confirmed > self.closed.confirmed_lsn
    }

    /// The checkpoint record that closes the open transaction.
    pub fn checkpoint_record(&self) -> (Checkpoint, Record) {
        let checkpoint = self.closed.advanced(self.confirmed, self.last_event);
        let record = record_of(&self.topic, &checkpoint);
        (checkpoint, record)
    }

    /// The transaction with `checkpoint` is closed: its commit began, and what is
    /// sent from now on goes into the next one.
    pub fn closed(&mut self, checkpoint: Checkpoint) -> Closed {
        self.closed = checkpoint;
        self.opened = None;
        self.bytes = 0;
        Closed {
            ended: std::mem::take(&mut self.ended),
            confirmed: self.closed.confirmed_lsn,
            records: std::mem::take(&mut self.records),
        }
    }
}

/// `checkpoint` as a record of the checkpoint topic `topic`.
fn record_of(topic: &str, checkpoint: &Checkpoint) -> Record {
    Record {
        topic: topic.to_owned(),
        key: Some(checkpoint.identity().key().into_bytes().into()),
        value: Some(checkpoint.to_json().into()),
        meta: RecordMeta {
            event_id: "checkpoint".to_owned(),
            lsn: checkpoint.confirmed_lsn.0,
            index: 0,
        },
        ..Record::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::tests::checkpoint;

    fn committer() -> Committer {
        Committer::new(
            checkpoint(0x100, None),
            "cp".to_owned(),
            Duration::from_millis(20),
            1_000,
        )
    }

    fn at(lsn: u64, index: u32) -> EventPosition {
        EventPosition {
            commit_lsn: Lsn(lsn),
            index,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn commits_by_age_or_size_and_records_a_partial_transaction() {
        let mut c = committer();
        assert_eq!(c.due(false), None, "nothing to commit");
        c.sent(100, at(0x200, 0), Instant::now());
        let due = c.due(false).expect("a transaction is open");
        assert_eq!(due, Instant::now() + Duration::from_millis(20));
        c.sent(900, at(0x200, 1), Instant::now());
        assert_eq!(c.due(false), Some(Instant::now()), "big enough: at once");
        // The PostgreSQL transaction is not over: the checkpoint keeps the last end
        // LSN and names the last event inside it.
        let (cp, record) = c.checkpoint_record();
        assert_eq!(cp.confirmed_lsn, Lsn(0x100));
        assert_eq!(cp.last_event, Some(at(0x200, 1)));
        assert_eq!(record.topic, "cp");
        let done = c.closed(cp);
        assert!(done.ended.is_empty());
        assert_eq!(done.records, 2);
        assert_eq!(c.due(false), None);
    }

    #[tokio::test(start_paused = true)]
    async fn the_age_limit_counts_from_the_first_record_s_arrival() {
        let mut c = committer();
        let arrived = Instant::now();
        // The record waited 15 ms (behind the previous commit) before its send.
        tokio::time::advance(Duration::from_millis(15)).await;
        c.sent(10, at(0x200, 0), arrived);
        assert_eq!(c.due(false), Some(arrived + Duration::from_millis(20)));
        tokio::time::advance(Duration::from_millis(1)).await;
        c.sent(10, at(0x200, 1), Instant::now());
        assert_eq!(
            c.due(false),
            Some(arrived + Duration::from_millis(20)),
            "later records do not move the deadline"
        );
        assert_eq!(
            c.due(true),
            Some(arrived + Duration::from_millis(15) + BACKLOG_MIN_AGE),
            "behind a backlog, the limit counts from the first send and is longer"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_backlog_in_the_slot_keeps_transactions_open_even_when_nothing_waits() {
        let mut c = committer();
        c.sender_lag(Duration::from_millis(1_500));
        let sent = Instant::now();
        c.sent(10, at(0x200, 0), sent);
        assert_eq!(c.due(false), Some(sent + SLOT_BACKLOG_MIN_AGE));
        assert_eq!(c.due(true), Some(sent + SLOT_BACKLOG_MIN_AGE));
        c.sent(990, at(0x200, 1), sent);
        assert_eq!(
            c.due(false),
            Some(Instant::now()),
            "the size limit still holds"
        );
        let (cp, _) = c.checkpoint_record();
        c.closed(cp);
        c.sender_lag(Duration::from_millis(5));
        c.sent(10, at(0x300, 0), sent);
        assert_eq!(
            c.due(false),
            Some(sent + Duration::from_millis(20)),
            "caught up: the age limit again"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn ended_transactions_and_idle_wal_ends_are_committed_with_the_checkpoint() {
        let mut c = committer();
        c.sent(10, at(0x200, 0), Instant::now());
        c.ended(TxnId(7), Lsn(0x208));
        c.idle(Lsn(0x150));
        let (cp, _) = c.checkpoint_record();
        assert_eq!(cp.confirmed_lsn, Lsn(0x208));
        let done = c.closed(cp);
        assert_eq!(done.ended, [TxnId(7)]);
        assert_eq!(done.confirmed, Lsn(0x208));
        c.idle(Lsn(0x900));
        assert_eq!(
            c.due(false),
            Some(Instant::now()),
            "a checkpoint-only commit"
        );
        let (cp, _) = c.checkpoint_record();
        assert_eq!(
            (cp.confirmed_lsn, cp.last_event),
            (Lsn(0x900), Some(at(0x200, 0)))
        );
    }
}

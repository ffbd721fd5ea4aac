//! The operator of docs/operations.md, "The checkpoint topic is held by an open
//! transaction", for tests whose single broker stops cleanly: Kafka then skips the
//! markers of a transaction whose partitions have no leader at that moment
//! (docs/architecture.md, "Lost commit markers"), and the transaction hangs. The operator aborts it with Kafka's own
//! tool once the relay reports it stuck; outboxd must then resend its events, with
//! nothing lost or doubled.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::dedicated::kafka_tool;

/// What a relay logs once a hanging transaction holds it up: a starting relay
/// that cannot read its checkpoint, and a running one whose commit stays invisible
/// (docs/operations.md, "The checkpoint topic is held by an open transaction").
const REPORTS: [&str; 2] = [
    "has a Kafka transaction open that was not settled",
    "a committed Kafka transaction's checkpoint is still not visible",
];

/// How often the relay's log is looked at.
const WATCH_EVERY: Duration = Duration::from_secs(2);

/// Watches a relay's log and aborts hanging transactions whenever the relay reports
/// one anew. Stopped by [`finish`](Self::finish).
pub struct HangingTransactionOperator {
    stop: Arc<AtomicBool>,
    aborted: Arc<AtomicUsize>,
    thread: Option<JoinHandle<()>>,
}

impl HangingTransactionOperator {
    /// Starts watching `relay_log`; aborts on the broker at `brokers`.
    pub fn start(brokers: String, relay_log: PathBuf) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let aborted = Arc::new(AtomicUsize::new(0));
        let thread = {
            let (stop, aborted) = (Arc::clone(&stop), Arc::clone(&aborted));
            std::thread::spawn(move || {
                let mut watch = StuckRelayWatch::default();
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(WATCH_EVERY);
                    aborted.fetch_add(watch.check(&relay_log, &brokers), Ordering::Relaxed);
                }
            })
        };
        HangingTransactionOperator {
            stop,
            aborted,
            thread: Some(thread),
        }
    }

    /// Stops watching; returns how many transactions were aborted.
    pub fn finish(mut self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        self.aborted.load(Ordering::Relaxed)
    }
}

/// Remembers how often each relay log reported the relay stuck.
#[derive(Debug, Default)]
pub struct StuckRelayWatch {
    reports_seen: HashMap<PathBuf, usize>,
}

impl StuckRelayWatch {
    /// Aborts the hanging transactions when `relay_log` reports the relay stuck
    /// anew; returns how many it aborted. Blocking.
    pub fn check(&mut self, relay_log: &Path, brokers: &str) -> usize {
        let log = std::fs::read_to_string(relay_log).unwrap_or_default();
        let reports = hang_reports(&log);
        let seen = self.reports_seen.entry(relay_log.to_owned()).or_default();
        if reports <= *seen {
            return 0;
        }
        *seen = reports;
        abort_hanging_transactions(brokers)
    }
}

/// How often `relay_log` reports a hanging transaction holding the relay up.
pub fn hang_reports(relay_log: &str) -> usize {
    REPORTS.iter().map(|r| relay_log.matches(r).count()).sum()
}

/// The transactions the coordinator no longer expects markers for
/// (`kafka-transactions.sh find-hanging` on the single broker): its output, a
/// header line and one row per partition. Blocking.
pub fn find_hanging_transactions(brokers: &str) -> String {
    transactions_tool(
        brokers,
        &[
            "find-hanging",
            "--broker-id",
            "1",
            "--max-transaction-timeout",
            "0",
        ],
    )
    .unwrap_or_else(|stderr| panic!("kafka-transactions find-hanging failed: {stderr}"))
}

/// Aborts each hanging transaction (`find-hanging`, then `abort`); returns how
/// many. Only what two listings [`RECHECK_AFTER`] apart both show: right after a
/// broker's restart, `find-hanging` also lists transactions whose markers its
/// coordinator is still about to write (docs/operations.md).
pub fn abort_hanging_transactions(brokers: &str) -> usize {
    let first = find_hanging_transactions(brokers);
    if hanging_rows(&first).is_empty() {
        return 0;
    }
    std::thread::sleep(RECHECK_AFTER);
    let found = find_hanging_transactions(brokers);
    let listed_before: HashSet<_> = hanging_rows(&first).into_iter().map(transaction).collect();
    let mut aborted = 0;
    // Columns: Topic Partition ProducerId ProducerEpoch CoordinatorEpoch StartOffset …
    for row in abort_order(&found) {
        if !listed_before.contains(&transaction(row)) {
            println!("listed once only, left alone: {row}");
            continue;
        }
        let cols: Vec<&str> = row.split_whitespace().collect();
        let [topic, partition, _, _, _, start_offset, ..] = cols[..] else {
            continue;
        };
        println!("aborting a hanging transaction: {row}");
        let abort = transactions_tool(
            brokers,
            &[
                "abort",
                "--topic",
                topic,
                "--partition",
                partition,
                "--start-offset",
                start_offset,
            ],
        );
        match abort {
            Ok(_) => aborted += 1,
            // Settled between `find-hanging` and `abort` (most likely the relay's
            // new producer registration aborted it): nothing to do. If it still
            // hung, the relay would report it again and the watch would come back.
            Err(stderr) if stderr.contains(SETTLED_MEANWHILE) => {
                println!("settled meanwhile: {topic}-{partition} at {start_offset}");
            }
            Err(stderr) => panic!("kafka-transactions abort failed: {stderr}"),
        }
    }
    aborted
}

/// How long after a first `find-hanging` the second one runs. Transactions it
/// listed right after a broker's restart had their markers within 3 s in the runs
/// of 2026-12-03 (`crates/outboxd/tests/hanging.rs`).
const RECHECK_AFTER: Duration = Duration::from_secs(5);

/// A `find-hanging` row's transaction on its partition: topic, partition, producer
/// id and start offset.
fn transaction(row: &str) -> Vec<&str> {
    let cols: Vec<&str> = row.split_whitespace().collect();
    [0, 1, 2, 5]
        .iter()
        .filter_map(|&i| cols.get(i).copied())
        .collect()
}

/// `find-hanging`'s rows in the order to abort them: the checkpoint topic's
/// partition last, as docs/operations.md says. The relay resumes once that one
/// settles, and its next commit would also commit hanging records still left on an
/// outbox partition.
fn abort_order(found: &str) -> Vec<&str> {
    let mut rows = hanging_rows(found);
    rows.sort_by_key(|row| row.split_whitespace().next() == Some(CHECKPOINT_TOPIC));
    rows
}

/// `find-hanging`'s rows, one per partition a transaction hangs on.
pub fn hanging_rows(found: &str) -> Vec<&str> {
    found
        .lines()
        .skip(1)
        .filter(|row| !row.trim().is_empty())
        .collect()
}

/// The checkpoint topic of the tests that meet hanging transactions (outboxd's
/// default).
const CHECKPOINT_TOPIC: &str = "outboxd.checkpoints";

/// What `kafka-transactions.sh abort` says when the transaction is no longer open.
const SETTLED_MEANWHILE: &str = "Could not find any open transactions starting at offset";

/// Runs Kafka's `TransactionsCommand` (what `kafka-transactions.sh` runs).
fn transactions_tool(brokers: &str, args: &[&str]) -> Result<String, String> {
    kafka_tool("org.apache.kafka.tools.TransactionsCommand", brokers, args)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_checkpoint_partition_is_aborted_last() {
        let found = "Topic Partition ProducerId ProducerEpoch CoordinatorEpoch StartOffset\n\
                     t.order 0 2 0 0 1582\n\
                     outboxd.checkpoints 0 2 0 0 169\n\
                     t.order 2 2 0 0 1545\n";
        let topics: Vec<&str> = abort_order(found)
            .iter()
            .map(|row| row.split_whitespace().next().unwrap_or_default())
            .collect();
        assert_eq!(topics, ["t.order", "t.order", "outboxd.checkpoints"]);
    }
}

//! A Kafka commit whose markers were lost: the single broker stops cleanly while
//! outboxd commits, Kafka skips the markers of partitions that have no leader at that
//! moment (docs/architecture.md, "Lost commit markers"), and the transaction hangs
//! on the outbox and checkpoint partitions. The operator of docs/operations.md
//! aborts it, the checkpoint partition last, and an independent `read_committed`
//! consumer must see every committed event once, in per-key order.
//!
//! Whether a clean stop meets a commit in that window is timing: the test restarts
//! the broker until a transaction hangs, at most `OUTBOXD_HANG_RESTARTS` times, and
//! fails if none did. Hangs are rare (docs/reliability.md, "Known gaps"), so it is
//! not in CI: `cargo test -p outboxd --test hanging -- --ignored --nocapture`.

#![allow(clippy::unwrap_used, reason = "in tests an unwrap is an assertion")]

use std::time::{Duration, Instant};

use outboxd_tests::faults::outbox_on_dedicated_kafka;
use outboxd_tests::hanging::{
    find_hanging_transactions, hang_reports, hanging_rows, HangingTransactionOperator,
};
use outboxd_tests::{env_or, seed, tail, DedicatedKafka, Load, LoadSpec, Process};
use tokio::task::block_in_place;

const OUTBOXD: &str = env!("CARGO_BIN_EXE_outboxd");

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs a hanging transaction, which clean broker restarts rarely make"]
async fn a_hanging_commit_aborted_checkpoint_last_loses_and_doubles_nothing() {
    let seed = seed("hanging_commit");
    let max_restarts = env_or("OUTBOXD_HANG_RESTARTS", 12);
    let (kafka, _db, mut outbox) = outbox_on_dedicated_kafka(OUTBOXD, "hanging").await;
    outbox.set_env("OUTBOXD_KAFKA__DELIVERY", "exactly-once");
    // Commits back to back, so that more of them meet a broker's stop.
    outbox.set_env("OUTBOXD_KAFKA__TRANSACTION_OVERLAP", "true");
    let started = Instant::now();
    let load = Load::start(&outbox.endpoints.pg_url, LoadSpec::steady(seed, 50.0));
    let mut relay = outbox.start("hanging");
    let mut restarts = 0;
    let mut relay_exits = 0;
    let mut settled_by_themselves = 0;
    let mut found = String::new();
    while restarts < max_restarts {
        tokio::time::sleep(Duration::from_secs(2)).await;
        block_in_place(|| kafka.restart());
        restarts += 1;
        relay_exits += usize::from(outbox.restart_if_exited(
            &mut relay,
            Duration::from_secs(3),
            &"a clean broker restart",
        ));
        found = block_in_place(|| find_hanging_transactions(&kafka.brokers()));
        if hanging_rows(&found).is_empty() {
            continue;
        }
        // Right after a restart the coordinator may still be sending the markers:
        // a hang is one that stays listed until the relay reports it (once its
        // commit has been unseen for 10 s).
        if stays_hanging_until_reported(&kafka, &relay).await {
            break;
        }
        println!("listed, but settled by itself:\n{found}");
        settled_by_themselves += 1;
        found.clear();
    }
    let load = load.stop().await;
    let hanging = hanging_rows(&found).len();
    println!(
        "clean broker restarts: {restarts}; listed but settled by themselves: {settled_by_themselves}; \
         partitions the reported transaction hung on: {hanging}; relay exits: {relay_exits}\n{found}"
    );
    let operator = HangingTransactionOperator::start(kafka.brokers(), relay.log.clone());
    let (report, events) = outbox.check(Duration::from_secs(180)).await;
    let aborted = operator.finish();
    println!(
        "hanging commit: {events} events committed, {} delivered, {} duplicates, {} missing, \
         {} out of order; hanging transactions aborted: {aborted}; {} s; writer txns {}",
        report.delivered,
        report.duplicates,
        report.missing,
        report.order_violations,
        started.elapsed().as_secs(),
        load.committed_txns
            .load(std::sync::atomic::Ordering::Relaxed)
    );
    let log = tail(&relay.log_text());
    report.assert_complete(events, &log);
    assert_eq!(report.duplicates, 0, "duplicates\n{log}");
    assert!(
        hanging > 0,
        "none of {restarts} clean broker restarts left a transaction hanging: \
         the scenario did not happen (raise OUTBOXD_HANG_RESTARTS)"
    );
    assert!(aborted > 0, "the relay never reported the hang\n{log}");
    relay.stop_cleanly();
}

/// Whether the hanging transactions stay listed until the relay reports one.
async fn stays_hanging_until_reported(kafka: &DedicatedKafka, relay: &Process) -> bool {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(3)).await;
        if hang_reports(&relay.log_text()) > 0 {
            return true;
        }
        let found = block_in_place(|| find_hanging_transactions(&kafka.brokers()));
        if hanging_rows(&found).is_empty() {
            return false;
        }
    }
    false
}

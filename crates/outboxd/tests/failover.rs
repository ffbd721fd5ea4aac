//! PostgreSQL failover under load: the primary crashes (`-m immediate`) and its
//! physical standby is promoted. With the slot synchronized (PostgreSQL 17+
//! failover slots) outboxd follows through its multi-host URL and loses nothing;
//! without it, outboxd refuses with the gap instead of making a new slot.
//!
//! These need the pinned PostgreSQL builds (scripts/pg-versions.sh), so they are
//! ignored in a plain `cargo test`; scripts/test-pg-versions.sh runs them.

#![allow(clippy::unwrap_used, reason = "in tests an unwrap is an assertion")]

use std::time::Duration;

use outboxd_tests::{
    assert_no_holes, services, tail, unique_name, DedicatedPg, Endpoints, Load, LoadSpec, Outbox,
    TestTopics, AGGREGATE_TYPE,
};
use tokio::task::block_in_place;

const OUTBOXD: &str = env!("CARGO_BIN_EXE_outboxd");

/// A primary and its standby, an outbox on the primary whose relay and writers
/// reach whichever of the two is the primary.
struct Pair {
    primary: DedicatedPg,
    standby: DedicatedPg,
    outbox: Outbox,
    _topics: TestTopics,
}

async fn pair(major: u32, failover_slot: bool) -> Pair {
    let primary = block_in_place(|| DedicatedPg::start_major(major));
    let standby = block_in_place(|| primary.standby());
    let prefix = unique_name("failover");
    let topics = TestTopics::create_named(&[format!("{prefix}.{AGGREGATE_TYPE}")], 3).await;
    let brokers = services().kafka_brokers.clone();
    let failover = failover_slot.to_string();
    let mut outbox = Outbox::on(
        OUTBOXD,
        Endpoints {
            pg_url: primary.url(),
            relay_pg: ("127.0.0.1".to_owned(), primary.port),
            relay_brokers: brokers.clone(),
            checker_brokers: brokers,
        },
        &prefix,
        &[("OUTBOXD_POSTGRES__FAILOVER_SLOT", failover.as_str())],
    )
    .await;
    let both = format!(
        "postgres://postgres@127.0.0.1:{},127.0.0.1:{}/postgres?target_session_attrs=read-write&sslmode=disable&connect_timeout=2",
        primary.port, standby.port
    );
    outbox.set_env("OUTBOXD_POSTGRES__URL", &both);
    outbox.endpoints.pg_url = both;
    Pair {
        primary,
        standby,
        outbox,
        _topics: topics,
    }
}

fn writers(outbox: &Outbox) -> Load {
    Load::start(
        &outbox.endpoints.pg_url,
        LoadSpec {
            writers: 4,
            aggregates: 50,
            per_txn: 3,
            seed: 5,
            events_per_writer: None,
            txn_rate: Some(40.0),
        },
    )
}

fn major() -> u32 {
    std::env::var("OUTBOXD_TEST_PG_MAJOR")
        .ok()
        .and_then(|m| m.parse().ok())
        .unwrap_or(17)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs the pinned PostgreSQL builds; scripts/test-pg-versions.sh runs it"]
async fn a_failover_to_the_standby_with_the_synchronized_slot_loses_nothing() {
    let p = pair(major(), true).await;
    let load = writers(&p.outbox);
    let mut relay = p.outbox.start("failover");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let confirmed = p.outbox.confirmed_flush().await.unwrap().to_string();
    let synced = p
        .standby
        .wait_slot_synced(
            &p.primary,
            &p.outbox.slot,
            &confirmed,
            Duration::from_secs(90),
        )
        .await;
    println!("slot synchronized and persistent on the standby after {synced:?}");
    let checked = p.outbox.command(&["check"]);
    let shown = String::from_utf8_lossy(&checked.stdout);
    assert!(
        shown.contains("synchronized to standbys") && shown.contains("synchronized, persistent"),
        "check reports the standby's copy:\n{shown}"
    );
    block_in_place(|| p.primary.crash());
    block_in_place(|| p.standby.promote());
    // Writers and relay carry on against the promoted standby.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let load = load.stop().await;
    let (report, expected) = p.outbox.check(Duration::from_secs(120)).await;
    let log = relay.log_text();
    println!(
        "failover: {expected} events committed ({} transactions given up by writers), {} \
         delivered, {} duplicates, {} missing",
        load.failed_txns.load(std::sync::atomic::Ordering::Relaxed),
        report.delivered,
        report.duplicates,
        report.missing
    );
    report.assert_complete(expected, &tail(&log));
    assert!(
        log.contains("timeline=2"),
        "resumed on the new timeline:\n{}",
        tail(&log)
    );
    relay.stop_cleanly();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs the pinned PostgreSQL builds; scripts/test-pg-versions.sh runs it"]
async fn a_failover_to_a_standby_without_the_slot_is_refused() {
    let p = pair(major(), false).await;
    let load = writers(&p.outbox);
    let mut relay = p.outbox.start("no-slot");
    tokio::time::sleep(Duration::from_secs(3)).await;
    block_in_place(|| p.primary.crash());
    block_in_place(|| p.standby.promote());
    let status = relay
        .wait_timeout(Duration::from_secs(60))
        .unwrap_or_else(|| panic!("the relay kept running:\n{}", tail(&relay.log_text())));
    let log = relay.log_text();
    assert!(!status.success(), "{}", tail(&log));
    assert!(
        log.contains("disappeared while outboxd was relaying from it"),
        "{}",
        tail(&log)
    );
    assert!(!log.contains("replication slot created"), "{}", tail(&log));
    load.stop().await;
    // What was delivered before has no hole.
    let records = p
        .outbox
        .read_events(usize::MAX, Duration::from_secs(8))
        .await;
    assert!(assert_no_holes(&records, &tail(&log)) > 0);
}

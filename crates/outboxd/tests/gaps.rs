//! No silent gap: every way the record of what was delivered can disagree with the
//! slot or the server makes the relay stop non-zero, naming the range, and nothing
//! delivered before the stop is missing. Real PostgreSQL, real Kafka, the binary.

#![allow(clippy::unwrap_used, reason = "in tests an unwrap is an assertion")]

use std::time::Duration;

use outboxd_tests::{
    assert_no_holes, delete_topics, pg_connect, produce_one, seed, tail, unique_name,
    ConsumedRecord, DedicatedPg, Endpoints, Load, LoadSpec, Outbox, Process,
};

const OUTBOXD: &str = env!("CARGO_BIN_EXE_outboxd");

fn load(outbox: &Outbox, events_per_writer: usize, seed: u64) -> Load {
    Load::start(
        &outbox.endpoints.pg_url,
        LoadSpec {
            writers: 4,
            aggregates: 100,
            per_txn: 5,
            seed,
            events_per_writer: Some(events_per_writer),
            txn_rate: Some(100.0),
        },
    )
}

/// Waits for the relay to exit; it must, non-zero.
fn exits_non_zero(relay: &mut Process, what: &str) -> String {
    let status = relay
        .wait_timeout(Duration::from_secs(60))
        .unwrap_or_else(|| {
            panic!(
                "{what}: the relay kept running:\n{}",
                tail(&relay.log_text())
            )
        });
    let log = relay.log_text();
    assert!(!status.success(), "{what}: exited 0:\n{}", tail(&log));
    log
}

/// Terminates the slot's walsender and drops the slot before the relay reconnects
/// (what a failover to a server without the slot looks like, too).
async fn drop_slot(outbox: &Outbox) {
    let c = outbox.connect().await;
    for _ in 0..200 {
        c.execute(
            "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots \
             WHERE slot_name = $1 AND active_pid IS NOT NULL",
            &[&outbox.slot],
        )
        .await
        .unwrap();
        if c.execute("SELECT pg_drop_replication_slot($1)", &[&outbox.slot])
            .await
            .is_ok()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("could not drop slot {}", outbox.slot);
}

/// Everything in the topic now (the relay has stopped).
async fn delivered(outbox: &Outbox) -> Vec<ConsumedRecord> {
    outbox.read_events(usize::MAX, Duration::from_secs(8)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slot_dropped_under_load_stops_the_relay_and_is_never_recreated_silently() {
    for create_slot in ["true", "false"] {
        let outbox = Outbox::on_shared(
            OUTBOXD,
            None,
            &[("OUTBOXD_POSTGRES__CREATE_SLOT", create_slot)],
        )
        .await;
        let writers = load(&outbox, 2_000, seed("slot-drop"));
        let mut relay = outbox.start("drop");
        tokio::time::sleep(Duration::from_millis(2_500)).await;
        drop_slot(&outbox).await;
        let log = exits_non_zero(&mut relay, "slot dropped mid-run");
        assert!(
            log.contains("disappeared while outboxd was relaying from it"),
            "create_slot={create_slot}:\n{}",
            tail(&log)
        );
        assert!(log.contains("may be missing from Kafka"), "{}", tail(&log));
        assert!(!log.contains("replication slot created"), "{}", tail(&log));
        writers.stop().await;
        let seen = assert_no_holes(&delivered(&outbox).await, &tail(&log));
        assert!(seen > 0, "events were relayed before the drop");

        // A restart refuses too, naming the range, and creates nothing.
        let mut again = outbox.start("after-drop");
        let log = exits_non_zero(&mut again, "restart without the slot");
        assert!(
            log.contains("does not exist, but the checkpoint says"),
            "{}",
            tail(&log)
        );
        assert!(log.contains("--accept-gap"), "{}", tail(&log));
        assert!(outbox.confirmed_flush().await.is_none(), "no slot was made");
        println!("create_slot={create_slot}: {seen} events delivered before the drop, all without a hole");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn accept_gap_goes_on_from_a_new_slot_and_logs_the_range() {
    let outbox = Outbox::on_shared(OUTBOXD, None, &[]).await;
    let writers = load(&outbox, 500, 11);
    let mut relay = outbox.start("before");
    writers.finish().await;
    let (report, expected) = outbox.check(Duration::from_secs(60)).await;
    report.assert_complete(expected, &tail(&relay.log_text()));
    relay.stop_cleanly();
    drop_slot(&outbox).await;

    let mut accepted = outbox.start_with(&["run", "--accept-gap"], "accept");
    let c = outbox.connect().await;
    // Events after the new slot exists are relayed again.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while outbox.confirmed_flush().await.is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "{}",
            accepted.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let writers = load(&outbox, 100, 12);
    writers.finish().await;
    let (report, expected) = outbox.check(Duration::from_secs(60)).await;
    report.assert_complete(expected, &tail(&accepted.log_text()));
    let log = accepted.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("accepting a possible gap"))
        .unwrap_or_else(|| panic!("no ERROR line for the accepted gap:\n{}", tail(&log)));
    assert!(line.contains("ERROR"), "{line}");
    assert!(line.contains("range=after "), "{line}");
    accepted.stop_cleanly();
    drop(c);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_advanced_by_another_client_is_refused() {
    let outbox = Outbox::on_shared(OUTBOXD, None, &[]).await;
    let mut relay = outbox.start("first");
    load(&outbox, 50, 21).finish().await;
    outbox.check(Duration::from_secs(60)).await;
    relay.stop_cleanly();
    // Events nobody relays, then the slot moved past them.
    load(&outbox, 50, 22).finish().await;
    let c = outbox.connect().await;
    c.execute(
        "SELECT pg_replication_slot_advance($1, pg_current_wal_lsn())",
        &[&outbox.slot],
    )
    .await
    .unwrap();
    let mut again = outbox.start("advanced");
    let log = exits_non_zero(&mut again, "slot advanced");
    assert!(log.contains("beyond the checkpoint at"), "{}", tail(&log));
    assert!(
        log.contains("up to "),
        "the range has an end: {}",
        tail(&log)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_checkpoint_topic_is_refused() {
    let mut outbox = Outbox::on_shared(OUTBOXD, None, &[]).await;
    let topic = unique_name("outboxd.checkpoints");
    outbox.set_env("OUTBOXD_KAFKA__CHECKPOINT_TOPIC", &topic);
    outbox.init_apply();
    let mut relay = outbox.start("first");
    load(&outbox, 50, 31).finish().await;
    outbox.check(Duration::from_secs(60)).await;
    relay.stop_cleanly();
    delete_topics(&[topic.as_str()]).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut again = outbox.start("no-topic");
    let log = exits_non_zero(&mut again, "checkpoint topic deleted");
    assert!(
        log.contains("the checkpoint topic does not exist, but replication slot"),
        "{}",
        tail(&log)
    );
}

/// Something else wrote this relay's checkpoint key: a refusal saying so; with
/// `--accept-gap` the relay goes on from the slot and records a checkpoint of its own
/// over it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_checkpoint_is_refused_until_accepted() {
    let mut outbox = Outbox::on_shared(OUTBOXD, None, &[]).await;
    let topic = unique_name("outboxd.checkpoints");
    outbox.set_env("OUTBOXD_KAFKA__CHECKPOINT_TOPIC", &topic);
    outbox.init_apply();
    let mut relay = outbox.start("first");
    load(&outbox, 20, 51).finish().await;
    outbox.check(Duration::from_secs(60)).await;
    relay.stop_cleanly();
    let row = outbox
        .connect()
        .await
        .query_one(
            "SELECT system_identifier::text, current_database()::text FROM pg_control_system()",
            &[],
        )
        .await
        .unwrap();
    let key = format!(
        "{}/{}/{}",
        row.get::<_, String>(0),
        row.get::<_, String>(1),
        outbox.slot
    );
    produce_one(&topic, key.as_bytes(), b"not json").await;

    let mut refused = outbox.start("unreadable");
    let log = exits_non_zero(&mut refused, "unreadable checkpoint");
    assert!(
        log.contains(&format!(
            "the checkpoint under key '{key}' is not an outboxd checkpoint"
        )) && log.contains("Refusal: the checkpoint cannot be read"),
        "{}",
        tail(&log)
    );

    let mut accepted = outbox.start_with(&["run", "--accept-gap"], "accepted");
    load(&outbox, 20, 52).finish().await;
    let (report, expected) = outbox.check(Duration::from_secs(60)).await;
    report.assert_complete(expected, &tail(&accepted.log_text()));
    accepted.stop_cleanly();
    let mut again = outbox.start("after");
    load(&outbox, 5, 53).finish().await;
    let (report, expected) = outbox.check(Duration::from_secs(60)).await;
    report.assert_complete(expected, &tail(&again.log_text()));
    again.stop_cleanly();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_clusters_server_with_the_same_database_and_slot_is_refused() {
    let outbox = Outbox::on_shared(OUTBOXD, None, &[]).await;
    let mut relay = outbox.start("cluster-a");
    load(&outbox, 20, 41).finish().await;
    outbox.check(Duration::from_secs(60)).await;
    relay.stop_cleanly();

    // Another cluster (another system identifier) with the same database name.
    let other = DedicatedPg::start();
    let dbname = outbox
        .endpoints
        .pg_url
        .rsplit('/')
        .next()
        .unwrap()
        .split('?')
        .next()
        .unwrap()
        .to_owned();
    pg_connect(&other.url())
        .await
        .batch_execute(&format!("CREATE DATABASE \"{dbname}\""))
        .await
        .unwrap();
    let url = format!("postgres://postgres@127.0.0.1:{}/{dbname}", other.port);
    let mut b = Outbox::on(
        OUTBOXD,
        Endpoints {
            pg_url: url,
            relay_pg: ("127.0.0.1".to_owned(), other.port),
            relay_brokers: outbox.endpoints.relay_brokers.clone(),
            checker_brokers: outbox.endpoints.checker_brokers.clone(),
        },
        &unique_name("outbox"),
        &[],
    )
    .await;
    b.set_env("OUTBOXD_POSTGRES__SLOT", &outbox.slot);
    b.init_apply();
    let mut relay_b = b.start("cluster-b");
    let log = exits_non_zero(&mut relay_b, "another cluster");
    assert!(
        log.contains("was written on PostgreSQL system"),
        "{}",
        tail(&log)
    );
}

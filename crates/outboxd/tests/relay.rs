//! End-to-end: the `outboxd` binary between the real PostgreSQL and the real Kafka,
//! checked by an independent consumer.

#![allow(clippy::unwrap_used, reason = "in tests an unwrap is an assertion")]

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::Duration;

use outboxd_pgoutput::Lsn;
use outboxd_tests::{
    consume_until, free_port, http_get, seed, tail, unique_name, DeliveryReport, Load, LoadSpec,
    Outbox, TestTopics,
};
use rand::{Rng, SeedableRng};

const OUTBOXD: &str = env!("CARGO_BIN_EXE_outboxd");

/// Starts `writers` concurrent writers of `per_writer` events each, in transactions
/// of `per_txn` over `aggregates` aggregates (see [`Load`]).
fn writers(
    outbox: &Outbox,
    writers: usize,
    per_writer: usize,
    aggregates: usize,
    per_txn: usize,
    seed: u64,
) -> Load {
    Load::start(
        &outbox.endpoints.pg_url,
        LoadSpec {
            writers,
            aggregates,
            per_txn,
            seed,
            events_per_writer: Some(per_writer),
            txn_rate: None,
        },
    )
}

/// Waits for the writers. Nothing here breaks the database, so a transaction that
/// failed (and was given up by [`Load`]) fails the test.
async fn all_written(load: Load) {
    let load = load.finish().await;
    assert_eq!(load.failed_txns.load(Ordering::Relaxed), 0, "failed writes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn relays_100k_events_from_8_writers_in_per_key_commit_order() {
    let outbox = Outbox::on_shared(OUTBOXD, None, &[]).await;
    let mut relay = outbox.start("e2e");
    let started = std::time::Instant::now();
    all_written(writers(&outbox, 8, 12_500, 1_000, 10, 1)).await;
    let written = started.elapsed();
    let records = outbox.read_events(100_000, Duration::from_secs(240)).await;
    let report = DeliveryReport::check(&records, &outbox.committed().await);
    println!(
        "100k events: written in {written:?}, all read back {:?} after the writers started; \
         {} duplicates",
        started.elapsed(),
        report.duplicates
    );
    report.assert_complete(100_000, &tail(&relay.log_text()));
    assert_eq!(report.duplicates, 0, "no crash, so no duplicates");
    // Every record has the Debezium id header, and the idempotency key is unique.
    let keys: HashSet<(Option<String>, Option<String>)> = records
        .iter()
        .map(|r| (r.header("outboxd.lsn"), r.header("outboxd.index")))
        .collect();
    assert_eq!(
        keys.len(),
        records.len(),
        "outboxd.lsn + outboxd.index are unique"
    );
    assert!(records.iter().all(|r| r.header("id").is_some()));

    relay.stop_cleanly();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_at_random_moments_loses_nothing() {
    let outbox = Outbox::on_shared(OUTBOXD, None, &[]).await;
    let seed = seed("sigkill");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let load = writers(&outbox, 4, 7_500, 200, 5, seed);
    for round in 0..10 {
        let relay = outbox.start(&format!("kill{round}"));
        tokio::time::sleep(Duration::from_millis(rng.random_range(300..2_000))).await;
        relay.signal("KILL");
        drop(relay);
    }
    all_written(load).await;
    let mut relay = outbox.start("after-kills");
    let (report, _) = outbox.check(Duration::from_secs(180)).await;
    println!(
        "after 10 SIGKILLs: {} events delivered, {} duplicates (seed {seed})",
        report.delivered, report.duplicates
    );
    report.assert_complete(30_000, &tail(&relay.log_text()));
    relay.stop_cleanly();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_graceful_restart_publishes_no_duplicates() {
    let outbox = Outbox::on_shared(OUTBOXD, None, &[]).await;
    let load = writers(&outbox, 4, 5_000, 200, 5, 7);
    let mut relay = outbox.start("graceful1");
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    relay.stop_cleanly();
    all_written(load).await;
    let mut relay = outbox.start("graceful2");
    let (report, _) = outbox.check(Duration::from_secs(120)).await;
    report.assert_complete(20_000, &tail(&relay.log_text()));
    assert_eq!(report.duplicates, 0, "{}", relay.log_text());
    relay.stop_cleanly();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_outbox_on_a_busy_database_keeps_the_slot_lag_small() {
    let outbox = Outbox::on_shared(OUTBOXD, None, &[]).await;
    let relay = outbox.start("idle");
    let c = outbox.connect().await;
    // Wait for the relay to create and attach to its slot.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while outbox.confirmed_flush().await.is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "slot not created: {}",
            relay.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for _ in 0..4 {
        c.batch_execute(
            "INSERT INTO busy SELECT g, repeat('w', 1000) FROM generate_series(1, 70000) g",
        )
        .await
        .unwrap();
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let lag = loop {
        let lag: i64 = c
            .query_one(
                "SELECT (pg_current_wal_lsn() - confirmed_flush_lsn)::bigint FROM pg_replication_slots WHERE slot_name = $1",
                &[&outbox.slot],
            )
            .await
            .unwrap()
            .get(0);
        if lag < 16 << 20 || std::time::Instant::now() > deadline {
            break lag;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert!(lag < 16 << 20, "slot lag {lag} bytes\n{}", relay.log_text());
}

/// Inserts one event per statement and returns the WAL position after each commit.
async fn insert_rows(outbox: &Outbox, rows: &[(&str, Option<&str>, &str)]) -> Vec<Lsn> {
    let c = outbox.connect().await;
    let mut after = Vec::new();
    for (id, aggregate_type, payload) in rows {
        c.execute(
            "INSERT INTO outbox (id, aggregatetype, aggregateid, payload) VALUES ($1::text::uuid, $2, 'agg-1', $3::text::jsonb)",
            &[id, aggregate_type, payload],
        )
        .await
        .unwrap();
        let lsn: String = c
            .query_one("SELECT pg_current_wal_lsn()::text", &[])
            .await
            .unwrap()
            .get(0);
        after.push(lsn.parse().unwrap());
    }
    after
}

const GOOD_1: &str = "00000000-0000-4000-8000-000000000001";
const BAD: &str = "00000000-0000-4000-8000-0000000000ba";
const GOOD_2: &str = "00000000-0000-4000-8000-000000000002";

#[tokio::test]
async fn an_unroutable_row_stops_the_relay_before_it() {
    let outbox = Outbox::on_shared(OUTBOXD, None, &[]).await;
    let after = insert_rows(
        &outbox,
        &[
            (GOOD_1, Some("order"), r#"{"agg":"agg-1","seq":1}"#),
            (BAD, None, "{}"),
            (GOOD_2, Some("order"), r#"{"agg":"agg-1","seq":2}"#),
        ],
    )
    .await;
    let mut relay = outbox.start("unroutable");
    let status = relay
        .wait_timeout(Duration::from_secs(60))
        .expect("the relay stops");
    let log = relay.log_text();
    assert!(!status.success(), "non-zero exit expected\n{log}");
    assert!(log.contains(BAD), "the error names the event id\n{log}");
    assert!(
        log.contains("aggregatetype is NULL"),
        "and the reason\n{log}"
    );
    let confirmed = outbox.confirmed_flush().await.unwrap();
    assert!(
        confirmed <= after[0],
        "confirmed {confirmed} must stay before the bad row (≤ {})",
        after[0]
    );
    let records = outbox.read_events(1, Duration::from_secs(20)).await;
    let ids: Vec<_> = records.iter().filter_map(|r| r.header("id")).collect();
    assert!(ids.contains(&GOOD_1.to_owned()), "{ids:?}");
    assert!(
        !ids.contains(&GOOD_2.to_owned()),
        "nothing after the bad row: {ids:?}"
    );
}

#[tokio::test]
async fn an_oversized_payload_stops_the_relay_with_the_event_named() {
    let outbox = Outbox::on_shared(
        OUTBOXD,
        None,
        &[("OUTBOXD_ROUTING__MAX_RECORD_BYTES", "200")],
    )
    .await;
    let big = format!(r#"{{"agg":"agg-1","seq":1,"pad":"{}"}}"#, "x".repeat(500));
    insert_rows(&outbox, &[(BAD, Some("order"), &big)]).await;
    let mut relay = outbox.start("oversized");
    let status = relay
        .wait_timeout(Duration::from_secs(60))
        .expect("the relay stops");
    let log = relay.log_text();
    assert!(
        !status.success() && log.contains(BAD) && log.contains("max_record_bytes"),
        "{log}"
    );
}

#[tokio::test]
async fn a_record_kafka_refuses_stops_the_relay_with_the_broker_reason() {
    // Routing lets 2 MB through; the producer's message.max.bytes (1 MB) does not.
    let outbox = Outbox::on_shared(
        OUTBOXD,
        None,
        &[("OUTBOXD_ROUTING__MAX_RECORD_BYTES", "10000000")],
    )
    .await;
    let big = format!(
        r#"{{"agg":"agg-1","seq":1,"pad":"{}"}}"#,
        "x".repeat(2_000_000)
    );
    let after = insert_rows(
        &outbox,
        &[
            (GOOD_1, Some("order"), r#"{"agg":"agg-1","seq":1}"#),
            (BAD, Some("order"), &big),
        ],
    )
    .await;
    let mut relay = outbox.start("refused");
    let status = relay
        .wait_timeout(Duration::from_secs(60))
        .expect("the relay stops");
    let log = relay.log_text();
    assert!(!status.success(), "{log}");
    assert!(
        log.contains(BAD) && log.to_lowercase().contains("too large"),
        "{log}"
    );
    let confirmed = outbox.confirmed_flush().await.unwrap();
    assert!(
        confirmed <= after[0],
        "confirmed {confirmed} must stay before the refused row"
    );
}

#[tokio::test]
async fn with_a_dead_letter_topic_bad_rows_are_diverted_and_the_rest_flows() {
    let dlq = unique_name("relay_dlq");
    let dlq_topic = TestTopics::create_named(std::slice::from_ref(&dlq), 1).await;
    let outbox = Outbox::on_shared(
        OUTBOXD,
        None,
        &[("OUTBOXD_KAFKA__DEAD_LETTER_TOPIC", dlq.as_str())],
    )
    .await;
    insert_rows(
        &outbox,
        &[
            (GOOD_1, Some("order"), r#"{"agg":"agg-1","seq":1}"#),
            (BAD, None, "{}"),
            (GOOD_2, Some("order"), r#"{"agg":"agg-1","seq":2}"#),
        ],
    )
    .await;
    let mut relay = outbox.start("dlq");
    let records = outbox.read_events(2, Duration::from_secs(60)).await;
    let ids: Vec<_> = records.iter().filter_map(|r| r.header("id")).collect();
    assert!(
        ids.contains(&GOOD_1.to_owned()) && ids.contains(&GOOD_2.to_owned()),
        "{ids:?}\n{}",
        relay.log_text()
    );
    let dead = tokio::task::spawn_blocking({
        let topics = dlq_topic.names().to_vec();
        move || consume_until(&topics, Duration::from_secs(30), |r| !r.is_empty())
    })
    .await
    .unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].header("outboxd.event.id").as_deref(), Some(BAD));
    assert!(dead[0]
        .header("outboxd.error")
        .unwrap()
        .contains("aggregatetype is NULL"));
    relay.stop_cleanly();
}

#[tokio::test]
async fn transactional_logical_messages_are_relayed() {
    let outbox = Outbox::on_shared(OUTBOXD, None, &[]).await;
    let c = outbox.connect().await;
    c.batch_execute(
        r#"BEGIN;
           SELECT pg_logical_emit_message(true, 'outbox', '{"id":"m-1","aggregatetype":"order","aggregateid":"agg-1","type":"Shipped","payload":{"agg":"agg-1","seq":1}}');
           COMMIT;
           SELECT pg_logical_emit_message(true, 'other', '{"ignored": true}');"#,
    )
    .await
    .unwrap();
    let mut relay = outbox.start("messages");
    let records = outbox.read_events(1, Duration::from_secs(60)).await;
    assert_eq!(records.len(), 1, "{records:?}\n{}", relay.log_text());
    assert_eq!(records[0].header("id").as_deref(), Some("m-1"));
    assert_eq!(records[0].key.as_deref(), Some(&b"agg-1"[..]));
    assert_eq!(
        records[0].value.as_deref(),
        Some(&br#"{"agg":"agg-1","seq":1}"#[..])
    );
    relay.stop_cleanly();
}

#[tokio::test]
async fn health_metrics_and_no_secrets_in_logs() {
    let port = free_port();
    let address = format!("127.0.0.1:{port}");
    let mut outbox = Outbox::on_shared(
        OUTBOXD,
        None,
        &[
            ("OUTBOXD_SERVER__METRICS_ADDRESS", address.as_str()),
            (
                "OUTBOXD_KAFKA__PRODUCER__SASL_PASSWORD",
                "kafka-secret-must-not-leak",
            ),
            ("OUTBOXD_LOG__FORMAT", "json"),
        ],
    )
    .await;
    // The cluster trusts local connections, so the password is accepted and unused.
    let url = format!(
        "{}?sslmode=disable",
        outbox
            .endpoints
            .pg_url
            .replacen("postgres@", "postgres:pg-secret-must-not-leak@", 1)
    );
    outbox.set_env("OUTBOXD_POSTGRES__URL", &url);
    let mut relay = outbox.start("metrics");
    insert_rows(
        &outbox,
        &[(GOOD_1, Some("order"), r#"{"agg":"agg-1","seq":1}"#)],
    )
    .await;
    outbox.read_events(1, Duration::from_secs(60)).await;

    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let metrics = loop {
        let (status, body) = http_get(port, "/metrics");
        if status == 200 && body.contains("outboxd_events_published_total 1")
            || std::time::Instant::now() > deadline
        {
            break body;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    for name in [
        "outboxd_events_published_total 1",
        "outboxd_confirmed_lsn",
        "outboxd_lag_bytes",
        "outboxd_lag_seconds",
        "outboxd_in_flight_records",
        "outboxd_delivery_errors_total 0",
        "outboxd_reconnects_total 0",
    ] {
        assert!(metrics.contains(name), "{name} missing from:\n{metrics}");
    }
    assert_eq!(http_get(port, "/healthz").0, 200);
    assert_eq!(http_get(port, "/readyz").0, 200);

    relay.stop_cleanly();
    let log = relay.log_text();
    assert!(log.contains("\"level\":\"INFO\""), "JSON logs: {log}");
    assert!(!log.contains("pg-secret-must-not-leak"), "{log}");
    assert!(!log.contains("kafka-secret-must-not-leak"), "{log}");
}

/// Peak resident memory of a process (VmHWM), in bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_far_larger_than_the_caps_streams_through_in_bounded_memory() {
    let outbox = Outbox::on_shared(
        OUTBOXD,
        None,
        &[
            ("OUTBOXD_POSTGRES__MAX_BUFFERED_BYTES", "2097152"),
            ("OUTBOXD_KAFKA__MAX_IN_FLIGHT_BYTES", "4194304"),
            ("OUTBOXD_KAFKA__MAX_IN_FLIGHT_RECORDS", "10000"),
        ],
    )
    .await;
    // One transaction of 200k events with 1 kB payloads: ~200 MB of records.
    outbox.commit_one_large_transaction(200_000).await;
    let mut relay = outbox.start("bigtxn");
    let records = outbox.read_events(200_000, Duration::from_secs(300)).await;
    let peak = relay.peak_rss();
    let report = DeliveryReport::check(&records, &outbox.committed().await);
    report.assert_complete(200_000, &tail(&relay.log_text()));
    println!(
        "200k events (~200 MB) in one transaction: outboxd peak RSS {} MB",
        peak >> 20
    );
    assert!(peak > 0, "could not read the relay's memory");
    assert!(
        peak < 100 << 20,
        "peak RSS {} MB: memory must stay bounded",
        peak >> 20
    );
    relay.stop_cleanly();
}

/// Debezium compatibility through the real broker: topic, key, value, headers and the
/// partition a Java producer (and so Debezium) would choose for the key.
#[tokio::test]
async fn golden_debezium_compatible_records() {
    for (key_format, key, partition) in [
        ("string", &b"order-1"[..], 4),
        ("json", &b"\"order-1\""[..], 2),
    ] {
        // Partitions from Kafka's own murmur2 (kafka-clients 4.3.1,
        // Utils.toPositive(Utils.murmur2(key)) % 6), as in tests/tests/kafka_sink/main.rs.
        let outbox = Outbox::on_shared_with_partitions(
            OUTBOXD,
            None,
            6,
            &[
                ("OUTBOXD_ROUTING__KEY_FORMAT", key_format),
                ("OUTBOXD_ROUTING__SOURCE_HEADERS", "false"),
            ],
        )
        .await;
        outbox
            .connect()
            .await
            .batch_execute(&format!(
                "INSERT INTO outbox (id, aggregatetype, aggregateid, type, payload) VALUES \
                 ('{GOOD_1}', 'order', 'order-1', 'OrderCreated', '{{\"id\": \"order-1\", \"total\": 42.5}}')"
            ))
            .await
            .unwrap();
        let mut relay = outbox.start("golden");
        let records = outbox.read_events(1, Duration::from_secs(60)).await;
        assert_eq!(records.len(), 1, "{}", relay.log_text());
        let r = &records[0];
        assert_eq!(r.topic, outbox.topic);
        assert_eq!(r.key.as_deref(), Some(key));
        assert_eq!(
            r.value.as_deref(),
            Some(&br#"{"id": "order-1", "total": 42.5}"#[..])
        );
        assert_eq!(
            r.headers,
            vec![("id".to_owned(), Some(GOOD_1.as_bytes().to_vec()))]
        );
        assert_eq!(
            r.partition, partition,
            "murmur2 placement for key format {key_format}"
        );
        relay.stop_cleanly();
    }
}

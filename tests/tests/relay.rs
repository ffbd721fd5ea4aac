//! End-to-end: the `outboxd` binary between the real PostgreSQL and the real Kafka,
//! checked by an independent consumer.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use outboxd_pgoutput::Lsn;
use outboxd_tests::scenario::{free_port, http_get};
use outboxd_tests::{
    consume_until, services, unique_name, ConsumedRecord, DeliveryReport, RelayProcess, TestDb,
    TestTopics,
};
use rand::{Rng, SeedableRng};

const AGGREGATE_TYPE: &str = "order";

/// A database with an outbox, the relay's settings, and the topic it routes to.
struct Setup {
    db: TestDb,
    slot: String,
    topics: TestTopics,
    env: Vec<(String, String)>,
}

impl Setup {
    async fn new(extra_env: &[(&str, &str)]) -> Setup {
        Self::with_partitions(extra_env, 3).await
    }

    async fn with_partitions(extra_env: &[(&str, &str)], partitions: i32) -> Setup {
        let db = TestDb::create().await;
        db.connect()
            .await
            .batch_execute(
                "CREATE TABLE outbox (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), \
                     aggregatetype text, aggregateid text, type text NOT NULL DEFAULT 'created', \
                     payload jsonb, timestamp timestamptz NOT NULL DEFAULT now());
                 CREATE TABLE aggregates (id text PRIMARY KEY, seq bigint NOT NULL);
                 CREATE TABLE busy (id bigint, pad text);",
            )
            .await
            .unwrap();
        let prefix = unique_name("relay");
        let topics =
            TestTopics::create_named(&[format!("{prefix}.{AGGREGATE_TYPE}")], partitions).await;
        // As `outboxd init --apply` would: the slot exists before the first event is
        // written, so the relay sees every event whenever it starts.
        let slot = db.slot_name();
        let c = db.connect().await;
        c.batch_execute(
            "CREATE PUBLICATION outboxd_pub FOR TABLE outbox WITH (publish = 'insert')",
        )
        .await
        .unwrap();
        c.execute(
            "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
            &[&slot],
        )
        .await
        .unwrap();
        let mut env: Vec<(String, String)> = [
            (
                "OUTBOXD_POSTGRES__URL",
                format!("{}?sslmode=disable", db.url),
            ),
            ("OUTBOXD_POSTGRES__SLOT", slot.clone()),
            ("OUTBOXD_POSTGRES__PUBLICATION", "outboxd_pub".to_owned()),
            ("OUTBOXD_POSTGRES__STATUS_INTERVAL_MS", "1000".to_owned()),
            ("OUTBOXD_KAFKA__BROKERS", services().kafka_brokers.clone()),
            (
                "OUTBOXD_ROUTING__TOPIC",
                format!("{prefix}.${{routedByValue}}"),
            ),
            ("OUTBOXD_SERVER__METRICS_ADDRESS", String::new()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        env.extend(
            extra_env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string())),
        );
        Setup {
            db,
            slot,
            topics,
            env,
        }
    }

    fn start(&self, name: &str) -> RelayProcess {
        RelayProcess::start(&self.env, name)
    }

    /// Aggregate id → last sequence number committed.
    async fn committed(&self) -> HashMap<String, i64> {
        self.db
            .connect()
            .await
            .query("SELECT id, seq FROM aggregates", &[])
            .await
            .unwrap()
            .into_iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect()
    }

    async fn confirmed_flush(&self) -> Option<Lsn> {
        let row = self
            .db
            .connect()
            .await
            .query_opt(
                "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
                &[&self.slot],
            )
            .await
            .unwrap()?;
        row.get::<_, Option<String>>(0).map(|s| s.parse().unwrap())
    }

    /// Reads the outbox topic until `expected` distinct events arrived.
    async fn read_events(&self, expected: usize, timeout: Duration) -> Vec<ConsumedRecord> {
        let topics = self.topics.names().to_vec();
        tokio::task::spawn_blocking(move || {
            let mut seen = HashSet::new();
            let mut checked = 0;
            consume_until(&topics, timeout, |records| {
                for r in &records[checked..] {
                    seen.insert(r.header("id"));
                }
                checked = records.len();
                seen.len() >= expected
            })
        })
        .await
        .unwrap()
    }
}

/// Writes `total` events from `writers` concurrent connections in transactions of
/// `per_txn`, over `aggregates` aggregates. Each event carries its aggregate's next
/// sequence number, taken under the aggregate's row lock, so sequence order is
/// commit order per aggregate.
async fn write_events(
    url: &str,
    writers: usize,
    total: usize,
    aggregates: usize,
    per_txn: usize,
    seed: u64,
) {
    let mut tasks = Vec::new();
    for w in 0..writers {
        let url = url.to_owned();
        let share = total / writers + usize::from(w < total % writers);
        tasks.push(tokio::spawn(async move {
            let mut client = outboxd_tests::pg_connect(&url).await;
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed + w as u64);
            let mut written = 0;
            while written < share {
                let n = per_txn.min(share - written);
                // Sorted, so concurrent transactions lock aggregates in one order.
                let mut ids: Vec<String> = (0..n)
                    .map(|_| format!("agg-{:04}", rng.random_range(0..aggregates)))
                    .collect();
                ids.sort();
                let tx = client.transaction().await.unwrap();
                let statement = tx
                    .prepare(
                        "WITH s AS (INSERT INTO aggregates AS a VALUES ($1, 1) \
                                    ON CONFLICT (id) DO UPDATE SET seq = a.seq + 1 RETURNING seq) \
                         INSERT INTO outbox (aggregatetype, aggregateid, payload) \
                         SELECT 'order', $1, jsonb_build_object('agg', $1::text, 'seq', s.seq, \
                                                                'pad', repeat('p', 150)) FROM s",
                    )
                    .await
                    .unwrap();
                let params: Vec<[&(dyn tokio_postgres::types::ToSql + Sync); 1]> =
                    ids.iter().map(|id| [id as _]).collect();
                let inserts = params.iter().map(|p| tx.execute(&statement, p));
                futures_util::future::try_join_all(inserts).await.unwrap();
                tx.commit().await.unwrap();
                written += n;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

fn assert_complete(report: &DeliveryReport, expected_events: usize) {
    assert_eq!(report.missing, 0, "missing events: {:?}", report.examples);
    assert_eq!(
        report.order_violations, 0,
        "order violations: {:?}",
        report.examples
    );
    assert_eq!(report.delivered, expected_events, "{:?}", report.examples);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn relays_100k_events_from_8_writers_in_per_key_commit_order() {
    let setup = Setup::new(&[]).await;
    let mut relay = setup.start("e2e");
    let started = std::time::Instant::now();
    write_events(&setup.db.url, 8, 100_000, 1_000, 10, 1).await;
    let written = started.elapsed();
    let records = setup.read_events(100_000, Duration::from_secs(240)).await;
    let report = DeliveryReport::check(&records, &setup.committed().await);
    println!(
        "100k events: written in {written:?}, all read back {:?} after the writers started; \
         {} duplicates",
        started.elapsed(),
        report.duplicates
    );
    assert_complete(&report, 100_000);
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
    let setup = Setup::new(&[]).await;
    let seed: u64 = std::env::var("OUTBOXD_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("seed {seed} (rerun with OUTBOXD_TEST_SEED={seed})");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let url = setup.db.url.clone();
    let writers = tokio::spawn(async move { write_events(&url, 4, 30_000, 200, 5, seed).await });
    for round in 0..10 {
        let relay = setup.start(&format!("kill{round}"));
        tokio::time::sleep(Duration::from_millis(rng.random_range(300..2_000))).await;
        relay.signal("KILL");
        drop(relay);
    }
    writers.await.unwrap();
    let mut relay = setup.start("after-kills");
    let records = setup.read_events(30_000, Duration::from_secs(180)).await;
    let report = DeliveryReport::check(&records, &setup.committed().await);
    println!(
        "after 10 SIGKILLs: {} events delivered, {} duplicates (seed {seed})",
        report.delivered, report.duplicates
    );
    assert_complete(&report, 30_000);
    relay.stop_cleanly();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_graceful_restart_publishes_no_duplicates() {
    let setup = Setup::new(&[]).await;
    let url = setup.db.url.clone();
    let writers = tokio::spawn(async move { write_events(&url, 4, 20_000, 200, 5, 7).await });
    let mut relay = setup.start("graceful1");
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    relay.stop_cleanly();
    writers.await.unwrap();
    let mut relay = setup.start("graceful2");
    let records = setup.read_events(20_000, Duration::from_secs(120)).await;
    let report = DeliveryReport::check(&records, &setup.committed().await);
    assert_complete(&report, 20_000);
    assert_eq!(report.duplicates, 0, "{}", relay.log_text());
    relay.stop_cleanly();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_outbox_on_a_busy_database_keeps_the_slot_lag_small() {
    let setup = Setup::new(&[]).await;
    let relay = setup.start("idle");
    let c = setup.db.connect().await;
    // Wait for the relay to create and attach to its slot.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while setup.confirmed_flush().await.is_none() {
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
                &[&setup.slot],
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
async fn insert_rows(db: &TestDb, rows: &[(&str, Option<&str>, &str)]) -> Vec<Lsn> {
    let c = db.connect().await;
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
    let setup = Setup::new(&[]).await;
    let after = insert_rows(
        &setup.db,
        &[
            (GOOD_1, Some("order"), r#"{"agg":"agg-1","seq":1}"#),
            (BAD, None, "{}"),
            (GOOD_2, Some("order"), r#"{"agg":"agg-1","seq":2}"#),
        ],
    )
    .await;
    let mut relay = setup.start("unroutable");
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
    let confirmed = setup.confirmed_flush().await.unwrap();
    assert!(
        confirmed <= after[0],
        "confirmed {confirmed} must stay before the bad row (≤ {})",
        after[0]
    );
    let records = setup.read_events(1, Duration::from_secs(20)).await;
    let ids: Vec<_> = records.iter().filter_map(|r| r.header("id")).collect();
    assert!(ids.contains(&GOOD_1.to_owned()), "{ids:?}");
    assert!(
        !ids.contains(&GOOD_2.to_owned()),
        "nothing after the bad row: {ids:?}"
    );
}

#[tokio::test]
async fn an_oversized_payload_stops_the_relay_with_the_event_named() {
    let setup = Setup::new(&[("OUTBOXD_ROUTING__MAX_RECORD_BYTES", "200")]).await;
    let big = format!(r#"{{"agg":"agg-1","seq":1,"pad":"{}"}}"#, "x".repeat(500));
    insert_rows(&setup.db, &[(BAD, Some("order"), &big)]).await;
    let mut relay = setup.start("oversized");
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
    let setup = Setup::new(&[("OUTBOXD_ROUTING__MAX_RECORD_BYTES", "10000000")]).await;
    let big = format!(
        r#"{{"agg":"agg-1","seq":1,"pad":"{}"}}"#,
        "x".repeat(2_000_000)
    );
    let after = insert_rows(
        &setup.db,
        &[
            (GOOD_1, Some("order"), r#"{"agg":"agg-1","seq":1}"#),
            (BAD, Some("order"), &big),
        ],
    )
    .await;
    let mut relay = setup.start("refused");
    let status = relay
        .wait_timeout(Duration::from_secs(60))
        .expect("the relay stops");
    let log = relay.log_text();
    assert!(!status.success(), "{log}");
    assert!(
        log.contains(BAD) && log.to_lowercase().contains("too large"),
        "{log}"
    );
    let confirmed = setup.confirmed_flush().await.unwrap();
    assert!(
        confirmed <= after[0],
        "confirmed {confirmed} must stay before the refused row"
    );
}

#[tokio::test]
async fn with_a_dead_letter_topic_bad_rows_are_diverted_and_the_rest_flows() {
    let dlq = unique_name("relay_dlq");
    let dlq_topic = TestTopics::create_named(std::slice::from_ref(&dlq), 1).await;
    let setup = Setup::new(&[("OUTBOXD_KAFKA__DEAD_LETTER_TOPIC", dlq.as_str())]).await;
    insert_rows(
        &setup.db,
        &[
            (GOOD_1, Some("order"), r#"{"agg":"agg-1","seq":1}"#),
            (BAD, None, "{}"),
            (GOOD_2, Some("order"), r#"{"agg":"agg-1","seq":2}"#),
        ],
    )
    .await;
    let mut relay = setup.start("dlq");
    let records = setup.read_events(2, Duration::from_secs(60)).await;
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
    let setup = Setup::new(&[]).await;
    let c = setup.db.connect().await;
    c.batch_execute(
        r#"BEGIN;
           SELECT pg_logical_emit_message(true, 'outbox', '{"id":"m-1","aggregatetype":"order","aggregateid":"agg-1","type":"Shipped","payload":{"agg":"agg-1","seq":1}}');
           COMMIT;
           SELECT pg_logical_emit_message(true, 'other', '{"ignored": true}');"#,
    )
    .await
    .unwrap();
    let mut relay = setup.start("messages");
    let records = setup.read_events(1, Duration::from_secs(60)).await;
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
    let mut setup = Setup::new(&[
        ("OUTBOXD_SERVER__METRICS_ADDRESS", address.as_str()),
        (
            "OUTBOXD_KAFKA__PRODUCER__SASL_PASSWORD",
            "kafka-secret-must-not-leak",
        ),
        ("OUTBOXD_LOG__FORMAT", "json"),
    ])
    .await;
    // The cluster trusts local connections, so the password is accepted and unused.
    let url = format!(
        "{}?sslmode=disable",
        setup
            .db
            .url
            .replacen("postgres@", "postgres:pg-secret-must-not-leak@", 1)
    );
    setup.env.push(("OUTBOXD_POSTGRES__URL".to_owned(), url));
    let mut relay = setup.start("metrics");
    insert_rows(
        &setup.db,
        &[(GOOD_1, Some("order"), r#"{"agg":"agg-1","seq":1}"#)],
    )
    .await;
    setup.read_events(1, Duration::from_secs(60)).await;

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
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_far_larger_than_the_caps_streams_through_in_bounded_memory() {
    let setup = Setup::new(&[
        ("OUTBOXD_POSTGRES__MAX_BUFFERED_BYTES", "2097152"),
        ("OUTBOXD_KAFKA__MAX_IN_FLIGHT_BYTES", "4194304"),
        ("OUTBOXD_KAFKA__MAX_IN_FLIGHT_RECORDS", "10000"),
    ])
    .await;
    // One transaction of 200k events with 1 kB payloads: ~200 MB of records.
    setup
        .db
        .connect()
        .await
        .batch_execute(
            "INSERT INTO aggregates SELECT 'agg-' || g, 1 FROM generate_series(1, 200000) g;
             INSERT INTO outbox (aggregatetype, aggregateid, payload)
             SELECT 'order', 'agg-' || g, jsonb_build_object('agg', 'agg-' || g, 'seq', 1, 'pad', repeat('m', 1000))
             FROM generate_series(1, 200000) g;",
        )
        .await
        .unwrap();
    let mut relay = setup.start("bigtxn");
    let records = setup.read_events(200_000, Duration::from_secs(300)).await;
    let peak = peak_rss(relay.pid());
    let report = DeliveryReport::check(&records, &setup.committed().await);
    assert_complete(&report, 200_000);
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
        // Utils.toPositive(Utils.murmur2(key)) % 6), as in tests/tests/kafka_sink.rs.
        let setup = Setup::with_partitions(
            &[
                ("OUTBOXD_ROUTING__KEY_FORMAT", key_format),
                ("OUTBOXD_ROUTING__SOURCE_HEADERS", "false"),
            ],
            6,
        )
        .await;
        setup
            .db
            .connect()
            .await
            .batch_execute(&format!(
                "INSERT INTO outbox (id, aggregatetype, aggregateid, type, payload) VALUES \
                 ('{GOOD_1}', 'order', 'order-1', 'OrderCreated', '{{\"id\": \"order-1\", \"total\": 42.5}}')"
            ))
            .await
            .unwrap();
        let mut relay = setup.start("golden");
        let records = setup.read_events(1, Duration::from_secs(60)).await;
        assert_eq!(records.len(), 1, "{}", relay.log_text());
        let r = &records[0];
        assert_eq!(r.topic, setup.topics.names()[0]);
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

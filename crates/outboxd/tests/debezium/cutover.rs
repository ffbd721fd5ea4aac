//! The cut-over of docs/operations.md, end to end: Debezium relays a stream of
//! events; mid-stream the connector is stopped, `outboxd migrate` converts its
//! configuration, `outboxd init --apply` creates the checkpoint topic and `outboxd
//! run` takes over Debezium's slot and publication. Every committed event must be
//! in Kafka (0 missing); the events both delivered are counted, and compared.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use outboxd_tests::connect::{postgres_connector, Connector};
use outboxd_tests::{outboxd_command, services, tail, unique_name, Process, TestDb, TestTopics};
use serde_json::Value;

use super::golden::{compare, init_apply, migrate, read};
use super::scenarios::OUTBOX;
use super::OUTBOXD;

/// Events written at least; more while the switch takes.
const EVENTS: usize = 3000;
const PER_TXN: usize = 10;

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs Kafka Connect with Debezium; scripts/test-debezium.sh runs it"]
async fn cut_over_from_debezium_mid_stream() {
    let started = Instant::now();
    let db = TestDb::create().await;
    let sql = db.connect().await;
    sql.batch_execute(OUTBOX).await.expect("schema");
    let prefix = unique_name("cut");
    let topics: Vec<String> = ["order", "customer"]
        .iter()
        .map(|t| format!("{prefix}.{t}"))
        .collect();
    let _topics = TestTopics::create_named(&topics, 6).await;
    // As a user would run it: Debezium makes its own slot and publication.
    let slot = unique_name("debezium");
    let mut config = postgres_connector(&db, &slot, "dbz_cutover", &prefix, &["public.outbox"]);
    for (k, v) in [
        ("publication.autocreate.mode", "filtered"),
        (
            "key.converter",
            "org.apache.kafka.connect.storage.StringConverter",
        ),
        (
            "value.converter",
            "org.apache.kafka.connect.storage.StringConverter",
        ),
        (
            "transforms.outbox.route.topic.replacement",
            &format!("{prefix}.${{routedByValue}}"),
        ),
        (
            "transforms.outbox.table.fields.additional.placement",
            "type:header:eventType",
        ),
    ] {
        config.insert(k.to_owned(), Value::String(v.to_owned()));
    }
    let connector = tokio::task::spawn_blocking({
        let (prefix, config) = (prefix.clone(), config.clone());
        move || Connector::start(&prefix, &config)
    })
    .await
    .expect("connector");

    // A writer, about 100 transactions a second, through the whole switch: at least
    // EVENTS events, and on until outboxd has relayed some of its own.
    let stop_writing = Arc::new(AtomicBool::new(false));
    let writer = tokio::spawn({
        let url = db.url.clone();
        let stop_writing = stop_writing.clone();
        async move {
            let c = outboxd_tests::pg_connect(&url).await;
            let mut start = 0;
            while start < EVENTS || !stop_writing.load(Ordering::Relaxed) {
                c.batch_execute(&format!(
                    "INSERT INTO outbox (id, aggregatetype, aggregateid, type, payload)
                     SELECT md5('cut' || g)::uuid, (ARRAY['order','customer'])[1 + g % 2],
                            'agg-' || (g % 31), 'Created', jsonb_build_object('seq', g)
                     FROM generate_series({start}, {end}) g",
                    end = start + PER_TXN - 1
                ))
                .await
                .expect("write");
                start += PER_TXN;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            start
        }
    });

    // Mid-stream: a third of the events are in Kafka.
    read(&topics, EVENTS / 3).await;
    let stopped_at = Instant::now();
    let connector = tokio::task::spawn_blocking(move || {
        connector.stop();
        connector
    })
    .await
    .expect("stop");
    let (toml, report, complete) = migrate(&prefix, &config);
    assert!(complete, "migrate:\n{report}");
    assert!(
        report.contains(&format!("slot '{slot}'")),
        "the steps name the slot:\n{report}"
    );
    let env: Vec<(String, String)> = [
        ("OUTBOXD_CONFIG", toml.display().to_string()),
        (
            "OUTBOXD_POSTGRES__URL",
            format!(
                "postgres://postgres@{}:{}/{}?sslmode=disable",
                db.host, db.port, db.name
            ),
        ),
        ("OUTBOXD_KAFKA__BROKERS", services().kafka_brokers.clone()),
        ("OUTBOXD_SERVER__METRICS_ADDRESS", String::new()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    init_apply(&env);
    let mut relay = Process::start(
        outboxd_command(Path::new(OUTBOXD), &["run"], &env),
        "cutover",
    );
    let switch = stopped_at.elapsed();
    let relayed_by_outboxd = {
        let topics = topics.clone();
        tokio::task::spawn_blocking(move || {
            outboxd_tests::consume_until(&topics, Duration::from_secs(60), |records| {
                records.iter().any(|r| r.header("outboxd.lsn").is_some())
            })
        })
    };
    relayed_by_outboxd.await.expect("reader");
    stop_writing.store(true, Ordering::Relaxed);
    let written = writer.await.expect("writer");

    // Everything committed, from whichever relay.
    let records = {
        let topics = topics.clone();
        tokio::task::spawn_blocking(move || {
            let mut seen = std::collections::HashSet::new();
            let mut checked = 0;
            outboxd_tests::consume_until(&topics, Duration::from_secs(180), |records| {
                for r in &records[checked..] {
                    seen.insert(r.header("id"));
                }
                checked = records.len();
                seen.len() >= written
            })
        })
        .await
        .expect("reader")
    };
    relay.stop_cleanly();
    drop(connector);

    let mut by_id: HashMap<String, usize> = HashMap::new();
    for r in &records {
        *by_id.entry(r.header("id").unwrap_or_default()).or_default() += 1;
    }
    let committed: Vec<String> = sql
        .query("SELECT id::text FROM outbox", &[])
        .await
        .expect("ids")
        .iter()
        .map(|r| r.get(0))
        .collect();
    let missing = committed
        .iter()
        .filter(|id| !by_id.contains_key(*id))
        .count();
    let duplicates = records.len() - by_id.len();
    let (debezium, outboxd): (Vec<_>, Vec<_>) = records
        .iter()
        .cloned()
        .partition(|r| r.header("outboxd.lsn").is_none());
    // The events both delivered: the same records.
    let twice: Vec<_> = debezium
        .iter()
        .filter(|d| outboxd.iter().any(|o| o.header("id") == d.header("id")))
        .cloned()
        .collect();
    let overlap: Vec<_> = outboxd
        .iter()
        .filter(|o| twice.iter().any(|d| d.header("id") == o.header("id")))
        .cloned()
        .collect();
    let differences = compare(&twice, &overlap, false);
    let slots: i64 = sql
        .query_one(
            "SELECT count(*) FROM pg_replication_slots WHERE database = current_database()",
            &[],
        )
        .await
        .expect("slots")
        .get(0);
    println!(
        "cut-over: {} committed, {} from Debezium, {} from outboxd, {missing} missing, \
         {duplicates} duplicates (delivered by both, {} of them compared: {} differences); \
         connector stopped to outboxd started in {switch:?}; {:.1} s",
        committed.len(),
        debezium.len(),
        outboxd.len(),
        twice.len(),
        differences.len(),
        started.elapsed().as_secs_f64()
    );
    assert_eq!(committed.len(), written);
    assert_eq!(
        missing,
        0,
        "events lost in the cut-over; relay log:\n{}",
        tail(&relay.log_text())
    );
    assert!(differences.is_empty(), "{differences:?}");
    assert_eq!(
        slots, 1,
        "outboxd took Debezium's slot over and made none of its own"
    );
    assert!(!outboxd.is_empty() && !debezium.is_empty());
}

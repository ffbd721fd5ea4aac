//! One golden comparison: the same rows read by Debezium (Kafka Connect, the
//! connector configured by the scenario) and by outboxd (configured by `outboxd
//! migrate` from that very connector configuration), each from its own slot, into
//! the same topics; then every record compared field by field.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use outboxd_tests::connect::{postgres_connector, Connector};
use outboxd_tests::{
    consume_until_from, outboxd_command, services, tail, unique_name, ConsumedRecord, Process,
    TestDb, TestTopics,
};
use serde_json::{json, Value};

use super::OUTBOXD;

/// Partitions of every routed topic, so placement is compared.
const PARTITIONS: i32 = 6;

/// A golden test: tables, rows, and the connector's router and converter settings.
/// `{p}` in settings and topic names is the scenario's unique prefix (also the
/// connector's `topic.prefix`).
#[derive(Debug, Clone, Default)]
pub struct Scenario {
    pub name: &'static str,
    pub schema: &'static str,
    pub tables: Vec<&'static str>,
    pub rows: String,
    pub settings: Vec<(&'static str, String)>,
    pub topics: Vec<&'static str>,
    /// Records each side produces.
    pub expected: usize,
    /// The record timestamp comes from a column: equal; otherwise outboxd's (the
    /// commit time) is at most Debezium's (the time it processed the event).
    pub exact_timestamps: bool,
    /// `migrate` reports a setting as not supported (and exits non-zero).
    pub migrate_incomplete: bool,
    /// Both stop at an event they refuse: Debezium's task fails, outboxd exits
    /// non-zero; the records before it are compared.
    pub stops: bool,
}

/// What a comparison found.
#[derive(Debug)]
pub struct Outcome {
    pub debezium: Vec<ConsumedRecord>,
    pub outboxd: Vec<ConsumedRecord>,
    pub differences: Vec<String>,
    pub migrate_report: String,
    pub seconds: f64,
    pub relay_log: String,
    /// Debezium's failure trace, when the scenario stops.
    pub stopped: String,
}

impl Outcome {
    /// Asserts that both sides produced the expected records and that they agree.
    pub fn assert_same(&self, name: &str, expected: usize) {
        println!(
            "golden {name}: {} Debezium records, {} outboxd records compared, {} differences \
             ({:.1} s)",
            self.debezium.len(),
            self.outboxd.len(),
            self.differences.len(),
            self.seconds
        );
        assert_eq!(
            (self.debezium.len(), self.outboxd.len()),
            (expected, expected),
            "records read (Debezium, outboxd); relay log:\n{}",
            tail(&self.relay_log)
        );
        assert!(
            self.differences.is_empty(),
            "{name}: {} differences:\n{}\nmigrate:\n{}",
            self.differences.len(),
            self.differences.join("\n"),
            self.migrate_report
        );
    }
}

fn fill(text: &str, prefix: &str) -> String {
    text.replace("{p}", prefix)
}

/// A path for a scenario's file.
pub fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join("outboxd-debezium-tests");
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir.join(name)
}

/// Runs `outboxd migrate` on a connector configuration; (file written, report, success).
pub fn migrate(name: &str, config: &serde_json::Map<String, Value>) -> (PathBuf, String, bool) {
    let input = scratch(&format!("{name}.json"));
    let output = scratch(&format!("{name}.toml"));
    let body = json!({ "name": name, "config": config });
    std::fs::write(&input, serde_json::to_vec_pretty(&body).expect("json")).expect("write");
    let out = std::process::Command::new(OUTBOXD)
        .args(["migrate", "--from-debezium"])
        .arg(&input)
        .arg("--output")
        .arg(&output)
        .output()
        .expect("running outboxd migrate");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (output, report, out.status.success())
}

/// The relay's settings on top of a migrated file: its own slot and the test
/// services.
pub fn relay_env(config: &std::path::Path, db: &TestDb, slot: &str) -> Vec<(String, String)> {
    [
        ("OUTBOXD_CONFIG", config.display().to_string()),
        (
            "OUTBOXD_POSTGRES__URL",
            format!(
                "postgres://postgres@{}:{}/{}?sslmode=disable",
                db.host, db.port, db.name
            ),
        ),
        ("OUTBOXD_POSTGRES__SLOT", slot.to_owned()),
        ("OUTBOXD_POSTGRES__STATUS_INTERVAL_MS", "1000".to_owned()),
        ("OUTBOXD_KAFKA__BROKERS", services().kafka_brokers.clone()),
        ("OUTBOXD_SERVER__METRICS_ADDRESS", String::new()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// `outboxd init --apply` with `env`.
pub fn init_apply(env: &[(String, String)]) {
    let out = std::process::Command::new(OUTBOXD)
        .args(["init", "--apply"])
        .env_remove("OUTBOXD_CONFIG")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .expect("running outboxd init --apply");
    assert!(
        out.status.success(),
        "outboxd init --apply failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

pub async fn run(s: Scenario) -> Outcome {
    let started = Instant::now();
    let db = TestDb::create().await;
    let sql = db.connect().await;
    sql.batch_execute(s.schema).await.expect("schema");
    let quoted: Vec<String> = s.tables.iter().map(|t| t.to_string()).collect();
    sql.batch_execute(&format!(
        "CREATE PUBLICATION golden_pub FOR TABLE {}",
        quoted.join(", ")
    ))
    .await
    .expect("publication");
    let prefix = unique_name("g");
    let topic_names: Vec<String> = s.topics.iter().map(|t| fill(t, &prefix)).collect();
    let _topics = TestTopics::create_named(&topic_names, PARTITIONS).await;
    let dbz_slot = unique_name("dbz");
    sql.execute(
        "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
        &[&dbz_slot],
    )
    .await
    .expect("Debezium's slot");
    let mut config = postgres_connector(&db, &dbz_slot, "golden_pub", &prefix, &s.tables);
    // An empty value removes a base setting.
    for (k, v) in &s.settings {
        match v.is_empty() {
            true => config.remove(*k),
            false => config.insert((*k).to_owned(), Value::String(fill(v, &prefix))),
        };
    }
    let (toml, migrate_report, complete) = migrate(&prefix, &config);
    assert_eq!(
        complete, !s.migrate_incomplete,
        "outboxd migrate's verdict for {}:\n{migrate_report}",
        s.name
    );
    let env = relay_env(&toml, &db, &unique_name("obx"));
    init_apply(&env);
    sql.batch_execute(&fill(&s.rows, &prefix))
        .await
        .expect("rows");
    let stops = s.stops;
    let connector = tokio::task::spawn_blocking({
        let (prefix, config) = (prefix.clone(), config.clone());
        move || match stops {
            true => Connector::create(&prefix, &config),
            false => Connector::start(&prefix, &config),
        }
    })
    .await
    .expect("connector");
    let mut relay = Process::start(
        outboxd_command(std::path::Path::new(OUTBOXD), &["run"], &env),
        s.name,
    );
    let records = read(&topic_names, 2 * s.expected).await;
    let mut stopped = String::new();
    if stops {
        let status = relay.wait_timeout(Duration::from_secs(60));
        assert!(
            status.is_some_and(|s| !s.success()),
            "outboxd should have stopped with an error: {status:?}"
        );
        let trace = tokio::task::spawn_blocking(move || {
            let trace = connector.wait_failed(Duration::from_secs(60));
            drop(connector);
            trace
        })
        .await
        .expect("connector status");
        stopped = format!("Debezium's task failed:\n{trace}");
    } else {
        relay.stop_cleanly();
        drop(connector);
    }
    let (debezium, outboxd): (Vec<_>, Vec<_>) = records
        .into_iter()
        .partition(|r| r.header("outboxd.lsn").is_none());
    let differences = compare(&debezium, &outboxd, s.exact_timestamps);
    Outcome {
        debezium,
        outboxd,
        differences,
        migrate_report,
        seconds: started.elapsed().as_secs_f64(),
        relay_log: relay.log_text(),
        stopped,
    }
}

/// Reads `topics` until `expected` records arrived (two minutes at most).
pub async fn read(topics: &[String], expected: usize) -> Vec<ConsumedRecord> {
    let topics = topics.to_vec();
    tokio::task::spawn_blocking(move || {
        let brokers = services().kafka_brokers.clone();
        consume_until_from(&brokers, &topics, Duration::from_secs(120), |records| {
            records.len() >= expected
        })
    })
    .await
    .expect("reader")
}

/// Every Debezium record against outboxd's record of the same event (by `id`).
pub fn compare(
    debezium: &[ConsumedRecord],
    outboxd: &[ConsumedRecord],
    exact_timestamps: bool,
) -> Vec<String> {
    let mut by_id: HashMap<Option<String>, Vec<&ConsumedRecord>> = HashMap::new();
    for r in outboxd {
        by_id.entry(r.header("id")).or_default().push(r);
    }
    let mut out = Vec::new();
    for d in debezium {
        let id = d.header("id");
        let Some(o) = by_id.get_mut(&id).and_then(Vec::pop) else {
            out.push(format!("{id:?}: only in Debezium's records: {d:?}"));
            continue;
        };
        let mut diff = |field: &str, a: String, b: String| {
            if a != b {
                out.push(format!("{id:?}: {field}: Debezium {a}, outboxd {b}"));
            }
        };
        diff("topic", d.topic.clone(), o.topic.clone());
        diff("key", show(&d.key), show(&o.key));
        diff("value", show(&d.value), show(&o.value));
        if d.key.is_some() {
            diff(
                "partition",
                d.partition.to_string(),
                o.partition.to_string(),
            );
        }
        let theirs: Vec<_> = o
            .headers
            .iter()
            .filter(|(k, _)| !k.starts_with("outboxd."))
            .collect();
        diff(
            "header names",
            names(d.headers.iter()),
            names(theirs.iter().copied()),
        );
        for ((name, a), (_, b)) in d.headers.iter().zip(theirs.iter().map(|(k, v)| (k, v))) {
            let (a, b) = (header_text(a), header_text(b));
            match name.as_str() {
                "__debezium.context.runId" => {
                    diff("runId length", a.len().to_string(), b.len().to_string());
                }
                // Debezium records a span of its own; the trace is the same.
                "traceparent" => {
                    let fields = |t: &str| {
                        let f: Vec<&str> = t.split('-').collect();
                        format!(
                            "{:?}",
                            (f.first().copied(), f.get(1).copied(), f.get(3).copied())
                        )
                    };
                    diff("traceparent version/trace id/flags", fields(&a), fields(&b));
                }
                _ => diff(&format!("header {name}"), a, b),
            }
        }
        match (d.timestamp_ms, o.timestamp_ms) {
            (a, b) if exact_timestamps => diff("timestamp", format!("{a:?}"), format!("{b:?}")),
            (Some(a), Some(b)) if b <= a && a - b < 120_000 => {}
            (a, b) => out.push(format!(
                "{id:?}: timestamp: outboxd's commit time {b:?} is not at most Debezium's \
                 processing time {a:?}"
            )),
        }
    }
    for (id, left) in by_id {
        for r in left {
            out.push(format!("{id:?}: only in outboxd's records: {r:?}"));
        }
    }
    out
}

fn show(bytes: &Option<Vec<u8>>) -> String {
    match bytes {
        None => "null".to_owned(),
        Some(b) => format!("{:?}", String::from_utf8_lossy(b)),
    }
}

fn header_text(v: &Option<Vec<u8>>) -> String {
    show(v)
}

fn names<'a>(headers: impl Iterator<Item = &'a (String, Option<Vec<u8>>)>) -> String {
    headers
        .map(|(k, _)| k.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

/// The comparison itself finds differences (it runs without Debezium).
#[test]
fn the_comparison_sees_each_difference() {
    let record = |value: &str, header: &str, lsn: Option<&str>| ConsumedRecord {
        topic: "t".to_owned(),
        partition: 1,
        offset: 0,
        key: Some(b"k".to_vec()),
        value: Some(value.as_bytes().to_vec()),
        headers: [("id", Some("e1")), ("eventType", Some(header))]
            .into_iter()
            .chain(lsn.map(|l| ("outboxd.lsn", Some(l))))
            .map(|(k, v)| (k.to_owned(), v.map(|v| v.as_bytes().to_vec())))
            .collect(),
        timestamp_ms: Some(1000),
    };
    let debezium = [record("v", "A", None)];
    assert!(compare(&debezium, &[record("v", "A", Some("0/1"))], true).is_empty());
    let found = compare(&debezium, &[record("w", "B", Some("0/1"))], true);
    assert_eq!(found.len(), 2, "{found:?}");
    assert_eq!(compare(&debezium, &[], true).len(), 1);
}

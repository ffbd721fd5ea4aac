//! Trace context through the outbox: a context made by the OpenTelemetry Java SDK
//! and stored the way Debezium's tracing documentation describes
//! (`TraceContext.java`), relayed by Debezium (the Connect worker has the SDK on its
//! classpath) and by outboxd.

use super::golden::{run, Scenario};
use super::scenarios::{rows, OUTBOX};

/// The stored context the Java SDK writes (`sampled` or `unsampled`).
fn stored_context(kind: &str) -> String {
    let classpath = std::env::var("OUTBOXD_TEST_OTEL_CLASSPATH").unwrap_or_else(|_| {
        panic!("OUTBOXD_TEST_OTEL_CLASSPATH is not set; run scripts/test-debezium.sh")
    });
    let source = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/debezium/TraceContext.java"
    );
    let out = std::process::Command::new("java")
        .args(["-cp", &classpath, source, kind])
        .output()
        .expect("running java");
    assert!(
        out.status.success(),
        "TraceContext.java failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8")
}

/// The `traceparent` in a stored context.
fn traceparent(stored: &str) -> String {
    stored
        .lines()
        .find_map(|l| l.strip_prefix("traceparent="))
        .expect("a traceparent")
        .to_owned()
}

/// Rows with a sampled context, an unsampled one and none: both relays give the
/// same trace id, flags and trace state; Debezium's parent id is a span of its own,
/// outboxd's the writer's.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs Kafka Connect with Debezium; scripts/test-debezium.sh runs it"]
async fn trace_context_continues_through_kafka() {
    let contexts = [stored_context("sampled"), stored_context("unsampled")];
    let mut sql = rows(20, &["order"], "untraced");
    for (i, stored) in contexts.iter().enumerate() {
        for j in 0..5 {
            sql.push_str(&format!(
                "INSERT INTO outbox (id, aggregatetype, aggregateid, type, payload, \
                 tracingspancontext) VALUES (md5('traced{i}-{j}')::uuid, 'order', 'agg-t{j}', \
                 'Traced', '{{\"traced\": {j}}}', '{}');\n",
                stored.replace('\'', "''")
            ));
        }
    }
    let s = Scenario {
        name: "trace_context_continues_through_kafka",
        schema: OUTBOX,
        tables: vec!["public.outbox"],
        rows: sql,
        settings: vec![
            (
                "key.converter",
                "org.apache.kafka.connect.storage.StringConverter".to_owned(),
            ),
            (
                "value.converter",
                "org.apache.kafka.connect.storage.StringConverter".to_owned(),
            ),
            (
                "transforms.outbox.route.topic.replacement",
                "{p}.${routedByValue}".to_owned(),
            ),
        ],
        topics: vec!["{p}.order"],
        expected: 30,
        ..Scenario::default()
    };
    let outcome = run(s).await;
    outcome.assert_same("trace_context_continues_through_kafka", 30);
    let writers: Vec<String> = contexts.iter().map(|c| traceparent(c)).collect();
    let traced = |records: &[outboxd_tests::ConsumedRecord]| -> Vec<String> {
        records
            .iter()
            .filter_map(|r| r.header("traceparent"))
            .collect()
    };
    let (theirs, ours) = (traced(&outcome.debezium), traced(&outcome.outboxd));
    assert_eq!((theirs.len(), ours.len()), (10, 10), "traced records");
    for parent in &ours {
        assert!(
            writers.contains(parent),
            "outboxd passes the writer's context on: {parent}"
        );
    }
    for parent in &theirs {
        assert!(
            !writers.contains(parent),
            "Debezium's parent is a span of its own: {parent}"
        );
    }
    let states: Vec<String> = outcome
        .outboxd
        .iter()
        .filter_map(|r| r.header("tracestate"))
        .collect();
    assert_eq!(states.len(), 10);
    assert!(
        states.iter().all(|s| s == "other=x-y,vendor=abc"),
        "{states:?}"
    );
    println!(
        "trace context: writer {writers:?}, Debezium e.g. {:?}",
        theirs.first()
    );
}

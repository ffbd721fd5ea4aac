//! `[kafka.topic_creation]` against the real broker: routed and dead-letter topics
//! created with the configured partitions, replication factor and configs (groups
//! first), the checkpoint topic with its configs, and `outboxd check` reporting a
//! topic whose partition count differs from the configuration, and a checkpoint
//! topic that keeps a long history.

#![allow(clippy::unwrap_used, reason = "in tests an unwrap is an assertion")]

use std::time::Duration;

use outboxd_tests::{alter_topic, consume_until, kafka_admin, unique_name, Outbox};
use rdkafka::admin::{AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;

const OUTBOXD: &str = env!("CARGO_BIN_EXE_outboxd");

fn partitions(topic: &str) -> usize {
    let consumer: BaseConsumer = ClientConfig::new()
        .set(
            "bootstrap.servers",
            &outboxd_tests::services().kafka_brokers,
        )
        .create()
        .unwrap();
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap();
    md.topics()[0].partitions().len()
}

async fn config_of(topic: &str, key: &str) -> Option<String> {
    let described = kafka_admin()
        .describe_configs([&ResourceSpecifier::Topic(topic)], &AdminOptions::new())
        .await
        .unwrap();
    let resource = described.into_iter().next()?.ok()?;
    resource.get(key).and_then(|e| e.value.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_are_created_as_configured_and_checked() {
    let prefix = unique_name("created");
    let dlq = format!("{prefix}.dlq");
    let checkpoints = format!("{prefix}.checkpoints");
    let file = std::env::temp_dir().join(format!("{prefix}.toml"));
    std::fs::write(
        &file,
        format!(
            r#"
[kafka]
dead_letter_topic = "{dlq}"
checkpoint_topic = "{checkpoints}"
checkpoint_topic_configs = {{ "min.compaction.lag.ms" = "1000" }}

[kafka.topic_creation]
enable = true
partitions = 4
replication_factor = 1
configs = {{ "retention.ms" = "7200000" }}
groups = [{{ name = "invoices", include = [".*\\.invoice"], partitions = 2 }}]
"#
        ),
    )
    .unwrap();
    let path = file.display().to_string();
    let template = format!("{prefix}.${{routedByValue}}");
    let outbox = Outbox::on_shared(
        OUTBOXD,
        None,
        &[
            ("OUTBOXD_CONFIG", &path),
            ("OUTBOXD_ROUTING__TOPIC", &template),
        ],
    )
    .await;
    // `init --apply` (in Outbox::on_shared) made the checkpoint and dead-letter topics.
    assert_eq!(partitions(&dlq), 4);
    assert_eq!(partitions(&checkpoints), 1);
    assert_eq!(
        config_of(&checkpoints, "min.compaction.lag.ms")
            .await
            .as_deref(),
        Some("1000")
    );
    // A short history unless configured.
    assert_eq!(
        config_of(&checkpoints, "segment.ms").await.as_deref(),
        Some("600000")
    );
    // Kafka's defaults instead (AlterConfigs replaces every topic config): the relay
    // says once what to change.
    alter_topic(
        &checkpoints,
        &[
            ("cleanup.policy", "compact"),
            ("min.compaction.lag.ms", "1000"),
            ("segment.ms", "604800000"),
        ],
    )
    .await;
    outbox
        .connect()
        .await
        .batch_execute(
            "INSERT INTO outbox (aggregatetype, aggregateid, payload)
             SELECT (ARRAY['order', 'invoice'])[1 + g % 2], 'a-' || g, '{}'
             FROM generate_series(1, 20) g",
        )
        .await
        .unwrap();
    let mut relay = outbox.start("topics");
    let topics = vec![format!("{prefix}.order"), format!("{prefix}.invoice")];
    let records = tokio::task::spawn_blocking({
        let topics = topics.clone();
        move || consume_until(&topics, Duration::from_secs(60), |r| r.len() >= 20)
    })
    .await
    .unwrap();
    assert_eq!(records.len(), 20, "{}", relay.log_text());
    let log = relay.log_text();
    assert_eq!(
        log.matches("checkpoint topic: segment.ms=604800000 and delete.retention.ms=86400000 keep")
            .count(),
        1,
        "{log}"
    );
    assert_eq!(partitions(&topics[0]), 4, "the defaults");
    assert_eq!(partitions(&topics[1]), 2, "the group");
    assert_eq!(
        config_of(&topics[0], "retention.ms").await.as_deref(),
        Some("7200000")
    );
    relay.stop_cleanly();

    // A routed topic made by hand with another partition count: check says so.
    let odd = format!("{prefix}.customer");
    kafka_admin()
        .create_topics(
            [&NewTopic::new(&odd, 3, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        )
        .await
        .unwrap();
    let check = std::process::Command::new(OUTBOXD)
        .arg("check")
        .envs(outbox.env.iter().map(|(k, v)| (k, v)))
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&check.stdout);
    assert!(!check.status.success(), "{shown}");
    assert!(
        shown.contains(&format!(
            "FAIL  topic '{odd}' has the configured partition count: 3 partitions, but \
             kafka.topic_creation gives it 4"
        )),
        "{shown}"
    );
    assert!(
        shown.contains(&format!(
            "ok    topic '{}' has the configured partition count",
            topics[1]
        )),
        "{shown}"
    );
    // Exactly once, an unreplicated checkpoint topic is a risk to say, not a failure.
    let check = std::process::Command::new(OUTBOXD)
        .arg("check")
        .envs(outbox.env.iter().map(|(k, v)| (k, v)))
        .env("OUTBOXD_KAFKA__DELIVERY", "exactly-once")
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&check.stdout);
    assert!(
        shown.contains(&format!(
            "ok    checkpoint topic '{checkpoints}' compacted (1 partition(s), replication factor 1)"
        )),
        "{shown}"
    );
    assert!(
        shown.contains(&format!(
            "warn  checkpoint topic '{checkpoints}' replicated: replication factor 1: exactly once"
        )),
        "{shown}"
    );
    assert!(
        shown.contains(&format!(
            "warn  checkpoint topic '{checkpoints}' keeps a short history: segment.ms=604800000"
        )),
        "{shown}"
    );
    assert!(
        !shown.contains("FAIL  checkpoint"),
        "warnings only: {shown}"
    );
    let names: Vec<String> = [dlq, checkpoints, odd].into_iter().chain(topics).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let _ = kafka_admin()
        .delete_topics(&refs, &AdminOptions::new())
        .await;
    let _ = std::fs::remove_file(file);
}

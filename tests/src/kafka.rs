//! Kafka for tests: topics of a test's own (deleted when the guard drops), and an
//! independent consumer that reads them back.

use std::time::{Duration, Instant};

use rdkafka::admin::{
    AdminClient, AdminOptions, AlterConfig, NewTopic, ResourceSpecifier, TopicReplication,
};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::env::{init_tracing, run_cleanup, services, unique_name};

/// An admin client for the test broker.
pub fn kafka_admin() -> AdminClient<DefaultClientContext> {
    ClientConfig::new()
        .set("bootstrap.servers", &services().kafka_brokers)
        .create()
        .expect("Kafka admin client")
}

/// Sets topic-level configs (the harness creates topics with the broker defaults).
pub async fn alter_topic(topic: &str, entries: &[(&str, &str)]) {
    let mut config = AlterConfig::new(ResourceSpecifier::Topic(topic));
    for (k, v) in entries {
        config = config.set(k, v);
    }
    let results = kafka_admin()
        .alter_configs(
            [&config],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
        )
        .await
        .expect("alter_configs request");
    for r in results {
        r.unwrap_or_else(|e| panic!("altering {topic}: {e:?}"));
    }
}

/// Deletes topics of the test broker (a missing one is not an error).
pub async fn delete_topics(names: &[&str]) {
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    if let Ok(results) = kafka_admin().delete_topics(names, &opts).await {
        for r in results {
            if let Err((topic, code)) = r {
                tracing::debug!(%topic, %code, "topic not deleted");
            }
        }
    }
}

/// Writes one record to the test broker and waits for its acknowledgement (for
/// tests that plant what another program could have written).
pub async fn produce_one(topic: &str, key: &[u8], value: &[u8]) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &services().kafka_brokers)
        .set("acks", "all")
        .create()
        .expect("Kafka producer");
    producer
        .send(
            FutureRecord::to(topic).key(key).payload(value),
            Duration::from_secs(30),
        )
        .await
        .map_err(|(e, _)| e)
        .expect("the record is acknowledged");
}

/// Fails with what to do when the broker does not answer a metadata request.
pub fn require_kafka() {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &services().kafka_brokers)
        .create()
        .expect("Kafka client");
    if let Err(e) = consumer.fetch_metadata(None, Duration::from_secs(15)) {
        panic!(
            "Kafka is not reachable at {}: {e}.\n\
             Start the local services with `scripts/test.sh` (or `scripts/kafka.sh start`).",
            services().kafka_brokers
        );
    }
}

/// Kafka topics of one test, deleted when the guard drops.
#[derive(Debug)]
pub struct TestTopics {
    names: Vec<String>,
}

impl TestTopics {
    /// Creates `count` topics with unique names and `partitions` partitions each.
    pub async fn create(prefix: &str, count: usize, partitions: i32) -> TestTopics {
        let names: Vec<String> = (0..count).map(|_| unique_name(prefix)).collect();
        Self::create_named(&names, partitions).await
    }

    /// Creates topics with the given names (deleted when the guard drops).
    pub async fn create_named(names: &[String], partitions: i32) -> TestTopics {
        init_tracing();
        require_kafka();
        let new_topics: Vec<NewTopic> = names
            .iter()
            .map(|n| NewTopic::new(n, partitions, TopicReplication::Fixed(1)))
            .collect();
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
        for r in kafka_admin()
            .create_topics(&new_topics, &opts)
            .await
            .expect("create_topics request")
        {
            if let Err((topic, code)) = r {
                panic!("creating topic {topic} failed: {code}");
            }
        }
        TestTopics {
            names: names.to_vec(),
        }
    }

    /// The topic names.
    pub fn names(&self) -> &[String] {
        &self.names
    }
}

impl Drop for TestTopics {
    fn drop(&mut self) {
        let names = std::mem::take(&mut self.names);
        run_cleanup(async move {
            let refs: Vec<&str> = names.iter().map(String::as_str).collect();
            let _ = kafka_admin()
                .delete_topics(&refs, &AdminOptions::new())
                .await;
        });
    }
}

/// A record as read back from Kafka by an independent consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumedRecord {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
    /// The record's timestamp (ms since the Unix epoch), when it has one.
    pub timestamp_ms: Option<i64>,
}

impl ConsumedRecord {
    fn from_message(m: &BorrowedMessage<'_>) -> Self {
        let headers = m
            .headers()
            .map(|hs| {
                hs.iter()
                    .map(|h| (h.key.to_owned(), h.value.map(<[u8]>::to_vec)))
                    .collect()
            })
            .unwrap_or_default();
        ConsumedRecord {
            topic: m.topic().to_owned(),
            partition: m.partition(),
            offset: m.offset(),
            key: m.key().map(<[u8]>::to_vec),
            value: m.payload().map(<[u8]>::to_vec),
            headers,
            timestamp_ms: m.timestamp().to_millis(),
        }
    }

    /// The first header with this name, as UTF-8.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| v.as_ref())
            .map(|v| String::from_utf8_lossy(v).into_owned())
    }
}

/// A consumer of its own (no group offsets shared with anything else) subscribed to
/// `topics` from the beginning, reading only committed records (what a consumer of
/// the exactly-once mode must do; at least once every record is committed), with
/// one more `setting`.
fn checker(brokers: &str, topics: &[String], setting: (&str, &str)) -> BaseConsumer {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", unique_name("outboxd_checker"))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .set(setting.0, setting.1)
        .create()
        .expect("Kafka consumer");
    let refs: Vec<&str> = topics.iter().map(String::as_str).collect();
    consumer.subscribe(&refs).expect("subscribe");
    consumer
}

/// Reads `topics` from the beginning with a consumer of its own (no group offsets
/// shared with anything else) until `expected` records arrived or `timeout` passed.
/// `isolation` is `read_committed` or `read_uncommitted`.
pub fn consume_all(
    topics: &[String],
    expected: usize,
    timeout: Duration,
    isolation: &str,
) -> Vec<ConsumedRecord> {
    let consumer = checker(
        &services().kafka_brokers,
        topics,
        ("isolation.level", isolation),
    );
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    while out.len() < expected && Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => out.push(ConsumedRecord::from_message(&m)),
            Some(Err(e)) => tracing::debug!(error = %e, "consumer error while checking"),
            None => {}
        }
    }
    out
}

/// Reads `topics` from the beginning with an independent consumer until `done`
/// says the records so far are enough (checked after every poll) or `timeout`.
pub fn consume_until(
    topics: &[String],
    timeout: Duration,
    done: impl FnMut(&[ConsumedRecord]) -> bool,
) -> Vec<ConsumedRecord> {
    consume_until_from(&services().kafka_brokers, topics, timeout, done)
}

/// [`consume_until`] against other brokers (a test's own).
pub fn consume_until_from(
    brokers: &str,
    topics: &[String],
    timeout: Duration,
    mut done: impl FnMut(&[ConsumedRecord]) -> bool,
) -> Vec<ConsumedRecord> {
    let consumer = checker(
        brokers,
        topics,
        ("topic.metadata.refresh.interval.ms", "1000"),
    );
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    while Instant::now() < deadline {
        let mut got = false;
        while let Some(result) = consumer.poll(Duration::from_millis(100)) {
            match result {
                Ok(m) => {
                    out.push(ConsumedRecord::from_message(&m));
                    got = true;
                }
                Err(e) => tracing::debug!(error = %e, "consumer error while checking"),
            }
            if out.len() % 10_000 == 0 {
                break;
            }
        }
        if (got || out.is_empty()) && done(&out) {
            break;
        }
    }
    out
}

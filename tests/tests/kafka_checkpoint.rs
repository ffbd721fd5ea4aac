//! The checkpoint store against the real broker: a compacted topic created or
//! verified, the latest value per key read back, keys apart, missing and deleted topics
//! told apart from empty ones, and values of aborted Kafka transactions never read.

use std::time::{Duration, Instant};

use outboxd_kafka_sink::checkpoint::{CheckpointError, CheckpointStore};
use outboxd_kafka_sink::{partition_for_key, SinkConfig};
use outboxd_tests::{
    consume_all, init_tracing, kafka_admin, require_kafka, services, unique_name, TestTopics,
};
use rdkafka::admin::{AdminOptions, NewTopic, TopicReplication};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

const TIMEOUT: Duration = Duration::from_secs(15);

fn store(topic: &str) -> CheckpointStore {
    init_tracing();
    require_kafka();
    let config = SinkConfig {
        brokers: services().kafka_brokers.clone(),
        ..SinkConfig::default()
    };
    CheckpointStore::new(&config, topic, TIMEOUT).expect("checkpoint store")
}

/// Deletes a topic the store created when the test ends (also on a panic).
struct Created(String);

impl Drop for Created {
    fn drop(&mut self) {
        let name = self.0.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("cleanup runtime");
            rt.block_on(async {
                let _ = kafka_admin()
                    .delete_topics(&[name.as_str()], &AdminOptions::new())
                    .await;
            });
        })
        .join();
    }
}

/// Whether the broker's metadata lists `topic` (a metadata request for all topics,
/// which creates nothing).
fn topic_exists(topic: &str) -> bool {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &services().kafka_brokers)
        .create()
        .expect("consumer");
    let md = consumer
        .fetch_metadata(None, Duration::from_secs(10))
        .expect("metadata");
    md.topics().iter().any(|t| t.name() == topic)
}

#[tokio::test]
async fn ensure_topic_creates_a_compacted_topic_and_accepts_it_again() {
    let name = unique_name("ckpt_create");
    let _created = Created(name.clone());
    let store = store(&name);
    let topic = store.ensure_topic(3, 1).await.expect("created");
    assert_eq!(topic.partitions, 3);
    assert_eq!(topic.replication_factor, 1);
    assert_eq!(topic.cleanup_policy, "compact");
    // A short history, so that a start-up read stays short however long the relay ran.
    assert_eq!(topic.segment_ms, Some(600_000));
    assert_eq!(topic.delete_retention_ms, Some(300_000));
    assert_eq!(topic.long_history(), None);
    assert!(topic_exists(&name));
    // Existing and compacted: accepted as it is (the partition count is not changed).
    let again = store.ensure_topic(1, 1).await.expect("verified");
    assert_eq!(again, topic);
    assert_eq!(store.check().await.expect("check"), topic);
}

#[tokio::test]
async fn configured_topic_configs_win_over_the_short_history() {
    let name = unique_name("ckpt_configs");
    let _created = Created(name.clone());
    let store = store(&name).with_topic_configs(vec![
        ("segment.ms".into(), "120000".into()),
        ("cleanup.policy".into(), "delete".into()),
    ]);
    let topic = store.ensure_topic(1, 1).await.expect("created");
    assert_eq!(topic.cleanup_policy, "compact");
    assert_eq!(topic.segment_ms, Some(120_000));
    assert_eq!(topic.delete_retention_ms, Some(300_000));
}

#[tokio::test]
async fn a_compacted_topic_with_kafkas_defaults_is_accepted_with_advice() {
    let name = unique_name("ckpt_defaults");
    let _created = Created(name.clone());
    let compacted = NewTopic::new(&name, 1, TopicReplication::Fixed(1))
        .set("cleanup.policy", "compact")
        .set("segment.ms", "604800000");
    for result in kafka_admin()
        .create_topics([&compacted], &AdminOptions::new())
        .await
        .expect("create")
    {
        result.expect("created");
    }
    let store = store(&name);
    let topic = store.ensure_topic(1, 1).await.expect("accepted");
    assert_eq!(topic.segment_ms, Some(604_800_000));
    let advice = topic
        .long_history()
        .expect("advice for a week-long segment");
    assert!(
        advice.contains("segment.ms=604800000")
            && advice.contains(&format!("--entity-name {name}"))
            && advice.contains("--add-config segment.ms=600000,delete.retention.ms=300000"),
        "{advice}"
    );
}

#[tokio::test]
async fn a_topic_that_deletes_old_segments_is_refused_with_what_to_do() {
    let topics = TestTopics::create("ckpt_delete", 1, 1).await;
    let name = &topics.names()[0];
    let store = store(name);
    let checked = store.check().await.expect("check reports, does not refuse");
    assert_eq!(checked.cleanup_policy, "delete");
    assert!(!checked.is_compacted_only());
    let err = store.ensure_topic(1, 1).await.unwrap_err();
    assert!(
        matches!(&err, CheckpointError::NotCompacted { policy, .. } if policy == "delete"),
        "{err}"
    );
    let text = err.to_string();
    assert!(
        text.contains(name.as_str()) && text.contains("cleanup.policy=compact"),
        "{text}"
    );
}

#[tokio::test]
async fn write_then_read_returns_the_latest_of_several_values() {
    let name = unique_name("ckpt_latest");
    let _created = Created(name.clone());
    let store = store(&name);
    store.ensure_topic(3, 1).await.expect("created");
    let key = b"slot-a";
    for i in 1..=5 {
        let value = format!(r#"{{"lsn":"0/{i:X}"}}"#);
        store.write(key, value.as_bytes()).await.expect("write");
    }
    let latest = store.read(key).await.expect("read");
    assert_eq!(latest.as_deref(), Some(&br#"{"lsn":"0/5"}"#[..]));
    // Every write went to the key's murmur2 partition, where reads look.
    let records = consume_all(std::slice::from_ref(&name), 5, TIMEOUT, "read_committed");
    assert_eq!(records.len(), 5);
    let expected = partition_for_key(key, 3);
    assert!(
        records.iter().all(|r| r.partition == expected),
        "{records:?}"
    );
}

#[tokio::test]
async fn two_keys_do_not_interfere() {
    let name = unique_name("ckpt_keys");
    let _created = Created(name.clone());
    let store = store(&name);
    // One partition: both keys' records interleave in it.
    store.ensure_topic(1, 1).await.expect("created");
    store.write(b"a", b"a1").await.unwrap();
    store.write(b"b", b"b1").await.unwrap();
    store.write(b"a", b"a2").await.unwrap();
    store.write(b"ab", b"ab1").await.unwrap();
    assert_eq!(store.read(b"a").await.unwrap().as_deref(), Some(&b"a2"[..]));
    assert_eq!(store.read(b"b").await.unwrap().as_deref(), Some(&b"b1"[..]));
    assert_eq!(
        store.read(b"ab").await.unwrap().as_deref(),
        Some(&b"ab1"[..])
    );
    assert_eq!(store.read(b"c").await.unwrap(), None);
}

#[tokio::test]
async fn missing_and_deleted_topics_are_told_apart_from_empty_ones() {
    let name = unique_name("ckpt_missing");
    let _created = Created(name.clone());
    let store = store(&name);
    let started = Instant::now();
    for (what, err) in [
        ("read", store.read(b"k").await.map(|_| ()).unwrap_err()),
        ("write", store.write(b"k", b"v").await.unwrap_err()),
        ("check", store.check().await.map(|_| ()).unwrap_err()),
    ] {
        assert!(
            matches!(err, CheckpointError::TopicMissing { .. }),
            "{what}: {err}"
        );
        let text = err.to_string();
        assert!(
            text.contains("first start") && text.contains("deleted"),
            "{text}"
        );
    }
    eprintln!(
        "missing topic reported by read, write and check in {:?}",
        started.elapsed()
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(
        !topic_exists(&name),
        "the store must not make the broker auto-create it"
    );

    store.ensure_topic(1, 1).await.expect("created");
    store.write(b"k", b"v").await.expect("write");
    for deleted in kafka_admin()
        .delete_topics(&[name.as_str()], &AdminOptions::new())
        .await
        .expect("delete request")
    {
        deleted.expect("deleted");
    }
    let deadline = Instant::now() + TIMEOUT;
    while topic_exists(&name) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let err = store.read(b"k").await.unwrap_err();
    assert!(matches!(err, CheckpointError::TopicMissing { .. }), "{err}");
}

#[tokio::test]
async fn a_key_never_written_reads_as_none_quickly() {
    let name = unique_name("ckpt_none");
    let _created = Created(name.clone());
    let store = store(&name);
    store.ensure_topic(1, 1).await.expect("created");
    let started = Instant::now();
    assert_eq!(store.read(b"never").await.unwrap(), None);
    let empty = started.elapsed();
    // The same partition with 200 records of other keys: read to its end.
    for i in 0..200 {
        store
            .write(format!("other-{i}").as_bytes(), b"x")
            .await
            .unwrap();
    }
    let started = Instant::now();
    assert_eq!(store.read(b"never").await.unwrap(), None);
    let filled = started.elapsed();
    eprintln!(
        "read of a key never written: {empty:?} on an empty partition, {filled:?} past 200 records"
    );
    assert!(empty < Duration::from_secs(2), "{empty:?}");
    assert!(filled < Duration::from_secs(3), "{filled:?}");
}

/// A transactional producer, as the exactly-once mode will write checkpoints.
fn transactional_producer() -> BaseProducer {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &services().kafka_brokers)
        .set("transactional.id", unique_name("ckpt_txn"))
        .create()
        .expect("transactional producer");
    producer
        .init_transactions(TIMEOUT)
        .expect("init_transactions");
    producer
}

fn produce_in_transaction(producer: &BaseProducer, topic: &str, key: &[u8], value: &[u8]) {
    producer.begin_transaction().expect("begin");
    let record = BaseRecord::<[u8], [u8]>::to(topic)
        .key(key)
        .payload(value)
        .partition(partition_for_key(key, 1));
    producer.send(record).map_err(|(e, _)| e).expect("send");
    producer.flush(TIMEOUT).expect("flush");
}

#[tokio::test]
async fn values_of_aborted_or_open_kafka_transactions_are_not_read() {
    let name = unique_name("ckpt_txn");
    let _created = Created(name.clone());
    let store = store(&name);
    store.ensure_topic(1, 1).await.expect("created");
    store.write(b"k", b"before").await.unwrap();
    let producer = transactional_producer();

    produce_in_transaction(&producer, &name, b"k", b"aborted");
    producer.abort_transaction(TIMEOUT).expect("abort");
    assert_eq!(
        store.read(b"k").await.unwrap().as_deref(),
        Some(&b"before"[..])
    );

    produce_in_transaction(&producer, &name, b"k", b"committed");
    producer.commit_transaction(TIMEOUT).expect("commit");
    assert_eq!(
        store.read(b"k").await.unwrap().as_deref(),
        Some(&b"committed"[..])
    );

    // Written and flushed but not committed, then a newer value written after it:
    // the open transaction holds back the last stable offset, so a read_committed
    // read to it would return the older value as the latest. The read waits for the
    // transaction to settle instead, and says so if it does not in time.
    produce_in_transaction(&producer, &name, b"k", b"open");
    store.write(b"k", b"newer").await.unwrap();
    let impatient = CheckpointStore::new(
        &SinkConfig {
            brokers: services().kafka_brokers.clone(),
            ..SinkConfig::default()
        },
        &name,
        Duration::from_secs(2),
    )
    .expect("checkpoint store");
    let started = Instant::now();
    match impatient.read(b"k").await {
        Err(CheckpointError::Unsettled { .. }) => {}
        other => panic!("an unsettled partition must not read as settled: {other:?}"),
    }
    eprintln!("unsettled read gave up after {:?}", started.elapsed());
    producer.abort_transaction(TIMEOUT).expect("abort");
    assert_eq!(
        store.read(b"k").await.unwrap().as_deref(),
        Some(&b"newer"[..])
    );
}

/// What the exactly-once relay confirms by (docs/architecture.md, "Lost commit
/// markers"): a committed checkpoint counts as visible once the partition's last
/// stable offset reaches an end read after the commit; an open transaction below
/// that end holds it back until it ends.
#[tokio::test]
async fn offsets_show_a_commit_visible_only_once_every_transaction_below_it_settled() {
    let name = unique_name("ckpt_offsets");
    let _created = Created(name.clone());
    let store = store(&name);
    store.ensure_topic(1, 1).await.expect("created");
    store.write(b"k", b"first").await.unwrap();
    let settled = store.offsets(b"k").await.expect("offsets");
    assert_eq!(settled.stable, settled.end, "nothing open: {settled:?}");

    let open = transactional_producer();
    produce_in_transaction(&open, &name, b"other", b"open");
    let committing = transactional_producer();
    produce_in_transaction(&committing, &name, b"k", b"committed");
    committing.commit_transaction(TIMEOUT).expect("commit");
    let after_commit = store.offsets(b"k").await.expect("offsets");
    assert!(
        after_commit.end >= settled.end + 2,
        "both records are below the end (the marker may come later): {after_commit:?}"
    );
    assert!(
        after_commit.stable < after_commit.end,
        "the open transaction holds the stable offset back: {after_commit:?}"
    );
    open.commit_transaction(TIMEOUT).expect("commit");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = store.offsets(b"k").await.expect("offsets");
        if now.stable >= after_commit.end {
            break;
        }
        assert!(Instant::now() < deadline, "never settled: {now:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

//! The Kafka sink against the real broker: ordering and exactly-once reading of many
//! transactions, Java-compatible key placement, records the broker refuses as too
//! large (failure and dead-letter paths), and the in-flight cap under load.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use outboxd_kafka_sink::{
    headers, murmur2, partition_for_key, Completion, KafkaSink, Record, RecordMeta, SinkConfig,
    TxnId,
};
use outboxd_tests::{consume_all, kafka_admin, services, TestTopics};
use rdkafka::admin::{AdminOptions, AlterConfig, ResourceSpecifier};
use tokio::sync::mpsc::UnboundedReceiver;

fn sink_config() -> SinkConfig {
    SinkConfig {
        brokers: services().kafka_brokers.clone(),
        ..SinkConfig::default()
    }
}

/// A record whose LSN and event id are derived from its transaction and index.
fn record(topic: &str, txn: u64, index: u32, key: &str, value: Bytes) -> Record {
    Record {
        topic: topic.to_owned(),
        key: Some(Bytes::from(key.to_owned())),
        value: Some(value),
        headers: vec![("id".into(), Some(Bytes::from(format!("ev-{txn}-{index}"))))],
        timestamp_ms: None,
        partition: None,
        meta: RecordMeta {
            event_id: format!("ev-{txn}-{index}"),
            lsn: 0x2_0000_0000 + txn * 0x1000,
            index,
        },
    }
}

/// Collects `n` completions, keyed by transaction (each transaction exactly once).
async fn completions(
    rx: &mut UnboundedReceiver<Completion>,
    n: usize,
    within: Duration,
) -> BTreeMap<TxnId, Completion> {
    let deadline = tokio::time::Instant::now() + within;
    let mut out = BTreeMap::new();
    while out.len() < n {
        let c = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .unwrap_or_else(|_| panic!("only {} of {n} completions in time", out.len()))
            .expect("completion channel open");
        let txn = c.txn();
        assert!(out.insert(txn, c).is_none(), "second completion for {txn}");
    }
    out
}

/// Sets topic-level configs (the harness creates topics with the broker defaults).
async fn alter_topic(topic: &str, entries: &[(&str, &str)]) {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_transactions_arrive_once_each_in_per_key_order() {
    const TXNS: u64 = 200;
    const PER_TXN: u32 = 50;
    const KEYS: u64 = 20;
    let topics = TestTopics::create("sink_order", 1, 3).await;
    let topic = &topics.names()[0];
    let (sink, mut rx) = KafkaSink::new(sink_config()).unwrap();

    let started = Instant::now();
    let mut sent_per_key: HashMap<String, Vec<String>> = HashMap::new();
    for txn in 0..TXNS {
        for i in 0..PER_TXN {
            let seq = txn * u64::from(PER_TXN) + u64::from(i);
            let key = format!("key-{}", seq % KEYS);
            let value = format!("{txn}:{i}");
            sent_per_key
                .entry(key.clone())
                .or_default()
                .push(value.clone());
            sink.send(TxnId(txn), record(topic, txn, i, &key, Bytes::from(value)))
                .await
                .unwrap();
        }
        sink.end_transaction(TxnId(txn), PER_TXN as usize);
    }
    let done = completions(&mut rx, TXNS as usize, Duration::from_secs(60)).await;
    let elapsed = started.elapsed();
    for (txn, c) in &done {
        assert_eq!(
            c,
            &Completion::Delivered {
                txn: *txn,
                records: PER_TXN as usize,
                dead_lettered: 0
            }
        );
    }
    // Budget is released right after each completion goes out.
    sink.flush(Duration::from_secs(5)).await.unwrap();
    assert_eq!(sink.in_flight(), (0, 0));
    let total = (TXNS * u64::from(PER_TXN)) as usize;
    assert_eq!(sink.stats().records_delivered, total as u64);
    eprintln!("{total} records in {TXNS} transactions delivered in {elapsed:?}");

    let read = consume_all(
        std::slice::from_ref(topic),
        total,
        Duration::from_secs(60),
        "read_committed",
    );
    assert_eq!(read.len(), total, "records read back");
    // Nothing after the expected count: no duplicates hiding behind the count.
    let extra = consume_all(
        std::slice::from_ref(topic),
        total + 1,
        Duration::from_secs(3),
        "read_committed",
    );
    assert_eq!(extra.len(), total, "duplicates in the topic");

    let mut read_per_key: HashMap<String, Vec<String>> = HashMap::new();
    let mut partition_of_key: HashMap<String, i32> = HashMap::new();
    let mut seen = HashSet::new();
    for r in &read {
        let key = String::from_utf8(r.key.clone().unwrap()).unwrap();
        let value = String::from_utf8(r.value.clone().unwrap()).unwrap();
        assert!(seen.insert(value.clone()), "{value} read twice");
        let p = *partition_of_key.entry(key.clone()).or_insert(r.partition);
        assert_eq!(p, r.partition, "{key} on two partitions");
        read_per_key.entry(key).or_default().push(value);
    }
    assert_eq!(read_per_key.len(), KEYS as usize);
    for (key, sent) in &sent_per_key {
        assert_eq!(read_per_key.get(key), Some(sent), "order of {key}");
    }
    let partitions: HashSet<i32> = partition_of_key.values().copied().collect();
    assert_eq!(partitions.len(), 3, "20 keys should use all 3 partitions");
}

/// Partitions of keys on a 6-partition topic as the Java client places them:
/// `Utils.toPositive(Utils.murmur2(key.getBytes(UTF_8))) % 6`.
///
/// Computed once with the real Kafka 4.3.1 client jar (`kafka-clients-4.3.1.jar` in
/// `.cache/kafka/4.3.1/lib`): a small Java class calling
/// `org.apache.kafka.common.utils.Utils.murmur2` and `Utils.toPositive` on each key's
/// UTF-8 bytes, compiled with `javac -cp '.cache/kafka/4.3.1/lib/*'` and run with
/// OpenJDK 17. The murmur2 hash is listed too, for reference.
const JAVA_MURMUR2_PLACEMENT: &[(&str, i32, i32)] = &[
    ("order-1", 1_221_710_326, 4),
    ("customer-42", -542_987_495, 3),
    ("a", -1_563_381_124, 4),
    ("ü-ß", -1_896_451_294, 4),
    // The same aggregate id as serialized by Connect's JsonConverter.
    ("\"order-1\"", -838_367_976, 2),
    ("order-7", 323_129_857, 1),
    ("order-8", -1_988_495_187, 5),
    ("order-10", 1_960_481_346, 0),
    ("b", -1_853_091_852, 2),
];

#[tokio::test]
async fn keys_land_on_the_partitions_a_java_producer_picks() {
    let topics = TestTopics::create("sink_murmur2", 1, 6).await;
    let topic = &topics.names()[0];
    let (sink, mut rx) = KafkaSink::new(sink_config()).unwrap();
    // Several records per key: murmur2_random is deterministic for a keyed record,
    // unlike a sticky or random partitioner.
    let mut count = 0;
    for round in 0..3u32 {
        for (i, (key, _, _)) in JAVA_MURMUR2_PLACEMENT.iter().enumerate() {
            let index = round * 100 + i as u32;
            sink.send(
                TxnId(1),
                record(topic, 1, index, key, Bytes::from_static(b"{}")),
            )
            .await
            .unwrap();
            count += 1;
        }
    }
    sink.end_transaction(TxnId(1), count);
    let done = completions(&mut rx, 1, Duration::from_secs(30)).await;
    assert!(matches!(done[&TxnId(1)], Completion::Delivered { .. }));

    let read = consume_all(
        std::slice::from_ref(topic),
        count,
        Duration::from_secs(30),
        "read_committed",
    );
    assert_eq!(read.len(), count);
    let expected: HashMap<&str, i32> = JAVA_MURMUR2_PLACEMENT
        .iter()
        .map(|(k, _, p)| (*k, *p))
        .collect();
    for r in &read {
        let key = String::from_utf8(r.key.clone().unwrap()).unwrap();
        assert_eq!(
            r.partition,
            expected[key.as_str()],
            "key {key:?}: partition {} but Java places it on {}",
            r.partition,
            expected[key.as_str()]
        );
    }
}

/// The checkpoint store places keys by its own murmur2 (it reads a key's partition
/// without asking a producer): the same placement as Java and the sink's producer.
#[test]
fn the_crates_murmur2_places_keys_as_java_does() {
    for (key, hash, partition) in JAVA_MURMUR2_PLACEMENT {
        assert_eq!(murmur2(key.as_bytes()), *hash, "murmur2 of {key:?}");
        assert_eq!(
            partition_for_key(key.as_bytes(), 6),
            *partition,
            "partition of {key:?}"
        );
    }
}

#[tokio::test]
async fn record_over_the_topic_limit_fails_its_transaction_naming_the_event() {
    let topics = TestTopics::create("sink_toolarge", 1, 1).await;
    let topic = &topics.names()[0];
    alter_topic(topic, &[("max.message.bytes", "10000")]).await;
    let (sink, mut rx) = KafkaSink::new(sink_config()).unwrap();

    sink.send(
        TxnId(1),
        record(topic, 1, 0, "k", Bytes::from_static(b"small")),
    )
    .await
    .unwrap();
    sink.end_transaction(TxnId(1), 1);
    sink.flush(Duration::from_secs(30)).await.unwrap();

    sink.send(
        TxnId(2),
        record(topic, 2, 0, "k", Bytes::from(vec![b'x'; 20_000])),
    )
    .await
    .unwrap();
    sink.end_transaction(TxnId(2), 1);
    let done = completions(&mut rx, 2, Duration::from_secs(30)).await;
    assert!(matches!(
        done[&TxnId(1)],
        Completion::Delivered { records: 1, .. }
    ));
    match &done[&TxnId(2)] {
        Completion::Failed { failure, .. } => {
            let text = failure.to_string();
            assert_eq!(failure.event_id, "ev-2-0");
            assert_eq!(failure.lsn, 0x2_0000_2000);
            assert!(text.contains("event ev-2-0 (LSN 2/2000, #0)"), "{text}");
            assert!(text.contains(topic.as_str()), "{text}");
            assert!(text.contains("MessageSizeTooLarge"), "{text}");
        }
        other => panic!("expected Failed, got {other:?}"),
    }
}

#[tokio::test]
async fn record_over_the_topic_limit_is_dead_lettered_and_the_rest_flows() {
    let topics = TestTopics::create("sink_dlq", 2, 1).await;
    let (topic, dlq) = (&topics.names()[0], &topics.names()[1]);
    alter_topic(topic, &[("max.message.bytes", "10000")]).await;
    let (sink, mut rx) = KafkaSink::new(SinkConfig {
        dead_letter_topic: Some(dlq.clone()),
        ..sink_config()
    })
    .unwrap();

    // Transactions 1 and 3 around a transaction with one record too large for the
    // topic (but not for the dead-letter topic, which has the broker's 1 MB default).
    // Flushed in between so that the big record travels in a batch of its own: the
    // broker rejects whole batches (see
    // `oversized_record_fails_alone_when_message_max_bytes_matches_the_topic` for the
    // producer setting that makes this unnecessary).
    let big = Bytes::from(vec![b'x'; 20_000]);
    for i in 0..5 {
        sink.send(
            TxnId(1),
            record(topic, 1, i, "k1", Bytes::from(format!("1:{i}"))),
        )
        .await
        .unwrap();
    }
    sink.end_transaction(TxnId(1), 5);
    sink.flush(Duration::from_secs(30)).await.unwrap();
    sink.send(TxnId(2), record(topic, 2, 0, "k2", big.clone()))
        .await
        .unwrap();
    sink.end_transaction(TxnId(2), 1);
    sink.flush(Duration::from_secs(30)).await.unwrap();
    for i in 0..5 {
        sink.send(
            TxnId(3),
            record(topic, 3, i, "k1", Bytes::from(format!("3:{i}"))),
        )
        .await
        .unwrap();
    }
    sink.end_transaction(TxnId(3), 5);

    let done = completions(&mut rx, 3, Duration::from_secs(30)).await;
    assert_eq!(
        done[&TxnId(1)],
        Completion::Delivered {
            txn: TxnId(1),
            records: 5,
            dead_lettered: 0
        }
    );
    assert_eq!(
        done[&TxnId(2)],
        Completion::Delivered {
            txn: TxnId(2),
            records: 1,
            dead_lettered: 1
        }
    );
    assert_eq!(
        done[&TxnId(3)],
        Completion::Delivered {
            txn: TxnId(3),
            records: 5,
            dead_lettered: 0
        }
    );

    let main = consume_all(
        std::slice::from_ref(topic),
        10,
        Duration::from_secs(30),
        "read_committed",
    );
    let values: Vec<String> = main
        .iter()
        .map(|r| String::from_utf8(r.value.clone().unwrap()).unwrap())
        .collect();
    assert_eq!(
        values,
        ["1:0", "1:1", "1:2", "1:3", "1:4", "3:0", "3:1", "3:2", "3:3", "3:4"]
    );

    let dead = consume_all(
        std::slice::from_ref(dlq),
        1,
        Duration::from_secs(30),
        "read_committed",
    );
    assert_eq!(dead.len(), 1);
    let d = &dead[0];
    assert_eq!(d.key.as_deref(), Some(&b"k2"[..]));
    assert_eq!(d.value.as_deref(), Some(&big[..]));
    assert_eq!(d.header("id").as_deref(), Some("ev-2-0"));
    assert_eq!(d.header(headers::EVENT_ID).as_deref(), Some("ev-2-0"));
    assert_eq!(d.header(headers::LSN).as_deref(), Some("2/2000"));
    assert_eq!(d.header(headers::INDEX).as_deref(), Some("0"));
    assert_eq!(
        d.header(headers::ORIGINAL_TOPIC).as_deref(),
        Some(topic.as_str())
    );
    let error = d.header(headers::ERROR).unwrap();
    assert!(error.contains("MessageSizeTooLarge"), "{error}");
    assert_eq!(d.header(headers::VALUE_DROPPED), None);
}

#[tokio::test]
async fn record_over_the_producer_limit_is_dead_lettered_without_its_value() {
    // 2 MB against librdkafka's default message.max.bytes (1 MB): refused before it
    // reaches a broker, and too large for the dead-letter topic as well.
    let topics = TestTopics::create("sink_2mb", 2, 1).await;
    let (topic, dlq) = (&topics.names()[0], &topics.names()[1]);
    let (sink, mut rx) = KafkaSink::new(SinkConfig {
        dead_letter_topic: Some(dlq.clone()),
        ..sink_config()
    })
    .unwrap();
    let huge = Bytes::from(vec![b'y'; 2 * 1024 * 1024]);
    sink.send(
        TxnId(1),
        record(topic, 1, 0, "k", Bytes::from_static(b"before")),
    )
    .await
    .unwrap();
    sink.send(TxnId(1), record(topic, 1, 1, "k", huge))
        .await
        .unwrap();
    sink.send(
        TxnId(1),
        record(topic, 1, 2, "k", Bytes::from_static(b"after")),
    )
    .await
    .unwrap();
    sink.end_transaction(TxnId(1), 3);
    let done = completions(&mut rx, 1, Duration::from_secs(30)).await;
    assert_eq!(
        done[&TxnId(1)],
        Completion::Delivered {
            txn: TxnId(1),
            records: 3,
            dead_lettered: 1
        }
    );
    let main = consume_all(
        std::slice::from_ref(topic),
        2,
        Duration::from_secs(30),
        "read_committed",
    );
    let values: Vec<&[u8]> = main.iter().map(|r| r.value.as_deref().unwrap()).collect();
    assert_eq!(values, [&b"before"[..], &b"after"[..]]);
    let dead = consume_all(
        std::slice::from_ref(dlq),
        1,
        Duration::from_secs(30),
        "read_committed",
    );
    assert_eq!(dead.len(), 1);
    let d = &dead[0];
    assert_eq!(d.value, None);
    assert_eq!(d.key.as_deref(), Some(&b"k"[..]));
    assert_eq!(d.header(headers::VALUE_DROPPED).as_deref(), Some("true"));
    assert_eq!(d.header(headers::EVENT_ID).as_deref(), Some("ev-1-1"));
    assert_eq!(d.header(headers::LSN).as_deref(), Some("2/1000"));
    let error = d.header(headers::ERROR).unwrap();
    assert!(error.contains("MessageSizeTooLarge"), "{error}");

    // Without a dead-letter topic the same record fails its transaction, naming it.
    let (plain, mut rx) = KafkaSink::new(sink_config()).unwrap();
    plain
        .send(
            TxnId(9),
            record(topic, 9, 4, "k", Bytes::from(vec![b'y'; 2 * 1024 * 1024])),
        )
        .await
        .unwrap();
    plain.end_transaction(TxnId(9), 1);
    let done = completions(&mut rx, 1, Duration::from_secs(30)).await;
    match &done[&TxnId(9)] {
        Completion::Failed { failure, .. } => {
            assert!(
                failure
                    .to_string()
                    .starts_with("event ev-9-4 (LSN 2/9000, #4) to topic "),
                "{failure}"
            );
        }
        other => panic!("expected Failed, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_cap_holds_under_load() {
    const RECORDS: u32 = 20_000;
    const CAP: usize = 100;
    let topics = TestTopics::create("sink_cap", 1, 3).await;
    let topic = &topics.names()[0];
    let (sink, mut rx) = KafkaSink::new(SinkConfig {
        max_in_flight_records: CAP,
        ..sink_config()
    })
    .unwrap();
    let sink = Arc::new(sink);

    // An independent sampler, so that the cap is observed between sends too.
    let stop = Arc::new(AtomicBool::new(false));
    let max_sampled = Arc::new(AtomicUsize::new(0));
    let samples = Arc::new(AtomicUsize::new(0));
    let sampler = {
        let (sink, stop, max_sampled, samples) = (
            Arc::clone(&sink),
            Arc::clone(&stop),
            Arc::clone(&max_sampled),
            Arc::clone(&samples),
        );
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let records = sink.in_flight().0;
                max_sampled.fetch_max(records, Ordering::Relaxed);
                samples.fetch_add(1, Ordering::Relaxed);
                tokio::task::yield_now().await;
            }
        })
    };

    let started = Instant::now();
    let mut max_after_send = 0;
    for i in 0..RECORDS {
        let txn = u64::from(i / 100);
        let key = format!("k{}", i % 50);
        sink.send(
            TxnId(txn),
            record(topic, txn, i % 100, &key, Bytes::from(vec![b'z'; 200])),
        )
        .await
        .unwrap();
        let records = sink.in_flight().0;
        assert!(records <= CAP, "{records} in flight after send {i}");
        max_after_send = max_after_send.max(records);
        if i % 100 == 99 {
            sink.end_transaction(TxnId(txn), 100);
        }
    }
    let txns = (RECORDS / 100) as usize;
    let done = completions(&mut rx, txns, Duration::from_secs(60)).await;
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    sampler.await.unwrap();
    assert!(done
        .values()
        .all(|c| matches!(c, Completion::Delivered { records: 100, .. })));
    let max_sampled = max_sampled.load(Ordering::Relaxed);
    eprintln!(
        "{RECORDS} records in {elapsed:?}; max in flight after a send {max_after_send}, \
         sampled {max_sampled} over {} samples",
        samples.load(Ordering::Relaxed)
    );
    assert!(max_sampled <= CAP, "sampled {max_sampled} in flight");
    // The cap was actually reached: the test exercises the waiting path.
    assert_eq!(max_after_send, CAP);
    assert_eq!(sink.stats().records_delivered, u64::from(RECORDS));
    let read = consume_all(
        std::slice::from_ref(topic),
        RECORDS as usize,
        Duration::from_secs(60),
        "read_committed",
    );
    assert_eq!(read.len(), RECORDS as usize);
}

/// A topic's `max.message.bytes` limits whole record batches, and librdkafka does not
/// split a rejected batch: with the producer's default `message.max.bytes` (1 MB) and
/// a topic limit of 10 kB, one oversized record fails every record batched with it
/// (seen here: all 30 records of this test). With `message.max.bytes` matched to the
/// topic, the producer refuses the oversized record alone at enqueue and keeps its
/// batches under the limit, so its neighbours flow.
#[tokio::test]
async fn oversized_record_fails_alone_when_message_max_bytes_matches_the_topic() {
    let topics = TestTopics::create("sink_batch", 1, 1).await;
    let topic = &topics.names()[0];
    alter_topic(topic, &[("max.message.bytes", "10000")]).await;
    let (sink, mut rx) = KafkaSink::new(SinkConfig {
        properties: vec![("message.max.bytes".into(), "10000".into())],
        ..sink_config()
    })
    .unwrap();
    // Back to back, no flush: the first records pile up in one batch while the
    // producer connects, and 29 × 900 bytes is well over the topic limit.
    for txn in 0..30u64 {
        let value = if txn == 15 {
            Bytes::from(vec![b'x'; 20_000])
        } else {
            Bytes::from(vec![b'y'; 900])
        };
        sink.send(TxnId(txn), record(topic, txn, 0, "k", value))
            .await
            .unwrap();
        sink.end_transaction(TxnId(txn), 1);
    }
    let done = completions(&mut rx, 30, Duration::from_secs(30)).await;
    for (txn, c) in &done {
        if txn.0 == 15 {
            match c {
                Completion::Failed { failure, .. } => {
                    assert_eq!(failure.event_id, "ev-15-0");
                    assert!(failure.reason.contains("message.max.bytes"), "{failure}");
                }
                other => panic!("expected Failed, got {other:?}"),
            }
        } else {
            assert!(
                matches!(c, Completion::Delivered { records: 1, .. }),
                "{c:?}"
            );
        }
    }
    let read = consume_all(
        std::slice::from_ref(topic),
        29,
        Duration::from_secs(30),
        "read_committed",
    );
    assert_eq!(read.len(), 29);
}

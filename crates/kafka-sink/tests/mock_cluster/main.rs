//! The sink against librdkafka's in-process mock cluster: the fault-injection cases
//! that a real broker cannot be made to produce on demand (refused produce requests,
//! a broker that goes away, sequence desynchronization). The real-broker behaviour
//! (ordering, partitioning, size limits) is tested in `tests/tests/kafka_sink/main.rs`.

use std::time::{Duration, Instant};

use bytes::Bytes;
use outboxd_kafka_sink::{
    headers, Completion, KafkaSink, Record, RecordMeta, SinkConfig, SinkError, TxnId,
};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::mpsc::UnboundedReceiver;

mod dead_letter;

type Mock = MockCluster<'static, DefaultProducerContext>;

fn mock_with_topics(topics: &[(&str, i32)]) -> Mock {
    let mock = MockCluster::new(1).expect("mock cluster");
    for (topic, partitions) in topics {
        mock.create_topic(topic, *partitions, 1)
            .expect("mock topic");
    }
    mock
}

fn config(mock: &Mock, properties: &[(&str, &str)]) -> SinkConfig {
    SinkConfig {
        brokers: mock.bootstrap_servers(),
        properties: properties
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        ..SinkConfig::default()
    }
}

fn record(topic: &str, txn: u64, index: u32) -> Record {
    Record {
        topic: topic.to_owned(),
        key: Some(Bytes::from(format!("key-{}", index % 3))),
        value: Some(Bytes::from(format!("value {txn}/{index}"))),
        headers: vec![("id".into(), Some(Bytes::from(format!("e-{txn}-{index}"))))],
        timestamp_ms: None,
        partition: None,
        meta: RecordMeta {
            event_id: format!("e-{txn}-{index}"),
            lsn: 0x1_0000_0000 + txn * 0x100,
            index,
        },
    }
}

async fn next(rx: &mut UnboundedReceiver<Completion>, within: Duration) -> Completion {
    match tokio::time::timeout(within, rx.recv()).await {
        Ok(Some(c)) => c,
        Ok(None) => panic!("completion channel closed"),
        Err(_) => panic!("no completion within {within:?}"),
    }
}

/// Reads every record of `topic` on the mock cluster (assigned, no consumer group).
fn read_topic(mock: &Mock, topic: &str, expected: usize) -> Vec<rdkafka::message::OwnedMessage> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", mock.bootstrap_servers())
        .set("group.id", "unused")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    let mut tpl = TopicPartitionList::new();
    for t in md.topics() {
        for p in t.partitions() {
            tpl.add_partition_offset(topic, p.id(), Offset::Beginning)
                .expect("partition");
        }
    }
    consumer.assign(&tpl).expect("assign");
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut out = Vec::new();
    while out.len() < expected && Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            out.push(m.detach());
        }
    }
    out
}

fn header(m: &rdkafka::message::OwnedMessage, name: &str) -> Option<String> {
    let headers = m.headers()?;
    headers
        .iter()
        .find(|h| h.key == name)
        .and_then(|h| h.value)
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

/// The completion of transaction `txn` with `records` records, `dead_lettered` of
/// them in the dead-letter topic.
fn delivered(txn: u64, records: usize, dead_lettered: usize) -> Completion {
    Completion::Delivered {
        txn: TxnId(txn),
        records,
        dead_lettered,
    }
}

#[tokio::test]
async fn empty_transaction_completes_at_once() {
    let mock = mock_with_topics(&[]);
    let (sink, mut rx) = KafkaSink::new(config(&mock, &[])).unwrap();
    sink.end_transaction(TxnId(7), 0);
    // No await in between: the completion is in the channel when end_transaction
    // returns.
    assert_eq!(rx.try_recv().unwrap(), delivered(7, 0, 0));
}

#[tokio::test]
async fn completion_waits_for_end_transaction_even_when_all_acks_are_in() {
    let mock = mock_with_topics(&[("orders", 3)]);
    let (sink, mut rx) = KafkaSink::new(config(&mock, &[])).unwrap();
    for i in 0..5 {
        sink.send(TxnId(1), record("orders", 1, i)).await.unwrap();
    }
    sink.flush(Duration::from_secs(10)).await.unwrap();
    assert_eq!(sink.in_flight(), (0, 0));
    assert_eq!(sink.stats().records_delivered, 5);
    // Every record is acknowledged, but the transaction may still get more records.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(rx.try_recv().is_err(), "completed before end_transaction");
    sink.end_transaction(TxnId(1), 5);
    assert_eq!(rx.try_recv().unwrap(), delivered(1, 5, 0));
}

#[tokio::test]
async fn transactions_complete_independently() {
    let mock = mock_with_topics(&[("orders", 3)]);
    let (sink, mut rx) = KafkaSink::new(config(&mock, &[])).unwrap();
    for txn in 1..=20u64 {
        for i in 0..(txn as u32 % 4) {
            sink.send(TxnId(txn), record("orders", txn, i))
                .await
                .unwrap();
        }
        sink.end_transaction(TxnId(txn), txn as usize % 4);
    }
    let mut seen = Vec::new();
    for _ in 1..=20 {
        match next(&mut rx, Duration::from_secs(10)).await {
            Completion::Delivered { txn, records, .. } => {
                assert_eq!(records, txn.0 as usize % 4);
                seen.push(txn.0);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    seen.sort_unstable();
    assert_eq!(seen, (1..=20).collect::<Vec<_>>());
    // Budget is released right after the completion is sent.
    sink.flush(Duration::from_secs(1)).await.unwrap();
    assert_eq!(sink.in_flight(), (0, 0));
}

#[tokio::test]
async fn unreachable_broker_times_the_record_out_and_fails_the_transaction() {
    let mock = mock_with_topics(&[("orders", 1)]);
    mock.broker_down(-1).unwrap();
    let (sink, mut rx) = KafkaSink::new(config(&mock, &[("message.timeout.ms", "1500")])).unwrap();
    for i in 0..3 {
        sink.send(TxnId(3), record("orders", 3, i)).await.unwrap();
    }
    sink.end_transaction(TxnId(3), 3);
    match next(&mut rx, Duration::from_secs(15)).await {
        Completion::Failed { txn, failure } => {
            assert_eq!(txn, TxnId(3));
            assert!(failure.event_id.starts_with("e-3-"), "{failure}");
            assert_eq!(failure.topic, "orders");
            assert!(failure.reason.contains("MessageTimedOut"), "{failure}");
            assert!(failure.to_string().contains("LSN 1/300"), "{failure}");
        }
        other => panic!("expected Failed, got {other:?}"),
    }
    // Budget is released right after the completion is sent.
    sink.flush(Duration::from_secs(1)).await.unwrap();
    assert_eq!(sink.in_flight(), (0, 0));
    assert_eq!(sink.stats().delivery_errors, 3);
    // Exactly one completion per transaction, however many of its records fail.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(rx.try_recv().is_err());
}

#[tokio::test]
async fn timeouts_are_not_dead_lettered() {
    // A transient failure must stop the relay (a restart resends), not divert the
    // record: the dead-letter topic is for records that can never be delivered.
    // The record's partition has no leader; the dead-letter topic works.
    let mock = mock_with_topics(&[("orders", 1), ("dlq", 1)]);
    mock.partition_leader("orders", 0, None).unwrap();
    // Long enough for the first record's metadata round trips on a busy machine (1 s
    // was not, once in CI).
    let (sink, mut rx) = KafkaSink::new(SinkConfig {
        dead_letter_topic: Some("dlq".into()),
        ..config(&mock, &[("message.timeout.ms", "3000")])
    })
    .unwrap();
    // The dead-letter topic is usable.
    sink.send(TxnId(1), record("dlq", 1, 0)).await.unwrap();
    sink.end_transaction(TxnId(1), 1);
    let c = next(&mut rx, Duration::from_secs(10)).await;
    assert_eq!(c, delivered(1, 1, 0));
    sink.send(TxnId(2), record("orders", 2, 0)).await.unwrap();
    sink.end_transaction(TxnId(2), 1);
    let c = next(&mut rx, Duration::from_secs(15)).await;
    assert!(
        matches!(&c, Completion::Failed { failure, .. }
            if failure.reason.contains("MessageTimedOut") && !failure.reason.contains("dead-letter")),
        "{c:?}"
    );
    assert_eq!(sink.stats().dead_lettered, 0);
    // And the sink stopped: nothing younger goes out before the resend.
    assert!(matches!(
        sink.send(TxnId(3), record("dlq", 3, 0)).await,
        Err(SinkError::Stopped(_))
    ));
}

#[tokio::test]
async fn in_flight_caps_hold_while_the_broker_is_slow() {
    let mock = mock_with_topics(&[("orders", 3)]);
    mock.broker_round_trip_time(-1, Duration::from_millis(50))
        .unwrap();
    let (sink, mut rx) = KafkaSink::new(SinkConfig {
        max_in_flight_records: 10,
        max_in_flight_bytes: CAP,
        ..config(&mock, &[])
    })
    .unwrap();
    const CAP: usize = 3000;
    let mut max_seen = (0, 0);
    let mut sizes = (usize::MAX, 0);
    for i in 0..300 {
        let mut r = record("orders", 1, i);
        r.value = Some(Bytes::from(vec![b'v'; 150]));
        let size = r.in_flight_size();
        sizes = (sizes.0.min(size), sizes.1.max(size));
        sink.send(TxnId(1), r).await.unwrap();
        let (records, bytes) = sink.in_flight();
        assert!(records <= 10, "{records} records in flight");
        assert!(bytes <= CAP, "{bytes} bytes in flight");
        max_seen = (max_seen.0.max(records), max_seen.1.max(bytes));
    }
    // Each record counts its payload plus the per-record overhead (~430 bytes): the
    // byte cap (6 or 7 records) binds before the record cap, and is actually reached.
    assert!(
        (CAP / sizes.1..=CAP / sizes.0).contains(&max_seen.0) && max_seen.0 < 10,
        "{max_seen:?}, record sizes {sizes:?}"
    );
    sink.end_transaction(TxnId(1), 300);
    assert!(matches!(
        next(&mut rx, Duration::from_secs(30)).await,
        Completion::Delivered { records: 300, .. }
    ));
}

#[tokio::test]
async fn send_waits_instead_of_buffering_when_the_broker_is_down() {
    let mock = mock_with_topics(&[("orders", 1)]);
    mock.broker_down(-1).unwrap();
    let (sink, _rx) = KafkaSink::new(SinkConfig {
        max_in_flight_records: 5,
        ..config(&mock, &[])
    })
    .unwrap();
    for i in 0..5 {
        sink.send(TxnId(1), record("orders", 1, i)).await.unwrap();
    }
    let blocked = tokio::time::timeout(
        Duration::from_millis(500),
        sink.send(TxnId(1), record("orders", 1, 5)),
    )
    .await;
    assert!(blocked.is_err(), "send went past the in-flight cap");
    assert_eq!(sink.in_flight().0, 5);
    // The cancelled send left nothing behind.
    let flushed = sink.flush(Duration::from_millis(200)).await;
    assert!(
        matches!(flushed, Err(SinkError::Timeout { records: 5, .. })),
        "{flushed:?}"
    );
    // The broker comes back: everything goes through, and the cap admits more.
    mock.broker_up(-1).unwrap();
    sink.send(TxnId(1), record("orders", 1, 5)).await.unwrap();
    sink.flush(Duration::from_secs(20)).await.unwrap();
    assert_eq!(sink.stats().records_delivered, 6);
}

#[tokio::test]
async fn misuse_is_reported() {
    let mock = mock_with_topics(&[("orders", 1)]);
    let (sink, mut rx) = KafkaSink::new(config(&mock, &[])).unwrap();
    sink.end_transaction(TxnId(1), 0);
    assert!(matches!(rx.try_recv(), Ok(Completion::Delivered { .. })));
    sink.send(TxnId(2), record("orders", 2, 0)).await.unwrap();
    sink.end_transaction(TxnId(2), 1);
    let err = sink
        .send(TxnId(2), record("orders", 2, 1))
        .await
        .unwrap_err();
    assert!(matches!(err, SinkError::Usage(_)), "{err}");
    assert!(matches!(
        next(&mut rx, Duration::from_secs(10)).await,
        Completion::Delivered { records: 1, .. }
    ));
    // A declared count that disagrees with what was sent fails the transaction.
    sink.send(TxnId(3), record("orders", 3, 0)).await.unwrap();
    sink.end_transaction(TxnId(3), 2);
    match next(&mut rx, Duration::from_secs(10)).await {
        Completion::Failed { txn, failure } => {
            assert_eq!(txn, TxnId(3));
            assert!(failure.reason.contains("declared 2"), "{}", failure.reason);
        }
        other => panic!("expected Failed, got {other:?}"),
    }
    sink.flush(Duration::from_secs(10)).await.unwrap();
    assert!(rx.try_recv().is_err());
}

#[tokio::test]
async fn fatal_producer_error_stops_sending() {
    let mock = mock_with_topics(&[("orders", 1)]);
    let (sink, mut rx) = KafkaSink::new(config(&mock, &[])).unwrap();
    sink.send(TxnId(1), record("orders", 1, 0)).await.unwrap();
    sink.end_transaction(TxnId(1), 1);
    next(&mut rx, Duration::from_secs(10)).await;
    assert_eq!(sink.fatal_error(), None);
    // The head-of-line request failing with a sequence error means the producer and
    // the broker disagree on what was written: librdkafka gives up for good.
    mock.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER],
    );
    sink.send(TxnId(2), record("orders", 2, 0)).await.unwrap();
    sink.end_transaction(TxnId(2), 1);
    assert!(matches!(
        next(&mut rx, Duration::from_secs(10)).await,
        Completion::Failed { txn: TxnId(2), .. }
    ));
    let fatal = sink.fatal_error().expect("fatal error recorded");
    assert!(fatal.contains("sequence"), "{fatal}");
    let err = sink
        .send(TxnId(3), record("orders", 3, 0))
        .await
        .unwrap_err();
    assert!(matches!(err, SinkError::Fatal(_)), "{err}");
    // Budget is released right after the completion is sent.
    sink.flush(Duration::from_secs(1)).await.unwrap();
    assert_eq!(sink.in_flight(), (0, 0));
}

#[tokio::test]
async fn check_reports_brokers_and_topic_existence() {
    let mock = mock_with_topics(&[("orders", 3), ("dlq", 1)]);
    let (sink, _rx) = KafkaSink::new(SinkConfig {
        dead_letter_topic: Some("dlq".into()),
        ..config(&mock, &[])
    })
    .unwrap();
    let check = sink
        .check(&["orders".into(), "nope".into()], Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(check.brokers.len(), 1);
    let names: Vec<_> = check.topics.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["orders", "nope", "dlq"]);
    assert!(check.topics[0].exists);
    assert_eq!(check.topics[0].partitions, 3);
    assert_eq!(check.missing_topics(), ["nope"]);
}

#[tokio::test]
async fn check_fails_when_no_broker_answers() {
    let mock = mock_with_topics(&[]);
    mock.broker_down(-1).unwrap();
    let (sink, _rx) = KafkaSink::new(config(&mock, &[])).unwrap();
    let started = Instant::now();
    let err = sink
        .check(&["orders".into()], Duration::from_millis(800))
        .await
        .unwrap_err();
    assert!(
        matches!(err, SinkError::Kafka(_) | SinkError::Unreachable { .. }),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn invalid_properties_are_config_errors() {
    let bad = SinkConfig {
        properties: vec![("acks".into(), "sometimes".into())],
        ..SinkConfig::default()
    };
    let err = KafkaSink::new(bad).unwrap_err();
    assert!(matches!(err, SinkError::Config(_)), "{err}");
    assert!(err.to_string().contains("acks"), "{err}");

    let unknown = SinkConfig {
        properties: vec![("no.such.property".into(), "x".into())],
        ..SinkConfig::default()
    };
    assert!(matches!(KafkaSink::new(unknown), Err(SinkError::Config(_))));
}

#[test]
fn sink_and_its_futures_can_move_between_threads() {
    fn send_sync<T: Send + Sync>(_: &T) {}
    fn send<T: Send>(_: &T) {}
    let (sink, _rx) = KafkaSink::new(SinkConfig::default()).unwrap();
    send_sync(&sink);
    send(&sink.send(TxnId(1), Record::default()));
    send(&sink.flush(Duration::ZERO));
    send(&sink.check(&[], Duration::ZERO));
}

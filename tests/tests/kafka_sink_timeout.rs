//! The Kafka sink after a delivery timeout (at least once), against the real broker:
//! once a record timed out, nothing younger may reach Kafka before the caller resends
//! it, or a key's events would arrive out of order.

use std::time::Duration;

use bytes::Bytes;
use outboxd_kafka_sink::{Completion, KafkaSink, Record, RecordMeta, SinkConfig, SinkError, TxnId};
use outboxd_tests::proxy::{FaultProxy, Mode};
use outboxd_tests::{consume_all, services, TestTopics};
use tokio::sync::mpsc::UnboundedReceiver;

fn record(topic: &str, txn: u64) -> Record {
    Record {
        topic: topic.to_owned(),
        key: Some(Bytes::from_static(b"order-1")),
        value: Some(Bytes::from(format!("event {txn}"))),
        meta: RecordMeta {
            event_id: format!("ev-{txn}"),
            lsn: 0x3_0000_0000 + txn * 0x1000,
            index: 0,
        },
        ..Record::default()
    }
}

async fn next(rx: &mut UnboundedReceiver<Completion>) -> Completion {
    tokio::time::timeout(Duration::from_secs(30), rx.recv())
        .await
        .expect("a completion in time")
        .expect("completion channel open")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_delivery_timeout_nothing_younger_reaches_kafka() {
    let topics = TestTopics::create("sink_timeout", 1, 1).await;
    let topic = &topics.names()[0];
    let broker = services()
        .kafka_brokers
        .split(',')
        .next()
        .and_then(|b| b.parse().ok())
        .expect("a broker address");
    // The broker is unreachable (a partition) until the first record timed out.
    let proxy = FaultProxy::start(broker);
    proxy.set_mode(Mode::Blackhole);
    let (sink, mut rx) = KafkaSink::new(SinkConfig {
        brokers: proxy.addr().to_string(),
        properties: vec![("message.timeout.ms".into(), "3000".into())],
        ..SinkConfig::default()
    })
    .expect("sink");
    sink.send(TxnId(1), record(topic, 1)).await.expect("send 1");
    sink.end_transaction(TxnId(1), 1);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    sink.send(TxnId(2), record(topic, 2)).await.expect("send 2");
    sink.end_transaction(TxnId(2), 1);

    let first = next(&mut rx).await;
    let Completion::Failed { txn, failure } = &first else {
        panic!("the first record must time out: {first:?}");
    };
    assert_eq!((*txn, failure.transient), (TxnId(1), true), "{failure}");
    // The broker is back: the record queued behind the timed-out one must not go
    // out, and nothing new is taken.
    proxy.set_mode(Mode::Pass);
    let second = next(&mut rx).await;
    assert!(
        matches!(second, Completion::Failed { txn: TxnId(2), .. }),
        "the younger record must be dropped, not delivered: {second:?}"
    );
    let refused = sink.send(TxnId(3), record(topic, 3)).await;
    assert!(
        matches!(&refused, Err(SinkError::Stopped(f)) if f.event_id == "ev-1"),
        "{refused:?}"
    );
    let topic_names = topics.names().to_vec();
    let landed = tokio::task::spawn_blocking(move || {
        consume_all(&topic_names, 1, Duration::from_secs(5), "read_uncommitted")
    })
    .await
    .expect("consumer");
    assert!(
        landed.is_empty(),
        "{} record(s) reached Kafka",
        landed.len()
    );
}

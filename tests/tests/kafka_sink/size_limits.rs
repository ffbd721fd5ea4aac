//! Records over a size limit, the topic's or the producer's: their transaction
//! fails naming the event, or they go to the dead-letter topic (without their value
//! when the producer refused them) and the rest flows.

use super::*;

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

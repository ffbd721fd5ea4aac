//! Records the broker or the producer refuses: without a dead-letter topic their
//! transaction fails; with one they are diverted (without their value when too
//! large) and the rest keeps flowing.

use super::*;

#[tokio::test]
async fn record_refused_by_the_broker_fails_without_dead_letter_topic() {
    let mock = mock_with_topics(&[("orders", 1)]);
    let (sink, mut rx) = KafkaSink::new(config(&mock, &[])).unwrap();
    // Warm up so that the next Produce request is the one carrying our record.
    sink.send(TxnId(1), record("orders", 1, 0)).await.unwrap();
    sink.end_transaction(TxnId(1), 1);
    assert!(matches!(
        next(&mut rx, Duration::from_secs(10)).await,
        Completion::Delivered { .. }
    ));
    mock.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE],
    );
    sink.send(TxnId(2), record("orders", 2, 0)).await.unwrap();
    sink.end_transaction(TxnId(2), 1);
    match next(&mut rx, Duration::from_secs(10)).await {
        Completion::Failed { txn, failure } => {
            assert_eq!(txn, TxnId(2));
            assert_eq!(failure.event_id, "e-2-0");
            assert!(failure.reason.contains("MessageSizeTooLarge"), "{failure}");
        }
        other => panic!("expected Failed, got {other:?}"),
    }
}

#[tokio::test]
async fn record_refused_by_the_broker_goes_to_the_dead_letter_topic() {
    let mock = mock_with_topics(&[("orders", 1), ("dlq", 1)]);
    let (sink, mut rx) = KafkaSink::new(SinkConfig {
        dead_letter_topic: Some("dlq".into()),
        ..config(&mock, &[])
    })
    .unwrap();
    sink.send(TxnId(1), record("orders", 1, 0)).await.unwrap();
    sink.end_transaction(TxnId(1), 1);
    assert!(matches!(
        next(&mut rx, Duration::from_secs(10)).await,
        Completion::Delivered { .. }
    ));
    // Only the next Produce request (the original record's) fails; the dead-letter
    // record goes in a later request and is accepted.
    mock.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_INVALID_RECORD],
    );
    let mut rec = record("orders", 2, 4);
    rec.timestamp_ms = Some(1_700_000_000_000);
    sink.send(TxnId(2), rec).await.unwrap();
    sink.end_transaction(TxnId(2), 1);
    assert_eq!(
        next(&mut rx, Duration::from_secs(10)).await,
        delivered(2, 1, 1)
    );
    let stats = sink.stats();
    assert_eq!(stats.dead_lettered, 1);
    assert_eq!(stats.records_delivered, 1);
    assert_eq!(stats.delivery_errors, 1);

    let dead = read_topic(&mock, "dlq", 1);
    assert_eq!(dead.len(), 1);
    let m = &dead[0];
    assert_eq!(m.key(), Some(&b"key-1"[..]));
    assert_eq!(m.payload(), Some(&b"value 2/4"[..]));
    assert_eq!(m.timestamp().to_millis(), Some(1_700_000_000_000));
    assert_eq!(header(m, "id").as_deref(), Some("e-2-4"));
    assert_eq!(header(m, headers::EVENT_ID).as_deref(), Some("e-2-4"));
    assert_eq!(
        header(m, headers::ORIGINAL_TOPIC).as_deref(),
        Some("orders")
    );
    assert_eq!(header(m, headers::LSN).as_deref(), Some("1/200"));
    assert_eq!(header(m, headers::INDEX).as_deref(), Some("4"));
    let error = header(m, headers::ERROR).unwrap();
    assert!(error.contains("InvalidRecord"), "{error}");
    assert_eq!(header(m, headers::VALUE_DROPPED), None);
}

#[tokio::test]
async fn dead_letter_failure_fails_the_transaction() {
    let mock = mock_with_topics(&[("orders", 1), ("dlq", 1)]);
    let (sink, mut rx) = KafkaSink::new(SinkConfig {
        dead_letter_topic: Some("dlq".into()),
        ..config(&mock, &[])
    })
    .unwrap();
    sink.send(TxnId(1), record("orders", 1, 0)).await.unwrap();
    sink.end_transaction(TxnId(1), 1);
    next(&mut rx, Duration::from_secs(10)).await;
    // The original and the dead-letter attempt both get refused.
    mock.request_errors(
        RDKafkaApiKey::Produce,
        &[
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_INVALID_RECORD,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_POLICY_VIOLATION,
        ],
    );
    sink.send(TxnId(2), record("orders", 2, 0)).await.unwrap();
    sink.end_transaction(TxnId(2), 1);
    match next(&mut rx, Duration::from_secs(10)).await {
        Completion::Failed { txn, failure } => {
            assert_eq!(txn, TxnId(2));
            assert_eq!(failure.topic, "orders");
            assert!(failure.reason.contains("InvalidRecord"), "{failure}");
            assert!(failure.reason.contains("PolicyViolation"), "{failure}");
            assert!(failure.reason.contains("dlq"), "{failure}");
        }
        other => panic!("expected Failed, got {other:?}"),
    }
    assert_eq!(sink.stats().dead_lettered, 0);
}

#[tokio::test]
async fn record_too_large_for_the_producer_fails_via_completion_not_send() {
    let mock = mock_with_topics(&[("orders", 1)]);
    let (sink, mut rx) = KafkaSink::new(config(&mock, &[("message.max.bytes", "1000")])).unwrap();
    let mut big = record("orders", 5, 1);
    big.value = Some(Bytes::from(vec![b'x'; 5000]));
    sink.send(TxnId(5), record("orders", 5, 0)).await.unwrap();
    sink.send(TxnId(5), big).await.unwrap();
    sink.send(TxnId(5), record("orders", 5, 2)).await.unwrap();
    sink.end_transaction(TxnId(5), 3);
    match next(&mut rx, Duration::from_secs(10)).await {
        Completion::Failed { txn, failure } => {
            assert_eq!(txn, TxnId(5));
            assert_eq!((failure.event_id.as_str(), failure.index), ("e-5-1", 1));
            assert!(failure.reason.contains("MessageSizeTooLarge"), "{failure}");
        }
        other => panic!("expected Failed, got {other:?}"),
    }
    sink.flush(Duration::from_secs(10)).await.unwrap();
    assert!(
        rx.try_recv().is_err(),
        "a second completion for the failed txn"
    );
}

#[tokio::test]
async fn record_too_large_for_the_producer_is_dead_lettered_without_its_value() {
    let mock = mock_with_topics(&[("orders", 1), ("dlq", 1)]);
    let (sink, mut rx) = KafkaSink::new(SinkConfig {
        dead_letter_topic: Some("dlq".into()),
        ..config(&mock, &[("message.max.bytes", "1000")])
    })
    .unwrap();
    let mut big = record("orders", 6, 1);
    big.value = Some(Bytes::from(vec![b'x'; 5000]));
    sink.send(TxnId(6), record("orders", 6, 0)).await.unwrap();
    sink.send(TxnId(6), big).await.unwrap();
    sink.send(TxnId(6), record("orders", 6, 2)).await.unwrap();
    sink.end_transaction(TxnId(6), 3);
    assert_eq!(
        next(&mut rx, Duration::from_secs(10)).await,
        delivered(6, 3, 1)
    );
    let dead = read_topic(&mock, "dlq", 1);
    assert_eq!(dead.len(), 1);
    let m = &dead[0];
    assert_eq!(m.payload(), None);
    assert_eq!(m.key(), Some(&b"key-1"[..]));
    assert_eq!(header(m, headers::VALUE_DROPPED).as_deref(), Some("true"));
    assert_eq!(header(m, headers::EVENT_ID).as_deref(), Some("e-6-1"));
    let error = header(m, headers::ERROR).unwrap();
    assert!(error.contains("MessageSizeTooLarge"), "{error}");
    assert_eq!(read_topic(&mock, "orders", 2).len(), 2);
}

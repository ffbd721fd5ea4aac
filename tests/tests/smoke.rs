//! Proves the harness talks to the real services: a logical slot on the real
//! PostgreSQL yields a committed change, and a record makes a round trip through the
//! real Kafka broker.

use std::time::Duration;

use outboxd_tests::{consume_all, services, TestDb, TestTopics};
use rdkafka::config::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

#[tokio::test]
async fn postgres_logical_slot_yields_a_committed_change() {
    let db = TestDb::create().await;
    let client = db.connect().await;
    let slot = db.slot_name();
    client
        .batch_execute(
            "CREATE TABLE outbox (id uuid PRIMARY KEY, aggregatetype text, aggregateid text, \
                                  type text, payload jsonb);
             CREATE PUBLICATION smoke_pub FOR TABLE outbox WITH (publish = 'insert')",
        )
        .await
        .unwrap();
    client
        .execute(
            "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
            &[&slot],
        )
        .await
        .unwrap();
    client
        .batch_execute(
            "BEGIN;
             INSERT INTO outbox VALUES ('6f1c9d1e-0000-4000-8000-000000000001', 'order', 'o-1',
                                        'created', '{\"n\": 1}');
             COMMIT;
             BEGIN;
             INSERT INTO outbox VALUES ('6f1c9d1e-0000-4000-8000-000000000002', 'order', 'o-2',
                                        'created', '{}');
             ROLLBACK;",
        )
        .await
        .unwrap();

    let rows = client
        .query(
            "SELECT data FROM pg_logical_slot_get_binary_changes($1, NULL, NULL, \
             'proto_version', '1', 'publication_names', 'smoke_pub')",
            &[&slot],
        )
        .await
        .unwrap();
    let tags: Vec<u8> = rows.iter().map(|r| r.get::<_, Vec<u8>>(0)[0]).collect();
    // Begin, Relation, Insert, Commit of the committed transaction; nothing of the
    // rolled-back one.
    assert_eq!(tags, b"BRIC".to_vec(), "pgoutput message tags");
    let insert: Vec<u8> = rows[2].get(0);
    let text = String::from_utf8_lossy(&insert);
    assert!(
        text.contains("6f1c9d1e-0000-4000-8000-000000000001"),
        "{text}"
    );
    assert!(
        !text.contains("000000000002"),
        "rolled-back row leaked: {text}"
    );
}

#[tokio::test]
async fn kafka_round_trip_through_the_real_broker() {
    let topics = TestTopics::create("outboxd_smoke", 1, 3).await;
    let topic = &topics.names()[0];
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &services().kafka_brokers)
        .set("enable.idempotence", "true")
        .create()
        .unwrap();
    let delivery = producer
        .send(
            FutureRecord::to(topic)
                .key("order-1")
                .payload("{\"n\":1}")
                .headers(OwnedHeaders::new().insert(Header {
                    key: "id",
                    value: Some("e-1"),
                })),
            Duration::from_secs(30),
        )
        .await
        .map_err(|(e, _)| e)
        .unwrap();
    assert!(delivery.offset >= 0);

    let records = tokio::task::spawn_blocking({
        let topics = topics.names().to_vec();
        move || consume_all(&topics, 1, Duration::from_secs(30), "read_committed")
    })
    .await
    .unwrap();
    assert_eq!(records.len(), 1, "records read back: {records:?}");
    let r = &records[0];
    assert_eq!(r.partition, delivery.partition);
    assert_eq!(r.key.as_deref(), Some(&b"order-1"[..]));
    assert_eq!(r.value.as_deref(), Some(&b"{\"n\":1}"[..]));
    assert_eq!(r.header("id").as_deref(), Some("e-1"));
}

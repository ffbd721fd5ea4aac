//! Checkpoint store failures a real broker cannot be made to produce on demand: no
//! broker at all, and an authorizer refusing the topic (librdkafka's mock cluster).
//! The real-broker behaviour is tested in `tests/tests/kafka_checkpoint.rs`.

use std::time::{Duration, Instant};

use outboxd_kafka_sink::checkpoint::{CheckpointError, CheckpointStore};
use outboxd_kafka_sink::SinkConfig;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

fn config(brokers: String) -> SinkConfig {
    SinkConfig {
        brokers,
        ..SinkConfig::default()
    }
}

#[tokio::test]
async fn an_unreachable_broker_is_named_with_the_reason_within_the_timeout() {
    // A port nobody listens on: bound, then released.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let brokers = format!("127.0.0.1:{port}");
    let timeout = Duration::from_secs(2);
    let store = CheckpointStore::new(&config(brokers.clone()), "checkpoints", timeout).unwrap();
    for operation in ["read", "write", "ensure_topic"] {
        let started = Instant::now();
        let err = match operation {
            "read" => store.read(b"k").await.map(|_| ()),
            "write" => store.write(b"k", b"v").await,
            _ => store.ensure_topic(1, 1).await.map(|_| ()),
        }
        .unwrap_err();
        let waited = started.elapsed();
        eprintln!("{operation} after {waited:?}: {err}");
        assert!(
            matches!(err, CheckpointError::Unreachable { .. }),
            "{operation}: {err}"
        );
        let text = err.to_string();
        assert!(text.contains(&brokers), "{operation}: {text}");
        assert!(text.contains("Connection refused"), "{operation}: {text}");
        assert!(
            waited < timeout + Duration::from_secs(2),
            "{operation}: {waited:?}"
        );
    }
}

#[tokio::test]
async fn a_refused_topic_is_reported_as_not_authorized() {
    let mock = MockCluster::<DefaultProducerContext>::new(1).expect("mock cluster");
    mock.create_topic("checkpoints", 1, 1).expect("mock topic");
    let store = CheckpointStore::new(
        &config(mock.bootstrap_servers()),
        "checkpoints",
        Duration::from_secs(5),
    )
    .unwrap();
    store
        .write(b"k", b"v1")
        .await
        .expect("write before the refusal");
    assert_eq!(store.read(b"k").await.unwrap().as_deref(), Some(&b"v1"[..]));

    // The authorizer denies reading the records.
    mock.request_errors(
        RDKafkaApiKey::Fetch,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED; 10],
    );
    let err = store.read(b"k").await.unwrap_err();
    assert!(
        matches!(
            err,
            CheckpointError::NotAuthorized {
                operation: "read",
                ..
            }
        ),
        "{err}"
    );
    mock.clear_request_errors(RDKafkaApiKey::Fetch);

    // The authorizer denies even seeing the topic.
    mock.topic_error(
        "checkpoints",
        RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED,
    )
    .expect("topic error");
    for err in [
        store.read(b"k").await.map(|_| ()).unwrap_err(),
        store.write(b"k", b"v2").await.unwrap_err(),
    ] {
        assert!(
            matches!(err, CheckpointError::NotAuthorized { .. }),
            "{err}"
        );
        assert!(err.to_string().contains("grant"), "{err}");
    }
}

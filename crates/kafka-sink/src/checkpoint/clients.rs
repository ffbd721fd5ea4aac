//! The store's long-lived Kafka clients, and their replacement once they could not
//! reach Kafka.
//!
//! A librdkafka client can stay stuck after network faults: in a fault test
//! (partitions and reset connections through a proxy) the store's producer answered
//! every metadata request with a transport failure for minutes while the broker
//! served other clients. A call that finds Kafka unreachable therefore replaces the
//! clients it used, so the next call (the next session's) starts with fresh
//! connections, as the relay does with its event producer. At most once per store
//! timeout: a Kafka that is really down must not make the store build clients at its
//! callers' retry rate.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::KafkaError;
use rdkafka::producer::{DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use tokio::sync::oneshot;

use super::read::Reader;
use crate::client_logs::LoggingContext;
use crate::config::SinkConfig;

/// How often a replaced set looks whether calls still using it have ended, so that
/// it is dropped (which blocks) off the async runtime.
const DISPOSE_POLL: Duration = Duration::from_millis(50);

/// The clients one store keeps between calls.
pub(super) struct Clients {
    /// Writes checkpoints and answers metadata requests. Its poll thread serves its
    /// log lines and errors; an admin client's would go unserved (rdkafka polls only
    /// its results), so admin clients are made per request.
    pub producer: ThreadedProducer<StoreContext>,
    /// Asks for the offsets of one partition (the first key's given to
    /// [`offsets`](super::CheckpointStore::offsets)); made on first use.
    probe: Mutex<Option<Arc<Reader>>>,
    made: Instant,
}

impl Clients {
    fn new(config: &SinkConfig, timeout: Duration) -> Result<Clients, KafkaError> {
        let timeout_ms = timeout.as_millis().clamp(1, i32::MAX as u128).to_string();
        let producer = config
            .producer_config(&[
                ("enable.idempotence", "true"),
                ("acks", "all"),
                ("linger.ms", "0"),
                ("message.timeout.ms", &timeout_ms),
                // Metadata requests must not make a broker create the topic with its
                // default (deleting) cleanup policy.
                ("allow.auto.create.topics", "false"),
            ])
            .create_with_context(StoreContext::default())?;
        Ok(Clients {
            producer,
            probe: Mutex::new(None),
            made: Instant::now(),
        })
    }

    pub fn probe(&self) -> Option<Arc<Reader>> {
        crate::lock(&self.probe).clone()
    }

    pub fn keep_probe(&self, probe: Arc<Reader>) {
        *crate::lock(&self.probe) = Some(probe);
    }

    /// The reason of the producer's latest connection-level error.
    pub fn last_client_error(&self) -> Option<String> {
        self.producer.context().0.health.last_client_error()
    }
}

impl Drop for Clients {
    fn drop(&mut self) {
        self.producer.context().0.closing();
    }
}

/// The current [`Clients`], replaced after they failed to reach Kafka.
pub(super) struct Renewable {
    current: Mutex<Arc<Clients>>,
    config: SinkConfig,
    timeout: Duration,
}

impl Renewable {
    pub fn new(config: &SinkConfig, timeout: Duration) -> Result<Renewable, KafkaError> {
        Ok(Renewable {
            current: Mutex::new(Arc::new(Clients::new(config, timeout)?)),
            config: config.clone(),
            timeout,
        })
    }

    pub fn current(&self) -> Arc<Clients> {
        Arc::clone(&crate::lock(&self.current))
    }

    /// `failed` could not reach Kafka: the next call gets new clients, unless another
    /// call replaced them already or they are younger than the store's timeout.
    /// Returns whether they were replaced.
    pub fn replace(&self, failed: &Arc<Clients>, topic: &str) -> bool {
        if failed.made.elapsed() < self.timeout {
            return false;
        }
        let old = {
            let mut current = crate::lock(&self.current);
            if !Arc::ptr_eq(&current, failed) {
                return false;
            }
            match Clients::new(&self.config, self.timeout) {
                Ok(fresh) => std::mem::replace(&mut *current, Arc::new(fresh)),
                Err(e) => {
                    tracing::warn!(%topic, error = %e, "cannot make new Kafka clients for the checkpoint store; keeping the old ones");
                    return false;
                }
            }
        };
        tracing::info!(%topic, "the checkpoint store's Kafka clients could not reach Kafka; replaced them, the next checkpoint call connects afresh");
        // A call holds them at most about twice the timeout (a write: the metadata,
        // then the acknowledgement).
        dispose(old, self.timeout * 3);
        true
    }
}

/// Drops `old` on a blocking thread once the calls still holding it have ended
/// (dropping flushes the producer and waits for librdkafka's threads), or leaves it
/// to the last of them after `patience`.
fn dispose(old: Arc<Clients>, patience: Duration) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        // No async runtime to keep unblocked.
        return drop(old);
    };
    runtime.spawn_blocking(move || {
        let deadline = Instant::now() + patience;
        let mut old = old;
        loop {
            match Arc::try_unwrap(old) {
                Ok(clients) => return drop(clients),
                Err(shared) if Instant::now() < deadline => old = shared,
                Err(_) => return,
            }
            std::thread::sleep(DISPOSE_POLL);
        }
    });
}

/// The store producer's context: logging as the other helper clients, and each
/// delivery report forwarded to the write waiting for it.
#[derive(Debug, Default)]
pub(super) struct StoreContext(pub LoggingContext);

impl ClientContext for StoreContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        self.0.log(level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.0.error(error, reason);
    }
}

impl ProducerContext for StoreContext {
    type DeliveryOpaque = Box<oneshot::Sender<Result<(), KafkaError>>>;

    fn delivery(&self, result: &DeliveryResult<'_>, ack: Self::DeliveryOpaque) {
        let result = result.as_ref().map(|_| ()).map_err(|(err, _)| err.clone());
        // A dropped receiver: the write gave up waiting; it already returned an error.
        let _ = ack.send(result);
    }
}

#[cfg(test)]
mod tests {
    use rdkafka::error::RDKafkaErrorCode;
    use rdkafka::mocking::MockCluster;
    use rdkafka::producer::DefaultProducerContext;

    use super::*;
    use crate::checkpoint::{CheckpointError, CheckpointStore};

    /// A local address nothing listens on.
    fn closed_address() -> String {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().to_string()
    }

    fn unreachable_config() -> SinkConfig {
        SinkConfig {
            brokers: closed_address(),
            ..SinkConfig::default()
        }
    }

    #[tokio::test]
    async fn a_store_that_cannot_reach_kafka_gets_new_clients_for_the_next_call() {
        let store =
            CheckpointStore::new(&unreachable_config(), "cp", Duration::from_millis(300)).unwrap();
        let before = store.clients.current();
        let err = store.read(b"key").await.unwrap_err();
        assert!(matches!(err, CheckpointError::Unreachable { .. }), "{err}");
        assert!(!Arc::ptr_eq(&before, &store.clients.current()));
    }

    #[tokio::test]
    async fn clients_are_replaced_once_and_not_while_younger_than_the_timeout() {
        let timeout = Duration::from_millis(100);
        let clients = Renewable::new(&unreachable_config(), timeout).unwrap();
        let failed = clients.current();
        assert!(!clients.replace(&failed, "cp"), "younger than the timeout");
        assert!(Arc::ptr_eq(&failed, &clients.current()));

        tokio::time::sleep(timeout).await;
        assert!(clients.replace(&failed, "cp"));
        let fresh = clients.current();
        assert!(!Arc::ptr_eq(&failed, &fresh));
        // A second call that failed with the old clients finds them replaced already.
        assert!(!clients.replace(&failed, "cp"));
        assert!(Arc::ptr_eq(&fresh, &clients.current()));
    }

    #[tokio::test]
    async fn a_broker_that_answers_with_a_refusal_keeps_the_clients() {
        let store =
            CheckpointStore::new(&unreachable_config(), "cp", Duration::from_millis(1)).unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
        let clients = store.clients.current();
        let refused = KafkaError::MetadataFetch(RDKafkaErrorCode::TopicAuthorizationFailed);
        let err = store.client_failure(&clients, "read", refused);
        assert!(
            matches!(err, CheckpointError::NotAuthorized { .. }),
            "{err}"
        );
        assert!(Arc::ptr_eq(&clients, &store.clients.current()));

        let unanswered = KafkaError::MetadataFetch(RDKafkaErrorCode::BrokerTransportFailure);
        let err = store.client_failure(&clients, "read", unanswered);
        assert!(matches!(err, CheckpointError::Unreachable { .. }), "{err}");
        assert!(!Arc::ptr_eq(&clients, &store.clients.current()));
    }

    #[tokio::test]
    async fn the_new_clients_work_once_the_broker_is_back() {
        let mock = MockCluster::<DefaultProducerContext>::new(1).unwrap();
        mock.create_topic("cp", 1, 1).unwrap();
        let config = SinkConfig {
            brokers: mock.bootstrap_servers(),
            ..SinkConfig::default()
        };
        let store = CheckpointStore::new(&config, "cp", Duration::from_secs(1)).unwrap();
        store.write(b"k", b"v1").await.unwrap();
        store.offsets(b"k").await.unwrap();
        let before = store.clients.current();

        mock.broker_down(1).unwrap();
        let err = store.write(b"k", b"v2").await.unwrap_err();
        assert!(matches!(err, CheckpointError::Unreachable { .. }), "{err}");
        assert!(!Arc::ptr_eq(&before, &store.clients.current()));
        drop(before);

        mock.broker_up(1).unwrap();
        store.write(b"k", b"v3").await.unwrap();
        assert_eq!(store.read(b"k").await.unwrap().as_deref(), Some(&b"v3"[..]));
        let offsets = store.offsets(b"k").await.unwrap();
        assert!(offsets.end >= 2, "{offsets:?}");
    }
}

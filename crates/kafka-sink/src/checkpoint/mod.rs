//! A durable checkpoint in Kafka: the latest value per key in a compacted topic.
//!
//! Knows nothing of PostgreSQL: keys and values are the caller's bytes (the relay's
//! JSON). The facts it relies on (docs/architecture.md, "The checkpoint store"):
//!
//! - **Placement.** A key lives on partition `murmur2(key) % partitions`, Kafka's
//!   default placement ([`partition_for_key`]); writes set that partition explicitly,
//!   reads consume only it. The partition count must never change.
//! - **Compaction.** `cleanup.policy=compact` keeps at least the latest record of every
//!   key forever; `delete` would drop a checkpoint not rewritten within the retention.
//! - **Committed reads.** Reads use `isolation.level=read_committed` and stop at the
//!   partition's end as a read-committed consumer sees it, the last stable offset:
//!   records written inside a Kafka transaction count only once it committed.
//!
//! Writes go through a small producer of the store's own (idempotent, `acks=all`, a
//! bounded delivery timeout) rather than the sink's: the sink's producer never times a
//! record out (an outage is backpressure there), is purged and replaced by the relay
//! after failures, and lets users tune `acks`; a checkpoint write must instead end in
//! an answer. Its order relative to event records does not matter: the relay writes a
//! checkpoint only after the records it covers were acknowledged.

mod error;
mod read;
mod topic;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use tokio::sync::oneshot;

pub use error::CheckpointError;
pub use topic::CheckpointTopic;

use crate::client_logs::LoggingContext;
use crate::config::{config_error, SinkConfig};
use crate::delivery::base_record;
use crate::error::SinkError;
use crate::murmur2::partition_for_key;
use crate::record::Record;

/// How much longer than its own delivery timeout a write waits for librdkafka's answer
/// before giving up on it.
const ACK_GRACE: Duration = Duration::from_secs(5);

/// Reads and writes checkpoints in one compacted topic.
pub struct CheckpointStore {
    topic: String,
    brokers: String,
    timeout: Duration,
    config: SinkConfig,
    /// Topic configs besides `cleanup.policy=compact` when the store creates the topic.
    topic_configs: Vec<(String, String)>,
    /// Writes checkpoints and answers metadata requests. Its poll thread serves its
    /// log lines and errors; an admin client's would go unserved (rdkafka polls only
    /// its results), so admin clients are made per request.
    producer: ThreadedProducer<StoreContext>,
    /// Asks for the offsets of the partition of the key given to
    /// [`offsets`](Self::offsets); made on the first call, kept for the next.
    probe: Mutex<Option<Arc<read::Reader>>>,
}

/// Where a checkpoint partition stands ([`CheckpointStore::offsets`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionOffsets {
    /// The end, records of open transactions included (the high watermark).
    pub end: i64,
    /// The last stable offset: the end as a `read_committed` consumer sees it. Once
    /// it reaches an `end` read earlier, every transaction that wrote below that end
    /// has settled (committed or aborted).
    pub stable: i64,
}

impl std::fmt::Debug for CheckpointStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckpointStore")
            .field("topic", &self.topic)
            .field("brokers", &self.brokers)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl CheckpointStore {
    /// A store on `topic`, connecting as `config` says (brokers, TLS, SASL; the
    /// sink-specific settings are ignored). `timeout` bounds each call. Nothing
    /// connects yet.
    pub fn new(
        config: &SinkConfig,
        topic: impl Into<String>,
        timeout: Duration,
    ) -> Result<CheckpointStore, CheckpointError> {
        let topic = topic.into();
        if topic.is_empty() {
            return Err(CheckpointError::Config(
                "the checkpoint topic name is empty".into(),
            ));
        }
        config.validate().map_err(config_failure)?;
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
            .create_with_context(StoreContext::default())
            .map_err(|e| config_failure(config_error(e)))?;
        Ok(CheckpointStore {
            topic,
            brokers: config.brokers.clone(),
            timeout,
            config: config.clone(),
            topic_configs: Vec::new(),
            producer,
            probe: Mutex::new(None),
        })
    }

    /// Topic configs (e.g. `min.insync.replicas`) to create the topic with, besides
    /// `cleanup.policy=compact`, which stays.
    pub fn with_topic_configs(mut self, configs: Vec<(String, String)>) -> CheckpointStore {
        self.topic_configs = configs
            .into_iter()
            .filter(|(k, _)| k != "cleanup.policy")
            .collect();
        self
    }

    /// The topic's name.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Writes `value` as the latest checkpoint of `key` and waits until the broker
    /// acknowledged it (`acks=all`). Looks up the partition count, then produces; each
    /// step within the store's timeout.
    pub async fn write(&self, key: &[u8], value: &[u8]) -> Result<(), CheckpointError> {
        let partitions = self.describe("write").await?.partitions;
        let record = Record {
            topic: self.topic.clone(),
            key: Some(Bytes::copy_from_slice(key)),
            value: Some(Bytes::copy_from_slice(value)),
            ..Record::default()
        };
        let (ack, acked) = oneshot::channel();
        let partition = partition_for_key(key, partitions as i32);
        let base = base_record(&record, Box::new(ack)).partition(partition);
        if let Err((err, _)) = self.producer.send(base) {
            return Err(self.failure("write", err, self.last_client_error()));
        }
        let answer = tokio::time::timeout(self.timeout + ACK_GRACE, acked).await;
        let err = match answer {
            Ok(Ok(Ok(()))) => return Ok(()),
            Ok(Ok(Err(err))) => err,
            // The producer dropped the report (it is being dropped itself).
            Ok(Err(_)) => KafkaError::Canceled,
            Err(_) => KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut),
        };
        Err(self.failure("write", err, self.last_client_error()))
    }

    /// The latest value of `key`: `None` if it was never written, or its latest record
    /// is a tombstone. Reads the key's partition from its start to its last stable
    /// offset, at most the store's timeout.
    pub async fn read(&self, key: &[u8]) -> Result<Option<Bytes>, CheckpointError> {
        let deadline = Instant::now() + self.timeout;
        let partitions = self.describe("read").await?.partitions;
        let partition = partition_for_key(key, partitions as i32);
        let mut latest = self.read_partition(partition, deadline).await?;
        Ok(latest.remove(key))
    }

    /// Where the partition of `key` stands, within the store's timeout.
    pub async fn offsets(&self, key: &[u8]) -> Result<PartitionOffsets, CheckpointError> {
        let probe = self.probe(key).await?;
        let timeout = self.timeout;
        let answer = tokio::task::spawn_blocking(move || {
            let end = probe.end(timeout)?;
            let (_, stable) = probe.stable(timeout)?;
            Ok(PartitionOffsets { end, stable })
        })
        .await
        .map_err(|join| {
            let reason = format!("the offsets task failed: {join}");
            self.failure("read", KafkaError::Canceled, Some(reason))
        })?;
        answer.map_err(|e| self.failure("read", e, self.last_client_error()))
    }

    async fn probe(&self, key: &[u8]) -> Result<Arc<read::Reader>, CheckpointError> {
        if let Some(probe) = crate::lock(&self.probe).as_ref() {
            return Ok(Arc::clone(probe));
        }
        let partitions = self.describe("read").await?.partitions;
        let partition = partition_for_key(key, partitions as i32);
        let reader = read::Reader::new(&self.config, &self.topic, partition)
            .map_err(|e| config_failure(config_error(e)))?;
        let probe = Arc::new(reader);
        *crate::lock(&self.probe) = Some(Arc::clone(&probe));
        Ok(probe)
    }

    /// The latest value of every key in the topic (tombstoned keys left out), all
    /// partitions read to their last stable offsets within the store's timeout.
    pub async fn read_all(&self) -> Result<Vec<(Vec<u8>, Bytes)>, CheckpointError> {
        let deadline = Instant::now() + self.timeout;
        let partitions = self.describe("read").await?.partitions;
        let mut all = Vec::new();
        for partition in 0..partitions as i32 {
            all.extend(self.read_partition(partition, deadline).await?);
        }
        Ok(all)
    }

    async fn read_partition(
        &self,
        partition: i32,
        deadline: Instant,
    ) -> Result<HashMap<Vec<u8>, Bytes>, CheckpointError> {
        let reader = read::Reader::new(&self.config, &self.topic, partition)
            .map_err(|e| config_failure(config_error(e)))?;
        let (answer, answered) = oneshot::channel();
        // Answer first, then close the consumer (a group consumer's close takes about
        // 100 ms) off the caller's path.
        tokio::task::spawn_blocking(move || {
            let latest = reader.latest(deadline);
            let _ = answer.send((latest, reader.last_client_error()));
        });
        match answered.await {
            Ok((Ok(latest), _)) => Ok(latest),
            Ok((Err(read::ReadError::Kafka(err)), last)) => Err(self.failure("read", err, last)),
            Ok((Err(read::ReadError::Unsettled { stable, end }), _)) => {
                Err(CheckpointError::Unsettled {
                    topic: self.topic.clone(),
                    partition,
                    waited: self.timeout,
                    stable,
                    end,
                })
            }
            Ok((Err(read::ReadError::Timeout { position, end }), _)) => {
                Err(CheckpointError::ReadTimeout {
                    topic: self.topic.clone(),
                    partition,
                    waited: self.timeout,
                    position,
                    end,
                })
            }
            Err(_) => Err(self.failure(
                "read",
                KafkaError::Canceled,
                Some("the read task ended without an answer".to_owned()),
            )),
        }
    }

    /// The reason of the latest connection-level error of the store's producer.
    fn last_client_error(&self) -> Option<String> {
        self.producer.context().0.health.last_client_error()
    }

    /// Maps a Kafka error of `operation` to the distinct cases of [`CheckpointError`].
    fn failure(
        &self,
        operation: &'static str,
        source: KafkaError,
        last_error: Option<String>,
    ) -> CheckpointError {
        let topic = self.topic.clone();
        match source.rdkafka_error_code() {
            Some(code) if error::is_missing_topic(code) => CheckpointError::TopicMissing { topic },
            Some(code) if error::is_authorization(code) => CheckpointError::NotAuthorized {
                topic,
                operation,
                code,
            },
            Some(code) if error::is_unreachable(code) => CheckpointError::Unreachable {
                topic,
                operation,
                brokers: self.brokers.clone(),
                source: Box::new(source),
                last_error,
            },
            _ => CheckpointError::Kafka {
                topic,
                operation,
                source: Box::new(source),
            },
        }
    }
}

impl Drop for CheckpointStore {
    fn drop(&mut self) {
        self.producer.context().0.closing();
    }
}

fn config_failure(err: SinkError) -> CheckpointError {
    match err {
        SinkError::Config(message) => CheckpointError::Config(message),
        other => CheckpointError::Config(other.to_string()),
    }
}

/// The store producer's context: logging as the other helper clients, and each
/// delivery report forwarded to the write waiting for it.
#[derive(Debug, Default)]
struct StoreContext(LoggingContext);

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

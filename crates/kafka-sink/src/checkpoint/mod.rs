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
//!
//! That producer and the offsets probe live between calls; a call that finds Kafka
//! unreachable replaces them, since a librdkafka client can stay stuck after network
//! faults (`clients.rs`).

mod clients;
mod error;
mod read;
mod topic;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use tokio::sync::oneshot;

pub use error::CheckpointError;
pub use topic::{CheckpointTopic, SHORT_HISTORY};

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
    /// The producer and the offsets probe, kept between calls; replaced after they
    /// could not reach Kafka.
    clients: clients::Renewable,
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
        let clients = clients::Renewable::new(config, timeout)
            .map_err(|e| config_failure(config_error(e)))?;
        Ok(CheckpointStore {
            topic,
            brokers: config.brokers.clone(),
            timeout,
            config: config.clone(),
            topic_configs: Vec::new(),
            clients,
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
        let clients = self.clients.current();
        if let Err((err, _)) = clients.producer.send(base) {
            return Err(self.client_failure(&clients, "write", err));
        }
        let answer = tokio::time::timeout(self.timeout + ACK_GRACE, acked).await;
        let err = match answer {
            Ok(Ok(Ok(()))) => return Ok(()),
            Ok(Ok(Err(err))) => err,
            // The producer dropped the report (it is being dropped itself).
            Ok(Err(_)) => KafkaError::Canceled,
            Err(_) => KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut),
        };
        Err(self.client_failure(&clients, "write", err))
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
        let clients = self.clients.current();
        let probe = self.probe(&clients, key).await?;
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
        answer.map_err(|e| self.client_failure(&clients, "read", e))
    }

    /// The probe of `clients`, made on the first call (for the partition of `key`).
    async fn probe(
        &self,
        clients: &clients::Clients,
        key: &[u8],
    ) -> Result<Arc<read::Reader>, CheckpointError> {
        if let Some(probe) = clients.probe() {
            return Ok(probe);
        }
        let partitions = self.describe("read").await?.partitions;
        let partition = partition_for_key(key, partitions as i32);
        let reader = read::Reader::new(&self.config, &self.topic, partition)
            .map_err(|e| config_failure(config_error(e)))?;
        let probe = Arc::new(reader);
        clients.keep_probe(Arc::clone(&probe));
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
        self.clients.current().last_client_error()
    }

    /// A failure of one of the store's long-lived `clients`: when it says Kafka could
    /// not be reached, they may be stuck, so the next call gets new ones.
    fn client_failure(
        &self,
        clients: &Arc<clients::Clients>,
        operation: &'static str,
        source: KafkaError,
    ) -> CheckpointError {
        let err = self.failure(operation, source, clients.last_client_error());
        if matches!(err, CheckpointError::Unreachable { .. }) {
            self.clients.replace(clients, &self.topic);
        }
        err
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

fn config_failure(err: SinkError) -> CheckpointError {
    match err {
        SinkError::Config(message) => CheckpointError::Config(message),
        other => CheckpointError::Config(other.to_string()),
    }
}

//! The checkpoint topic itself: what the cluster says about it, and creating it
//! compacted when it is missing.

use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::Producer;

use super::{config_failure, CheckpointError, CheckpointStore};
use crate::client_logs::LoggingContext;
use crate::config::config_error;

/// How often `ensure_topic` looks again for a topic it just created, until the
/// metadata shows it.
const CREATED_RETRY: Duration = Duration::from_millis(100);

/// What the cluster says about the checkpoint topic ([`CheckpointStore::check`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckpointTopic {
    pub name: String,
    pub partitions: usize,
    /// Replicas of its first partition.
    pub replication_factor: usize,
    /// The topic's `cleanup.policy` (`compact`, `delete` or `compact,delete`); empty
    /// if the broker does not report it (then [`verify`](Self::verify) refuses it:
    /// compaction cannot be confirmed).
    pub cleanup_policy: String,
}

impl CheckpointTopic {
    /// Whether the topic keeps the latest record of every key forever: compacted, and
    /// not also deleted by age or size.
    pub fn is_compacted_only(&self) -> bool {
        self.cleanup_policy.trim() == "compact"
    }

    /// An error saying what to do unless the topic is compacted only.
    pub fn verify(&self) -> Result<(), CheckpointError> {
        if self.is_compacted_only() {
            return Ok(());
        }
        Err(CheckpointError::NotCompacted {
            topic: self.name.clone(),
            policy: self.cleanup_policy.clone(),
        })
    }
}

impl CheckpointStore {
    /// Creates the topic with `cleanup.policy=compact` if it is missing; either way
    /// verifies that it is compacted only (a topic that also deletes by age would lose
    /// the checkpoint). Returns what the cluster says about it.
    pub async fn ensure_topic(
        &self,
        partitions: i32,
        replication_factor: i32,
    ) -> Result<CheckpointTopic, CheckpointError> {
        match self.describe("describe").await {
            Err(CheckpointError::TopicMissing { .. }) => {
                self.create(partitions, replication_factor).await?
            }
            Err(e) => return Err(e),
            Ok(_) => {}
        }
        let topic = self.check().await?;
        topic.verify()?;
        Ok(topic)
    }

    async fn create(
        &self,
        partitions: i32,
        replication_factor: i32,
    ) -> Result<(), CheckpointError> {
        let started = Instant::now();
        let mut new = NewTopic::new(
            &self.topic,
            partitions,
            TopicReplication::Fixed(replication_factor),
        )
        .set("cleanup.policy", "compact");
        for (key, value) in &self.topic_configs {
            new = new.set(key, value);
        }
        let admin = self.admin()?;
        let results = admin
            .create_topics([&new], &self.admin_options())
            .await
            .map_err(|e| self.failure("create", e, self.last_client_error()))?;
        for result in results {
            match result {
                Ok(_) => tracing::info!(
                    topic = %self.topic,
                    partitions,
                    replication_factor,
                    "created the checkpoint topic (cleanup.policy=compact)"
                ),
                // Someone else created it in the meantime: verified like any other.
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((_, code)) => {
                    let err = KafkaError::AdminOp(code);
                    return Err(self.failure("create", err, self.last_client_error()));
                }
            }
        }
        // A new topic may take a moment to show in every broker's metadata.
        loop {
            match self.describe("describe").await {
                Err(CheckpointError::TopicMissing { .. })
                    if started.elapsed() + CREATED_RETRY < self.timeout =>
                {
                    tokio::time::sleep(CREATED_RETRY).await;
                }
                other => return other.map(|_| ()),
            }
        }
    }

    /// What the cluster says about the topic (for `outboxd check`): its partitions,
    /// replication and cleanup policy. [`CheckpointError::TopicMissing`] if it does not
    /// exist; a topic that is not compacted is reported, not refused (see
    /// [`CheckpointTopic::verify`]).
    pub async fn check(&self) -> Result<CheckpointTopic, CheckpointError> {
        let mut topic = self.describe("describe").await?;
        let admin = self.admin()?;
        let resources = admin
            .describe_configs(
                [&ResourceSpecifier::Topic(&self.topic)],
                &self.admin_options(),
            )
            .await
            .map_err(|e| self.failure("describe", e, self.last_client_error()))?;
        for resource in resources {
            let resource = resource.map_err(|code| {
                self.failure(
                    "describe",
                    KafkaError::AdminOp(code),
                    self.last_client_error(),
                )
            })?;
            if let Some(value) = resource.get("cleanup.policy").and_then(|e| e.value.clone()) {
                topic.cleanup_policy = value;
            }
        }
        Ok(topic)
    }

    /// The topic's partitions and replication, from the cluster metadata.
    pub(super) async fn describe(
        &self,
        operation: &'static str,
    ) -> Result<CheckpointTopic, CheckpointError> {
        let clients = self.clients.current();
        let producer = clients.producer.clone();
        let name = self.topic.clone();
        let timeout = self.timeout;
        let metadata = tokio::task::spawn_blocking(move || {
            producer.client().fetch_metadata(Some(&name), timeout)
        })
        .await
        .map_err(|join| {
            let reason = format!("the metadata task failed: {join}");
            self.failure(operation, KafkaError::Canceled, Some(reason))
        })?
        .map_err(|e| self.client_failure(&clients, operation, e))?;
        let Some(found) = metadata.topics().iter().find(|t| t.name() == self.topic) else {
            return Err(CheckpointError::TopicMissing {
                topic: self.topic.clone(),
            });
        };
        if let Some(err) = found.error() {
            let err = KafkaError::MetadataFetch(RDKafkaErrorCode::from(err));
            return Err(self.failure(operation, err, self.last_client_error()));
        }
        let Some(first) = found.partitions().first() else {
            return Err(CheckpointError::TopicMissing {
                topic: self.topic.clone(),
            });
        };
        Ok(CheckpointTopic {
            name: self.topic.clone(),
            partitions: found.partitions().len(),
            replication_factor: first.replicas().len(),
            cleanup_policy: String::new(),
        })
    }

    /// A short-lived admin client with the store's connection settings.
    fn admin(&self) -> Result<AdminClient<LoggingContext>, CheckpointError> {
        self.config
            .connection_config(&[("allow.auto.create.topics", "false")])
            .create_with_context(LoggingContext::default())
            .map_err(|e| config_failure(config_error(e)))
    }

    fn admin_options(&self) -> AdminOptions {
        AdminOptions::new()
            .request_timeout(Some(self.timeout))
            .operation_timeout(Some(self.timeout))
    }
}

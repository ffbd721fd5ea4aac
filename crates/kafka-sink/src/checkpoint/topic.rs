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

/// Topic configs that keep the partition short, since every read starts at its
/// beginning (docs/architecture.md, "The checkpoint store"). The active segment is
/// never compacted: with Kafka's defaults (1 GiB or 7 days) it holds every checkpoint
/// written until it rolls, and commit markers of compacted transactions stay a day
/// (`delete.retention.ms`). Rolled every 10 minutes (the smallest `segment.ms` some
/// managed services accept), compacted soon after, and its markers dropped on a
/// later pass, it stayed under 31 MB at 100 checkpoints/s (docs/benchmarks.md). Reads
/// take at most 30 s, so a tombstone kept 5 minutes is never missed mid-read.
pub const SHORT_HISTORY: &[(&str, &str)] =
    &[("segment.ms", "600000"), ("delete.retention.ms", "300000")];

/// Above this, [`CheckpointTopic::long_history`] advises [`SHORT_HISTORY`].
const LONG_HISTORY_MS: u64 = 60 * 60 * 1000;

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
    /// The topic's `segment.ms` and `delete.retention.ms`, if the broker reports them.
    pub segment_ms: Option<u64>,
    pub delete_retention_ms: Option<u64>,
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

    /// What to change when the topic keeps more than an hour of checkpoints (or
    /// commit markers) before compaction can drop them: a read at start-up, and so a
    /// standby's takeover, then grows with the relay's uptime, about 1 s per 250,000
    /// checkpoints (docs/benchmarks.md).
    pub fn long_history(&self) -> Option<String> {
        let long = |ms: Option<u64>| ms.is_some_and(|ms| ms > LONG_HISTORY_MS);
        if !long(self.segment_ms) && !long(self.delete_retention_ms) {
            return None;
        }
        let show = |ms: Option<u64>| ms.map_or_else(|| "-".to_owned(), |ms| ms.to_string());
        let wanted: Vec<String> = SHORT_HISTORY
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        Some(format!(
            "segment.ms={} and delete.retention.ms={} keep hours of checkpoints before \
             compaction, and every session (start, reconnect, standby takeover) reads \
             them all; set {} (kafka-configs.sh --bootstrap-server <brokers> --alter \
             --entity-type topics --entity-name {} --add-config {})",
            show(self.segment_ms),
            show(self.delete_retention_ms),
            wanted.join(" and "),
            self.name,
            wanted.join(","),
        ))
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
        let user_set = |key: &str| self.topic_configs.iter().any(|(k, _)| k == key);
        for (key, value) in SHORT_HISTORY {
            if !user_set(key) {
                new = new.set(key, value);
            }
        }
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
                    "created the checkpoint topic (cleanup.policy=compact, segment.ms and \
                     delete.retention.ms short unless configured)"
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
    /// replication, cleanup policy and how long it keeps history.
    /// [`CheckpointError::TopicMissing`] if it does not exist; a topic that is not
    /// compacted is reported, not refused (see [`CheckpointTopic::verify`]).
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
            let value = |key: &str| resource.get(key).and_then(|e| e.value.clone());
            if let Some(policy) = value("cleanup.policy") {
                topic.cleanup_policy = policy;
            }
            topic.segment_ms = value("segment.ms").and_then(|v| v.parse().ok());
            topic.delete_retention_ms = value("delete.retention.ms").and_then(|v| v.parse().ok());
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
            segment_ms: None,
            delete_retention_ms: None,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn topic(segment_ms: Option<u64>, delete_retention_ms: Option<u64>) -> CheckpointTopic {
        CheckpointTopic {
            name: "outboxd.checkpoints".into(),
            partitions: 1,
            replication_factor: 1,
            cleanup_policy: "compact".into(),
            segment_ms,
            delete_retention_ms,
        }
    }

    #[test]
    fn an_hour_of_history_or_less_needs_no_advice() {
        assert_eq!(topic(None, None).long_history(), None);
        assert_eq!(topic(Some(600_000), Some(300_000)).long_history(), None);
        assert_eq!(topic(Some(LONG_HISTORY_MS), None).long_history(), None);
    }

    #[test]
    fn kafkas_defaults_get_advice_naming_both_settings() {
        let advice = topic(Some(300_000), Some(86_400_000))
            .long_history()
            .expect("a day of commit markers");
        assert!(
            advice.contains("segment.ms=300000 and delete.retention.ms=86400000 keep"),
            "{advice}"
        );
        assert!(topic(Some(604_800_000), None).long_history().is_some());
    }
}

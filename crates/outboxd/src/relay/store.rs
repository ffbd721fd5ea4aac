//! The relay's checkpoints on the Kafka checkpoint store.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use outboxd_kafka_sink::checkpoint::{CheckpointError, CheckpointStore};

use crate::checkpoint::{Checkpoint, RelayIdentity};
use crate::relay::checkpoints::{Checkpoints, Loaded, OffsetsQuery, Write};
use crate::relay::RelayError;

/// Checkpoints as JSON values under [`RelayIdentity::key`] in a compacted topic.
#[derive(Debug, Clone)]
pub(crate) struct KafkaCheckpoints {
    pub store: Arc<CheckpointStore>,
    pub replication_factor: i32,
    /// Whether the warning about a topic that keeps a long history was logged (once
    /// per process, not per session).
    pub history_warned: Arc<AtomicBool>,
}

/// One partition: the topic is small (a record per relay), and one partition keeps
/// every relay's record in one place for the other-cluster check.
const PARTITIONS: i32 = 1;

impl Checkpoints for KafkaCheckpoints {
    async fn load(&self, identity: &RelayIdentity) -> Result<Loaded, RelayError> {
        let entries = match self.store.read_all().await {
            Err(CheckpointError::TopicMissing { .. }) => {
                return Ok(Loaded {
                    topic_missing: true,
                    ..Loaded::default()
                })
            }
            other => other.map_err(RelayError::Checkpoint)?,
        };
        let topic = self.store.check().await.map_err(RelayError::Checkpoint)?;
        topic.verify().map_err(RelayError::Checkpoint)?;
        if let Some(advice) = topic.long_history() {
            if !self.history_warned.swap(true, Ordering::Relaxed) {
                tracing::warn!(topic = %topic.name, "checkpoint topic: {advice}");
            }
        }
        let ours_key = identity.key();
        let mut ours = None;
        let mut unreadable = None;
        let mut foreign = None;
        for (key, value) in entries {
            let key = String::from_utf8_lossy(&key);
            if key == ours_key {
                match Checkpoint::from_json(&key, &value) {
                    Ok(c) => ours = Some(c),
                    Err(reason) => unreadable = Some(reason),
                }
                continue;
            }
            // Other relays' records are only looked at for the other-cluster check;
            // one that cannot be read is theirs to worry about.
            if let Ok(c) = Checkpoint::from_json(&key, &value) {
                if c.database == identity.database && c.slot == identity.slot {
                    foreign = Some(c);
                }
            }
        }
        Ok(Loaded {
            topic_missing: false,
            ours,
            unreadable,
            foreign,
        })
    }

    async fn create_topic(&self) -> Result<(), RelayError> {
        self.store
            .ensure_topic(PARTITIONS, self.replication_factor)
            .await
            .map(drop)
            .map_err(RelayError::Checkpoint)
    }

    fn write(&self, checkpoint: &Checkpoint) -> Write {
        let store = Arc::clone(&self.store);
        let key = checkpoint.identity().key();
        let value = checkpoint.to_json();
        Box::pin(async move {
            store
                .write(key.as_bytes(), &value)
                .await
                .map_err(RelayError::Checkpoint)
        })
    }

    fn offsets(&self, identity: &RelayIdentity) -> OffsetsQuery {
        let store = Arc::clone(&self.store);
        let key = identity.key();
        Box::pin(async move {
            store
                .offsets(key.as_bytes())
                .await
                .map_err(RelayError::Checkpoint)
        })
    }
}

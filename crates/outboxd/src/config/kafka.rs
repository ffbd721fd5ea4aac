//! `[kafka]`: the brokers, the producer's properties, and outboxd's own topics.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaConfig {
    pub brokers: String,
    /// librdkafka properties, applied over outboxd's defaults (TLS, SASL, tuning).
    pub producer: BTreeMap<String, String>,
    /// Where undeliverable or unroutable events go; empty: stop instead.
    pub dead_letter_topic: Option<String>,
    pub max_in_flight_records: usize,
    /// Payload plus per-record overhead in flight: the sink's share of memory.
    pub max_in_flight_bytes: usize,
    /// The compacted topic that records what was delivered (docs/architecture.md).
    pub checkpoint_topic: String,
    /// The shortest time between two checkpoint writes, in milliseconds.
    pub checkpoint_interval_ms: u64,
    /// Replication factor of the checkpoint topic when outboxd creates it; -1: the
    /// broker's default.
    pub checkpoint_replication_factor: i32,
    /// Further topic configs of the checkpoint topic when outboxd creates it (e.g.
    /// `min.insync.replicas`); `cleanup.policy` is always `compact`.
    pub checkpoint_topic_configs: BTreeMap<String, String>,
    /// Routed topics and the dead-letter topic: created when missing, like Kafka
    /// Connect's `topic.creation.*`.
    pub topic_creation: TopicCreation,
    /// `at-least-once` (the default) or `exactly-once` (Kafka transactions; consumers
    /// read with `isolation.level=read_committed`).
    pub delivery: Delivery,
    /// Exactly-once: the producer's `transactional.id`; unset, it is derived from the
    /// relay's identity (system identifier, database, slot).
    pub transactional_id: Option<String>,
    /// Exactly-once: a Kafka transaction is committed at the latest this many
    /// milliseconds after its first record...
    pub transaction_max_ms: u64,
    /// ... or once its records reach this many bytes. Only a backlog fills a
    /// transaction this far: behind one in the slot a transaction stays open 500 ms,
    /// and 32 MiB lets it (docs/architecture.md, "When a commit falls due"). Records
    /// are not held in memory for it: acknowledged records wait in the broker.
    pub transaction_max_bytes: usize,
    /// Exactly-once: while a Kafka transaction commits, the next records go into a
    /// second producer's transaction (transactional id `<id>.2`), which commits after
    /// it: lower latency, more commits. Off (the default): one producer, and records
    /// wait for each commit.
    pub transaction_overlap: bool,
}

/// How records reach Kafka (docs/delivery.md).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Delivery {
    /// Idempotent produce; after a crash events may come again (same id and
    /// `outboxd.lsn` + `outboxd.index`).
    #[default]
    AtLeastOnce,
    /// Transactional produce with the checkpoint in the same Kafka transaction: a
    /// `read_committed` consumer sees every event exactly once.
    ExactlyOnce,
}

/// Connect's `topic.creation.*`: outboxd creates a missing routed or dead-letter
/// topic before its first record, with the first group that matches its name, else
/// the defaults.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TopicCreation {
    pub enable: bool,
    /// -1: the broker's default (`num.partitions`).
    pub partitions: i32,
    /// -1: the broker's default (`default.replication.factor`).
    pub replication_factor: i32,
    /// Topic configs (`cleanup.policy`, `retention.ms`, …).
    pub configs: BTreeMap<String, String>,
    pub groups: Vec<TopicGroup>,
}

impl Default for TopicCreation {
    fn default() -> Self {
        TopicCreation {
            enable: false,
            partitions: -1,
            replication_factor: -1,
            configs: BTreeMap::new(),
            groups: Vec::new(),
        }
    }
}

/// Settings for the topics whose names match `include` (and no `exclude`): regular
/// expressions matching the whole name. Unset partitions and replication factor
/// are the defaults'; configs are the group's own.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct TopicGroup {
    pub name: String,
    pub include: Vec<String>,
    pub exclude: Vec<String>,
    pub partitions: Option<i32>,
    pub replication_factor: Option<i32>,
    pub configs: BTreeMap<String, String>,
}

impl std::fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let producer: BTreeMap<&str, &str> = self
            .producer
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str(),
                    if outboxd_kafka_sink::is_secret(k) {
                        "<redacted>"
                    } else {
                        v.as_str()
                    },
                )
            })
            .collect();
        f.debug_struct("KafkaConfig")
            .field("brokers", &self.brokers)
            .field("producer", &producer)
            .field("dead_letter_topic", &self.dead_letter_topic)
            .field("max_in_flight_records", &self.max_in_flight_records)
            .field("max_in_flight_bytes", &self.max_in_flight_bytes)
            .field("checkpoint_topic", &self.checkpoint_topic)
            .field("checkpoint_interval_ms", &self.checkpoint_interval_ms)
            .field(
                "checkpoint_replication_factor",
                &self.checkpoint_replication_factor,
            )
            .field("checkpoint_topic_configs", &self.checkpoint_topic_configs)
            .field("topic_creation", &self.topic_creation)
            .field("delivery", &self.delivery)
            .field("transactional_id", &self.transactional_id)
            .field("transaction_max_ms", &self.transaction_max_ms)
            .field("transaction_max_bytes", &self.transaction_max_bytes)
            .field("transaction_overlap", &self.transaction_overlap)
            .finish()
    }
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            brokers: String::new(),
            producer: BTreeMap::new(),
            dead_letter_topic: None,
            max_in_flight_records: 100_000,
            max_in_flight_bytes: 8 << 20,
            checkpoint_topic: "outboxd.checkpoints".to_owned(),
            checkpoint_interval_ms: 20,
            checkpoint_replication_factor: -1,
            checkpoint_topic_configs: BTreeMap::new(),
            topic_creation: TopicCreation::default(),
            delivery: Delivery::AtLeastOnce,
            transactional_id: None,
            transaction_max_ms: 10,
            transaction_max_bytes: 32 << 20,
            transaction_overlap: false,
        }
    }
}

//! Which topics outboxd creates, and how: `[kafka.topic_creation]`, Kafka Connect's
//! `topic.creation.*`. A routed topic is created before its first record, the
//! dead-letter topic before the first record of all; the first group whose `include`
//! matches the name (and no `exclude`) gives the settings, else the defaults.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;

use outboxd_kafka_sink::topic_admin::{create_topic, TopicCreated, TopicSpec};
use outboxd_kafka_sink::{KafkaError, SinkConfig, SinkError};
use regex::Regex;

use crate::config::{KafkaConfig, TopicCreation};

/// How long one create-topics request may take.
const CREATE_TIMEOUT: Duration = Duration::from_secs(30);

/// The settings for topic names, compiled.
#[derive(Debug)]
pub struct TopicRules {
    defaults: TopicCreation,
    groups: Vec<(Vec<Regex>, Vec<Regex>, usize)>,
}

impl TopicRules {
    /// `None` when topic creation is off.
    pub fn new(config: &TopicCreation) -> Result<Option<TopicRules>, String> {
        if !config.enable {
            return Ok(None);
        }
        let compile = |list: &[String], group: &str, key: &str| -> Result<Vec<Regex>, String> {
            list.iter()
                .map(|p| {
                    Regex::new(&format!("^(?:{p})$")).map_err(|e| {
                        format!("kafka.topic_creation group '{group}' {key} '{p}': {e}")
                    })
                })
                .collect()
        };
        let mut groups = Vec::new();
        for (i, g) in config.groups.iter().enumerate() {
            if g.include.is_empty() {
                return Err(format!(
                    "kafka.topic_creation group '{}' has no include patterns: it would match \
                     no topic",
                    g.name
                ));
            }
            groups.push((
                compile(&g.include, &g.name, "include")?,
                compile(&g.exclude, &g.name, "exclude")?,
                i,
            ));
        }
        Ok(Some(TopicRules {
            defaults: config.clone(),
            groups,
        }))
    }

    /// The partitions, replication factor and configs for a topic.
    pub fn spec(&self, topic: &str) -> TopicSpec {
        let group = self.groups.iter().find(|(include, exclude, _)| {
            include.iter().any(|r| r.is_match(topic)) && !exclude.iter().any(|r| r.is_match(topic))
        });
        let d = &self.defaults;
        match group.map(|(_, _, i)| &d.groups[*i]) {
            Some(g) => TopicSpec {
                name: topic.to_owned(),
                partitions: g.partitions.unwrap_or(d.partitions),
                replication_factor: g.replication_factor.unwrap_or(d.replication_factor),
                configs: g.configs.clone().into_iter().collect(),
            },
            None => TopicSpec {
                name: topic.to_owned(),
                partitions: d.partitions,
                replication_factor: d.replication_factor,
                configs: d.configs.clone().into_iter().collect(),
            },
        }
    }
}

/// Creates missing topics before their first record.
#[derive(Debug)]
pub struct TopicCreator {
    rules: TopicRules,
    sink: SinkConfig,
    dead_letter_topic: Option<String>,
    /// Topics created or found to exist by this process.
    known: Mutex<HashSet<String>>,
}

/// Why a topic could not be created, and whether trying again later may help.
#[derive(Debug)]
pub struct TopicError {
    pub topic: String,
    pub error: SinkError,
}

impl TopicError {
    /// Kafka was unreachable or slow, rather than refusing.
    pub fn is_retryable(&self) -> bool {
        use rdkafka::error::RDKafkaErrorCode as C;
        match &self.error {
            SinkError::Unreachable { .. } | SinkError::Timeout { .. } => true,
            SinkError::Kafka(KafkaError::AdminOp(code)) => matches!(
                code,
                C::OperationTimedOut
                    | C::RequestTimedOut
                    | C::BrokerTransportFailure
                    | C::AllBrokersDown
                    | C::NotController
                    | C::NetworkException
            ),
            _ => false,
        }
    }
}

impl std::fmt::Display for TopicError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "cannot create topic '{}' ({}): grant outboxd's principal CREATE on the cluster or \
             the topic, create the topic yourself, or set kafka.topic_creation.enable = false",
            self.topic, self.error
        )
    }
}

impl TopicCreator {
    /// `None` when `kafka.topic_creation.enable` is off.
    pub fn new(kafka: &KafkaConfig, sink: SinkConfig) -> Result<Option<TopicCreator>, String> {
        Ok(
            TopicRules::new(&kafka.topic_creation)?.map(|rules| TopicCreator {
                rules,
                sink,
                dead_letter_topic: kafka.dead_letter_topic.clone(),
                known: Mutex::new(HashSet::new()),
            }),
        )
    }

    fn is_known(&self, topic: &str) -> bool {
        self.known.lock().is_ok_and(|k| k.contains(topic))
    }

    /// Makes sure `topic` exists (and, the first time, the dead-letter topic).
    pub async fn ensure(&self, topic: &str) -> Result<(), TopicError> {
        if let Some(dlq) = &self.dead_letter_topic {
            if !self.is_known(dlq) {
                self.create(dlq).await?;
            }
        }
        if !self.is_known(topic) {
            self.create(topic).await?;
        }
        Ok(())
    }

    async fn create(&self, topic: &str) -> Result<(), TopicError> {
        let spec = self.rules.spec(topic);
        match create_topic(&self.sink, &spec, CREATE_TIMEOUT).await {
            Ok(TopicCreated::Created | TopicCreated::Existed) => {
                if let Ok(mut known) = self.known.lock() {
                    known.insert(topic.to_owned());
                }
                Ok(())
            }
            Err(error) => Err(TopicError {
                topic: topic.to_owned(),
                error,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TopicGroup;

    #[test]
    fn groups_then_defaults() {
        let config = TopicCreation {
            enable: true,
            partitions: 6,
            replication_factor: 3,
            configs: [("cleanup.policy".to_owned(), "delete".to_owned())].into(),
            groups: vec![TopicGroup {
                name: "orders".to_owned(),
                include: vec!["outbox\\.event\\.order.*".to_owned()],
                exclude: vec![".*\\.archive".to_owned()],
                partitions: Some(12),
                configs: [("retention.ms".to_owned(), "1000".to_owned())].into(),
                ..TopicGroup::default()
            }],
        };
        let rules = TopicRules::new(&config).unwrap().unwrap();
        let s = rules.spec("outbox.event.order");
        assert_eq!((s.partitions, s.replication_factor), (12, 3));
        assert_eq!(s.configs, [("retention.ms".to_owned(), "1000".to_owned())]);
        let s = rules.spec("outbox.event.order.archive");
        assert_eq!(s.partitions, 6);
        assert_eq!(
            s.configs,
            [("cleanup.policy".to_owned(), "delete".to_owned())]
        );
        assert!(TopicRules::new(&TopicCreation::default())
            .unwrap()
            .is_none());
        let bad = TopicCreation {
            groups: vec![TopicGroup {
                name: "none".to_owned(),
                ..TopicGroup::default()
            }],
            ..config
        };
        assert!(TopicRules::new(&bad).unwrap_err().contains("no include"));
    }
}

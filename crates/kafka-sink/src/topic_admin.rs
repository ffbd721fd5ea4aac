//! Creating topics with a partition count, replication factor and topic configs:
//! what the relay does for routed and dead-letter topics when asked to (like Kafka
//! Connect's `topic.creation.*`). The client has the sink's connection settings.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use crate::client_logs::LoggingContext;
use crate::config::{config_error, SinkConfig};
use crate::SinkError;

/// A topic to create. `-1` partitions or replication factor: the broker's default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSpec {
    pub name: String,
    pub partitions: i32,
    pub replication_factor: i32,
    pub configs: Vec<(String, String)>,
}

/// What became of the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopicCreated {
    Created,
    /// It existed already (its settings are left as they are).
    Existed,
}

/// Creates the topic unless it exists.
pub async fn create_topic(
    config: &SinkConfig,
    spec: &TopicSpec,
    timeout: Duration,
) -> Result<TopicCreated, SinkError> {
    let admin: AdminClient<LoggingContext> = config
        .connection_config(&[("allow.auto.create.topics", "false")])
        .create_with_context(LoggingContext::default())
        .map_err(config_error)?;
    let mut new = NewTopic::new(
        &spec.name,
        spec.partitions,
        TopicReplication::Fixed(spec.replication_factor),
    );
    for (key, value) in &spec.configs {
        new = new.set(key, value);
    }
    let options = AdminOptions::new()
        .request_timeout(Some(timeout))
        .operation_timeout(Some(timeout));
    let answer = admin.create_topics([&new], &options).await;
    let last_error = admin.inner().context().health.last_client_error();
    admin.inner().context().closing();
    let results = answer.map_err(|source| match last_error {
        Some(last_client_error) => SinkError::Unreachable {
            source,
            last_client_error,
        },
        None => SinkError::Kafka(source),
    })?;
    match results.into_iter().next() {
        Some(Ok(_)) => {
            tracing::info!(
                topic = %spec.name,
                partitions = spec.partitions,
                replication_factor = spec.replication_factor,
                "created topic"
            );
            Ok(TopicCreated::Created)
        }
        Some(Err((_, RDKafkaErrorCode::TopicAlreadyExists))) => Ok(TopicCreated::Existed),
        Some(Err((_, code))) => Err(SinkError::Kafka(KafkaError::AdminOp(code))),
        None => Err(SinkError::Internal(
            "the create-topics request returned no result".to_owned(),
        )),
    }
}

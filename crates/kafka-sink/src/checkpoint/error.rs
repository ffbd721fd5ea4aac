//! Errors of the checkpoint store: distinct cases, each saying what to do, so that the
//! caller can tell "no checkpoint topic" from "Kafka unreachable" from "not allowed".

use std::time::Duration;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};

/// An error of a [`CheckpointStore`](super::CheckpointStore) call.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CheckpointError {
    /// The topic does not exist. What that means is the caller's to decide: on a first
    /// start it should be created; if a checkpoint was written before, the topic was
    /// deleted and the checkpoint with it.
    #[error(
        "the checkpoint topic {topic} does not exist: on a first start it must be created \
         (compacted); if it existed before, it was deleted and the checkpoint with it"
    )]
    TopicMissing { topic: String },
    /// The topic exists but is not compacted only: old segments get deleted, and with
    /// them a checkpoint that was not rewritten within the retention time.
    #[error(
        "the checkpoint topic {topic} has cleanup.policy={policy}: segments older than \
         its retention are deleted, the checkpoint with them; set cleanup.policy=compact \
         (kafka-configs.sh --bootstrap-server <brokers> --alter --entity-type topics \
         --entity-name {topic} --add-config cleanup.policy=compact)"
    )]
    NotCompacted { topic: String, policy: String },
    /// No broker answered (down, wrong address, TLS or SASL refused).
    #[error(
        "cannot {operation} the checkpoint topic {topic}: Kafka did not answer at {brokers}: \
         {source}{}; check that the brokers run and that kafka.brokers and the TLS/SASL \
         settings are right",
        last_error.as_deref().map(|e| format!(" (the client's last error: {e})")).unwrap_or_default()
    )]
    Unreachable {
        topic: String,
        operation: &'static str,
        brokers: String,
        source: Box<KafkaError>,
        last_error: Option<String>,
    },
    /// The broker's authorizer refused.
    #[error(
        "not authorized to {operation} the checkpoint topic {topic}: {code}; grant the \
         principal Describe, Read and Write on it (and Create on the cluster or the topic \
         if outboxd should create it)"
    )]
    NotAuthorized {
        topic: String,
        operation: &'static str,
        code: RDKafkaErrorCode,
    },
    /// A read did not reach the end of the key's partition in time.
    #[error(
        "reading the checkpoint topic {topic} (partition {partition}) did not reach its \
         end within {waited:?}, at offset {position} of {end}; the broker may be \
         overloaded, or raise the checkpoint timeout"
    )]
    ReadTimeout {
        topic: String,
        partition: i32,
        waited: Duration,
        position: i64,
        end: i64,
    },
    /// A transaction left open (by a producer that died or hangs) holds back the
    /// partition: the newest checkpoint may lie behind it.
    #[error(
        "the checkpoint topic {topic} (partition {partition}) has a Kafka transaction open \
         that was not settled within {waited:?} (last stable offset {stable}, end {end}): \
         its producer died or hangs; the broker aborts it after that producer's \
         transaction.timeout.ms, and outboxd tries again. If this repeats past that \
         timeout, the transaction is hanging: see docs/operations.md, \"The checkpoint \
         topic is held by an open transaction\""
    )]
    Unsettled {
        topic: String,
        partition: i32,
        waited: Duration,
        stable: i64,
        end: i64,
    },
    /// Kafka refused a request for another reason.
    #[error("cannot {operation} the checkpoint topic {topic}: {source}")]
    Kafka {
        topic: String,
        operation: &'static str,
        source: Box<KafkaError>,
    },
    /// The store's configuration cannot work.
    #[error("invalid checkpoint store configuration: {0}")]
    Config(String),
}

/// Kafka's authorization refusals.
pub(crate) fn is_authorization(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::TopicAuthorizationFailed
            | RDKafkaErrorCode::ClusterAuthorizationFailed
            | RDKafkaErrorCode::GroupAuthorizationFailed
            | RDKafkaErrorCode::TransactionalIdAuthorizationFailed
    )
}

/// Whether an error means no broker could be reached (as opposed to one that answered
/// with a refusal).
pub(crate) fn is_unreachable(code: RDKafkaErrorCode) -> bool {
    use RDKafkaErrorCode as E;
    matches!(
        code,
        E::BrokerTransportFailure
            | E::AllBrokersDown
            | E::OperationTimedOut
            | E::RequestTimedOut
            | E::MessageTimedOut
            | E::TimedOutQueue
            | E::Resolve
            | E::Authentication
            | E::SaslAuthenticationFailed
            | E::SSL
            | E::NetworkException
    )
}

/// Whether an error says the topic (or its partition) is not there.
pub(crate) fn is_missing_topic(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::UnknownTopicOrPartition
            | RDKafkaErrorCode::UnknownTopic
            | RDKafkaErrorCode::UnknownPartition
    )
}

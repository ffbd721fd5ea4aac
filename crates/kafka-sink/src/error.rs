//! Errors of the sink's own calls. Per-record delivery problems are not errors of a
//! call: they arrive as [`Completion::Failed`](crate::Completion::Failed).

use std::time::Duration;

use rdkafka::error::KafkaError;

/// An error returned by a [`KafkaSink`](crate::KafkaSink) method.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SinkError {
    /// The configuration cannot work (checked before anything connects).
    #[error("invalid Kafka sink configuration: {0}")]
    Config(String),
    /// librdkafka refused a request of the sink itself (creating the producer, a
    /// metadata request).
    #[error("Kafka: {0}")]
    Kafka(#[from] KafkaError),
    /// A request of the sink failed, and librdkafka had reported why just before
    /// (authentication refused, TLS handshake failed…): both, so the caller can say
    /// more than "Broker transport failure".
    #[error("Kafka: {source} (the client's last error: {last_client_error})")]
    Unreachable {
        source: KafkaError,
        last_client_error: String,
    },
    /// The producer hit a fatal error (e.g. the idempotent producer lost its sequence,
    /// or was fenced) and cannot produce anymore: recreate the sink and resend from the
    /// last confirmed position.
    #[error("the Kafka producer failed fatally: {0}")]
    Fatal(String),
    /// A bounded wait ran out.
    #[error("timed out after {waited:?} with {records} records ({bytes} bytes) still in flight")]
    Timeout {
        waited: Duration,
        records: usize,
        bytes: usize,
    },
    /// The caller broke the sink's contract (e.g. sent a record of a transaction it had
    /// already ended).
    #[error("Kafka sink misuse: {0}")]
    Usage(String),
    /// Something that should not happen did (a helper thread or task could not start
    /// or panicked).
    #[error("Kafka sink internal error: {0}")]
    Internal(String),
}

//! Errors of the sink's own calls. Per-record delivery problems are not errors of a
//! call: they arrive as [`Completion::Failed`](crate::Completion::Failed).

use std::time::Duration;

use rdkafka::error::KafkaError;

use crate::record::DeliveryFailure;

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
    /// The `transactional.id` property was set: the sink makes the calls a
    /// transactional producer needs only when it knows it is one, so the id goes
    /// into [`SinkConfig::transactional_id`](crate::SinkConfig::transactional_id).
    #[error(
        "the transactional.id property is not allowed: set the sink's transactional_id instead"
    )]
    TransactionalIdProperty,
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
    /// A transaction call failed; `kind` says what the caller must do next.
    #[error("Kafka transaction {call} failed ({kind}): {reason}")]
    Transaction {
        call: &'static str,
        kind: TransactionError,
        reason: String,
    },
    /// Something that should not happen did (a helper thread or task could not start
    /// or panicked).
    #[error("Kafka sink internal error: {0}")]
    Internal(String),
    /// At least once, a record's delivery timed out: the sink dropped everything
    /// queued behind it and sends nothing more, so that no younger record reaches
    /// Kafka before that record is resent. Resend from the last confirmed position
    /// with a new sink.
    #[error("stopped after a delivery timeout: {0}")]
    Stopped(DeliveryFailure),
}

/// What a failed transaction call leaves the caller to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransactionError {
    /// Abort the transaction, then resend its records in a new one.
    Abortable,
    /// The call may simply be tried again (e.g. a timeout).
    Retriable,
    /// Another producer with the same transactional id took over: this one must never
    /// write again.
    Fenced,
    /// The producer cannot go on: create a new one.
    Fatal,
}

impl std::fmt::Display for TransactionError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TransactionError::Abortable => "the transaction must be aborted",
            TransactionError::Retriable => "retriable",
            TransactionError::Fenced => "fenced by another producer with the same transactional id",
            TransactionError::Fatal => "the producer cannot go on",
        })
    }
}

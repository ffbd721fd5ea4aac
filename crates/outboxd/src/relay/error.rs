//! Why a session or the relay stopped, and whether reconnecting may help.

use outboxd_kafka_sink::checkpoint::CheckpointError;
use outboxd_kafka_sink::{DeliveryFailure, SinkError};
use outboxd_pgoutput::Lsn;

use crate::relay::resume::Gap;
use crate::router::RouteError;
use crate::topics::TopicError;

/// Why the relay stopped (or a session ended).
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error(transparent)]
    Replication(#[from] outboxd_replication::Error),
    #[error(
        "Kafka refused {failure}, so the slot stays at {confirmed}. Fix the cause (topic, \
         ACLs, size limits) and restart; or set kafka.dead_letter_topic to divert such events"
    )]
    Delivery {
        failure: DeliveryFailure,
        confirmed: Lsn,
    },
    #[error(
        "cannot route {0}; the slot stays before it. Fix the row or the routing \
         configuration and restart, or set kafka.dead_letter_topic to divert such events"
    )]
    Unroutable(RouteError),
    #[error(
        "Kafka did not acknowledge {0} in time; reconnecting with a new producer and \
         resending from the last confirmed position"
    )]
    KafkaUnavailable(DeliveryFailure),
    #[error("the Kafka producer failed")]
    Producer(#[source] SinkError),
    /// Events may be missing; the relay refuses to go on (docs/operations.md).
    #[error("outboxd refuses to relay: {0}")]
    Gap(Gap),
    #[error(transparent)]
    Checkpoint(CheckpointError),
    /// A stored checkpoint cannot be read (corrupt, or from a newer outboxd).
    #[error("{0}")]
    CheckpointUnreadable(String),
    /// A topic to create before its first record (kafka.topic_creation).
    #[error("{0}")]
    Topic(Box<TopicError>),
}

impl RelayError {
    /// Whether a new session (after a backoff) may succeed without an operator.
    pub fn is_retryable(&self) -> bool {
        match self {
            RelayError::Replication(e) => e.is_retryable(),
            RelayError::KafkaUnavailable(_) => true,
            RelayError::Topic(e) => e.is_retryable(),
            RelayError::Checkpoint(e) => matches!(
                e,
                CheckpointError::Unreachable { .. } | CheckpointError::ReadTimeout { .. }
            ),
            RelayError::Delivery { .. }
            | RelayError::Unroutable(_)
            | RelayError::Producer(_)
            | RelayError::Gap(_)
            | RelayError::CheckpointUnreadable(_) => false,
        }
    }

    /// Whether the producer must be replaced before the next session: records
    /// after a timed-out one must not reach Kafka before its replay.
    pub(crate) fn needs_new_producer(&self) -> bool {
        matches!(self, RelayError::KafkaUnavailable(_))
    }
}

//! Why a session or the relay stopped, and whether reconnecting may help.

use outboxd_kafka_sink::checkpoint::CheckpointError;
use outboxd_kafka_sink::{DeliveryFailure, SinkError, TransactionError};
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
         ACLs, size limits) and restart; or, if kafka.dead_letter_topic is not set, set it \
         to divert such events (exactly once, only records the producer refuses itself are \
         diverted; docs/operations.md, \"An event stops the relay or is dead-lettered\")"
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
    /// Exactly-once: another relay registered the same transactional id.
    #[error("the exactly-once producer was fenced by another relay")]
    Fenced(#[source] SinkError),
    /// Exactly-once: a Kafka transaction failed; its records come again in a new one.
    #[error("a Kafka transaction failed; resending from the last committed checkpoint")]
    TransactionFailed(#[source] SinkError),
    /// Exactly-once: a committed transaction's checkpoint stayed invisible past the
    /// overdue limit, then settled. It may have been aborted (an operator ending a
    /// transaction whose markers Kafka lost), so it is not confirmed.
    #[error(
        "the Kafka transaction that committed the checkpoint at {committed} settled only \
         after {waited_secs} s: its commit markers came late, or it was aborted. It is not \
         confirmed to PostgreSQL; the next session resumes from the checkpoint topic, which \
         tells which (docs/operations.md, \"The checkpoint topic is held by an open \
         transaction\")"
    )]
    CommitSettledLate { committed: Lsn, waited_secs: u64 },
    /// A later session of a run that has written checkpoints found none for its
    /// slot, or no checkpoint topic: the broker answered wrongly, as one did while
    /// restarting (docs/architecture.md, "The checkpoint store"). Resuming from the
    /// slot alone could send again what Kafka holds already.
    #[error(
        "Kafka answered that there is no checkpoint for slot {slot} (or no checkpoint \
         topic), though this run wrote checkpoints (confirmed up to {confirmed}): Kafka \
         may be starting; trying again. If this lasts, the checkpoints were deleted: \
         restart outboxd, which then decides from the slot (docs/operations.md, \
         \"Refusal: the checkpoint topic is missing\")"
    )]
    CheckpointVanished { slot: String, confirmed: Lsn },
    /// A session opened without a producer to relay to (a bug).
    #[error("a session opened without a Kafka producer")]
    NoProducer,
    /// A topic to create before its first record (kafka.topic_creation).
    #[error("{0}")]
    Topic(Box<TopicError>),
}

impl RelayError {
    /// A failed sink call: fenced (another relay took over), a failed Kafka
    /// transaction worth a new session, or the end of this producer.
    pub(crate) fn from_sink(e: SinkError) -> RelayError {
        match &e {
            SinkError::Transaction {
                kind: TransactionError::Fenced,
                ..
            } => RelayError::Fenced(e),
            SinkError::Transaction {
                kind: TransactionError::Abortable | TransactionError::Retriable,
                ..
            }
            | SinkError::Timeout { .. } => RelayError::TransactionFailed(e),
            SinkError::Stopped(failure) => RelayError::KafkaUnavailable(failure.clone()),
            _ => RelayError::Producer(e),
        }
    }

    /// Whether a new session (after a backoff) may succeed without an operator.
    pub fn is_retryable(&self) -> bool {
        match self {
            RelayError::Replication(e) => e.is_retryable(),
            RelayError::KafkaUnavailable(_)
            | RelayError::Fenced(_)
            | RelayError::TransactionFailed(_)
            | RelayError::CommitSettledLate { .. }
            | RelayError::CheckpointVanished { .. } => true,
            RelayError::Topic(e) => e.is_retryable(),
            RelayError::Checkpoint(e) => matches!(
                e,
                CheckpointError::Unreachable { .. }
                    | CheckpointError::ReadTimeout { .. }
                    | CheckpointError::Unsettled { .. }
            ),
            RelayError::Delivery { .. }
            | RelayError::Unroutable(_)
            | RelayError::Producer(_)
            | RelayError::Gap(_)
            | RelayError::NoProducer => false,
        }
    }

    /// The error and its causes on one line, for a log line: the outermost alone
    /// hides why (which transactional id the broker refused, which record failed).
    /// A cause whose text is already there is left out.
    pub(crate) fn with_causes(&self) -> String {
        let mut line = self.to_string();
        let mut cause = std::error::Error::source(self);
        while let Some(c) = cause {
            let text = c.to_string();
            if !line.contains(&text) {
                line.push_str(": ");
                line.push_str(&text);
            }
            cause = c.source();
        }
        line
    }

    /// Whether the producer must be replaced before the next session: records
    /// after a timed-out one must not reach Kafka before its replay.
    pub(crate) fn needs_new_producer(&self) -> bool {
        matches!(self, RelayError::KafkaUnavailable(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_line_carries_the_cause_once() {
        let refused = SinkError::Transaction {
            call: "init",
            kind: TransactionError::Abortable,
            reason: "transactional id relay.2: authorization failed".to_owned(),
        };
        let line = RelayError::TransactionFailed(refused).with_causes();
        assert_eq!(
            line,
            "a Kafka transaction failed; resending from the last committed checkpoint: \
             Kafka transaction init failed (the transaction must be aborted): \
             transactional id relay.2: \
             authorization failed"
        );
        let refused = rdkafka::error::KafkaError::ClientCreation("bad config".to_owned());
        let line = RelayError::Producer(SinkError::Kafka(refused)).with_causes();
        assert_eq!(
            line,
            "the Kafka producer failed: Kafka: Client creation error: bad config"
        );
    }
}

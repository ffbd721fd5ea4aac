//! Reading the latest value of a key: one partition, from its start to its end as a
//! read-committed consumer sees it. Blocking (run it off the async runtime).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use super::error;
use crate::client_logs::LoggingContext;
use crate::config::SinkConfig;

/// The consumer settings a checkpoint read relies on.
const READ_SETTINGS: &[(&str, &str)] = &[
    // Records of open or aborted Kafka transactions are skipped, and the end of the
    // partition is its last stable offset.
    ("isolation.level", "read_committed"),
    // Tells when the end is reached, also on an empty or fully-aborted partition.
    ("enable.partition.eof", "true"),
    // The end is known only from a fetch answered at it, which the broker holds back
    // up to this long when it has nothing to return (default 500 ms).
    ("fetch.wait.max.ms", "10"),
    // librdkafka assigns partitions only to a consumer with a group id. The reader
    // never joins the group nor stores offsets: the group needs to exist nowhere.
    ("group.id", "outboxd-checkpoint-reader"),
    ("enable.auto.commit", "false"),
    ("enable.auto.offset.store", "false"),
    ("allow.auto.create.topics", "false"),
];

/// How often the stable offset is asked for while a transaction holds it back.
const SETTLE_POLL: Duration = Duration::from_millis(100);

/// How long one poll waits, so that the deadline is checked regularly.
const POLL_SLICE: Duration = Duration::from_millis(100);

/// A read that takes longer logs its progress this often, and its end at INFO.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);

pub(super) enum ReadError {
    Kafka(KafkaError),
    /// An open transaction (another producer's) still holds the partition's last
    /// stable offset at `stable`, short of `end`, the end when the read began.
    Unsettled {
        stable: i64,
        end: i64,
    },
    /// The deadline passed at `position`, short of `end`.
    Timeout {
        position: i64,
        end: i64,
    },
}

pub(super) struct Reader {
    consumer: BaseConsumer<LoggingContext>,
    /// Sees the partition's end including records of open transactions.
    uncommitted: BaseConsumer<LoggingContext>,
    topic: String,
    partition: i32,
}

impl Reader {
    pub(super) fn new(
        config: &SinkConfig,
        topic: &str,
        partition: i32,
    ) -> Result<Reader, KafkaError> {
        let consumer = config
            .connection_config(READ_SETTINGS)
            .create_with_context(LoggingContext::default())?;
        let uncommitted = config
            .connection_config(READ_SETTINGS)
            .set("isolation.level", "read_uncommitted")
            .create_with_context(LoggingContext::default())?;
        Ok(Reader {
            consumer,
            uncommitted,
            topic: topic.to_owned(),
            partition,
        })
    }

    /// The partition's start and its end once every record written before the read
    /// began is settled. With `read_committed` the end is the last stable offset: a
    /// transaction left open (a producer killed mid-transaction, until the broker's
    /// timeout aborts it) hides everything after its first record, our newest
    /// checkpoint included. Reading then would return an older checkpoint as the
    /// latest; waiting until the stable offset reaches the end does not.
    fn settled(&self, deadline: Instant) -> Result<(i64, i64), ReadError> {
        let remaining = || deadline.saturating_duration_since(Instant::now());
        let end = self.end(remaining()).map_err(ReadError::Kafka)?;
        loop {
            let (low, stable) = self.stable(remaining()).map_err(ReadError::Kafka)?;
            if stable >= end {
                return Ok((low, stable));
            }
            if remaining() < SETTLE_POLL {
                return Err(ReadError::Unsettled { stable, end });
            }
            std::thread::sleep(SETTLE_POLL);
        }
    }

    /// The partition's end, records of open transactions included (its high
    /// watermark).
    pub(super) fn end(&self, timeout: Duration) -> Result<i64, KafkaError> {
        self.uncommitted
            .fetch_watermarks(&self.topic, self.partition, timeout)
            .map(|(_, end)| end)
    }

    /// The partition's start and its last stable offset: the end as a
    /// `read_committed` consumer sees it, short of the first record of any open
    /// transaction.
    pub(super) fn stable(&self, timeout: Duration) -> Result<(i64, i64), KafkaError> {
        self.consumer
            .fetch_watermarks(&self.topic, self.partition, timeout)
    }

    /// The reason of the client's latest connection-level error, if any.
    pub(super) fn last_client_error(&self) -> Option<String> {
        self.consumer.context().health.last_client_error()
    }

    /// The latest value of every key in the partition (a key whose latest record is
    /// a tombstone is left out).
    pub(super) fn latest(&self, deadline: Instant) -> Result<HashMap<Vec<u8>, Bytes>, ReadError> {
        let remaining = || deadline.saturating_duration_since(Instant::now());
        let (low, end) = self.settled(deadline)?;
        let mut latest = HashMap::new();
        if end <= low {
            tracing::debug!(topic = %self.topic, partition = self.partition, low, end, "the checkpoint partition is empty");
            return Ok(latest);
        }
        let mut assignment = TopicPartitionList::new();
        assignment
            .add_partition_offset(&self.topic, self.partition, Offset::Beginning)
            .map_err(ReadError::Kafka)?;
        self.consumer
            .assign(&assignment)
            .map_err(ReadError::Kafka)?;
        let mut position = low;
        let mut passing_error = None;
        let mut progress = Progress::new(self, low, end);
        loop {
            progress.tick(position);
            let wait = remaining().min(POLL_SLICE);
            if wait.is_zero() {
                return Err(match passing_error {
                    Some(err) => ReadError::Kafka(err),
                    None => ReadError::Timeout { position, end },
                });
            }
            match self.consumer.poll(wait) {
                None => {}
                Some(Ok(m)) => {
                    position = m.offset() + 1;
                    if let Some(key) = m.key() {
                        match m.payload() {
                            Some(value) => {
                                latest.insert(key.to_vec(), Bytes::copy_from_slice(value))
                            }
                            None => latest.remove(key),
                        };
                    }
                    if position >= end {
                        progress.done(position);
                        return Ok(latest);
                    }
                }
                // The end: what follows the last record, if anything, are transaction
                // markers and records of aborted or open transactions.
                Some(Err(KafkaError::PartitionEOF(_))) => {
                    progress.done(end);
                    return Ok(latest);
                }
                Some(Err(err)) => match err.rdkafka_error_code() {
                    Some(code)
                        if error::is_missing_topic(code)
                            || code == RDKafkaErrorCode::TopicAuthorizationFailed =>
                    {
                        return Err(ReadError::Kafka(err))
                    }
                    // Connection trouble, or the group's coordinator (which the reader
                    // does not need) unavailable or not authorized: the consumer retries
                    // on its own until the deadline; kept to explain a timeout.
                    _ => {
                        tracing::debug!(topic = %self.topic, error = %err, "checkpoint read: consumer error");
                        passing_error = Some(err);
                    }
                },
            }
        }
    }
}

/// Logs a long read's progress: a start-up that reads a long partition should say
/// why it waits.
struct Progress<'a> {
    reader: &'a Reader,
    low: i64,
    end: i64,
    started: Instant,
    next: Instant,
}

impl<'a> Progress<'a> {
    fn new(reader: &'a Reader, low: i64, end: i64) -> Self {
        let started = Instant::now();
        Progress {
            reader,
            low,
            end,
            started,
            next: started + PROGRESS_EVERY,
        }
    }

    fn tick(&mut self, position: i64) {
        if Instant::now() < self.next {
            return;
        }
        self.next = Instant::now() + PROGRESS_EVERY;
        tracing::info!(
            topic = %self.reader.topic,
            partition = self.reader.partition,
            offset = position,
            end = self.end,
            elapsed_ms = self.started.elapsed().as_millis() as u64,
            "reading the checkpoint partition from its start"
        );
    }

    fn done(&self, position: i64) {
        let elapsed = self.started.elapsed();
        let offsets = position - self.low;
        if elapsed >= PROGRESS_EVERY {
            tracing::info!(
                topic = %self.reader.topic,
                partition = self.reader.partition,
                offsets,
                elapsed_ms = elapsed.as_millis() as u64,
                "read the checkpoint partition; `outboxd check` tells whether the topic \
                 keeps too long a history"
            );
        } else {
            tracing::debug!(
                topic = %self.reader.topic,
                partition = self.reader.partition,
                offsets,
                elapsed_ms = elapsed.as_millis() as u64,
                "read the checkpoint partition"
            );
        }
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.consumer.context().closing();
        self.uncommitted.context().closing();
    }
}

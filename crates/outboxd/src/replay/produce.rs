//! Producing replayed records: each batch is one synthetic transaction on the
//! relay's [`KafkaSink`] (ordered, idempotent, `acks=all`), and the next batch is
//! read only once Kafka acknowledged every record of this one.

use std::time::Duration;

use anyhow::Context as _;
use outboxd_kafka_sink::{Completion, KafkaSink, Record, TxnId};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::settings::sink_config;

/// How long the brokers have to answer before anything is read.
const REACH_TIMEOUT: Duration = Duration::from_secs(15);

/// Why a batch did not complete.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    #[error("Kafka did not take event {event_id} (topic {topic}): {reason}")]
    Refused {
        event_id: String,
        topic: String,
        reason: String,
    },
    #[error(
        "stopped by a signal while a batch was in flight; its records may or may not be in Kafka"
    )]
    Interrupted,
    #[error("the Kafka producer failed: {0}")]
    Sink(String),
}

/// The relay's sink, configured for a replay.
#[derive(Debug)]
pub struct Producer {
    sink: KafkaSink,
    completions: UnboundedReceiver<Completion>,
    next_txn: u64,
}

impl Producer {
    /// The relay's producer settings, except: no dead-letter topic (a record Kafka
    /// refuses stops the replay, naming it, rather than being set aside), and a
    /// delivery timeout (`message.timeout.ms`), so that a replay ends with an answer
    /// where the relay would wait out an outage. Fails when no broker answers.
    pub async fn connect(config: &Config, delivery_timeout: Duration) -> anyhow::Result<Producer> {
        let mut settings = sink_config(config);
        settings.dead_letter_topic = None;
        settings.properties.push((
            "message.timeout.ms".to_owned(),
            delivery_timeout.as_millis().to_string(),
        ));
        let (sink, completions) = KafkaSink::new(settings)?;
        sink.check(&[], REACH_TIMEOUT)
            .await
            .with_context(|| format!("Kafka at {} is not reachable", config.kafka.brokers))?;
        Ok(Producer {
            sink,
            completions,
            next_txn: 0,
        })
    }

    /// Produces `records` in order as one transaction and waits until Kafka has
    /// acknowledged all of them, or one failed, or `stop` is cancelled.
    pub async fn deliver(
        &mut self,
        records: Vec<Record>,
        stop: &CancellationToken,
    ) -> Result<(), BatchError> {
        self.next_txn += 1;
        let txn = TxnId(self.next_txn);
        let count = records.len();
        for record in records {
            tokio::select! {
                sent = self.sink.send(txn, record) => {
                    sent.map_err(|e| BatchError::Sink(e.to_string()))?;
                }
                () = stop.cancelled() => return Err(BatchError::Interrupted),
            }
            // A record the producer refused at once has already failed the batch:
            // send nothing after it.
            if let Ok(completion) = self.completions.try_recv() {
                Self::outcome(txn, completion)?;
            }
        }
        self.sink.end_transaction(txn, count);
        loop {
            let completion = tokio::select! {
                c = self.completions.recv() => c,
                () = stop.cancelled() => return Err(BatchError::Interrupted),
            };
            match completion {
                Some(c) => {
                    if Self::outcome(txn, c)? {
                        return Ok(());
                    }
                }
                None => return Err(BatchError::Sink("the producer stopped".to_owned())),
            }
        }
    }

    /// Whether `completion` says batch `txn` is delivered; its failure as an error.
    fn outcome(txn: TxnId, completion: Completion) -> Result<bool, BatchError> {
        match completion {
            Completion::Delivered { txn: done, .. } => Ok(done == txn),
            Completion::Failed { failure, .. } => Err(BatchError::Refused {
                event_id: failure.event_id,
                topic: failure.topic,
                reason: failure.reason,
            }),
        }
    }
}

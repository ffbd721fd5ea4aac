//! One task per assigned partition: applies its records in offset order, retrying
//! an event until it is done, and publishes the offset to commit next.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use deadpool_postgres::Pool;
use rdkafka::message::{Message, OwnedMessage};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::apply::{apply, Handler};
use crate::event::Event;
use crate::metrics::{Metrics, Outcome};
use crate::schema::Tables;
use crate::{Config, Error};

/// What every worker shares.
#[derive(Debug)]
pub(crate) struct Shared<H> {
    pub pool: Pool,
    pub tables: Tables,
    pub handler: H,
    pub metrics: Arc<Metrics>,
    pub config: Config,
    /// The first error that must stop the consumer.
    pub fatal: Mutex<Option<Error>>,
}

impl<H> Shared<H> {
    /// Stops the consumer with `error`, unless it is stopping for another one.
    pub fn fail(&self, error: Error) {
        let mut fatal = self.fatal.lock().unwrap_or_else(|p| p.into_inner());
        if fatal.is_none() {
            tracing::error!(%error, "the inbox consumer stops");
            *fatal = Some(error);
        }
    }

    pub fn take_fatal(&self) -> Option<Error> {
        self.fatal.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

/// The consumer's handle on one partition's worker.
#[derive(Debug)]
pub(crate) struct Worker {
    pub queue: mpsc::Sender<OwnedMessage>,
    stop: Arc<AtomicBool>,
    /// Offset after the last event done (applied or skipped); -1 before the first.
    done: Arc<AtomicI64>,
    task: JoinHandle<()>,
}

impl Worker {
    pub fn spawn<H: Handler>(
        runtime: &tokio::runtime::Handle,
        shared: Arc<Shared<H>>,
        topic: &str,
        partition: i32,
    ) -> Worker {
        let (queue, records) = mpsc::channel(shared.config.queue_per_partition);
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicI64::new(-1));
        let span = tracing::info_span!("partition", topic, partition);
        let task = runtime.spawn(tracing::Instrument::instrument(
            run(shared, records, stop.clone(), done.clone()),
            span,
        ));
        Worker {
            queue,
            stop,
            done,
            task,
        }
    }

    /// The offset to commit: after the last event done, if any.
    pub fn done(&self) -> Option<i64> {
        Some(self.done.load(Ordering::SeqCst)).filter(|o| *o >= 0)
    }

    /// True once the task ended: only on an error it reported or a panic, since
    /// a stopped worker is no longer asked.
    pub fn has_ended(&self) -> bool {
        self.task.is_finished()
    }

    /// Asks the worker to stop after the event it is applying (queued records are
    /// dropped: they come again to whoever owns the partition next). The task is
    /// returned so that the caller can wait for it.
    pub fn stop(self) -> (JoinHandle<()>, Arc<AtomicI64>) {
        self.stop.store(true, Ordering::SeqCst);
        (self.task, self.done)
    }
}

async fn run<H: Handler>(
    shared: Arc<Shared<H>>,
    mut records: mpsc::Receiver<OwnedMessage>,
    stop: Arc<AtomicBool>,
    done: Arc<AtomicI64>,
) {
    while let Some(record) = records.recv().await {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        // librdkafka may hand a record out again after pause/resume; it is done.
        if record.offset() < done.load(Ordering::SeqCst) {
            continue;
        }
        let mut event = match Event::from_message(&record) {
            Ok(e) => e,
            Err((at, reason)) => {
                shared.fail(Error::InvalidRecord { at, reason });
                return;
            }
        };
        if !apply_with_retries(&shared, &mut event, &stop).await {
            return;
        }
        done.store(record.offset() + 1, Ordering::SeqCst);
    }
}

/// True when the event is done; false when the worker was stopped or gave up.
async fn apply_with_retries<H: Handler>(
    shared: &Shared<H>,
    event: &mut Event,
    stop: &AtomicBool,
) -> bool {
    let config = &shared.config;
    let mut backoff = config.backoff;
    let mut attempt = 1u32;
    loop {
        match apply(&shared.pool, &shared.tables, &shared.handler, event).await {
            Ok((outcome, applied)) => {
                shared.metrics.record(outcome);
                let (id, version) = (event.id(), event.version().map(|v| v.to_string()));
                match outcome {
                    Outcome::Applied => {
                        tracing::trace!(id, offset = event.offset(), "applied")
                    }
                    Outcome::Duplicate => {
                        tracing::debug!(id, offset = event.offset(), "duplicate skipped")
                    }
                    Outcome::AppliedLate => tracing::info!(
                        id,
                        version,
                        applied = %applied.map(|v| v.to_string()).unwrap_or_default(),
                        "replayed event applied after a newer event of its aggregate"
                    ),
                    Outcome::Stale => tracing::warn!(
                        id,
                        version,
                        aggregate = event.aggregate_id(),
                        applied = %applied.map(|v| v.to_string()).unwrap_or_default(),
                        "stale event skipped: a newer event of its aggregate was applied and \
                         its id is not in the inbox (pruned from the inbox, or never applied: \
                         replay it to apply it late)"
                    ),
                }
                return true;
            }
            Err(error) => {
                shared.metrics.failed_attempt();
                let at = event.record();
                if config.max_attempts != 0 && attempt >= config.max_attempts {
                    shared.fail(Error::GaveUp {
                        at: at.clone(),
                        attempts: attempt,
                        reason: error.to_string(),
                    });
                    return false;
                }
                tracing::warn!(%at, attempt, %error, retry_in = ?backoff, "applying the event failed; rolled back, retrying");
                tokio::time::sleep(backoff).await;
                if stop.load(Ordering::SeqCst) {
                    return false;
                }
                backoff = (backoff * 2).min(config.max_backoff);
                attempt += 1;
            }
        }
    }
}

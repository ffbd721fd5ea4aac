//! The sink's producers. At least once, and exactly once without `overlap_commits`
//! (the default), there is one. Exactly once with `overlap_commits` there are two,
//! with the transactional ids `<id>` and `<id>.2`, and they take turns: while one
//! commits its Kafka transaction, the next records go into the other's, which
//! commits only after it (docs/architecture.md, "Overlapping commits"). Without
//! it, the registration still fences `<id>.2`, with a producer made for the
//! registration alone (`transaction.rs`).
//!
//! Each producer has its own poll thread. They share one [`Shared`]: one ledger, one
//! in-flight budget and one completion channel, whichever producer sent a record.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::producer::{BaseProducer, Producer};

use crate::accounting::Shared;
use crate::config::{config_error, SinkConfig};
use crate::context::SinkContext;
use crate::error::SinkError;

/// How long a poll thread waits for librdkafka events per round. Also the longest a
/// dead-letter record waits to be enqueued after its original failed, and roughly how
/// long dropping the sink blocks for the thread to notice.
const POLL_INTERVAL: Duration = Duration::from_millis(25);

/// The transactional id of the second producer, taking turns with the first.
pub(crate) fn second_transactional_id(id: &str) -> String {
    format!("{id}.2")
}

/// One producer and, exactly once, the state of its Kafka transaction.
pub(crate) struct Turn {
    pub producer: Arc<BaseProducer<SinkContext>>,
    /// Whether a Kafka transaction is open (begun, and neither committed nor
    /// aborted).
    pub in_transaction: AtomicBool,
    /// The sink's count of undelivered records when the transaction began: one more
    /// forbids its commit.
    pub errors_at_begin: AtomicU64,
    /// When this producer's last commit returned.
    pub committed_at: Mutex<Option<Instant>>,
}

/// The producers, which of them takes the next records, and their poll threads.
pub(crate) struct Turns {
    turns: Vec<Arc<Turn>>,
    active: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    pollers: Vec<JoinHandle<()>>,
}

impl Turns {
    /// One producer, or two taking turns with a transactional id and
    /// `overlap_commits`.
    pub fn new(config: &SinkConfig, shared: &Arc<Shared>) -> Result<Turns, SinkError> {
        let mut ids = vec![config.transactional_id.clone()];
        if let Some(id) = config
            .transactional_id
            .as_ref()
            .filter(|_| config.overlap_commits)
        {
            ids.push(Some(second_transactional_id(id)));
        }
        let active = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let mut turns = Turns {
            turns: Vec::with_capacity(ids.len()),
            active,
            stop,
            pollers: Vec::with_capacity(ids.len()),
        };
        for (index, id) in ids.into_iter().enumerate() {
            let producer = create_producer(config, shared, id.as_deref())?;
            let poller = {
                let producer = Arc::clone(&producer);
                let stop = Arc::clone(&turns.stop);
                let active = Arc::clone(&turns.active);
                std::thread::Builder::new()
                    .name("outboxd-kafka-poll".to_owned())
                    .spawn(move || poll_loop(&producer, &stop, index, &active))
                    .map_err(|e| SinkError::Internal(format!("cannot start a poll thread: {e}")))?
            };
            turns.pollers.push(poller);
            turns.turns.push(Arc::new(Turn {
                producer,
                in_transaction: AtomicBool::new(false),
                errors_at_begin: AtomicU64::new(0),
                committed_at: Mutex::new(None),
            }));
        }
        Ok(turns)
    }

    /// The producer that takes the next records.
    pub fn active(&self) -> &Arc<Turn> {
        &self.turns[self.active.load(Ordering::Acquire)]
    }

    /// The other producer, which takes the records after [`pass`](Self::pass);
    /// `None` when one producer takes them all.
    pub fn other(&self) -> Option<&Arc<Turn>> {
        (self.turns.len() > 1).then(|| &self.turns[self.next_index()])
    }

    /// From now on the next producer takes the records. Call with the enqueue lock
    /// held, once nothing of the active one is in flight.
    pub fn pass(&self) {
        self.active.store(self.next_index(), Ordering::Release);
    }

    fn next_index(&self) -> usize {
        (self.active.load(Ordering::Acquire) + 1) % self.turns.len()
    }

    pub fn all(&self) -> &[Arc<Turn>] {
        &self.turns
    }
}

impl Drop for Turns {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        for poller in self.pollers.drain(..) {
            if poller.join().is_err() {
                tracing::error!("a Kafka poll thread panicked");
            }
        }
        // Dropping the producers (last Arcs) purges what is still queued or in flight.
    }
}

/// A producer of the sink, with `transactional_id` instead of the configured one.
pub(crate) fn create_producer(
    config: &SinkConfig,
    shared: &Arc<Shared>,
    transactional_id: Option<&str>,
) -> Result<Arc<BaseProducer<SinkContext>>, SinkError> {
    let mut client = config.client_config();
    if let Some(id) = transactional_id {
        client.set("transactional.id", id);
    }
    let producer: BaseProducer<SinkContext> = client
        .create_with_context(SinkContext::new(Arc::clone(shared)))
        .map_err(config_error)?;
    let producer = Arc::new(producer);
    producer.context().serve(&producer);
    Ok(producer)
}

/// A poll thread: serves delivery reports and errors and, while its producer is the
/// active one, enqueues dead-letter records (which cannot be produced from inside a
/// delivery callback without risking a full queue there). Exactly once, a dead-letter
/// record belongs in its original's Kafka transaction, which is the active
/// producer's: the turn passes only once nothing of it is in flight.
fn poll_loop(
    producer: &BaseProducer<SinkContext>,
    stop: &AtomicBool,
    index: usize,
    active: &AtomicUsize,
) {
    while !stop.load(Ordering::Acquire) {
        producer.poll(POLL_INTERVAL);
        if active.load(Ordering::Acquire) == index {
            producer.context().shared.pump_dead_letters(producer);
        }
    }
}

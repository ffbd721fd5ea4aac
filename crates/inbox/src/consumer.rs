//! The Kafka side, on a thread of its own: polls records, hands each partition's
//! records to its worker, pauses partitions whose worker is behind, commits the
//! offsets workers finished, and on a revocation or at shutdown waits for the
//! partitions' workers before committing their last offsets and letting go.
//!
//! librdkafka runs rebalance callbacks inside `poll`, on this thread; blocking
//! there (waiting for workers) is what makes a revocation wait for in-flight
//! transactions, and it would stall an async runtime, hence the thread.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaResult;
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::mpsc::error::TrySendError;

use crate::apply::Handler;
use crate::worker::{Shared, Worker};
use crate::Error;

type Partition = (String, i32);

/// Runs the consumer until `stop` is set or a worker fails; `started` learns
/// whether the consumer could be created and subscribed.
pub(crate) fn run<H: Handler>(
    config: ClientConfig,
    shared: Arc<Shared<H>>,
    runtime: tokio::runtime::Handle,
    stop: Arc<AtomicBool>,
    started: tokio::sync::oneshot::Sender<Result<(), Error>>,
) -> Result<(), Error> {
    let context = InboxContext {
        state: Mutex::new(Owned {
            shared: shared.clone(),
            runtime,
            partitions: HashMap::new(),
        }),
    };
    let consumer: BaseConsumer<InboxContext<H>> = match config
        .create_with_context(context)
        .and_then(|c: BaseConsumer<_>| {
            let topics: Vec<&str> = shared.config.topics.iter().map(String::as_str).collect();
            c.subscribe(&topics).map(|()| c)
        }) {
        Ok(c) => c,
        Err(e) => {
            let _ = started.send(Err(Error::Kafka(e)));
            return Ok(());
        }
    };
    let _ = started.send(Ok(()));
    tracing::info!(
        group = %shared.config.group_id,
        topics = ?shared.config.topics,
        "inbox consumer started"
    );
    let mut last_commit = Instant::now();
    let result = loop {
        if stop.load(Ordering::SeqCst) {
            break Ok(());
        }
        if let Some(error) = shared.take_fatal() {
            break Err(error);
        }
        let backlog = consumer.context().lock().flush_pending(&consumer);
        let wait = if backlog { 10 } else { 100 };
        match consumer.poll(Duration::from_millis(wait)) {
            Some(Ok(m)) => {
                let record = m.detach();
                consumer.context().lock().dispatch(&consumer, record);
            }
            Some(Err(error)) => {
                tracing::warn!(%error, "Kafka consumer error (librdkafka keeps retrying)")
            }
            None => {}
        }
        if last_commit.elapsed() >= shared.config.commit_interval {
            consumer.context().lock().commit_done(&consumer);
            last_commit = Instant::now();
        }
    };
    let all: Vec<Partition> = consumer
        .context()
        .lock()
        .partitions
        .keys()
        .cloned()
        .collect();
    consumer
        .context()
        .lock()
        .drain(&consumer, &all, "shutting down");
    consumer.unsubscribe();
    close_within(consumer, CLOSE_TIMEOUT);
    tracing::info!("inbox consumer stopped");
    result
}

/// How long shutdown waits for librdkafka to close the consumer (leave the group).
/// After a broker restart its connection to the group coordinator can hang, and
/// closing then waited for minutes; the group drops a member that left without a
/// word after `session.timeout.ms`.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

/// Closes `consumer` on a thread of its own, waiting at most `timeout`; after that
/// the close goes on without the caller (process exit ends it).
fn close_within<C: Send + 'static>(consumer: C, timeout: Duration) {
    let (closed, done) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        drop(consumer);
        let _ = closed.send(());
    });
    if done.recv_timeout(timeout).is_err() {
        tracing::warn!(
            "closing the Kafka consumer did not finish within {timeout:?} (its group \
             coordinator does not answer); going on without it: the group drops this \
             member after session.timeout.ms"
        );
    }
}

/// librdkafka's view of us: the rebalance and commit callbacks.
struct InboxContext<H> {
    state: Mutex<Owned<H>>,
}

impl<H> InboxContext<H> {
    fn lock(&self) -> MutexGuard<'_, Owned<H>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl<H: Handler> ClientContext for InboxContext<H> {}

impl<H: Handler> ConsumerContext for InboxContext<H> {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            let revoked = partitions(tpl);
            let mut state = self.lock();
            state.shared.metrics.rebalance(-(revoked.len() as i64));
            tracing::info!(partitions = ?revoked, "partitions revoked");
            state.drain(consumer, &revoked, "revoked");
        }
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                let assigned = partitions(tpl);
                self.lock().shared.metrics.rebalance(assigned.len() as i64);
                tracing::info!(partitions = ?assigned, "partitions assigned");
            }
            Rebalance::Revoke(_) => {}
            Rebalance::Error(error) => tracing::warn!(%error, "rebalance failed"),
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        if let Err(error) = result {
            self.lock().shared.metrics.commit_failed();
            tracing::warn!(
                %error,
                offsets = ?partitions(offsets),
                "offset commit failed: those events come again and are skipped as duplicates"
            );
        }
    }
}

fn partitions(tpl: &TopicPartitionList) -> Vec<Partition> {
    tpl.elements()
        .iter()
        .map(|e| (e.topic().to_owned(), e.partition()))
        .collect()
}

/// The partitions this instance owns and their workers.
struct Owned<H> {
    shared: Arc<Shared<H>>,
    runtime: tokio::runtime::Handle,
    partitions: HashMap<Partition, PartitionState>,
}

struct PartitionState {
    worker: Worker,
    /// Records polled while the worker's queue was full, in offset order.
    pending: VecDeque<OwnedMessage>,
    paused: bool,
    /// The offset last committed (asynchronously), -1 before the first.
    committed: i64,
}

impl<H: Handler> Owned<H> {
    /// Gives a record to its partition's worker (started on its first record),
    /// or queues it and pauses the partition when the worker is behind.
    fn dispatch<C: ConsumerContext>(&mut self, consumer: &BaseConsumer<C>, record: OwnedMessage) {
        let key = (record.topic().to_owned(), record.partition());
        let (shared, runtime) = (&self.shared, &self.runtime);
        let p = self.partitions.entry(key.clone()).or_insert_with(|| {
            tracing::debug!(topic = key.0, partition = key.1, "starting the worker");
            PartitionState {
                worker: Worker::spawn(runtime, shared.clone(), &key.0, key.1),
                pending: VecDeque::new(),
                paused: false,
                committed: -1,
            }
        });
        if !p.pending.is_empty() {
            p.pending.push_back(record);
            return;
        }
        match p.worker.queue.try_send(record) {
            Ok(()) => {}
            Err(TrySendError::Full(record)) => {
                p.pending.push_back(record);
                if !p.paused {
                    p.paused = set_paused(consumer, &key, true);
                }
            }
            Err(TrySendError::Closed(_)) => self.worker_gone(&key),
        }
    }

    /// Moves queued records to workers with room; resumes partitions whose
    /// queue emptied. True while any records are still queued here.
    fn flush_pending<C: ConsumerContext>(&mut self, consumer: &BaseConsumer<C>) -> bool {
        let mut backlog = false;
        let mut gone = Vec::new();
        for (key, p) in &mut self.partitions {
            while let Some(record) = p.pending.pop_front() {
                match p.worker.queue.try_send(record) {
                    Ok(()) => {}
                    Err(TrySendError::Full(record)) => {
                        p.pending.push_front(record);
                        break;
                    }
                    Err(TrySendError::Closed(_)) => {
                        p.pending.clear();
                        gone.push(key.clone());
                    }
                }
            }
            if p.pending.is_empty() && p.paused {
                p.paused = !set_paused(consumer, key, false);
            }
            backlog |= !p.pending.is_empty();
        }
        for key in gone {
            self.worker_gone(&key);
        }
        backlog
    }

    /// A worker ends early only on an error it reported, or a panic in the
    /// handler, which must stop the consumer too: its partition would stall.
    fn worker_gone(&self, (topic, partition): &Partition) {
        self.shared.fail(Error::WorkerPanicked {
            topic: topic.clone(),
            partition: *partition,
        });
    }

    /// Commits, asynchronously, the offsets workers have finished since the last
    /// commit. Only applied (or skipped) events are ever behind a committed offset.
    /// Also notices workers that ended.
    fn commit_done<C: ConsumerContext>(&mut self, consumer: &BaseConsumer<C>) {
        let mut tpl = TopicPartitionList::new();
        for (key, p) in &self.partitions {
            if p.worker.has_ended() {
                self.worker_gone(key);
            }
        }
        for ((topic, partition), p) in &mut self.partitions {
            if let Some(done) = p.worker.done().filter(|d| *d > p.committed) {
                if tpl
                    .add_partition_offset(topic, *partition, Offset::Offset(done))
                    .is_ok()
                {
                    p.committed = done;
                }
            }
        }
        if tpl.count() > 0 {
            if let Err(error) = consumer.commit(&tpl, CommitMode::Async) {
                self.shared.metrics.commit_failed();
                tracing::warn!(%error, "offset commit failed; retried with the next one");
            }
        }
    }

    /// Stops the workers of `which` after the event each is applying, waits for
    /// them (up to `drain_timeout`), then commits their last offsets synchronously.
    fn drain<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
        which: &[Partition],
        why: &str,
    ) {
        let mut stopping = Vec::new();
        for key in which {
            if let Some(p) = self.partitions.remove(key) {
                if p.paused {
                    set_paused(consumer, key, false);
                }
                stopping.push((key, p.worker.stop()));
            }
        }
        if stopping.is_empty() {
            return;
        }
        let deadline = tokio::time::Instant::now() + self.shared.config.drain_timeout;
        let unfinished: Vec<&Partition> = self.runtime.block_on(async {
            let mut unfinished = Vec::new();
            for (key, (task, _)) in &mut stopping {
                if tokio::time::timeout_at(deadline, task).await.is_err() {
                    unfinished.push(*key);
                }
            }
            unfinished
        });
        if !unfinished.is_empty() {
            tracing::warn!(
                partitions = ?unfinished,
                "{why}: events still being applied after {:?}; their transactions finish on \
                 their own and the partitions' next owner finds them in the inbox",
                self.shared.config.drain_timeout
            );
        }
        let mut tpl = TopicPartitionList::new();
        for ((topic, partition), (_, done)) in &stopping {
            let done = done.load(Ordering::SeqCst);
            if done >= 0 {
                let _ = tpl.add_partition_offset(topic, *partition, Offset::Offset(done));
            }
        }
        if tpl.count() == 0 {
            return;
        }
        match consumer.commit(&tpl, CommitMode::Sync) {
            Ok(()) => tracing::debug!(offsets = ?partitions(&tpl), "{why}: offsets committed"),
            Err(error) => {
                self.shared.metrics.commit_failed();
                tracing::warn!(
                    %error,
                    "{why}: committing the last offsets failed; the partitions' next owner \
                     gets those events again and skips them as duplicates"
                );
            }
        }
    }
}

/// Pauses or resumes fetching one partition; true if librdkafka accepted it.
fn set_paused<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    (topic, partition): &Partition,
    pause: bool,
) -> bool {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(topic, *partition);
    let result = if pause {
        consumer.pause(&tpl)
    } else {
        consumer.resume(&tpl)
    };
    match result {
        Ok(()) => true,
        Err(error) => {
            tracing::warn!(%error, topic, partition, pause, "pausing or resuming failed");
            false
        }
    }
}

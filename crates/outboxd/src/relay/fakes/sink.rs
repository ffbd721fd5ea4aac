//! The fake Kafka sink: records what it is sent and completes transactions as
//! told, failing or refusing where the test says.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::time::Duration;

use outboxd_kafka_sink::{Completion, DeliveryFailure, Record, Registration, SinkError, TxnId};

use super::Shared;
use crate::relay::sink::{Sink, SinkFactory};

/// When the fake sink completes transactions.
#[derive(Debug, Clone)]
pub enum Completing {
    /// Each transaction as soon as it ends.
    AtOnce,
    /// In groups of this many ended transactions, newest first.
    Reversed(usize),
}

/// Makes fake sinks that share one [`Observed`](super::Observed); records whose event id is in
/// `fail` fail their transaction (`transient` as given), in the first sink only.
/// The first `refusals` transactional sinks are refused a quick registration (the
/// broker still aborting an older producer's transaction).
#[derive(Debug)]
pub struct FakeSinks {
    pub observed: Shared,
    pub completing: Completing,
    pub fail: Vec<(&'static str, bool)>,
    pub refusals: usize,
    /// How long each commit takes.
    pub commit_time: Duration,
}

impl SinkFactory for FakeSinks {
    type Sink = FakeSink;

    fn create(&self, transactional_id: Option<&str>) -> Result<FakeSink, SinkError> {
        let generation = {
            let mut o = self.observed.borrow_mut();
            o.sinks_created += 1;
            o.transactional_ids
                .extend(transactional_id.map(str::to_owned));
            o.sinks_created
        };
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        Ok(FakeSink {
            generation,
            observed: Rc::clone(&self.observed),
            completing: self.completing.clone(),
            fail: if generation == 1 {
                self.fail.clone()
            } else {
                Vec::new()
            },
            refused: transactional_id.is_some() && generation <= self.refusals,
            transactional_id: transactional_id.map(str::to_owned),
            state: RefCell::new(SinkState::default()),
            commit_pending: Rc::new(Cell::new(false)),
            commit_time: self.commit_time,
            tx,
            rx,
        })
    }

    async fn dispose(&self, sink: FakeSink) {
        drop(sink);
    }
}

#[derive(Debug, Default)]
struct SinkState {
    /// Ended transactions not yet completed: (txn, records).
    ended: Vec<(TxnId, usize)>,
    /// Transactions that failed at send time.
    failed: Vec<TxnId>,
    bytes_delivered: u64,
    bytes_taken: u64,
    bytes_by_txn: Vec<(TxnId, u64)>,
}

#[derive(Debug)]
pub struct FakeSink {
    generation: usize,
    observed: Shared,
    completing: Completing,
    fail: Vec<(&'static str, bool)>,
    refused: bool,
    transactional_id: Option<String>,
    state: RefCell<SinkState>,
    /// Exactly-once: a commit began and has not ended.
    commit_pending: Rc<Cell<bool>>,
    commit_time: Duration,
    tx: tokio::sync::mpsc::UnboundedSender<Completion>,
    rx: tokio::sync::mpsc::UnboundedReceiver<Completion>,
}

impl FakeSink {
    fn deliver(&self, state: &mut SinkState, txn: TxnId, records: usize) {
        let bytes: u64 = state
            .bytes_by_txn
            .iter()
            .filter(|(t, _)| *t == txn)
            .map(|(_, b)| b)
            .sum();
        state.bytes_delivered += bytes;
        let _ = self.tx.send(Completion::Delivered {
            txn,
            records,
            dead_lettered: 0,
        });
    }
}

impl Sink for FakeSink {
    type Commit = Pin<Box<dyn Future<Output = Result<(), SinkError>>>>;

    async fn send(&self, txn: TxnId, record: Record) -> Result<(), SinkError> {
        let mut state = self.state.borrow_mut();
        if self.commit_pending.get() {
            self.observed.borrow_mut().sent_while_committing += 1;
        }
        if let Some((_, transient)) = self.fail.iter().find(|(id, _)| *id == record.meta.event_id) {
            state.failed.push(txn);
            let failure = DeliveryFailure {
                event_id: record.meta.event_id.clone(),
                lsn: record.meta.lsn,
                index: record.meta.index,
                topic: record.topic.clone(),
                reason: if *transient {
                    "Local: Message timed out"
                } else {
                    "Broker: Message size too large"
                }
                .into(),
                transient: *transient,
            };
            let _ = self.tx.send(Completion::Failed { txn, failure });
        }
        state.bytes_by_txn.push((txn, record.payload_size() as u64));
        self.observed
            .borrow_mut()
            .sent
            .push((self.generation, txn, record));
        Ok(())
    }

    fn end_transaction(&self, txn: TxnId, records: usize) {
        let mut state = self.state.borrow_mut();
        if state.failed.contains(&txn) {
            return;
        }
        match self.completing {
            Completing::AtOnce => self.deliver(&mut state, txn, records),
            Completing::Reversed(group) => {
                state.ended.push((txn, records));
                if state.ended.len() == group {
                    let ended = std::mem::take(&mut state.ended);
                    for (txn, records) in ended.into_iter().rev() {
                        self.deliver(&mut state, txn, records);
                    }
                }
            }
        }
    }

    async fn next_completion(&mut self) -> Option<Completion> {
        self.rx.recv().await
    }

    fn discard_completions(&mut self) {
        while self.rx.try_recv().is_ok() {}
    }

    async fn flush(&self, _timeout: Duration) -> Result<(), SinkError> {
        Ok(())
    }

    fn fatal_error(&self) -> Option<String> {
        None
    }

    fn fenced(&self) -> bool {
        false
    }

    fn in_flight_records(&self) -> usize {
        0
    }

    fn take_bytes_delivered(&mut self) -> u64 {
        let state = self.state.get_mut();
        let new = state.bytes_delivered - state.bytes_taken;
        state.bytes_taken = state.bytes_delivered;
        new
    }

    fn transactional_ids(&self) -> Vec<String> {
        self.transactional_id.iter().cloned().collect()
    }

    async fn init_transactions(&self, _timeout: Duration) -> Result<(), SinkError> {
        self.observed.borrow_mut().patient_registrations += 1;
        Ok(())
    }

    async fn try_init_transactions(&self, _timeout: Duration) -> Result<Registration, SinkError> {
        Ok(if self.refused {
            Registration::AbortInProgress
        } else {
            Registration::Registered
        })
    }

    async fn begin_commit(&self, _timeout: Duration) -> Result<Self::Commit, SinkError> {
        if self.commit_pending.replace(true) {
            return Err(SinkError::Usage(
                "a commit began before the previous one ended".into(),
            ));
        }
        let observed = Rc::clone(&self.observed);
        let pending = Rc::clone(&self.commit_pending);
        let commit_time = self.commit_time;
        Ok(Box::pin(async move {
            tokio::time::sleep(commit_time).await;
            pending.set(false);
            observed.borrow_mut().commits += 1;
            Ok(())
        }))
    }

    async fn abort_transaction(&self, _timeout: Duration) -> Result<(), SinkError> {
        self.observed.borrow_mut().aborts += 1;
        Ok(())
    }
}

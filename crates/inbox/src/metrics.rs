//! Counters of what the inbox did with each event, for Prometheus and for callers.

use std::sync::atomic::AtomicI64;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// What one event came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The handler ran and the transaction committed.
    Applied,
    /// A replayed event older than its aggregate's applied version, never applied
    /// before: the handler ran with [`Event::late_after`](crate::Event::late_after) set.
    AppliedLate,
    /// Its id was in the inbox: applied before, skipped.
    Duplicate,
    /// Its id was not in the inbox but a newer event of its aggregate was applied,
    /// and it is no replay: skipped (and logged).
    Stale,
}

/// The inbox's metrics. Cheap to read at any time; [`Metrics::register`] exposes
/// them as `inbox_*` in a prometheus-client registry.
#[derive(Debug, Default)]
pub struct Metrics {
    applied: Counter,
    applied_late: Counter,
    duplicates: Counter,
    stale: Counter,
    failed_attempts: Counter,
    rebalances: Counter,
    commit_failures: Counter,
    assigned_partitions: Gauge<i64, AtomicI64>,
}

impl Metrics {
    /// Adds the metrics to `registry` (names prefixed `inbox_`).
    pub fn register(&self, registry: &mut Registry) {
        let sub = registry.sub_registry_with_prefix("inbox");
        sub.register(
            "events_applied",
            "Events applied (handler ran, transaction committed), late replays included",
            self.applied.clone(),
        );
        sub.register(
            "events_applied_late",
            "Replayed events applied after a newer event of their aggregate",
            self.applied_late.clone(),
        );
        sub.register(
            "events_duplicate",
            "Events skipped because their id was in the inbox",
            self.duplicates.clone(),
        );
        sub.register(
            "events_stale",
            "Events skipped because a newer event of their aggregate was applied",
            self.stale.clone(),
        );
        sub.register(
            "failed_attempts",
            "Attempts at an event that failed (handler or database) and were rolled back",
            self.failed_attempts.clone(),
        );
        sub.register(
            "rebalances",
            "Partition assignments and revocations",
            self.rebalances.clone(),
        );
        sub.register(
            "commit_failures",
            "Offset commits Kafka refused (the events come again and are skipped as duplicates)",
            self.commit_failures.clone(),
        );
        sub.register(
            "assigned_partitions",
            "Partitions this instance owns",
            self.assigned_partitions.clone(),
        );
    }

    pub(crate) fn record(&self, outcome: Outcome) {
        match outcome {
            Outcome::Applied => self.applied.inc(),
            Outcome::AppliedLate => {
                self.applied_late.inc();
                self.applied.inc()
            }
            Outcome::Duplicate => self.duplicates.inc(),
            Outcome::Stale => self.stale.inc(),
        };
    }

    pub(crate) fn failed_attempt(&self) {
        self.failed_attempts.inc();
    }

    pub(crate) fn rebalance(&self, assigned_delta: i64) {
        self.rebalances.inc();
        self.assigned_partitions.inc_by(assigned_delta);
    }

    pub(crate) fn commit_failed(&self) {
        self.commit_failures.inc();
    }

    /// Events applied, late replays included.
    pub fn applied(&self) -> u64 {
        self.applied.get()
    }

    pub fn applied_late(&self) -> u64 {
        self.applied_late.get()
    }

    pub fn duplicates(&self) -> u64 {
        self.duplicates.get()
    }

    pub fn stale(&self) -> u64 {
        self.stale.get()
    }

    pub fn failed_attempts(&self) -> u64 {
        self.failed_attempts.get()
    }

    pub fn rebalances(&self) -> u64 {
        self.rebalances.get()
    }

    pub fn commit_failures(&self) -> u64 {
        self.commit_failures.get()
    }

    pub fn assigned_partitions(&self) -> i64 {
        self.assigned_partitions.get()
    }
}

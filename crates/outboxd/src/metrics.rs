//! Everything the relay reports on `/metrics`.

use std::sync::atomic::{AtomicI64, AtomicU64};
use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::health::Role;

/// The `role` label of `outboxd_role`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RoleLabel {
    pub role: &'static str,
}

/// Everything the relay reports.
#[derive(Debug)]
pub struct Metrics {
    pub events_published: Counter,
    pub bytes_published: Counter,
    pub transactions_confirmed: Counter,
    pub delivery_errors: Counter,
    pub dead_lettered: Counter,
    pub ignored_changes: Counter,
    pub reconnects: Counter,
    pub checkpoint_writes: Counter,
    pub skipped_events: Counter,
    pub checkpoint_lsn: Gauge<i64, AtomicI64>,
    pub confirmed_lsn: Gauge<i64, AtomicI64>,
    pub server_wal_end: Gauge<i64, AtomicI64>,
    pub lag_bytes: Gauge<i64, AtomicI64>,
    pub lag_seconds: Gauge<f64, AtomicU64>,
    pub in_flight_records: Gauge<i64, AtomicI64>,
    pub in_flight_transactions: Gauge<i64, AtomicI64>,
    /// 1 for the relay's current role (`active`, `standby`), 0 for the others.
    pub role: Family<RoleLabel, Gauge>,
    /// Exactly-once: Kafka transactions committed, and how long each commit took.
    pub kafka_transactions: Counter,
    pub commit_seconds: Histogram,
    /// Exactly-once: how long the awaited commit's checkpoint has not been visible.
    pub commit_unsettled_seconds: Gauge<f64, AtomicU64>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            events_published: Counter::default(),
            bytes_published: Counter::default(),
            transactions_confirmed: Counter::default(),
            delivery_errors: Counter::default(),
            dead_lettered: Counter::default(),
            ignored_changes: Counter::default(),
            reconnects: Counter::default(),
            checkpoint_writes: Counter::default(),
            skipped_events: Counter::default(),
            checkpoint_lsn: Gauge::default(),
            confirmed_lsn: Gauge::default(),
            server_wal_end: Gauge::default(),
            lag_bytes: Gauge::default(),
            lag_seconds: Gauge::default(),
            in_flight_records: Gauge::default(),
            in_flight_transactions: Gauge::default(),
            role: Family::default(),
            kafka_transactions: Counter::default(),
            // 0.5 ms to ~4 s.
            commit_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 14)),
            commit_unsettled_seconds: Gauge::default(),
        }
    }
}

impl Metrics {
    /// Shows `role` as the current one.
    pub fn set_role(&self, role: Role) {
        for r in [Role::Starting, Role::Active, Role::Standby] {
            let value = i64::from(r == role);
            self.role
                .get_or_create(&RoleLabel { role: r.name() })
                .set(value);
        }
    }

    pub(crate) fn register(self: &Arc<Self>, registry: &mut Registry) {
        let m = self;
        registry.register(
            "outboxd_events_published",
            "Events acknowledged by Kafka",
            m.events_published.clone(),
        );
        registry.register(
            "outboxd_bytes_published",
            "Key and value bytes acknowledged by Kafka",
            m.bytes_published.clone(),
        );
        registry.register(
            "outboxd_transactions_confirmed",
            "Confirmations of a new position to PostgreSQL (each advance of the confirmed LSN)",
            m.transactions_confirmed.clone(),
        );
        registry.register(
            "outboxd_delivery_errors",
            "Records Kafka did not accept",
            m.delivery_errors.clone(),
        );
        registry.register(
            "outboxd_dead_lettered",
            "Events sent to the dead-letter topic",
            m.dead_lettered.clone(),
        );
        registry.register(
            "outboxd_ignored_changes",
            "Updates, deletes and truncates on outbox tables (not relayed)",
            m.ignored_changes.clone(),
        );
        registry.register(
            "outboxd_reconnects",
            "Replication sessions restarted after an error",
            m.reconnects.clone(),
        );
        registry.register(
            "outboxd_checkpoint_writes",
            "Checkpoints written to the checkpoint topic and confirmed to PostgreSQL",
            m.checkpoint_writes.clone(),
        );
        registry.register(
            "outboxd_skipped_events",
            "Events left out on resume because a checkpoint says they were delivered",
            m.skipped_events.clone(),
        );
        registry.register(
            "outboxd_checkpoint_lsn",
            "Position of the newest durable checkpoint",
            m.checkpoint_lsn.clone(),
        );
        registry.register(
            "outboxd_confirmed_lsn",
            "Flush LSN last confirmed to PostgreSQL",
            m.confirmed_lsn.clone(),
        );
        registry.register(
            "outboxd_server_wal_end_lsn",
            "Server WAL end from the latest keepalive",
            m.server_wal_end.clone(),
        );
        registry.register(
            "outboxd_lag_bytes",
            "Server WAL end minus confirmed LSN",
            m.lag_bytes.clone(),
        );
        registry.register(
            "outboxd_lag_seconds",
            "Age of the oldest committed transaction not yet acknowledged by Kafka (0 when none)",
            m.lag_seconds.clone(),
        );
        registry.register(
            "outboxd_in_flight_records",
            "Records produced and not yet acknowledged",
            m.in_flight_records.clone(),
        );
        registry.register(
            "outboxd_role",
            "1 for the relay's current role (starting, active, standby), 0 for the others",
            m.role.clone(),
        );
        registry.register(
            "outboxd_kafka_transactions",
            "Exactly-once: Kafka transactions committed",
            m.kafka_transactions.clone(),
        );
        registry.register(
            "outboxd_kafka_commit_seconds",
            "Exactly-once: how long committing a Kafka transaction took",
            m.commit_seconds.clone(),
        );
        registry.register(
            "outboxd_commit_unsettled_seconds",
            "Exactly-once: how long the newest committed Kafka transaction's checkpoint has \
             waited to become visible (0 when none waits; over 10 s the relay commits \
             nothing more until it settles)",
            m.commit_unsettled_seconds.clone(),
        );
        registry.register(
            "outboxd_in_flight_transactions",
            "Transactions received and not yet confirmed",
            m.in_flight_transactions.clone(),
        );
    }
}

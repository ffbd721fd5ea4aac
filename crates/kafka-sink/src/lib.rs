//! The Kafka half of outboxd: produces the records of source transactions and says,
//! per transaction, when the broker has acknowledged all of them; and keeps a durable
//! checkpoint in Kafka ([`checkpoint`]).
//!
//! It knows nothing of Postgres. A transaction is an opaque [`TxnId`]; the source
//! position travels in [`RecordMeta`] only to name records in errors and dead-letter
//! headers. The relay's ack tracker turns [`Completion`]s into the position it may
//! confirm.
//!
//! ```text
//! send(txn, record) ─▶ strictly ordered enqueue ─▶ librdkafka (idempotent, acks=all,
//!   │  waits while in-flight caps are reached       murmur2 partitioner)
//!   │                                                     │ delivery reports (poll threads)
//! end_transaction(txn, n) ─▶ per-txn accounting ◀─────────┘
//!                               │  failed + dead-letterable → dead-letter topic
//!                               ▼
//!                 Completion::{Delivered, Failed} (unbounded channel)
//! ```
//!
//! # Layout
//!
//! | module | job |
//! | --- | --- |
//! | `sink` | [`KafkaSink`]: ordered enqueue, waiting for room, flush, check |
//! | `transaction` | exactly once: Kafka transactions, registration and fencing |
//! | `turns` | the producer, or the two that take turns (`overlap_commits`), and their poll threads |
//! | `accounting` | composes the four below; emits the completions the ledger decides |
//! | `ledger` | per-transaction counts (sent, settled, dead-lettered) → completions |
//! | `budget` | in-flight records and bytes against the caps; wakes waiting senders |
//! | `health` | the fatal error and the last client error |
//! | [`dead_letter`] | which refusals are dead-lettered, the one dead-letter record shape, the queue of dead letters |
//! | `delivery` | the delivery opaque; building librdkafka records (the only place) |
//! | [`headers`] | every header name outboxd writes |
//! | `client_logs`, `log_limiter` | librdkafka's log lines and errors into `tracing`, each distinct line once per 30 s |
//! | [`checkpoint`] | the checkpoint store |
//! | `murmur2` | Kafka's key placement ([`partition_for_key`]) |
//! | [`topic_admin`] | creating topics with partitions, replication factor and configs |
//!
//! Exactly once (`transaction`), records go into Kafka transactions that the caller
//! commits or aborts (with [`SinkConfig::overlap_commits`], two producers taking
//! turns: `turns`). Completions still say only that the broker acknowledged
//! records; a transaction's events count as delivered only once the caller's
//! commit succeeded. A checkpoint record is a
//! [`Record`] like any other, placed with [`partition_for_key`].
//!
//! # Delivery failures and the dead-letter topic
//!
//! librdkafka retries what can be retried until `message.timeout.ms`; what reaches a
//! delivery report as an error is final. With a dead-letter topic configured, a record
//! refused for a reason that is about the record itself (too large, invalid, unknown
//! or invalid topic, policy violation) is produced to the dead-letter topic in the
//! shape [`dead_letter`] describes: its key, value and headers plus
//! [`headers::ERROR`], [`headers::ORIGINAL_TOPIC`], [`headers::EVENT_ID`],
//! [`headers::LSN`] (Postgres `X/Y`) and [`headers::INDEX`]; if the value is what is
//! too large it is left out and [`headers::VALUE_DROPPED`]`=true` is added. That
//! record's acknowledgement counts as the original's. Everything else — timeouts,
//! brokers down, authorization, fatal producer errors — fails the transaction, so the
//! relay stops short of it and a restart resends: dead-lettering a transient failure
//! would skip a record that a retry would deliver. Events the relay cannot route get
//! the same shape from [`dead_letter::for_unroutable`].
//!
//! A topic's `max.message.bytes` limits whole record batches, not single records. Set
//! the producer's `message.max.bytes` no higher than the smallest topic limit: then an
//! oversized record is refused on its own at enqueue time, instead of the broker
//! rejecting a batch and, with it, records that would have fit.

mod accounting;
mod budget;
pub mod checkpoint;
mod client_logs;
mod cluster_check;
mod config;
mod context;
pub mod dead_letter;
mod delivery;
mod error;
pub mod headers;
mod health;
mod ledger;
mod log_limiter;
mod murmur2;
mod record;
mod sink;
pub mod topic_admin;
mod transaction;
mod turns;

use std::sync::{Mutex, MutexGuard, PoisonError};

pub use accounting::SinkStats;
pub use cluster_check::{BrokerInfo, ClusterCheck, TopicCheck};
pub use config::{check_properties, is_secret, SinkConfig, DEFAULT_PROPERTIES};
pub use error::{SinkError, TransactionError};
pub use murmur2::{murmur2, partition_for_key};
pub use rdkafka::error::KafkaError;
pub use record::{Completion, DeliveryFailure, HeaderName, PgLsn, Record, RecordMeta, TxnId};
pub use sink::KafkaSink;
pub use transaction::{PendingCommit, Registration};

/// Locks a mutex whose data stays consistent even if a holder panicked (every
/// critical section in this crate leaves the data valid at each step), so that a panic
/// elsewhere cannot turn into a panic on the delivery path.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

//! Idempotent consumers for the events outboxd publishes: each event applied
//! exactly once, in per-aggregate order, inside your own PostgreSQL transaction.
//!
//! An [`Inbox`] consumes Kafka topics with a consumer group and, for every record,
//! opens a database transaction that
//!
//! 1. records the event id in the inbox table (an id already there is a
//!    duplicate: skipped);
//! 2. checks the event's version (`outboxd.lsn`, `outboxd.index`) against the
//!    newest one applied to its aggregate (the record key): an older event is
//!    stale and skipped, unless it is a replay;
//! 3. runs your [`Handler`] with the transaction, so the read model and any
//!    events you publish through your own outbox commit together with step 1;
//! 4. commits; only then is the record's offset committed to Kafka.
//!
//! A crash between the database commit and the offset commit re-delivers events
//! that step 1 then skips. Partitions are applied concurrently, each in offset
//! order; a revoked partition's worker finishes the event it is applying before
//! its offset is committed and the partition goes. `docs/consumers.md` in the
//! outboxd repository is the consumer's half of the contract.
//!
//! ```no_run
//! use outboxd_inbox::{BoxError, Config, Event, Handler, Inbox, tokio_postgres::Transaction};
//!
//! struct Projection;
//!
//! impl Handler for Projection {
//!     async fn handle(&self, tx: &Transaction<'_>, event: &Event) -> Result<(), BoxError> {
//!         tx.execute(
//!             "INSERT INTO seen (order_id, event_id) VALUES ($1, $2)",
//!             &[&event.aggregate_id(), &event.id()],
//!         )
//!         .await?;
//!         Ok(())
//!     }
//! }
//!
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let mut pg = outboxd_inbox::deadpool_postgres::Config::new();
//! pg.url = Some("postgres://orders@127.0.0.1/orders".into());
//! let pool = pg.create_pool(None, outboxd_inbox::tokio_postgres::NoTls)?;
//! let inbox = Inbox::new(
//!     Config::new("127.0.0.1:9092", "order-projection", ["outbox.event.order"]),
//!     pool,
//! )?;
//! inbox.create_tables().await?;
//! inbox.run(Projection, async { tokio::signal::ctrl_c().await.ok(); }).await?;
//! # Ok(()) }
//! ```

mod apply;
mod config;
mod consumer;
mod event;
mod metrics;
mod schema;
mod worker;

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

pub use apply::{BoxError, Handler};
pub use config::Config;
pub use event::{Event, RecordRef, Version, ID_HEADER, INDEX_HEADER, LSN_HEADER, REPLAY_HEADER};
pub use metrics::{Metrics, Outcome};
pub use schema::{Tables, SCHEMA_LOCK};
/// The versions the inbox is built with, for handlers and pools.
pub use {deadpool_postgres, rdkafka, tokio_postgres};

use deadpool_postgres::Pool;
use worker::Shared;

/// Why an inbox consumer could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("inbox configuration: {0}")]
    Config(String),
    #[error("Kafka consumer: {0} (check the brokers and the consumer properties)")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("creating the inbox tables failed: {0} (the role needs CREATE on the schema)")]
    Schema(String),
    #[error(
        "{at} cannot be applied: {reason}. Nothing after it in its partition was applied; \
         fix the producer, or move the group past the record with kafka-consumer-groups \
         --reset-offsets --to-offset {next}",
        next = .at.offset + 1
    )]
    InvalidRecord { at: RecordRef, reason: String },
    #[error(
        "{at} failed {attempts} times, the last time with: {reason}. It was rolled back and \
         nothing after it in its partition was applied; fix the cause and restart (the event \
         is tried again)"
    )]
    GaveUp {
        at: RecordRef,
        attempts: u32,
        reason: String,
    },
    #[error(
        "the worker of {topic}[{partition}] ended unexpectedly (a panic in the handler? see \
         the log above); nothing after its last committed offset is lost"
    )]
    WorkerPanicked { topic: String, partition: i32 },
    #[error("the inbox consumer thread ended unexpectedly (a panic; see the log above)")]
    ThreadDied,
}

/// An idempotent consumer: see the [crate documentation](crate).
#[derive(Debug)]
pub struct Inbox {
    config: Config,
    tables: Tables,
    pool: Pool,
    metrics: Arc<Metrics>,
}

impl Inbox {
    /// Checks `config`; connects to nothing yet.
    pub fn new(config: Config, pool: Pool) -> Result<Inbox, Error> {
        config.client_config()?;
        Ok(Inbox {
            tables: config.tables()?,
            config,
            pool,
            metrics: Arc::new(Metrics::default()),
        })
    }

    /// The counters this inbox updates (shared; read them at any time).
    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// The inbox's tables.
    pub fn tables(&self) -> &Tables {
        &self.tables
    }

    /// Creates the inbox tables if they do not exist ([`Tables::ddl`]), one
    /// instance at a time ([`SCHEMA_LOCK`]). Services with their own migrations put
    /// that DDL there instead.
    pub async fn create_tables(&self) -> Result<(), Error> {
        let client = self
            .pool
            .get()
            .await
            .map_err(|e| Error::Schema(e.to_string()))?;
        client
            .batch_execute(&self.tables.create())
            .await
            .map_err(|e| Error::Schema(e.to_string()))
    }

    /// Consumes until `shutdown` completes (then finishes the events being
    /// applied, commits their offsets and leaves the group: `Ok`) or an event
    /// cannot be applied (the same, then the error naming it).
    ///
    /// Must run inside a tokio runtime; the Kafka consumer gets a thread of its
    /// own, partition workers are tasks on this runtime.
    pub async fn run<H: Handler>(
        self,
        handler: H,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), Error> {
        let client_config = self.config.client_config()?;
        let shared = Arc::new(Shared {
            pool: self.pool,
            tables: self.tables,
            handler,
            metrics: self.metrics,
            config: self.config,
            fatal: Mutex::new(None),
        });
        let stop = StopOnDrop(Arc::new(AtomicBool::new(false)));
        let (started_tx, started) = tokio::sync::oneshot::channel();
        let (ended_tx, mut ended) = tokio::sync::oneshot::channel();
        let runtime = tokio::runtime::Handle::current();
        let flag = stop.0.clone();
        std::thread::Builder::new()
            .name("inbox-consumer".to_owned())
            .spawn(move || {
                let result = consumer::run(client_config, shared, runtime, flag, started_tx);
                let _ = ended_tx.send(result);
            })
            .map_err(|e| Error::Config(format!("cannot start the consumer thread: {e}")))?;
        started.await.map_err(|_| Error::ThreadDied)??;
        tokio::select! {
            () = shutdown => stop.0.store(true, Ordering::SeqCst),
            result = &mut ended => return result.map_err(|_| Error::ThreadDied)?,
        }
        ended.await.map_err(|_| Error::ThreadDied)?
    }
}

/// Stops the consumer thread when `run` ends or is dropped.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

//! The relay: replication stream → router → Kafka sink, with the ack tracker
//! deciding what may be confirmed.
//!
//! - [`supervisor`] runs sessions one after another (backoff, producer replacement);
//! - [`pipeline`] is one session: it routes events to the sink and owns the
//!   [`tracker`], which turns completions into the position to confirm;
//! - [`source`] and [`sink`] are the narrow traits the pipeline sees, with their
//!   PostgreSQL and Kafka implementations, so the logic above is testable with fakes.

mod checkpoints;
mod error;
mod pipeline;
mod resume;
mod sink;
mod source;
mod store;
mod supervisor;
mod tracker;

#[cfg(test)]
mod fakes;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use outboxd_kafka_sink::checkpoint::CheckpointStore;
use outboxd_pgoutput::Lsn;
use tokio_util::sync::CancellationToken;

pub use error::RelayError;
pub use resume::Gap;
pub use tracker::AckTracker;

use crate::config::Config;
use crate::http::{Health, Metrics};
use crate::router::Router;
use crate::settings;
use crate::topics::TopicCreator;
use pipeline::{RelayState, Routing};
use source::PgConnector;
use store::KafkaCheckpoints;
use supervisor::Supervisor;

/// How long one checkpoint read or write may take before it counts as failed.
const CHECKPOINT_TIMEOUT: Duration = Duration::from_secs(30);

/// How this run starts.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunOptions {
    /// Go on from the slot even if the checkpoint shows events may be missing (the
    /// first session only; logged at ERROR with the range).
    pub accept_gap: bool,
}

/// Relays until `shutdown` is cancelled (`Ok`, after a graceful drain) or a fatal
/// error.
pub async fn run(
    config: &Config,
    options: RunOptions,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    shutdown: CancellationToken,
) -> Result<(), RelayError> {
    let tables = settings::outbox_tables(config)?;
    let router =
        Router::new(&config.routing, &tables).map_err(outboxd_replication::Error::Config)?;
    let connector = PgConnector {
        connect: settings::connect_options(config)?,
        tables: tables.clone(),
        create_publication: config.postgres.create_publication,
        create_slot: config.postgres.create_slot,
        failover_slot: config.postgres.failover_slot,
        spec: settings::source_spec(config),
        reader: settings::reader_config(config),
        load_catalog: router.needs_catalog(),
    };
    let sink_config = settings::sink_config(config);
    let topics = TopicCreator::new(&config.kafka, sink_config.clone())
        .map_err(outboxd_replication::Error::Config)?;
    let store = KafkaCheckpoints {
        store: Arc::new(
            CheckpointStore::new(
                &sink_config,
                &config.kafka.checkpoint_topic,
                CHECKPOINT_TIMEOUT,
            )
            .map_err(RelayError::Checkpoint)?
            .with_topic_configs(settings::checkpoint_topic_configs(config)),
        ),
        replication_factor: config.kafka.checkpoint_replication_factor,
    };
    let state = RelayState {
        routing: Routing {
            router,
            dead_letter_topic: config.kafka.dead_letter_topic.clone(),
            topics,
        },
        metrics,
        health,
        last_txn: 0,
        confirmed: Lsn::ZERO,
        drain_timeout: config.server.shutdown_timeout(),
        checkpoint_interval: Duration::from_millis(config.kafka.checkpoint_interval_ms),
    };
    Supervisor::new(
        connector,
        sink_config,
        store,
        state,
        shutdown,
        options.accept_gap,
    )?
    .run()
    .await
}

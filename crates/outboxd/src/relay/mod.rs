//! The relay: replication stream → router → Kafka sink, with the ack tracker
//! deciding what may be confirmed.
//!
//! - [`supervisor`] runs sessions one after another (backoff, producer replacement);
//! - [`pipeline`] is one session: it routes events to the sink and owns the
//!   [`tracker`], which turns completions into the position to confirm;
//! - [`source`] and [`sink`] are the narrow traits the pipeline sees, with their
//!   PostgreSQL and Kafka implementations, so the logic above is testable with fakes.

mod checkpoints;
mod committer;
mod connector;
mod error;
mod pipeline;
mod resume;
mod sink;
mod source;
mod store;
mod supervisor;
mod tracker;
mod visibility;

#[cfg(test)]
mod exactly_once_tests;
#[cfg(test)]
mod fakes;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use outboxd_kafka_sink::checkpoint::CheckpointStore;
use outboxd_pgoutput::Lsn;
use tokio_util::sync::CancellationToken;

pub use connector::Preview;
pub use error::RelayError;
pub use resume::Gap;
pub use tracker::AckTracker;

use crate::config::{Config, Delivery};
use crate::health::Health;
use crate::health::Role;
use crate::metrics::Metrics;
use crate::router::Router;
use crate::settings;
use crate::topics::TopicCreator;
use connector::PgConnector;
use pipeline::{Mode, RelayState, Routing};
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

/// What a session would decide now about the slot and the checkpoint (for `outboxd
/// check`), without taking the slot.
pub async fn preview(config: &Config) -> Result<Preview, RelayError> {
    let (connector, store) = connector_and_store(config, false)?;
    connector.preview(&store).await
}

/// The PostgreSQL side and the checkpoint store, as the configuration says.
fn connector_and_store(
    config: &Config,
    load_catalog: bool,
) -> Result<(PgConnector, KafkaCheckpoints), RelayError> {
    let connector = PgConnector::new(config, load_catalog)?;
    let store = CheckpointStore::new(
        &settings::sink_config(config),
        &config.kafka.checkpoint_topic,
        CHECKPOINT_TIMEOUT,
    )
    .map_err(RelayError::Checkpoint)?
    .with_topic_configs(settings::checkpoint_topic_configs(config));
    let store = KafkaCheckpoints {
        store: Arc::new(store),
        replication_factor: config.kafka.checkpoint_replication_factor,
        history_warned: Arc::default(),
    };
    Ok((connector, store))
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
    let exactly_once = config.kafka.delivery == Delivery::ExactlyOnce;
    let (connector, store) = connector_and_store(config, router.needs_catalog())?;
    let topics = TopicCreator::new(&config.kafka, settings::sink_config(config))
        .map_err(outboxd_replication::Error::Config)?;
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
        mode: if exactly_once {
            Mode::ExactlyOnce {
                checkpoint_topic: config.kafka.checkpoint_topic.clone(),
                max_age: Duration::from_millis(config.kafka.transaction_max_ms),
                max_bytes: config.kafka.transaction_max_bytes,
            }
        } else {
            Mode::AtLeastOnce {
                checkpoint_interval: Duration::from_millis(config.kafka.checkpoint_interval_ms),
            }
        },
    };
    state.metrics.set_role(Role::Starting);
    let exactly_once = exactly_once.then(|| config.kafka.transactional_id.clone());
    Supervisor::new(
        connector,
        settings::sink_config(config),
        exactly_once,
        store,
        state,
        shutdown,
        options.accept_gap,
    )
    .run()
    .await
}

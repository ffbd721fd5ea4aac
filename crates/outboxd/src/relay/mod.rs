//! The relay: replication stream → router → Kafka sink, with the ack tracker
//! deciding what may be confirmed.
//!
//! - [`supervisor`] runs sessions one after another (backoff, producer replacement);
//! - [`pipeline`] is one session: it routes events to the sink and owns the
//!   [`tracker`], which turns completions into the position to confirm;
//! - [`source`] and [`sink`] are the narrow traits the pipeline sees, with their
//!   PostgreSQL and Kafka implementations, so the logic above is testable with fakes.

mod dead_letter;
mod error;
mod pipeline;
mod sink;
mod source;
mod supervisor;
mod tracker;

#[cfg(test)]
mod fakes;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use outboxd_pgoutput::Lsn;
use tokio_util::sync::CancellationToken;

pub use error::RelayError;
pub use tracker::AckTracker;

use crate::config::Config;
use crate::http::{Health, Metrics};
use crate::router::Router;
use crate::settings;
use pipeline::{RelayState, Routing};
use source::PgConnector;
use supervisor::Supervisor;

/// Relays until `shutdown` is cancelled (`Ok`, after a graceful drain) or a fatal
/// error.
pub async fn run(
    config: &Config,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    shutdown: CancellationToken,
) -> Result<(), RelayError> {
    let tables = settings::outbox_tables(config)?;
    let connector = PgConnector {
        connect: settings::connect_options(config)?,
        tables: tables.clone(),
        create_publication: config.postgres.create_publication,
        spec: settings::source_spec(config),
        reader: settings::reader_config(config),
    };
    let state = RelayState {
        routing: Routing {
            router: Router::new(config.routing.clone()),
            tables,
            message_prefix: config.routing.message_prefix.clone(),
            dead_letter_topic: config.kafka.dead_letter_topic.clone(),
        },
        metrics,
        health,
        last_txn: 0,
        confirmed: Lsn::ZERO,
        drain_timeout: config.server.shutdown_timeout(),
    };
    Supervisor::new(connector, settings::sink_config(config), state, shutdown)?
        .run()
        .await
}

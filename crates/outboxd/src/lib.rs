//! outboxd: the relay from a PostgreSQL logical replication slot to Kafka.
//!
//! The pieces: [`router`] turns outbox rows and messages into records (pure),
//! [`tracker`] decides which LSN may be confirmed (pure), [`relay`] wires the
//! replication stream, the router, the Kafka sink and the tracker together.
//! [`config`] layers file, environment and flags; [`http`] serves health and metrics.

pub mod check;
pub mod config;
pub mod http;
pub mod init;
pub mod relay;
pub mod router;
pub mod tail;
pub mod tracker;

use outboxd_kafka_sink::SinkConfig;
use outboxd_replication::ConnectOptions;

use crate::config::Config;

/// PostgreSQL connection options from the configuration (password included).
pub fn connect_options(config: &Config) -> anyhow::Result<ConnectOptions> {
    let mut opts: ConnectOptions = config.postgres.url.parse()?;
    if opts.password.is_none() {
        opts.password = config.postgres.password.clone();
    }
    Ok(opts)
}

/// The Kafka sink's configuration from outboxd's.
pub fn sink_config(config: &Config) -> SinkConfig {
    SinkConfig {
        brokers: config.kafka.brokers.clone(),
        properties: config
            .kafka
            .producer
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        max_in_flight_records: config.kafka.max_in_flight_records,
        max_in_flight_bytes: config.kafka.max_in_flight_bytes,
        dead_letter_topic: config.kafka.dead_letter_topic.clone(),
    }
}

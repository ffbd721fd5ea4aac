//! The one place that turns outboxd's configuration into the settings of its
//! components (replication connection, stream, reader, Kafka sink), so that `run`,
//! `check`, `tail` and `init` cannot disagree about them.

use std::time::Duration;

use outboxd_kafka_sink::SinkConfig;
use outboxd_replication::{
    ConnectOptions, Lsn, ReaderConfig, SourceSpec, StreamSettings, TableName,
};

use crate::checkpoint::RelayIdentity;
use crate::config::Config;

/// Status updates go out at least this often, whatever the configuration says.
const MIN_STATUS_INTERVAL: Duration = Duration::from_millis(100);

/// PostgreSQL connection options, with the password from the configuration when the
/// URL has none.
pub fn connect_options(config: &Config) -> Result<ConnectOptions, outboxd_replication::Error> {
    let mut opts: ConnectOptions = config.postgres.url.parse()?;
    if opts.password.is_none() {
        opts.password = config.postgres.password.clone();
    }
    Ok(opts)
}

/// The configured outbox tables, parsed.
pub fn outbox_tables(config: &Config) -> Result<Vec<TableName>, outboxd_replication::Error> {
    config
        .postgres
        .tables
        .iter()
        .map(|t| TableName::parse(t))
        .collect()
}

/// How the replication stream behaves (status interval, receive timeout).
pub fn stream_settings(config: &Config) -> StreamSettings {
    StreamSettings {
        status_interval: Duration::from_millis(config.postgres.status_interval_ms)
            .max(MIN_STATUS_INTERVAL),
        receive_timeout: config.postgres.receive_timeout(),
        // The relay confirms an idle WAL end itself, after recording it in the
        // checkpoint: the slot must never pass the checkpoint.
        confirm_idle_wal_end: false,
        ..StreamSettings::default()
    }
}

/// What to stream from the slot. `already_delivered` starts at zero: the relay
/// raises it to what it has confirmed itself before each reconnect.
pub fn source_spec(config: &Config) -> SourceSpec {
    SourceSpec {
        slot: config.postgres.slot.clone(),
        publications: vec![config.postgres.publication.clone()],
        messages: config.routing.relays_messages(),
        create_slot: config.postgres.create_slot,
        already_delivered: Lsn::ZERO,
        settings: stream_settings(config),
    }
}

/// The reader task's buffer between the stream and its consumer.
pub fn reader_config(config: &Config) -> ReaderConfig {
    ReaderConfig {
        max_buffered_bytes: config.postgres.max_buffered_bytes,
        ..ReaderConfig::default()
    }
}

/// The checkpoint topic's configs when outboxd creates it.
pub fn checkpoint_topic_configs(config: &Config) -> Vec<(String, String)> {
    config
        .kafka
        .checkpoint_topic_configs
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// The Kafka sink's configuration.
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
        // Set per session in exactly-once mode, when the relay's identity is known.
        transactional_id: None,
        overlap_commits: config.kafka.transaction_overlap,
    }
}

/// Exactly-once: the producer's transactional id, the configured one
/// (`kafka.transactional_id`) or one derived from the relay's identity, so that two
/// relays of one slot fence each other and relays of different slots never do.
pub fn transactional_id(configured: Option<&str>, identity: &RelayIdentity) -> String {
    configured.map_or_else(
        || format!("outboxd-{}", identity.key().replace('/', "-")),
        str::to_owned,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        let mut c = Config::default();
        c.postgres.url = "postgres://relay@db:5432/shop".to_owned();
        c
    }

    #[test]
    fn the_password_comes_from_the_configuration_when_the_url_has_none() {
        let mut c = config();
        c.postgres.password = Some("pw".to_owned());
        assert_eq!(connect_options(&c).unwrap().password.as_deref(), Some("pw"));
        c.postgres.url = "postgres://relay:inurl@db/shop".to_owned();
        assert_eq!(
            connect_options(&c).unwrap().password.as_deref(),
            Some("inurl")
        );
    }

    #[test]
    fn stream_settings_follow_the_configuration() {
        let mut c = config();
        c.postgres.status_interval_ms = 2_500;
        c.postgres.receive_timeout_secs = Some(7);
        let s = stream_settings(&c);
        assert_eq!(s.status_interval, Duration::from_millis(2_500));
        assert_eq!(s.receive_timeout, Some(Duration::from_secs(7)));
        c.postgres.status_interval_ms = 1;
        assert_eq!(stream_settings(&c).status_interval, MIN_STATUS_INTERVAL);
    }

    #[test]
    fn messages_are_requested_only_with_a_prefix() {
        let mut c = config();
        assert!(source_spec(&c).messages);
        c.routing.message_prefix.clear();
        assert!(!source_spec(&c).messages);
    }
}

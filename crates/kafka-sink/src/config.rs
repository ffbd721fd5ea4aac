//! Sink configuration and the librdkafka properties derived from it.

use std::fmt;

use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::error::KafkaError;

use crate::error::SinkError;

/// The producer properties outboxd relies on. User properties are applied after them
/// and win.
///
/// - `enable.idempotence=true` (implies `acks=all`, retries, ≤ 5 requests in flight):
///   per-partition order survives retries, and retries add no duplicates.
/// - `partitioner=murmur2_random`: the same key → partition placement as the Java
///   client (and so as Debezium); librdkafka's default hashes with CRC32 instead.
/// - `linger.ms=5`: short enough to add at most a few milliseconds, long enough
///   that a steady stream of events fills batches. With 1 ms, requests carried 1–2
///   records at 10–20k events/s and the broker's per-request CPU saturated a 2-core
///   box (docs/benchmarks.md): p99 went from 16.6 ms to 527 ms at 10k events/s.
///   Exactly once it is [`TRANSACTIONAL_LINGER_MS`] instead.
/// - `message.timeout.ms=0` (no timeout): the idempotent producer retries in order
///   until the broker is back, as Kafka Connect's source tasks do. A timeout would
///   fail one record while younger ones behind it may still be delivered: a gap that
///   the replay after a restart turns into reordering. An outage is backpressure.
pub const DEFAULT_PROPERTIES: &[(&str, &str)] = &[
    ("enable.idempotence", "true"),
    ("acks", "all"),
    ("partitioner", "murmur2_random"),
    ("linger.ms", "5"),
    ("max.in.flight.requests.per.connection", "5"),
    ("message.timeout.ms", "0"),
];

/// `linger.ms` of a transactional producer. Chosen when the commit still waited for
/// the last records' linger (2 ms instead of 5 cut the p50 at 1,000 events/s from 25
/// to 15 ms; 0 drained a backlog of transactions of 10 at 0.82× at-least-once instead
/// of 0.93×, docs/benchmarks.md). The commit now sends lingering records at once, so
/// the linger only batches records sent before it.
pub const TRANSACTIONAL_LINGER_MS: &str = "2";

/// librdkafka properties known under several names. `ClientConfig` applies its
/// properties in hash-map order, so if a user sets `request.required.acks` while our
/// default says `acks`, either could win. Setting one name of a group removes the
/// others first.
const ALIASES: &[&[&str]] = &[
    &["acks", "request.required.acks"],
    &["linger.ms", "queue.buffering.max.ms"],
    &["max.in.flight.requests.per.connection", "max.in.flight"],
    &["message.timeout.ms", "delivery.timeout.ms"],
    &["bootstrap.servers", "metadata.broker.list"],
    &["retries", "message.send.max.retries"],
];

/// Configuration of a [`KafkaSink`](crate::KafkaSink).
#[derive(Clone)]
pub struct SinkConfig {
    /// `bootstrap.servers`: comma-separated `host:port` list.
    pub brokers: String,
    /// librdkafka properties passed through verbatim, applied last (TLS, SASL, tuning).
    pub properties: Vec<(String, String)>,
    /// At most this many records are enqueued and not yet acknowledged; `send` waits
    /// beyond it. Bounds memory when the broker is slow or down.
    pub max_in_flight_records: usize,
    /// At most this many bytes are in flight, counted as [`Record::in_flight_size`]
    /// (payload plus an estimate of the per-record cost), so the cap bounds process
    /// memory. A single record larger than the cap is still let through when nothing
    /// else is in flight, so that it cannot wedge the sink.
    ///
    /// [`Record::in_flight_size`]: crate::Record::in_flight_size
    pub max_in_flight_bytes: usize,
    /// Where records go that the broker refuses for good (too large, invalid, unknown
    /// topic…). `None`: such a record fails its transaction. With `transactional_id`
    /// only records the producer refuses itself, before sending, go there (inside the
    /// Kafka transaction): a refusal by the broker aborts the transaction.
    pub dead_letter_topic: Option<String>,
    /// Makes the sink transactional (exactly-once): records become visible to
    /// `read_committed` consumers only when [`KafkaSink::commit_transaction`] commits
    /// them. Producers with the same id fence each other.
    ///
    /// [`KafkaSink::commit_transaction`]: crate::KafkaSink::commit_transaction
    pub transactional_id: Option<String>,
    /// Transactional mode: a second producer (transactional id `<id>.2`) takes the
    /// records sent while the first one's commit is under way, and they take turns.
    /// Off, the first producer takes every record, and [`KafkaSink::begin_commit`]
    /// returns once the commit is answered; the second is registered all the same.
    ///
    /// [`KafkaSink::begin_commit`]: crate::KafkaSink::begin_commit
    pub overlap_commits: bool,
}

/// librdkafka's producer-only properties (scope `P` in its CONFIGURATION.md) that can
/// be set as strings. Left out of the helper clients' configurations.
const PRODUCER_ONLY: &[&str] = &[
    "transactional.id",
    "transaction.timeout.ms",
    "enable.idempotence",
    "enable.gapless.guarantee",
    "queue.buffering.max.messages",
    "queue.buffering.max.kbytes",
    "queue.buffering.max.ms",
    "linger.ms",
    "message.send.max.retries",
    "retries",
    "queue.buffering.backpressure.threshold",
    "compression.codec",
    "compression.type",
    "compression.level",
    "batch.num.messages",
    "batch.size",
    "delivery.report.only.error",
    "sticky.partitioning.linger.ms",
    "request.required.acks",
    "acks",
    "request.timeout.ms",
    "message.timeout.ms",
    "delivery.timeout.ms",
    "queuing.strategy",
    "produce.offset.report",
    "partitioner",
];

impl Default for SinkConfig {
    fn default() -> Self {
        SinkConfig {
            brokers: "localhost:9092".to_owned(),
            properties: Vec::new(),
            max_in_flight_records: 100_000,
            max_in_flight_bytes: 8 * 1024 * 1024,
            dead_letter_topic: None,
            transactional_id: None,
            overlap_commits: false,
        }
    }
}

/// Whether a librdkafka property holds a secret, whose value must never appear in
/// logs, errors or `Debug` output: passwords and passphrases (`sasl.password`,
/// `ssl.key.password`, `ssl.keystore.password`, private-key passphrases), secrets
/// (`sasl.oauthbearer.client.secret`), private keys inline (`ssl.key.pem`), tokens, and
/// `sasl.oauthbearer.config` (which may embed any of them). Case-insensitive. The one
/// rule for outboxd, so that its configuration and the sink redact the same keys.
pub fn is_secret(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    ["password", "passphrase", "secret", "key.pem"]
        .iter()
        .any(|part| key.contains(part))
        || key.ends_with("token")
        || key == "sasl.oauthbearer.config"
        || key == "ssl_key"
}

/// A configuration error without the value of a secret property.
pub(crate) fn config_error(err: KafkaError) -> SinkError {
    match err {
        KafkaError::ClientConfig(_, _, key, _) if is_secret(&key) => {
            SinkError::Config(format!("property {key}: invalid value"))
        }
        KafkaError::ClientConfig(_, desc, key, _) => {
            SinkError::Config(format!("property {key}: {desc}"))
        }
        KafkaError::ClientCreation(msg) => SinkError::Config(msg),
        other => SinkError::Kafka(other),
    }
}

impl fmt::Debug for SinkConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        struct Redacted<'a>(&'a [(String, String)]);
        impl fmt::Debug for Redacted<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_map()
                    .entries(self.0.iter().map(|(k, v)| {
                        let v = if is_secret(k) { "[redacted]" } else { v };
                        (k, v)
                    }))
                    .finish()
            }
        }
        f.debug_struct("SinkConfig")
            .field("brokers", &self.brokers)
            .field("properties", &Redacted(&self.properties))
            .field("max_in_flight_records", &self.max_in_flight_records)
            .field("max_in_flight_bytes", &self.max_in_flight_bytes)
            .field("dead_letter_topic", &self.dead_letter_topic)
            .field("transactional_id", &self.transactional_id)
            .field("overlap_commits", &self.overlap_commits)
            .finish()
    }
}

/// Checks the names of the librdkafka properties a caller passes through.
pub fn check_properties<'a>(names: impl IntoIterator<Item = &'a str>) -> Result<(), SinkError> {
    if names.into_iter().any(|name| name == "transactional.id") {
        return Err(SinkError::TransactionalIdProperty);
    }
    Ok(())
}

impl SinkConfig {
    pub(crate) fn validate(&self) -> Result<(), SinkError> {
        if self.max_in_flight_records == 0 {
            return Err(SinkError::Config(
                "max_in_flight_records must be at least 1".into(),
            ));
        }
        if self.max_in_flight_bytes == 0 {
            return Err(SinkError::Config(
                "max_in_flight_bytes must be at least 1".into(),
            ));
        }
        let brokers_in_properties = self
            .properties
            .iter()
            .any(|(k, _)| k == "bootstrap.servers" || k == "metadata.broker.list");
        if self.brokers.trim().is_empty() && !brokers_in_properties {
            return Err(SinkError::Config("no Kafka brokers configured".into()));
        }
        if let Some(t) = &self.dead_letter_topic {
            if t.is_empty() {
                return Err(SinkError::Config(
                    "dead_letter_topic must not be empty (use None for no dead-letter topic)"
                        .into(),
                ));
            }
        }
        check_properties(self.properties.iter().map(|(k, _)| k.as_str()))?;
        if self.transactional_id.as_deref() == Some("") {
            return Err(SinkError::Config(
                "transactional_id must not be empty".into(),
            ));
        }
        Ok(())
    }

    /// The librdkafka configuration: our defaults, then the user's properties. A
    /// transactional producer gets its id, [`TRANSACTIONAL_LINGER_MS`] unless the user
    /// set a linger, and no `message.timeout.ms` of ours: librdkafka then bounds it
    /// by `transaction.timeout.ms`, as it must be.
    pub(crate) fn client_config(&self) -> ClientConfig {
        let mut c = self.producer_config(&[]);
        if let Some(id) = &self.transactional_id {
            c.set("transactional.id", id);
            let user_set = |name: &str| self.properties.iter().any(|(k, _)| k == name);
            if !user_set("message.timeout.ms") && !user_set("delivery.timeout.ms") {
                c.remove("message.timeout.ms");
            }
            if !user_set("linger.ms") && !user_set("queue.buffering.max.ms") {
                set(&mut c, "linger.ms", TRANSACTIONAL_LINGER_MS);
            }
        }
        c
    }

    /// [`client_config`](Self::client_config), then `overrides`, which win over the
    /// user's properties (for the helper clients, whose guarantees must not be tuned
    /// away).
    pub(crate) fn producer_config(&self, overrides: &[(&str, &str)]) -> ClientConfig {
        let mut c = self.connection();
        for (k, v) in DEFAULT_PROPERTIES {
            set(&mut c, k, v);
        }
        for (k, v) in &self.properties {
            set(&mut c, k, v);
        }
        for (k, v) in overrides {
            set(&mut c, k, v);
        }
        c
    }

    /// The connection settings for the helper clients (consumer, admin): brokers and
    /// the user's properties without the producer-only ones (librdkafka would warn
    /// about each), then `overrides`.
    pub(crate) fn connection_config(&self, overrides: &[(&str, &str)]) -> ClientConfig {
        let mut c = self.connection();
        for (k, v) in &self.properties {
            if !PRODUCER_ONLY.contains(&k.as_str()) {
                set(&mut c, k, v);
            }
        }
        for (k, v) in overrides {
            set(&mut c, k, v);
        }
        c
    }

    fn connection(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        // Log lines go through the context's `log` into `tracing`, which filters.
        c.set_log_level(RDKafkaLogLevel::Info);
        if !self.brokers.trim().is_empty() {
            c.set("bootstrap.servers", self.brokers.trim());
        }
        c
    }
}

/// Sets a property, first removing its other names (see [`ALIASES`]).
fn set(c: &mut ClientConfig, key: &str, value: &str) {
    if let Some(group) = ALIASES.iter().find(|g| g.contains(&key)) {
        for other in group.iter() {
            c.remove(other);
        }
    }
    c.set(key, value);
}

#[cfg(test)]
mod tests {
    use rdkafka::types::RDKafkaConfRes;

    use super::*;

    #[test]
    fn config_errors_never_show_secret_values() {
        let err = config_error(KafkaError::ClientConfig(
            RDKafkaConfRes::RD_KAFKA_CONF_INVALID,
            "Invalid value \"hunter2\" for configuration property \"sasl.password\"".into(),
            "sasl.password".into(),
            "hunter2".into(),
        ));
        let shown = format!("{err} {err:?}");
        assert!(shown.contains("sasl.password"), "{shown}");
        assert!(!shown.contains("hunter2"), "{shown}");

        let err = config_error(KafkaError::ClientConfig(
            RDKafkaConfRes::RD_KAFKA_CONF_INVALID,
            "Invalid value \"sometimes\" for configuration property \"acks\"".into(),
            "acks".into(),
            "sometimes".into(),
        ));
        assert!(err.to_string().contains("sometimes"), "{err}");
    }

    #[test]
    fn secret_keys_are_recognized() {
        for key in [
            "sasl.password",
            "SASL.PASSWORD",
            "ssl.key.password",
            "ssl.keystore.password",
            "ssl.key.pem",
            "sasl.oauthbearer.client.secret",
            "sasl.oauthbearer.client.credentials.client.secret",
            "sasl.oauthbearer.assertion.private.key.passphrase",
            "sasl.oauthbearer.assertion.private.key.pem",
            "sasl.oauthbearer.config",
            "some.access.token",
        ] {
            assert!(is_secret(key), "{key} is a secret");
        }
        for key in [
            "sasl.username",
            "ssl.key.location",
            "ssl.certificate.pem",
            "ssl.ca.pem",
            "sasl.oauthbearer.token.endpoint.url",
            "sasl.oauthbearer.client.id",
            "bootstrap.servers",
        ] {
            assert!(!is_secret(key), "{key} is not a secret");
        }
    }

    #[test]
    fn debug_redacts_secrets() {
        let config = SinkConfig {
            properties: vec![
                ("sasl.username".into(), "relay".into()),
                ("sasl.password".into(), "hunter2".into()),
                ("ssl.key.password".into(), "pem-pass".into()),
                ("sasl.oauthbearer.client.secret".into(), "s3cr3t".into()),
                ("SASL.PASSWORD".into(), "upper".into()),
            ],
            ..SinkConfig::default()
        };
        let shown = format!("{config:?}");
        assert!(shown.contains("relay"), "{shown}");
        for secret in ["hunter2", "pem-pass", "s3cr3t", "upper"] {
            assert!(!shown.contains(secret), "{secret} leaked: {shown}");
        }
        assert!(shown.contains("[redacted]"));
    }

    #[test]
    fn user_properties_override_defaults_and_their_aliases() {
        let config = SinkConfig {
            brokers: "b1:9092".into(),
            properties: vec![
                ("request.required.acks".into(), "1".into()),
                ("queue.buffering.max.ms".into(), "5".into()),
                ("partitioner".into(), "consistent_random".into()),
            ],
            ..SinkConfig::default()
        };
        let c = config.client_config();
        assert_eq!(c.get("bootstrap.servers"), Some("b1:9092"));
        assert_eq!(c.get("acks"), None);
        assert_eq!(c.get("request.required.acks"), Some("1"));
        assert_eq!(c.get("linger.ms"), None);
        assert_eq!(c.get("queue.buffering.max.ms"), Some("5"));
        assert_eq!(c.get("partitioner"), Some("consistent_random"));
        assert_eq!(c.get("enable.idempotence"), Some("true"));
    }

    #[test]
    fn connection_config_leaves_producer_properties_out_and_overrides_win() {
        let config = SinkConfig {
            brokers: "b1:9092".into(),
            properties: vec![
                ("linger.ms".into(), "50".into()),
                ("security.protocol".into(), "SASL_SSL".into()),
                ("isolation.level".into(), "read_uncommitted".into()),
            ],
            ..SinkConfig::default()
        };
        let c = config.connection_config(&[("isolation.level", "read_committed")]);
        assert_eq!(c.get("bootstrap.servers"), Some("b1:9092"));
        assert_eq!(c.get("security.protocol"), Some("SASL_SSL"));
        assert_eq!(c.get("linger.ms"), None);
        assert_eq!(c.get("enable.idempotence"), None);
        assert_eq!(c.get("isolation.level"), Some("read_committed"));

        let p = config.producer_config(&[("request.required.acks", "all")]);
        assert_eq!(p.get("acks"), None, "the alias was replaced");
        assert_eq!(p.get("request.required.acks"), Some("all"));
        assert_eq!(p.get("linger.ms"), Some("50"));
    }

    #[test]
    fn defaults_are_what_the_relay_needs() {
        let c = SinkConfig::default().client_config();
        assert_eq!(c.get("enable.idempotence"), Some("true"));
        assert_eq!(c.get("acks"), Some("all"));
        assert_eq!(c.get("partitioner"), Some("murmur2_random"));
        let linger: u32 = c
            .get("linger.ms")
            .and_then(|v| v.parse().ok())
            .unwrap_or(999);
        assert!(linger <= 5);
        assert_eq!(c.get("max.in.flight.requests.per.connection"), Some("5"));
        assert_eq!(c.get("message.timeout.ms"), Some("0"));
    }

    #[test]
    fn a_transactional_producer_lingers_less_unless_told_otherwise() {
        let transactional = |properties: Vec<(String, String)>| SinkConfig {
            transactional_id: Some("t".into()),
            properties,
            ..SinkConfig::default()
        };
        let c = transactional(vec![]).client_config();
        assert_eq!(c.get("linger.ms"), Some(TRANSACTIONAL_LINGER_MS));
        assert_eq!(c.get("message.timeout.ms"), None);
        let c = transactional(vec![("queue.buffering.max.ms".into(), "7".into())]).client_config();
        assert_eq!(c.get("queue.buffering.max.ms"), Some("7"));
        assert_eq!(c.get("linger.ms"), None);
    }

    #[test]
    fn validation_rejects_unusable_settings() {
        let zero = SinkConfig {
            max_in_flight_records: 0,
            ..SinkConfig::default()
        };
        assert!(matches!(zero.validate(), Err(SinkError::Config(_))));
        let no_brokers = SinkConfig {
            brokers: " ".into(),
            ..SinkConfig::default()
        };
        assert!(matches!(no_brokers.validate(), Err(SinkError::Config(_))));
        let txn = SinkConfig {
            properties: vec![("transactional.id".into(), "x".into())],
            ..SinkConfig::default()
        };
        assert!(matches!(
            txn.validate(),
            Err(SinkError::TransactionalIdProperty)
        ));
        assert!(SinkConfig::default().validate().is_ok());
    }
}

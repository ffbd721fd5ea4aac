//! Configuration: defaults, then a TOML file, then environment variables, then flags.
//!
//! Environment variables mirror the file: `OUTBOXD_<SECTION>__<KEY>`, e.g.
//! `OUTBOXD_POSTGRES__URL`, `OUTBOXD_KAFKA__BROKERS`, `OUTBOXD_ROUTING__TOPIC`.
//! librdkafka properties pass through under `[kafka.producer]`; from the environment
//! their dots are written as single underscores: `OUTBOXD_KAFKA__PRODUCER__SASL_PASSWORD`
//! sets `sasl.password` (librdkafka property names contain no underscores).
//! `docs/configuration.md` is the reference.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub postgres: PostgresConfig,
    pub kafka: KafkaConfig,
    pub routing: RoutingConfig,
    pub server: ServerConfig,
    pub log: LogConfig,
}

#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct PostgresConfig {
    /// libpq-style URL or key=value string; the password is better kept out of it.
    pub url: String,
    /// The password, when not in the URL (prefer the environment or `password_file`).
    pub password: Option<String>,
    /// A file whose first line is the password (e.g. a mounted secret).
    pub password_file: Option<PathBuf>,
    pub slot: String,
    pub publication: String,
    /// Outbox tables (`table` or `schema.table`).
    pub tables: Vec<String>,
    /// Create the slot on a first start (no checkpoint yet) when it is missing. A
    /// slot that disappears later is never recreated (docs/operations.md).
    pub create_slot: bool,
    /// Create the slot with failover enabled, so that standbys with
    /// `sync_replication_slots` keep a copy (PostgreSQL 17+).
    pub failover_slot: bool,
    /// Create the publication when it is missing (needs table ownership).
    pub create_publication: bool,
    /// Upper bound for the interval between standby status updates, in milliseconds
    /// (also capped at a third of the server's wal_sender_timeout).
    pub status_interval_ms: u64,
    /// Seconds without a byte from the server after which the replication
    /// connection counts as dead and is reopened (a keepalive is requested halfway).
    /// Unset: the server's wal_sender_timeout + 5 s, or 60 s when that is disabled.
    pub receive_timeout_secs: Option<u64>,
    /// Bytes of decoded messages buffered between the stream and the relay.
    pub max_buffered_bytes: usize,
}

impl std::fmt::Debug for PostgresConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresConfig")
            .field("url", &redact_url(&self.url))
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("password_file", &self.password_file)
            .field("slot", &self.slot)
            .field("publication", &self.publication)
            .field("tables", &self.tables)
            .field("create_slot", &self.create_slot)
            .field("failover_slot", &self.failover_slot)
            .field("create_publication", &self.create_publication)
            .field("status_interval_ms", &self.status_interval_ms)
            .field("receive_timeout_secs", &self.receive_timeout_secs)
            .field("max_buffered_bytes", &self.max_buffered_bytes)
            .finish()
    }
}

impl Default for PostgresConfig {
    fn default() -> Self {
        PostgresConfig {
            url: String::new(),
            password: None,
            password_file: None,
            slot: "outboxd".to_owned(),
            publication: "outboxd".to_owned(),
            tables: vec!["public.outbox".to_owned()],
            create_slot: true,
            failover_slot: false,
            create_publication: true,
            status_interval_ms: 10_000,
            receive_timeout_secs: None,
            max_buffered_bytes: 4 << 20,
        }
    }
}

impl PostgresConfig {
    /// The stream's receive timeout; `None` lets it follow the server's
    /// wal_sender_timeout.
    pub fn receive_timeout(&self) -> Option<Duration> {
        self.receive_timeout_secs.map(Duration::from_secs)
    }
}

#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaConfig {
    pub brokers: String,
    /// librdkafka properties, applied over outboxd's defaults (TLS, SASL, tuning).
    pub producer: BTreeMap<String, String>,
    /// Where undeliverable or unroutable events go; empty: stop instead.
    pub dead_letter_topic: Option<String>,
    pub max_in_flight_records: usize,
    /// Payload plus per-record overhead in flight: the sink's share of memory.
    pub max_in_flight_bytes: usize,
    /// The compacted topic that records what was delivered (docs/architecture.md).
    pub checkpoint_topic: String,
    /// The shortest time between two checkpoint writes, in milliseconds.
    pub checkpoint_interval_ms: u64,
    /// Replication factor of the checkpoint topic when outboxd creates it; -1: the
    /// broker's default.
    pub checkpoint_replication_factor: i32,
    /// `at-least-once` (the default) or `exactly-once` (Kafka transactions; consumers
    /// read with `isolation.level=read_committed`).
    pub delivery: Delivery,
    /// Exactly-once: the producer's `transactional.id`; unset, it is derived from the
    /// relay's identity (system identifier, database, slot).
    pub transactional_id: Option<String>,
    /// Exactly-once: a Kafka transaction is committed at the latest this many
    /// milliseconds after its first record...
    pub transaction_max_ms: u64,
    /// ... or once its records reach this many bytes.
    pub transaction_max_bytes: usize,
}

/// How records reach Kafka (docs/delivery.md).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Delivery {
    /// Idempotent produce; after a crash events may come again (same id and
    /// `outboxd.lsn` + `outboxd.index`).
    #[default]
    AtLeastOnce,
    /// Transactional produce with the checkpoint in the same Kafka transaction: a
    /// `read_committed` consumer sees every event exactly once.
    ExactlyOnce,
}

impl std::fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let producer: BTreeMap<&str, &str> = self
            .producer
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str(),
                    if outboxd_kafka_sink::is_secret(k) {
                        "<redacted>"
                    } else {
                        v.as_str()
                    },
                )
            })
            .collect();
        f.debug_struct("KafkaConfig")
            .field("brokers", &self.brokers)
            .field("producer", &producer)
            .field("dead_letter_topic", &self.dead_letter_topic)
            .field("max_in_flight_records", &self.max_in_flight_records)
            .field("max_in_flight_bytes", &self.max_in_flight_bytes)
            .field("checkpoint_topic", &self.checkpoint_topic)
            .field("checkpoint_interval_ms", &self.checkpoint_interval_ms)
            .field(
                "checkpoint_replication_factor",
                &self.checkpoint_replication_factor,
            )
            .field("delivery", &self.delivery)
            .field("transactional_id", &self.transactional_id)
            .field("transaction_max_ms", &self.transaction_max_ms)
            .field("transaction_max_bytes", &self.transaction_max_bytes)
            .finish()
    }
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            brokers: String::new(),
            producer: BTreeMap::new(),
            dead_letter_topic: None,
            max_in_flight_records: 100_000,
            max_in_flight_bytes: 8 << 20,
            checkpoint_topic: "outboxd.checkpoints".to_owned(),
            checkpoint_interval_ms: 20,
            checkpoint_replication_factor: -1,
            delivery: Delivery::AtLeastOnce,
            transactional_id: None,
            transaction_max_ms: 20,
            transaction_max_bytes: 1 << 20,
        }
    }
}

/// How the record key is serialized.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum KeyFormat {
    /// The aggregate id's bytes, as Kafka Connect's StringConverter writes them.
    #[default]
    String,
    /// A JSON string (`"order-1"`), as Connect's JsonConverter (schemas off) writes it.
    Json,
}

/// Names of the outbox table's columns (Debezium's defaults).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ColumnNames {
    pub id: String,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub event_type: String,
    pub payload: String,
}

impl Default for ColumnNames {
    fn default() -> Self {
        ColumnNames {
            id: "id".to_owned(),
            aggregate_type: "aggregatetype".to_owned(),
            aggregate_id: "aggregateid".to_owned(),
            event_type: "type".to_owned(),
            payload: "payload".to_owned(),
        }
    }
}

/// A column placed as a record header (Debezium's `column:header:name`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct HeaderPlacement {
    pub column: String,
    pub header: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RoutingConfig {
    /// Topic template; `${routedByValue}` (or `${aggregatetype}`) is the aggregate type.
    pub topic: String,
    pub key_format: KeyFormat,
    pub columns: ColumnNames,
    /// Further columns as headers, e.g. `{ column = "type", header = "eventType" }`.
    pub additional_headers: Vec<HeaderPlacement>,
    /// Add `outboxd.lsn`, `outboxd.index`, `outboxd.xid`, `outboxd.commit_time`.
    pub source_headers: bool,
    /// Prefix of `pg_logical_emit_message` outbox messages; empty disables them.
    pub message_prefix: String,
    /// Largest key + value accepted; keep it at or below the broker's message.max.bytes.
    pub max_record_bytes: usize,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        RoutingConfig {
            topic: "outbox.event.${routedByValue}".to_owned(),
            key_format: KeyFormat::String,
            columns: ColumnNames::default(),
            additional_headers: Vec::new(),
            source_headers: true,
            message_prefix: "outbox".to_owned(),
            max_record_bytes: 1_000_000,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// `/healthz`, `/readyz`, `/metrics`; empty disables the server.
    pub metrics_address: String,
    /// How long a graceful stop waits for in-flight deliveries, in seconds.
    pub shutdown_timeout_secs: u64,
    /// Threads of outboxd's own async runtime (librdkafka has threads of its own).
    /// 1 (the default): one thread for the reader, the relay and the HTTP server, so
    /// handing a batch from the reader to the relay needs no cross-thread wake-up —
    /// in 300k-event drains it halved outboxd's CPU per event and drained 1.1–1.9×
    /// faster than two workers. More: a multi-threaded runtime with that many workers.
    pub worker_threads: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            metrics_address: "127.0.0.1:9187".to_owned(),
            shutdown_timeout_secs: 30,
            worker_threads: 1,
        }
    }
}

impl ServerConfig {
    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_secs(self.shutdown_timeout_secs)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `text` or `json`.
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Values from command-line flags, applied last.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub postgres_url: Option<String>,
    pub slot: Option<String>,
    pub publication: Option<String>,
    pub tables: Vec<String>,
    pub kafka_brokers: Option<String>,
    pub metrics_address: Option<String>,
}

impl Config {
    /// Loads defaults → `file` → environment (`OUTBOXD_…`) → flags, and checks it.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> anyhow::Result<Config> {
        Self::load_from(file, overrides, std::env::vars())
    }

    /// As [`Config::load`], with the environment given (for tests).
    pub fn load_from(
        file: Option<&Path>,
        overrides: &Overrides,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> anyhow::Result<Config> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            if !path.exists() {
                anyhow::bail!("configuration file {} does not exist", path.display());
            }
            figment = figment.merge(Toml::file(path));
        }
        let env: Vec<(String, String)> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with("OUTBOXD_") && k.contains("__"))
            .collect();
        figment = figment.merge(env_provider(&env));
        let mut config: Config = figment
            .extract()
            .map_err(|e| anyhow::anyhow!("invalid configuration: {}", describe(e)))?;
        config.apply(overrides);
        config.resolve_secrets()?;
        config.validate()?;
        Ok(config)
    }

    fn apply(&mut self, o: &Overrides) {
        if let Some(v) = &o.postgres_url {
            self.postgres.url = v.clone();
        }
        if let Some(v) = &o.slot {
            self.postgres.slot = v.clone();
        }
        if let Some(v) = &o.publication {
            self.postgres.publication = v.clone();
        }
        if !o.tables.is_empty() {
            self.postgres.tables = o.tables.clone();
        }
        if let Some(v) = &o.kafka_brokers {
            self.kafka.brokers = v.clone();
        }
        if let Some(v) = &o.metrics_address {
            self.server.metrics_address = v.clone();
        }
    }

    fn resolve_secrets(&mut self) -> anyhow::Result<()> {
        if self.postgres.password.is_none() {
            if let Some(path) = &self.postgres.password_file {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    anyhow::anyhow!("cannot read postgres.password_file {}: {e}", path.display())
                })?;
                self.postgres.password = text.lines().next().map(str::to_owned);
            }
        }
        if self.postgres.password.is_none() {
            self.postgres.password = std::env::var("PGPASSWORD").ok();
        }
        Ok(())
    }

    fn validate(&self) -> anyhow::Result<()> {
        if self.postgres.url.is_empty() {
            anyhow::bail!(
                "postgres.url is not set: pass --postgres-url, set OUTBOXD_POSTGRES__URL or \
                 put url under [postgres] in the configuration file"
            );
        }
        if self.postgres.receive_timeout_secs == Some(0) {
            anyhow::bail!(
                "postgres.receive_timeout_secs must be at least 1; leave it unset to follow \
                 the server's wal_sender_timeout"
            );
        }
        if self.kafka.checkpoint_topic.is_empty() {
            anyhow::bail!(
                "kafka.checkpoint_topic must not be empty: outboxd records what it delivered there"
            );
        }
        if self.postgres.tables.is_empty() && self.routing.message_prefix.is_empty() {
            anyhow::bail!("nothing to relay: set postgres.tables and/or routing.message_prefix");
        }
        Ok(())
    }

    /// Settings that work but are probably not what was meant. Returned rather than
    /// logged, because configuration is read before logging starts.
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        if !self.routing.topic.contains("${") {
            warnings.push(format!(
                "routing.topic '{}' has no ${{routedByValue}}: every event goes to one topic",
                self.routing.topic
            ));
        }
        warnings
    }
}

/// Names where each problem is (the file, or the environment variable), the section
/// and the key; figment's own text says only `for key "default.postgres.slto"`.
fn describe(error: figment::Error) -> String {
    let problems: Vec<String> = error
        .into_iter()
        .map(|e| {
            let origin = match e.metadata.as_ref().and_then(|m| m.source.as_ref()) {
                Some(figment::Source::File(path)) => format!("in {}", path.display()),
                _ => format!(
                    "in environment variable OUTBOXD_{}",
                    e.path.join("__").to_ascii_uppercase()
                ),
            };
            let section = match e.path.split_last() {
                Some((_, parents)) if !parents.is_empty() => format!("[{}]", parents.join(".")),
                _ => "the top level".to_owned(),
            };
            match &e.kind {
                figment::error::Kind::UnknownField(key, expected) => format!(
                    "unknown key '{key}' in {section} {origin}; {section} has: {}",
                    expected.join(", ")
                ),
                kind => format!("{} {origin}: {kind}", e.path.join(".")),
            }
        })
        .collect();
    problems.join("; ")
}

/// `OUTBOXD_A__B__C=v` → `a.b.c = v`; under `kafka.producer`, `_` in the property
/// name becomes `.`.
fn env_provider(vars: &[(String, String)]) -> Serialized<BTreeMap<String, toml_value::Value>> {
    let mut root = BTreeMap::new();
    for (key, value) in vars {
        let Some(rest) = key.strip_prefix("OUTBOXD_") else {
            continue;
        };
        let parts: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
        let path: Vec<String> = if parts.len() == 3 && parts[0] == "kafka" && parts[1] == "producer"
        {
            vec![
                parts[0].clone(),
                parts[1].clone(),
                parts[2].replace('_', "."),
            ]
        } else {
            parts
        };
        toml_value::insert(&mut root, &path, value);
    }
    Serialized::defaults(root)
}

/// A tiny value tree for environment overrides: strings parsed as TOML scalars
/// where they look like one (so `OUTBOXD_POSTGRES__CREATE_SLOT=false` is a bool).
mod toml_value {
    use std::collections::BTreeMap;

    use serde::Serialize;

    #[derive(Debug, Clone, Serialize)]
    #[serde(untagged)]
    pub enum Value {
        Bool(bool),
        Int(i64),
        String(String),
        List(Vec<String>),
        Table(BTreeMap<String, Value>),
    }

    fn scalar(raw: &str, key: &str) -> Value {
        if key == "tables" {
            return Value::List(
                raw.split(',')
                    .map(|s| s.trim().to_owned())
                    .filter(|s| !s.is_empty())
                    .collect(),
            );
        }
        match raw {
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            _ => match raw.parse::<i64>() {
                // Producer properties stay strings: librdkafka wants them as text.
                Ok(n) if !key.contains('.') => Value::Int(n),
                _ => Value::String(raw.to_owned()),
            },
        }
    }

    pub fn insert(root: &mut BTreeMap<String, Value>, path: &[String], raw: &str) {
        let Some((last, parents)) = path.split_last() else {
            return;
        };
        let mut table = root;
        for p in parents {
            let entry = table
                .entry(p.clone())
                .or_insert_with(|| Value::Table(BTreeMap::new()));
            if !matches!(entry, Value::Table(_)) {
                *entry = Value::Table(BTreeMap::new());
            }
            let Value::Table(t) = entry else { return };
            table = t;
        }
        table.insert(last.clone(), scalar(raw, last));
    }
}

/// The URL without its password, for logs.
pub fn redact_url(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://") {
        if let Some((userinfo, host)) = rest.rsplit_once('@') {
            if let Some((user, _)) = userinfo.split_once(':') {
                return format!("{scheme}://{user}:<redacted>@{host}");
            }
        }
    }
    url.split_whitespace()
        .map(|kv| {
            if kv.starts_with("password=") {
                "password=<redacted>"
            } else {
                kv
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn layers_file_then_env_then_flags() {
        let dir = std::env::temp_dir().join(format!("outboxd-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("outboxd.toml");
        std::fs::write(
            &file,
            r#"
            [postgres]
            url = "postgres://file@h/db"
            slot = "from_file"
            tables = ["app.outbox"]
            [kafka]
            brokers = "file:9092"
            [kafka.producer]
            "linger.ms" = "3"
            [routing]
            key_format = "json"
            additional_headers = [{ column = "type", header = "eventType" }]
            "#,
        )
        .unwrap();
        let config = Config::load_from(
            Some(&file),
            &Overrides {
                kafka_brokers: Some("flag:9092".to_owned()),
                ..Default::default()
            },
            env(&[
                ("OUTBOXD_POSTGRES__SLOT", "from_env"),
                ("OUTBOXD_POSTGRES__CREATE_SLOT", "false"),
                ("OUTBOXD_KAFKA__PRODUCER__SASL_PASSWORD", "s3cret"),
                ("OUTBOXD_KAFKA__MAX_IN_FLIGHT_RECORDS", "7"),
                ("OUTBOXD_UNRELATED", "x"),
            ]),
        )
        .unwrap();
        assert_eq!(config.postgres.url, "postgres://file@h/db");
        assert_eq!(config.postgres.slot, "from_env");
        assert!(!config.postgres.create_slot);
        assert_eq!(config.postgres.tables, ["app.outbox"]);
        assert_eq!(config.kafka.brokers, "flag:9092");
        assert_eq!(
            config.kafka.producer.get("linger.ms").map(String::as_str),
            Some("3")
        );
        assert_eq!(
            config
                .kafka
                .producer
                .get("sasl.password")
                .map(String::as_str),
            Some("s3cret")
        );
        assert_eq!(config.kafka.max_in_flight_records, 7);
        assert_eq!(config.routing.key_format, KeyFormat::Json);
        assert_eq!(config.routing.additional_headers[0].header, "eventType");
        let shown = format!("{config:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
    }

    #[test]
    fn unknown_keys_and_missing_url_are_clear_errors() {
        let dir = std::env::temp_dir().join(format!("outboxd-cfg2-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("bad.toml");
        std::fs::write(&file, "[postgres]\nurl = \"x\"\nslto = \"typo\"\n").unwrap();
        let e = Config::load_from(Some(&file), &Overrides::default(), env(&[])).unwrap_err();
        let shown = e.to_string();
        assert!(
            shown.contains("unknown key 'slto' in [postgres]"),
            "{shown}"
        );
        assert!(shown.contains(&file.display().to_string()), "{shown}");
        assert!(shown.contains("slot"), "the valid keys are listed: {shown}");
        let e = Config::load_from(
            None,
            &Overrides::default(),
            env(&[
                ("OUTBOXD_POSTGRES__URL", "postgres://h/db"),
                ("OUTBOXD_KAFKA__MAX_IN_FLIGHT_RECORDS", "many"),
            ]),
        )
        .unwrap_err();
        let shown = e.to_string();
        assert!(
            shown.contains("OUTBOXD_KAFKA__MAX_IN_FLIGHT_RECORDS"),
            "{shown}"
        );
        let e = Config::load_from(None, &Overrides::default(), env(&[])).unwrap_err();
        assert!(e.to_string().contains("postgres.url"), "{e}");
    }

    #[test]
    fn receive_timeout_follows_the_server_unless_set() {
        let url = ("OUTBOXD_POSTGRES__URL", "postgres://h/db");
        let config = Config::load_from(None, &Overrides::default(), env(&[url])).unwrap();
        assert_eq!(config.postgres.receive_timeout(), None);
        let config = Config::load_from(
            None,
            &Overrides::default(),
            env(&[url, ("OUTBOXD_POSTGRES__RECEIVE_TIMEOUT_SECS", "25")]),
        )
        .unwrap();
        assert_eq!(
            config.postgres.receive_timeout(),
            Some(Duration::from_secs(25))
        );
        let e = Config::load_from(
            None,
            &Overrides::default(),
            env(&[url, ("OUTBOXD_POSTGRES__RECEIVE_TIMEOUT_SECS", "0")]),
        )
        .unwrap_err();
        assert!(e.to_string().contains("receive_timeout_secs"), "{e}");
    }

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact_url("postgres://u:pw@h/db"),
            "postgres://u:<redacted>@h/db"
        );
        assert_eq!(
            redact_url("host=h password=pw"),
            "host=h password=<redacted>"
        );
        assert_eq!(redact_url("postgres://u@h/db"), "postgres://u@h/db");
    }
}

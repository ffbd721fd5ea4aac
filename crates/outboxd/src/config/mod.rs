//! Configuration: defaults, then a TOML file, then environment variables, then flags.
//!
//! Environment variables mirror the file: `OUTBOXD_<SECTION>__<KEY>`, e.g.
//! `OUTBOXD_POSTGRES__URL`, `OUTBOXD_KAFKA__BROKERS`, `OUTBOXD_ROUTING__TOPIC`.
//! librdkafka properties pass through under `[kafka.producer]`; from the environment
//! their dots are written as single underscores: `OUTBOXD_KAFKA__PRODUCER__SASL_PASSWORD`
//! sets `sasl.password` (librdkafka property names contain no underscores).
//! `docs/configuration.md` is the reference.

mod env;
mod kafka;
mod postgres;
mod routing;
mod server;

use std::path::Path;

use figment::providers::{Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

pub use kafka::{Delivery, KafkaConfig, TopicCreation, TopicGroup};
pub use postgres::{redact_url, PostgresConfig};
pub use routing::{
    BinaryHandling, ColumnNames, EnvelopeField, HeaderPlacement, InvalidOperation,
    JsonPayloadEmptyArrays, JsonPayloadNulls, MissingColumns, RecordFormat, RoutingConfig,
};
pub use server::{LogConfig, LogFormat, ServerConfig};

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub postgres: PostgresConfig,
    pub kafka: KafkaConfig,
    pub routing: RoutingConfig,
    pub server: ServerConfig,
    pub log: LogConfig,
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
        figment = figment.merge(env::env_provider(&env));
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
        let producer_properties = self.kafka.producer.keys().map(String::as_str);
        outboxd_kafka_sink::check_properties(producer_properties).map_err(|e| match e {
            outboxd_kafka_sink::SinkError::TransactionalIdProperty => anyhow::anyhow!(
                "kafka.producer.\"transactional.id\" is not allowed: set kafka.transactional_id \
                 instead (exactly-once only; unset, outboxd derives one from the relay's \
                 identity, docs/configuration.md)"
            ),
            other => other.into(),
        })?;
        if self.postgres.tables.is_empty() && !self.routing.relays_messages() {
            anyhow::bail!("nothing to relay: set postgres.tables and/or routing.message_prefix");
        }
        let tables = crate::settings::outbox_tables(self)?;
        crate::router::Router::new(&self.routing, &tables)
            .map_err(|e| anyhow::anyhow!("invalid routing configuration: {e}"))?;
        crate::topics::TopicRules::new(&self.kafka.topic_creation)
            .map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

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
        assert_eq!(config.routing.key_format, RecordFormat::Json);
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
        let e = Config::load_from(
            None,
            &Overrides::default(),
            env(&[
                ("OUTBOXD_POSTGRES__URL", "postgres://h/db"),
                ("OUTBOXD_KAFKA__PRODUCER__TRANSACTIONAL_ID", "mine"),
            ]),
        )
        .unwrap_err();
        assert!(e.to_string().contains("kafka.transactional_id"), "{e}");
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

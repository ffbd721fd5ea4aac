//! What an inbox consumer needs to know: where Kafka is, its group and topics, its
//! tables, and how patient to be.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::config::ClientConfig;

use crate::schema::Tables;
use crate::Error;

/// Settings of an [`Inbox`](crate::Inbox). Build one with [`Config::new`] and adjust
/// the public fields.
#[derive(Debug, Clone)]
pub struct Config {
    /// Bootstrap servers.
    pub brokers: String,
    /// Consumer group: every instance of one service uses the same.
    pub group_id: String,
    /// Topics to consume, e.g. `outbox.event.order`.
    pub topics: Vec<String>,
    /// The inbox table (`name` or `schema.name`); the versions table is
    /// `<table>_versions`. Default `inbox`.
    pub table: String,
    /// Further librdkafka consumer properties (`security.protocol`,
    /// `session.timeout.ms`, …). `enable.auto.commit` and `isolation.level` are
    /// the inbox's and may not be changed.
    pub properties: BTreeMap<String, String>,
    /// Attempts at one event (handler or database failing) before the consumer
    /// stops with an error naming it; 0 retries forever. Default 10.
    pub max_attempts: u32,
    /// Wait before the first retry; doubles up to [`Config::max_backoff`]. Default 100 ms.
    pub backoff: Duration,
    /// Longest wait between retries. Default 5 s.
    pub max_backoff: Duration,
    /// Records queued per partition before the partition is paused. Default 500.
    pub queue_per_partition: usize,
    /// How often applied offsets are committed (asynchronously). They are also
    /// committed synchronously when partitions are revoked and at shutdown.
    /// Default 200 ms.
    pub commit_interval: Duration,
    /// How long a revocation or shutdown waits for events being applied; a
    /// transaction still running after it finishes on its own, and its offset is
    /// left to the partition's next owner (which finds the event in the inbox).
    /// Default 30 s.
    pub drain_timeout: Duration,
}

impl Config {
    /// Defaults for everything but the brokers, the group and the topics.
    pub fn new(
        brokers: impl Into<String>,
        group_id: impl Into<String>,
        topics: impl IntoIterator<Item = impl Into<String>>,
    ) -> Config {
        Config {
            brokers: brokers.into(),
            group_id: group_id.into(),
            topics: topics.into_iter().map(Into::into).collect(),
            table: "inbox".to_owned(),
            properties: BTreeMap::new(),
            max_attempts: 10,
            backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            queue_per_partition: 500,
            commit_interval: Duration::from_millis(200),
            drain_timeout: Duration::from_secs(30),
        }
    }

    /// Sets one librdkafka property (see [`Config::properties`]).
    pub fn property(mut self, key: impl Into<String>, value: impl Into<String>) -> Config {
        self.properties.insert(key.into(), value.into());
        self
    }

    pub(crate) fn tables(&self) -> Result<Tables, Error> {
        Tables::new(&self.table).map_err(Error::Config)
    }

    /// The consumer's librdkafka configuration, or what is wrong with it.
    pub(crate) fn client_config(&self) -> Result<ClientConfig, Error> {
        if self.brokers.is_empty() || self.group_id.is_empty() || self.topics.is_empty() {
            return Err(Error::Config(
                "brokers, group_id and at least one topic are required".to_owned(),
            ));
        }
        if self.queue_per_partition == 0 {
            return Err(Error::Config(
                "queue_per_partition must be at least 1".to_owned(),
            ));
        }
        for (key, required) in FIXED {
            if let Some(v) = self.properties.get(*key).filter(|v| v != required) {
                return Err(Error::Config(format!(
                    "{key} = {v} is not allowed: the inbox needs {key} = {required} ({})",
                    why(key)
                )));
            }
        }
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers)
            .set("group.id", &self.group_id)
            .set("auto.offset.reset", "earliest")
            .set("partition.assignment.strategy", "cooperative-sticky");
        for (k, v) in &self.properties {
            c.set(k, v);
        }
        for (k, v) in FIXED {
            c.set(*k, *v);
        }
        Ok(c)
    }
}

/// Properties the inbox's guarantees rest on.
const FIXED: &[(&str, &str)] = &[
    ("enable.auto.commit", "false"),
    ("enable.auto.offset.store", "false"),
    ("isolation.level", "read_committed"),
];

fn why(key: &str) -> &'static str {
    match key {
        "isolation.level" => {
            "records of aborted Kafka transactions must never be applied, in exactly-once mode"
        }
        _ => "offsets are committed only after the database transaction that applied them",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guarantees_cannot_be_configured_away() {
        let base = Config::new("b:9092", "g", ["t"]);
        let c = base.clone().client_config().unwrap();
        assert_eq!(c.get("isolation.level"), Some("read_committed"));
        assert_eq!(c.get("enable.auto.commit"), Some("false"));
        assert_eq!(c.get("auto.offset.reset"), Some("earliest"));
        let e = base
            .clone()
            .property("isolation.level", "read_uncommitted")
            .client_config()
            .unwrap_err();
        assert!(e.to_string().contains("aborted Kafka transactions"), "{e}");
        let e = base
            .clone()
            .property("enable.auto.commit", "true")
            .client_config()
            .unwrap_err();
        assert!(e.to_string().contains("only after the database"), "{e}");
        // Restating the required value is fine; other properties pass through.
        let c = base
            .property("isolation.level", "read_committed")
            .property("session.timeout.ms", "6000")
            .client_config()
            .unwrap();
        assert_eq!(c.get("session.timeout.ms"), Some("6000"));
        let e = Config::new("b", "g", Vec::<String>::new())
            .client_config()
            .unwrap_err();
        assert!(e.to_string().contains("at least one topic"), "{e}");
    }
}

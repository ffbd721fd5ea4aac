//! `[postgres]`: where the outbox lives and how outboxd reads it.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

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

//! `[server]` and `[log]`: the HTTP endpoints, the runtime, shutdown and logging.

use std::time::Duration;

use serde::{Deserialize, Serialize};

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

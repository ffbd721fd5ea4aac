//! librdkafka's log lines and client errors, into `tracing` (target `librdkafka`),
//! without the floods: each distinct line is shown once per window at its level, with
//! the count of identical lines held back since (see [`LogLimiter`]). A line is
//! identified by its facility and message, an error by its code.
//!
//! Lines that say librdkafka is retrying something that heals by itself (a group or
//! transaction coordinator still loading at broker start) are debug lines; if the same
//! line comes back after a whole window, it did not heal, and is shown at its level.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::ConsumerContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use tracing::Level;

use crate::health::ClientHealth;
use crate::log_limiter::{LogLimiter, Verdict};

/// At most one line per distinct problem per this window. A line shown after being
/// held back carries `suppressed`: how many identical lines were not shown since.
const WINDOW: Duration = Duration::from_secs(30);

/// Errors a client retries on its own that resolve without anyone acting: the
/// coordinator of a fresh or restarted broker is loading its log; a transactional
/// producer taking over is refused while the broker aborts its predecessor's open
/// transaction (CONCURRENT_TRANSACTIONS).
const SELF_HEALING: &[&str] = &[
    "Coordinator load in progress",
    "Coordinator not available",
    "Not coordinator",
    "another concurrent operation on the same transaction",
];

/// Emits a `tracing` event at a level chosen at run time.
macro_rules! emit {
    ($level:expr, $($rest:tt)+) => {
        match $level {
            Level::ERROR => tracing::error!(target: "librdkafka", $($rest)+),
            Level::WARN => tracing::warn!(target: "librdkafka", $($rest)+),
            Level::INFO => tracing::info!(target: "librdkafka", $($rest)+),
            Level::DEBUG => tracing::debug!(target: "librdkafka", $($rest)+),
            _ => tracing::trace!(target: "librdkafka", $($rest)+),
        }
    };
}

#[derive(Debug)]
pub(crate) struct ClientLogs {
    limiter: LogLimiter,
}

impl Default for ClientLogs {
    fn default() -> Self {
        ClientLogs {
            limiter: LogLimiter::new(WINDOW),
        }
    }
}

impl ClientLogs {
    /// A librdkafka log line.
    pub(crate) fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        let key = format!("{facility}: {}", stable_part(message));
        let verdict = self.limiter.check(&key, Instant::now());
        let Some(level) = shown_level(tracing_level(level), message, verdict) else {
            return;
        };
        match suppressed(verdict) {
            0 => emit!(level, facility, "{message}"),
            n => emit!(level, facility, suppressed = n, "{message}"),
        }
    }

    /// A non-fatal client error (connection, TLS, SASL, all brokers down…). librdkafka
    /// retries on its own; what it gives up on reaches the application elsewhere.
    pub(crate) fn error(&self, error: &KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::PartitionEOF) {
            // A consumer reached the end of a partition: news, not a problem.
            tracing::debug!(target: "librdkafka", %reason, "end of partition");
            return;
        }
        let key = match error.rdkafka_error_code() {
            Some(code) => format!("error {code:?}"),
            None => format!("error {error}"),
        };
        let verdict = self.limiter.check(&key, Instant::now());
        let Some(level) = shown_level(Level::WARN, reason, verdict) else {
            return;
        };
        match suppressed(verdict) {
            0 => emit!(level, %error, %reason, "Kafka client error"),
            n => emit!(level, %error, %reason, suppressed = n, "Kafka client error"),
        }
    }
}

fn suppressed(verdict: Verdict) -> u64 {
    match verdict {
        Verdict::Show { suppressed } => suppressed,
        Verdict::Suppress => 0,
    }
}

/// The level to show a line at, or `None` to hold it back.
fn shown_level(level: Level, text: &str, verdict: Verdict) -> Option<Level> {
    match verdict {
        Verdict::Suppress => None,
        // It came back a window later, repeatedly: it is not healing.
        Verdict::Show { suppressed } if suppressed > 0 => Some(level),
        Verdict::Show { .. } if self_healing(text) && level < Level::DEBUG => Some(Level::DEBUG),
        Verdict::Show { .. } => Some(level),
    }
}

fn self_healing(text: &str) -> bool {
    SELF_HEALING.iter().any(|s| text.contains(s))
}

/// The part of a message that stays the same while the problem does: librdkafka ends
/// connection failures with a changing `(after 12ms in state CONNECT, 3 identical
/// error(s) suppressed)`.
fn stable_part(message: &str) -> &str {
    message.split(" (after ").next().unwrap_or(message)
}

fn tracing_level(level: RDKafkaLogLevel) -> Level {
    match level {
        RDKafkaLogLevel::Emerg
        | RDKafkaLogLevel::Alert
        | RDKafkaLogLevel::Critical
        | RDKafkaLogLevel::Error => Level::ERROR,
        RDKafkaLogLevel::Warning => Level::WARN,
        RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => Level::INFO,
        RDKafkaLogLevel::Debug => Level::DEBUG,
    }
}

/// The context of the crate's helper clients (checkpoint store, admin requests): their
/// log lines and errors go through [`ClientLogs`] too, and [`ClientHealth`] keeps the
/// last error to explain a failed request.
#[derive(Debug, Default)]
pub(crate) struct LoggingContext {
    pub logs: ClientLogs,
    pub health: ClientHealth,
    /// Set by the client's owner just before dropping it: the connections it closes
    /// then are not worth a warning.
    closing: AtomicBool,
}

impl LoggingContext {
    /// The client is about to be dropped.
    pub(crate) fn closing(&self) {
        self.closing.store(true, Ordering::Relaxed);
    }
}

impl ClientContext for LoggingContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        // Nothing polls these clients' main queue, so their error callback may never
        // run before a request fails; the error-level log line says why in time
        // (connection refused, TLS handshake or SASL authentication failed).
        if tracing_level(level) == Level::ERROR {
            self.health.set_last_client_error(log_message.to_owned());
        }
        self.logs.log(level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if self.health.record(&error, reason) {
            tracing::error!(target: "librdkafka", %reason, "fatal Kafka client error");
        } else if self.closing.load(Ordering::Relaxed) {
            tracing::debug!(target: "librdkafka", %error, %reason, "Kafka client error while closing");
        } else {
            self.logs.error(&error, reason);
        }
    }
}

impl ConsumerContext for LoggingContext {}

#[cfg(test)]
mod tests {
    use super::*;

    const FIRST: Verdict = Verdict::Show { suppressed: 0 };

    #[test]
    fn self_healing_lines_are_debug_until_they_persist_a_window() {
        let getpid = "Failed to acquire idempotence PID from broker 127.0.0.1:19092/1: \
                      Broker: Coordinator load in progress: retrying";
        assert_eq!(shown_level(Level::WARN, getpid, FIRST), Some(Level::DEBUG));
        assert_eq!(shown_level(Level::WARN, getpid, Verdict::Suppress), None);
        assert_eq!(
            shown_level(Level::WARN, getpid, Verdict::Show { suppressed: 59 }),
            Some(Level::WARN)
        );
        let takeover = "Failed to acquire transactional PID from broker 127.0.0.1:19092/1: \
                        Broker: Producer attempted to update a transaction while another \
                        concurrent operation on the same transaction was ongoing: retrying";
        assert_eq!(
            shown_level(Level::WARN, takeover, FIRST),
            Some(Level::DEBUG)
        );
    }

    #[test]
    fn other_lines_keep_their_level() {
        let refused = "Connect to ipv4#127.0.0.1:1 failed: Connection refused";
        assert_eq!(
            shown_level(Level::ERROR, refused, FIRST),
            Some(Level::ERROR)
        );
        assert_eq!(
            shown_level(Level::TRACE, "Coordinator load in progress", FIRST),
            Some(Level::TRACE),
            "never promoted"
        );
    }

    #[test]
    fn connection_failures_differing_only_in_timing_are_one_line() {
        let a = "127.0.0.1:1/bootstrap: Connect to ipv4#127.0.0.1:1 failed: \
                 Connection refused (after 0ms in state CONNECT)";
        let b = "127.0.0.1:1/bootstrap: Connect to ipv4#127.0.0.1:1 failed: \
                 Connection refused (after 3ms in state CONNECT, 1 identical error(s) suppressed)";
        assert_eq!(stable_part(a), stable_part(b));
        assert!(stable_part(a).ends_with("Connection refused"));
        assert_eq!(stable_part("no timing"), "no timing");
    }
}

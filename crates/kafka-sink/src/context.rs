//! The sink producer's librdkafka callbacks: delivery reports, global errors, log lines.
//!
//! All of them run on the sink's poll thread (or on the dropping thread while the
//! producer purges at drop), log lines also on librdkafka's own threads. They must not
//! block (but for the purge after a delivery timeout, which waits briefly for
//! librdkafka's threads) and must not panic: whatever the network sends ends up here.

use std::fmt;
use std::sync::{Arc, OnceLock, Weak};

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseProducer, DeliveryResult, Producer, ProducerContext, PurgeConfig};

use crate::accounting::{Refusal, Shared};
use crate::client_logs::ClientLogs;
use crate::delivery::{describe, record_from_message, Delivery};

pub(crate) struct SinkContext {
    pub shared: Arc<Shared>,
    pub logs: ClientLogs,
    /// The producer this context serves, to purge it from inside a delivery report.
    producer: OnceLock<Weak<BaseProducer<SinkContext>>>,
}

impl SinkContext {
    pub(crate) fn new(shared: Arc<Shared>) -> SinkContext {
        SinkContext {
            shared,
            logs: ClientLogs::default(),
            producer: OnceLock::new(),
        }
    }

    /// Called once the producer exists.
    pub(crate) fn serve(&self, producer: &Arc<BaseProducer<SinkContext>>) {
        let _ = self.producer.set(Arc::downgrade(producer));
    }

    /// Drops everything queued or in flight. Done right in the delivery report of a
    /// timed-out record: librdkafka goes on sending the records queued behind it as
    /// soon as the broker answers again, and any of them delivered before that
    /// record's resend would arrive out of order.
    fn purge(&self) {
        if let Some(producer) = self.producer.get().and_then(Weak::upgrade) {
            producer.purge(PurgeConfig::default().queue().inflight());
        }
    }
}

impl fmt::Debug for SinkContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SinkContext")
            .field("shared", &self.shared)
            .finish_non_exhaustive()
    }
}

impl ClientContext for SinkContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        self.logs.log(level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if self.shared.client_error(&error, reason) {
            // From now on every produce call fails and queued records are failed back
            // through their delivery reports. Never rate-limited.
            tracing::error!(target: "librdkafka", %reason, "fatal Kafka producer error");
        } else {
            // Connection trouble and the like: librdkafka retries on its own, and what
            // it gives up on reaches us as failed delivery reports.
            self.logs.error(&error, reason);
        }
    }
}

impl ProducerContext for SinkContext {
    type DeliveryOpaque = Box<Delivery>;

    fn delivery(&self, result: &DeliveryResult<'_>, delivery: Box<Delivery>) {
        match result {
            Ok(_) => self.shared.settle_ok(&delivery),
            Err((err, message)) => {
                let stopped = self.shared.record_failed(
                    delivery,
                    Refusal::Delivery,
                    err.rdkafka_error_code(),
                    describe(err),
                    |delivery| record_from_message(message, delivery),
                );
                if stopped {
                    self.purge();
                }
            }
        }
    }
}

//! The sink producer's librdkafka callbacks: delivery reports, global errors, log lines.
//!
//! All of them run on the sink's poll thread (or on the dropping thread while the
//! producer purges at drop), log lines also on librdkafka's own threads. They must not
//! block and must not panic: whatever the network sends ends up here.

use std::sync::Arc;

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::KafkaError;
use rdkafka::producer::{DeliveryResult, ProducerContext};

use crate::accounting::{Refusal, Shared};
use crate::client_logs::ClientLogs;
use crate::delivery::{describe, record_from_message, Delivery};

#[derive(Debug)]
pub(crate) struct SinkContext {
    pub shared: Arc<Shared>,
    pub logs: ClientLogs,
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
            Err((err, message)) => self.shared.record_failed(
                delivery,
                Refusal::Delivery,
                err.rdkafka_error_code(),
                describe(err),
                |delivery| record_from_message(message, delivery),
            ),
        }
    }
}

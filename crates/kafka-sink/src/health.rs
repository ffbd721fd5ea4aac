//! What librdkafka reported about the client as a whole: a fatal error (the producer
//! cannot produce anymore) and the latest non-fatal client error (connection, TLS,
//! SASL), kept to explain a later failed request.

use std::sync::Mutex;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use crate::lock;

#[derive(Debug, Default)]
pub(crate) struct ClientHealth {
    fatal: Mutex<Option<String>>,
    last_client_error: Mutex<Option<String>>,
}

impl ClientHealth {
    /// Records a client error from librdkafka's error callback; returns whether it was
    /// fatal. A fatal error's reason names the underlying error ("Fatal error: Broker:
    /// ...: ..."); from then on every produce call fails. Of the others, "all brokers
    /// are down" is not kept: it follows the error that says why.
    pub(crate) fn record(&self, error: &KafkaError, reason: &str) -> bool {
        match error.rdkafka_error_code() {
            Some(RDKafkaErrorCode::Fatal) => {
                self.set_fatal(reason.to_owned());
                true
            }
            Some(RDKafkaErrorCode::AllBrokersDown) => false,
            _ => {
                self.set_last_client_error(reason.to_owned());
                false
            }
        }
    }

    /// Records a fatal error; the first one wins (later ones are its consequences).
    fn set_fatal(&self, reason: String) {
        let mut fatal = lock(&self.fatal);
        if fatal.is_none() {
            *fatal = Some(reason);
        }
    }

    pub(crate) fn fatal(&self) -> Option<String> {
        lock(&self.fatal).clone()
    }

    /// Keeps `reason` as the latest non-fatal client error.
    pub(crate) fn set_last_client_error(&self, reason: String) {
        *lock(&self.last_client_error) = Some(reason);
    }

    pub(crate) fn last_client_error(&self) -> Option<String> {
        lock(&self.last_client_error).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(code: RDKafkaErrorCode) -> KafkaError {
        KafkaError::Global(code)
    }

    #[test]
    fn the_first_fatal_error_wins() {
        let h = ClientHealth::default();
        assert_eq!(h.fatal(), None);
        assert!(h.record(&error(RDKafkaErrorCode::Fatal), "sequence desynchronized"));
        assert!(h.record(&error(RDKafkaErrorCode::Fatal), "later consequence"));
        assert_eq!(h.fatal().as_deref(), Some("sequence desynchronized"));
    }

    #[test]
    fn the_last_client_error_says_why_brokers_are_down() {
        let h = ClientHealth::default();
        let transport = error(RDKafkaErrorCode::BrokerTransportFailure);
        assert!(!h.record(&transport, "TLS handshake failed"));
        assert!(!h.record(&transport, "SASL authentication failed"));
        assert!(!h.record(
            &error(RDKafkaErrorCode::AllBrokersDown),
            "1/1 brokers are down"
        ));
        assert_eq!(
            h.last_client_error().as_deref(),
            Some("SASL authentication failed")
        );
        assert_eq!(h.fatal(), None);
    }
}

//! What librdkafka reported about the client as a whole: a fatal error (the producer
//! cannot produce anymore) and the latest non-fatal client error (connection, TLS,
//! SASL), kept to explain a later failed request.

use std::sync::Mutex;

use crate::lock;

#[derive(Debug, Default)]
pub(crate) struct ClientHealth {
    fatal: Mutex<Option<String>>,
    last_client_error: Mutex<Option<String>>,
}

impl ClientHealth {
    /// Records a fatal error; the first one wins (later ones are its consequences).
    pub(crate) fn set_fatal(&self, reason: String) {
        let mut fatal = lock(&self.fatal);
        if fatal.is_none() {
            *fatal = Some(reason);
        }
    }

    pub(crate) fn fatal(&self) -> Option<String> {
        lock(&self.fatal).clone()
    }

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

    #[test]
    fn the_first_fatal_error_wins_and_the_last_client_error_is_kept() {
        let h = ClientHealth::default();
        assert_eq!(h.fatal(), None);
        h.set_fatal("sequence desynchronized".into());
        h.set_fatal("later consequence".into());
        assert_eq!(h.fatal().as_deref(), Some("sequence desynchronized"));
        h.set_last_client_error("TLS handshake failed".into());
        h.set_last_client_error("SASL authentication failed".into());
        assert_eq!(
            h.last_client_error().as_deref(),
            Some("SASL authentication failed")
        );
    }
}

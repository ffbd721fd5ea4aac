//! The supervisor: runs one session after another until shutdown or a fatal error,
//! with backoff between them, and replaces the producer when it cannot go on.
//!
//! A session ends cleanly (shutdown), with a retryable error (the network, a
//! restarting server, a slot held by another relay, a delivery timeout: reconnect
//! with backoff) or with a fatal one (a record Kafka refused, an unroutable row
//! without a dead-letter topic, an invalidated slot: stop, and the process exits
//! non-zero). Whatever ends it, the confirmed position is the acknowledged prefix.

use std::time::Duration;

use rand::Rng;
use tokio_util::sync::CancellationToken;

use crate::relay::checkpoints::Checkpoints;
use crate::relay::pipeline::{Pipeline, RelayState};
use crate::relay::sink::{Sink, SinkFactory};
use crate::relay::source::{Connector, OpenRequest};
use crate::relay::RelayError;

/// How long a retryable failure waits for in-flight records before the next session.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(10);

pub(crate) struct Supervisor<C: Connector, F: SinkFactory, W: Checkpoints> {
    connector: C,
    sinks: F,
    sink: F::Sink,
    store: W,
    state: RelayState,
    shutdown: CancellationToken,
    /// The operator accepted a gap for the first session (`--accept-gap`).
    accept_gap: bool,
    /// Whether a session has streamed from the slot in this process.
    streamed: bool,
}

impl<C: Connector, F: SinkFactory, W: Checkpoints> Supervisor<C, F, W> {
    pub fn new(
        connector: C,
        sinks: F,
        store: W,
        state: RelayState,
        shutdown: CancellationToken,
        accept_gap: bool,
    ) -> Result<Self, RelayError> {
        let sink = sinks.create().map_err(RelayError::Producer)?;
        Ok(Supervisor {
            connector,
            sinks,
            sink,
            store,
            state,
            shutdown,
            accept_gap,
            streamed: false,
        })
    }

    /// Runs sessions until shutdown (`Ok`) or a fatal error.
    pub async fn run(mut self) -> Result<(), RelayError> {
        let mut backoff = Backoff::default();
        loop {
            let (result, streamed) = self.session().await;
            self.state.health.set_stream_attached(false);
            match result {
                Ok(()) => {
                    self.sink
                        .flush(self.state.drain_timeout)
                        .await
                        .map_err(RelayError::Producer)?;
                    tracing::info!(confirmed = %self.state.confirmed, "outboxd stopped cleanly");
                    return Ok(());
                }
                Err(e) if e.is_retryable() && !self.shutdown.is_cancelled() => {
                    // A session that streamed was a success: the next failure starts
                    // the backoff afresh, so isolated faults days apart do not each
                    // wait the maximum.
                    if streamed {
                        backoff.reset();
                    }
                    let delay = backoff.next_delay();
                    self.state.metrics.reconnects.inc();
                    tracing::warn!(error = %e, attempt = backoff.attempt, retry_in_ms = delay.as_millis() as u64, "replication session ended; reconnecting");
                    self.prepare_next_session(&e).await?;
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = self.shutdown.cancelled() => return Ok(()),
                    }
                }
                Err(e) => {
                    let _ = self.sink.flush(SETTLE_TIMEOUT).await;
                    return Err(e);
                }
            }
        }
    }

    /// One session; the flag says whether it got as far as streaming.
    async fn session(&mut self) -> (Result<(), RelayError>, bool) {
        let request = OpenRequest {
            this_run: self.streamed.then_some(self.state.confirmed),
            accept_gap: self.accept_gap && !self.streamed,
        };
        let opened = match self.connector.open(request, &self.store).await {
            Ok(opened) => opened,
            Err(e) => return (Err(e), false),
        };
        self.streamed = true;
        // The plan took what this run confirmed into account; after a failover to a
        // later timeline it may resume earlier, at the fork.
        self.state.confirmed = opened.checkpoint.confirmed_lsn;
        self.state.health.set_stream_attached(true);
        let pipeline = Pipeline::new(opened, &mut self.sink, &self.store, &mut self.state);
        (pipeline.run(&self.shutdown).await, true)
    }

    /// Makes the sink ready for a session that resends everything unconfirmed.
    async fn prepare_next_session(&mut self, error: &RelayError) -> Result<(), RelayError> {
        if error.needs_new_producer() || self.sink.fatal_error().is_some() {
            // Dropping the old producer purges its queue: nothing queued behind a
            // timed-out record reaches Kafka before that record's replay.
            self.sink = self.sinks.create().map_err(RelayError::Producer)?;
        } else {
            // What is in flight is unconfirmed and will be re-sent by the next
            // session; let it finish so its completions do not linger.
            let _ = self.sink.flush(SETTLE_TIMEOUT).await;
            self.sink.discard_completions();
        }
        Ok(())
    }
}

/// Exponential backoff with full jitter: 0.5 s, 1 s, 2 s … capped at 30 s.
#[derive(Debug, Default)]
struct Backoff {
    attempt: u32,
}

impl Backoff {
    fn reset(&mut self) {
        self.attempt = 0;
    }

    fn next_delay(&mut self) -> Duration {
        self.attempt += 1;
        let cap_ms = 500u64.saturating_mul(1 << self.attempt.min(6)).min(30_000);
        Duration::from_millis(rand::rng().random_range(cap_ms / 2..=cap_ms))
    }
}

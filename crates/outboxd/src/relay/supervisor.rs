//! The supervisor: runs one session after another until shutdown or a fatal error,
//! with backoff between them, replaces the producer when it cannot go on, and
//! stands by while another relay holds the slot.
//!
//! A session ends cleanly (shutdown), with a retryable error (the network, a
//! restarting server, a delivery timeout: reconnect with backoff), because another
//! relay holds the slot or fenced this one's producer (stand by, watch the slot and
//! take over when it is free) or with a fatal error (a record Kafka refused, an
//! unroutable row without a dead-letter topic, an invalidated slot, a gap: stop, and
//! the process exits non-zero). Whatever ends it, the confirmed position is the
//! durable prefix.

use std::time::Duration;

use outboxd_kafka_sink::Registration;
use rand::Rng;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::checkpoint::RelayIdentity;
use crate::health::Role;
use crate::relay::checkpoints::Checkpoints;
use crate::relay::pipeline::{Pipeline, RelayState};
use crate::relay::sink::{Sink, SinkFactory};
use crate::relay::source::{Connector, Fence, OpenRequest};
use crate::relay::RelayError;
use crate::settings;

/// How long a retryable failure waits for in-flight records before the next session.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long registering an exactly-once producer (and fencing older ones) may take.
const INIT_TIMEOUT: Duration = Duration::from_secs(30);

/// How many producers a takeover may drop because the broker was still aborting the
/// previous holder's transaction, before one waits out librdkafka's 500 ms retries.
const QUICK_REGISTRATIONS: usize = 5;

/// Exactly-once: the configured transactional id, if any (else derived from the
/// relay's identity). `None`: at least once.
pub(crate) type ExactlyOnce = Option<Option<String>>;

pub(crate) struct Supervisor<C: Connector, F: SinkFactory, W: Checkpoints> {
    connector: C,
    sinks: F,
    /// The producer; exactly once, a new one per session, made when it fences.
    sink: Option<F::Sink>,
    exactly_once: ExactlyOnce,
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
        exactly_once: ExactlyOnce,
        store: W,
        state: RelayState,
        shutdown: CancellationToken,
        accept_gap: bool,
    ) -> Self {
        Supervisor {
            connector,
            sinks,
            sink: None,
            exactly_once,
            store,
            state,
            shutdown,
            accept_gap,
            streamed: false,
        }
    }

    /// Runs sessions until shutdown (`Ok`) or a fatal error.
    pub async fn run(mut self) -> Result<(), RelayError> {
        let mut backoff = Backoff::default();
        loop {
            let (result, streamed) = self.session().await;
            self.state.health.set_stream_attached(false);
            match result {
                Ok(()) => {
                    if let Some(sink) = &self.sink {
                        sink.flush(self.state.drain_timeout)
                            .await
                            .map_err(RelayError::Producer)?;
                    }
                    tracing::info!(confirmed = %self.state.confirmed, "outboxd stopped cleanly");
                    return Ok(());
                }
                Err(_) if self.shutdown.is_cancelled() => return Ok(()),
                Err(RelayError::Replication(outboxd_replication::Error::SlotInUse {
                    slot,
                    pid,
                })) => {
                    if self.role() != Role::Standby {
                        let pid = pid.map_or("unknown".to_owned(), |p| p.to_string());
                        tracing::info!(%slot, holder_pid = %pid, "standing by: another process holds the slot; taking over as soon as it is free");
                        self.set_role(Role::Standby);
                    }
                    self.stand_by(&mut backoff).await;
                }
                Err(e @ RelayError::Fenced(_)) => {
                    tracing::warn!(error = %e.with_causes(), "another relay took over this slot; this one writes nothing more with its producer and stands by");
                    self.sink = None;
                    self.set_role(Role::Standby);
                }
                Err(e) if e.is_retryable() => {
                    // A session that streamed was a success: the next failure starts
                    // the backoff afresh, so isolated faults days apart do not each
                    // wait the maximum.
                    if streamed {
                        backoff.reset();
                    }
                    self.set_role(Role::Starting);
                    let delay = backoff.next_delay();
                    self.state.metrics.reconnects.inc();
                    tracing::warn!(error = %e.with_causes(), attempt = backoff.attempt, retry_in_ms = delay.as_millis() as u64, "replication session ended; reconnecting");
                    self.prepare_next_session(&e).await;
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = self.shutdown.cancelled() => return Ok(()),
                    }
                }
                Err(e) => {
                    if let Some(sink) = &self.sink {
                        let _ = sink.flush(SETTLE_TIMEOUT).await;
                    }
                    return Err(e);
                }
            }
        }
    }

    /// One session; the flag says whether it got as far as streaming.
    async fn session(&mut self) -> (Result<(), RelayError>, bool) {
        if self.exactly_once.is_none() && self.sink.is_none() {
            match self.sinks.create(None) {
                Ok(sink) => self.sink = Some(sink),
                Err(e) => return (Err(RelayError::Producer(e)), false),
            }
        }
        let request = OpenRequest {
            this_run: self.streamed.then_some(self.state.confirmed),
            accept_gap: self.accept_gap && !self.streamed,
        };
        let mut fencer = Fencer {
            sinks: &self.sinks,
            sink: &mut self.sink,
            exactly_once: &self.exactly_once,
        };
        let opened = match self.connector.open(request, &self.store, &mut fencer).await {
            Ok(opened) => opened,
            Err(e) => return (Err(e), false),
        };
        let Some(sink) = self.sink.as_mut() else {
            return (Err(RelayError::NoProducer), false);
        };
        self.streamed = true;
        // The plan took what this run confirmed into account; after a failover to a
        // later timeline it may resume earlier, at the fork.
        self.state.confirmed = opened.checkpoint.confirmed_lsn;
        self.state.health.set_stream_attached(true);
        self.state.health.set_role(Role::Active);
        self.state.metrics.set_role(Role::Active);
        let pipeline = Pipeline::new(opened, sink, &self.store, &mut self.state);
        (pipeline.run(&self.shutdown).await, true)
    }

    /// Watches the slot until it is free (or shutdown).
    async fn stand_by(&mut self, backoff: &mut Backoff) {
        tokio::select! {
            freed = self.connector.wait_until_free() => {
                if let Err(e) = freed {
                    let delay = backoff.next_delay();
                    tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "standby cannot watch the slot");
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = self.shutdown.cancelled() => {}
                    }
                }
            }
            () = self.shutdown.cancelled() => {}
        }
    }

    fn role(&self) -> Role {
        self.state.health.role()
    }

    fn set_role(&self, role: Role) {
        self.state.health.set_role(role);
        self.state.metrics.set_role(role);
    }

    /// Makes the sink ready for a session that resends everything unconfirmed.
    async fn prepare_next_session(&mut self, error: &RelayError) {
        let Some(sink) = self.sink.as_mut() else {
            return;
        };
        if self.exactly_once.is_some() || error.needs_new_producer() || sink.fatal_error().is_some()
        {
            // A sink stopped by a delivery timeout sends nothing more (it purged
            // itself); a fatal one cannot. Exactly once, the next session's producer
            // fences this one anyway.
            self.sink = None;
        } else {
            // What is in flight is unconfirmed and will be re-sent by the next
            // session; let it finish so its completions do not linger.
            let _ = sink.flush(SETTLE_TIMEOUT).await;
            sink.discard_completions();
        }
    }
}

/// Exactly-once: a fresh transactional producer per session, registered (which
/// fences every older producer of the relay's transactional id) after the session
/// took the slot.
///
/// When the previous holder died with a transaction open (a takeover under load),
/// the broker refuses the first registration while it aborts that transaction, and
/// librdkafka asks again only 500 ms later. A new producer asks at once instead;
/// the refused one is dropped before its own retry, so it can never fence the new
/// one (docs/architecture.md, "Fencing").
struct Fencer<'a, F: SinkFactory> {
    sinks: &'a F,
    sink: &'a mut Option<F::Sink>,
    exactly_once: &'a ExactlyOnce,
}

impl<F: SinkFactory> Fence for Fencer<'_, F> {
    async fn fence(&mut self, identity: &RelayIdentity) -> Result<(), RelayError> {
        let Some(configured) = self.exactly_once else {
            return Ok(());
        };
        let id = settings::transactional_id(configured.as_deref(), identity);
        if let Some(previous) = self.sink.take() {
            self.sinks.dispose(previous).await;
        }
        let deadline = Instant::now() + INIT_TIMEOUT;
        let mut refused = 0;
        let sink = loop {
            let sink = self.sinks.create(Some(&id)).map_err(RelayError::Producer)?;
            let timeout = deadline.saturating_duration_since(Instant::now());
            if refused == QUICK_REGISTRATIONS {
                sink.init_transactions(timeout)
                    .await
                    .map_err(RelayError::TransactionFailed)?;
                break sink;
            }
            match sink.try_init_transactions(timeout).await {
                Ok(Registration::Registered) => break sink,
                Ok(Registration::AbortInProgress) => {
                    refused += 1;
                    tracing::debug!(transactional_id = %id, refused, "the broker is still aborting the previous producer's transaction; registering a new producer");
                    self.sinks.dispose(sink).await;
                }
                Err(e) => return Err(RelayError::TransactionFailed(e)),
            }
        };
        tracing::info!(transactional_ids = %sink.transactional_ids().join(", "), "exactly-once producers registered; older producers with these ids are fenced");
        *self.sink = Some(sink);
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

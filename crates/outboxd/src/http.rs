//! The sidecar endpoints: `/healthz` (the process runs), `/readyz` (the stream is
//! attached and the producer healthy) and `/metrics` (Prometheus text format).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Everything the relay reports.
#[derive(Debug, Default)]
pub struct Metrics {
    pub events_published: Counter,
    pub bytes_published: Counter,
    pub transactions_confirmed: Counter,
    pub delivery_errors: Counter,
    pub dead_lettered: Counter,
    pub ignored_changes: Counter,
    pub reconnects: Counter,
    pub checkpoint_writes: Counter,
    pub skipped_events: Counter,
    pub checkpoint_lsn: Gauge<i64, AtomicI64>,
    pub confirmed_lsn: Gauge<i64, AtomicI64>,
    pub server_wal_end: Gauge<i64, AtomicI64>,
    pub lag_bytes: Gauge<i64, AtomicI64>,
    pub lag_seconds: Gauge<f64, AtomicU64>,
    pub in_flight_records: Gauge<i64, AtomicI64>,
    pub in_flight_transactions: Gauge<i64, AtomicI64>,
}

impl Metrics {
    fn register(self: &Arc<Self>, registry: &mut Registry) {
        let m = self;
        registry.register(
            "outboxd_events_published",
            "Events acknowledged by Kafka",
            m.events_published.clone(),
        );
        registry.register(
            "outboxd_bytes_published",
            "Key and value bytes acknowledged by Kafka",
            m.bytes_published.clone(),
        );
        registry.register(
            "outboxd_transactions_confirmed",
            "Source transactions confirmed to PostgreSQL",
            m.transactions_confirmed.clone(),
        );
        registry.register(
            "outboxd_delivery_errors",
            "Records Kafka did not accept",
            m.delivery_errors.clone(),
        );
        registry.register(
            "outboxd_dead_lettered",
            "Events sent to the dead-letter topic",
            m.dead_lettered.clone(),
        );
        registry.register(
            "outboxd_ignored_changes",
            "Updates, deletes and truncates on outbox tables (not relayed)",
            m.ignored_changes.clone(),
        );
        registry.register(
            "outboxd_reconnects",
            "Replication sessions restarted after an error",
            m.reconnects.clone(),
        );
        registry.register(
            "outboxd_checkpoint_writes",
            "Checkpoints written to the checkpoint topic and confirmed to PostgreSQL",
            m.checkpoint_writes.clone(),
        );
        registry.register(
            "outboxd_skipped_events",
            "Events left out on resume because a checkpoint says they were delivered",
            m.skipped_events.clone(),
        );
        registry.register(
            "outboxd_checkpoint_lsn",
            "Position of the newest durable checkpoint",
            m.checkpoint_lsn.clone(),
        );
        registry.register(
            "outboxd_confirmed_lsn",
            "Flush LSN last confirmed to PostgreSQL",
            m.confirmed_lsn.clone(),
        );
        registry.register(
            "outboxd_server_wal_end_lsn",
            "Server WAL end from the latest keepalive",
            m.server_wal_end.clone(),
        );
        registry.register(
            "outboxd_lag_bytes",
            "Server WAL end minus confirmed LSN",
            m.lag_bytes.clone(),
        );
        registry.register(
            "outboxd_lag_seconds",
            "Age of the oldest committed transaction not yet acknowledged by Kafka (0 when none)",
            m.lag_seconds.clone(),
        );
        registry.register(
            "outboxd_in_flight_records",
            "Records produced and not yet acknowledged",
            m.in_flight_records.clone(),
        );
        registry.register(
            "outboxd_in_flight_transactions",
            "Transactions received and not yet confirmed",
            m.in_flight_transactions.clone(),
        );
    }
}

/// Readiness: the stream is attached and the producer has no fatal error.
#[derive(Debug, Default)]
pub struct Health {
    stream_attached: AtomicBool,
    producer_problem: Mutex<Option<String>>,
}

impl Health {
    pub fn set_stream_attached(&self, attached: bool) {
        self.stream_attached.store(attached, Ordering::Relaxed);
    }

    pub fn set_producer_problem(&self, problem: Option<String>) {
        if let Ok(mut p) = self.producer_problem.lock() {
            *p = problem;
        }
    }

    fn readiness(&self) -> Result<(), String> {
        if !self.stream_attached.load(Ordering::Relaxed) {
            return Err("replication stream not attached".to_owned());
        }
        match self.producer_problem.lock().ok().and_then(|p| p.clone()) {
            Some(problem) => Err(format!("producer: {problem}")),
            None => Ok(()),
        }
    }
}

#[derive(Debug, Clone)]
struct AppState {
    registry: Arc<Registry>,
    health: Arc<Health>,
}

/// The HTTP server's task.
#[derive(Debug)]
pub struct Server {
    pub address: SocketAddr,
    task: JoinHandle<()>,
}

impl Server {
    /// Waits until the server has stopped (after its shutdown token was cancelled).
    pub async fn stopped(self) {
        let _ = self.task.await;
    }
}

/// Binds `address` and serves until `shutdown` is cancelled, then finishes the
/// requests in progress.
pub async fn serve(
    address: &str,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    shutdown: CancellationToken,
) -> anyhow::Result<Server> {
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    let state = AppState {
        registry: Arc::new(registry),
        health,
    };
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {address} for /metrics: {e}"))?;
    let address = listener.local_addr()?;
    let task = tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "the /metrics server failed");
        }
    });
    tracing::info!(%address, "serving /healthz, /readyz and /metrics");
    Ok(Server { address, task })
}

async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    match state.health.readiness() {
        Ok(()) => (StatusCode::OK, "ready\n".to_owned()),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {reason}\n"),
        ),
    }
}

async fn metrics_text(State(state): State<AppState>) -> impl IntoResponse {
    let mut body = String::new();
    match encode(&mut body, &state.registry) {
        Ok(()) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        ),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain")],
            format!("encoding metrics failed: {e}"),
        ),
    }
}

//! The sidecar endpoints: `/healthz` (the process runs), `/readyz` (see [`Health`])
//! and `/metrics` (Prometheus text format, see [`Metrics`]).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus_client::encoding::text::encode;
use prometheus_client::registry::Registry;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::health::Health;
use crate::metrics::Metrics;

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
        Ok(role) => (StatusCode::OK, format!("ready: {role}\n")),
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

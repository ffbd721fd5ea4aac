//! `order-service`: an example of an idempotent consumer of outboxd's events.
//!
//! It consumes order events (`outbox.event.order` by default) with an
//! [`outboxd_inbox::Inbox`]: each event is applied exactly once to the
//! `order_summary` and `order_timeline` read model, and an `OrderSummaryUpdated`
//! event is written to the service's own outbox in the same transaction. Settings
//! come from flags or `ORDER_SERVICE_*` environment variables (`--help`);
//! `/metrics` serves the inbox's counters. SIGTERM or SIGINT stops it gracefully.

mod projection;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use axum::routing::get;
use clap::Parser;
use outboxd_inbox::deadpool_postgres::{self, Runtime};
use outboxd_inbox::tokio_postgres::NoTls;
use outboxd_inbox::{Config, Inbox, Metrics, SCHEMA_LOCK};
use prometheus_client::registry::Registry;

use projection::{OrderProjection, SCHEMA};

#[derive(Debug, Parser)]
#[command(name = "order-service", version, about)]
struct Args {
    /// The service's database (read model, inbox, outbox).
    #[arg(long, env = "ORDER_SERVICE_DATABASE_URL")]
    database_url: String,
    /// Kafka bootstrap servers.
    #[arg(
        long,
        env = "ORDER_SERVICE_KAFKA_BROKERS",
        default_value = "127.0.0.1:9092"
    )]
    brokers: String,
    /// Consumer group shared by all instances.
    #[arg(long, env = "ORDER_SERVICE_GROUP", default_value = "order-service")]
    group: String,
    /// Topics to consume, comma-separated.
    #[arg(
        long,
        env = "ORDER_SERVICE_TOPICS",
        value_delimiter = ',',
        default_value = "outbox.event.order"
    )]
    topics: Vec<String>,
    /// Extra librdkafka consumer properties, `key=value`, comma-separated.
    #[arg(long, env = "ORDER_SERVICE_KAFKA_PROPERTIES", value_delimiter = ',')]
    kafka_properties: Vec<String>,
    /// Database connections (events of different partitions apply concurrently).
    #[arg(long, env = "ORDER_SERVICE_POOL_SIZE", default_value_t = 8)]
    pool_size: usize,
    /// Where `/metrics` and `/healthz` listen; empty disables.
    #[arg(
        long,
        env = "ORDER_SERVICE_METRICS_ADDRESS",
        default_value = "127.0.0.1:9188"
    )]
    metrics_address: String,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(Args::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("order-service stopped: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let mut config = Config::new(&args.brokers, &args.group, args.topics.clone());
    for property in &args.kafka_properties {
        let (key, value) = property.split_once('=').with_context(|| {
            format!("Kafka property '{property}' is not key=value (ORDER_SERVICE_KAFKA_PROPERTIES)")
        })?;
        config = config.property(key.trim(), value.trim());
    }
    let mut pg = deadpool_postgres::Config::new();
    pg.url = Some(args.database_url.clone());
    pg.pool = Some(deadpool_postgres::PoolConfig::new(args.pool_size));
    let pool = pg
        .create_pool(Some(Runtime::Tokio1), NoTls)
        .context("the database URL (ORDER_SERVICE_DATABASE_URL) is not valid")?;
    let client = pool
        .get()
        .await
        .context("cannot connect to the database (ORDER_SERVICE_DATABASE_URL)")?;
    // One instance at a time, as the inbox creates its tables.
    client
        .batch_execute(&format!(
            "BEGIN; SELECT pg_advisory_xact_lock({SCHEMA_LOCK}); {SCHEMA} COMMIT;"
        ))
        .await
        .context("creating the order service's tables")?;
    drop(client);

    let inbox = Inbox::new(config, pool)?;
    inbox.create_tables().await?;
    let metrics = inbox.metrics();
    if !args.metrics_address.is_empty() {
        serve_metrics(&args.metrics_address, metrics.clone()).await?;
    }
    tracing::info!(
        topics = ?args.topics,
        group = %args.group,
        "order-service consuming"
    );
    let result = inbox.run(OrderProjection, shutdown_signal()).await;
    tracing::info!(
        applied = metrics.applied(),
        applied_late = metrics.applied_late(),
        duplicates = metrics.duplicates(),
        stale = metrics.stale(),
        rebalances = metrics.rebalances(),
        "order-service stopped"
    );
    Ok(result?)
}

/// SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(error) => {
            tracing::warn!(%error, "cannot listen for SIGTERM; stop with SIGINT");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("stopping: finishing the events being applied");
}

/// `/metrics` (Prometheus text) and `/healthz` on `address`.
async fn serve_metrics(address: &str, metrics: Arc<Metrics>) -> anyhow::Result<()> {
    let address: SocketAddr = address
        .parse()
        .with_context(|| format!("metrics address '{address}' is not host:port"))?;
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    let registry = Arc::new(registry);
    let app = axum::Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/metrics",
            get(move || {
                let registry = registry.clone();
                async move {
                    let mut body = String::new();
                    match prometheus_client::encoding::text::encode(&mut body, &registry) {
                        Ok(()) => (axum::http::StatusCode::OK, body),
                        Err(e) => (axum::http::StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
                    }
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| format!("cannot listen on {address} (ORDER_SERVICE_METRICS_ADDRESS)"))?;
    tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, app).await {
            tracing::warn!(%error, "the metrics endpoint stopped");
        }
    });
    Ok(())
}

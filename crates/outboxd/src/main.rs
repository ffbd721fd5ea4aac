//! `outboxd`: the command-line entry point.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};
use outboxd::config::{Config, LogFormat, Overrides};
use outboxd::health::Health;
use outboxd::http;
use outboxd::metrics::Metrics;
use outboxd::{advice, check, init, migrate, relay, replay, shutdown, tail};

#[derive(Debug, Parser)]
#[command(
    name = "outboxd",
    version,
    about = "Relays transactional-outbox events from PostgreSQL to Kafka, in commit order",
    long_about = "Relays transactional-outbox events from a PostgreSQL logical replication \
                  slot (pgoutput) to Kafka, in commit order, and confirms the slot only after \
                  Kafka acknowledged every event up to it.\n\n\
                  Configuration comes from defaults, then --config FILE (TOML), then \
                  OUTBOXD_<SECTION>__<KEY> environment variables (e.g. OUTBOXD_POSTGRES__URL), \
                  then the flags below. See docs/configuration.md.\n\n\
                  Start with `outboxd init` (prints the table, publication and slot DDL), then \
                  `outboxd check`, then `outboxd run`."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    #[command(flatten)]
    Service(Box<ServiceCommand>),
    /// Turn a Debezium connector configuration (Outbox Event Router) into outboxd's,
    /// with every setting it leaves out and why, and the cut-over steps.
    Migrate(MigrateArgs),
}

/// The commands that read outboxd's configuration.
#[derive(Debug, Subcommand)]
enum ServiceCommand {
    /// Relay outbox events to Kafka until stopped (SIGTERM/SIGINT stop cleanly).
    Run(RunArgs),
    /// Check PostgreSQL and Kafka are ready for outboxd; exits non-zero on any problem.
    Check(Common),
    /// Print (or with --apply, run) the outbox table, publication and slot DDL.
    Init(InitArgs),
    /// Print the transactions the slot delivers, decoded (debugging aid).
    Tail(TailArgs),
    /// Re-publish outbox rows still in the table (after a gap), through the same
    /// routing, in order per aggregate, marked with the header `outboxd.replay: true`.
    /// Exits 3 when no row is selected.
    Replay(ReplayArgs),
}

#[derive(Debug, Args)]
struct MigrateArgs {
    /// The connector's configuration: Kafka Connect's REST JSON or a .properties file.
    #[arg(long, value_name = "FILE")]
    from_debezium: PathBuf,
    /// The Connect worker's .properties, for what the connector inherits from it
    /// (converters, bootstrap.servers).
    #[arg(long, value_name = "FILE")]
    worker_config: Option<PathBuf>,
    /// Write the configuration here (the report goes to stdout); default: all to stdout.
    #[arg(long, short = 'o', value_name = "FILE")]
    output: Option<PathBuf>,
}

/// Options every command shares; each overrides the file and the environment.
#[derive(Debug, Clone, Args)]
struct Common {
    /// TOML configuration file.
    #[arg(long, short = 'c', env = "OUTBOXD_CONFIG")]
    config: Option<PathBuf>,
    /// PostgreSQL URL (postgres://user@host:port/db?sslmode=…) or key=value string.
    #[arg(long)]
    postgres_url: Option<String>,
    /// Logical replication slot [default: outboxd].
    #[arg(long)]
    slot: Option<String>,
    /// Publication of the outbox table(s) [default: outboxd].
    #[arg(long)]
    publication: Option<String>,
    /// Outbox table(s), table or schema.table, comma-separated [default: public.outbox].
    #[arg(long = "table", value_delimiter = ',')]
    tables: Vec<String>,
    /// Kafka bootstrap servers.
    #[arg(long)]
    kafka_brokers: Option<String>,
    /// Address for /healthz, /readyz and /metrics [default: 127.0.0.1:9187].
    #[arg(long)]
    metrics_address: Option<String>,
}

impl Common {
    fn load(&self) -> anyhow::Result<Config> {
        Config::load(
            self.config.as_deref(),
            &Overrides {
                postgres_url: self.postgres_url.clone(),
                slot: self.slot.clone(),
                publication: self.publication.clone(),
                tables: self.tables.clone(),
                kafka_brokers: self.kafka_brokers.clone(),
                metrics_address: self.metrics_address.clone(),
            },
        )
    }
}

#[derive(Debug, Args)]
struct RunArgs {
    #[command(flatten)]
    common: Common,
    /// Start even though the checkpoint shows that events may be missing from Kafka
    /// (a dropped or moved slot, another cluster, a lossy failover): go on from the
    /// slot as it is. The range is logged at ERROR. Only after following the
    /// runbook in docs/operations.md.
    #[arg(long)]
    accept_gap: bool,
}

#[derive(Debug, Args)]
struct InitArgs {
    #[command(flatten)]
    common: Common,
    /// Run the statements instead of printing them (needs the right privileges).
    #[arg(long)]
    apply: bool,
}

#[derive(Debug, Args)]
struct TailArgs {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    tail: tail::TailOptions,
}

#[derive(Debug, Args)]
struct ReplayArgs {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    replay: replay::ReplayOptions,
}

/// `outboxd replay`'s status when the selection holds no row: distinct from a
/// failure, so that a runbook script can tell "nothing there" from "broken".
const EXIT_NOTHING_TO_REPLAY: u8 = 3;

/// Colour only for a terminal, and never when `NO_COLOR` is set (no-color.org).
fn use_colour() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        // tokio-postgres logs every server NOTICE (e.g. "relation … already exists,
        // skipping") at info: noise for an operator.
        .unwrap_or_else(|_| "info,rdkafka=warn,tokio_postgres=warn".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(use_colour())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

fn main() -> ExitCode {
    let command = match Cli::parse().command {
        Command::Service(command) => *command,
        Command::Migrate(a) => {
            return match migrate::run(
                &a.from_debezium,
                a.worker_config.as_deref(),
                a.output.as_ref(),
            ) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            };
        }
    };
    let common = match &command {
        ServiceCommand::Run(a) => &a.common,
        ServiceCommand::Check(c) => c,
        ServiceCommand::Init(a) => &a.common,
        ServiceCommand::Tail(a) => &a.common,
        ServiceCommand::Replay(a) => &a.common,
    };
    let config = match common.load() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
    };
    init_logging(config.log.format);
    for warning in config.warnings() {
        tracing::warn!("{warning}");
    }
    let runtime = match config.server.worker_threads {
        0 | 1 => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        n => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build(),
    };
    let runtime = match runtime {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let logs_errors = matches!(command, ServiceCommand::Run(_) | ServiceCommand::Tail(_));
    let result = runtime.block_on(async {
        match command {
            ServiceCommand::Run(a) => {
                let options = relay::RunOptions {
                    accept_gap: a.accept_gap,
                };
                run(config, options).await
            }
            ServiceCommand::Check(_) => check::run(&config).await,
            ServiceCommand::Init(a) => init::run(&config, a.apply).await,
            ServiceCommand::Tail(a) => tail::run(&config, &a.tail, shutdown::on_signal()).await,
            ServiceCommand::Replay(a) => {
                replay::run(&config, &a.replay, shutdown::on_signal()).await
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let message = match advice::for_chain(&e) {
                Some(advice) => format!("{e:#}; {advice}"),
                None => format!("{e:#}"),
            };
            // Once: the long-running commands report through their logs (which may be
            // JSON for a collector), the others on the terminal.
            if logs_errors {
                tracing::error!("{message}");
            } else {
                eprintln!("error: {message}");
            }
            if e.is::<replay::NothingToReplay>() {
                return ExitCode::from(EXIT_NOTHING_TO_REPLAY);
            }
            ExitCode::FAILURE
        }
    }
}

async fn run(config: Config, options: relay::RunOptions) -> anyhow::Result<()> {
    tracing::info!(config = ?config, "starting outboxd {}", env!("CARGO_PKG_VERSION"));
    let metrics = Arc::new(Metrics::default());
    let health = Arc::new(Health::default());
    let stop = shutdown::on_signal();
    let server = if config.server.metrics_address.is_empty() {
        None
    } else {
        Some(
            http::serve(
                &config.server.metrics_address,
                metrics.clone(),
                health.clone(),
                stop.clone(),
            )
            .await?,
        )
    };
    let relayed = relay::run(&config, options, metrics, health, stop.clone()).await;
    stop.cancel();
    if let Some(server) = server {
        server.stopped().await;
    }
    Ok(relayed?)
}

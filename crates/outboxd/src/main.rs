//! `outboxd`: the command-line entry point.
//!
//! Today it reads a slot (`tail`) and checks a database (`check`); the relay to
//! Kafka (`run`) builds on the same pieces.

mod tail;

use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use outboxd_replication::{Admin, ConnectOptions, TableName};

#[derive(Debug, Parser)]
#[command(
    name = "outboxd",
    version,
    about = "Relays transactional-outbox events from a PostgreSQL logical replication slot",
    long_about = "Relays transactional-outbox events from a PostgreSQL logical replication \
                  slot (pgoutput) in commit order, confirming the slot only after delivery."
)]
struct Cli {
    /// Log format: text or json.
    #[arg(
        long,
        env = "OUTBOXD_LOG_FORMAT",
        default_value = "text",
        global = true
    )]
    log_format: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the transactions a slot delivers, decoded, one block per transaction.
    Tail(tail::TailArgs),
    /// Check that PostgreSQL is ready for outboxd; exits non-zero on any problem.
    Check(CheckArgs),
}

/// Where PostgreSQL is and which slot and publication to use.
#[derive(Debug, Clone, Args)]
pub struct PostgresArgs {
    /// PostgreSQL connection URL (postgres://user@host:port/db?sslmode=…) or
    /// key=value string. The password may also come from OUTBOXD_POSTGRES_PASSWORD.
    #[arg(long, env = "OUTBOXD_POSTGRES_URL")]
    postgres_url: String,
    /// Password, when not in the URL; never logged.
    #[arg(long, env = "OUTBOXD_POSTGRES_PASSWORD", hide_env_values = true)]
    postgres_password: Option<String>,
    /// Logical replication slot.
    #[arg(long, env = "OUTBOXD_SLOT", default_value = "outboxd")]
    slot: String,
    /// Publication that covers the outbox table(s).
    #[arg(long, env = "OUTBOXD_PUBLICATION", default_value = "outboxd")]
    publication: String,
}

impl PostgresArgs {
    fn connect_options(&self) -> anyhow::Result<ConnectOptions> {
        let mut opts: ConnectOptions = self.postgres_url.parse()?;
        if let Some(p) = &self.postgres_password {
            opts.password = Some(p.clone());
        }
        Ok(opts)
    }
}

#[derive(Debug, Args)]
struct CheckArgs {
    #[command(flatten)]
    postgres: PostgresArgs,
    /// Outbox table(s), as table or schema.table.
    #[arg(
        long = "table",
        env = "OUTBOXD_TABLES",
        value_delimiter = ',',
        default_value = "outbox"
    )]
    tables: Vec<String>,
}

fn init_logging(format: &str) {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.log_format);
    let result = match cli.command {
        Command::Tail(args) => tail::run(args).await,
        Command::Check(args) => check(args).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs every PostgreSQL check and reports each, so one run shows all problems.
async fn check(args: CheckArgs) -> anyhow::Result<()> {
    let opts = args.postgres.connect_options()?;
    let admin = match Admin::connect(&opts).await {
        Ok(a) => {
            println!("ok    PostgreSQL reachable at {}", opts.describe());
            a
        }
        Err(e) => anyhow::bail!("PostgreSQL is not reachable: {e}"),
    };
    let mut failures = 0;
    let mut report = |what: &str, r: Result<String, outboxd_replication::Error>| match r {
        Ok(detail) => println!("ok    {what}{detail}"),
        Err(e) => {
            failures += 1;
            println!("FAIL  {what}: {e}");
        }
    };
    report(
        "wal_level = logical",
        admin.check_wal_level().await.map(|_| String::new()),
    );
    report(
        "role may stream replication",
        admin.check_replication_role().await.map(|_| String::new()),
    );
    let mut tables = Vec::new();
    for t in &args.tables {
        match TableName::parse(t) {
            Ok(t) => {
                report(
                    &format!("table {t} exists"),
                    admin.check_table(&t, &[]).await.map(|_| String::new()),
                );
                tables.push(t);
            }
            Err(e) => report("table name", Err(e)),
        }
    }
    let publication = &args.postgres.publication;
    report(
        &format!("publication '{publication}' publishes inserts of the outbox"),
        admin
            .ensure_publication(publication, &tables, false)
            .await
            .map(|_| String::new()),
    );
    let slot = &args.postgres.slot;
    let slot_state = match admin.slot(slot).await {
        Ok(Some(info)) => Admin::verify_slot(&info, opts.database()).map(|_| {
            format!(
                " (confirmed {}, lag {} bytes, wal_status {}{})",
                info.confirmed_flush_lsn
                    .map_or("-".to_owned(), |l| l.to_string()),
                info.lag_bytes.unwrap_or(0),
                info.wal_status.as_deref().unwrap_or("-"),
                info.active_pid
                    .map_or(String::new(), |p| format!(", in use by pid {p}")),
            )
        }),
        Ok(None) => Ok(" (does not exist yet; outboxd creates it on first start)".to_owned()),
        Err(e) => Err(e),
    };
    report(&format!("slot '{slot}' usable"), slot_state);
    if failures > 0 {
        anyhow::bail!("{failures} check(s) failed");
    }
    Ok(())
}

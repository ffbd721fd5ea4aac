//! `outboxd replay`: re-publishes outbox rows still in the table, after a gap (see
//! docs/operations.md, "Replaying events").
//!
//! | module | job |
//! | --- | --- |
//! | `query` | the SQL: selection, time source, order (pure) |
//! | `source` | the tables' columns, the time source, one snapshot: counts and a cursor |
//! | `record` | a row → the live relay's record for it, plus `outboxd.replay: true` |
//! | `produce` | batches as synthetic transactions on the relay's Kafka sink |
//! | `report` | summary, progress, the explanation of an empty selection |

mod produce;
mod query;
mod record;
mod report;
mod source;

use std::time::Duration;

use clap::Args;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
pub use produce::BatchError;
pub use query::{Selection, TimeSource};
pub use record::RowError;
pub use report::NothingToReplay;

use produce::Producer;
use record::RowRouter;
use report::{describe, Progress, Reached, Summary};
use source::Source;

/// Which rows to replay and how. Something must select rows (`--all` for every row):
/// clap refuses the command line otherwise.
#[derive(Debug, Clone, Args)]
#[command(group = clap::ArgGroup::new("selection").required(true).multiple(true))]
pub struct ReplayOptions {
    /// Rows whose time is at or after this: a PostgreSQL timestamptz literal, e.g.
    /// 2024-05-01T10:00:00Z (without a zone: the server's TimeZone).
    #[arg(long, group = "selection")]
    pub since: Option<String>,
    /// Rows whose time is before this (exclusive).
    #[arg(long, group = "selection")]
    pub until: Option<String>,
    /// Rows whose id is at or above this (compared as the id column's type).
    #[arg(long, group = "selection")]
    pub from_id: Option<String>,
    /// Rows whose id is at or below this.
    #[arg(long, group = "selection")]
    pub to_id: Option<String>,
    /// Only these ids (comma-separated or repeated); each must be selected, or
    /// nothing is replayed.
    #[arg(long = "id", value_delimiter = ',', group = "selection")]
    pub ids: Vec<String>,
    /// Leave these ids out (comma-separated or repeated), e.g. an event Kafka refuses.
    #[arg(long = "exclude-id", value_delimiter = ',')]
    pub exclude_ids: Vec<String>,
    /// Replay every row of the table(s).
    #[arg(long, group = "selection", conflicts_with_all = ["since", "until", "from_id", "to_id", "ids"])]
    pub all: bool,
    /// The timestamp column that --since/--until compare and rows are ordered by
    /// [default: commit timestamps when track_commit_timestamp is on, else the
    /// `timestamp` column].
    #[arg(long)]
    pub time_column: Option<String>,
    /// Print what would be sent (records per topic, first and last id) and send
    /// nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Rows per batch; each batch is produced and acknowledged before the next is
    /// read.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub batch_size: u32,
    /// Seconds Kafka may take to acknowledge a record before the replay fails.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    pub delivery_timeout_secs: u64,
}

impl ReplayOptions {
    pub fn selection(&self) -> Selection {
        Selection {
            since: self.since.clone(),
            until: self.until.clone(),
            from_id: self.from_id.clone(),
            to_id: self.to_id.clone(),
            ids: self.ids.clone(),
            exclude_ids: self.exclude_ids.clone(),
        }
    }
}

/// Replays the selected rows (or, with `--dry-run`, says what it would send).
/// Errors name the row; an empty selection is a [`NothingToReplay`].
pub async fn run(
    config: &Config,
    options: &ReplayOptions,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let selection = options.selection();
    let described = describe(&selection);
    // Counting may scan a big table: a signal must end that too.
    let (mut source, total) = tokio::select! {
        prepared = prepare(config, options, selection, &described) => prepared?,
        () = stop.cancelled() => anyhow::bail!("stopped by a signal before anything was sent"),
    };
    let time = source.statements.time.clone();
    let mut producer = match options.dry_run {
        true => None,
        false => Some(
            Producer::connect(config, Duration::from_secs(options.delivery_timeout_secs)).await?,
        ),
    };
    let tables = source
        .statements
        .tables
        .iter()
        .map(|t| t.name.clone())
        .collect();
    let mut router = RowRouter::new(
        &config.routing,
        source.relations.clone(),
        tables,
        source.catalog.clone(),
    )
    .map_err(anyhow::Error::msg)?;
    source.open_cursor(options.batch_size as usize).await?;
    let mut summary = Summary::default();
    let mut reached = Reached::default();
    let mut progress = Progress::new(total);
    loop {
        let rows = tokio::select! {
            rows = source.next_batch() => rows.map_err(|e| stopped(e, &reached, total))?,
            () = stop.cancelled() => return Err(stopped(BatchError::Interrupted.into(), &reached, total)),
        };
        if rows.is_empty() {
            break;
        }
        let mut records = Vec::with_capacity(rows.len());
        for row in &rows {
            let record = router
                .record(row)
                .map_err(|e| stopped(e.into(), &reached, total))?;
            summary.add(&record, row.time_us);
            records.push(record);
        }
        if let Some(producer) = &mut producer {
            producer
                .deliver(records, &stop)
                .await
                .map_err(|e| stopped(e.into(), &reached, total))?;
        }
        reached = summary.reached();
        progress.advance(rows.len() as u64);
    }
    source.close().await?;
    let verb = if options.dry_run {
        "would replay"
    } else {
        "replayed"
    };
    println!(
        "{verb} {} rows ({described}) in {:.1} s ({} rows/s), in the order of their {time}:\n{summary}",
        summary.rows(),
        progress.elapsed().as_secs_f64(),
        progress.rate()
    );
    Ok(())
}

/// Opens the snapshot and checks the selection: not empty, every `--id` in it.
/// Returns the source and the number of selected rows.
async fn prepare(
    config: &Config,
    options: &ReplayOptions,
    selection: Selection,
    described: &str,
) -> anyhow::Result<(Source, u64)> {
    let source = Source::open(config, selection, options.time_column.as_deref()).await?;
    let time = &source.statements.time;
    let extent = source.extent().await?;
    if extent.rows == 0 {
        return Err(NothingToReplay {
            selection: described.to_owned(),
            time: time.clone(),
            untimed: source.untimed_rows().await?,
            tables: source.tables().await?,
        }
        .into());
    }
    let missing = source.missing_ids().await?;
    if !missing.is_empty() {
        let shown: Vec<&str> = missing.iter().take(10).map(String::as_str).collect();
        let more = if missing.len() > shown.len() {
            ", …"
        } else {
            ""
        };
        anyhow::bail!(
            "{} of the ids given with --id are not selected (not in the table, or outside \
             --since/--until/--from-id/--to-id, or excluded): {}{more}; nothing was replayed. \
             Leave them out to replay the others",
            missing.len(),
            shown.join(", "),
        );
    }
    let untimed = source.untimed_rows().await?;
    if untimed > 0 {
        tracing::warn!(
            rows = untimed,
            "{untimed} rows match the rest of the selection but have no time ({time}): no time \
             bound selects them; select them by id to replay them"
        );
    }
    tracing::info!(
        rows = extent.rows,
        time_source = %time,
        first = extent.first_us.map(report::time),
        last = extent.last_us.map(report::time),
        dry_run = options.dry_run,
        "replaying {} rows ({described}), in the order of their {time}",
        extent.rows
    );
    Ok((source, extent.rows))
}

/// `error`, with how far the replay got and what to do next.
fn stopped(error: anyhow::Error, reached: &Reached, total: u64) -> anyhow::Error {
    anyhow::anyhow!(
        "{error:#}\nreplay stopped: {}. Sending a record again is harmless: replayed records \
         carry their event id, by which consumers drop what they already have. Leave out an \
         event that cannot be sent with --exclude-id",
        reached.describe(total)
    )
}

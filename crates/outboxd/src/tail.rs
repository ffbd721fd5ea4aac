//! `outboxd tail`: print what a slot delivers, decoded. A debugging aid and the
//! replication client's smallest complete user.

use std::fmt::Write as _;
use std::time::Duration;

use clap::Args;
use outboxd_pgoutput::{pg_time_to_system_time, ColumnValue, LogicalMessage, Relation};
use outboxd_replication::{open_stream, Admin, ReplicationReader, SourceSpec};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::settings;

#[derive(Debug, Clone, Args)]
pub struct TailOptions {
    /// Confirm each transaction after printing it (consumes the slot). Without it
    /// the slot does not move and the same transactions come again next time.
    #[arg(long)]
    pub confirm: bool,
    /// Stop after this many transactions.
    #[arg(long)]
    pub max_transactions: Option<usize>,
    /// Stop after this many seconds without a message.
    #[arg(long)]
    pub idle_exit_secs: Option<u64>,
}

/// Prints transactions until `shutdown`, the idle timeout or the transaction limit.
pub async fn run(
    config: &Config,
    options: &TailOptions,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let opts = settings::connect_options(config)?;
    let admin = Admin::connect(&opts).await?;
    let spec = SourceSpec {
        // Every message, whatever its prefix: this is for looking.
        messages: true,
        ..settings::source_spec(config)
    };
    let (stream, started) = open_stream(&opts, &admin, &spec).await?;
    tracing::info!(slot = %spec.slot, resume = %started.resume_lsn, "tailing");
    let mut reader = ReplicationReader::spawn(stream, settings::reader_config(config));
    // With no idle limit, wait for as long as it takes.
    let idle = options
        .idle_exit_secs
        .map_or(Duration::MAX, Duration::from_secs);
    let mut block = String::new();
    let mut done = 0usize;
    loop {
        let next = tokio::select! {
            e = tokio::time::timeout(idle, reader.recv()) => match e {
                Ok(e) => e,
                Err(_) => break,
            },
            () = shutdown.cancelled() => break,
        };
        let Some(event) = next else { break };
        match &event.message {
            LogicalMessage::Begin(b) => {
                block.clear();
                let at = humantime::format_rfc3339_millis(pg_time_to_system_time(b.commit_time));
                let _ = writeln!(
                    block,
                    "transaction xid={} commit={} at {at}",
                    b.xid, b.final_lsn
                );
            }
            LogicalMessage::Insert(i) => {
                if let Some(rel) = &event.relation {
                    let _ = writeln!(block, "  insert {}", row(rel, &i.new));
                }
            }
            LogicalMessage::Update(u) => {
                if let Some(rel) = &event.relation {
                    let _ = writeln!(block, "  update {}", row(rel, &u.new));
                }
            }
            LogicalMessage::Delete(d) => {
                if let Some(rel) = &event.relation {
                    let _ = writeln!(block, "  delete {}", row(rel, d.old.values()));
                }
            }
            LogicalMessage::Truncate(t) => {
                let _ = writeln!(block, "  truncate {} relation(s)", t.relation_oids.len());
            }
            LogicalMessage::Message(m) => {
                let line = format!(
                    "message prefix={} transactional={} content={}",
                    m.prefix,
                    m.transactional,
                    String::from_utf8_lossy(&m.content)
                );
                if m.transactional {
                    let _ = writeln!(block, "  {line}");
                } else {
                    println!("{line}");
                }
            }
            LogicalMessage::Commit(c) => {
                let _ = writeln!(block, "  commit end={}", c.end_lsn);
                print!("{block}");
                if options.confirm {
                    reader.acknowledge(c.end_lsn);
                }
                done += 1;
                if options.max_transactions.is_some_and(|m| done >= m) {
                    break;
                }
            }
            LogicalMessage::Relation(_) | LogicalMessage::Type(_) | LogicalMessage::Origin(_) => {}
        }
    }
    let flushed = reader.close().await?;
    tracing::info!(transactions = done, confirmed = %flushed, "tail finished");
    Ok(())
}

fn row(rel: &Relation, values: &[ColumnValue]) -> String {
    let mut out = format!("{}.{} {{", rel.namespace, rel.name);
    for (i, (col, v)) in rel.columns.iter().zip(values).enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        let shown = match v {
            ColumnValue::Null => "NULL".to_owned(),
            ColumnValue::UnchangedToast => "<unchanged>".to_owned(),
            ColumnValue::Text(t) => String::from_utf8_lossy(t).into_owned(),
            ColumnValue::Binary(b) => format!("<{} bytes>", b.len()),
        };
        let _ = write!(out, "{}={shown}", col.name);
    }
    out.push('}');
    out
}

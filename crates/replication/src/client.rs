//! The replication connection's commands: IDENTIFY_SYSTEM, slot creation,
//! START_REPLICATION. Ordinary SQL belongs to [`crate::admin`].

use std::time::Duration;

use outboxd_pgoutput::Lsn;

use crate::config::ConnectOptions;
use crate::conn::{conn_timeout_error, PgConnection, QueryResult};
use crate::error::{Error, ServerError};
use crate::stream::{LogicalStream, StreamSettings};

/// What IDENTIFY_SYSTEM reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemIdentity {
    pub system_id: String,
    pub timeline: u32,
    /// The server's current WAL flush position.
    pub xlog_pos: Lsn,
    pub dbname: Option<String>,
}

/// One line of a timeline history file: `timeline` ended at `switchpoint`, where
/// its successor began.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimelineSwitch {
    pub timeline: u32,
    pub switchpoint: Lsn,
}

/// Reads a `.history` file: `<timeline>\t<switchpoint>\t<reason>` per line, `#`
/// comments and blank lines ignored.
fn parse_timeline_history(content: &str) -> Result<Vec<TimelineSwitch>, Error> {
    content
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|line| {
            let mut fields = line.split_whitespace();
            let timeline = fields.next().and_then(|t| t.parse().ok());
            let switchpoint = fields.next().and_then(|p| p.parse().ok());
            match (timeline, switchpoint) {
                (Some(timeline), Some(switchpoint)) => Ok(TimelineSwitch {
                    timeline,
                    switchpoint,
                }),
                _ => Err(Error::protocol(format!(
                    "timeline history line '{line}' is not '<timeline> <switchpoint> <reason>'"
                ))),
            }
        })
        .collect()
}

/// What START_REPLICATION asks for.
#[derive(Debug, Clone)]
pub struct StartOptions {
    pub slot: String,
    /// Where to resume; `Lsn::ZERO` means "from the slot's confirmed position".
    /// The server never goes back before `confirmed_flush_lsn`, whatever we ask.
    pub start_lsn: Lsn,
    pub publications: Vec<String>,
    /// Ask for `pg_logical_emit_message` messages (PostgreSQL 14+).
    pub messages: bool,
}

/// A walsender session before streaming starts.
#[derive(Debug)]
pub struct ReplicationClient {
    conn: PgConnection,
    /// The bound on commands the server answers at once (`connect_timeout`).
    answer_timeout: Duration,
}

impl ReplicationClient {
    /// Opens a `replication=database` session.
    pub async fn connect(opts: &ConnectOptions) -> Result<Self, Error> {
        let conn = PgConnection::connect(opts, true).await?;
        tracing::debug!(
            peer = conn.peer(),
            tls = conn.is_tls(),
            server_version = conn.parameter("server_version").unwrap_or("?"),
            "replication connection established"
        );
        Ok(ReplicationClient {
            conn,
            answer_timeout: opts.connect_timeout,
        })
    }

    /// Runs a command the server answers at once (IDENTIFY_SYSTEM, SHOW). No answer
    /// within `connect_timeout` means a dead path, as during the connect itself.
    /// Not for commands that may wait on other sessions (slot creation and drop).
    async fn prompt_query(&mut self, sql: &str) -> Result<QueryResult, Error> {
        let limit = self.answer_timeout;
        match tokio::time::timeout(limit, self.conn.simple_query(sql)).await {
            Ok(result) => result,
            Err(_) => Err(conn_timeout_error(
                self.conn.peer(),
                &format!("waiting for the answer to {sql}"),
                limit,
            )),
        }
    }

    /// The server's major version (14, 15, …).
    pub fn server_major_version(&self) -> Option<u32> {
        self.conn.server_major_version()
    }

    /// Whether the connection is encrypted.
    pub fn is_tls(&self) -> bool {
        self.conn.is_tls()
    }

    pub async fn identify_system(&mut self) -> Result<SystemIdentity, Error> {
        let r = self.prompt_query("IDENTIFY_SYSTEM").await?;
        let field = |name: &str| {
            r.first(name)
                .map(str::to_owned)
                .ok_or_else(|| Error::protocol(format!("IDENTIFY_SYSTEM without {name}")))
        };
        Ok(SystemIdentity {
            system_id: field("systemid")?,
            timeline: field("timeline")?
                .parse()
                .map_err(|_| Error::protocol("IDENTIFY_SYSTEM timeline is not a number"))?,
            xlog_pos: parse_lsn(&field("xlogpos")?)?,
            dbname: r.first("dbname").map(str::to_owned),
        })
    }

    /// Where each earlier timeline of `timeline` ended (its `.history` file), oldest
    /// first; empty for timeline 1, which has no history.
    pub async fn timeline_history(&mut self, timeline: u32) -> Result<Vec<TimelineSwitch>, Error> {
        if timeline <= 1 {
            return Ok(Vec::new());
        }
        let r = self
            .prompt_query(&format!("TIMELINE_HISTORY {timeline}"))
            .await?;
        let content = r
            .first("content")
            .ok_or_else(|| Error::protocol("TIMELINE_HISTORY without content"))?;
        parse_timeline_history(content)
    }

    /// The server's `wal_sender_timeout`; `None` when disabled (0).
    pub async fn wal_sender_timeout(&mut self) -> Result<Option<Duration>, Error> {
        let r = self.prompt_query("SHOW wal_sender_timeout").await?;
        let value = r
            .rows
            .first()
            .and_then(|row| row.first().cloned().flatten())
            .ok_or_else(|| Error::protocol("SHOW wal_sender_timeout returned no value"))?;
        parse_pg_duration(&value)
            .map(|d| (!d.is_zero()).then_some(d))
            .ok_or_else(|| Error::protocol(format!("cannot read wal_sender_timeout '{value}'")))
    }

    /// Creates a persistent pgoutput slot; returns its consistent point. With
    /// `failover` (PostgreSQL 17+) standbys that synchronize slots keep a copy, so
    /// the slot survives a promotion.
    pub async fn create_slot(&mut self, slot: &str, failover: bool) -> Result<Lsn, Error> {
        let sql = if failover {
            if self.server_major_version().is_some_and(|v| v < 17) {
                return Err(Error::config(format!(
                    "failover slots need PostgreSQL 17 or later; this server is {}",
                    self.server_major_version().unwrap_or(0)
                )));
            }
            format!(
                "CREATE_REPLICATION_SLOT {} LOGICAL pgoutput (SNAPSHOT 'nothing', FAILOVER true)",
                quote_ident(slot)
            )
        } else {
            // NOEXPORT_SNAPSHOT is understood by every supported version (the newer
            // `(SNAPSHOT 'nothing')` only from 15).
            format!(
                "CREATE_REPLICATION_SLOT {} LOGICAL pgoutput NOEXPORT_SNAPSHOT",
                quote_ident(slot)
            )
        };
        let r = self.conn.simple_query(&sql).await?;
        let point = r
            .first("consistent_point")
            .ok_or_else(|| Error::protocol("CREATE_REPLICATION_SLOT without consistent_point"))?;
        parse_lsn(point)
    }

    /// Drops a slot (waiting for it to become inactive).
    pub async fn drop_slot(&mut self, slot: &str) -> Result<(), Error> {
        self.conn
            .simple_query(&format!("DROP_REPLICATION_SLOT {} WAIT", quote_ident(slot)))
            .await
            .map(drop)
    }

    /// Starts streaming. Protocol version 1: whole transactions, after commit, in
    /// commit order — nothing uncommitted ever reaches us.
    pub async fn start(
        mut self,
        options: &StartOptions,
        settings: StreamSettings,
    ) -> Result<LogicalStream, Error> {
        let publications = options
            .publications
            .iter()
            .map(|p| quote_ident(p))
            .collect::<Vec<_>>()
            .join(",");
        let mut sql = format!(
            "START_REPLICATION SLOT {} LOGICAL {} (proto_version '1', publication_names {}",
            quote_ident(&options.slot),
            options.start_lsn,
            quote_literal(&publications)
        );
        if options.messages {
            sql.push_str(", messages 'true'");
        }
        sql.push(')');
        // The server answers START_REPLICATION at once; decoding begins after.
        let limit = self.answer_timeout;
        let answer = tokio::time::timeout(limit, self.conn.start_copy_both(&sql))
            .await
            .unwrap_or_else(|_| {
                Err(conn_timeout_error(
                    self.conn.peer(),
                    "waiting for the answer to START_REPLICATION",
                    limit,
                ))
            });
        match answer {
            Ok(()) => {}
            Err(Error::Server { error, .. }) if error.code == "55006" => {
                return Err(Error::SlotInUse {
                    slot: options.slot.clone(),
                    pid: active_pid_from_message(&error.message),
                })
            }
            Err(Error::Server { error, .. }) if is_invalidated_slot_error(&error) => {
                return Err(Error::SlotInvalidated {
                    slot: options.slot.clone(),
                    reason: error.to_string(),
                })
            }
            Err(Error::Server { error, .. }) if error.code == "42704" => {
                return Err(Error::SlotMissing {
                    slot: options.slot.clone(),
                })
            }
            Err(e) => return Err(e),
        }
        tracing::info!(slot = %options.slot, start = %options.start_lsn, "replication started");
        Ok(LogicalStream::new(self.conn, options.start_lsn, settings))
    }

    /// Closes the session.
    pub async fn close(self) {
        self.conn.terminate().await;
    }
}

/// SQLSTATE 55000 is also used for unrelated prerequisites (wal_level, say), so the
/// text decides: PostgreSQL 13–17 say "invalidated" or "can no longer get changes".
fn is_invalidated_slot_error(error: &ServerError) -> bool {
    let text = format!(
        "{} {}",
        error.message,
        error.detail.as_deref().unwrap_or("")
    );
    error.code == "55000"
        && (text.contains("invalidated") || text.contains("can no longer get changes"))
}

fn active_pid_from_message(message: &str) -> Option<i32> {
    // "replication slot \"x\" is active for PID 1234"
    message
        .rsplit(' ')
        .next()
        .and_then(|p| p.trim_end_matches('.').parse().ok())
}

pub(crate) fn parse_lsn(s: &str) -> Result<Lsn, Error> {
    s.parse()
        .map_err(|_| Error::protocol(format!("'{s}' is not an LSN")))
}

/// Reads a duration as `SHOW` prints it: `60s`, `500ms`, `1min`, `0`.
fn parse_pg_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    Some(match unit.trim() {
        "" | "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "min" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        "d" => Duration::from_secs(n * 86400),
        "us" => Duration::from_micros(n),
        _ => return None,
    })
}

/// Quotes an identifier for the replication grammar.
pub(crate) fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn quote_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_show_durations() {
        assert_eq!(parse_pg_duration("60s"), Some(Duration::from_secs(60)));
        assert_eq!(parse_pg_duration("1min"), Some(Duration::from_secs(60)));
        assert_eq!(parse_pg_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_pg_duration("0"), Some(Duration::ZERO));
        assert_eq!(parse_pg_duration("soon"), None);
    }

    #[test]
    fn reads_timeline_history_files() {
        let history = "1\t0/3000160\tno recovery target specified\n\n# comment\n2\t0/5000000\tbefore 2026-11-30\n";
        assert_eq!(
            parse_timeline_history(history).unwrap(),
            [
                TimelineSwitch {
                    timeline: 1,
                    switchpoint: Lsn(0x0300_0160)
                },
                TimelineSwitch {
                    timeline: 2,
                    switchpoint: Lsn(0x0500_0000)
                },
            ]
        );
        assert!(parse_timeline_history("1 nonsense").is_err());
    }

    #[test]
    fn quotes() {
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_literal("\"p\",\"q's\""), "'\"p\",\"q''s\"'");
    }

    #[test]
    fn pid_from_in_use_message() {
        assert_eq!(
            active_pid_from_message("replication slot \"s\" is active for PID 4321"),
            Some(4321)
        );
        assert_eq!(active_pid_from_message("busy"), None);
    }
}

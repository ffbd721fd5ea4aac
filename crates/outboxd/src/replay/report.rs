//! What a replay tells the operator: the records per topic with their first and
//! last id, progress on long runs, and why an empty selection cannot be replayed
//! and what can still be done.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, Instant, UNIX_EPOCH};

use outboxd_kafka_sink::Record;

use super::query::{Selection, TimeSource};
use super::source::TableState;

/// How often a long replay logs its progress.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// A time (µs since the Unix epoch) as RFC 3339 in UTC.
pub fn time(us: i64) -> String {
    match u64::try_from(us) {
        Ok(us) => {
            humantime::format_rfc3339_micros(UNIX_EPOCH + Duration::from_micros(us)).to_string()
        }
        Err(_) => format!("{us} µs before 1970"),
    }
}

/// The selection as given on the command line.
pub fn describe(selection: &Selection) -> String {
    let mut parts = Vec::new();
    let mut flag = |name: &str, value: &Option<String>| {
        if let Some(v) = value {
            parts.push(format!("{name} '{v}'"));
        }
    };
    flag("--since", &selection.since);
    flag("--until", &selection.until);
    flag("--from-id", &selection.from_id);
    flag("--to-id", &selection.to_id);
    if !selection.ids.is_empty() {
        parts.push(format!("--id ({} ids)", selection.ids.len()));
    }
    if !selection.exclude_ids.is_empty() {
        parts.push(format!(
            "--exclude-id ({} ids)",
            selection.exclude_ids.len()
        ));
    }
    if parts.is_empty() {
        "--all".to_owned()
    } else {
        parts.join(" ")
    }
}

/// Records of one topic.
#[derive(Debug, Clone, PartialEq, Eq)]
struct TopicTally {
    records: u64,
    first_id: String,
    last_id: String,
}

/// What was replayed (or, dry, would be).
#[derive(Debug, Default)]
pub struct Summary {
    topics: BTreeMap<String, TopicTally>,
    rows: u64,
    first_us: Option<i64>,
    last_us: Option<i64>,
    last_id: Option<String>,
}

impl Summary {
    /// Counts `record`, made from a row with time `time_us`.
    pub fn add(&mut self, record: &Record, time_us: Option<i64>) {
        let id = &record.meta.event_id;
        self.topics
            .entry(record.topic.clone())
            .and_modify(|t| {
                t.records += 1;
                t.last_id.clone_from(id);
            })
            .or_insert_with(|| TopicTally {
                records: 1,
                first_id: id.clone(),
                last_id: id.clone(),
            });
        self.rows += 1;
        if self.first_us.is_none() {
            self.first_us = time_us;
        }
        if time_us.is_some() {
            self.last_us = time_us;
        }
        self.last_id = Some(id.clone());
    }

    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// How far the rows counted so far go.
    pub fn reached(&self) -> Reached {
        Reached {
            rows: self.rows,
            last_id: self.last_id.clone(),
            last_us: self.last_us,
        }
    }
}

/// How far a replay got: the rows of its completed batches.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reached {
    rows: u64,
    last_id: Option<String>,
    last_us: Option<i64>,
}

impl Reached {
    /// For the error message of a replay that stopped, out of `total` rows: how far
    /// it got and how to go on.
    pub fn describe(&self, total: u64) -> String {
        match (&self.last_id, self.last_us) {
            (None, _) => format!(
                "none of the {total} selected rows was replayed; run it again once the cause \
                 is fixed"
            ),
            (Some(id), Some(us)) => format!(
                "{} of {total} rows were replayed, up to id {id} (time {t}); to go on from \
                 there, run the same replay with --since '{t}' (the rows of that time come \
                 again)",
                self.rows,
                t = time(us)
            ),
            (Some(id), None) => format!(
                "{} of {total} rows were replayed, up to id {id} (a row without time); run \
                 the same replay again",
                self.rows
            ),
        }
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (topic, t) in &self.topics {
            writeln!(
                f,
                "  {topic}: {} records, first id {}, last id {}",
                t.records, t.first_id, t.last_id
            )?;
        }
        if let (Some(first), Some(last)) = (self.first_us, self.last_us) {
            writeln!(f, "  times from {} to {}", time(first), time(last))?;
        }
        Ok(())
    }
}

/// Rows done out of the total, logged every few seconds.
#[derive(Debug)]
pub struct Progress {
    total: u64,
    done: u64,
    started: Instant,
    logged: Instant,
}

impl Progress {
    pub fn new(total: u64) -> Self {
        let now = Instant::now();
        Progress {
            total,
            done: 0,
            started: now,
            logged: now,
        }
    }

    pub fn advance(&mut self, rows: u64) {
        self.done += rows;
        if self.logged.elapsed() >= PROGRESS_EVERY && self.done < self.total {
            self.logged = Instant::now();
            tracing::info!(
                done = self.done,
                total = self.total,
                rows_per_second = self.rate(),
                "replayed {}/{} rows ({} rows/s)",
                self.done,
                self.total,
                self.rate()
            );
        }
    }

    /// Rows per second so far.
    pub fn rate(&self) -> u64 {
        let secs = self.started.elapsed().as_secs_f64();
        if secs > 0.0 {
            (self.done as f64 / secs) as u64
        } else {
            0
        }
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }
}

/// The selection is empty. Its text explains why a table may hold nothing to
/// replay and what can still be done; `outboxd replay` exits with status 3.
#[derive(Debug)]
pub struct NothingToReplay {
    pub selection: String,
    pub time: TimeSource,
    pub tables: Vec<TableState>,
    /// Rows matching the selection but for the time bounds that have no time.
    pub untimed: u64,
}

impl fmt::Display for NothingToReplay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "nothing to replay: no outbox row matches the selection ({}, times from {}).",
            self.selection, self.time
        )?;
        for t in &self.tables {
            match (t.extent.rows, t.extent.first_us, t.extent.last_us) {
                (0, _, _) => write!(f, "  {} holds no rows", t.name)?,
                (n, Some(first), Some(last)) => write!(
                    f,
                    "  {} holds {n} rows, times from {} to {}",
                    t.name,
                    time(first),
                    time(last)
                )?,
                (n, _, _) => write!(f, "  {} holds {n} rows, without times", t.name)?,
            }
            match (t.inserted, t.deleted) {
                (Some(i), Some(d)) if d > 0 => {
                    writeln!(f, " (its statistics count {i} rows inserted, {d} deleted)")?
                }
                _ => writeln!(f)?,
            }
        }
        if self.untimed > 0 {
            writeln!(
                f,
                "  {} rows match the rest of the selection but have no time ({}), so no time \
                 bound selects them; select them by id",
                self.untimed,
                match self.time {
                    TimeSource::CommitTimestamp =>
                        "committed before track_commit_timestamp was on, or too long ago",
                    TimeSource::Column(_) => "the column is NULL",
                }
            )?;
        }
        write!(
            f,
            "If your services delete each outbox row in the transaction that inserts it (the \
             Debezium way), events never stay in the table and cannot be replayed from it. What \
             can still be done:\n\
             \x20 - re-emit the events from the service's own data: insert them into the outbox \
             again (outboxd relays new rows as usual; consumers see new events, not replays);\n\
             \x20 - if the rows were removed later (a cleanup job) rather than in their own \
             transaction, restore a backup or a point-in-time recovery from before the removal \
             into another server and run `outboxd replay --postgres-url <that server>` with the \
             same configuration;\n\
             \x20 - events sent with pg_logical_emit_message were never in a table: only \
             re-emitting them helps.\n\
             See docs/operations.md, \"Replaying events\"."
        )
    }
}

impl std::error::Error for NothingToReplay {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replay::source::Extent;
    use bytes::Bytes;
    use outboxd_kafka_sink::RecordMeta;
    use outboxd_replication::TableName;

    fn record(topic: &str, id: &str) -> Record {
        Record {
            topic: topic.to_owned(),
            key: Some(Bytes::from_static(b"k")),
            meta: RecordMeta {
                event_id: id.to_owned(),
                ..RecordMeta::default()
            },
            ..Record::default()
        }
    }

    #[test]
    fn the_summary_counts_per_topic_with_first_and_last_ids() {
        let mut s = Summary::default();
        assert_eq!(
            s.reached().describe(3),
            "none of the 3 selected rows was replayed; run it again once the cause is fixed"
        );
        s.add(&record("t.order", "a"), Some(0));
        s.add(&record("t.invoice", "b"), Some(1_000_000));
        s.add(&record("t.order", "c"), Some(2_000_000));
        assert_eq!(
            s.to_string(),
            "  t.invoice: 1 records, first id b, last id b\n  \
             t.order: 2 records, first id a, last id c\n  \
             times from 1970-01-01T00:00:00.000000Z to 1970-01-01T00:00:02.000000Z\n"
        );
        assert_eq!(
            s.reached().describe(5),
            "3 of 5 rows were replayed, up to id c (time 1970-01-01T00:00:02.000000Z); to go on \
             from there, run the same replay with --since '1970-01-01T00:00:02.000000Z' (the \
             rows of that time come again)"
        );
    }

    #[test]
    fn an_empty_selection_explains_the_delete_in_the_same_transaction_case() {
        let state = |rows, deleted| TableState {
            name: TableName::parse("outbox").unwrap(),
            extent: Extent {
                rows,
                first_us: (rows > 0).then_some(0),
                last_us: (rows > 0).then_some(1_000_000),
            },
            inserted: Some(40),
            deleted: Some(deleted),
        };
        let text = NothingToReplay {
            selection: describe(&Selection {
                since: Some("2024-01-01".to_owned()),
                ids: vec!["a".to_owned()],
                ..Selection::default()
            }),
            time: TimeSource::CommitTimestamp,
            tables: vec![state(0, 40), state(2, 0)],
            untimed: 2,
        }
        .to_string();
        assert!(
            text.starts_with(
                "nothing to replay: no outbox row matches the selection (--since '2024-01-01' \
                 --id (1 ids), times from commit timestamps)."
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "public.outbox holds no rows (its statistics count 40 rows inserted, 40 deleted)"
            ),
            "{text}"
        );
        assert!(text.contains("public.outbox holds 2 rows, times from 1970-01-01T00:00:00.000000Z to 1970-01-01T00:00:01.000000Z\n"), "{text}");
        assert!(text.contains("2 rows match the rest of the selection but have no time (committed before track_commit_timestamp"), "{text}");
        for what in [
            "the Debezium way",
            "re-emit",
            "point-in-time recovery",
            "--postgres-url",
            "pg_logical_emit_message",
            "\"Replaying events\"",
        ] {
            assert!(text.contains(what), "{what}: {text}");
        }
    }
}

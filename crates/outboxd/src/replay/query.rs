//! The SQL of a replay, built from the outbox tables, the time source and the
//! selection. Pure, so the statements are unit-tested; `source.rs` runs them.
//!
//! Rows are ordered by (time, `cmin`, `ctid`): the time source, then the statement
//! within the inserting transaction, then the place in the table (what that
//! guarantees: docs/operations.md, "Replaying events"; the facts behind it:
//! docs/architecture.md, "Replay").

use std::fmt;

use outboxd_replication::TableName;

use crate::init::quote;

/// Where a row's time comes from: what `--since`/`--until` compare and what orders
/// the rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TimeSource {
    /// `pg_xact_commit_timestamp(xmin)`: the commit time of the inserting
    /// transaction (needs `track_commit_timestamp = on`).
    CommitTimestamp,
    /// A `timestamptz`, `timestamp` or `date` column (Debezium's `timestamp`).
    Column(String),
}

impl fmt::Display for TimeSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TimeSource::CommitTimestamp => write!(f, "commit timestamps"),
            TimeSource::Column(c) => write!(f, "column \"{c}\""),
        }
    }
}

/// An outbox table as the replay reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableColumns {
    pub name: TableName,
    /// All its columns, in the order the row query returns them.
    pub columns: Vec<String>,
    /// Its routing's id column.
    pub id_column: String,
    /// The id column's type as SQL spells it, to cast the ids given on the command
    /// line (so `--id` compares as the column does, not as text).
    pub id_type: String,
}

/// Which rows, as given on the command line. Times and ids are passed to PostgreSQL
/// as text and cast there, so they are read exactly as the server reads literals.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selection {
    /// Time at or after (inclusive).
    pub since: Option<String>,
    /// Time before (exclusive).
    pub until: Option<String>,
    /// Id at or above (inclusive).
    pub from_id: Option<String>,
    /// Id at or below (inclusive).
    pub to_id: Option<String>,
    /// Only these ids.
    pub ids: Vec<String>,
    /// Never these ids.
    pub exclude_ids: Vec<String>,
}

impl Selection {
    fn has_time_bounds(&self) -> bool {
        self.since.is_some() || self.until.is_some()
    }
}

/// A statement parameter: a text, or a list of texts (`text[]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Param {
    Text(String),
    List(Vec<String>),
}

/// A statement and the values of its `$n` parameters, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    pub sql: String,
    pub params: Vec<Param>,
}

/// The columns of the row query before the routed columns.
pub mod col {
    pub const TABLE: usize = 0;
    pub const TIME_US: usize = 1;
    pub const COMMIT_US: usize = 2;
    pub const XMIN: usize = 3;
    pub const CTID: usize = 4;
    /// The first routed column.
    pub const VALUES: usize = 5;
}

/// Builds the statements of one replay.
#[derive(Debug, Clone)]
pub struct Statements {
    pub tables: Vec<TableColumns>,
    pub time: TimeSource,
    /// Whether commit timestamps can be read (`track_commit_timestamp = on`).
    pub commit_times: bool,
    pub selection: Selection,
}

/// Which selection value a placeholder stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Key {
    Since,
    Until,
    FromId,
    ToId,
    Ids,
    ExcludeIds,
}

/// The parameters of one statement, numbered as they are first used.
#[derive(Debug, Default)]
struct Params {
    keys: Vec<Key>,
    values: Vec<Param>,
}

impl Params {
    fn placeholder(&mut self, key: Key, value: impl FnOnce() -> Param) -> String {
        let n = match self.keys.iter().position(|k| *k == key) {
            Some(i) => i + 1,
            None => {
                self.keys.push(key);
                self.values.push(value());
                self.keys.len()
            }
        };
        format!("${n}")
    }
}

/// `expr` (a timestamp) as microseconds since the Unix epoch.
fn micros(expr: &str) -> String {
    format!("(extract(epoch FROM {expr}) * 1000000)::bigint")
}

/// A column's value as its type's output function writes it — the text pgoutput
/// sends — or NULL (docs/architecture.md, "Replay").
fn output_text(column: &str) -> String {
    let c = quote(column);
    format!("CASE WHEN num_nulls({c}) = 0 THEN format('%s', {c}) END")
}

impl Statements {
    fn time_expr(&self) -> String {
        match &self.time {
            TimeSource::CommitTimestamp => "pg_xact_commit_timestamp(xmin)".to_owned(),
            TimeSource::Column(c) => format!("CAST({} AS timestamptz)", quote(c)),
        }
    }

    /// The WHERE conditions for `table`; the time bounds only with `time`.
    fn conditions(&self, table: &TableColumns, time: bool, p: &mut Params) -> Vec<String> {
        let s = &self.selection;
        let id = quote(&table.id_column);
        let ty = &table.id_type;
        let text = |v: &String| Param::Text(v.clone());
        let mut out = Vec::new();
        if time {
            let t = self.time_expr();
            if let Some(v) = &s.since {
                let ph = p.placeholder(Key::Since, || text(v));
                out.push(format!("{t} >= CAST({ph}::text AS timestamptz)"));
            }
            if let Some(v) = &s.until {
                let ph = p.placeholder(Key::Until, || text(v));
                out.push(format!("{t} < CAST({ph}::text AS timestamptz)"));
            }
        }
        if let Some(v) = &s.from_id {
            let ph = p.placeholder(Key::FromId, || text(v));
            out.push(format!("{id} >= CAST({ph}::text AS {ty})"));
        }
        if let Some(v) = &s.to_id {
            let ph = p.placeholder(Key::ToId, || text(v));
            out.push(format!("{id} <= CAST({ph}::text AS {ty})"));
        }
        if !s.ids.is_empty() {
            let ph = p.placeholder(Key::Ids, || Param::List(s.ids.clone()));
            out.push(format!("{id} = ANY (CAST({ph}::text[] AS {ty}[]))"));
        }
        if !s.exclude_ids.is_empty() {
            let ph = p.placeholder(Key::ExcludeIds, || Param::List(s.exclude_ids.clone()));
            // A NULL id is not excluded: it must reach the replay, which names it.
            out.push(format!(
                "({id} IS NULL OR {id} <> ALL (CAST({ph}::text[] AS {ty}[])))"
            ));
        }
        out
    }

    /// `SELECT <select> FROM <table> WHERE …` for every table, joined with UNION ALL.
    fn union(
        &self,
        select: impl Fn(usize, &TableColumns) -> String,
        time: bool,
        extra: impl Fn(&TableColumns) -> Option<String>,
        p: &mut Params,
    ) -> String {
        let branches: Vec<String> = self
            .tables
            .iter()
            .enumerate()
            .map(|(i, table)| {
                let mut conditions = self.conditions(table, time, p);
                conditions.extend(extra(table));
                let mut sql = format!("SELECT {} FROM {}", select(i, table), table.name.quoted());
                if !conditions.is_empty() {
                    sql.push_str(" WHERE ");
                    sql.push_str(&conditions.join(" AND "));
                }
                sql
            })
            .collect();
        branches.join(" UNION ALL ")
    }

    fn time_only(&self) -> impl Fn(usize, &TableColumns) -> String + '_ {
        move |_, _| format!("{} AS outboxd_time_us", micros(&self.time_expr()))
    }

    /// How many value columns the row query returns: the most any table has (a
    /// table with fewer is padded with NULLs, which `UNION ALL` needs).
    pub fn value_columns(&self) -> usize {
        self.tables
            .iter()
            .map(|t| t.columns.len())
            .max()
            .unwrap_or(0)
    }

    /// The selected rows in replay order: the columns of [`col`], then the columns
    /// of each table as output text.
    pub fn rows(&self) -> Statement {
        let commit = if self.commit_times {
            micros("pg_xact_commit_timestamp(xmin)")
        } else {
            "NULL::bigint".to_owned()
        };
        let select = |i: usize, table: &TableColumns| {
            let mut values: Vec<String> = table.columns.iter().map(|c| output_text(c)).collect();
            values.resize(self.value_columns(), "NULL::text".to_owned());
            format!(
                "{i} AS outboxd_table, {} AS outboxd_time_us, {commit} AS outboxd_commit_us, \
                 xmin::text AS outboxd_xmin, ctid::text AS outboxd_ctid, {}, \
                 cmin::text::bigint AS outboxd_cmin, ctid AS outboxd_tid",
                micros(&self.time_expr()),
                values.join(", ")
            )
        };
        let mut p = Params::default();
        let union = self.union(select, true, |_| None, &mut p);
        Statement {
            sql: format!("{union} ORDER BY outboxd_time_us NULLS FIRST, outboxd_cmin, outboxd_tid"),
            params: p.values,
        }
    }

    /// One row: how many rows are selected, and their first and last time (µs).
    pub fn count(&self) -> Statement {
        let mut p = Params::default();
        let union = self.union(self.time_only(), true, |_| None, &mut p);
        Statement {
            sql: format!(
                "SELECT count(*), min(outboxd_time_us), max(outboxd_time_us) FROM ({union}) s"
            ),
            params: p.values,
        }
    }

    /// With time bounds: how many rows the rest of the selection matches that have
    /// no time (no commit timestamp, or a NULL time column) and so are left out.
    pub fn untimed(&self) -> Option<Statement> {
        if !self.selection.has_time_bounds() {
            return None;
        }
        let mut p = Params::default();
        let union = self.union(self.time_only(), false, |_| None, &mut p);
        Some(Statement {
            sql: format!("SELECT count(*) FROM ({union}) s WHERE outboxd_time_us IS NULL"),
            params: p.values,
        })
    }

    /// With `--id`: the ids given that no selected row has.
    pub fn missing_ids(&self) -> Option<Statement> {
        if self.selection.ids.is_empty() {
            return None;
        }
        let mut p = Params::default();
        let list = p.placeholder(Key::Ids, || Param::List(self.selection.ids.clone()));
        let matches = |t: &TableColumns| {
            Some(format!(
                "{} = CAST(x AS {})",
                quote(&t.id_column),
                t.id_type
            ))
        };
        let union = self.union(|_, _| "1".to_owned(), true, matches, &mut p);
        Some(Statement {
            sql: format!(
                "SELECT x FROM unnest({list}::text[]) AS x WHERE NOT EXISTS ({union}) ORDER BY x"
            ),
            params: p.values,
        })
    }

    /// One row for table `i` as a whole: its rows, their first and last time (µs).
    pub fn table_extent(&self, i: usize) -> Statement {
        let t = micros(&self.time_expr());
        Statement {
            sql: format!(
                "SELECT count(*), min({t}), max({t}) FROM {}",
                self.tables[i].name.quoted()
            ),
            params: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn statements(time: TimeSource, selection: Selection) -> Statements {
        Statements {
            tables: vec![TableColumns {
                name: TableName::parse("public.outbox").unwrap(),
                columns: vec!["id".to_owned(), "payload".to_owned()],
                id_column: "id".to_owned(),
                id_type: "uuid".to_owned(),
            }],
            time,
            commit_times: false,
            selection,
        }
    }

    #[test]
    fn parameters_are_numbered_as_used_and_only_when_given() {
        let s = statements(
            TimeSource::Column("timestamp".to_owned()),
            Selection {
                until: Some("2024-01-02".to_owned()),
                ids: vec!["a".to_owned(), "b".to_owned()],
                ..Selection::default()
            },
        );
        let rows = s.rows();
        assert_eq!(
            rows.params,
            vec![
                Param::Text("2024-01-02".to_owned()),
                Param::List(vec!["a".to_owned(), "b".to_owned()]),
            ]
        );
        assert!(
            rows.sql.contains(
                "CAST(\"timestamp\" AS timestamptz) < CAST($1::text AS timestamptz) AND \
                 \"id\" = ANY (CAST($2::text[] AS uuid[]))"
            ),
            "{}",
            rows.sql
        );
        assert!(!rows.sql.contains("$3"), "{}", rows.sql);
        assert!(rows
            .sql
            .ends_with("ORDER BY outboxd_time_us NULLS FIRST, outboxd_cmin, outboxd_tid"));
        assert!(rows
            .sql
            .contains("CASE WHEN num_nulls(\"payload\") = 0 THEN format('%s', \"payload\") END"));
        // Without time bounds there is nothing left out for lack of a time.
        let untimed = s.untimed().unwrap();
        assert_eq!(untimed.params.len(), 1, "only the id list: {untimed:?}");
        assert!(untimed.sql.contains("$1::text[]"), "{}", untimed.sql);
    }

    #[test]
    fn the_id_list_check_reuses_its_parameter() {
        let s = statements(
            TimeSource::CommitTimestamp,
            Selection {
                since: Some("2024-01-01".to_owned()),
                ids: vec!["a".to_owned()],
                exclude_ids: vec!["c".to_owned()],
                ..Selection::default()
            },
        );
        let missing = s.missing_ids().unwrap();
        assert_eq!(missing.params.len(), 3, "{missing:?}");
        assert!(missing.sql.starts_with("SELECT x FROM unnest($1::text[])"));
        assert!(missing
            .sql
            .contains("pg_xact_commit_timestamp(xmin) >= CAST($2::text"));
        assert!(missing
            .sql
            .contains("\"id\" = ANY (CAST($1::text[] AS uuid[]))"));
        assert!(missing
            .sql
            .contains("(\"id\" IS NULL OR \"id\" <> ALL (CAST($3::text[] AS uuid[])))"));
        assert!(missing.sql.contains("\"id\" = CAST(x AS uuid)"));
        assert!(
            statements(TimeSource::CommitTimestamp, Selection::default())
                .missing_ids()
                .is_none()
        );
    }

    #[test]
    fn several_tables_are_one_ordered_union() {
        let mut s = statements(TimeSource::CommitTimestamp, Selection::default());
        s.tables.push(TableColumns {
            name: TableName::parse("billing.outbox").unwrap(),
            columns: vec![
                "event_id".to_owned(),
                "payload".to_owned(),
                "note".to_owned(),
            ],
            id_column: "event_id".to_owned(),
            id_type: "bigint".to_owned(),
        });
        s.commit_times = true;
        let rows = s.rows();
        assert!(rows.params.is_empty());
        assert_eq!(s.value_columns(), 3);
        // The narrower table is padded to the wider one's columns.
        assert_eq!(rows.sql.matches("NULL::text").count(), 1, "{}", rows.sql);
        s.selection.ids = vec!["7".to_owned()];
        let missing = s.missing_ids().unwrap();
        assert!(
            missing.sql.contains("\"id\" = CAST(x AS uuid)"),
            "{}",
            missing.sql
        );
        assert!(
            missing.sql.contains("\"event_id\" = CAST(x AS bigint)"),
            "{}",
            missing.sql
        );
        assert_eq!(rows.sql.matches(" UNION ALL ").count(), 1, "{}", rows.sql);
        assert!(rows.sql.contains("SELECT 1 AS outboxd_table"));
        assert!(rows.sql.contains("FROM \"billing\".\"outbox\""));
        assert!(!rows.sql.contains("WHERE"), "{}", rows.sql);
        assert!(rows.sql.contains(
            "(extract(epoch FROM pg_xact_commit_timestamp(xmin)) * 1000000)::bigint AS outboxd_commit_us"
        ));
    }
}

//! Reading the rows to replay: the outbox tables' columns, the time source, and one
//! read-only snapshot in which the selection is counted, checked and then read in
//! batches from a cursor.

use anyhow::Context as _;
use outboxd_pgoutput::{Column, Relation, ReplicaIdentity};
use outboxd_replication::{Admin, TableName};
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

use super::query::{col, Param, Selection, Statement, Statements, TableColumns, TimeSource};
use super::record::SourceRow;
use crate::config::Config;
use crate::router::Catalog;
use crate::{settings, table_catalog};

/// Type OIDs a time column may have.
const TIMESTAMPTZ_OID: u32 = 1184;
const TIMESTAMP_OID: u32 = 1114;
const DATE_OID: u32 = 1082;

/// Debezium's optional time column, used when nothing else is configured.
const DEBEZIUM_TIME_COLUMN: &str = "timestamp";

const CURSOR: &str = "outboxd_replay";

/// One column of a table, from the catalog.
#[derive(Debug, Clone)]
struct CatalogColumn {
    name: String,
    type_oid: u32,
    type_modifier: i32,
    /// As SQL spells the type (`uuid`, `character varying`).
    type_name: String,
}

/// How big the selection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub rows: u64,
    /// First and last time, µs since the Unix epoch (`None` without times).
    pub first_us: Option<i64>,
    pub last_us: Option<i64>,
}

/// A table as a whole, for explaining an empty selection.
#[derive(Debug, Clone)]
pub struct TableState {
    pub name: TableName,
    pub extent: Extent,
    /// Rows inserted and deleted since the statistics were reset, if known.
    pub inserted: Option<i64>,
    pub deleted: Option<i64>,
}

/// The database side of a replay, in one REPEATABLE READ, READ ONLY transaction.
#[derive(Debug)]
pub struct Source {
    admin: Admin,
    pub statements: Statements,
    /// Per table, its columns as pgoutput describes them.
    pub relations: Vec<Relation>,
    /// The tables' column nullability and defaults, for the router.
    pub catalog: Catalog,
    fetch: Option<tokio_postgres::Statement>,
}

impl Source {
    /// Connects, reads the tables' columns, chooses the time source and opens the
    /// snapshot that everything after reads.
    pub async fn open(
        config: &Config,
        selection: Selection,
        time_column: Option<&str>,
    ) -> anyhow::Result<Source> {
        let admin = Admin::connect(&settings::connect_options(config)?).await?;
        let outbox_tables = settings::outbox_tables(config)?;
        let mut catalogs = Vec::new();
        for table in &outbox_tables {
            let routing = config
                .routing
                .for_table(&table.to_string())
                .map_err(anyhow::Error::msg)?;
            admin
                .check_table(table, &routing.required_columns())
                .await?;
            let (oid, columns) = read_columns(&admin, table).await?;
            catalogs.push((table.clone(), routing.columns.id, oid, columns));
        }
        let catalog = table_catalog::load(&admin, &outbox_tables).await?;
        let track_commit = setting(&admin, "track_commit_timestamp").await? == "on";
        let named: Vec<(&TableName, &[CatalogColumn])> = catalogs
            .iter()
            .map(|(t, _, _, cs)| (t, cs.as_slice()))
            .collect();
        let time =
            choose_time_source(time_column, track_commit, &named).map_err(anyhow::Error::msg)?;
        let mut tables = Vec::new();
        let mut relations = Vec::new();
        // Every column, as pgoutput sends an INSERT's new row: the routing of each
        // table reads what it is configured to.
        for (name, id_column, oid, columns) in catalogs {
            relations.push(Relation {
                oid,
                namespace: name.schema.clone(),
                name: name.name.clone(),
                replica_identity: ReplicaIdentity::Default,
                columns: columns
                    .iter()
                    .map(|c| Column {
                        flags: 0,
                        name: c.name.clone(),
                        type_oid: c.type_oid,
                        type_modifier: c.type_modifier,
                    })
                    .collect(),
            });
            tables.push(TableColumns {
                id_type: columns
                    .iter()
                    .find(|c| c.name == id_column)
                    .map_or_else(|| "text".to_owned(), |c| c.type_name.clone()),
                id_column,
                name,
                columns: columns.into_iter().map(|c| c.name).collect(),
            });
        }
        let statements = Statements {
            tables,
            time,
            commit_times: track_commit,
            selection,
        };
        let source = Source {
            admin,
            statements,
            relations,
            catalog,
            fetch: None,
        };
        // One snapshot for the counts and the rows: the totals are exact, and rows
        // committed meanwhile are not half included.
        source
            .execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY", &[])
            .await
            .context("starting the replay's snapshot")?;
        Ok(source)
    }

    fn sql_error(&self, error: tokio_postgres::Error) -> anyhow::Error {
        outboxd_replication::Error::Sql {
            peer: self.admin.peer().to_owned(),
            error,
        }
        .into()
    }

    async fn execute(&self, sql: &str, params: &[Param]) -> anyhow::Result<u64> {
        let params = bind(params);
        self.admin
            .client()
            .execute(sql, &params)
            .await
            .map_err(|e| self.sql_error(e))
    }

    async fn query(&self, statement: &Statement) -> anyhow::Result<Vec<Row>> {
        let params = bind(&statement.params);
        self.admin
            .client()
            .query(&statement.sql, &params)
            .await
            .map_err(|e| self.sql_error(e))
    }

    /// How many rows the selection holds, with their first and last time.
    pub async fn extent(&self) -> anyhow::Result<Extent> {
        let rows = self.query(&self.statements.count()).await.context(
            "counting the selected rows (the selection's values are cast to the columns' types)",
        )?;
        extent_of(rows.first())
    }

    /// With time bounds: rows of the rest of the selection that have no time.
    pub async fn untimed_rows(&self) -> anyhow::Result<u64> {
        let Some(statement) = self.statements.untimed() else {
            return Ok(0);
        };
        let rows = self.query(&statement).await?;
        let n: i64 = rows.first().map_or(Ok(0), |r| r.try_get(0))?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// The ids given with `--id` that no selected row has.
    pub async fn missing_ids(&self) -> anyhow::Result<Vec<String>> {
        let Some(statement) = self.statements.missing_ids() else {
            return Ok(Vec::new());
        };
        let rows = self.query(&statement).await?;
        rows.iter()
            .map(|r| r.try_get::<_, String>(0).map_err(anyhow::Error::from))
            .collect()
    }

    /// Each table as a whole (for explaining an empty selection).
    pub async fn tables(&self) -> anyhow::Result<Vec<TableState>> {
        let mut out = Vec::new();
        for (i, table) in self.statements.tables.iter().enumerate() {
            let rows = self.query(&self.statements.table_extent(i)).await?;
            let stats = self
                .admin
                .client()
                .query_opt(
                    "SELECT n_tup_ins, n_tup_del FROM pg_stat_user_tables WHERE relid = $1",
                    &[&self.relations[i].oid],
                )
                .await
                .map_err(|e| self.sql_error(e))?;
            out.push(TableState {
                name: table.name.clone(),
                extent: extent_of(rows.first())?,
                inserted: stats.as_ref().and_then(|r| r.try_get(0).ok()),
                deleted: stats.as_ref().and_then(|r| r.try_get(1).ok()),
            });
        }
        Ok(out)
    }

    /// Opens the cursor over the selected rows, in replay order.
    pub async fn open_cursor(&mut self, batch_size: usize) -> anyhow::Result<()> {
        let rows = self.statements.rows();
        self.execute(
            &format!("DECLARE {CURSOR} NO SCROLL CURSOR FOR {}", rows.sql),
            &rows.params,
        )
        .await
        .context("opening the cursor over the selected rows")?;
        let fetch = self
            .admin
            .client()
            .prepare(&format!("FETCH FORWARD {batch_size} FROM {CURSOR}"))
            .await
            .map_err(|e| self.sql_error(e))?;
        self.fetch = Some(fetch);
        Ok(())
    }

    /// The next batch of rows; empty at the end.
    pub async fn next_batch(&self) -> anyhow::Result<Vec<SourceRow>> {
        let fetch = self
            .fetch
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("the cursor over the selected rows is not open"))?;
        let rows = self
            .admin
            .client()
            .query(fetch, &[])
            .await
            .map_err(|e| self.sql_error(e))
            .context("reading the selected rows")?;
        let values = self.statements.value_columns();
        rows.iter().map(|r| source_row(r, values)).collect()
    }

    /// Ends the snapshot.
    pub async fn close(self) -> anyhow::Result<()> {
        self.execute("COMMIT", &[]).await.map(|_| ())
    }
}

fn bind(params: &[Param]) -> Vec<&(dyn ToSql + Sync)> {
    params
        .iter()
        .map(|p| match p {
            Param::Text(t) => t as &(dyn ToSql + Sync),
            Param::List(l) => l as &(dyn ToSql + Sync),
        })
        .collect()
}

fn extent_of(row: Option<&Row>) -> anyhow::Result<Extent> {
    let Some(row) = row else {
        return Ok(Extent {
            rows: 0,
            first_us: None,
            last_us: None,
        });
    };
    let rows: i64 = row.try_get(0)?;
    Ok(Extent {
        rows: u64::try_from(rows).unwrap_or(0),
        first_us: row.try_get(1)?,
        last_us: row.try_get(2)?,
    })
}

/// A row of the row query (see [`col`]) with `values` value columns.
fn source_row(row: &Row, values: usize) -> anyhow::Result<SourceRow> {
    let table: i32 = row.try_get(col::TABLE)?;
    let xmin: String = row.try_get(col::XMIN)?;
    let values = (col::VALUES..col::VALUES + values)
        .map(|i| row.try_get::<_, Option<String>>(i))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(SourceRow {
        table: usize::try_from(table).context("table index")?,
        time_us: row.try_get(col::TIME_US)?,
        commit_us: row.try_get(col::COMMIT_US)?,
        xid: xmin
            .parse()
            .with_context(|| format!("xmin '{xmin}' is not a transaction id"))?,
        ctid: row.try_get(col::CTID)?,
        values,
    })
}

async fn setting(admin: &Admin, name: &str) -> anyhow::Result<String> {
    let row = admin
        .client()
        .query_one("SELECT current_setting($1)", &[&name])
        .await
        .map_err(|error| outboxd_replication::Error::Sql {
            peer: admin.peer().to_owned(),
            error,
        })?;
    Ok(row.try_get(0)?)
}

/// The table's OID and its columns.
async fn read_columns(
    admin: &Admin,
    table: &TableName,
) -> anyhow::Result<(u32, Vec<CatalogColumn>)> {
    let rows = admin
        .client()
        .query(
            "SELECT c.oid, a.attname::text, a.atttypid, a.atttypmod, format_type(a.atttypid, NULL) \
             FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relname = $2 AND a.attnum > 0 AND NOT a.attisdropped \
             ORDER BY a.attnum",
            &[&table.schema, &table.name],
        )
        .await
        .map_err(|error| outboxd_replication::Error::Sql {
            peer: admin.peer().to_owned(),
            error,
        })?;
    let oid = rows.first().map_or(Ok(0), |r| r.try_get(0))?;
    let columns = rows
        .iter()
        .map(|r| {
            Ok(CatalogColumn {
                name: r.try_get(1)?,
                type_oid: r.try_get(2)?,
                type_modifier: r.try_get(3)?,
                type_name: r.try_get(4)?,
            })
        })
        .collect::<Result<Vec<_>, tokio_postgres::Error>>()?;
    Ok((oid, columns))
}

/// The time source: the column named with `--time-column`; else commit timestamps
/// when the server records them; else Debezium's `timestamp` column when every table
/// has one. Without any, rows cannot be put in commit order, so the replay refuses.
fn choose_time_source(
    explicit: Option<&str>,
    track_commit_timestamp: bool,
    tables: &[(&TableName, &[CatalogColumn])],
) -> Result<TimeSource, String> {
    let check = |name: &str| -> Result<(), String> {
        for (table, columns) in tables {
            match columns.iter().find(|c| c.name == name) {
                None => return Err(format!("table {table} has no column '{name}'")),
                Some(c) if ![TIMESTAMPTZ_OID, TIMESTAMP_OID, DATE_OID].contains(&c.type_oid) => {
                    return Err(format!(
                        "column '{name}' of {table} is {}, not a timestamptz, timestamp or date",
                        c.type_name
                    ))
                }
                Some(_) => {}
            }
        }
        Ok(())
    };
    if let Some(name) = explicit {
        check(name).map_err(|e| format!("--time-column: {e}"))?;
        return Ok(TimeSource::Column(name.to_owned()));
    }
    if track_commit_timestamp {
        return Ok(TimeSource::CommitTimestamp);
    }
    match check(DEBEZIUM_TIME_COLUMN) {
        Ok(()) => Ok(TimeSource::Column(DEBEZIUM_TIME_COLUMN.to_owned())),
        Err(why) => Err(format!(
            "no time to select and order the rows by: track_commit_timestamp is off and {why}. \
             Name a timestamp column that the services set when they insert an event with \
             --time-column, or turn track_commit_timestamp on (it takes a server restart and \
             records commit times only from then on)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn column(name: &str, type_oid: u32, type_name: &str) -> CatalogColumn {
        CatalogColumn {
            name: name.to_owned(),
            type_oid,
            type_modifier: -1,
            type_name: type_name.to_owned(),
        }
    }

    #[test]
    fn the_time_source_is_explicit_then_commit_timestamps_then_debeziums_column() {
        let table = TableName::parse("outbox").unwrap();
        let debezium = [
            column("id", 2950, "uuid"),
            column("timestamp", TIMESTAMPTZ_OID, "timestamp with time zone"),
            column("created", TIMESTAMP_OID, "timestamp without time zone"),
            column("payload", 3802, "jsonb"),
        ];
        let tables = [(&table, &debezium[..])];
        let column_source = |n: &str| Ok(TimeSource::Column(n.to_owned()));
        assert_eq!(
            choose_time_source(Some("created"), true, &tables),
            column_source("created")
        );
        assert_eq!(
            choose_time_source(None, true, &tables),
            Ok(TimeSource::CommitTimestamp)
        );
        assert_eq!(
            choose_time_source(None, false, &tables),
            column_source("timestamp")
        );
        let e = choose_time_source(Some("payload"), true, &tables).unwrap_err();
        assert!(e.contains("'payload' of public.outbox is jsonb"), "{e}");
        let e = choose_time_source(Some("nope"), false, &tables).unwrap_err();
        assert!(e.contains("has no column 'nope'"), "{e}");

        let bare = [column("id", 2950, "uuid")];
        let e = choose_time_source(None, false, &[(&table, &bare[..])]).unwrap_err();
        assert!(e.contains("track_commit_timestamp is off"), "{e}");
        assert!(e.contains("--time-column"), "{e}");
    }
}

//! Ordinary SQL around replication, on a normal (tokio-postgres) connection:
//! preflight checks, the publication, the slot's state.
//!
//! Every check that can fail because of the server's setup says what to change.

use std::fmt;
use std::future::Future;
use std::time::Duration;

use outboxd_pgoutput::Lsn;
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

use crate::client::{parse_lsn, quote_ident};
use crate::config::{ConnectOptions, Host};
use crate::conn::conn_timeout_error;
use crate::error::{Error, Preflight, SlotMismatch};
use crate::hosts::{self, Rejection};
use crate::session_attrs::{self, ServerState};
use crate::tls;

/// A `schema.table` name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TableName {
    pub schema: String,
    pub name: String,
}

impl TableName {
    /// Parses `table` (schema `public`) or `schema.table`.
    pub fn parse(s: &str) -> Result<TableName, Error> {
        let (schema, name) = s.split_once('.').unwrap_or(("public", s));
        if schema.is_empty() || name.is_empty() || name.contains('.') {
            return Err(Error::config(format!(
                "'{s}' is not a table name (use table or schema.table)"
            )));
        }
        Ok(TableName {
            schema: schema.to_owned(),
            name: name.to_owned(),
        })
    }

    /// The quoted form for SQL.
    pub fn quoted(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.name))
    }
}

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.schema, self.name)
    }
}

/// A replication slot as `pg_replication_slots` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotInfo {
    pub name: String,
    pub plugin: Option<String>,
    pub slot_type: String,
    pub database: Option<String>,
    pub active_pid: Option<i32>,
    pub restart_lsn: Option<Lsn>,
    pub confirmed_flush_lsn: Option<Lsn>,
    /// `reserved`, `extended`, `unreserved` or `lost`.
    pub wal_status: Option<String>,
    /// `pg_current_wal_lsn() - confirmed_flush_lsn`, in bytes (`None` on a standby).
    pub lag_bytes: Option<i64>,
    /// A temporary slot disappears with its session (and a freshly synchronized one
    /// on a standby is temporary until it is safe to keep across promotion).
    pub temporary: bool,
    /// PostgreSQL 17+: whether the slot is synchronized to standbys for failover.
    pub failover: Option<bool>,
    /// PostgreSQL 17+ on a standby: whether this is a copy synchronized from the
    /// primary.
    pub synced: Option<bool>,
}

impl SlotInfo {
    /// Whether WAL the slot needs is gone: the slot cannot be used any more.
    pub fn is_lost(&self) -> bool {
        self.wal_status.as_deref() == Some("lost")
    }
}

/// A normal SQL session next to the replication stream.
#[derive(Debug)]
pub struct Admin {
    client: Client,
    peer: String,
    /// The bound on catalog reads (`connect_timeout`).
    answer_timeout: Duration,
}

impl Admin {
    /// Connects with the same options, TLS rules and choice of host (see `hosts`)
    /// as the replication connection. `connect_timeout` bounds the whole handshake
    /// with each host, as in libpq (tokio-postgres applies it to the TCP connect
    /// only, so a silent server would hold us forever).
    pub async fn connect(opts: &ConnectOptions) -> Result<Admin, Error> {
        hosts::connect_first(opts, async |host, wanted| {
            let (admin, reported) = Self::connect_host(opts, host)
                .await
                .map_err(Rejection::Failed)?;
            session_attrs::check_session(wanted, reported, async |sql| {
                let messages = admin
                    .client
                    .simple_query(sql)
                    .await
                    .map_err(|e| admin.sql(e))?;
                Ok(messages.iter().find_map(|m| match m {
                    SimpleQueryMessage::Row(row) => row.get(0).map(str::to_owned),
                    _ => None,
                }))
            })
            .await?;
            Ok(admin)
        })
        .await
    }

    /// Connects to `host`; also returns what the server reported about itself.
    async fn connect_host(
        opts: &ConnectOptions,
        host: &Host,
    ) -> Result<(Admin, ServerState), Error> {
        let peer = opts.describe_host(host);
        let config = opts.to_tokio_config(host);
        let sql_err = |error| Error::Sql {
            peer: peer.clone(),
            error,
        };
        let (client, reported) = match tls::client_config(opts)? {
            None => {
                let (client, connection) = config.connect(NoTls).await.map_err(sql_err)?;
                let reported = ServerState::reported(|name| connection.parameter(name));
                tokio::spawn(drive(connection, peer.clone()));
                (client, reported)
            }
            Some(tls_config) => {
                let connector =
                    tokio_postgres_rustls::MakeRustlsConnect::new((*tls_config).clone());
                let (client, connection) = config
                    .connect(connector)
                    .await
                    .map_err(|e| tls::handshake_refusal(host, &e).unwrap_or_else(|| sql_err(e)))?;
                let reported = ServerState::reported(|name| connection.parameter(name));
                tokio::spawn(drive(connection, peer.clone()));
                (client, reported)
            }
        };
        let admin = Admin {
            client,
            peer,
            answer_timeout: opts.connect_timeout,
        };
        Ok((admin, reported))
    }

    /// The server connected to, as `host:port/db as user`.
    pub fn peer(&self) -> &str {
        &self.peer
    }

    /// The underlying client, for callers with SQL of their own.
    pub fn client(&self) -> &Client {
        &self.client
    }

    fn sql(&self, error: tokio_postgres::Error) -> Error {
        Error::Sql {
            peer: self.peer.clone(),
            error,
        }
    }

    /// Runs a catalog read, which the server answers at once: no answer within
    /// `connect_timeout` means a dead path (tokio-postgres itself waits forever).
    async fn prompt<T>(
        &self,
        what: &str,
        query: impl Future<Output = Result<T, tokio_postgres::Error>>,
    ) -> Result<T, Error> {
        match tokio::time::timeout(self.answer_timeout, query).await {
            Ok(result) => result.map_err(|e| self.sql(e)),
            Err(_) => Err(conn_timeout_error(
                &self.peer,
                &format!("waiting for {what}"),
                self.answer_timeout,
            )),
        }
    }

    async fn show(&self, setting: &str) -> Result<String, Error> {
        let row = self
            .prompt(
                "a setting",
                self.client
                    .query_one("SELECT current_setting($1)", &[&setting]),
            )
            .await?;
        Ok(row.get(0))
    }

    /// `server_version_num`, e.g. 150018.
    pub async fn server_version_num(&self) -> Result<u32, Error> {
        self.show("server_version_num")
            .await?
            .parse()
            .map_err(|_| Error::protocol("server_version_num is not a number"))
    }

    /// `wal_level` must be `logical`.
    pub async fn check_wal_level(&self) -> Result<(), Error> {
        let level = self.show("wal_level").await?;
        if level != "logical" {
            return Err(Preflight::WalLevel(level).into());
        }
        Ok(())
    }

    /// The user must have REPLICATION (or be superuser) to open a walsender.
    pub async fn check_replication_role(&self) -> Result<(), Error> {
        let row = self
            .prompt(
                "the role's attributes",
                self.client.query_one(
                    "SELECT current_user::text, rolreplication OR rolsuper FROM pg_roles \
                     WHERE rolname = current_user",
                    &[],
                ),
            )
            .await?;
        let user: String = row.get(0);
        let allowed: bool = row.get(1);
        if !allowed {
            return Err(Preflight::NotReplicationRole(user).into());
        }
        Ok(())
    }

    /// `table`'s columns with whether each is `NOT NULL` and its default expression
    /// (`pg_get_expr`, as JDBC reports it), in column order; empty when the table
    /// does not exist.
    pub async fn column_details(
        &self,
        table: &TableName,
    ) -> Result<Vec<(String, bool, Option<String>)>, Error> {
        let rows = self
            .prompt(
                "the table's column details",
                self.client.query(
                    "SELECT a.attname::text, a.attnotnull, pg_get_expr(d.adbin, d.adrelid) \
                     FROM pg_attribute a \
                     JOIN pg_class c ON c.oid = a.attrelid \
                     JOIN pg_namespace n ON n.oid = c.relnamespace \
                     LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum \
                     WHERE n.nspname = $1 AND c.relname = $2 AND a.attnum > 0 \
                     AND NOT a.attisdropped ORDER BY a.attnum",
                    &[&table.schema, &table.name],
                ),
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect())
    }

    /// Checks that `table` exists and has the columns the caller needs.
    pub async fn check_table(&self, table: &TableName, columns: &[&str]) -> Result<(), Error> {
        let rows = self
            .prompt(
                "the table's columns",
                self.client.query(
                    "SELECT a.attname::text FROM pg_attribute a \
                     JOIN pg_class c ON c.oid = a.attrelid \
                     JOIN pg_namespace n ON n.oid = c.relnamespace \
                     WHERE n.nspname = $1 AND c.relname = $2 AND a.attnum > 0 AND NOT a.attisdropped",
                    &[&table.schema, &table.name],
                ),
            )
            .await?;
        if rows.is_empty() {
            return Err(Preflight::TableMissing(table.clone()).into());
        }
        let present: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
        let missing: Vec<String> = columns
            .iter()
            .filter(|c| !present.iter().any(|p| p == *c))
            .map(|c| (*c).to_owned())
            .collect();
        if !missing.is_empty() {
            return Err(Preflight::ColumnsMissing {
                table: table.clone(),
                missing,
                present,
            }
            .into());
        }
        Ok(())
    }

    /// Makes sure publication `name` publishes inserts of every table in `tables`.
    /// Creates it (inserts only) when missing and `create` is true; otherwise reports
    /// what to run.
    pub async fn ensure_publication(
        &self,
        name: &str,
        tables: &[TableName],
        create: bool,
    ) -> Result<(), Error> {
        let existing = self
            .prompt(
                "the publication",
                self.client.query_opt(
                    "SELECT pubinsert, puballtables FROM pg_publication WHERE pubname = $1",
                    &[&name],
                ),
            )
            .await?;
        let table_list = tables
            .iter()
            .map(TableName::quoted)
            .collect::<Vec<_>>()
            .join(", ");
        let ddl = format!(
            "CREATE PUBLICATION {} FOR TABLE {table_list} WITH (publish = 'insert')",
            quote_ident(name)
        );
        let Some(row) = existing else {
            if !create {
                return Err(Preflight::PublicationMissing {
                    name: name.to_owned(),
                    ddl,
                }
                .into());
            }
            self.client.batch_execute(&ddl).await.map_err(|e| {
                let reason = e
                    .as_db_error()
                    .map_or_else(|| e.to_string(), |db| db.message().to_owned());
                Preflight::PublicationNotCreated {
                    name: name.to_owned(),
                    reason,
                    ddl: ddl.clone(),
                }
            })?;
            tracing::info!(publication = name, tables = %table_list, "publication created");
            return Ok(());
        };
        let publishes_inserts: bool = row.get(0);
        if !publishes_inserts {
            return Err(Preflight::PublicationOmitsInserts {
                name: name.to_owned(),
                quoted: quote_ident(name),
            }
            .into());
        }
        let published = self
            .prompt("the publication's tables", self.client.query(
                "SELECT schemaname::text, tablename::text FROM pg_publication_tables WHERE pubname = $1",
                &[&name],
            ))
            .await?;
        let missing: Vec<TableName> = tables
            .iter()
            .filter(|t| {
                !published
                    .iter()
                    .any(|r| r.get::<_, String>(0) == t.schema && r.get::<_, String>(1) == t.name)
            })
            .cloned()
            .collect();
        if !missing.is_empty() {
            return Err(Preflight::PublicationOmitsTables {
                name: name.to_owned(),
                quoted: quote_ident(name),
                tables: missing,
            }
            .into());
        }
        Ok(())
    }

    /// The slot's state, or `None` when there is no such slot.
    pub async fn slot(&self, name: &str) -> Result<Option<SlotInfo>, Error> {
        let row = self
            .prompt(
                "the slot's state",
                self.client.query_opt(
                    // failover and synced exist from PostgreSQL 17: read them through
                    // JSON so one query serves every version (NULL before 17).
                    "SELECT slot_name::text, plugin::text, slot_type, database::text, active_pid, \
                            restart_lsn::text, confirmed_flush_lsn::text, wal_status, \
                            CASE WHEN pg_is_in_recovery() THEN NULL \
                                 ELSE (pg_current_wal_lsn() - confirmed_flush_lsn)::bigint END, \
                            temporary, (to_jsonb(s) ->> 'failover')::bool, \
                            (to_jsonb(s) ->> 'synced')::bool \
                     FROM pg_replication_slots s WHERE slot_name = $1",
                    &[&name],
                ),
            )
            .await?;
        let Some(row) = row else { return Ok(None) };
        let lsn = |idx: usize| -> Result<Option<Lsn>, Error> {
            row.get::<_, Option<String>>(idx)
                .map(|s| parse_lsn(&s))
                .transpose()
        };
        Ok(Some(SlotInfo {
            name: row.get(0),
            plugin: row.get(1),
            slot_type: row.get(2),
            database: row.get(3),
            active_pid: row.get(4),
            restart_lsn: lsn(5)?,
            confirmed_flush_lsn: lsn(6)?,
            wal_status: row.get(7),
            lag_bytes: row.get(8),
            temporary: row.get(9),
            failover: row.get(10),
            synced: row.get(11),
        }))
    }

    /// Checks that an existing slot can serve this database with pgoutput.
    pub fn verify_slot(slot: &SlotInfo, database: &str) -> Result<(), Error> {
        let mismatch = |kind| Error::SlotMismatch {
            slot: slot.name.clone(),
            kind,
        };
        if slot.slot_type != "logical" {
            return Err(mismatch(SlotMismatch::NotLogical(slot.slot_type.clone())));
        }
        if slot.plugin.as_deref() != Some("pgoutput") {
            return Err(mismatch(SlotMismatch::Plugin(
                slot.plugin.clone().unwrap_or_default(),
            )));
        }
        if slot.database.as_deref() != Some(database) {
            return Err(mismatch(SlotMismatch::Database {
                slot: slot.database.clone().unwrap_or_default(),
                connected: database.to_owned(),
            }));
        }
        if slot.is_lost() {
            return Err(Error::SlotInvalidated {
                slot: slot.name.clone(),
                reason: "pg_replication_slots.wal_status = 'lost'".to_owned(),
            });
        }
        Ok(())
    }

    /// The end of WAL the server has made durable (on a standby: replayed), as
    /// `IDENTIFY_SYSTEM`'s position but read now.
    pub async fn wal_end(&self) -> Result<Lsn, Error> {
        let row = self
            .prompt(
                "the WAL end",
                self.client.query_one(
                    "SELECT (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() \
                            ELSE pg_current_wal_flush_lsn() END)::text",
                    &[],
                ),
            )
            .await?;
        parse_lsn(&row.get::<_, String>(0))
    }
}

async fn drive<S, T>(connection: tokio_postgres::Connection<S, T>, peer: String)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    if let Err(e) = connection.await {
        tracing::debug!(peer = %peer, error = %e, "admin connection ended");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names() {
        let t = TableName::parse("outbox").unwrap();
        assert_eq!(t.to_string(), "public.outbox");
        assert_eq!(t.quoted(), "\"public\".\"outbox\"");
        assert_eq!(
            TableName::parse("app.events").unwrap().schema,
            "app".to_owned()
        );
        assert!(TableName::parse("a.b.c").is_err());
        assert!(TableName::parse(".x").is_err());
    }
}

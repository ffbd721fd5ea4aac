//! The crate's one error type.
//!
//! Callers mostly need to know one thing: retry (reconnect with backoff) or stop and
//! tell the operator. [`Error::is_retryable`] answers that; the message says what
//! happened and, for the errors an operator must fix, what to do.

use std::fmt;

use outboxd_pgoutput::{DecodeError, Lsn};

use crate::admin::TableName;
use crate::config::TargetSessionAttrs;
use crate::hosts::Rejected;

/// Fields of a PostgreSQL ErrorResponse that we keep.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerError {
    pub severity: String,
    /// SQLSTATE, e.g. `55000` (object not in prerequisite state).
    pub code: String,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.severity, self.code, self.message)?;
        if let Some(d) = &self.detail {
            write!(f, " (detail: {d})")?;
        }
        if let Some(h) = &self.hint {
            write!(f, " (hint: {h})")?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Bad configuration; fix it and start again.
    #[error("configuration: {0}")]
    Config(String),

    /// The network failed (connect, read, write, peer closed).
    #[error("connection to {peer}: {source}")]
    Io {
        peer: String,
        #[source]
        source: std::io::Error,
    },

    /// The TLS handshake or certificate setup failed.
    #[error("TLS with {peer}: {reason}")]
    Tls { peer: String, reason: String },

    /// The server refused our credentials or asked for an unsupported method.
    #[error("authentication as '{user}' failed: {failure}")]
    Auth { user: String, failure: AuthFailure },

    /// The server answered with an ErrorResponse.
    #[error("server error during {during}: {error}")]
    Server {
        during: String,
        error: Box<ServerError>,
    },

    /// The server sent something the protocol does not allow here.
    #[error("protocol violation: {0}")]
    Protocol(String),

    /// A pgoutput message could not be decoded.
    #[error("at WAL position {lsn}: {source}")]
    Decode {
        lsn: Lsn,
        #[source]
        source: DecodeError,
    },

    /// The slot lost WAL it needed; it cannot be resumed.
    #[error(
        "replication slot '{slot}' is invalidated ({reason}): the changes it had not yet \
         delivered are gone from WAL, and the slot cannot be resumed"
    )]
    SlotInvalidated { slot: String, reason: String },

    /// Another process streams from the slot (only one walsender may use a slot).
    #[error("replication slot '{slot}' is in use by another process (pid {})", pid.map_or("unknown".to_owned(), |p| p.to_string()))]
    SlotInUse { slot: String, pid: Option<i32> },

    /// The slot does not exist (and the caller did not ask to create it).
    #[error("replication slot '{slot}' does not exist")]
    SlotMissing { slot: String },

    /// The slot exists but cannot serve us (other plugin, other database, physical).
    #[error("replication slot '{slot}' cannot be used: {kind}")]
    SlotMismatch { slot: String, kind: SlotMismatch },

    /// The slot's confirmed position moved past where we meant to resume.
    #[error(
        "replication slot '{slot}' resumed at {actual}, but {expected} was expected: \
         changes between them would be skipped. Something else confirmed this slot"
    )]
    SlotJumped {
        slot: String,
        expected: Lsn,
        actual: Lsn,
    },

    /// The server is not set up for what was asked; the message says what to change.
    #[error(transparent)]
    Preflight(#[from] Preflight),

    /// An error from the ordinary SQL connection. The server's message is part of
    /// this one (tokio-postgres's own says only "db error"), so it is not a source.
    #[error("SQL on {peer}: {}", describe_sql(error))]
    Sql {
        peer: String,
        error: tokio_postgres::Error,
    },

    /// No host of the connection string could be used; each is listed with why.
    #[error("{}", crate::hosts::describe_rejections(*wanted, rejected))]
    NoUsableHost {
        wanted: TargetSessionAttrs,
        rejected: Vec<Rejected>,
    },

    /// The stream was closed (by the server's CopyDone or by us).
    #[error("replication stream closed by the server")]
    StreamClosed,

    /// Nothing arrived on the replication connection for `receive_timeout`, not even
    /// the answer to a keepalive request: the connection is presumed dead.
    #[error(
        "replication connection to {peer}: nothing received for {silent:?}, not even an \
         answer to a keepalive request (receive_timeout is {timeout:?}). The network path \
         to PostgreSQL may be dropping packets (firewall, NAT or load balancer idle \
         timeouts, a failed-over address) or the server may be stuck; outboxd reconnects. \
         If this repeats on a healthy network, raise postgres.receive_timeout_secs"
    )]
    ReceiveTimeout {
        peer: String,
        silent: std::time::Duration,
        timeout: std::time::Duration,
    },
}

/// Why authentication failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthFailure {
    #[error("the server asks for a password and none was given")]
    PasswordMissing,
    /// The server refused the credentials (SQLSTATE class 28).
    #[error("{0}")]
    Rejected(Box<ServerError>),
    #[error(
        "the server asks for {0}, but only trust, password, md5 and scram-sha-256 are supported"
    )]
    UnsupportedMethod(String),
    #[error("the SCRAM exchange failed: {0}")]
    Scram(String),
}

/// Why an existing slot cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SlotMismatch {
    #[error("it is a {0} slot, and a logical pgoutput slot is needed")]
    NotLogical(String),
    #[error("it uses the output plugin '{0}', and pgoutput is needed")]
    Plugin(String),
    #[error("it belongs to database '{slot}', but the connection is to '{connected}'")]
    Database { slot: String, connected: String },
}

/// A server setting or catalog object that is not as logical replication of the
/// outbox needs. Each says what to run to fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Preflight {
    #[error(
        "wal_level is '{0}', logical decoding needs 'logical': set wal_level = logical in \
         postgresql.conf (or ALTER SYSTEM SET wal_level = logical) and restart PostgreSQL; \
         on managed services enable logical replication in the instance's parameters"
    )]
    WalLevel(String),
    #[error(
        "role '{0}' may not stream replication: run ALTER ROLE \"{0}\" WITH REPLICATION as a \
         superuser (on managed services grant the provider's replication role, e.g. \
         rds_replication)"
    )]
    NotReplicationRole(String),
    #[error("table {0} does not exist (or is not visible to this user)")]
    TableMissing(TableName),
    #[error("table {table} lacks column(s) {}; it has {}", missing.join(", "), present.join(", "))]
    ColumnsMissing {
        table: TableName,
        missing: Vec<String>,
        present: Vec<String>,
    },
    #[error("publication '{name}' does not exist: run `{ddl}` as the tables' owner")]
    PublicationMissing { name: String, ddl: String },
    #[error("could not create publication '{name}': {reason}; run `{ddl}` as the tables' owner")]
    PublicationNotCreated {
        name: String,
        reason: String,
        ddl: String,
    },
    #[error("publication '{name}' does not publish inserts: run ALTER PUBLICATION {quoted} SET (publish = 'insert')")]
    PublicationOmitsInserts { name: String, quoted: String },
    #[error(
        "publication '{name}' does not include {}: run ALTER PUBLICATION {quoted} ADD TABLE {}",
        list(tables),
        list(tables)
    )]
    PublicationOmitsTables {
        name: String,
        quoted: String,
        tables: Vec<TableName>,
    },
}

fn list(tables: &[TableName]) -> String {
    tables
        .iter()
        .map(TableName::quoted)
        .collect::<Vec<_>>()
        .join(", ")
}

impl Error {
    pub(crate) fn config(msg: impl Into<String>) -> Error {
        Error::Config(msg.into())
    }

    pub(crate) fn protocol(msg: impl Into<String>) -> Error {
        Error::Protocol(msg.into())
    }

    /// Whether reconnecting later may succeed without an operator's help.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Io { .. }
            | Error::StreamClosed
            | Error::SlotInUse { .. }
            | Error::ReceiveTimeout { .. }
            // Each host was passed over for a reason that may pass (a standby may be
            // promoted, a host come back).
            | Error::NoUsableHost { .. } => true,
            // Admin shutdown, too many connections, the server starting up or
            // shutting down, crash recovery: all pass.
            Error::Server { error, .. } => retryable_sqlstate(&error.code),
            Error::Sql { error, .. } => match error.code() {
                Some(code) => retryable_sqlstate(code.code()),
                None => true,
            },
            _ => false,
        }
    }

    /// The SQLSTATE of a server error, if this is one.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            Error::Server { error, .. } => Some(&error.code),
            Error::Sql { error, .. } => error.code().map(|c| c.code()),
            _ => None,
        }
    }
}

/// Admin shutdown, crash recovery, the server starting up or shutting down, too
/// many connections, connection failures: all pass.
fn retryable_sqlstate(code: &str) -> bool {
    matches!(code, "57P01" | "57P02" | "57P03" | "53300") || code.starts_with("08")
}

/// A tokio-postgres error with the server's message, detail and hint, or the
/// chain of causes for a client-side error.
pub(crate) fn describe_sql(error: &tokio_postgres::Error) -> String {
    if let Some(db) = error.as_db_error() {
        let mut text = format!("{}: {} ({})", db.severity(), db.message(), db.code().code());
        if let Some(detail) = db.detail() {
            text.push_str(&format!("; {detail}"));
        }
        if let Some(hint) = db.hint() {
            text.push_str(&format!("; hint: {hint}"));
        }
        return text;
    }
    let mut text = error.to_string();
    let mut cause = std::error::Error::source(error);
    while let Some(c) = cause {
        text.push_str(&format!(": {c}"));
        cause = c.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::retryable_sqlstate;

    #[test]
    fn a_server_that_is_restarting_or_recovering_is_worth_retrying() {
        // 57P03: "the database system is not yet accepting connections" (crash
        // recovery); the soak saw a relay exit on it.
        for code in ["57P01", "57P02", "57P03", "53300", "08006", "08001"] {
            assert!(retryable_sqlstate(code), "{code}");
        }
        for code in ["3D000", "28P01", "42P01", "55000", "42501"] {
            assert!(!retryable_sqlstate(code), "{code}");
        }
    }
}

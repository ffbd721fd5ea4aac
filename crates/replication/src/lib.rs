//! PostgreSQL logical replication for outboxd: the half that talks to Postgres.
//!
//! - [`ReplicationClient`] opens a walsender session (TLS, trust / password / md5 /
//!   SCRAM-SHA-256), creates slots and starts pgoutput streaming (protocol 1).
//! - [`LogicalStream`] decodes the CopyBoth stream and owns the standby-status rules:
//!   confirm only what the caller acknowledged, never regress, keep the connection
//!   alive on a timer, follow the server's WAL end when nothing is in flight.
//! - [`ReplicationReader`] runs a stream in a task of its own and hands messages to
//!   a consumer through a buffer bounded in bytes, keeping status updates flowing
//!   while the consumer applies backpressure.
//! - [`Admin`] does the ordinary SQL: preflight checks, publication, slot state.
//!
//! It knows nothing of Kafka: what "durable downstream" means is the caller's.

mod admin;
mod client;
mod config;
mod conn;
mod connstr;
mod error;
mod hosts;
mod protocol;
mod reader;
mod session_attrs;
mod source;
mod stream;
mod tls;
mod transport;

pub use admin::{Admin, SlotInfo, TableName};
pub use client::{ReplicationClient, StartOptions, SystemIdentity, TimelineSwitch};
pub use config::{ConnectOptions, Host, SslMode, TargetSessionAttrs};
pub use conn::{PgConnection, QueryResult, DEFAULT_MAX_MESSAGE_BYTES};
pub use error::{AuthFailure, Error, Preflight, ServerError, SlotMismatch};
pub use hosts::{Rejected, Rejection};
pub use outboxd_pgoutput as pgoutput;
pub use outboxd_pgoutput::Lsn;
pub use protocol::{ServerFrame, StatusUpdate};
pub use reader::{ReaderConfig, ReplicationEvent, ReplicationReader};
pub use session_attrs::SessionMismatch;
pub use source::{open_stream, SourceSession, SourceSpec, Started};
pub use stream::{
    LogicalStream, StreamEvent, StreamPositions, StreamSettings, DEFAULT_RECEIVE_TIMEOUT,
};

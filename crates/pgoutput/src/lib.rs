//! Pure decoder for Postgres' `pgoutput` logical replication protocol,
//! version 1.
//!
//! outboxd reads a logical replication slot with
//! `START_REPLICATION SLOT s LOGICAL X/Y (proto_version '1', publication_names '...', messages 'true')`.
//! Each XLogData (`w`) frame of that stream carries exactly one pgoutput
//! message; this crate turns such a payload into a [`LogicalMessage`]. It
//! does no I/O and knows nothing of sockets, frames or Kafka, so it can be
//! tested and fuzzed exhaustively on its own.
//!
//! # Why protocol version 1
//!
//! With version 1 (and no streaming) the server decodes a transaction only
//! when it has committed and sends it whole, in commit order: Begin, its
//! changes and messages, Commit. An outbox relay wants exactly that — it
//! never sees uncommitted work. Later versions add in-progress streaming
//! (v2), two-phase commit (v3) and parallel streaming (v4); their messages
//! are rejected as unknown tags.
//!
//! # Layers
//!
//! * [`decode`] — stateless, one message. It checks structure only and is
//!   strict, because a lenient decoder turns a protocol mismatch into
//!   silently wrong events: an empty or truncated input, an unknown tag,
//!   negative lengths or counts, strings without NUL terminator, names
//!   (namespaces, relations, columns, types, origins, message prefixes)
//!   that are not UTF-8, unknown tuple column kinds, tuple markers,
//!   replica identities or message flags, and bytes left over after the
//!   message are all errors.
//! * [`StreamDecoder`] — per connection. Keeps the relation cache (Relation
//!   messages announce a table's columns once per connection; changes refer
//!   to it by OID) and the open transaction, and additionally rejects: a
//!   Begin inside a transaction; a Commit outside one, or whose commit LSN
//!   differs from the Begin's final LSN, or whose end LSN precedes it;
//!   Origin, Insert, Update, Delete, Truncate and transactional Message
//!   outside a transaction; changes to a relation never described; tuples
//!   whose column count differs from the relation's.
//!
//! Decoding never panics and never allocates more than the input could
//! justify, whatever the bytes. Column values and message contents are
//! zero-copy [`Bytes`](bytes::Bytes) slices of the input.
//!
//! # Example
//!
//! ```
//! use bytes::Bytes;
//! use outboxd_pgoutput::{LogicalMessage, Lsn, StreamDecoder};
//!
//! // A Begin message: tag, final LSN, commit time, xid.
//! let mut begin = vec![b'B'];
//! begin.extend_from_slice(&0x16_B374_D848_u64.to_be_bytes());
//! begin.extend_from_slice(&0_i64.to_be_bytes());
//! begin.extend_from_slice(&742_u32.to_be_bytes());
//!
//! let mut decoder = StreamDecoder::new();
//! let LogicalMessage::Begin(b) = decoder.decode(Bytes::from(begin))? else {
//!     unreachable!()
//! };
//! assert_eq!(b.final_lsn.to_string(), "16/B374D848");
//! assert_eq!(decoder.in_transaction().map(|b| b.xid), Some(742));
//! # Ok::<(), outboxd_pgoutput::DecodeError>(())
//! ```
//!
//! The `encode` feature adds the `encode` module, the inverse of
//! [`decode`], for tests and simulated servers.

mod decode;
#[cfg(any(test, feature = "encode"))]
pub mod encode;
mod error;
mod lsn;
mod message;
mod stream;

pub use crate::decode::decode;
pub use crate::error::{DecodeError, DecodeErrorKind};
pub use crate::lsn::{
    pg_time_to_system_time, system_time_to_pg_time, Lsn, LsnParseError, PG_EPOCH_UNIX_SECS,
};
pub use crate::message::{
    tag, Begin, Column, ColumnValue, Commit, Delete, Insert, LogicalMessage, Message, OldTuple,
    Origin, Relation, ReplicaIdentity, SharedRelation, Truncate, TupleData, TypeMessage, Update,
};
pub use crate::stream::StreamDecoder;

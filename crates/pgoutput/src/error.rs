//! The decoder's single error type.
//!
//! Every failure, whether the bytes are malformed or a well-formed message
//! arrives where the protocol does not allow it, is a [`DecodeError`]. The
//! replication client cannot repair any of them: they mean a bug, a corrupted
//! stream or a server we do not understand, and the right reaction is to stop
//! (or reconnect) without confirming anything past the last good commit. So
//! the error's job is to say precisely what went wrong and where, for the log
//! line that an operator will read.

use std::fmt;

use crate::message::tag;
use crate::Lsn;

/// What went wrong; see [`DecodeError`] for where.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecodeErrorKind {
    /// The input ended inside a field: `needed` bytes were required at the
    /// error offset but only `available` remained.
    Truncated {
        /// Size of the field being read.
        needed: usize,
        /// Bytes left in the input at the error offset.
        available: usize,
    },
    /// The first byte is not a protocol version 1 message tag.
    UnknownTag(u8),
    /// A length or count field is negative.
    InvalidLength(i64),
    /// A name (namespace, relation, column, type, origin, prefix) is not
    /// valid UTF-8.
    InvalidUtf8,
    /// A string has no NUL terminator before the end of the input.
    UnterminatedString,
    /// The message was complete but `count` more bytes followed it.
    TrailingBytes {
        /// Number of unconsumed bytes.
        count: usize,
    },
    /// A tuple column kind other than `n`, `u`, `t`, `b`.
    UnknownTupleKind(u8),
    /// A tuple marker (`N`, `K`, `O`) was expected but another byte found.
    UnexpectedTupleMarker {
        /// The byte found.
        found: u8,
        /// The markers allowed at this point, for the message text.
        expected: &'static str,
    },
    /// Relation replica identity byte other than `d`, `n`, `f`, `i`.
    UnknownReplicaIdentity(u8),
    /// Message flags with bits we do not know.
    InvalidFlags(u8),
    /// A Begin arrived while the transaction begun by `open` was not yet
    /// committed.
    BeginInTransaction {
        /// Xid of the transaction still open.
        open_xid: u32,
        /// Final LSN of the transaction still open.
        open_final_lsn: Lsn,
    },
    /// A message that belongs inside a transaction (Commit, Origin, Insert,
    /// Update, Delete, Truncate, transactional Message) arrived outside one.
    NotInTransaction,
    /// A change refers to a table no Relation message has described on this
    /// connection.
    UnknownRelation {
        /// The relation OID referred to.
        oid: u32,
    },
    /// A tuple's column count differs from its relation's.
    ColumnCountMismatch {
        /// The relation OID.
        oid: u32,
        /// Columns in the cached Relation message.
        expected: usize,
        /// Columns in the tuple.
        found: usize,
    },
    /// A Commit's commit LSN differs from the final LSN of its Begin.
    CommitLsnMismatch {
        /// `final_lsn` of the open transaction's Begin.
        begin_final_lsn: Lsn,
        /// `commit_lsn` of the Commit.
        commit_lsn: Lsn,
    },
    /// A Commit's end LSN lies before its commit LSN.
    CommitEndBeforeCommitLsn {
        /// `commit_lsn` of the Commit.
        commit_lsn: Lsn,
        /// `end_lsn` of the Commit.
        end_lsn: Lsn,
    },
}

impl DecodeErrorKind {
    /// `true` for errors about message order or references between messages
    /// (raised only by [`StreamDecoder`](crate::StreamDecoder)), `false` for
    /// errors in the bytes of a single message.
    pub const fn is_protocol_violation(&self) -> bool {
        matches!(
            self,
            DecodeErrorKind::BeginInTransaction { .. }
                | DecodeErrorKind::NotInTransaction
                | DecodeErrorKind::UnknownRelation { .. }
                | DecodeErrorKind::ColumnCountMismatch { .. }
                | DecodeErrorKind::CommitLsnMismatch { .. }
                | DecodeErrorKind::CommitEndBeforeCommitLsn { .. }
        )
    }
}

/// A pgoutput message could not be decoded, or violated the protocol.
///
/// Carries the [`kind`](DecodeError::kind), the byte offset into the message
/// where the problem was found (0 for errors about the message as a whole)
/// and the message's tag byte (`None` for empty input). Display example:
/// `pgoutput Insert message: truncated at byte 17 (needed 4 more bytes, 1 left)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    kind: DecodeErrorKind,
    offset: usize,
    tag: Option<u8>,
}

impl DecodeError {
    pub(crate) const fn new(kind: DecodeErrorKind, offset: usize, tag: Option<u8>) -> Self {
        DecodeError { kind, offset, tag }
    }

    /// What went wrong.
    pub fn kind(&self) -> &DecodeErrorKind {
        &self.kind
    }

    /// Byte offset into the message (the tag is byte 0) where the problem
    /// was found.
    pub const fn offset(&self) -> usize {
        self.offset
    }

    /// The message's tag byte, `None` if the input was empty.
    pub const fn tag(&self) -> Option<u8> {
        self.tag
    }

    /// Name of the message kind ("Insert", ...), `None` if the tag is
    /// missing or unknown.
    pub const fn message_name(&self) -> Option<&'static str> {
        match self.tag {
            Some(t) => tag::name(t),
            None => None,
        }
    }
}

/// Printable form of a byte: `0x41 'A'` or `0x00`.
struct ByteRepr(u8);

impl fmt::Display for ByteRepr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_ascii_graphic() {
            write!(f, "0x{:02X} '{}'", self.0, char::from(self.0))
        } else {
            write!(f, "0x{:02X}", self.0)
        }
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.tag, self.message_name()) {
            (_, Some(name)) => write!(f, "pgoutput {name} message: ")?,
            (Some(t), None) => write!(f, "pgoutput message with tag {}: ", ByteRepr(t))?,
            (None, None) => f.write_str("pgoutput message: ")?,
        }
        let at = self.offset;
        match &self.kind {
            DecodeErrorKind::Truncated { needed, available } => {
                let unit = if *needed == 1 { "byte" } else { "bytes" };
                if *available == 0 {
                    write!(f, "truncated at byte {at} (needed {needed} more {unit})")
                } else {
                    write!(
                        f,
                        "truncated at byte {at} (needed {needed} more {unit}, {available} left)"
                    )
                }
            }
            DecodeErrorKind::UnknownTag(t) => write!(
                f,
                "unknown message tag {} at byte {at} (only protocol version 1 messages are supported)",
                ByteRepr(*t)
            ),
            DecodeErrorKind::InvalidLength(len) => {
                write!(f, "invalid (negative) length or count {len} at byte {at}")
            }
            DecodeErrorKind::InvalidUtf8 => {
                write!(f, "string starting at byte {at} is not valid UTF-8")
            }
            DecodeErrorKind::UnterminatedString => {
                write!(f, "string starting at byte {at} has no NUL terminator")
            }
            DecodeErrorKind::TrailingBytes { count } => write!(
                f,
                "{count} unexpected trailing byte{} at byte {at} after the end of the message",
                if *count == 1 { "" } else { "s" }
            ),
            DecodeErrorKind::UnknownTupleKind(k) => write!(
                f,
                "unknown tuple column kind {} at byte {at} (expected 'n', 'u', 't' or 'b')",
                ByteRepr(*k)
            ),
            DecodeErrorKind::UnexpectedTupleMarker { found, expected } => write!(
                f,
                "unexpected tuple marker {} at byte {at} (expected {expected})",
                ByteRepr(*found)
            ),
            DecodeErrorKind::UnknownReplicaIdentity(b) => write!(
                f,
                "unknown replica identity {} at byte {at} (expected 'd', 'n', 'f' or 'i')",
                ByteRepr(*b)
            ),
            DecodeErrorKind::InvalidFlags(b) => {
                write!(f, "unknown flag bits 0x{b:02X} at byte {at}")
            }
            DecodeErrorKind::BeginInTransaction {
                open_xid,
                open_final_lsn,
            } => write!(
                f,
                "Begin received while transaction xid {open_xid} (final LSN {open_final_lsn}) is still open"
            ),
            DecodeErrorKind::NotInTransaction => {
                f.write_str("received outside a transaction (no Begin before it)")
            }
            DecodeErrorKind::UnknownRelation { oid } => write!(
                f,
                "refers to relation OID {oid} at byte {at}, which no Relation message has described on this connection"
            ),
            DecodeErrorKind::ColumnCountMismatch {
                oid,
                expected,
                found,
            } => write!(
                f,
                "tuple has {found} columns but relation OID {oid} has {expected}"
            ),
            DecodeErrorKind::CommitLsnMismatch {
                begin_final_lsn,
                commit_lsn,
            } => write!(
                f,
                "commit LSN {commit_lsn} does not match final LSN {begin_final_lsn} announced by Begin"
            ),
            DecodeErrorKind::CommitEndBeforeCommitLsn {
                commit_lsn,
                end_lsn,
            } => write!(f, "end LSN {end_lsn} precedes commit LSN {commit_lsn}"),
        }
    }
}

impl std::error::Error for DecodeError {}

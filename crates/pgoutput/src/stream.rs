//! Stateful decoding of one replication connection's message stream.
//!
//! pgoutput messages are not self-contained: a change names its table only by
//! OID, relying on a Relation message sent earlier on the same connection,
//! and changes are only meaningful between a Begin and its Commit. The
//! [`StreamDecoder`] keeps that context and rejects a stream that breaks
//! it. Catching such a break here, at the first bad message, is what lets the
//! relay stop before it publishes an event under the wrong table or
//! transaction, or confirms an LSN it has not really processed.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use bytes::Bytes;

use crate::decode::decode;
use crate::error::{DecodeError, DecodeErrorKind};
use crate::message::{Begin, LogicalMessage, Relation, TupleData};

/// Decoder for the sequence of pgoutput messages on one connection.
///
/// In addition to what [`decode`](crate::decode) checks, it enforces:
///
/// * Begin only outside a transaction; Commit only inside one, with
///   `commit_lsn` equal to the Begin's `final_lsn` and `end_lsn` not before
///   it.
/// * Origin, Insert, Update, Delete, Truncate and transactional Messages
///   only inside a transaction. Non-transactional Messages, Relation and
///   Type messages are accepted anywhere.
/// * Insert, Update, Delete and Truncate refer to a relation described by an
///   earlier Relation message, and every tuple has as many columns as that
///   relation.
///
/// A message that fails any check is returned as an error and leaves the
/// state as it was. Such an error means the stream can no longer be trusted:
/// drop the connection and resume from the last confirmed LSN, calling
/// [`reset_transaction`](StreamDecoder::reset_transaction) (or using a new
/// decoder) before feeding the new connection's messages.
#[derive(Debug, Default)]
pub struct StreamDecoder {
    relations: HashMap<u32, Arc<Relation>, BuildHasherDefault<OidHasher>>,
    transaction: Option<Begin>,
}

impl StreamDecoder {
    /// A decoder with an empty relation cache, outside any transaction.
    pub fn new() -> Self {
        Self::default()
    }

    /// Decodes one message (the payload of an XLogData frame), validates it
    /// against the connection state and updates that state.
    ///
    /// A Relation message replaces any cached relation with the same OID;
    /// `Arc`s handed out earlier keep describing the old schema, which is
    /// what tuples decoded before the change need.
    ///
    /// # Errors
    ///
    /// Every error of [`decode`](crate::decode), plus the protocol
    /// violations listed in the type's documentation.
    pub fn decode(&mut self, data: Bytes) -> Result<LogicalMessage, DecodeError> {
        let msg = decode(data)?;
        self.apply(&msg)?;
        Ok(msg)
    }

    /// The cached Relation message for `oid`, if one arrived on this
    /// connection.
    pub fn relation(&self, oid: u32) -> Option<&Arc<Relation>> {
        self.relations.get(&oid)
    }

    /// All cached relations, in no particular order.
    pub fn relations(&self) -> impl Iterator<Item = &Arc<Relation>> + '_ {
        self.relations.values()
    }

    /// The Begin of the transaction being received, if any.
    pub fn in_transaction(&self) -> Option<&Begin> {
        self.transaction.as_ref()
    }

    /// Forgets a half-received transaction. Call after a reconnect: the
    /// server re-sends that transaction whole from its Begin. The relation
    /// cache is kept; the server re-sends Relation messages on a new
    /// connection anyway, and they replace the cached entries.
    pub fn reset_transaction(&mut self) {
        self.transaction = None;
    }

    /// Forgets everything: the open transaction and all cached relations.
    pub fn reset(&mut self) {
        self.transaction = None;
        self.relations.clear();
    }

    fn apply(&mut self, msg: &LogicalMessage) -> Result<(), DecodeError> {
        let tag = Some(msg.tag());
        let fail = |kind, offset| Err(DecodeError::new(kind, offset, tag));
        match msg {
            LogicalMessage::Begin(begin) => {
                if let Some(open) = &self.transaction {
                    return fail(
                        DecodeErrorKind::BeginInTransaction {
                            open_xid: open.xid,
                            open_final_lsn: open.final_lsn,
                        },
                        0,
                    );
                }
                self.transaction = Some(*begin);
            }
            LogicalMessage::Commit(commit) => {
                let Some(open) = &self.transaction else {
                    return fail(DecodeErrorKind::NotInTransaction, 0);
                };
                if commit.commit_lsn != open.final_lsn {
                    // Offset of the commit LSN field: tag + flags.
                    return fail(
                        DecodeErrorKind::CommitLsnMismatch {
                            begin_final_lsn: open.final_lsn,
                            commit_lsn: commit.commit_lsn,
                        },
                        2,
                    );
                }
                if commit.end_lsn < commit.commit_lsn {
                    return fail(
                        DecodeErrorKind::CommitEndBeforeCommitLsn {
                            commit_lsn: commit.commit_lsn,
                            end_lsn: commit.end_lsn,
                        },
                        10,
                    );
                }
                self.transaction = None;
            }
            LogicalMessage::Relation(relation) => {
                // Relation messages are rare (once per table and connection),
                // so the clone costs nothing measurable.
                self.relations
                    .insert(relation.oid, Arc::new(relation.clone()));
            }
            LogicalMessage::Type(_) => {}
            LogicalMessage::Origin(_) => self.require_transaction(tag)?,
            LogicalMessage::Message(m) => {
                if m.transactional {
                    self.require_transaction(tag)?;
                }
            }
            LogicalMessage::Insert(insert) => {
                self.require_transaction(tag)?;
                let rel = self.known_relation(insert.relation_oid, 1, tag)?;
                check_columns(rel, &insert.new, tag)?;
            }
            LogicalMessage::Update(update) => {
                self.require_transaction(tag)?;
                let rel = self.known_relation(update.relation_oid, 1, tag)?;
                if let Some(old) = &update.old {
                    check_columns(rel, old.values(), tag)?;
                }
                check_columns(rel, &update.new, tag)?;
            }
            LogicalMessage::Delete(delete) => {
                self.require_transaction(tag)?;
                let rel = self.known_relation(delete.relation_oid, 1, tag)?;
                check_columns(rel, delete.old.values(), tag)?;
            }
            LogicalMessage::Truncate(truncate) => {
                self.require_transaction(tag)?;
                // OIDs start after tag, count and options: byte 6, 4 each.
                let mut offset: usize = 6;
                for &oid in &truncate.relation_oids {
                    self.known_relation(oid, offset, tag)?;
                    offset = offset.saturating_add(4);
                }
            }
        }
        Ok(())
    }

    fn require_transaction(&self, tag: Option<u8>) -> Result<(), DecodeError> {
        match self.transaction {
            Some(_) => Ok(()),
            None => Err(DecodeError::new(DecodeErrorKind::NotInTransaction, 0, tag)),
        }
    }

    fn known_relation(
        &self,
        oid: u32,
        offset: usize,
        tag: Option<u8>,
    ) -> Result<&Arc<Relation>, DecodeError> {
        self.relations
            .get(&oid)
            .ok_or_else(|| DecodeError::new(DecodeErrorKind::UnknownRelation { oid }, offset, tag))
    }
}

fn check_columns(rel: &Relation, tuple: &TupleData, tag: Option<u8>) -> Result<(), DecodeError> {
    if tuple.len() == rel.columns.len() {
        Ok(())
    } else {
        Err(DecodeError::new(
            DecodeErrorKind::ColumnCountMismatch {
                oid: rel.oid,
                expected: rel.columns.len(),
                found: tuple.len(),
            },
            0,
            tag,
        ))
    }
}

/// Hasher for the relation cache, keyed by OID.
///
/// The cache is looked up once per change, on the hot path; OIDs come from
/// our own database server, not from an adversary, so HashDoS resistance
/// (std's SipHash) buys nothing and a multiplicative hash is several times
/// cheaper.
#[derive(Debug, Default, Clone, Copy)]
struct OidHasher(u64);

impl Hasher for OidHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only reached for non-u32 keys, which this map does not have; kept
        // correct anyway.
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u32(&mut self, n: u32) {
        // Fibonacci hashing: spreads consecutive OIDs over the high bits
        // that hashbrown uses.
        self.0 = (self.0 ^ u64::from(n)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

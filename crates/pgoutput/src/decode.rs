//! Stateless decoding of one pgoutput message.
//!
//! The input is untrusted in the sense that matters for a long-running
//! relay: a bug, a proxy or a protocol change must produce an error, never a
//! panic, an over-allocation or a silently misread value. Hence every read is
//! bounds-checked, every length is validated before use, and capacities taken
//! from the wire are capped by what the remaining input could possibly hold.

use bytes::Bytes;

use crate::error::{DecodeError, DecodeErrorKind};
use crate::message::{
    tag, Begin, Column, ColumnValue, Commit, Delete, Insert, LogicalMessage, Message, OldTuple,
    Origin, Relation, ReplicaIdentity, Truncate, TupleData, TypeMessage, Update,
};
use crate::Lsn;

/// Smallest encoding of a Relation column: flags, empty name + NUL, type
/// OID, type modifier. Used to cap preallocation.
const MIN_COLUMN_LEN: usize = 1 + 1 + 4 + 4;

/// Decodes exactly one pgoutput (protocol version 1) message: the payload of
/// one XLogData (`w`) frame.
///
/// Stateless: it checks the message's own structure only (see the crate docs
/// for the list). Use [`StreamDecoder`](crate::StreamDecoder) to also check
/// message order and references to relations.
///
/// Column values, and the content of [`Message`]s, are slices of `data`
/// (reference-counted, no copy). Names are copied into `String`s.
///
/// # Errors
///
/// Returns a [`DecodeError`] for empty input, an unknown tag, a field cut off
/// by the end of input, a negative length or count, a string without NUL
/// terminator or with invalid UTF-8, an unknown tuple column kind, tuple
/// marker, replica identity or message flag, or bytes left over after the
/// message.
pub fn decode(data: Bytes) -> Result<LogicalMessage, DecodeError> {
    let mut r = Reader::new(data);
    let t = r.u8()?;
    r.tag = Some(t);
    let msg = match t {
        tag::BEGIN => LogicalMessage::Begin(Begin {
            final_lsn: r.lsn()?,
            commit_time: r.i64()?,
            xid: r.u32()?,
        }),
        tag::COMMIT => LogicalMessage::Commit(Commit {
            flags: r.u8()?,
            commit_lsn: r.lsn()?,
            end_lsn: r.lsn()?,
            commit_time: r.i64()?,
        }),
        tag::ORIGIN => LogicalMessage::Origin(Origin {
            commit_lsn: r.lsn()?,
            name: r.cstr()?,
        }),
        tag::RELATION => LogicalMessage::Relation(r.relation()?),
        tag::TYPE => LogicalMessage::Type(TypeMessage {
            oid: r.u32()?,
            namespace: r.cstr()?,
            name: r.cstr()?,
        }),
        tag::INSERT => {
            let relation_oid = r.u32()?;
            r.expect_marker(b'N', "'N'")?;
            LogicalMessage::Insert(Insert {
                relation_oid,
                new: r.tuple()?,
            })
        }
        tag::UPDATE => {
            let relation_oid = r.u32()?;
            let marker_at = r.pos;
            let old = match r.u8()? {
                b'K' => Some(OldTuple::Key(r.tuple()?)),
                b'O' => Some(OldTuple::Full(r.tuple()?)),
                b'N' => None,
                found => {
                    return Err(r.error_at(
                        marker_at,
                        DecodeErrorKind::UnexpectedTupleMarker {
                            found,
                            expected: "'K', 'O' or 'N'",
                        },
                    ))
                }
            };
            if old.is_some() {
                r.expect_marker(b'N', "'N'")?;
            }
            LogicalMessage::Update(Update {
                relation_oid,
                old,
                new: r.tuple()?,
            })
        }
        tag::DELETE => {
            let relation_oid = r.u32()?;
            let marker_at = r.pos;
            let old = match r.u8()? {
                b'K' => OldTuple::Key(r.tuple()?),
                b'O' => OldTuple::Full(r.tuple()?),
                found => {
                    return Err(r.error_at(
                        marker_at,
                        DecodeErrorKind::UnexpectedTupleMarker {
                            found,
                            expected: "'K' or 'O'",
                        },
                    ))
                }
            };
            LogicalMessage::Delete(Delete { relation_oid, old })
        }
        tag::TRUNCATE => {
            let count = r.count_i32()?;
            let options = r.u8()?;
            let mut relation_oids = Vec::with_capacity(count.min(r.remaining() / 4));
            for _ in 0..count {
                relation_oids.push(r.u32()?);
            }
            LogicalMessage::Truncate(Truncate {
                options,
                relation_oids,
            })
        }
        tag::MESSAGE => {
            let flags_at = r.pos;
            let transactional = match r.u8()? {
                0 => false,
                Message::FLAG_TRANSACTIONAL => true,
                other => return Err(r.error_at(flags_at, DecodeErrorKind::InvalidFlags(other))),
            };
            LogicalMessage::Message(Message {
                transactional,
                lsn: r.lsn()?,
                prefix: r.cstr()?,
                content: r.len_prefixed()?,
            })
        }
        other => return Err(r.error_at(0, DecodeErrorKind::UnknownTag(other))),
    };
    r.finish()?;
    Ok(msg)
}

/// Bounds-checked big-endian cursor over one message.
struct Reader {
    buf: Bytes,
    pos: usize,
    tag: Option<u8>,
}

impl Reader {
    fn new(buf: Bytes) -> Self {
        Reader {
            buf,
            pos: 0,
            tag: None,
        }
    }

    fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    fn error_at(&self, offset: usize, kind: DecodeErrorKind) -> DecodeError {
        DecodeError::new(kind, offset, self.tag)
    }

    fn truncated(&self, needed: usize) -> DecodeError {
        self.error_at(
            self.pos,
            DecodeErrorKind::Truncated {
                needed,
                available: self.remaining(),
            },
        )
    }

    /// Consumes exactly `N` bytes.
    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let start = self.pos;
        let read = start.checked_add(N).and_then(|end| {
            let bytes = self.buf.get(start..end)?;
            let arr = <[u8; N]>::try_from(bytes).ok()?;
            Some((end, arr))
        });
        match read {
            Some((end, arr)) => {
                self.pos = end;
                Ok(arr)
            }
            None => Err(self.truncated(N)),
        }
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        let [b] = self.array::<1>()?;
        Ok(b)
    }

    fn i16(&mut self) -> Result<i16, DecodeError> {
        self.array().map(i16::from_be_bytes)
    }

    fn i32(&mut self) -> Result<i32, DecodeError> {
        self.array().map(i32::from_be_bytes)
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        self.array().map(u32::from_be_bytes)
    }

    fn i64(&mut self) -> Result<i64, DecodeError> {
        self.array().map(i64::from_be_bytes)
    }

    fn lsn(&mut self) -> Result<Lsn, DecodeError> {
        self.array().map(|b| Lsn(u64::from_be_bytes(b)))
    }

    /// An Int16 count; negative values are an error, not "zero".
    fn count_i16(&mut self) -> Result<usize, DecodeError> {
        let at = self.pos;
        let n = self.i16()?;
        usize::try_from(n).map_err(|_| self.error_at(at, DecodeErrorKind::InvalidLength(n.into())))
    }

    /// An Int32 count or length; negative values are an error.
    fn count_i32(&mut self) -> Result<usize, DecodeError> {
        let at = self.pos;
        let n = self.i32()?;
        usize::try_from(n).map_err(|_| self.error_at(at, DecodeErrorKind::InvalidLength(n.into())))
    }

    /// `len` bytes as a zero-copy slice of the input.
    fn bytes(&mut self, len: usize) -> Result<Bytes, DecodeError> {
        let start = self.pos;
        match start.checked_add(len) {
            Some(end) if end <= self.buf.len() => {
                self.pos = end;
                // In bounds: start <= end <= len was just checked.
                Ok(self.buf.slice(start..end))
            }
            _ => Err(self.truncated(len)),
        }
    }

    /// Int32 length followed by that many bytes.
    fn len_prefixed(&mut self) -> Result<Bytes, DecodeError> {
        let len = self.count_i32()?;
        self.bytes(len)
    }

    /// A NUL-terminated UTF-8 string.
    fn cstr(&mut self) -> Result<String, DecodeError> {
        let start = self.pos;
        let rest = self.buf.get(start..).unwrap_or_default();
        let Some(nul) = rest.iter().position(|&b| b == 0) else {
            return Err(self.error_at(start, DecodeErrorKind::UnterminatedString));
        };
        let text = rest
            .get(..nul)
            .and_then(|raw| std::str::from_utf8(raw).ok())
            .ok_or_else(|| self.error_at(start, DecodeErrorKind::InvalidUtf8))?;
        let s = text.to_owned();
        // nul < rest.len() so this stays within the buffer.
        self.pos = start.saturating_add(nul).saturating_add(1);
        Ok(s)
    }

    fn expect_marker(&mut self, want: u8, expected: &'static str) -> Result<(), DecodeError> {
        let at = self.pos;
        match self.u8()? {
            b if b == want => Ok(()),
            found => Err(self.error_at(
                at,
                DecodeErrorKind::UnexpectedTupleMarker { found, expected },
            )),
        }
    }

    /// TupleData: Int16 column count, then per column a kind byte and, for
    /// `t`/`b`, an Int32 length and the value.
    fn tuple(&mut self) -> Result<TupleData, DecodeError> {
        let ncols = self.count_i16()?;
        // Each column takes at least one byte: never trust the count alone.
        let mut values = Vec::with_capacity(ncols.min(self.remaining()));
        for _ in 0..ncols {
            let at = self.pos;
            let value = match self.u8()? {
                b'n' => ColumnValue::Null,
                b'u' => ColumnValue::UnchangedToast,
                b't' => ColumnValue::Text(self.len_prefixed()?),
                b'b' => ColumnValue::Binary(self.len_prefixed()?),
                other => return Err(self.error_at(at, DecodeErrorKind::UnknownTupleKind(other))),
            };
            values.push(value);
        }
        Ok(values)
    }

    fn relation(&mut self) -> Result<Relation, DecodeError> {
        let oid = self.u32()?;
        let namespace = self.cstr()?;
        let name = self.cstr()?;
        let ri_at = self.pos;
        let ri = self.u8()?;
        let replica_identity = ReplicaIdentity::from_byte(ri)
            .ok_or_else(|| self.error_at(ri_at, DecodeErrorKind::UnknownReplicaIdentity(ri)))?;
        let ncols = self.count_i16()?;
        let mut columns = Vec::with_capacity(ncols.min(self.remaining() / MIN_COLUMN_LEN));
        for _ in 0..ncols {
            columns.push(Column {
                flags: self.u8()?,
                name: self.cstr()?,
                type_oid: self.u32()?,
                type_modifier: self.i32()?,
            });
        }
        Ok(Relation {
            oid,
            namespace,
            name,
            replica_identity,
            columns,
        })
    }

    fn finish(self) -> Result<(), DecodeError> {
        match self.remaining() {
            0 => Ok(()),
            count => Err(self.error_at(self.pos, DecodeErrorKind::TrailingBytes { count })),
        }
    }
}

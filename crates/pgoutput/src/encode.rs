//! Serializer for [`LogicalMessage`] (feature `encode`).
//!
//! The relay itself never writes pgoutput; this exists so tests can produce
//! the exact bytes a walsender would send — for round-trip properties, for
//! the fuzz target's consistency check and for integration tests that play a
//! server, well-behaved or not (encode a valid message, then corrupt or
//! reorder it).
//!
//! The encoding is canonical: for every input that
//! [`decode`](crate::decode) accepts, `encode(&decode(x)?)? == x`.

use bytes::{BufMut, Bytes, BytesMut};

use crate::message::{ColumnValue, LogicalMessage, Message, OldTuple, TupleData};
use crate::Lsn;

/// A message that cannot be represented on the wire.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// A name contains a NUL byte, which would end the string early.
    #[error("{field} contains a NUL byte")]
    NulInString {
        /// Which string ("relation name", "column name", ...).
        field: &'static str,
    },
    /// More items than the Int16/Int32 count field can express.
    #[error("{field}: {count} items do not fit the count field")]
    CountTooLarge {
        /// Which count.
        field: &'static str,
        /// The count.
        count: usize,
    },
    /// A value or message content longer than `i32::MAX` bytes.
    #[error("value of {len} bytes exceeds the Int32 length field")]
    ValueTooLong {
        /// The length.
        len: usize,
    },
}

/// Serializes one message into a new buffer.
///
/// # Errors
///
/// See [`EncodeError`].
pub fn encode(msg: &LogicalMessage) -> Result<Bytes, EncodeError> {
    let mut out = BytesMut::new();
    encode_into(msg, &mut out)?;
    Ok(out.freeze())
}

/// Appends one serialized message to `out`. On error `out` is left as it
/// was.
///
/// # Errors
///
/// See [`EncodeError`].
pub fn encode_into(msg: &LogicalMessage, out: &mut BytesMut) -> Result<(), EncodeError> {
    let start = out.len();
    let result = write_message(msg, out);
    if result.is_err() {
        out.truncate(start);
    }
    result
}

fn write_message(msg: &LogicalMessage, out: &mut BytesMut) -> Result<(), EncodeError> {
    out.put_u8(msg.tag());
    match msg {
        LogicalMessage::Begin(b) => {
            put_lsn(out, b.final_lsn);
            out.put_i64(b.commit_time);
            out.put_u32(b.xid);
        }
        LogicalMessage::Commit(c) => {
            out.put_u8(c.flags);
            put_lsn(out, c.commit_lsn);
            put_lsn(out, c.end_lsn);
            out.put_i64(c.commit_time);
        }
        LogicalMessage::Origin(o) => {
            put_lsn(out, o.commit_lsn);
            put_cstr(out, &o.name, "origin name")?;
        }
        LogicalMessage::Relation(r) => {
            out.put_u32(r.oid);
            put_cstr(out, &r.namespace, "relation namespace")?;
            put_cstr(out, &r.name, "relation name")?;
            out.put_u8(r.replica_identity.as_byte());
            put_count_i16(out, r.columns.len(), "relation columns")?;
            for c in &r.columns {
                out.put_u8(c.flags);
                put_cstr(out, &c.name, "column name")?;
                out.put_u32(c.type_oid);
                out.put_i32(c.type_modifier);
            }
        }
        LogicalMessage::Type(t) => {
            out.put_u32(t.oid);
            put_cstr(out, &t.namespace, "type namespace")?;
            put_cstr(out, &t.name, "type name")?;
        }
        LogicalMessage::Insert(i) => {
            out.put_u32(i.relation_oid);
            out.put_u8(b'N');
            put_tuple(out, &i.new)?;
        }
        LogicalMessage::Update(u) => {
            out.put_u32(u.relation_oid);
            if let Some(old) = &u.old {
                put_old(out, old)?;
            }
            out.put_u8(b'N');
            put_tuple(out, &u.new)?;
        }
        LogicalMessage::Delete(d) => {
            out.put_u32(d.relation_oid);
            put_old(out, &d.old)?;
        }
        LogicalMessage::Truncate(t) => {
            let count =
                i32::try_from(t.relation_oids.len()).map_err(|_| EncodeError::CountTooLarge {
                    field: "truncated relations",
                    count: t.relation_oids.len(),
                })?;
            out.put_i32(count);
            out.put_u8(t.options);
            for &oid in &t.relation_oids {
                out.put_u32(oid);
            }
        }
        LogicalMessage::Message(m) => {
            out.put_u8(if m.transactional {
                Message::FLAG_TRANSACTIONAL
            } else {
                0
            });
            put_lsn(out, m.lsn);
            put_cstr(out, &m.prefix, "message prefix")?;
            put_len_prefixed(out, &m.content)?;
        }
    }
    Ok(())
}

fn put_lsn(out: &mut BytesMut, lsn: Lsn) {
    out.put_u64(lsn.0);
}

fn put_cstr(out: &mut BytesMut, s: &str, field: &'static str) -> Result<(), EncodeError> {
    if s.as_bytes().contains(&0) {
        return Err(EncodeError::NulInString { field });
    }
    out.put_slice(s.as_bytes());
    out.put_u8(0);
    Ok(())
}

fn put_count_i16(out: &mut BytesMut, n: usize, field: &'static str) -> Result<(), EncodeError> {
    let n16 = i16::try_from(n).map_err(|_| EncodeError::CountTooLarge { field, count: n })?;
    out.put_i16(n16);
    Ok(())
}

fn put_len_prefixed(out: &mut BytesMut, value: &[u8]) -> Result<(), EncodeError> {
    let len =
        i32::try_from(value.len()).map_err(|_| EncodeError::ValueTooLong { len: value.len() })?;
    out.put_i32(len);
    out.put_slice(value);
    Ok(())
}

fn put_old(out: &mut BytesMut, old: &OldTuple) -> Result<(), EncodeError> {
    let (marker, tuple) = match old {
        OldTuple::Key(t) => (b'K', t),
        OldTuple::Full(t) => (b'O', t),
    };
    out.put_u8(marker);
    put_tuple(out, tuple)
}

fn put_tuple(out: &mut BytesMut, tuple: &TupleData) -> Result<(), EncodeError> {
    put_count_i16(out, tuple.len(), "tuple columns")?;
    for value in tuple {
        match value {
            ColumnValue::Null => out.put_u8(b'n'),
            ColumnValue::UnchangedToast => out.put_u8(b'u'),
            ColumnValue::Text(b) => {
                out.put_u8(b't');
                put_len_prefixed(out, b)?;
            }
            ColumnValue::Binary(b) => {
                out.put_u8(b'b');
                put_len_prefixed(out, b)?;
            }
        }
    }
    Ok(())
}

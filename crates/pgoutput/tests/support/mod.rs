//! Hand-rolled wire builder for tests.
//!
//! Deliberately independent of the crate's encoder: tests built with it check
//! the decoder against the byte layouts of the protocol documentation, not
//! against our own reading of them twice.

#![allow(dead_code)]

use bytes::Bytes;

/// Appends big-endian protocol fields to a byte vector.
#[derive(Debug, Default, Clone)]
pub struct Wire(pub Vec<u8>);

impl Wire {
    pub fn tag(t: u8) -> Self {
        Wire(vec![t])
    }
    pub fn byte(mut self, v: u8) -> Self {
        self.0.push(v);
        self
    }
    pub fn int16(mut self, v: i16) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub fn int32(mut self, v: i32) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub fn uint32(mut self, v: u32) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub fn int64(mut self, v: i64) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub fn uint64(mut self, v: u64) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    /// A NUL-terminated string.
    pub fn string(mut self, s: &str) -> Self {
        self.0.extend_from_slice(s.as_bytes());
        self.0.push(0);
        self
    }
    pub fn raw(mut self, b: &[u8]) -> Self {
        self.0.extend_from_slice(b);
        self
    }
    /// A `t` tuple column: kind, Int32 length, bytes.
    pub fn text_col(self, s: &str) -> Self {
        let len = i32::try_from(s.len()).expect("test value fits Int32");
        self.byte(b't').int32(len).raw(s.as_bytes())
    }
    pub fn bytes(self) -> Bytes {
        Bytes::from(self.0)
    }
}

pub fn begin(final_lsn: u64, xid: u32) -> Bytes {
    Wire::tag(b'B')
        .uint64(final_lsn)
        .int64(0)
        .uint32(xid)
        .bytes()
}

pub fn commit(commit_lsn: u64, end_lsn: u64) -> Bytes {
    Wire::tag(b'C')
        .byte(0)
        .uint64(commit_lsn)
        .uint64(end_lsn)
        .int64(0)
        .bytes()
}

/// Relation `public.<name>` with text columns named `cols`, first one key.
pub fn relation(oid: u32, name: &str, cols: &[&str]) -> Bytes {
    let mut w = Wire::tag(b'R')
        .uint32(oid)
        .string("public")
        .string(name)
        .byte(b'd')
        .int16(i16::try_from(cols.len()).expect("test column count fits Int16"));
    for (i, c) in cols.iter().enumerate() {
        w = w.byte(u8::from(i == 0)).string(c).uint32(25).int32(-1);
    }
    w.bytes()
}

/// Insert of text values.
pub fn insert(oid: u32, values: &[&str]) -> Bytes {
    let mut w = Wire::tag(b'I')
        .uint32(oid)
        .byte(b'N')
        .int16(i16::try_from(values.len()).expect("test column count fits Int16"));
    for v in values {
        w = w.text_col(v);
    }
    w.bytes()
}

pub fn message(transactional: bool, lsn: u64, prefix: &str, content: &[u8]) -> Bytes {
    Wire::tag(b'M')
        .byte(u8::from(transactional))
        .uint64(lsn)
        .string(prefix)
        .int32(i32::try_from(content.len()).expect("test content fits Int32"))
        .raw(content)
        .bytes()
}

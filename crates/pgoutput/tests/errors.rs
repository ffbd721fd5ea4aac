//! Malformed input: every case must be an error with the right kind, offset
//! and a message that says what and where.

mod support;

use bytes::Bytes;
use outboxd_pgoutput::{decode, DecodeError, DecodeErrorKind};
use support::Wire;

fn err(data: Bytes) -> DecodeError {
    match decode(data) {
        Ok(msg) => panic!("decoded unexpectedly: {msg:?}"),
        Err(e) => e,
    }
}

#[test]
fn empty_input() {
    let e = err(Bytes::new());
    assert_eq!(
        *e.kind(),
        DecodeErrorKind::Truncated {
            needed: 1,
            available: 0
        }
    );
    assert_eq!(e.offset(), 0);
    assert_eq!(e.tag(), None);
    assert_eq!(
        e.to_string(),
        "pgoutput message: truncated at byte 0 (needed 1 more byte)"
    );
}

#[test]
fn unknown_tags_including_later_protocol_versions() {
    // S/E/c/A: streaming (v2); b/P/K/r/p: two-phase (v3); Q: sequence (PG19)
    for t in [
        b'S', b'E', b'c', b'A', b'b', b'P', b'K', b'r', b'p', b'Q', 0, 0xFF, b'w',
    ] {
        let e = err(Bytes::from(vec![t, 0, 0, 0, 0]));
        assert_eq!(*e.kind(), DecodeErrorKind::UnknownTag(t));
        assert_eq!(e.offset(), 0);
        assert_eq!(e.tag(), Some(t));
        assert_eq!(e.message_name(), None);
    }
    assert_eq!(
        err(Bytes::from_static(b"S")).to_string(),
        "pgoutput message with tag 0x53 'S': unknown message tag 0x53 'S' at byte 0 \
         (only protocol version 1 messages are supported)"
    );
}

#[test]
fn truncated_begin_reports_offset_and_missing_bytes() {
    let full = support::begin(0x10, 1);
    assert_eq!(full.len(), 21);
    for cut in 0..full.len() {
        let e = err(full.slice(..cut));
        assert!(
            matches!(e.kind(), DecodeErrorKind::Truncated { .. }),
            "cut {cut}: {e}"
        );
    }
    let e = err(full.slice(..19));
    assert_eq!(e.offset(), 17, "the xid field starts at byte 17");
    assert_eq!(
        *e.kind(),
        DecodeErrorKind::Truncated {
            needed: 4,
            available: 2
        }
    );
    assert_eq!(
        e.to_string(),
        "pgoutput Begin message: truncated at byte 17 (needed 4 more bytes, 2 left)"
    );
    assert_eq!(
        err(full.slice(..17)).to_string(),
        "pgoutput Begin message: truncated at byte 17 (needed 4 more bytes)"
    );
}

#[test]
fn truncated_insert_value() {
    // Value says 10 bytes, only 3 present.
    let data = Wire::tag(b'I')
        .uint32(1)
        .byte(b'N')
        .int16(1)
        .byte(b't')
        .int32(10)
        .raw(b"abc")
        .bytes();
    let e = err(data);
    assert_eq!(e.offset(), 13);
    assert_eq!(
        *e.kind(),
        DecodeErrorKind::Truncated {
            needed: 10,
            available: 3
        }
    );
    assert_eq!(
        e.to_string(),
        "pgoutput Insert message: truncated at byte 13 (needed 10 more bytes, 3 left)"
    );
}

#[test]
fn oversized_lengths_and_counts_do_not_allocate_or_panic() {
    // i32::MAX value length.
    let data = Wire::tag(b'I')
        .uint32(1)
        .byte(b'N')
        .int16(1)
        .byte(b'b')
        .int32(i32::MAX)
        .bytes();
    assert!(matches!(
        err(data).kind(),
        DecodeErrorKind::Truncated { .. }
    ));
    // i16::MAX columns but nothing follows.
    let data = Wire::tag(b'I').uint32(1).byte(b'N').int16(i16::MAX).bytes();
    assert!(matches!(
        err(data).kind(),
        DecodeErrorKind::Truncated { .. }
    ));
    // i32::MAX truncated relations.
    let data = Wire::tag(b'T').int32(i32::MAX).byte(0).uint32(1).bytes();
    assert!(matches!(
        err(data).kind(),
        DecodeErrorKind::Truncated { .. }
    ));
    // i16::MAX relation columns.
    let data = Wire::tag(b'R')
        .uint32(1)
        .string("s")
        .string("t")
        .byte(b'd')
        .int16(i16::MAX)
        .bytes();
    assert!(matches!(
        err(data).kind(),
        DecodeErrorKind::Truncated { .. }
    ));
    // Message content length beyond the input.
    let data = Wire::tag(b'M')
        .byte(1)
        .uint64(0)
        .string("p")
        .int32(1 << 30)
        .bytes();
    assert!(matches!(
        err(data).kind(),
        DecodeErrorKind::Truncated { .. }
    ));
}

#[test]
fn negative_lengths_and_counts() {
    let cases = [
        (
            Wire::tag(b'I')
                .uint32(1)
                .byte(b'N')
                .int16(1)
                .byte(b't')
                .int32(-1)
                .bytes(),
            9,
            -1,
        ),
        (
            Wire::tag(b'I').uint32(1).byte(b'N').int16(-2).bytes(),
            6,
            -2,
        ),
        (
            Wire::tag(b'R')
                .uint32(1)
                .string("")
                .string("t")
                .byte(b'd')
                .int16(i16::MIN)
                .bytes(),
            9,
            i64::from(i16::MIN),
        ),
        (Wire::tag(b'T').int32(-1).byte(0).bytes(), 1, -1),
        (
            Wire::tag(b'M')
                .byte(0)
                .uint64(0)
                .string("p")
                .int32(i32::MIN)
                .bytes(),
            12,
            i64::from(i32::MIN),
        ),
    ];
    for (data, offset, len) in cases {
        let e = err(data);
        assert_eq!(*e.kind(), DecodeErrorKind::InvalidLength(len), "{e}");
        assert_eq!(e.offset(), offset, "{e}");
    }
    let e = err(Wire::tag(b'T').int32(-1).byte(0).bytes());
    assert_eq!(
        e.to_string(),
        "pgoutput Truncate message: invalid (negative) length or count -1 at byte 1"
    );
}

#[test]
fn trailing_bytes() {
    let mut data = support::begin(1, 2).to_vec();
    data.push(0);
    let e = err(Bytes::from(data));
    assert_eq!(*e.kind(), DecodeErrorKind::TrailingBytes { count: 1 });
    assert_eq!(e.offset(), 21);
    assert_eq!(
        e.to_string(),
        "pgoutput Begin message: 1 unexpected trailing byte at byte 21 after the end of the message"
    );
    // A second message concatenated to the first is also rejected.
    let mut two = support::begin(1, 2).to_vec();
    two.extend_from_slice(&support::commit(1, 2));
    assert_eq!(
        *err(Bytes::from(two)).kind(),
        DecodeErrorKind::TrailingBytes { count: 26 }
    );
}

#[test]
fn missing_nul_terminator() {
    let e = err(Wire::tag(b'O').uint64(1).raw(b"no-nul").bytes());
    assert_eq!(*e.kind(), DecodeErrorKind::UnterminatedString);
    assert_eq!(e.offset(), 9);
    assert_eq!(
        e.to_string(),
        "pgoutput Origin message: string starting at byte 9 has no NUL terminator"
    );
    // Relation: name present, column name unterminated.
    let e = err(Wire::tag(b'R')
        .uint32(1)
        .string("s")
        .string("t")
        .byte(b'd')
        .int16(1)
        .byte(0)
        .raw(b"col")
        .bytes());
    assert_eq!(*e.kind(), DecodeErrorKind::UnterminatedString);
    assert_eq!(e.offset(), 13);
}

#[test]
fn invalid_utf8_names() {
    let bad = [0xC3, 0x28]; // invalid 2-byte sequence
    let namespace = Wire::tag(b'R')
        .uint32(1)
        .raw(&bad)
        .byte(0)
        .string("t")
        .byte(b'd')
        .int16(0);
    let relname = Wire::tag(b'R')
        .uint32(1)
        .string("s")
        .raw(&bad)
        .byte(0)
        .byte(b'd')
        .int16(0);
    let column = Wire::tag(b'R')
        .uint32(1)
        .string("s")
        .string("t")
        .byte(b'd')
        .int16(1)
        .byte(0)
        .raw(&bad)
        .byte(0)
        .uint32(25)
        .int32(-1);
    let prefix = Wire::tag(b'M').byte(1).uint64(0).raw(&bad).byte(0).int32(0);
    let typename = Wire::tag(b'Y').uint32(1).string("s").raw(&[0xFF]).byte(0);
    let origin = Wire::tag(b'O').uint64(0).raw(&[0x80]).byte(0);
    for (w, offset) in [
        (namespace, 5),
        (relname, 7),
        (column, 13),
        (prefix, 10),
        (typename, 7),
        (origin, 9),
    ] {
        let e = err(w.bytes());
        assert_eq!(*e.kind(), DecodeErrorKind::InvalidUtf8, "{e}");
        assert_eq!(e.offset(), offset, "{e}");
    }
    let e = err(Wire::tag(b'M')
        .byte(1)
        .uint64(0)
        .raw(&bad)
        .byte(0)
        .int32(0)
        .bytes());
    assert_eq!(
        e.to_string(),
        "pgoutput Message message: string starting at byte 10 is not valid UTF-8"
    );
}

#[test]
fn unknown_tuple_kind() {
    let e = err(Wire::tag(b'I')
        .uint32(1)
        .byte(b'N')
        .int16(2)
        .byte(b'n')
        .byte(b'x')
        .bytes());
    assert_eq!(*e.kind(), DecodeErrorKind::UnknownTupleKind(b'x'));
    assert_eq!(e.offset(), 9);
    assert_eq!(
        e.to_string(),
        "pgoutput Insert message: unknown tuple column kind 0x78 'x' at byte 9 \
         (expected 'n', 'u', 't' or 'b')"
    );
}

#[test]
fn unexpected_tuple_markers() {
    let cases = [
        // Insert needs 'N'.
        (
            Wire::tag(b'I').uint32(1).byte(b'K').int16(0).bytes(),
            b'K',
            5,
        ),
        // Update: first marker must be K, O or N.
        (
            Wire::tag(b'U').uint32(1).byte(b'X').int16(0).bytes(),
            b'X',
            5,
        ),
        // Update: after the old tuple comes 'N'.
        (
            Wire::tag(b'U')
                .uint32(1)
                .byte(b'K')
                .int16(0)
                .byte(b'O')
                .int16(0)
                .bytes(),
            b'O',
            8,
        ),
        // Delete: K or O only.
        (
            Wire::tag(b'D').uint32(1).byte(b'N').int16(0).bytes(),
            b'N',
            5,
        ),
    ];
    for (data, found, offset) in cases {
        let e = err(data);
        assert!(
            matches!(e.kind(), DecodeErrorKind::UnexpectedTupleMarker { found: f, .. } if *f == found),
            "{e}"
        );
        assert_eq!(e.offset(), offset);
    }
    let e = err(Wire::tag(b'D').uint32(1).byte(b'N').int16(0).bytes());
    assert_eq!(
        e.to_string(),
        "pgoutput Delete message: unexpected tuple marker 0x4E 'N' at byte 5 (expected 'K' or 'O')"
    );
}

#[test]
fn unknown_replica_identity() {
    let e = err(Wire::tag(b'R')
        .uint32(1)
        .string("s")
        .string("t")
        .byte(b'x')
        .int16(0)
        .bytes());
    assert_eq!(*e.kind(), DecodeErrorKind::UnknownReplicaIdentity(b'x'));
    assert_eq!(e.offset(), 9);
}

#[test]
fn unknown_message_flags() {
    let e = err(Wire::tag(b'M')
        .byte(2)
        .uint64(0)
        .string("p")
        .int32(0)
        .bytes());
    assert_eq!(*e.kind(), DecodeErrorKind::InvalidFlags(2));
    assert_eq!(e.offset(), 1);
    assert_eq!(
        e.to_string(),
        "pgoutput Message message: unknown flag bits 0x02 at byte 1"
    );
}

#[test]
fn errors_are_std_errors() {
    fn assert_error<E: std::error::Error + Send + Sync + 'static>(_: &E) {}
    let e = err(Bytes::new());
    assert_error(&e);
    assert!(!e.kind().is_protocol_violation());
}

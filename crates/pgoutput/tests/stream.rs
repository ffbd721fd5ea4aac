//! `StreamDecoder`: relation cache and transaction state checks.

mod support;

use std::sync::Arc;

use bytes::Bytes;
use outboxd_pgoutput::{ColumnValue, DecodeErrorKind, LogicalMessage, Lsn, StreamDecoder};
use support::{begin, commit, insert, message, relation, Wire};

const OID: u32 = 16385;

fn ready() -> StreamDecoder {
    let mut d = StreamDecoder::new();
    d.decode(relation(OID, "outbox", &["id", "payload"]))
        .expect("relation");
    d.decode(begin(0x100, 7)).expect("begin");
    d
}

fn kind_of(d: &mut StreamDecoder, data: Bytes) -> DecodeErrorKind {
    match d.decode(data) {
        Ok(m) => panic!("accepted: {m:?}"),
        Err(e) => {
            assert!(e.kind().is_protocol_violation(), "{e}");
            e.kind().clone()
        }
    }
}

#[test]
fn well_formed_transaction() {
    let mut d = StreamDecoder::new();
    assert!(d.in_transaction().is_none());
    d.decode(begin(0x100, 7)).unwrap();
    assert_eq!(d.in_transaction().map(|b| b.xid), Some(7));
    // pgoutput sends the Relation inside the transaction, before the change.
    d.decode(relation(OID, "outbox", &["id", "payload"]))
        .unwrap();
    d.decode(Wire::tag(b'Y').uint32(99).string("s").string("ty").bytes())
        .unwrap();
    d.decode(Wire::tag(b'O').uint64(5).string("origin").bytes())
        .unwrap();
    let m = d.decode(insert(OID, &["1", "{}"])).unwrap();
    let LogicalMessage::Insert(ins) = m else {
        panic!()
    };
    let rel = d.relation(ins.relation_oid).unwrap();
    let idx = rel.column_index("payload").unwrap();
    assert_eq!(ins.new[idx], ColumnValue::Text(Bytes::from_static(b"{}")));
    d.decode(
        Wire::tag(b'U')
            .uint32(OID)
            .byte(b'N')
            .int16(2)
            .text_col("1")
            .byte(b'u')
            .bytes(),
    )
    .unwrap();
    d.decode(
        Wire::tag(b'U')
            .uint32(OID)
            .byte(b'K')
            .int16(2)
            .text_col("1")
            .byte(b'n')
            .byte(b'N')
            .int16(2)
            .text_col("2")
            .byte(b'n')
            .bytes(),
    )
    .unwrap();
    d.decode(
        Wire::tag(b'D')
            .uint32(OID)
            .byte(b'K')
            .int16(2)
            .text_col("2")
            .byte(b'n')
            .bytes(),
    )
    .unwrap();
    d.decode(Wire::tag(b'T').int32(1).byte(0).uint32(OID).bytes())
        .unwrap();
    d.decode(message(true, 0xF0, "outbox", b"evt")).unwrap();
    d.decode(commit(0x100, 0x130)).unwrap();
    assert!(d.in_transaction().is_none());
    // Next transaction.
    d.decode(begin(0x200, 8)).unwrap();
    d.decode(commit(0x200, 0x200)).unwrap();
}

#[test]
fn begin_inside_transaction() {
    let mut d = ready();
    assert_eq!(
        kind_of(&mut d, begin(0x300, 8)),
        DecodeErrorKind::BeginInTransaction {
            open_xid: 7,
            open_final_lsn: Lsn(0x100)
        }
    );
    // State unchanged: still in xid 7.
    assert_eq!(d.in_transaction().map(|b| b.xid), Some(7));
    let e = d.decode(begin(0x300, 8)).unwrap_err();
    assert_eq!(
        e.to_string(),
        "pgoutput Begin message: Begin received while transaction xid 7 (final LSN 0/100) is still open"
    );
}

#[test]
fn commit_outside_transaction() {
    let mut d = StreamDecoder::new();
    assert_eq!(
        kind_of(&mut d, commit(1, 2)),
        DecodeErrorKind::NotInTransaction
    );
    assert_eq!(
        d.decode(commit(1, 2)).unwrap_err().to_string(),
        "pgoutput Commit message: received outside a transaction (no Begin before it)"
    );
}

#[test]
fn commit_lsn_mismatch_names_both_lsns() {
    let mut d = ready();
    let e = d.decode(commit(0x1_0000_0101, 0x1_0000_0200)).unwrap_err();
    assert_eq!(
        *e.kind(),
        DecodeErrorKind::CommitLsnMismatch {
            begin_final_lsn: Lsn(0x100),
            commit_lsn: Lsn(0x1_0000_0101)
        }
    );
    assert_eq!(e.offset(), 2);
    assert_eq!(
        e.to_string(),
        "pgoutput Commit message: commit LSN 1/101 does not match final LSN 0/100 announced by Begin"
    );
    assert!(
        d.in_transaction().is_some(),
        "a rejected Commit does not close the transaction"
    );
}

#[test]
fn commit_end_before_commit_lsn() {
    let mut d = ready();
    assert_eq!(
        kind_of(&mut d, commit(0x100, 0xFF)),
        DecodeErrorKind::CommitEndBeforeCommitLsn {
            commit_lsn: Lsn(0x100),
            end_lsn: Lsn(0xFF)
        }
    );
}

#[test]
fn changes_outside_transaction() {
    let mut d = StreamDecoder::new();
    d.decode(relation(OID, "outbox", &["id"])).unwrap();
    let changes = [
        insert(OID, &["1"]),
        Wire::tag(b'U')
            .uint32(OID)
            .byte(b'N')
            .int16(1)
            .byte(b'n')
            .bytes(),
        Wire::tag(b'D')
            .uint32(OID)
            .byte(b'K')
            .int16(1)
            .byte(b'n')
            .bytes(),
        Wire::tag(b'T').int32(1).byte(0).uint32(OID).bytes(),
        Wire::tag(b'O').uint64(1).string("o").bytes(),
        message(true, 1, "outbox", b"x"),
    ];
    for c in changes {
        assert_eq!(kind_of(&mut d, c), DecodeErrorKind::NotInTransaction);
    }
}

#[test]
fn non_transactional_message_anywhere() {
    let mut d = StreamDecoder::new();
    d.decode(message(false, 1, "audit", b"x")).unwrap();
    let mut d = ready();
    d.decode(message(false, 1, "audit", b"x")).unwrap();
}

#[test]
fn unknown_relation() {
    let mut d = StreamDecoder::new();
    d.decode(begin(1, 1)).unwrap();
    let e = d.decode(insert(42, &["x"])).unwrap_err();
    assert_eq!(*e.kind(), DecodeErrorKind::UnknownRelation { oid: 42 });
    assert_eq!(e.offset(), 1);
    assert_eq!(
        e.to_string(),
        "pgoutput Insert message: refers to relation OID 42 at byte 1, which no Relation message \
         has described on this connection"
    );
    d.decode(relation(OID, "t", &["a"])).unwrap();
    let e = d
        .decode(
            Wire::tag(b'T')
                .int32(2)
                .byte(0)
                .uint32(OID)
                .uint32(43)
                .bytes(),
        )
        .unwrap_err();
    assert_eq!(*e.kind(), DecodeErrorKind::UnknownRelation { oid: 43 });
    assert_eq!(e.offset(), 10);
    for data in [
        Wire::tag(b'U').uint32(44).byte(b'N').int16(0).bytes(),
        Wire::tag(b'D').uint32(45).byte(b'O').int16(0).bytes(),
    ] {
        assert!(matches!(
            kind_of(&mut d, data),
            DecodeErrorKind::UnknownRelation { .. }
        ));
    }
}

#[test]
fn column_count_mismatch() {
    let mut d = ready(); // relation has 2 columns
    let mismatch = DecodeErrorKind::ColumnCountMismatch {
        oid: OID,
        expected: 2,
        found: 1,
    };
    assert_eq!(kind_of(&mut d, insert(OID, &["only-one"])), mismatch);
    // Update: old tuple too short, new fine.
    let data = Wire::tag(b'U')
        .uint32(OID)
        .byte(b'O')
        .int16(1)
        .byte(b'n')
        .byte(b'N')
        .int16(2)
        .byte(b'n')
        .byte(b'n')
        .bytes();
    assert_eq!(kind_of(&mut d, data), mismatch);
    // Update: new tuple too long.
    let data = Wire::tag(b'U')
        .uint32(OID)
        .byte(b'N')
        .int16(3)
        .raw(b"nnn")
        .bytes();
    assert_eq!(
        kind_of(&mut d, data),
        DecodeErrorKind::ColumnCountMismatch {
            oid: OID,
            expected: 2,
            found: 3
        }
    );
    let data = Wire::tag(b'D')
        .uint32(OID)
        .byte(b'K')
        .int16(1)
        .byte(b'n')
        .bytes();
    assert_eq!(kind_of(&mut d, data), mismatch);
    let e = d.decode(insert(OID, &["a"])).unwrap_err();
    assert_eq!(
        e.to_string(),
        "pgoutput Insert message: tuple has 1 columns but relation OID 16385 has 2"
    );
}

#[test]
fn relation_is_replaced_and_old_arcs_stay_valid() {
    let mut d = ready();
    let before: Arc<_> = Arc::clone(d.relation(OID).unwrap());
    d.decode(relation(OID, "outbox", &["id", "payload", "added"]))
        .unwrap();
    assert_eq!(before.columns.len(), 2);
    assert_eq!(d.relation(OID).unwrap().columns.len(), 3);
    assert_eq!(d.relations().count(), 1);
    // Tuples now need 3 columns.
    assert!(d.decode(insert(OID, &["1", "2"])).is_err());
    d.decode(insert(OID, &["1", "2", "3"])).unwrap();
}

#[test]
fn reset_transaction_after_reconnect() {
    let mut d = ready();
    d.decode(insert(OID, &["1", "2"])).unwrap();
    // Connection dropped mid-transaction; the server re-sends it from Begin.
    d.reset_transaction();
    assert!(d.in_transaction().is_none());
    assert!(d.relation(OID).is_some(), "relation cache survives");
    d.decode(begin(0x100, 7)).unwrap();
    d.decode(insert(OID, &["1", "2"])).unwrap();
    d.decode(commit(0x100, 0x140)).unwrap();
    d.reset();
    assert!(d.relation(OID).is_none());
}

#[test]
fn decode_errors_pass_through_and_leave_state() {
    let mut d = ready();
    let e = d.decode(Bytes::from_static(b"Z")).unwrap_err();
    assert_eq!(*e.kind(), DecodeErrorKind::UnknownTag(b'Z'));
    assert!(!e.kind().is_protocol_violation());
    d.decode(commit(0x100, 0x100)).unwrap();
}

//! Decoding of every message kind from bytes laid out by hand after the
//! "Logical Replication Message Formats" section of the Postgres docs.

mod support;

use bytes::Bytes;
use outboxd_pgoutput::{
    decode, Begin, Column, ColumnValue, Commit, Delete, Insert, LogicalMessage, Lsn, Message,
    OldTuple, Origin, Relation, ReplicaIdentity, Truncate, TypeMessage, Update,
};
use support::Wire;

#[test]
fn begin_from_literal_bytes() {
    let data: &[u8] = &[
        b'B', // tag
        0x00, 0x00, 0x00, 0x16, 0xB3, 0x74, 0xD8, 0x48, // final LSN 16/B374D848
        0x00, 0x02, 0xE6, 0x8E, 0x6B, 0x0A, 0x1C, 0x40, // commit time (µs since 2000)
        0x00, 0x00, 0x02, 0xE6, // xid 742
    ];
    let msg = decode(Bytes::from_static(data)).unwrap();
    assert_eq!(
        msg,
        LogicalMessage::Begin(Begin {
            final_lsn: Lsn(0x16_B374_D848),
            commit_time: 0x0002_E68E_6B0A_1C40,
            xid: 742,
        })
    );
    assert_eq!(msg.tag(), b'B');
    assert_eq!(msg.name(), "Begin");
}

#[test]
fn commit_from_literal_bytes() {
    let data: &[u8] = &[
        b'C', // tag
        0x00, // flags
        0x00, 0x00, 0x00, 0x16, 0xB3, 0x74, 0xD8, 0x48, // commit LSN
        0x00, 0x00, 0x00, 0x16, 0xB3, 0x74, 0xD8, 0x78, // end LSN
        0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, // commit time -1 µs
    ];
    let msg = decode(Bytes::from_static(data)).unwrap();
    assert_eq!(
        msg,
        LogicalMessage::Commit(Commit {
            flags: 0,
            commit_lsn: Lsn(0x16_B374_D848),
            end_lsn: Lsn(0x16_B374_D878),
            commit_time: -1,
        })
    );
}

#[test]
fn origin() {
    let data = Wire::tag(b'O')
        .uint64(0x1_0000_0002)
        .string("node_a")
        .bytes();
    assert_eq!(
        decode(data).unwrap(),
        LogicalMessage::Origin(Origin {
            commit_lsn: Lsn(0x1_0000_0002),
            name: "node_a".into(),
        })
    );
}

#[test]
fn relation_from_literal_bytes() {
    let data: &[u8] = &[
        b'R', // tag
        0x00, 0x00, 0x40, 0x01, // oid 16385
        b'p', b'u', b'b', b'l', b'i', b'c', 0, // namespace
        b'o', b'u', b't', b'b', b'o', b'x', 0,    // name
        b'f', // replica identity FULL
        0x00, 0x02, // 2 columns
        0x01, b'i', b'd', 0, 0x00, 0x00, 0x0B, 0x86, 0xFF, 0xFF, 0xFF, 0xFF, // id uuid key
        0x00, b't', b'y', b'p', b'e', 0, 0x00, 0x00, 0x04, 0x13, 0x00, 0x00, 0x01,
        0x03, // varchar(255)
    ];
    let LogicalMessage::Relation(rel) = decode(Bytes::from_static(data)).unwrap() else {
        panic!("not a relation")
    };
    assert_eq!(
        rel,
        Relation {
            oid: 16385,
            namespace: "public".into(),
            name: "outbox".into(),
            replica_identity: ReplicaIdentity::Full,
            columns: vec![
                Column {
                    flags: 1,
                    name: "id".into(),
                    type_oid: 2950,
                    type_modifier: -1,
                },
                Column {
                    flags: 0,
                    name: "type".into(),
                    type_oid: 1043,
                    type_modifier: 259,
                },
            ],
        }
    );
    assert!(rel.columns[0].is_key());
    assert!(!rel.columns[1].is_key());
    assert_eq!(rel.column_index("type"), Some(1));
    assert_eq!(rel.column_index("TYPE"), None);
    assert_eq!(rel.column("id").map(|c| c.type_oid), Some(2950));
}

#[test]
fn relation_replica_identities_and_pg_catalog() {
    for (b, ri) in [
        (b'd', ReplicaIdentity::Default),
        (b'n', ReplicaIdentity::Nothing),
        (b'f', ReplicaIdentity::Full),
        (b'i', ReplicaIdentity::Index),
    ] {
        let data = Wire::tag(b'R')
            .uint32(1)
            .string("")
            .string("t")
            .byte(b)
            .int16(0)
            .bytes();
        let LogicalMessage::Relation(rel) = decode(data).unwrap() else {
            panic!()
        };
        assert_eq!(rel.replica_identity, ri);
        assert_eq!(ri.as_byte(), b);
        assert_eq!(rel.namespace, "", "empty namespace means pg_catalog");
        assert!(rel.columns.is_empty());
    }
}

#[test]
fn relation_names_may_be_non_ascii() {
    let data = Wire::tag(b'R')
        .uint32(7)
        .string("schéma")
        .string("Bestellungen_ü")
        .byte(b'd')
        .int16(1)
        .byte(0)
        .string("größe")
        .uint32(23)
        .int32(-1)
        .bytes();
    let LogicalMessage::Relation(rel) = decode(data).unwrap() else {
        panic!()
    };
    assert_eq!(rel.namespace, "schéma");
    assert_eq!(rel.column_index("größe"), Some(0));
}

#[test]
fn type_message() {
    let data = Wire::tag(b'Y')
        .uint32(90_001)
        .string("app")
        .string("mood")
        .bytes();
    assert_eq!(
        decode(data).unwrap(),
        LogicalMessage::Type(TypeMessage {
            oid: 90_001,
            namespace: "app".into(),
            name: "mood".into(),
        })
    );
}

#[test]
fn insert_from_literal_bytes_with_every_column_kind() {
    let data: &[u8] = &[
        b'I', // tag
        0x00, 0x00, 0x40, 0x01, // relation oid 16385
        b'N', // new tuple follows
        0x00, 0x04, // 4 columns
        b't', 0x00, 0x00, 0x00, 0x02, b'4', b'2', // text "42"
        b'n', // null
        b'b', 0x00, 0x00, 0x00, 0x03, 0x01, 0x00, 0xFF, // binary
        b't', 0x00, 0x00, 0x00, 0x00, // empty text
    ];
    let input = Bytes::from_static(data);
    let msg = decode(input.clone()).unwrap();
    let LogicalMessage::Insert(Insert { relation_oid, new }) = &msg else {
        panic!("not an insert: {msg:?}")
    };
    assert_eq!(*relation_oid, 16385);
    assert_eq!(
        new,
        &vec![
            ColumnValue::Text(Bytes::from_static(b"42")),
            ColumnValue::Null,
            ColumnValue::Binary(Bytes::from_static(&[1, 0, 255])),
            ColumnValue::Text(Bytes::new()),
        ]
    );
    assert_eq!(new[0].as_text(), Some(Ok("42")));
    assert_eq!(new[1].as_text(), None);
    assert!(new[1].is_null());
    assert_eq!(new[2].as_text(), None, "binary values are not text");
    assert_eq!(new[2].as_bytes().map(|b| b.len()), Some(3));
    // Zero-copy: the value points into the input buffer.
    let ColumnValue::Text(v) = &new[0] else {
        panic!()
    };
    let range = input.as_ptr_range();
    assert!(range.contains(&v.as_ptr()));
}

#[test]
fn text_value_with_invalid_utf8_is_reported_by_as_text() {
    let data = Wire::tag(b'I')
        .uint32(1)
        .byte(b'N')
        .int16(1)
        .byte(b't')
        .int32(2)
        .raw(&[0xC3, 0x28])
        .bytes();
    let LogicalMessage::Insert(ins) = decode(data).unwrap() else {
        panic!()
    };
    assert!(matches!(ins.new[0].as_text(), Some(Err(_))));
}

#[test]
fn update_without_old_tuple() {
    let data = Wire::tag(b'U')
        .uint32(5)
        .byte(b'N')
        .int16(2)
        .text_col("a")
        .byte(b'u')
        .bytes();
    assert_eq!(
        decode(data).unwrap(),
        LogicalMessage::Update(Update {
            relation_oid: 5,
            old: None,
            new: vec![
                ColumnValue::Text(Bytes::from_static(b"a")),
                ColumnValue::UnchangedToast
            ],
        })
    );
}

#[test]
fn update_with_key_and_with_full_old_tuple() {
    for (marker, wrap) in [
        (b'K', OldTuple::Key as fn(_) -> _),
        (b'O', OldTuple::Full as fn(_) -> _),
    ] {
        let data = Wire::tag(b'U')
            .uint32(5)
            .byte(marker)
            .int16(2)
            .text_col("1")
            .byte(b'n')
            .byte(b'N')
            .int16(2)
            .text_col("2")
            .text_col("x")
            .bytes();
        let LogicalMessage::Update(u) = decode(data).unwrap() else {
            panic!()
        };
        let old = vec![
            ColumnValue::Text(Bytes::from_static(b"1")),
            ColumnValue::Null,
        ];
        assert_eq!(u.old, Some(wrap(old.clone())));
        assert_eq!(u.old.as_ref().map(OldTuple::values), Some(&old));
        assert_eq!(u.new.len(), 2);
    }
}

#[test]
fn delete_with_key_and_full() {
    let data = Wire::tag(b'D')
        .uint32(9)
        .byte(b'K')
        .int16(1)
        .text_col("7")
        .bytes();
    assert_eq!(
        decode(data).unwrap(),
        LogicalMessage::Delete(Delete {
            relation_oid: 9,
            old: OldTuple::Key(vec![ColumnValue::Text(Bytes::from_static(b"7"))]),
        })
    );
    let data = Wire::tag(b'D')
        .uint32(9)
        .byte(b'O')
        .int16(1)
        .byte(b'n')
        .bytes();
    assert_eq!(
        decode(data).unwrap(),
        LogicalMessage::Delete(Delete {
            relation_oid: 9,
            old: OldTuple::Full(vec![ColumnValue::Null]),
        })
    );
}

#[test]
fn truncate() {
    let data = Wire::tag(b'T')
        .int32(2)
        .byte(3)
        .uint32(16385)
        .uint32(u32::MAX)
        .bytes();
    let LogicalMessage::Truncate(t) = decode(data).unwrap() else {
        panic!()
    };
    assert_eq!(
        t,
        Truncate {
            options: 3,
            relation_oids: vec![16385, u32::MAX],
        }
    );
    assert!(t.cascade());
    assert!(t.restart_identity());
    let data = Wire::tag(b'T').int32(0).byte(0).bytes();
    let LogicalMessage::Truncate(t) = decode(data).unwrap() else {
        panic!()
    };
    assert!(!t.cascade() && !t.restart_identity() && t.relation_oids.is_empty());
}

#[test]
fn message_from_literal_bytes() {
    let data: &[u8] = &[
        b'M', // tag
        0x01, // transactional
        0x00, 0x00, 0x00, 0x00, 0x01, 0x6B, 0x2E, 0x10, // LSN 0/16B2E10
        b'o', b'u', b't', b'b', b'o', b'x', 0, // prefix
        0x00, 0x00, 0x00, 0x03, // content length
        0xFF, 0x00, b'{', // content: not UTF-8, contains NUL
    ];
    let input = Bytes::from_static(data);
    let msg = decode(input.clone()).unwrap();
    assert_eq!(
        msg,
        LogicalMessage::Message(Message {
            transactional: true,
            lsn: Lsn(0x16B_2E10),
            prefix: "outbox".into(),
            content: Bytes::from_static(&[0xFF, 0x00, b'{']),
        })
    );
    let LogicalMessage::Message(m) = msg else {
        panic!()
    };
    assert!(
        input.as_ptr_range().contains(&m.content.as_ptr()),
        "zero-copy"
    );
}

#[test]
fn non_transactional_message_with_empty_content_and_prefix() {
    let data = Wire::tag(b'M')
        .byte(0)
        .uint64(1)
        .string("")
        .int32(0)
        .bytes();
    assert_eq!(
        decode(data).unwrap(),
        LogicalMessage::Message(Message {
            transactional: false,
            lsn: Lsn(1),
            prefix: String::new(),
            content: Bytes::new(),
        })
    );
}

#[test]
fn names_of_all_variants() {
    use outboxd_pgoutput::tag;
    for t in [
        tag::BEGIN,
        tag::COMMIT,
        tag::ORIGIN,
        tag::RELATION,
        tag::TYPE,
        tag::INSERT,
        tag::UPDATE,
        tag::DELETE,
        tag::TRUNCATE,
        tag::MESSAGE,
    ] {
        assert!(tag::name(t).is_some());
    }
    assert_eq!(tag::name(b'S'), None);
}

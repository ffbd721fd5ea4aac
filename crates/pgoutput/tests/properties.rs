//! Property tests: no panics on any input, canonical encode/decode round
//! trips, and every strict prefix of a valid message is rejected.

use bytes::Bytes;
use outboxd_pgoutput::encode::encode;
use outboxd_pgoutput::{
    decode, Begin, Column, ColumnValue, Commit, DecodeErrorKind, Delete, Insert, LogicalMessage,
    Lsn, Message, OldTuple, Origin, Relation, ReplicaIdentity, StreamDecoder, Truncate, TupleData,
    TypeMessage, Update,
};
use proptest::collection::vec;
use proptest::prelude::*;

// ---------- generators ----------

fn name() -> impl Strategy<Value = String> + Clone {
    // Any Unicode except NUL, which cannot appear in a C string.
    "[^\u{0}]{0,10}"
}

fn lsn() -> impl Strategy<Value = Lsn> + Clone {
    any::<u64>().prop_map(Lsn)
}

fn payload() -> impl Strategy<Value = Bytes> + Clone {
    vec(any::<u8>(), 0..40).prop_map(Bytes::from)
}

fn column_value() -> impl Strategy<Value = ColumnValue> + Clone {
    prop_oneof![
        Just(ColumnValue::Null),
        Just(ColumnValue::UnchangedToast),
        payload().prop_map(ColumnValue::Text),
        payload().prop_map(ColumnValue::Binary),
    ]
}

fn tuple_of(n: usize) -> impl Strategy<Value = TupleData> + Clone {
    vec(column_value(), n)
}

fn tuple() -> impl Strategy<Value = TupleData> + Clone {
    vec(column_value(), 0..8)
}

fn old_tuple(t: impl Strategy<Value = TupleData> + Clone) -> impl Strategy<Value = OldTuple> {
    prop_oneof![
        t.clone().prop_map(OldTuple::Key),
        t.prop_map(OldTuple::Full)
    ]
}

fn replica_identity() -> impl Strategy<Value = ReplicaIdentity> {
    prop_oneof![
        Just(ReplicaIdentity::Default),
        Just(ReplicaIdentity::Nothing),
        Just(ReplicaIdentity::Full),
        Just(ReplicaIdentity::Index),
    ]
}

fn relation_with(oid: u32, ncols: std::ops::Range<usize>) -> impl Strategy<Value = Relation> {
    (
        name(),
        name(),
        replica_identity(),
        vec((any::<u8>(), name(), any::<u32>(), any::<i32>()), ncols),
    )
        .prop_map(move |(namespace, name, replica_identity, cols)| Relation {
            oid,
            namespace,
            name,
            replica_identity,
            columns: cols
                .into_iter()
                .map(|(flags, name, type_oid, type_modifier)| Column {
                    flags,
                    name,
                    type_oid,
                    type_modifier,
                })
                .collect(),
        })
}

fn message() -> impl Strategy<Value = LogicalMessage> {
    prop_oneof![
        (lsn(), any::<i64>(), any::<u32>()).prop_map(|(final_lsn, commit_time, xid)| {
            LogicalMessage::Begin(Begin {
                final_lsn,
                commit_time,
                xid,
            })
        }),
        (any::<u8>(), lsn(), lsn(), any::<i64>()).prop_map(
            |(flags, commit_lsn, end_lsn, commit_time)| LogicalMessage::Commit(Commit {
                flags,
                commit_lsn,
                end_lsn,
                commit_time,
            })
        ),
        (lsn(), name())
            .prop_map(|(commit_lsn, name)| LogicalMessage::Origin(Origin { commit_lsn, name })),
        any::<u32>()
            .prop_flat_map(|oid| relation_with(oid, 0..8))
            .prop_map(LogicalMessage::Relation),
        (any::<u32>(), name(), name()).prop_map(|(oid, namespace, name)| {
            LogicalMessage::Type(TypeMessage {
                oid,
                namespace,
                name,
            })
        }),
        (any::<u32>(), tuple())
            .prop_map(|(relation_oid, new)| LogicalMessage::Insert(Insert { relation_oid, new })),
        (
            any::<u32>(),
            proptest::option::of(old_tuple(tuple())),
            tuple()
        )
            .prop_map(|(relation_oid, old, new)| LogicalMessage::Update(Update {
                relation_oid,
                old,
                new
            })),
        (any::<u32>(), old_tuple(tuple()))
            .prop_map(|(relation_oid, old)| LogicalMessage::Delete(Delete { relation_oid, old })),
        (any::<u8>(), vec(any::<u32>(), 0..6)).prop_map(|(options, relation_oids)| {
            LogicalMessage::Truncate(Truncate {
                options,
                relation_oids,
            })
        }),
        (any::<bool>(), lsn(), name(), payload()).prop_map(
            |(transactional, lsn, prefix, content)| LogicalMessage::Message(Message {
                transactional,
                lsn,
                prefix,
                content,
            })
        ),
    ]
}

/// A plausible stream: a relation, then transactions of changes that match
/// it, with commit LSNs equal to final LSNs.
fn well_formed_stream() -> impl Strategy<Value = Vec<LogicalMessage>> {
    relation_with(16385, 1..6).prop_flat_map(|rel| {
        let n = rel.columns.len();
        let change = prop_oneof![
            tuple_of(n).prop_map(|new| LogicalMessage::Insert(Insert {
                relation_oid: 16385,
                new
            })),
            (proptest::option::of(old_tuple(tuple_of(n))), tuple_of(n)).prop_map(|(old, new)| {
                LogicalMessage::Update(Update {
                    relation_oid: 16385,
                    old,
                    new,
                })
            }),
            old_tuple(tuple_of(n)).prop_map(|old| LogicalMessage::Delete(Delete {
                relation_oid: 16385,
                old
            })),
            (any::<bool>(), payload()).prop_map(|(transactional, content)| {
                LogicalMessage::Message(Message {
                    transactional,
                    lsn: Lsn(1),
                    prefix: "outbox".into(),
                    content,
                })
            }),
        ];
        let txn = (any::<u32>(), any::<u32>(), vec(change, 0..6));
        vec(txn, 1..5).prop_map(move |txns| {
            let mut out = vec![LogicalMessage::Relation(rel.clone())];
            let mut pos: u64 = 0x1000;
            for (xid, gap, changes) in txns {
                pos += u64::from(gap) + 1;
                out.push(LogicalMessage::Begin(Begin {
                    final_lsn: Lsn(pos),
                    commit_time: 0,
                    xid,
                }));
                out.extend(changes);
                out.push(LogicalMessage::Commit(Commit {
                    flags: 0,
                    commit_lsn: Lsn(pos),
                    end_lsn: Lsn(pos + 48),
                    commit_time: 0,
                }));
            }
            out
        })
    })
}

/// Valid message bytes with one byte changed, inserted or removed.
fn mutated() -> impl Strategy<Value = Vec<u8>> {
    (message(), any::<prop::sample::Index>(), any::<u8>(), 0..3u8).prop_map(|(m, idx, byte, op)| {
        let mut b = encode(&m).expect("generated messages encode").to_vec();
        let i = idx.index(b.len());
        match op {
            0 => b[i] = byte,
            1 => b.insert(i, byte),
            _ => {
                b.remove(i);
            }
        }
        b
    })
}

/// Input that starts with a known tag, so the fuzzing gets past the first
/// byte most of the time.
fn tagged_noise() -> impl Strategy<Value = Vec<u8>> {
    (
        prop::sample::select(b"BCORYIUDTM".to_vec()),
        vec(any::<u8>(), 0..64),
    )
        .prop_map(|(t, mut rest)| {
            rest.insert(0, t);
            rest
        })
}

fn any_input() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![vec(any::<u8>(), 0..64), tagged_noise(), mutated()]
}

// ---------- properties ----------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    /// (a) `decode` never panics; anything it accepts re-encodes to the same
    /// bytes (the decoder is strict enough that the encoding is canonical).
    #[test]
    fn decode_never_panics_and_accepted_input_is_canonical(data in any_input()) {
        if let Ok(msg) = decode(Bytes::from(data.clone())) {
            let again = encode(&msg).unwrap();
            prop_assert_eq!(again.as_ref(), &data[..]);
        }
    }

    /// (a) A `StreamDecoder` never panics on any sequence of inputs, valid
    /// or not, and every error it returns displays.
    #[test]
    fn stream_decoder_never_panics(inputs in vec(prop_oneof![
        any_input(),
        message().prop_map(|m| encode(&m).unwrap().to_vec()),
    ], 0..24)) {
        let mut d = StreamDecoder::new();
        for data in inputs {
            if let Err(e) = d.decode(Bytes::from(data)) {
                prop_assert!(!e.to_string().is_empty());
            }
        }
    }

    /// (b) decode(encode(m)) == m for every message.
    #[test]
    fn roundtrip(msg in message()) {
        let bytes = encode(&msg).unwrap();
        prop_assert_eq!(bytes.first().copied(), Some(msg.tag()));
        prop_assert_eq!(decode(bytes).unwrap(), msg);
    }

    /// (c) Every strict prefix of a valid message is an error saying the
    /// input ran out, never a panic or a different message.
    #[test]
    fn every_truncation_is_an_error(msg in message()) {
        let bytes = encode(&msg).unwrap();
        for cut in 0..bytes.len() {
            match decode(bytes.slice(..cut)) {
                Ok(m) => prop_assert!(false, "prefix of {} bytes decoded as {:?}", cut, m),
                Err(e) => {
                    prop_assert!(
                        matches!(
                            e.kind(),
                            DecodeErrorKind::Truncated { .. } | DecodeErrorKind::UnterminatedString
                        ),
                        "cut {}: {}", cut, e
                    );
                    prop_assert!(e.offset() <= cut);
                }
            }
        }
    }

    /// A well-formed stream is accepted whole by the `StreamDecoder`, which
    /// ends outside any transaction.
    #[test]
    fn well_formed_stream_is_accepted(stream in well_formed_stream()) {
        let mut d = StreamDecoder::new();
        for msg in &stream {
            let got = d.decode(encode(msg).unwrap());
            prop_assert_eq!(got.as_ref(), Ok(msg));
        }
        prop_assert!(d.in_transaction().is_none());
    }
}

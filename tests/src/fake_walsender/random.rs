//! Random frames and startup answers for the never-panic, never-hang tests: some
//! well-formed (so later frames are reached), some corrupted, some pure noise.

use bytes::BytesMut;
use outboxd_pgoutput::{
    ColumnValue, Delete, LogicalMessage, Lsn, Message, OldTuple, Origin, Truncate, TypeMessage,
    Update,
};
use rand::rngs::StdRng;
use rand::Rng;

use super::frames::{
    backend, begin, commit, copy_data, error_fields, error_response, keepalive, outbox_insert,
    outbox_relation, parameter_status, pgoutput, xlog, xlog_message, OUTBOX_OID,
};

fn random_bytes(rng: &mut StdRng, max: usize) -> Vec<u8> {
    let len = rng.random_range(0..=max);
    (0..len).map(|_| rng.random()).collect()
}

fn random_lsn(rng: &mut StdRng) -> Lsn {
    if rng.random_bool(0.5) {
        Lsn(rng.random_range(0..0x10_0000))
    } else {
        Lsn(rng.random())
    }
}

/// Valid pgoutput messages of every kind, to corrupt or to send as they are.
pub fn valid_messages() -> Vec<LogicalMessage> {
    let tuple = || {
        vec![
            ColumnValue::Text("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11".into()),
            ColumnValue::Null,
        ]
    };
    vec![
        begin(Lsn(0x3000), 5),
        outbox_relation(),
        outbox_insert("{}"),
        LogicalMessage::Update(Update {
            relation_oid: OUTBOX_OID,
            old: Some(OldTuple::Key(tuple())),
            new: vec![
                ColumnValue::Binary(vec![1u8, 2].into()),
                ColumnValue::UnchangedToast,
            ],
        }),
        LogicalMessage::Delete(Delete {
            relation_oid: OUTBOX_OID,
            old: OldTuple::Full(tuple()),
        }),
        LogicalMessage::Truncate(Truncate {
            options: Truncate::OPTION_CASCADE,
            relation_oids: vec![OUTBOX_OID],
        }),
        LogicalMessage::Message(Message {
            transactional: true,
            lsn: Lsn(0x3000),
            prefix: "outbox".to_owned(),
            content: b"content".to_vec().into(),
        }),
        LogicalMessage::Type(TypeMessage {
            oid: 17_000,
            namespace: "public".to_owned(),
            name: "mood".to_owned(),
        }),
        LogicalMessage::Origin(Origin {
            commit_lsn: Lsn(0x3000),
            name: "elsewhere".to_owned(),
        }),
        commit(Lsn(0x3000), Lsn(0x3030)),
    ]
}

/// Flips, drops, inserts or truncates bytes.
fn mutate(rng: &mut StdRng, mut data: Vec<u8>) -> Vec<u8> {
    for _ in 0..rng.random_range(1..=3) {
        match rng.random_range(0..4) {
            0 if !data.is_empty() => {
                let i = rng.random_range(0..data.len());
                data[i] = rng.random();
            }
            1 if !data.is_empty() => {
                data.truncate(rng.random_range(0..data.len()));
            }
            2 => {
                let i = rng.random_range(0..=data.len());
                data.insert(i, rng.random());
            }
            _ => data.extend(random_bytes(rng, 4)),
        }
    }
    data
}

/// A few frames: some well-formed (so later frames are reached), some corrupted,
/// some pure noise.
pub fn random_stream(rng: &mut StdRng, messages: &[LogicalMessage]) -> Vec<u8> {
    let pick = |rng: &mut StdRng| messages[rng.random_range(0..messages.len())].clone();
    let mut out = BytesMut::new();
    for _ in 0..rng.random_range(1..=8) {
        let frame = match rng.random_range(0..100) {
            0..10 => random_bytes(rng, 64),
            10..20 => copy_data(&random_bytes(rng, 64)),
            20..30 => xlog(random_lsn(rng), random_lsn(rng), &random_bytes(rng, 48)),
            30..50 => {
                let valid = pgoutput(&pick(rng));
                let data = mutate(rng, valid);
                xlog(random_lsn(rng), random_lsn(rng), &data)
            }
            50..60 => xlog_message(random_lsn(rng), &pick(rng)),
            60..70 => keepalive(random_lsn(rng), rng.random_bool(0.5)),
            // A whole valid transaction.
            70..80 => [
                xlog_message(Lsn(0x2000), &begin(Lsn(0x3000), 5)),
                xlog_message(Lsn(0x2000), &outbox_relation()),
                xlog_message(Lsn(0x2000), &outbox_insert("{}")),
                xlog_message(Lsn(0x3000), &commit(Lsn(0x3000), Lsn(0x3030))),
            ]
            .concat(),
            80..90 => {
                let tags = b"EN cdZSTDCWRK";
                let tag = if rng.random_bool(0.8) {
                    tags[rng.random_range(0..tags.len())]
                } else {
                    rng.random()
                };
                backend(tag, &random_bytes(rng, 32))
            }
            90..94 => error_response("FATAL", "57P01", "terminating"),
            94..97 => error_fields(b'N', "NOTICE", "00000", "notice"),
            _ => backend(b'c', &[]),
        };
        out.extend_from_slice(&frame);
    }
    out.to_vec()
}

/// Authentication requests and other startup answers, valid and corrupted.
pub fn random_startup(rng: &mut StdRng) -> Vec<u8> {
    let mut out = Vec::new();
    for _ in 0..rng.random_range(1..=5) {
        let code: u32 = [0, 3, 5, 7, 10, 11, 12][rng.random_range(0..7)];
        let mut body = code.to_be_bytes().to_vec();
        match code {
            5 => body.extend_from_slice(&random_bytes(rng, 6)), // md5 salt (4)
            10 if rng.random_bool(0.5) => body.extend_from_slice(b"SCRAM-SHA-256\0\0"),
            11 if rng.random_bool(0.5) => {
                let mut first = b"r=".to_vec();
                first.extend(random_bytes(rng, 24).iter().map(|b| b'!' + b % 90));
                first.extend_from_slice(b",s=QSXCR+Q6sek8bf92,i=");
                first.extend_from_slice(rng.random_range(0u32..5).to_string().as_bytes());
                body.extend(mutate(rng, first));
            }
            _ => body.extend_from_slice(&random_bytes(rng, 24)),
        }
        let frame = match rng.random_range(0..10) {
            0..6 => backend(b'R', &body),
            6 => backend(b'R', &mutate(rng, body)),
            7 => parameter_status("server_version", "15.0"),
            8 => error_response("FATAL", "28P01", "no"),
            _ => random_bytes(rng, 16),
        };
        out.extend_from_slice(&frame);
    }
    out
}

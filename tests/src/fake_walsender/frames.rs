//! Backend message bytes a fake walsender sends, and the pgoutput messages of a small
//! outbox transaction to put in them.

use outboxd_pgoutput::encode::encode;
use outboxd_pgoutput::{
    Begin, Column, ColumnValue, Commit, Insert, LogicalMessage, Lsn, Relation, ReplicaIdentity,
};

/// A backend message: tag, Int32 length (itself included), body.
pub fn backend(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    out.extend_from_slice(&(u32::try_from(body.len() + 4).unwrap()).to_be_bytes());
    out.extend_from_slice(body);
    out
}

pub fn auth_ok() -> Vec<u8> {
    backend(b'R', &0u32.to_be_bytes())
}

pub fn parameter_status(name: &str, value: &str) -> Vec<u8> {
    let mut body = Vec::new();
    for s in [name, value] {
        body.extend_from_slice(s.as_bytes());
        body.push(0);
    }
    backend(b'S', &body)
}

pub fn backend_key_data() -> Vec<u8> {
    backend(b'K', &[0, 0, 0x30, 0x39, 1, 2, 3, 4])
}

pub fn ready_for_query() -> Vec<u8> {
    backend(b'Z', b"I")
}

pub fn command_complete(tag: &str) -> Vec<u8> {
    let mut body = tag.as_bytes().to_vec();
    body.push(0);
    backend(b'C', &body)
}

/// CopyBothResponse: overall format 0 (text), zero columns.
pub fn copy_both_response() -> Vec<u8> {
    backend(b'W', &[0, 0, 0])
}

/// ErrorResponse (or, with tag `N`, NoticeResponse).
pub fn error_fields(tag: u8, severity: &str, code: &str, message: &str) -> Vec<u8> {
    let mut body = Vec::new();
    for (field, value) in [
        (b'S', severity),
        (b'V', severity),
        (b'C', code),
        (b'M', message),
    ] {
        body.push(field);
        body.extend_from_slice(value.as_bytes());
        body.push(0);
    }
    body.push(0);
    backend(tag, &body)
}

pub fn error_response(severity: &str, code: &str, message: &str) -> Vec<u8> {
    error_fields(b'E', severity, code, message)
}

pub fn copy_data(payload: &[u8]) -> Vec<u8> {
    backend(b'd', payload)
}

/// An XLogData frame carrying `data` (a pgoutput message, or not).
pub fn xlog(wal_start: Lsn, wal_end: Lsn, data: &[u8]) -> Vec<u8> {
    let mut payload = vec![b'w'];
    payload.extend_from_slice(&wal_start.0.to_be_bytes());
    payload.extend_from_slice(&wal_end.0.to_be_bytes());
    payload.extend_from_slice(&0i64.to_be_bytes());
    payload.extend_from_slice(data);
    copy_data(&payload)
}

pub fn keepalive(wal_end: Lsn, reply_requested: bool) -> Vec<u8> {
    let mut payload = vec![b'k'];
    payload.extend_from_slice(&wal_end.0.to_be_bytes());
    payload.extend_from_slice(&0i64.to_be_bytes());
    payload.push(u8::from(reply_requested));
    copy_data(&payload)
}

pub fn pgoutput(message: &LogicalMessage) -> Vec<u8> {
    encode(message).expect("encodable").to_vec()
}

/// An XLogData frame with one encoded pgoutput message.
pub fn xlog_message(wal_start: Lsn, message: &LogicalMessage) -> Vec<u8> {
    xlog(wal_start, wal_start, &pgoutput(message))
}

pub const OUTBOX_OID: u32 = 16_385;

pub fn begin(final_lsn: Lsn, xid: u32) -> LogicalMessage {
    LogicalMessage::Begin(Begin {
        final_lsn,
        commit_time: 0,
        xid,
    })
}

pub fn commit(commit_lsn: Lsn, end_lsn: Lsn) -> LogicalMessage {
    LogicalMessage::Commit(Commit {
        flags: 0,
        commit_lsn,
        end_lsn,
        commit_time: 0,
    })
}

pub fn outbox_relation() -> LogicalMessage {
    let column = |flags, name: &str, type_oid| Column {
        flags,
        name: name.to_owned(),
        type_oid,
        type_modifier: -1,
    };
    LogicalMessage::Relation(Relation {
        oid: OUTBOX_OID,
        namespace: "public".to_owned(),
        name: "outbox".to_owned(),
        replica_identity: ReplicaIdentity::Default,
        columns: vec![column(1, "id", 2950), column(0, "payload", 3802)],
    })
}

pub fn outbox_insert(payload: &'static str) -> LogicalMessage {
    LogicalMessage::Insert(Insert {
        relation_oid: OUTBOX_OID,
        new: vec![
            ColumnValue::Text("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11".into()),
            ColumnValue::Text(payload.into()),
        ],
    })
}

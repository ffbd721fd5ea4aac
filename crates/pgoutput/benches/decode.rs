//! Decode throughput on one core.
//!
//! Models the hot path of the relay: Debezium-style outbox rows arriving as
//! Inserts through a [`StreamDecoder`] (relation lookup and column-count check
//! included), and the Begin/Commit pair that frames every transaction. The
//! message bytes are built once with the encoder; each iteration decodes a
//! cheap `Bytes` clone, as the replication client would hand over the payload
//! of a received frame.

use std::hint::black_box;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use outboxd_pgoutput::encode::encode;
use outboxd_pgoutput::{
    decode, Begin, Column, ColumnValue, Commit, Insert, LogicalMessage, Lsn, Relation,
    ReplicaIdentity, StreamDecoder,
};

const OUTBOX_OID: u32 = 16_385;

fn outbox_relation() -> LogicalMessage {
    let col = |name: &str, type_oid: u32, type_modifier: i32, flags: u8| Column {
        flags,
        name: name.to_owned(),
        type_oid,
        type_modifier,
    };
    LogicalMessage::Relation(Relation {
        oid: OUTBOX_OID,
        namespace: "public".to_owned(),
        name: "outbox".to_owned(),
        replica_identity: ReplicaIdentity::Default,
        columns: vec![
            col("id", 2950, -1, 1),             // uuid, primary key
            col("aggregatetype", 1043, 259, 0), // varchar(255)
            col("aggregateid", 1043, 259, 0),   // varchar(255)
            col("type", 1043, 259, 0),          // varchar(255)
            col("payload", 3802, -1, 0),        // jsonb
            col("timestamp", 1184, -1, 0),      // timestamptz
        ],
    })
}

fn outbox_insert() -> LogicalMessage {
    let payload = format!(
        r#"{{"orderId":"order-1042","customerId":"customer-77","status":"CREATED","currency":"EUR","total":"149.90","lines":[{{"sku":"SKU-1","qty":2,"price":"49.95"}},{{"sku":"SKU-2","qty":1,"price":"50.00"}}],"note":"{}"}}"#,
        "x".repeat(56)
    );
    assert!(
        (240..=260).contains(&payload.len()),
        "payload {} bytes",
        payload.len()
    );
    let text = |s: &str| ColumnValue::Text(Bytes::copy_from_slice(s.as_bytes()));
    LogicalMessage::Insert(Insert {
        relation_oid: OUTBOX_OID,
        new: vec![
            text("5f0c3c8e-3b7a-4f43-9d5e-2a9f1c7e8b10"),
            text("order"),
            text("order-1042"),
            text("OrderCreated"),
            text(&payload),
            text("2025-11-25 19:56:01.123456+00"),
        ],
    })
}

fn begin() -> LogicalMessage {
    LogicalMessage::Begin(Begin {
        final_lsn: Lsn(0x16_B374_D848),
        commit_time: 817_000_000_000_000,
        xid: 123_456,
    })
}

fn commit() -> LogicalMessage {
    LogicalMessage::Commit(Commit {
        flags: 0,
        commit_lsn: Lsn(0x16_B374_D848),
        end_lsn: Lsn(0x16_B374_D878),
        commit_time: 817_000_000_000_000,
    })
}

fn bytes_of(msg: &LogicalMessage) -> Bytes {
    encode(msg).expect("benchmark messages are encodable")
}

fn benches(c: &mut Criterion) {
    let relation = bytes_of(&outbox_relation());
    let insert = bytes_of(&outbox_insert());
    let begin = bytes_of(&begin());
    let commit = bytes_of(&commit());

    let mut group = c.benchmark_group("pgoutput");

    group.throughput(Throughput::Elements(1));
    group.bench_function(format!("outbox_insert_stream ({} B)", insert.len()), |b| {
        let mut dec = StreamDecoder::new();
        dec.decode(relation.clone()).expect("relation");
        dec.decode(begin.clone()).expect("begin");
        b.iter(|| black_box(dec.decode(black_box(insert.clone())).expect("insert")));
    });

    group.bench_function(
        format!("outbox_insert_stateless ({} B)", insert.len()),
        |b| {
            b.iter(|| black_box(decode(black_box(insert.clone())).expect("insert")));
        },
    );

    // Two messages per iteration: elements/s counts messages.
    group.throughput(Throughput::Elements(2));
    group.bench_function("begin_commit_pair_stream", |b| {
        let mut dec = StreamDecoder::new();
        b.iter(|| {
            black_box(dec.decode(black_box(begin.clone())).expect("begin"));
            black_box(dec.decode(black_box(commit.clone())).expect("commit"));
        });
    });

    group.finish();
}

criterion_group!(decode_benches, benches);
criterion_main!(decode_benches);

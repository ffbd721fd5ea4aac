//! The replication client and decoder against the real PostgreSQL.

use std::time::Duration;

use outboxd_pgoutput::{ColumnValue, LogicalMessage, Lsn, OldTuple};
use outboxd_replication::{
    open_stream, Admin, ReaderConfig, ReplicationEvent, ReplicationReader, SourceSpec,
    StreamSettings,
};
use outboxd_tests::TestDb;

mod flow;

const OUTBOX_DDL: &str = "CREATE TABLE outbox (id uuid PRIMARY KEY, aggregatetype text NOT NULL, \
     aggregateid text NOT NULL, type text NOT NULL, payload jsonb, created timestamptz DEFAULT now())";

/// A test database with an outbox table and a publication of everything.
async fn setup(db: &TestDb, extra_ddl: &str) {
    let c = db.connect().await;
    c.batch_execute(&format!(
        "{OUTBOX_DDL}; {extra_ddl}; CREATE PUBLICATION pub FOR ALL TABLES"
    ))
    .await
    .unwrap();
}

fn spec(slot: &str) -> SourceSpec {
    SourceSpec {
        slot: slot.to_owned(),
        publications: vec!["pub".to_owned()],
        messages: true,
        create_slot: true,
        already_delivered: Lsn::ZERO,
        settings: StreamSettings::default(),
    }
}

async fn start(db: &TestDb, spec: &SourceSpec) -> (Admin, ReplicationReader) {
    let opts = db.connect_options("postgres");
    let admin = Admin::connect(&opts).await.unwrap();
    let (stream, _) = open_stream(&opts, &admin, spec).await.unwrap();
    (
        admin,
        ReplicationReader::spawn(stream, ReaderConfig::default()),
    )
}

/// The next event, which must come `within` that time.
async fn next_event(reader: &mut ReplicationReader, within: Duration) -> ReplicationEvent {
    tokio::time::timeout(within, reader.recv())
        .await
        .expect("an event in time")
        .expect("the reader is running")
}

/// The walsender serving `slot`, if any.
async fn active_pid(admin: &Admin, slot: &str) -> Option<i32> {
    admin
        .client()
        .query_one(
            "SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .unwrap()
        .get(0)
}

/// Reads whole transactions (Begin … Commit), acknowledging each when `ack` is set.
async fn transactions(
    reader: &mut ReplicationReader,
    count: usize,
    ack: bool,
) -> Vec<Vec<ReplicationEvent>> {
    let mut out = Vec::new();
    let mut current = Vec::new();
    while out.len() < count {
        let event = next_event(reader, Duration::from_secs(30)).await;
        let commit_end = match &event.message {
            LogicalMessage::Commit(c) => Some(c.end_lsn),
            _ => None,
        };
        current.push(event);
        if let Some(end) = commit_end {
            if ack {
                reader.acknowledge(end);
            }
            out.push(std::mem::take(&mut current));
        }
    }
    out
}

fn text(v: &ColumnValue) -> Option<String> {
    v.as_text().map(|r| r.unwrap().to_owned())
}

async fn confirmed_flush(admin: &Admin, slot: &str) -> Lsn {
    admin
        .slot(slot)
        .await
        .unwrap()
        .unwrap()
        .confirmed_flush_lsn
        .unwrap()
}

#[tokio::test]
async fn every_message_kind_from_real_sql() {
    let db = TestDb::create().await;
    setup(
        &db,
        "CREATE TABLE items (id int PRIMARY KEY, note text, doc jsonb, raw bytea, amount numeric, \
                             at timestamptz, uid uuid, big text);
         CREATE TABLE full_items (id int PRIMARY KEY, note text);
         ALTER TABLE full_items REPLICA IDENTITY FULL;
         ALTER TABLE items ALTER COLUMN big SET STORAGE EXTERNAL",
    )
    .await;
    let slot = db.slot_name();
    let (_admin, mut reader) = start(&db, &spec(&slot)).await;
    let c = db.connect().await;
    let big = "z".repeat(100_000);
    c.batch_execute(&format!(
        "INSERT INTO items VALUES (1, 'grüße ✓', '{{\"a\": [1, 2]}}', '\\x00ff10', 12345.678, \
                                   '2024-01-02 03:04:05+00', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{big}');
         INSERT INTO items (id) VALUES (2);
         UPDATE items SET note = 'changed' WHERE id = 1;
         UPDATE items SET id = 3 WHERE id = 2;
         INSERT INTO full_items VALUES (1, 'old');
         UPDATE full_items SET note = 'new';
         DELETE FROM items WHERE id = 3;
         DELETE FROM full_items;
         TRUNCATE items;
         BEGIN; SELECT pg_logical_emit_message(true, 'outbox', 'transactional ✓'); COMMIT;
         SELECT pg_logical_emit_message(false, 'outbox', '\\xdeadbeef'::bytea);
         BEGIN; SELECT pg_logical_emit_message(true, 'outbox', 'rolled back'); ROLLBACK;"
    ))
    .await
    .unwrap();

    // The non-transactional message arrives outside any transaction, so read
    // event by event until the transactional one's Commit.
    let mut events = Vec::new();
    loop {
        let e = next_event(&mut reader, Duration::from_secs(30)).await;
        let done = matches!(&e.message, LogicalMessage::Message(m) if !m.transactional);
        events.push(e);
        if done {
            break;
        }
    }
    let mut inserts = Vec::new();
    let mut updates = Vec::new();
    let mut deletes = Vec::new();
    let mut truncates = 0;
    let mut messages = Vec::new();
    for e in &events {
        match &e.message {
            LogicalMessage::Insert(i) => inserts.push((e.relation.clone().unwrap(), i.clone())),
            LogicalMessage::Update(u) => updates.push((e.relation.clone().unwrap(), u.clone())),
            LogicalMessage::Delete(d) => deletes.push((e.relation.clone().unwrap(), d.clone())),
            LogicalMessage::Truncate(t) => {
                truncates += 1;
                assert_eq!(t.relation_oids.len(), 1);
            }
            LogicalMessage::Message(m) => messages.push(m.clone()),
            _ => {}
        }
    }
    assert_eq!(inserts.len(), 3, "two items and one full_items insert");
    let (rel, first) = &inserts[0];
    assert_eq!(rel.name, "items");
    let col = |name: &str| first.new[rel.column_index(name).unwrap()].clone();
    assert_eq!(text(&col("id")).as_deref(), Some("1"));
    assert_eq!(text(&col("note")).as_deref(), Some("grüße ✓"));
    assert_eq!(text(&col("doc")).as_deref(), Some("{\"a\": [1, 2]}"));
    assert_eq!(text(&col("raw")).as_deref(), Some("\\x00ff10"));
    assert_eq!(text(&col("amount")).as_deref(), Some("12345.678"));
    assert_eq!(text(&col("at")).as_deref(), Some("2024-01-02 03:04:05+00"));
    assert_eq!(
        text(&col("uid")).as_deref(),
        Some("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")
    );
    assert_eq!(text(&col("big")).map(|s| s.len()), Some(100_000));
    let second = &inserts[1].1;
    assert_eq!(
        second.new[rel.column_index("note").unwrap()],
        ColumnValue::Null
    );

    assert_eq!(updates.len(), 3);
    // Plain update of a row with a TOASTed column: no old tuple, the untouched TOAST
    // value is sent as "unchanged".
    let (rel, u) = &updates[0];
    assert!(u.old.is_none());
    assert_eq!(
        text(&u.new[rel.column_index("note").unwrap()]).as_deref(),
        Some("changed")
    );
    assert_eq!(
        u.new[rel.column_index("big").unwrap()],
        ColumnValue::UnchangedToast
    );
    // Primary key change: the old key is sent.
    let (rel, u) = &updates[1];
    match &u.old {
        Some(OldTuple::Key(k)) => {
            assert_eq!(
                text(&k[rel.column_index("id").unwrap()]).as_deref(),
                Some("2")
            )
        }
        other => panic!("expected the old key, got {other:?}"),
    }
    // REPLICA IDENTITY FULL: the whole old row.
    let (rel, u) = &updates[2];
    assert_eq!(rel.name, "full_items");
    match &u.old {
        Some(OldTuple::Full(old)) => {
            assert_eq!(text(&old[1]).as_deref(), Some("old"))
        }
        other => panic!("expected the full old row, got {other:?}"),
    }

    assert_eq!(deletes.len(), 2);
    assert!(matches!(deletes[0].1.old, OldTuple::Key(_)));
    assert!(matches!(deletes[1].1.old, OldTuple::Full(_)));
    assert_eq!(truncates, 1);

    assert_eq!(messages.len(), 2, "the rolled-back message must not appear");
    assert!(messages[0].transactional);
    assert_eq!(messages[0].prefix, "outbox");
    assert_eq!(&messages[0].content[..], "transactional ✓".as_bytes());
    assert!(!messages[1].transactional);
    assert_eq!(&messages[1].content[..], &[0xde, 0xad, 0xbe, 0xef]);
    reader.close().await.unwrap();
}

async fn insert_events(db: &TestDb, n: usize, tag: &str) {
    let c = db.connect().await;
    for i in 0..n {
        c.execute(
            "INSERT INTO outbox (id, aggregatetype, aggregateid, type, payload) \
             VALUES (gen_random_uuid(), 'order', $1, 'created', '{}')",
            &[&format!("{tag}-{i}")],
        )
        .await
        .unwrap();
    }
}

fn aggregate_ids(txns: &[Vec<ReplicationEvent>]) -> Vec<String> {
    txns.iter()
        .flat_map(|t| t.iter())
        .filter_map(|e| match (&e.message, &e.relation) {
            (LogicalMessage::Insert(i), Some(rel)) => {
                text(&i.new[rel.column_index("aggregateid").unwrap()])
            }
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn restart_resumes_after_the_confirmed_end_lsn() {
    let db = TestDb::create().await;
    setup(&db, "SELECT 1").await;
    let slot = db.slot_name();
    let (admin, mut reader) = start(&db, &spec(&slot)).await;
    insert_events(&db, 3, "a").await;

    // Acknowledge only the first transaction's end LSN, then close.
    let txns = transactions(&mut reader, 3, false).await;
    assert_eq!(aggregate_ids(&txns), ["a-0", "a-1", "a-2"]);
    let LogicalMessage::Commit(first) = &txns[0].last().unwrap().message else {
        panic!("a transaction ends with its commit")
    };
    reader.acknowledge(first.end_lsn);
    reader.stop_at_transaction_boundary();
    while reader.recv().await.is_some() {}
    let flushed = reader.close().await.unwrap();
    assert_eq!(
        flushed, first.end_lsn,
        "the final status reports the acknowledged end LSN"
    );
    assert_eq!(confirmed_flush(&admin, &slot).await, first.end_lsn);

    // Transaction 2 comes first after a reconnect; 1 is not repeated.
    let (_, mut reader) = start(&db, &spec(&slot)).await;
    let again = transactions(&mut reader, 2, false).await;
    assert_eq!(aggregate_ids(&again), ["a-1", "a-2"]);
    // Confirming nothing: the same two come again.
    reader.close().await.unwrap();
    let (_, mut reader) = start(&db, &spec(&slot)).await;
    let third = transactions(&mut reader, 2, true).await;
    assert_eq!(aggregate_ids(&third), ["a-1", "a-2"]);
    reader.stop_at_transaction_boundary();
    while reader.recv().await.is_some() {}
    reader.close().await.unwrap();
}

#[tokio::test]
async fn a_transaction_larger_than_logical_decoding_work_mem_streams_whole() {
    let db = TestDb::create().await;
    setup(&db, "SELECT 1").await;
    let slot = db.slot_name();
    let (_admin, mut reader) = start(&db, &spec(&slot)).await;
    let c = db.connect().await;
    // ~80 MB of row data in one transaction: beyond the default 64 MB, so the server
    // spills it to disk and still sends it whole, after the commit.
    c.batch_execute(
        "INSERT INTO outbox (id, aggregatetype, aggregateid, type, payload) \
         SELECT gen_random_uuid(), 'bulk', g::text, 'created', \
                jsonb_build_object('pad', repeat('x', 800)) \
         FROM generate_series(1, 100000) g",
    )
    .await
    .unwrap();
    let mut inserts = 0usize;
    let mut next_expected = 1u64;
    loop {
        let e = next_event(&mut reader, Duration::from_secs(120)).await;
        match (&e.message, &e.relation) {
            (LogicalMessage::Insert(i), Some(rel)) => {
                let id = text(&i.new[rel.column_index("aggregateid").unwrap()]).unwrap();
                assert_eq!(
                    id,
                    next_expected.to_string(),
                    "WAL order within the transaction"
                );
                next_expected += 1;
                inserts += 1;
            }
            (LogicalMessage::Commit(c), _) => {
                reader.acknowledge(c.end_lsn);
                break;
            }
            _ => {}
        }
    }
    assert_eq!(inserts, 100_000);
    reader.close().await.unwrap();
}

#[tokio::test]
async fn a_slot_moved_past_what_was_delivered_is_refused() {
    let db = TestDb::create().await;
    setup(&db, "SELECT 1").await;
    let slot = db.slot_name();
    let c = db.connect().await;
    let created: String = c
        .query_one(
            "SELECT lsn::text FROM pg_create_logical_replication_slot($1, 'pgoutput')",
            &[&slot],
        )
        .await
        .unwrap()
        .get(0);
    insert_events(&db, 2, "j").await;
    c.execute(
        "SELECT pg_replication_slot_advance($1, pg_current_wal_lsn())",
        &[&slot],
    )
    .await
    .unwrap();
    let mut s = spec(&slot);
    s.already_delivered = created.parse().unwrap();
    let opts = db.connect_options("postgres");
    let admin = Admin::connect(&opts).await.unwrap();
    let err = open_stream(&opts, &admin, &s).await.unwrap_err();
    let message = err.to_string();
    assert!(
        matches!(err, outboxd_replication::Error::SlotJumped { .. }),
        "{message}"
    );
    assert!(
        message.contains(&slot) && message.contains(&created),
        "{message}"
    );
}

/// A relay that reconnects knows more than the slot when its last confirmations
/// never reached the server: starting at what it already delivered must skip those
/// transactions (no duplicates) and nothing after them.
#[tokio::test]
async fn a_reconnect_starts_after_what_was_already_delivered() {
    let db = TestDb::create().await;
    setup(&db, "SELECT 1").await;
    let slot = db.slot_name();
    let (admin, mut reader) = start(&db, &spec(&slot)).await;
    insert_events(&db, 4, "d").await;
    let txns = transactions(&mut reader, 4, false).await;
    reader.close().await.unwrap();
    let commit_end = |t: &Vec<ReplicationEvent>| match &t.last().unwrap().message {
        LogicalMessage::Commit(c) => c.end_lsn,
        other => panic!("a transaction ends with Commit, not {other:?}"),
    };
    let delivered = commit_end(&txns[1]);
    assert!(
        confirmed_flush(&admin, &slot).await < delivered,
        "the slot must lag behind what was delivered for this test to mean anything"
    );

    let mut s = spec(&slot);
    s.already_delivered = delivered;
    let (_admin, mut reader) = start(&db, &s).await;
    let replayed = transactions(&mut reader, 2, false).await;
    assert_eq!(aggregate_ids(&replayed), ["d-2", "d-3"]);
    assert_eq!(commit_end(&replayed[0]), commit_end(&txns[2]));
    reader.close().await.unwrap();
}

/// The server's words, once: tokio-postgres's own message is only "db error".
#[tokio::test]
async fn an_sql_error_carries_the_server_message_and_its_retry_verdict() {
    let db = TestDb::create().await;
    let mut opts = db.connect_options("postgres");
    opts.dbname = "outboxd_no_such_database".to_owned();
    let err = Admin::connect(&opts).await.unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains(r#"FATAL: database "outboxd_no_such_database" does not exist (3D000)"#),
        "{message}"
    );
    assert!(!message.contains("db error"), "{message}");
    assert_eq!(err.sqlstate(), Some("3D000"));
    assert!(
        !err.is_retryable(),
        "a missing database does not come back by itself"
    );
}

#[tokio::test]
async fn a_slot_of_another_plugin_or_in_use_is_refused_with_a_reason() {
    let db = TestDb::create().await;
    setup(&db, "SELECT 1").await;
    let c = db.connect().await;
    let other = db.slot_name();
    c.execute(
        "SELECT pg_create_logical_replication_slot($1, 'test_decoding')",
        &[&other],
    )
    .await
    .unwrap();
    let opts = db.connect_options("postgres");
    let admin = Admin::connect(&opts).await.unwrap();
    let err = open_stream(&opts, &admin, &spec(&other)).await.unwrap_err();
    assert!(err.to_string().contains("test_decoding"), "{err}");

    let slot = db.slot_name();
    let (_admin, reader) = start(&db, &spec(&slot)).await;
    let err = open_stream(&opts, &admin, &spec(&slot)).await.unwrap_err();
    assert!(
        matches!(err, outboxd_replication::Error::SlotInUse { .. }),
        "{err}"
    );
    assert!(err.is_retryable());
    reader.close().await.unwrap();
}

//! A reader that does not keep up, and an outbox that stays idle: the connection
//! survives, acknowledgements go out promptly and the slot retains no WAL.

use super::*;

/// A reader on a fresh slot with a budget of about one transaction, so that it
/// blocks early on until the consumer lets go of events, under the given
/// `wal_sender_timeout`.
async fn backpressured_reader(
    db: &TestDb,
    wal_sender_timeout: &str,
) -> (Admin, String, ReplicationReader) {
    setup(db, "SELECT 1").await;
    let slot = db.slot_name();
    let mut opts = db.connect_options("postgres");
    opts.options = Some(format!("-c wal_sender_timeout={wal_sender_timeout}"));
    let admin = Admin::connect(&opts).await.unwrap();
    let (stream, _) = open_stream(&opts, &admin, &spec(&slot)).await.unwrap();
    let reader = ReplicationReader::spawn(
        stream,
        ReaderConfig {
            max_buffered_bytes: 4096,
            ..ReaderConfig::default()
        },
    );
    (admin, slot, reader)
}

#[tokio::test]
async fn a_consumer_stalled_beyond_wal_sender_timeout_keeps_the_connection() {
    let db = TestDb::create().await;
    let (admin, slot, mut reader) = backpressured_reader(&db, "2s").await;
    insert_events(&db, 20, "k").await;
    let pid_before = active_pid(&admin, &slot).await;
    assert!(pid_before.is_some(), "a walsender serves the slot");
    tokio::time::sleep(Duration::from_secs(7)).await;
    // Consume without holding on to events (they hold the buffer budget).
    let mut commits = 0;
    while commits < 20 {
        let e = next_event(&mut reader, Duration::from_secs(30)).await;
        if let LogicalMessage::Commit(c) = e.message {
            reader.acknowledge(c.end_lsn);
            commits += 1;
        }
    }
    assert_eq!(
        active_pid(&admin, &slot).await,
        pid_before,
        "the same walsender still serves the slot"
    );
    assert!(!reader.is_finished());
    reader.close().await.unwrap();
}

/// While catching up the reader is backpressured most of the time; the consumer's
/// acknowledgements must still reach the server within the ack delay, not on the
/// status timer (seconds), or a crash then replays seconds of delivered events.
#[tokio::test]
async fn a_backpressured_reader_reports_acknowledgements_promptly() {
    let db = TestDb::create().await;
    // Status timer: 10 s (the default interval; a third of 60 s is more).
    let (admin, slot, mut reader) = backpressured_reader(&db, "60s").await;
    insert_events(&db, 40, "b").await;
    // Hold on to every event (and so to the budget): the reader stays blocked.
    let mut held = Vec::new();
    let first_commit = loop {
        let event = next_event(&mut reader, Duration::from_secs(30)).await;
        let end = match &event.message {
            LogicalMessage::Commit(c) => Some(c.end_lsn),
            _ => None,
        };
        held.push(event);
        if let Some(end) = end {
            break end;
        }
    };
    tokio::time::sleep(Duration::from_millis(500)).await; // the reader fills its budget
    let acked_at = tokio::time::Instant::now();
    reader.acknowledge(first_commit);
    while confirmed_flush(&admin, &slot).await < first_commit {
        assert!(
            acked_at.elapsed() < Duration::from_secs(3),
            "the acknowledgement did not reach the server within 3 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("acknowledgement confirmed after {:?}", acked_at.elapsed());
    drop(held);
    reader.close().await.unwrap();
}

#[tokio::test]
async fn an_idle_outbox_on_a_busy_database_retains_no_wal() {
    let db = TestDb::create().await;
    let c = db.connect().await;
    c.batch_execute(&format!(
        "{OUTBOX_DDL}; CREATE TABLE busy (id bigint, pad text); \
         CREATE PUBLICATION pub FOR TABLE outbox"
    ))
    .await
    .unwrap();
    let slot = db.slot_name();
    let mut s = spec(&slot);
    s.settings.status_interval = Duration::from_secs(1);
    let (admin, mut reader) = start(&db, &s).await;
    let before = admin.wal_end().await.unwrap();
    // ≥ 256 MB of WAL on a table outside the publication.
    for _ in 0..4 {
        c.batch_execute(
            "INSERT INTO busy SELECT g, repeat('w', 1000) FROM generate_series(1, 70000) g",
        )
        .await
        .unwrap();
    }
    let written = admin.wal_end().await.unwrap().0 - before.0;
    assert!(written >= 256 << 20, "wrote only {written} bytes of WAL");
    // PostgreSQL 14 sends empty transactions for tables outside the publication;
    // acknowledge whatever arrives, as a relay would.
    let consumer = tokio::spawn(async move {
        while let Some(e) = reader.recv().await {
            if let LogicalMessage::Commit(c) = e.message {
                reader.acknowledge(c.end_lsn);
            }
        }
        reader
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let lag = loop {
        let info = admin.slot(&slot).await.unwrap().unwrap();
        let lag = info.lag_bytes.unwrap();
        if lag < 16 << 20 || tokio::time::Instant::now() > deadline {
            break lag;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert!(
        lag < 16 << 20,
        "slot lag {lag} bytes after 10 s (wrote {written})"
    );
    consumer.abort();
}

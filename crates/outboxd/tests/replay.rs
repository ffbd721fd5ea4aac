//! End-to-end: `outboxd replay` between the real PostgreSQL and the real Kafka. The
//! live relay publishes the events first; the replay re-publishes a selection of
//! them; an independent consumer compares the two.

#![allow(clippy::unwrap_used, reason = "in tests an unwrap is an assertion")]

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use outboxd_kafka_sink::headers::{COMMIT_TIME, INDEX, LSN, REPLAY, XID};
use outboxd_tests::{
    consume_until, services, unique_name, ConsumedRecord, DedicatedPg, Endpoints, Outbox,
    TestTopics,
};
use tokio::task::block_in_place;
use tokio_postgres::Client;

const OUTBOXD: &str = env!("CARGO_BIN_EXE_outboxd");

/// What `outboxd replay` said and how it ended.
#[derive(Debug)]
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs `outboxd replay <args>` with the outbox's settings.
fn replay(outbox: &Outbox, args: &[&str]) -> Run {
    let out = block_in_place(|| {
        std::process::Command::new(OUTBOXD)
            .arg("replay")
            .args(args)
            .env_remove("OUTBOXD_CONFIG")
            .envs(outbox.env.iter().map(|(k, v)| (k, v)))
            .env("NO_COLOR", "1")
            .output()
            .unwrap()
    });
    let run = Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    println!(
        "outboxd replay {args:?} → {:?}\n{}{}",
        run.code, run.stdout, run.stderr
    );
    run
}

impl Run {
    /// Asserts the exit status and that the output says each of `texts`.
    fn expect(&self, code: i32, texts: &[&str]) {
        assert_eq!(self.code, Some(code), "{self:?}");
        for text in texts {
            let said = self.stdout.contains(text) || self.stderr.contains(text);
            assert!(said, "expected {text:?} in {self:?}");
        }
    }
}

/// Runs `sql` (several statements) on `client`.
async fn exec(client: &Client, sql: &str) {
    client.batch_execute(sql).await.unwrap();
}

/// Inserts one event per `(aggregate type, aggregate id, label)` in one statement of
/// `client`'s open transaction; returns (label, id).
async fn insert(client: &Client, events: &[(&str, &str, &str)]) -> Vec<(String, String)> {
    let values: Vec<String> = events
        .iter()
        .map(|(ty, agg, label)| format!("('{ty}', '{agg}', '{{\"label\": \"{label}\"}}')"))
        .collect();
    let rows = client
        .query(
            &format!(
                "INSERT INTO outbox (aggregatetype, aggregateid, payload) VALUES {} \
                 RETURNING payload->>'label', id::text",
                values.join(", ")
            ),
            &[],
        )
        .await
        .unwrap();
    rows.iter().map(|r| (r.get(0), r.get(1))).collect()
}

/// One transaction with one statement per event.
async fn transaction(client: &Client, events: &[(&str, &str, &str)]) -> Vec<(String, String)> {
    exec(client, "BEGIN").await;
    let mut ids = Vec::new();
    for event in events {
        ids.extend(insert(client, std::slice::from_ref(event)).await);
    }
    exec(client, "COMMIT").await;
    ids
}

async fn now(client: &Client) -> String {
    let row = client
        .query_one("SELECT clock_timestamp()::text", &[])
        .await
        .unwrap();
    row.get(0)
}

/// Reads `topics` from the beginning until `n` records arrived (or `timeout`).
async fn read(topics: &[String], n: usize, timeout: Duration) -> Vec<ConsumedRecord> {
    let topics = topics.to_vec();
    tokio::task::spawn_blocking(move || {
        consume_until(&topics, timeout, |records| records.len() >= n)
    })
    .await
    .unwrap()
}

fn is_replay(r: &ConsumedRecord) -> bool {
    r.header(REPLAY).is_some()
}

/// The ids of one key's records, in their partition's order.
fn order_per_key<'a>(
    records: impl Iterator<Item = &'a ConsumedRecord>,
) -> HashMap<(String, Vec<u8>), Vec<String>> {
    let mut sorted: Vec<&ConsumedRecord> = records.collect();
    sorted.sort_by_key(|r| (r.topic.clone(), r.partition, r.offset));
    let mut out: HashMap<(String, Vec<u8>), Vec<String>> = HashMap::new();
    for r in sorted {
        let key = (r.topic.clone(), r.key.clone().unwrap_or_default());
        out.entry(key).or_default().push(r.header("id").unwrap());
    }
    out
}

/// `headers` without the ones named.
fn without(
    headers: &[(String, Option<Vec<u8>>)],
    names: &[&str],
) -> Vec<(String, Option<Vec<u8>>)> {
    headers
        .iter()
        .filter(|(k, _)| !names.contains(&k.as_str()))
        .cloned()
        .collect()
}

/// Checks each replayed record against the live record with its id: the same topic,
/// partition, key, value and headers, except the position headers (`ignore` more)
/// and the replay header.
fn assert_replayed_like_live(
    live: &[ConsumedRecord],
    replayed: &[ConsumedRecord],
    ignore: &[&str],
) {
    let by_id: HashMap<String, &ConsumedRecord> =
        live.iter().map(|r| (r.header("id").unwrap(), r)).collect();
    let mut skipped = vec![LSN, INDEX];
    skipped.extend_from_slice(ignore);
    for r in replayed {
        let id = r.header("id").unwrap();
        let l = by_id
            .get(&id)
            .unwrap_or_else(|| panic!("replayed {id} was never live"));
        assert_eq!(
            (&r.topic, r.partition, &r.key, &r.value),
            (&l.topic, l.partition, &l.key, &l.value),
            "event {id}"
        );
        let mut expected = without(&l.headers, &skipped);
        expected.push((REPLAY.to_owned(), Some(b"true".to_vec())));
        assert_eq!(without(&r.headers, ignore), expected, "event {id}");
    }
}

/// Checks that each key's replayed records are in the order of its live records;
/// returns the number of keys.
fn assert_live_order(live: &[ConsumedRecord], replayed: &[ConsumedRecord]) -> usize {
    let replayed_ids: HashSet<String> = replayed.iter().map(|r| r.header("id").unwrap()).collect();
    let live_order = order_per_key(
        live.iter()
            .filter(|r| replayed_ids.contains(&r.header("id").unwrap())),
    );
    let replay_order = order_per_key(replayed.iter());
    assert_eq!(replay_order, live_order, "per-aggregate order");
    replay_order.len()
}

/// A time range, by commit timestamps: the replayed records are the live relay's
/// (same topic, partition, key, value, headers, timestamp) without `outboxd.lsn` and
/// `outboxd.index`, plus `outboxd.replay: true`, in the live per-aggregate order —
/// including two transactions on one aggregate that committed in the opposite order
/// of their start, a multi-row statement and a savepoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_time_range_by_commit_timestamp_replays_the_live_records_in_order() {
    let pg = tokio::task::spawn_blocking(DedicatedPg::start)
        .await
        .unwrap();
    let admin = outboxd_tests::pg_connect(&pg.url()).await;
    exec(&admin, "ALTER SYSTEM SET track_commit_timestamp = on").await;
    drop(admin);
    block_in_place(|| {
        pg.stop();
        pg.restart();
    });
    let prefix = unique_name("replay");
    let topics =
        TestTopics::create_named(&[format!("{prefix}.order"), format!("{prefix}.invoice")], 3)
            .await;
    // The time column as a header too: its text must be what pgoutput sends.
    let config = std::env::temp_dir().join(format!("{prefix}.toml"));
    std::fs::write(
        &config,
        "[routing]\nadditional_headers = [{ column = \"type\", header = \"eventType\" }, \
         { column = \"timestamp\", header = \"ts\" }]\n",
    )
    .unwrap();
    let outbox = Outbox::on(
        OUTBOXD,
        Endpoints {
            pg_url: pg.url(),
            relay_pg: ("127.0.0.1".to_owned(), pg.port),
            relay_brokers: services().kafka_brokers.clone(),
            checker_brokers: services().kafka_brokers.clone(),
        },
        &prefix,
        &[("OUTBOXD_CONFIG", config.to_str().unwrap())],
    )
    .await;
    let mut relay = outbox.start("replay-live");
    let c = outbox.connect().await;
    let c2 = outbox.connect().await;
    let mut all = transaction(&c, &[("order", "o-1", "A1"), ("invoice", "i-1", "A2")]).await;
    all.extend(transaction(&c, &[("order", "o-2", "A3")]).await);
    let since = now(&c).await;
    let mut gap = transaction(
        &c,
        &[
            ("order", "o-1", "B1"),
            ("order", "o-1", "B2"),
            ("order", "o-2", "B3"),
            ("invoice", "i-1", "B4"),
        ],
    )
    .await;
    exec(&c, "BEGIN").await;
    let multi_row = [
        ("order", "o-1", "B5"),
        ("order", "o-3", "B6"),
        ("order", "o-1", "B7"),
    ];
    gap.extend(insert(&c, &multi_row).await);
    exec(&c, "COMMIT").await;
    // Started first, committed last: commit order is what counts.
    exec(&c, "BEGIN").await;
    gap.extend(insert(&c, &[("order", "o-4", "B8-started-first")]).await);
    gap.extend(transaction(&c2, &[("order", "o-4", "B9-committed-first")]).await);
    exec(&c, "COMMIT").await;
    exec(&c, "BEGIN").await;
    gap.extend(insert(&c, &[("order", "o-2", "B10")]).await);
    exec(&c, "SAVEPOINT s").await;
    gap.extend(insert(&c, &[("order", "o-2", "B11-savepoint")]).await);
    exec(&c, "RELEASE SAVEPOINT s").await;
    gap.extend(insert(&c, &[("order", "o-2", "B12")]).await);
    exec(&c, "COMMIT").await;
    let until = now(&c).await;
    all.extend(gap.iter().cloned());
    all.extend(transaction(&c, &[("order", "o-1", "C1"), ("invoice", "i-2", "C2")]).await);
    let all = all.len();

    let names = topics.names().to_vec();
    let live = read(&names, all, Duration::from_secs(60)).await;
    assert_eq!(live.len(), all, "the live relay published every event");
    relay.stop_cleanly();

    let range = ["--since", since.as_str(), "--until", until.as_str()];
    replay(&outbox, &[&range[..], &["--dry-run"]].concat()).expect(
        0,
        &[
            &format!("would replay {} rows", gap.len()),
            &format!("{prefix}.order: 11 records"),
            &format!("{prefix}.invoice: 1 records"),
        ],
    );
    replay(&outbox, &[&range[..], &["--batch-size", "4"]].concat()).expect(
        0,
        &[
            &format!("replayed {} rows", gap.len()),
            "in the order of their commit timestamps",
        ],
    );
    let records = read(&names, all + gap.len(), Duration::from_secs(60)).await;
    let replayed: Vec<ConsumedRecord> = records.iter().filter(|r| is_replay(r)).cloned().collect();
    let ids: HashSet<String> = replayed.iter().map(|r| r.header("id").unwrap()).collect();
    let expected: HashSet<String> = gap.iter().map(|(_, id)| id.clone()).collect();
    assert_eq!(ids, expected, "exactly the rows committed in the range");
    assert_eq!(replayed.len(), gap.len(), "each once");

    // The subtransaction's row carries its own xid (its xmin), the relay the
    // top-level one: documented, and compared apart.
    let savepoint = gap
        .iter()
        .find(|(l, _)| l == "B11-savepoint")
        .unwrap()
        .1
        .clone();
    let keys = assert_live_order(&live, &replayed);
    let (sub, rest): (Vec<_>, Vec<_>) = replayed
        .into_iter()
        .partition(|r| r.header("id").as_deref() == Some(savepoint.as_str()));
    assert_replayed_like_live(&live, &rest, &[]);
    assert_replayed_like_live(&live, &sub, &[XID]);
    let live_xid = |id: &str| {
        live.iter()
            .find(|r| r.header("id").as_deref() == Some(id))
            .unwrap()
            .header(XID)
    };
    assert_ne!(sub[0].header(XID), live_xid(&savepoint));
    // With commit timestamps, the record timestamp is the live one too.
    let live_ts: HashMap<String, Option<i64>> = live
        .iter()
        .map(|r| (r.header("id").unwrap(), r.timestamp_ms))
        .collect();
    for r in rest.iter().chain(&sub) {
        assert_eq!(r.timestamp_ms, live_ts[&r.header("id").unwrap()]);
    }
    println!(
        "{} replayed records over {keys} aggregates equal the live ones",
        rest.len() + sub.len()
    );
    std::fs::remove_file(config).ok();
}

/// An id range by Debezium's `timestamp` column (commit timestamps off): a dry run
/// produces nothing; the replay sends the range minus `--exclude-id`, equal to the
/// live records but for the commit time, which only commit timestamps know.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_id_range_by_the_timestamp_column_and_a_dry_run_that_sends_nothing() {
    let outbox = Outbox::on_shared(OUTBOXD, None, &[]).await;
    let mut relay = outbox.start("replay-ids");
    let c = outbox.connect().await;
    let mut events = Vec::new();
    for i in 0..6 {
        let (a, b) = (format!("o-{}", i % 3), format!("o-{}", (i + 1) % 3));
        events.extend(
            transaction(
                &c,
                &[
                    ("order", &a, &format!("{i}a")),
                    ("order", &b, &format!("{i}b")),
                ],
            )
            .await,
        );
    }
    let topics = vec![outbox.topic.clone()];
    let live = read(&topics, events.len(), Duration::from_secs(60)).await;
    assert_eq!(live.len(), events.len());
    relay.stop_cleanly();

    let mut ids: Vec<String> = events.iter().map(|(_, id)| id.clone()).collect();
    ids.sort();
    let (from, to, excluded) = (&ids[2], &ids[9], &ids[5]);
    let range = [
        "--from-id",
        from.as_str(),
        "--to-id",
        to.as_str(),
        "--exclude-id",
        excluded.as_str(),
    ];

    replay(&outbox, &[&range[..], &["--dry-run"]].concat()).expect(
        0,
        &[
            "would replay 7 rows",
            "in the order of their column \"timestamp\"",
            &format!("{}: 7 records", outbox.topic),
        ],
    );
    let after_dry = read(&topics, events.len() + 1, Duration::from_secs(5)).await;
    assert_eq!(
        after_dry.len(),
        events.len(),
        "the dry run produced nothing"
    );

    replay(&outbox, &range).expect(0, &["replayed 7 rows"]);
    let records = read(&topics, events.len() + 7, Duration::from_secs(60)).await;
    let replayed: Vec<ConsumedRecord> = records.into_iter().filter(is_replay).collect();
    let got: HashSet<String> = replayed.iter().map(|r| r.header("id").unwrap()).collect();
    let expected: HashSet<String> = ids[2..=9]
        .iter()
        .filter(|id| *id != excluded)
        .cloned()
        .collect();
    assert_eq!(got, expected);
    assert_eq!(replayed.len(), 7);
    assert_replayed_like_live(&live, &replayed, &[COMMIT_TIME]);
    assert_live_order(&live, &replayed);
    for r in &replayed {
        assert_eq!(
            r.header(COMMIT_TIME),
            None,
            "no commit time without track_commit_timestamp"
        );
    }
}

/// Nothing selected: exit 3 with the explanation (delete in the same transaction)
/// and what can still be done; ids that are not there refuse the whole replay.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_empty_selection_exits_3_and_explains_what_can_still_be_done() {
    let outbox = Outbox::on_shared(OUTBOXD, None, &[]).await;
    let c = outbox.connect().await;
    exec(
        &c,
        "BEGIN; INSERT INTO outbox (aggregatetype, aggregateid, payload) VALUES ('order', 'o-1', '{}'); \
         DELETE FROM outbox; COMMIT;",
    )
    .await;
    let explained = [
        "nothing to replay",
        "public.outbox holds no rows",
        "the Debezium way",
        "re-emit",
        "--postgres-url",
        "pg_logical_emit_message",
    ];
    replay(&outbox, &["--all"]).expect(3, &explained);
    replay(&outbox, &["--all", "--dry-run"]).expect(3, &explained);

    let kept = transaction(&c, &[("order", "o-1", "k1"), ("order", "o-2", "k2")]).await;
    replay(&outbox, &["--since", "2999-01-01T00:00:00Z"])
        .expect(3, &["public.outbox holds 2 rows, times from"]);
    let unknown = "00000000-0000-4000-8000-000000000000";
    replay(&outbox, &["--id", &format!("{},{unknown}", kept[0].1)]).expect(
        1,
        &[&format!(
            "1 of the ids given with --id are not selected (not in the table, or outside \
             --since/--until/--from-id/--to-id, or excluded): {unknown}; nothing was replayed"
        )],
    );
    let nothing = read(
        std::slice::from_ref(&outbox.topic),
        1,
        Duration::from_secs(3),
    )
    .await;
    assert!(nothing.is_empty(), "nothing produced: {nothing:?}");

    // Replaying everything must be asked for.
    replay(&outbox, &["--dry-run"]).expect(2, &["required arguments were not provided", "|--all>"]);
}

/// A row the router refuses, then one Kafka refuses: each stops the replay, named by
/// its id, after the batches before it were acknowledged, and nothing after it is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failure_names_the_row_and_how_far_the_replay_got() {
    let mut outbox = Outbox::on_shared(OUTBOXD, None, &[]).await;
    let c = outbox.connect().await;
    let mut rows = Vec::new();
    rows.extend(transaction(&c, &[("order", "o-1", "r1")]).await);
    rows.extend(transaction(&c, &[("order", "o-2", "r2")]).await);
    rows.extend(transaction(&c, &[("bad/type", "o-3", "r3")]).await);
    // Above the producer's message.max.bytes set below.
    let big = "x".repeat(20_000);
    rows.extend(transaction(&c, &[("order", "o-4", &big)]).await);
    rows.extend(transaction(&c, &[("order", "o-5", "r5")]).await);
    let id = |label: &str| rows.iter().find(|(l, _)| l == label).unwrap().1.clone();
    let topics = vec![outbox.topic.clone()];

    replay(&outbox, &["--all", "--batch-size", "1"]).expect(
        1,
        &[
            &format!("row id={} of public.outbox", id("r3")),
            "not a legal Kafka topic name",
            &format!("2 of 5 rows were replayed, up to id {}", id("r2")),
            "to go on from there, run the same replay with --since '",
        ],
    );
    let sent = read(&topics, 3, Duration::from_secs(5)).await;
    let sent_ids: Vec<String> = sent.iter().map(|r| r.header("id").unwrap()).collect();
    assert_eq!(
        sent_ids,
        vec![id("r1"), id("r2")],
        "the rows before it, nothing after"
    );

    outbox.set_env("OUTBOXD_KAFKA__PRODUCER__MESSAGE_MAX_BYTES", "10000");
    replay(
        &outbox,
        &["--all", "--batch-size", "2", "--exclude-id", &id("r3")],
    )
    .expect(
        1,
        &[
            &format!(
                "Kafka did not take event {} (topic {})",
                id(&big),
                outbox.topic
            ),
            "message.max.bytes",
            &format!("2 of 4 rows were replayed, up to id {}", id("r2")),
        ],
    );
    let sent = read(&topics, 5, Duration::from_secs(5)).await;
    assert_eq!(
        sent.len(),
        4,
        "r1 and r2 again, nothing of r4's batch or after: {sent:?}"
    );
    assert!(sent.iter().all(|r| r.header("id") != Some(id("r5"))));
}

//! The inbox's rules against the real PostgreSQL and Kafka: duplicates, stale
//! events, replays, offsets committed after the transaction, retries, and records
//! that cannot be applied.

mod support;

use std::time::Duration;

use outboxd_inbox::rdkafka::consumer::{BaseConsumer, Consumer};
use outboxd_inbox::rdkafka::{ClientConfig, Offset};
use outboxd_inbox::{Error, Inbox, Tables};
use outboxd_tests::{services, unique_name, TestTopics};
use support::{applied, config, database, produce, producer, start, wait_for, Rec, Recorder};

const WAIT: Duration = Duration::from_secs(60);

fn outboxd(
    id: &'static str,
    lsn: &'static str,
    index: &'static str,
) -> Vec<(&'static str, &'static str)> {
    vec![("id", id), ("outboxd.lsn", lsn), ("outboxd.index", index)]
}

/// The group's committed offset of partition 0.
fn committed(topic: &str, group: &str) -> Offset {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &services().kafka_brokers)
        .set("group.id", group)
        .create()
        .expect("consumer");
    let mut tpl = outboxd_inbox::rdkafka::TopicPartitionList::new();
    tpl.add_partition(topic, 0);
    let offsets = consumer
        .committed_offsets(tpl, Duration::from_secs(10))
        .expect("committed offsets");
    offsets.elements()[0].offset()
}

/// A duplicate (same id) is skipped; an older event with an unknown id is stale
/// and skipped; a replayed older event with an unknown id is applied late without
/// moving the aggregate's version back; a replayed duplicate is still a duplicate;
/// records without version headers are deduplicated by id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_and_stale_events_are_skipped_and_replays_applied_late() {
    let (_db, pool) = database().await;
    let topics = TestTopics::create("inbox_rules", 1, 1).await;
    let topic = &topics.names()[0];
    let p = producer();
    let replay = |mut h: Vec<(&'static str, &'static str)>| {
        h.push(("outboxd.replay", "true"));
        h
    };
    let e1 = outboxd("e1", "0/10", "0");
    let e2 = outboxd("e2", "0/20", "1");
    let stale = outboxd("e3", "0/15", "0");
    let late = replay(outboxd("e4", "0/12", "0"));
    let replayed_e2 = replay(outboxd("e2", "0/20", "1"));
    let records = [
        Rec {
            aggregate: "a",
            seq: 1,
            headers: &e1,
        },
        Rec {
            aggregate: "a",
            seq: 2,
            headers: &e2,
        },
        Rec {
            aggregate: "a",
            seq: 1,
            headers: &e1,
        },
        Rec {
            aggregate: "a",
            seq: 3,
            headers: &stale,
        },
        Rec {
            aggregate: "a",
            seq: 4,
            headers: &late,
        },
        Rec {
            aggregate: "a",
            seq: 2,
            headers: &replayed_e2,
        },
        Rec {
            aggregate: "b",
            seq: 1,
            headers: &[("id", "e5")],
        },
        Rec {
            aggregate: "b",
            seq: 1,
            headers: &[("id", "e5")],
        },
    ];
    produce(&p, topic, &records).await;
    let group = unique_name("inbox_rules");
    let running = start(config(topic, &group), pool.clone(), Recorder::default()).await;
    wait_for("all records", WAIT, || running.done() == 8).await;
    let m = running.metrics.clone();
    running.stop().await.expect("clean stop");
    assert_eq!(
        (m.applied(), m.applied_late(), m.duplicates(), m.stale()),
        (4, 1, 3, 1)
    );
    let got = applied(&pool).await;
    let ids: Vec<&str> = got.iter().map(|r| r.0.as_str()).collect();
    assert_eq!(ids, ["e1", "e2", "e4", "e5"]);
    assert_eq!(got[2].3.as_deref(), Some("0/20:1"), "e4 was late after e2");
    assert_eq!(got[0].3, None);
    let c = pool.get().await.unwrap();
    let version = c
        .query_one(
            "SELECT lsn::text, event_index, event_id FROM inbox_versions WHERE aggregate_id = 'a'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        (
            version.get::<_, String>(0),
            version.get::<_, i64>(1),
            version.get::<_, String>(2)
        ),
        ("0/20".to_owned(), 1, "e2".to_owned()),
        "a late replay does not move the version back"
    );
    let inbox: i64 = c
        .query_one("SELECT count(*) FROM inbox", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(inbox, 4, "only applied events are in the inbox");
    assert_eq!(committed(topic, &group), Offset::Offset(8));
}

/// After a clean stop every applied event's offset is committed; a consumer that
/// reads everything again (a crash before the offset commit looks the same to
/// the database) applies nothing twice. A handler failing twice is retried and
/// applied once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redelivered_events_are_not_applied_again_and_failures_are_retried() {
    let (_db, pool) = database().await;
    let topics = TestTopics::create("inbox_redeliver", 1, 1).await;
    let topic = &topics.names()[0];
    let p = producer();
    let ids: Vec<String> = (0..50).map(|i| format!("r{i}")).collect();
    let lsns: Vec<String> = (0..50).map(|i| format!("0/{:X}", 0x100 + i)).collect();
    let headers: Vec<Vec<(&str, &str)>> = (0..50)
        .map(|i| {
            vec![
                ("id", ids[i].as_str()),
                ("outboxd.lsn", lsns[i].as_str()),
                ("outboxd.index", "0"),
            ]
        })
        .collect();
    let records: Vec<Rec> = (0..50)
        .map(|i| Rec {
            aggregate: "agg",
            seq: i as i64 + 1,
            headers: &headers[i],
        })
        .collect();
    produce(&p, topic, &records).await;
    let flaky = Recorder {
        fail_id: Some("r7".to_owned()),
        fail_first: 2,
        ..Recorder::default()
    };
    let group = unique_name("inbox_first");
    let running = start(config(topic, &group), pool.clone(), flaky.clone()).await;
    wait_for("50 records", WAIT, || running.done() == 50).await;
    let m = running.metrics.clone();
    running.stop().await.expect("clean stop");
    assert_eq!((m.applied(), m.failed_attempts()), (50, 2));
    assert_eq!(flaky.attempts.load(std::sync::atomic::Ordering::SeqCst), 3);
    assert_eq!(committed(topic, &group), Offset::Offset(50));

    let again = start(
        config(topic, &unique_name("inbox_again")),
        pool.clone(),
        Recorder::default(),
    )
    .await;
    wait_for("50 records again", WAIT, || again.done() == 50).await;
    let m = again.metrics.clone();
    again.stop().await.expect("clean stop");
    assert_eq!((m.applied(), m.duplicates()), (0, 50));
    let seqs: Vec<i64> = applied(&pool).await.iter().filter_map(|r| r.2).collect();
    assert_eq!(seqs, (1..=50).collect::<Vec<i64>>(), "each once, in order");
}

/// An event whose handler keeps failing stops the consumer with an error naming
/// it; the events before it are committed, it and those after it are not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_that_keeps_failing_stops_the_consumer_before_it() {
    let (_db, pool) = database().await;
    let topics = TestTopics::create("inbox_poison", 1, 1).await;
    let topic = &topics.names()[0];
    let p = producer();
    let h = |id| vec![("id", id)];
    let (a, b, c) = (h("p0"), h("p1"), h("p2"));
    produce(
        &p,
        topic,
        &[
            Rec {
                aggregate: "x",
                seq: 1,
                headers: &a,
            },
            Rec {
                aggregate: "x",
                seq: 2,
                headers: &b,
            },
            Rec {
                aggregate: "x",
                seq: 3,
                headers: &c,
            },
        ],
    )
    .await;
    let poison = Recorder {
        fail_id: Some("p1".to_owned()),
        fail_first: u32::MAX,
        ..Recorder::default()
    };
    let group = unique_name("inbox_poison");
    let running = start(config(topic, &group), pool.clone(), poison).await;
    let m = running.metrics.clone();
    let error = running.ended(WAIT).await.expect_err("the consumer stops");
    let text = error.to_string();
    assert!(matches!(error, Error::GaveUp { attempts: 5, .. }), "{text}");
    assert!(
        text.contains(&format!("event p1 at {topic}[0]@1")),
        "{text}"
    );
    assert!(text.contains("injected failure"), "{text}");
    assert_eq!(m.applied(), 1);
    assert_eq!(committed(topic, &group), Offset::Offset(1));
    assert_eq!(applied(&pool).await.len(), 1);
}

/// A record without an `id` header cannot be deduplicated: the consumer stops and
/// says which record, and how to move past it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_without_an_id_stops_the_consumer_naming_it() {
    let (_db, pool) = database().await;
    let topics = TestTopics::create("inbox_noid", 1, 1).await;
    let topic = &topics.names()[0];
    let p = producer();
    let good = [("id", "g0")];
    produce(
        &p,
        topic,
        &[
            Rec {
                aggregate: "x",
                seq: 1,
                headers: &good,
            },
            Rec {
                aggregate: "x",
                seq: 2,
                headers: &[],
            },
        ],
    )
    .await;
    let group = unique_name("inbox_noid");
    let running = start(config(topic, &group), pool.clone(), Recorder::default()).await;
    let error = running.ended(WAIT).await.expect_err("the consumer stops");
    let text = error.to_string();
    assert!(text.contains(&format!("record at {topic}[0]@1")), "{text}");
    assert!(text.contains("no 'id' header"), "{text}");
    assert!(text.contains("--to-offset 2"), "{text}");
    assert_eq!(committed(topic, &group), Offset::Offset(1));
}

/// A handler that panics stops the consumer too (its partition would stall),
/// with the events before it committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_handler_stops_the_consumer() {
    let (_db, pool) = database().await;
    let topics = TestTopics::create("inbox_panic", 1, 1).await;
    let topic = &topics.names()[0];
    let (a, b) = ([("id", "k0")], [("id", "k1")]);
    produce(
        &producer(),
        topic,
        &[
            Rec {
                aggregate: "x",
                seq: 1,
                headers: &a,
            },
            Rec {
                aggregate: "x",
                seq: 2,
                headers: &b,
            },
        ],
    )
    .await;
    let panicky = Recorder {
        panic_id: Some("k1".to_owned()),
        ..Recorder::default()
    };
    let group = unique_name("inbox_panic");
    let running = start(config(topic, &group), pool.clone(), panicky).await;
    let error = running.ended(WAIT).await.expect_err("the consumer stops");
    assert!(
        matches!(&error, Error::WorkerPanicked { partition: 0, .. }),
        "{error}"
    );
    assert_eq!(committed(topic, &group), Offset::Offset(1));
}

/// docs/consumers.md shows the inbox DDL exactly as the crate creates it.
#[test]
fn the_documented_ddl_is_the_crates() {
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/consumers.md"
    ))
    .expect("docs/consumers.md");
    assert!(
        doc.contains(&Tables::default().ddl()),
        "docs/consumers.md must contain the DDL of crates/inbox/sql/inbox.sql with the default names"
    );
}

/// Instances starting together all create the tables: concurrent `CREATE TABLE IF
/// NOT EXISTS` of one table fails in all but one of them unless serialized.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn instances_starting_together_all_create_the_tables() {
    let (_db, pool) = database().await;
    let topic = unique_name("inbox_ddl");
    let starts: Vec<_> = (0..8)
        .map(|_| {
            let inbox = Inbox::new(config(&topic, "ddl"), pool.clone()).expect("inbox");
            tokio::spawn(async move { inbox.create_tables().await })
        })
        .collect();
    for start in starts {
        start
            .await
            .expect("task")
            .expect("create_tables succeeds in every instance");
    }
}

//! Instances joining and leaving one group while events flow: every event is
//! applied exactly once, in per-aggregate order, across the rebalances.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use outboxd_tests::{unique_name, TestTopics};
use support::{applied, config, database, produce, producer, start, wait_for, Rec, Recorder};

const AGGREGATES: i64 = 40;
const EVENTS: i64 = 3_000;

/// Writes `EVENTS` events over `AGGREGATES` aggregates with growing versions, and
/// re-sends every tenth batch (the copies an at-least-once relay produces).
async fn write_events(topic: String) {
    let p = producer();
    let mut seq: HashMap<i64, i64> = HashMap::new();
    let mut batch = Vec::new();
    for n in 0..EVENTS {
        let aggregate = n % AGGREGATES;
        let s = seq.entry(aggregate).or_insert(0);
        *s += 1;
        batch.push((
            format!("agg-{aggregate}"),
            *s,
            format!("ev-{n}"),
            format!("0/{:X}", 0x1000 + n),
        ));
        if batch.len() == 20 {
            for _ in 0..if n % 200 == 19 { 2 } else { 1 } {
                let headers: Vec<[(&str, &str); 3]> = batch
                    .iter()
                    .map(|(_, _, id, lsn)| {
                        [
                            ("id", id.as_str()),
                            ("outboxd.lsn", lsn.as_str()),
                            ("outboxd.index", "0"),
                        ]
                    })
                    .collect();
                let records: Vec<Rec> = batch
                    .iter()
                    .zip(&headers)
                    .map(|((aggregate, seq, _, _), h)| Rec {
                        aggregate,
                        seq: *seq,
                        headers: h,
                    })
                    .collect();
                produce(&p, &topic, &records).await;
            }
            batch.clear();
            tokio::time::sleep(Duration::from_millis(40)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn instances_joining_and_leaving_apply_each_event_once_in_order() {
    let (_db, pool) = database().await;
    let topics = TestTopics::create("inbox_rebalance", 1, 6).await;
    let topic = topics.names()[0].clone();
    let group = unique_name("inbox_rebalance");
    let slow = Recorder {
        delay: Duration::from_millis(3),
        ..Recorder::default()
    };
    // Small queues: partitions pause and resume too.
    let config = |topic: &str, group: &str| {
        let mut c = config(topic, group);
        c.queue_per_partition = 8;
        c
    };
    let writer = tokio::spawn(write_events(topic.clone()));
    let a = start(config(&topic, &group), pool.clone(), slow.clone()).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let b = start(config(&topic, &group), pool.clone(), slow.clone()).await;
    wait_for("b to get partitions", Duration::from_secs(30), || {
        b.metrics.assigned_partitions() > 0
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let a_metrics = a.metrics.clone();
    a.stop().await.expect("a stops cleanly");
    let c = start(config(&topic, &group), pool.clone(), slow.clone()).await;
    wait_for("c to get partitions", Duration::from_secs(30), || {
        c.metrics.assigned_partitions() > 0
    })
    .await;
    writer.await.expect("writer");
    let count = |pool: outboxd_inbox::deadpool_postgres::Pool| async move {
        let c = pool.get().await.expect("connection");
        c.query_one("SELECT count(DISTINCT event_id) FROM applied", &[])
            .await
            .expect("count")
            .get::<_, i64>(0)
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while count(pool.clone()).await < EVENTS {
        assert!(std::time::Instant::now() < deadline, "events missing");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (b_metrics, c_metrics) = (b.metrics.clone(), c.metrics.clone());
    b.stop().await.expect("b stops cleanly");
    c.stop().await.expect("c stops cleanly");

    let mut last: HashMap<String, i64> = HashMap::new();
    let mut seen = std::collections::HashSet::new();
    let mut problems = Vec::new();
    for (id, aggregate, seq, _) in applied(&pool).await {
        if !seen.insert(id.clone()) {
            problems.push(format!("{id} applied twice"));
        }
        let prev = last.entry(aggregate.unwrap_or_default()).or_insert(0);
        let seq = seq.unwrap_or(-1);
        if seq != *prev + 1 {
            problems.push(format!("{id}: seq {seq} after {prev}"));
        }
        *prev = seq;
    }
    assert!(
        problems.is_empty(),
        "{:?}",
        &problems[..problems.len().min(10)]
    );
    assert_eq!(seen.len() as i64, EVENTS);
    let applied_total = a_metrics.applied() + b_metrics.applied() + c_metrics.applied();
    let rebalances = a_metrics.rebalances() + b_metrics.rebalances() + c_metrics.rebalances();
    let duplicates = a_metrics.duplicates() + b_metrics.duplicates() + c_metrics.duplicates();
    println!("applied {applied_total}, duplicates skipped {duplicates}, rebalances {rebalances}");
    assert_eq!(applied_total as i64, EVENTS);
    assert!(rebalances >= 4, "{rebalances} rebalances");
    assert!(
        duplicates >= 20 * (EVENTS as u64 / 200),
        "the re-sent batches were skipped"
    );
}

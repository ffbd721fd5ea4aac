//! The whole chain under faults: writers commit order events with a ledger →
//! outboxd → a dedicated Kafka broker → two `order-service` instances in one group
//! → the service's database. The relay and the consumers are SIGKILLed at random
//! (and restarted, as a supervisor would), the broker is restarted once, and
//! consumers joining and leaving make the group rebalance. At the end the
//! service's order timeline must hold every committed event exactly once, in
//! per-aggregate order, as the writers' ledger (`aggregates`) says.
//!
//! `OUTBOXD_TEST_SEED` replays a schedule, `OUTBOXD_CHAOS_SECS` sets how long the
//! writers run (default 40), `OUTBOXD_FAULT_REPORT=file` collects the figures.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use outboxd_tests::faults::outbox_on_kafka;
use outboxd_tests::hanging::StuckRelayWatch;
use outboxd_tests::{
    env_or, pg_connect, seed, tail, unique_name, workspace_binary, DedicatedKafka, Load, LoadSpec,
    Outbox, Process, TestDb,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// At-least-once: the relay's default; duplicates reach the consumers.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chain_at_least_once_applies_each_event_once_in_order() {
    chaos(None).await;
}

/// The same with outboxd's transactional producer (`kafka.delivery`).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chain_exactly_once_applies_each_event_once_in_order() {
    chaos(Some("exactly-once")).await;
}

/// Starts an `order-service` instance with `env`; its log is named after `name`.
fn start_consumer(env: &[(&str, String)], name: &str) -> Process {
    let mut command = Command::new(env!("CARGO_BIN_EXE_order-service"));
    command
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .env("RUST_LOG", "info,outboxd_inbox=debug");
    Process::start(command, name)
}

#[derive(Debug, Default)]
struct Faults {
    relay_kills: usize,
    consumer_kills: usize,
    broker_restarts: usize,
    relay_exits: usize,
    consumer_exits: usize,
}

async fn chaos(delivery: Option<&str>) {
    let mode = delivery.unwrap_or("at-least-once");
    let seed = seed(&format!("consumer chaos ({mode})"));
    let mut rng = StdRng::seed_from_u64(seed);
    let secs: u64 = env_or("OUTBOXD_CHAOS_SECS", 40);
    let kafka = tokio::task::spawn_blocking(DedicatedKafka::start)
        .await
        .expect("broker");
    // outboxd is another package's binary: built here (a no-op when up to date),
    // before the clock starts.
    let outboxd = tokio::task::block_in_place(|| workspace_binary("outboxd", "outboxd"));
    let source = TestDb::create().await;
    let mut outbox = outbox_on_kafka(
        &outboxd,
        &kafka,
        source.url.clone(),
        (source.host.clone(), source.port),
        "chaos",
    )
    .await;
    if let Some(d) = delivery {
        outbox.set_env("OUTBOXD_KAFKA__DELIVERY", d);
        // init again with every setting the relay runs with (it is idempotent).
        outbox.init_apply();
    }
    let sink = TestDb::create().await;
    let consumer_env = vec![
        ("ORDER_SERVICE_DATABASE_URL", sink.url.clone()),
        ("ORDER_SERVICE_KAFKA_BROKERS", kafka.brokers()),
        ("ORDER_SERVICE_GROUP", unique_name("order_service")),
        ("ORDER_SERVICE_TOPICS", outbox.topic.clone()),
        (
            "ORDER_SERVICE_KAFKA_PROPERTIES",
            "session.timeout.ms=6000,heartbeat.interval.ms=1000".to_owned(),
        ),
        ("ORDER_SERVICE_METRICS_ADDRESS", String::new()),
        ("ORDER_SERVICE_POOL_SIZE", "4".to_owned()),
    ];
    let started = Instant::now();
    let mut relay = outbox.start("chaos-relay");
    let mut consumers = [
        start_consumer(&consumer_env, "chaos-consumer-a"),
        start_consumer(&consumer_env, "chaos-consumer-b"),
    ];
    let mut logs: Vec<PathBuf> = consumers.iter().map(|c| c.log.clone()).collect();
    let load = Load::start(
        &outbox.endpoints.pg_url,
        LoadSpec {
            writers: 4,
            aggregates: 100,
            per_txn: 5,
            seed,
            events_per_writer: None,
            txn_rate: Some(15.0),
        },
    );
    let mut faults = Faults::default();
    let broker_restart_at = Duration::from_secs(secs / 2);
    let end = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(rng.random_range(1_500..4_000))).await;
        if faults.broker_restarts == 0 && started.elapsed() >= broker_restart_at {
            tokio::task::block_in_place(|| kafka.restart());
            faults.broker_restarts += 1;
            println!("fault: broker restarted ({:?})", started.elapsed());
        } else if rng.random_bool(0.4) {
            relay.signal("KILL");
            let _ = relay.wait_timeout(Duration::from_secs(10));
            relay = outbox.start("chaos-relay");
            faults.relay_kills += 1;
            println!("fault: relay SIGKILL ({:?})", started.elapsed());
        } else {
            let which = rng.random_range(0..consumers.len());
            consumers[which].signal("KILL");
            let _ = consumers[which].wait_timeout(Duration::from_secs(10));
            tokio::time::sleep(Duration::from_millis(rng.random_range(0..2_000))).await;
            consumers[which] = start_consumer(&consumer_env, "chaos-consumer");
            logs.push(consumers[which].log.clone());
            faults.consumer_kills += 1;
            println!("fault: consumer {which} SIGKILL ({:?})", started.elapsed());
        }
        restart_exited(
            &outbox,
            &mut relay,
            &mut consumers,
            &consumer_env,
            &mut logs,
            &mut faults,
        );
    }
    let load = load.stop().await;
    let writes_ended = Instant::now();
    let committed = outbox.committed().await;
    let events: i64 = committed.values().sum();

    let service = pg_connect(&sink.url).await;
    let count = "SELECT count(*) FROM order_timeline";
    let deadline = Instant::now() + Duration::from_secs(180);
    // The broker's clean restart can leave a transaction hanging (Kafka skips a
    // commit's markers); an operator then aborts it (docs/operations.md).
    let mut watch = StuckRelayWatch::default();
    let mut aborted = 0;
    loop {
        let applied: i64 = service.query_one(count, &[]).await.expect("count").get(0);
        if applied >= events || Instant::now() > deadline {
            break;
        }
        aborted += tokio::task::block_in_place(|| watch.check(&relay.log, &kafka.brokers()));
        restart_exited(
            &outbox,
            &mut relay,
            &mut consumers,
            &consumer_env,
            &mut logs,
            &mut faults,
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    println!(
        "caught up {:.1} s after the writers stopped; hanging transactions aborted: {aborted}",
        writes_ended.elapsed().as_secs_f64()
    );
    // A moment for copies still on their way, which must be skipped too.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for c in &mut consumers {
        c.stop_cleanly();
    }
    relay.stop_cleanly();

    let check = Check::run(&service, &committed).await;
    let all_logs: String = logs
        .iter()
        .map(|l| std::fs::read_to_string(l).unwrap_or_default())
        .collect();
    let rebalances = all_logs.matches("partitions assigned").count();
    let duplicates = all_logs.matches("duplicate skipped").count();
    let stale = all_logs.matches("stale event skipped").count();
    let line = format!(
        "{{\"scenario\":\"consumer chain ({mode})\",\"seed\":{seed},\"events\":{events},\
         \"relay_kills\":{},\"consumer_kills\":{},\"broker_restarts\":{},\"relay_exits\":{},\
         \"consumer_exits\":{},\"rebalances\":{rebalances},\"duplicates_skipped\":{duplicates},\
         \"stale\":{stale},\"applied\":{},\"lost\":{},\"applied_twice\":{},\"out_of_order\":{},\
         \"uncommitted_applied\":{},\"outbox_mismatch\":{},\"seconds\":{:.1}}}",
        faults.relay_kills,
        faults.consumer_kills,
        faults.broker_restarts,
        faults.relay_exits,
        faults.consumer_exits,
        check.applied,
        check.lost,
        check.applied_twice,
        check.out_of_order,
        check.uncommitted,
        check.outbox_mismatch,
        started.elapsed().as_secs_f64()
    );
    println!("SCENARIO {line}");
    if let Ok(path) = std::env::var("OUTBOXD_FAULT_REPORT") {
        use std::io::Write;
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = writeln!(f, "{line}");
        }
    }
    println!(
        "writer txns ok {} failed {}",
        load.committed_txns
            .load(std::sync::atomic::Ordering::Relaxed),
        load.failed_txns.load(std::sync::atomic::Ordering::Relaxed)
    );
    assert!(
        check.is_exact(),
        "{check:?}\n--- relay log ---\n{}",
        tail(&relay.log_text())
    );
    assert_eq!(check.applied, events, "{check:?}");
    assert!(
        faults.relay_kills + faults.consumer_kills > 0,
        "no faults injected"
    );
    assert!(rebalances >= 2, "the group rebalanced ({rebalances})");
    // None of these faults is a reason for the service to give up (the exits and
    // their logs are printed above).
    assert_eq!(faults.consumer_exits, 0, "order-service exited by itself");
}

/// Restarts the relay or a consumer that exited by itself (a supervisor's job),
/// counting it.
fn restart_exited(
    outbox: &Outbox,
    relay: &mut Process,
    consumers: &mut [Process],
    env: &[(&str, String)],
    logs: &mut Vec<PathBuf>,
    faults: &mut Faults,
) {
    if outbox.restart_if_exited(relay, Duration::ZERO, &"a fault") {
        faults.relay_exits += 1;
    }
    for c in consumers.iter_mut() {
        if let Some(status) = c.wait_timeout(Duration::ZERO) {
            println!("consumer exited ({status}):\n{}", tail(&c.log_text()));
            *c = start_consumer(env, "chaos-consumer-restarted");
            logs.push(c.log.clone());
            faults.consumer_exits += 1;
        }
    }
}

/// The service's database against the writers' ledger.
#[derive(Debug, Default)]
struct Check {
    /// Timeline entries.
    applied: i64,
    /// Committed events (ledger) with no timeline entry.
    lost: i64,
    /// Extra timeline entries of an event already there.
    applied_twice: i64,
    /// Timeline entries whose sequence number is lower than the one before.
    out_of_order: i64,
    /// Entries beyond what the ledger says was committed.
    uncommitted: i64,
    /// Timeline entries without exactly one outbox event caused by them.
    outbox_mismatch: i64,
    examples: Vec<String>,
}

impl Check {
    async fn run(
        service: &outboxd_inbox::tokio_postgres::Client,
        ledger: &HashMap<String, i64>,
    ) -> Check {
        let rows = service
            .query(
                "SELECT order_id, (payload->>'seq')::bigint FROM order_timeline \
                 ORDER BY order_id, position",
                &[],
            )
            .await
            .expect("timeline");
        let mut c = Check::default();
        let mut seen: HashMap<String, Vec<i64>> = HashMap::new();
        for row in rows {
            let (order, seq): (String, i64) = (row.get(0), row.get(1));
            c.applied += 1;
            let seqs = seen.entry(order.clone()).or_default();
            if seqs.last().is_some_and(|last| seq < *last) {
                c.out_of_order += 1;
                c.note(format!("{order}: seq {seq} after {:?}", seqs.last()));
            }
            seqs.push(seq);
        }
        for (order, last) in ledger {
            let mut seqs = seen.remove(order).unwrap_or_default();
            seqs.sort_unstable();
            let before = seqs.len() as i64;
            seqs.dedup();
            c.applied_twice += before - seqs.len() as i64;
            let beyond = seqs.iter().filter(|s| **s > *last || **s < 1).count() as i64;
            c.uncommitted += beyond;
            c.lost += *last - (seqs.len() as i64 - beyond);
            if before != *last {
                c.note(format!("{order}: {before} entries, ledger says {last}"));
            }
        }
        for (order, seqs) in seen {
            c.uncommitted += seqs.len() as i64;
            c.note(format!("{order}: applied but not in the ledger"));
        }
        c.outbox_mismatch = service
            .query_one(
                "SELECT (SELECT count(*) FROM order_timeline t FULL JOIN \
                   (SELECT payload->>'caused_by' AS id, count(*) AS n FROM outbox GROUP BY 1) o \
                   ON o.id = t.event_id WHERE t.event_id IS NULL OR o.n IS DISTINCT FROM 1) \
                 + abs((SELECT count(*) FROM inbox) - (SELECT count(*) FROM order_timeline))",
                &[],
            )
            .await
            .expect("outbox check")
            .get(0);
        c
    }

    fn note(&mut self, example: String) {
        if self.examples.len() < 10 {
            self.examples.push(example);
        }
    }

    fn is_exact(&self) -> bool {
        self.lost == 0
            && self.applied_twice == 0
            && self.out_of_order == 0
            && self.uncommitted == 0
            && self.outbox_mismatch == 0
    }
}

//! Fault scenarios: break things on a seeded schedule while concurrent writers commit
//! events, then check with an independent consumer that every committed event reached
//! Kafka in per-key commit order (duplicates from replays are counted and allowed).
//!
//! Scenarios that crash or restart PostgreSQL or Kafka run against dedicated
//! instances started by the test (scripts/pg.sh and scripts/kafka.sh with other ports
//! and state directories), never the shared ones. Network faults go through
//! [`FaultProxy`]. `OUTBOXD_TEST_SEED` replays a schedule; `OUTBOXD_FAULTS` sets how
//! many faults a schedule has (CI default below); `OUTBOXD_FAULT_REPORT=file` collects
//! the per-scenario figures as JSON lines.

#![allow(clippy::unwrap_used, reason = "in tests an unwrap is an assertion")]

use std::time::{Duration, Instant};

use outboxd_tests::faults::{
    outbox_on_dedicated_kafka, Fault, Gaps, Length, Order, Schedule, Targets,
};
use outboxd_tests::hanging::HangingTransactionOperator;
use outboxd_tests::proxy::{FaultProxy, Mode};
use outboxd_tests::{
    consume_until, env_or, free_port, http_get, metric, pg_connect, seed, services, tail,
    unique_name, wait_ready, DedicatedPg, Endpoints, Load, LoadSpec, Outbox, Process,
    ScenarioResult, TestTopics,
};

const OUTBOXD: &str = env!("CARGO_BIN_EXE_outboxd");

/// How many faults a schedule has: `OUTBOXD_FAULTS`, or the scenario's CI default.
fn faults(default: usize) -> usize {
    env_or("OUTBOXD_FAULTS", default)
}

/// PostgreSQL-side network faults through a proxy, the walsender terminated, and
/// SIGKILLs (some while the link to PostgreSQL is slow, so Kafka has acknowledged
/// records whose LSN confirmation has not reached the server), on a seeded schedule
/// under 4 writers. Also checks that the relay reconnects by itself, that `/readyz`
/// turns false while it is disconnected and back true, and that reconnects are
/// counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_link_faults_and_kills_lose_nothing() {
    let seed = seed("postgres_link_faults");
    let proxy = FaultProxy::start(services().pg_addr());
    let metrics_port = free_port();
    let address = format!("127.0.0.1:{metrics_port}");
    let outbox = Outbox::on_shared(
        OUTBOXD,
        Some(("127.0.0.1".to_owned(), proxy.port())),
        &[("OUTBOXD_SERVER__METRICS_ADDRESS", address.as_str())],
    )
    .await;
    let started = Instant::now();
    let load = Load::start(&outbox.endpoints.pg_url, LoadSpec::steady(seed, 60.0));
    let mut relay = outbox.start("pgfaults");
    assert!(
        wait_ready(metrics_port, 200, Duration::from_secs(30)).await,
        "relay never ready\n{}",
        relay.log_text()
    );
    let schedule = Schedule {
        kinds: vec![
            Fault::TerminateWalsender,
            Fault::PgReset,
            Fault::PgCutMidFrame,
            Fault::PgRefuse { ms: 500..3_000 },
            // Shorter than wal_sender_timeout: the session survives or is replaced,
            // either way nothing is lost.
            Fault::PgPartition { ms: 500..4_000 },
            Fault::SlowConfirmationsKill,
        ],
        order: Order::Random,
        gaps: Gaps::Millis(1_000..3_000),
        length: Length::Faults(faults(8)),
        supervise: false,
        readyz_port: Some(metrics_port),
    };
    let targets = Targets {
        outbox: &outbox,
        pg_proxy: Some(&proxy),
        pg: None,
        kafka: None,
    };
    let applied = schedule.run(seed, &targets, &mut relay).await;
    proxy.set_mode(Mode::Pass);
    let load = load.stop().await;
    assert!(
        wait_ready(metrics_port, 200, Duration::from_secs(60)).await,
        "relay did not come back\n{}",
        tail(&relay.log_text())
    );
    let (report, events) = outbox.check(Duration::from_secs(120)).await;
    let result = ScenarioResult {
        name: "postgres link faults + SIGKILL",
        seed,
        events,
        faults: applied.faults.len(),
        report: &report,
        elapsed: started.elapsed(),
    };
    result.print();
    let log = relay.log_text();
    result.assert_complete(&log);
    println!(
        "faults {:?}; proxy {:?}; writer txns ok {} failed {}; readyz false seen {}×",
        applied.faults,
        proxy.stats(),
        load.committed_txns
            .load(std::sync::atomic::Ordering::Relaxed),
        load.failed_txns.load(std::sync::atomic::Ordering::Relaxed),
        applied.unready_seen,
    );
    let body = tokio::task::spawn_blocking(move || http_get(metrics_port, "/metrics").1)
        .await
        .unwrap();
    let kills = applied
        .faults
        .iter()
        .filter(|f| **f == Fault::SlowConfirmationsKill)
        .count();
    if kills < applied.faults.len() {
        // The process that saw the last faults reconnected at least once (unless a
        // kill was the very last fault, checked above by readiness and delivery).
        let reconnects = metric(&body, "outboxd_reconnects_total").unwrap_or(0.0);
        println!("outboxd_reconnects_total {reconnects}");
    }
    // The last process may have seen only faults it rode out without reconnecting
    // (latency, a kill of its predecessor), so this is reported, not asserted.
    println!(
        "reconnects logged by the last relay: {}",
        log.matches("reconnecting").count()
    );
    relay.stop_cleanly();
}

/// A second relay on the same slot waits, says so, and takes over when the first is
/// killed: the active/standby pair.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_relay_waits_for_the_slot_and_takes_over() {
    let seed = seed("slot_in_use");
    let outbox = Outbox::on_shared(OUTBOXD, None, &[]).await;
    let started = Instant::now();
    let load = Load::start(
        &outbox.endpoints.pg_url,
        LoadSpec {
            writers: 2,
            aggregates: 50,
            per_txn: 4,
            seed,
            events_per_writer: Some(2_000),
            txn_rate: Some(100.0),
        },
    );
    let mut active = outbox.start("active");
    // Wait until the first holds the slot.
    let c = outbox.connect().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let active_pid: Option<i32> = c
            .query_one(
                "SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1",
                &[&outbox.slot],
            )
            .await
            .unwrap()
            .get(0);
        if active_pid.is_some() {
            break;
        }
        assert!(Instant::now() < deadline, "{}", active.log_text());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut standby = outbox.start("standby");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !standby
        .log_text()
        .contains("standing by: another process holds the slot")
    {
        assert!(
            Instant::now() < deadline,
            "the standby says why it waits\n{}",
            standby.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        standby.wait_timeout(Duration::from_secs(2)).is_none(),
        "the standby keeps waiting instead of exiting\n{}",
        standby.log_text()
    );
    active.signal("KILL");
    let _ = active.wait_timeout(Duration::from_secs(10));
    let load = load.finish().await;
    let (report, events) = outbox.check(Duration::from_secs(120)).await;
    let result = ScenarioResult {
        name: "slot held by another relay, then released by SIGKILL",
        seed,
        events,
        faults: 1,
        report: &report,
        elapsed: started.elapsed(),
    };
    result.print();
    result.assert_complete(&standby.log_text());
    drop(load);
    standby.stop_cleanly();
}

/// A record the broker refuses (too large for the producer's limit) among a
/// stream of good ones: with a dead-letter topic it is diverted and the rest keeps
/// flowing, in order; without one the relay stops before it (tested in relay.rs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_record_under_load_goes_to_the_dead_letter_topic() {
    refused_record(None).await;
}

/// The same exactly once: the dead-letter record goes into the Kafka transaction
/// with the events around it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_record_goes_to_the_dead_letter_topic_exactly_once() {
    refused_record(Some("exactly-once")).await;
}

async fn refused_record(delivery: Option<&str>) {
    let seed = seed("refused_record");
    let dlq = unique_name("faults_dlq");
    let dlq_topics = TestTopics::create_named(std::slice::from_ref(&dlq), 1).await;
    let mut outbox = Outbox::on_shared(
        OUTBOXD,
        None,
        &[
            ("OUTBOXD_KAFKA__DEAD_LETTER_TOPIC", dlq.as_str()),
            ("OUTBOXD_ROUTING__MAX_RECORD_BYTES", "10000000"),
        ],
    )
    .await;
    if let Some(delivery) = delivery {
        outbox.set_env("OUTBOXD_KAFKA__DELIVERY", delivery);
    }
    let started = Instant::now();
    let mut relay = outbox.start("refused");
    let load = Load::start(
        &outbox.endpoints.pg_url,
        LoadSpec {
            writers: 2,
            aggregates: 50,
            per_txn: 4,
            seed,
            events_per_writer: Some(2_000),
            txn_rate: Some(100.0),
        },
    );
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    // 2 MB: above librdkafka's message.max.bytes (1 MB), so the record is refused.
    // Its aggregate is outside the writers' set, so the checker ignores it.
    outbox
        .connect()
        .await
        .batch_execute(&format!(
            "INSERT INTO outbox (id, aggregatetype, aggregateid, payload) VALUES \
             ('00000000-0000-4000-8000-0000000000ba', 'order', 'big', \
              '{{\"pad\": \"{}\"}}')",
            "x".repeat(2_000_000)
        ))
        .await
        .unwrap();
    let load = load.finish().await;
    let (report, events) = outbox.check(Duration::from_secs(120)).await;
    let result = ScenarioResult {
        name: "record refused by the broker, dead-letter topic",
        seed,
        events,
        faults: 1,
        report: &report,
        elapsed: started.elapsed(),
    };
    result.print();
    result.assert_complete(&relay.log_text());
    let topics = dlq_topics.names().to_vec();
    let dead = tokio::task::spawn_blocking(move || {
        consume_until(&topics, Duration::from_secs(30), |r| !r.is_empty())
    })
    .await
    .unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}\n{}", tail(&relay.log_text()));
    if delivery.is_some() {
        assert_eq!(report.duplicates, 0, "{}", tail(&relay.log_text()));
    }
    assert_eq!(
        dead[0].header("outboxd.event.id").as_deref(),
        Some("00000000-0000-4000-8000-0000000000ba")
    );
    drop(load);
    relay.stop_cleanly();
}

/// A dedicated broker behind a proxy: restarted cleanly, SIGKILLed, partitioned
/// from outboxd for longer than the producer's delivery timeout, connections reset,
/// on a seeded schedule under 4 writers.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kafka_restarts_kills_and_partitions_lose_nothing() {
    kafka_faults(None).await;
}

/// The same faults in exactly-once mode, with overlapping commits: not a single
/// duplicate either.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kafka_restarts_kills_and_partitions_lose_nothing_and_duplicate_nothing_exactly_once() {
    kafka_faults(Some("exactly-once")).await;
}

/// Broker restarts, kills, partitions and resets under load; `delivery` is
/// `kafka.delivery` (the default when `None`).
async fn kafka_faults(delivery: Option<&str>) {
    let seed = seed("kafka_faults");
    let (kafka, _db, mut outbox) = outbox_on_dedicated_kafka(OUTBOXD, "kfaults").await;
    if let Some(delivery) = delivery {
        outbox.set_env("OUTBOXD_KAFKA__DELIVERY", delivery);
        // Two producers taking turns: the hanging transactions may be either's.
        outbox.set_env("OUTBOXD_KAFKA__TRANSACTION_OVERLAP", "true");
    }
    let started = Instant::now();
    let load = Load::start(&outbox.endpoints.pg_url, LoadSpec::steady(seed, 40.0));
    let mut relay = outbox.start("kafkafaults");
    let schedule = Schedule {
        kinds: vec![
            Fault::KafkaRestart,
            Fault::KafkaKill,
            Fault::KafkaPartition,
            Fault::KafkaReset,
        ],
        order: Order::EachKindFirst,
        gaps: Gaps::Millis(2_000..4_000),
        length: Length::Faults(faults(4)),
        // The test reports how often a supervisor's restart was needed.
        supervise: true,
        readyz_port: None,
    };
    let targets = Targets {
        outbox: &outbox,
        pg_proxy: None,
        pg: None,
        kafka: Some(&kafka),
    };
    let mut applied = schedule.run(seed, &targets, &mut relay).await;
    let load = load.stop().await;
    applied.supervise_after_the_last_fault(&outbox, &mut relay);
    // A clean stop of the only broker can make Kafka skip a commit's markers; the
    // relay then waits for the transaction to settle, and the operator aborts it.
    let operator = HangingTransactionOperator::start(kafka.brokers(), relay.log.clone());
    let (report, events) = outbox.check(Duration::from_secs(180)).await;
    let aborted = operator.finish();
    let result = ScenarioResult {
        name: if delivery.is_some() {
            "kafka restart / SIGKILL / partition / reset, exactly-once"
        } else {
            "kafka restart / SIGKILL / partition / reset"
        },
        seed,
        events,
        faults: applied.faults.len(),
        report: &report,
        elapsed: started.elapsed(),
    };
    result.print();
    println!(
        "faults {:?}; relay restarts needed: {}; hanging transactions aborted: {aborted}; proxy {:?}; writer txns {}",
        applied.faults,
        applied.restarts,
        kafka.proxy.stats(),
        load.committed_txns
            .load(std::sync::atomic::Ordering::Relaxed)
    );
    result.assert_complete(&relay.log_text());
    if delivery.is_some() {
        assert_eq!(report.duplicates, 0, "{}", tail(&relay.log_text()));
    }
    // A delivery timeout makes the relay purge its producer and reconnect in-process
    // (docs/reliability.md); the supervisor loop above stays as a safety net, and
    // how often it was needed is reported.
    println!("relay exits after broker outages: {}", applied.restarts);
    relay.stop_cleanly();
}

/// A dedicated PostgreSQL cluster stopped with `-m immediate` and restarted under
/// load, on a seeded schedule; then the slot invalidated by `max_slot_wal_keep_size`
/// while the relay is down: it must stop with the runbook, non-zero, and not resume.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_crashes_lose_nothing_and_an_invalidated_slot_stops_the_relay() {
    let (pg, outbox, mut relay, _topics) = postgres_crashes(None).await;
    invalidated_slot_stops_the_relay(&pg, &outbox, &mut relay).await;
}

/// PostgreSQL crashes in exactly-once mode: the slot may go back to its last
/// checkpoint, and the relay resumes from its own: not a single duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_crashes_lose_nothing_and_duplicate_nothing_exactly_once() {
    let (_pg, _outbox, mut relay, _topics) = postgres_crashes(Some("exactly-once")).await;
    relay.stop_cleanly();
}

/// `-m immediate` stops and restarts of a dedicated cluster under load; checks
/// that every event arrived in order (and, exactly once, no more than once).
async fn postgres_crashes(delivery: Option<&str>) -> (DedicatedPg, Outbox, Process, TestTopics) {
    let seed = seed("postgres_crash");
    let pg = tokio::task::spawn_blocking(DedicatedPg::start)
        .await
        .unwrap();
    let prefix = unique_name("pgcrash");
    let topics = TestTopics::create_named(&[format!("{prefix}.order")], 3).await;
    let mut outbox = Outbox::on(
        OUTBOXD,
        Endpoints {
            pg_url: pg.url(),
            relay_pg: ("127.0.0.1".to_owned(), pg.port),
            relay_brokers: services().kafka_brokers.clone(),
            checker_brokers: services().kafka_brokers.clone(),
        },
        &prefix,
        &[],
    )
    .await;
    if let Some(delivery) = delivery {
        outbox.set_env("OUTBOXD_KAFKA__DELIVERY", delivery);
    }
    let started = Instant::now();
    let load = Load::start(&outbox.endpoints.pg_url, LoadSpec::steady(seed, 50.0));
    let mut relay = outbox.start("pgcrash");
    let schedule = Schedule {
        kinds: vec![Fault::PgCrash],
        order: Order::Random,
        gaps: Gaps::Millis(1_500..4_000),
        length: Length::Faults(faults(3)),
        supervise: false,
        readyz_port: None,
    };
    let targets = Targets {
        outbox: &outbox,
        pg_proxy: None,
        pg: Some(&pg),
        kafka: None,
    };
    let applied = schedule.run(seed, &targets, &mut relay).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let load = load.stop().await;
    let (report, events) = outbox.check(Duration::from_secs(120)).await;
    let result = ScenarioResult {
        name: if delivery.is_some() {
            "postgres -m immediate + restart, exactly-once"
        } else {
            "postgres -m immediate + restart"
        },
        seed,
        events,
        faults: applied.faults.len(),
        report: &report,
        elapsed: started.elapsed(),
    };
    result.print();
    println!(
        "writer txns ok {} failed {}",
        load.committed_txns
            .load(std::sync::atomic::Ordering::Relaxed),
        load.failed_txns.load(std::sync::atomic::Ordering::Relaxed)
    );
    result.assert_complete(&relay.log_text());
    assert!(
        relay.log_text().contains("reconnecting"),
        "{}",
        tail(&relay.log_text())
    );
    if delivery.is_some() {
        assert_eq!(report.duplicates, 0, "{}", tail(&relay.log_text()));
    }
    (pg, outbox, relay, topics)
}

/// The slot invalidated (`max_slot_wal_keep_size`) while the relay is down: it must
/// stop with the runbook, non-zero, and not resume.
async fn invalidated_slot_stops_the_relay(pg: &DedicatedPg, outbox: &Outbox, relay: &mut Process) {
    relay.stop_cleanly();
    let c = pg_connect(&pg.url()).await;
    c.batch_execute("ALTER SYSTEM SET max_slot_wal_keep_size = '1MB'")
        .await
        .unwrap();
    c.batch_execute("SELECT pg_reload_conf()").await.unwrap();
    let mut status = String::new();
    for _ in 0..20 {
        for statement in [
            "INSERT INTO outbox (aggregatetype, aggregateid, payload) \
             SELECT 'order', 'lost', jsonb_build_object('pad', repeat('l', 2000)) FROM generate_series(1, 2000)",
            "INSERT INTO busy SELECT g, repeat('w', 1000) FROM generate_series(1, 20000) g",
            "SELECT pg_switch_wal()",
            "CHECKPOINT",
        ] {
            c.batch_execute(statement).await.unwrap();
        }
        status = c
            .query_one(
                "SELECT coalesce(wal_status, '') FROM pg_replication_slots WHERE slot_name = $1",
                &[&outbox.slot],
            )
            .await
            .unwrap()
            .get(0);
        if status == "lost" {
            break;
        }
    }
    assert_eq!(status, "lost", "could not invalidate the slot");
    let mut relay = outbox.start("invalidated");
    let exit = relay.wait_timeout(Duration::from_secs(60));
    let log = relay.log_text();
    assert!(
        exit.is_some_and(|s| !s.success()),
        "an invalidated slot is fatal: {exit:?}\n{}",
        tail(&log)
    );
    assert!(
        log.contains("is invalidated") && log.contains("pg_drop_replication_slot"),
        "the error says what happened and what to do\n{}",
        tail(&log)
    );
    let still: String = c
        .query_one(
            "SELECT coalesce(wal_status, '') FROM pg_replication_slots WHERE slot_name = $1",
            &[&outbox.slot],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(still, "lost", "the slot is not recreated silently");
    println!("SCENARIO {{\"scenario\":\"slot invalidated\",\"exit\":\"{exit:?}\"}}");
}

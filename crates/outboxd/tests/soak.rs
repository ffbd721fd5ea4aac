//! The soak: a steady load for a long time with a random fault every ~30 s, against
//! a PostgreSQL cluster and a Kafka broker of its own (each behind a fault proxy),
//! then the independent check. Not part of the default run:
//!
//! ```sh
//! eval "$(scripts/pg.sh env)"; eval "$(scripts/kafka.sh env)"
//! OUTBOXD_SOAK_SECS=1800 OUTBOXD_FAULT_REPORT=soak.jsonl \
//!   cargo test -p outboxd --test soak -- --ignored --nocapture
//! ```
//!
//! `OUTBOXD_SOAK_SECS` (1800), `OUTBOXD_SOAK_FAULT_EVERY_SECS` (30, the mean gap),
//! `OUTBOXD_SOAK_TXN_RATE` (transactions per second per writer, 4 writers, 5 events
//! each; 25), `OUTBOXD_SOAK_DELIVERY` (`kafka.delivery`; with `exactly-once` not a
//! single duplicate is allowed), `OUTBOXD_TEST_SEED`.

use std::time::{Duration, Instant};

use outboxd_tests::faults::{outbox_on_kafka, Fault, Gaps, Length, Order, Schedule, Targets};
use outboxd_tests::proxy::FaultProxy;
use outboxd_tests::{env_or, seed, DedicatedKafka, DedicatedPg, Load, LoadSpec, ScenarioResult};

const OUTBOXD: &str = env!("CARGO_BIN_EXE_outboxd");

const FAULTS: &[Fault] = &[
    Fault::TerminateWalsender,
    Fault::PgReset,
    Fault::PgCutMidFrame,
    Fault::PgPartition { ms: 3_000..8_000 },
    Fault::PgRefuse { ms: 1_000..5_000 },
    Fault::SlowConfirmationsKill,
    Fault::PgCrash,
    Fault::KafkaRestart,
    Fault::KafkaKill,
    Fault::KafkaPartition,
    Fault::KafkaReset,
];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "long: run with --ignored (see the module docs)"]
async fn soak() {
    let duration = Duration::from_secs_f64(env_or("OUTBOXD_SOAK_SECS", 1800.0));
    let every = env_or("OUTBOXD_SOAK_FAULT_EVERY_SECS", 30.0);
    let rate = env_or("OUTBOXD_SOAK_TXN_RATE", 25.0);
    let seed = seed("soak");

    let pg = tokio::task::spawn_blocking(DedicatedPg::start)
        .await
        .unwrap();
    let kafka = tokio::task::spawn_blocking(DedicatedKafka::start)
        .await
        .unwrap();
    let pg_proxy = FaultProxy::start(format!("127.0.0.1:{}", pg.port).parse().unwrap());
    let relay_pg = ("127.0.0.1".to_owned(), pg_proxy.port());
    let mut outbox = outbox_on_kafka(OUTBOXD, &kafka, pg.url(), relay_pg, "soak").await;
    let delivery = std::env::var("OUTBOXD_SOAK_DELIVERY").ok();
    if let Some(delivery) = &delivery {
        outbox.set_env("OUTBOXD_KAFKA__DELIVERY", delivery);
    }
    let started = Instant::now();
    let load = Load::start(
        &outbox.endpoints.pg_url,
        LoadSpec {
            writers: 4,
            aggregates: 500,
            per_txn: 5,
            seed,
            events_per_writer: None,
            txn_rate: Some(rate),
        },
    );
    let mut relay = outbox.start("soak");
    let schedule = Schedule {
        kinds: FAULTS.to_vec(),
        order: Order::Random,
        gaps: Gaps::Secs(every * 0.5..every * 1.5),
        length: Length::Until(started + duration),
        supervise: true,
        readyz_port: None,
    };
    let targets = Targets {
        outbox: &outbox,
        pg_proxy: Some(&pg_proxy),
        pg: Some(&pg),
        kafka: Some(&kafka),
    };
    let mut applied = schedule.run(seed, &targets, &mut relay).await;
    let load = load.stop().await;
    applied.supervise_after_the_last_fault(&outbox, &mut relay);
    let (report, events) = outbox.check(Duration::from_secs(600)).await;
    let result = ScenarioResult {
        name: "soak",
        seed,
        events,
        faults: applied.faults.len(),
        report: &report,
        elapsed: started.elapsed(),
    };
    result.print();
    for kind in FAULTS {
        let n = applied.faults.iter().filter(|f| *f == kind).count();
        println!("  {n:>3} × {kind}");
    }
    println!(
        "relay exits (restarted as a supervisor would): {}; writer txns ok {} failed {}",
        applied.restarts,
        load.committed_txns
            .load(std::sync::atomic::Ordering::Relaxed),
        load.failed_txns.load(std::sync::atomic::Ordering::Relaxed)
    );
    result.assert_complete(&relay.log_text());
    if delivery.as_deref() == Some("exactly-once") {
        assert_eq!(report.duplicates, 0, "exactly once: no duplicates");
    }
    relay.signal("TERM");
    let _ = relay.wait_timeout(Duration::from_secs(60));
}

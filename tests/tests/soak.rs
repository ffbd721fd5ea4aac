//! The soak: a steady load for a long time with a random fault every ~30 s, against
//! a PostgreSQL cluster and a Kafka broker of its own (each behind a fault proxy),
//! then the independent check. Not part of the default run:
//!
//! ```sh
//! eval "$(scripts/pg.sh env)"; eval "$(scripts/kafka.sh env)"
//! OUTBOXD_SOAK_SECS=1800 OUTBOXD_FAULT_REPORT=soak.jsonl \
//!   cargo test -p outboxd-tests --test soak -- --ignored --nocapture
//! ```
//!
//! `OUTBOXD_SOAK_SECS` (1800), `OUTBOXD_SOAK_FAULT_EVERY_SECS` (30, the mean gap),
//! `OUTBOXD_SOAK_TXN_RATE` (transactions per second per writer, 4 writers, 5 events
//! each; 25), `OUTBOXD_TEST_SEED`.

use std::time::{Duration, Instant};

use outboxd_tests::proxy::{FaultProxy, Mode};
use outboxd_tests::scenario::{
    seed, tail, DedicatedKafka, DedicatedPg, Endpoints, Load, LoadSpec, Outbox, ScenarioResult,
};
use outboxd_tests::{pg_connect, unique_name};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn env_or(name: &str, default: f64) -> f64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

const FAULTS: &[&str] = &[
    "walsender terminated",
    "postgres connections reset",
    "postgres connection cut mid-frame",
    "postgres partition (3-8 s)",
    "postgres refuses connections (1-5 s)",
    "relay SIGKILL during slow confirmations",
    "postgres -m immediate + restart",
    "kafka clean restart",
    "kafka SIGKILL + start",
    "kafka partition longer than the delivery timeout",
    "kafka connections reset",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "long: run with --ignored (see the module docs)"]
async fn soak() {
    let duration = Duration::from_secs_f64(env_or("OUTBOXD_SOAK_SECS", 1800.0));
    let every = env_or("OUTBOXD_SOAK_FAULT_EVERY_SECS", 30.0);
    let rate = env_or("OUTBOXD_SOAK_TXN_RATE", 25.0);
    let seed = seed("soak");
    let mut rng = StdRng::seed_from_u64(seed);

    let pg = tokio::task::spawn_blocking(DedicatedPg::start)
        .await
        .unwrap();
    let kafka = tokio::task::spawn_blocking(DedicatedKafka::start)
        .await
        .unwrap();
    let pg_proxy = FaultProxy::start(format!("127.0.0.1:{}", pg.port).parse().unwrap());
    let prefix = unique_name("soak");
    kafka.create_topic(&format!("{prefix}.order"), 3);
    let outbox = Outbox::on(
        Endpoints {
            pg_url: pg.url(),
            relay_pg: ("127.0.0.1".to_owned(), pg_proxy.port()),
            relay_brokers: kafka.proxied_brokers(),
            checker_brokers: kafka.brokers(),
        },
        &prefix,
        &[
            ("OUTBOXD_KAFKA__PRODUCER__MESSAGE_TIMEOUT_MS", "8000"),
            ("OUTBOXD_SERVER__SHUTDOWN_TIMEOUT_SECS", "10"),
        ],
    )
    .await;
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
    let mut relay_exits = 0;
    let mut counts = vec![0usize; FAULTS.len()];
    while started.elapsed() < duration {
        let gap = rng.random_range(every * 0.5..every * 1.5);
        tokio::time::sleep(Duration::from_secs_f64(gap)).await;
        let kind = rng.random_range(0..FAULTS.len());
        let t0 = Instant::now();
        match kind {
            0 => {
                let c = pg_connect(&pg.url()).await;
                let _ = c
                    .execute(
                        "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots \
                         WHERE slot_name = $1 AND active_pid IS NOT NULL",
                        &[&outbox.slot],
                    )
                    .await;
            }
            1 => {
                pg_proxy.set_mode(Mode::Reset);
                tokio::time::sleep(Duration::from_millis(300)).await;
                pg_proxy.set_mode(Mode::Pass);
            }
            2 => pg_proxy.cut_mid_frame(),
            3 => {
                pg_proxy.set_mode(Mode::Blackhole);
                tokio::time::sleep(Duration::from_millis(rng.random_range(3_000..8_000))).await;
                pg_proxy.set_mode(Mode::Pass);
            }
            4 => {
                pg_proxy.set_mode(Mode::Refuse);
                tokio::time::sleep(Duration::from_millis(rng.random_range(1_000..5_000))).await;
                pg_proxy.set_mode(Mode::Pass);
            }
            5 => {
                pg_proxy.set_mode(Mode::Latency(Duration::from_millis(
                    rng.random_range(200..1_500),
                )));
                tokio::time::sleep(Duration::from_millis(rng.random_range(500..2_000))).await;
                relay.signal("KILL");
                let _ = relay.wait_timeout(Duration::from_secs(10));
                pg_proxy.set_mode(Mode::Pass);
                relay = outbox.start("soak-after-kill");
            }
            6 => {
                let down = Duration::from_millis(rng.random_range(200..3_000));
                let p = &pg;
                std::thread::scope(|s| {
                    s.spawn(|| {
                        p.crash();
                        std::thread::sleep(down);
                        p.restart();
                    })
                    .join()
                    .unwrap()
                });
            }
            7 => {
                let k = &kafka;
                std::thread::scope(|s| s.spawn(|| k.restart()).join().unwrap());
            }
            8 => {
                let k = &kafka;
                std::thread::scope(|s| {
                    s.spawn(|| {
                        k.kill();
                        k.start_again()
                    })
                    .join()
                    .unwrap()
                });
            }
            9 => {
                kafka.proxy.set_mode(Mode::Blackhole);
                tokio::time::sleep(Duration::from_secs(12)).await;
                kafka.proxy.set_mode(Mode::Pass);
            }
            _ => {
                kafka.proxy.set_mode(Mode::Reset);
                tokio::time::sleep(Duration::from_millis(300)).await;
                kafka.proxy.set_mode(Mode::Pass);
            }
        }
        counts[kind] += 1;
        println!(
            "[{:>5.0} s] fault: {} ({:.1} s)",
            started.elapsed().as_secs_f64(),
            FAULTS[kind],
            t0.elapsed().as_secs_f64()
        );
        // A relay that gave up is restarted, as a supervisor would; counted.
        if let Some(status) = relay.wait_timeout(Duration::from_millis(100)) {
            relay_exits += 1;
            println!(
                "relay exited ({status:?}) after {}:\n{}",
                FAULTS[kind],
                tail(&relay.log_text())
            );
            relay = outbox.start("soak-restarted");
        }
    }
    let load = load.stop().await;
    // A relay about to give up does so within message.timeout.ms (8 s) of the last
    // fault: wait that long before deciding it needs a restart.
    if relay.wait_timeout(Duration::from_secs(10)).is_some() {
        relay_exits += 1;
        relay = outbox.start("soak-final");
    }
    let (report, events) = outbox.check(Duration::from_secs(600)).await;
    let result = ScenarioResult {
        name: "soak",
        seed,
        events,
        faults: counts.iter().sum(),
        report: &report,
        elapsed: started.elapsed(),
    };
    result.print();
    for (name, n) in FAULTS.iter().zip(&counts) {
        println!("  {n:>3} × {name}");
    }
    println!(
        "relay exits (restarted as a supervisor would): {relay_exits}; writer txns ok {} failed {}",
        load.committed_txns
            .load(std::sync::atomic::Ordering::Relaxed),
        load.failed_txns.load(std::sync::atomic::Ordering::Relaxed)
    );
    result.assert_complete(&relay.log_text());
    relay.signal("TERM");
    let _ = relay.wait_timeout(Duration::from_secs(60));
}

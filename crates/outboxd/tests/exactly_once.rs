//! Exactly-once delivery (`kafka.delivery = "exactly-once"`) against the real
//! PostgreSQL and Kafka: whatever is killed, paused or timed out, an independent
//! `read_committed` consumer sees every committed event once, in per-key order.

#![allow(clippy::unwrap_used, reason = "in tests an unwrap is an assertion")]

use std::time::{Duration, Instant};

use outboxd_tests::proxy::{FaultProxy, Mode};
use outboxd_tests::{
    free_port, http_get, metric, seed, services, tail, Load, LoadSpec, Outbox, Process,
};
use rand::{Rng, SeedableRng};

const OUTBOXD: &str = env!("CARGO_BIN_EXE_outboxd");
const EXACTLY_ONCE: (&str, &str) = ("OUTBOXD_KAFKA__DELIVERY", "exactly-once");
/// Two producers taking turns (off by default).
const OVERLAP: (&str, &str) = ("OUTBOXD_KAFKA__TRANSACTION_OVERLAP", "true");

fn load(outbox: &Outbox, per_writer: Option<usize>, rate: Option<f64>, seed: u64) -> Load {
    Load::start(
        &outbox.endpoints.pg_url,
        LoadSpec {
            writers: 4,
            aggregates: 200,
            per_txn: 5,
            seed,
            events_per_writer: per_writer,
            txn_rate: rate,
        },
    )
}

/// Every committed event exactly once, in order.
async fn exactly_once(outbox: &Outbox, relay: &Process, what: &str) -> usize {
    let (report, expected) = outbox.check(Duration::from_secs(180)).await;
    println!(
        "{what}: {expected} events committed, {} delivered, {} duplicates, {} missing, {} out of order",
        report.delivered, report.duplicates, report.missing, report.order_violations
    );
    let log = tail(&relay.log_text());
    report.assert_complete(expected, &log);
    assert_eq!(report.duplicates, 0, "{what}: duplicates\n{log}");
    expected
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_ten_times_under_load_gives_no_duplicate() {
    let outbox = Outbox::on_shared(OUTBOXD, None, &[EXACTLY_ONCE, OVERLAP]).await;
    let seed = seed("eos-sigkill");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let writers = load(&outbox, Some(7_500), Some(150.0), seed);
    for round in 0..10 {
        let relay = outbox.start(&format!("eos-kill{round}"));
        tokio::time::sleep(Duration::from_millis(rng.random_range(500..2_500))).await;
        relay.signal("KILL");
        drop(relay);
    }
    writers.finish().await;
    let mut relay = outbox.start("eos-after-kills");
    exactly_once(&outbox, &relay, "10 SIGKILLs").await;
    relay.stop_cleanly();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_restarts_give_no_duplicate() {
    let outbox = Outbox::on_shared(OUTBOXD, None, &[EXACTLY_ONCE]).await;
    let writers = load(&outbox, Some(3_000), Some(150.0), 3);
    for round in 0..3 {
        let mut relay = outbox.start(&format!("eos-term{round}"));
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        relay.stop_cleanly();
    }
    writers.finish().await;
    let mut relay = outbox.start("eos-after-terms");
    exactly_once(&outbox, &relay, "3 SIGTERM restarts").await;
    relay.stop_cleanly();
}

/// The relay is paused longer than the transaction timeout: the broker aborts the
/// open transaction and bumps the producer's epoch; on resuming the relay's commit
/// fails, it starts a new session and nothing is duplicated.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_transaction_timed_out_by_the_broker_is_resent_without_duplicates() {
    let outbox = Outbox::on_shared(
        OUTBOXD,
        None,
        &[
            EXACTLY_ONCE,
            ("OUTBOXD_KAFKA__PRODUCER__TRANSACTION_TIMEOUT_MS", "2000"),
            // Commits rarely, so that the pause finds a transaction open.
            ("OUTBOXD_KAFKA__TRANSACTION_MAX_MS", "1500"),
        ],
    )
    .await;
    let writers = load(&outbox, Some(1_500), Some(100.0), 4);
    let mut relay = outbox.start("eos-timeout");
    tokio::time::sleep(Duration::from_millis(1_800)).await;
    relay.signal("STOP");
    tokio::time::sleep(Duration::from_secs(5)).await;
    relay.signal("CONT");
    writers.finish().await;
    exactly_once(&outbox, &relay, "a transaction timed out by the broker").await;
    let log = relay.log_text();
    assert!(
        log.contains("Kafka transaction") || log.contains("fenced"),
        "the failed commit is logged:\n{}",
        tail(&log)
    );
    relay.stop_cleanly();
}

/// Two relays on one slot: the second stands by and takes over within about a
/// second of the first being killed; nothing is lost or duplicated.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_standby_takes_over_within_a_second_of_a_sigkill() {
    let outbox = Outbox::on_shared(OUTBOXD, None, &[EXACTLY_ONCE]).await;
    let writers = load(&outbox, None, Some(60.0), 5);
    let active = outbox.start("eos-active");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut standby = outbox.start("eos-standby");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !standby.log_text().contains("standing by") {
        assert!(Instant::now() < deadline, "{}", standby.log_text());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = standby.log_text();
    assert_eq!(
        log.matches("standing by").count(),
        1,
        "one INFO line:\n{log}"
    );
    assert!(
        !log.contains("WARN"),
        "no warning while standing by:\n{log}"
    );
    let killed = Instant::now();
    active.signal("KILL");
    let takeover = loop {
        if standby.log_text().contains("relaying") {
            break killed.elapsed();
        }
        assert!(
            killed.elapsed() < Duration::from_secs(20),
            "{}",
            standby.log_text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    println!("takeover after SIGKILL of the active relay: {takeover:?}");
    // About a second on an idle machine (docs/benchmarks.md measures it); a test
    // on a busy CI machine only bounds it.
    assert!(takeover < Duration::from_secs(5), "{takeover:?}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    writers.stop().await;
    exactly_once(&outbox, &standby, "standby takeover after SIGKILL").await;
    standby.stop_cleanly();
}

/// The active relay is paused (SIGSTOP) longer than `wal_sender_timeout` while
/// writers run: PostgreSQL drops it, the standby takes over and fences its producer.
/// Resumed, the old relay cannot write any more: it notices and stands by.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_paused_relay_is_fenced_when_it_resumes() {
    let mut outbox = Outbox::on_shared(
        OUTBOXD,
        None,
        &[
            EXACTLY_ONCE,
            OVERLAP,
            // Commits rarely, so that the pause finds a transaction open.
            ("OUTBOXD_KAFKA__TRANSACTION_MAX_MS", "1000"),
        ],
    )
    .await;
    let writers = load(&outbox, None, Some(60.0), 6);
    let mut paused = outbox.start("eos-paused");
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    // Without overlapping commits the standby still fences both of the paused
    // relay's transactional ids.
    outbox.set_env(OVERLAP.0, "false");
    let mut standby = outbox.start("eos-standby");
    tokio::time::sleep(Duration::from_secs(1)).await;
    paused.signal("STOP");
    let stopped = Instant::now();
    let takeover = loop {
        if standby.log_text().contains("relaying") {
            break stopped.elapsed();
        }
        assert!(
            stopped.elapsed() < Duration::from_secs(40),
            "{}",
            standby.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    println!("takeover after the active relay was paused: {takeover:?}");
    paused.signal("CONT");
    tokio::time::sleep(Duration::from_secs(3)).await;
    writers.stop().await;
    exactly_once(&outbox, &standby, "paused active relay, standby takeover").await;
    let log = paused.log_text();
    assert!(
        log.contains("another relay took over this slot"),
        "the resumed relay says it was fenced and stands by:\n{}",
        tail(&log)
    );
    standby.stop_cleanly();
    paused.stop_cleanly();
}

/// One PostgreSQL transaction far larger than the in-flight caps spans many Kafka
/// transactions; the relay is killed in the middle of it. The restart resumes after
/// the last committed event of that transaction: nothing twice, memory bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_transaction_killed_in_the_middle_gives_no_duplicate_in_bounded_memory() {
    let proxy = FaultProxy::start(services().pg_addr());
    let mut outbox = Outbox::on_shared(
        OUTBOXD,
        Some(("127.0.0.1".to_owned(), proxy.port())),
        &[
            EXACTLY_ONCE,
            ("OUTBOXD_POSTGRES__MAX_BUFFERED_BYTES", "2097152"),
            ("OUTBOXD_KAFKA__MAX_IN_FLIGHT_BYTES", "4194304"),
            ("OUTBOXD_KAFKA__MAX_IN_FLIGHT_RECORDS", "10000"),
        ],
    )
    .await;
    // One transaction of 100k events with 1 kB payloads: ~110 MB of WAL.
    outbox.commit_one_large_transaction(100_000).await;
    let first = outbox.start("eos-huge-1");
    // Let about a third of it through, then cut the relay off from PostgreSQL: it
    // can commit only part of the transaction to Kafka, however fast it is.
    let deadline = Instant::now() + Duration::from_secs(120);
    while proxy.stats().to_client < 40 << 20 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    proxy.set_mode(Mode::Blackhole);
    let seen = outbox
        .read_events(1_000, Duration::from_secs(60))
        .await
        .len();
    let peak_first = first.peak_rss();
    first.signal("KILL");
    drop(first);
    println!("killed after a read_committed consumer saw {seen} of 100000 events");
    assert!(
        (1_000..100_000).contains(&seen),
        "the kill must land in the middle"
    );
    // The walsender of the killed relay goes with its connection.
    proxy.set_mode(Mode::Reset);
    tokio::time::sleep(Duration::from_millis(200)).await;
    proxy.set_mode(Mode::Pass);
    let metrics_port = free_port();
    outbox.set_env(
        "OUTBOXD_SERVER__METRICS_ADDRESS",
        &format!("127.0.0.1:{metrics_port}"),
    );
    let mut second = outbox.start("eos-huge-2");
    exactly_once(
        &outbox,
        &second,
        "100k-event transaction, killed in the middle",
    )
    .await;
    let peak = peak_first.max(second.peak_rss());
    println!("peak RSS {} MB", peak >> 20);
    assert!(peak > 0 && peak < 100 << 20, "peak RSS {} MB", peak >> 20);
    // The restart resumed inside the transaction: what the killed relay had
    // committed to Kafka was read again from PostgreSQL and left out.
    let body = tokio::task::spawn_blocking(move || http_get(metrics_port, "/metrics").1)
        .await
        .unwrap();
    let skipped = metric(&body, "outboxd_skipped_events_total").unwrap_or(0.0);
    println!("the restart left out {skipped} events already in Kafka");
    let log = second.log_text();
    assert!(
        skipped >= seen as f64
            && skipped < 100_000.0
            && log.contains("resuming inside a partly delivered transaction"),
        "skipped {skipped}\n{}",
        tail(&log)
    );
    second.stop_cleanly();
}

//! Exactly-once delivery under Kafka's ACL authorizer, with a principal whose ACL
//! names its transactional id literally (docs/architecture.md, "Overlapping
//! commits"): without `kafka.transaction_overlap` that is enough, and the relay's
//! registration of the second id (`<id>.2`) is refused and left out; with it, the
//! relay reports the refusal of the second id, and relays once the operator grants
//! it (docs/operations.md, "The exactly-once producer cannot register").

#![allow(clippy::unwrap_used, reason = "in tests an unwrap is an assertion")]

use std::time::{Duration, Instant};

use outboxd_tests::secure_kafka::SecureKafka;
use outboxd_tests::{seed, tail, unique_name, Load, Outbox, TestDb};

const OUTBOXD: &str = env!("CARGO_BIN_EXE_outboxd");

/// Every committed event exactly once, in per-key order.
async fn assert_exactly_once(outbox: &Outbox, expected: usize, log: &str) {
    let (report, committed) = outbox.check(Duration::from_secs(90)).await;
    assert_eq!(committed, expected);
    report.assert_complete(committed, &tail(log));
    assert_eq!(report.duplicates, 0, "duplicates\n{}", tail(log));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_literal_transactional_id_acl_is_enough_unless_commits_overlap() {
    let kafka = tokio::task::spawn_blocking(|| SecureKafka::start_with_acls("outboxd"))
        .await
        .unwrap();
    let prefix = unique_name("acl");
    let id = format!("{prefix}-relay");
    let literal_id = ["--operation", "Write", "--operation", "Describe"];
    tokio::task::block_in_place(|| {
        kafka.grant(&["--operation", "All", "--topic", "*"]);
        kafka.grant(&["--operation", "All", "--group", "*"]);
        kafka.grant(&[&literal_id[..], &["--transactional-id", &id]].concat());
    });
    let db = TestDb::create().await;
    let exactly_once = [
        ("OUTBOXD_KAFKA__DELIVERY", "exactly-once"),
        ("OUTBOXD_KAFKA__TRANSACTIONAL_ID", &id),
    ]
    .map(|(k, v)| (k.to_owned(), v.to_owned()));
    let mut outbox = kafka
        .outbox(OUTBOXD, &db, &prefix, "SCRAM-SHA-512", &exactly_once)
        .await;

    // Overlapping commits off (the default): the literal ACL is enough.
    Load::write(&outbox.endpoints.pg_url, seed("acl_literal"), 250).await;
    let mut relay = outbox.start("acl-literal");
    assert_exactly_once(&outbox, 500, &relay.log_text()).await;
    relay.stop_cleanly();
    let log = relay.log_text();
    assert!(
        log.contains("not authorized for the second transactional id"),
        "the registration of {id}.2 was expected to be refused:\n{}",
        tail(&log)
    );

    // Overlapping commits on: the second id must be granted, and the relay says so.
    outbox.set_env("OUTBOXD_KAFKA__TRANSACTION_OVERLAP", "true");
    Load::write(&outbox.endpoints.pg_url, seed("acl_overlap"), 250).await;
    let relay = outbox.start("acl-overlap");
    let refusal = format!("transactional id {id}.2");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !relay.log_text().contains(&refusal) {
        assert!(
            Instant::now() < deadline,
            "no refusal naming {id}.2 within 60 s:\n{}",
            tail(&relay.log_text())
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let (report, _) = outbox.check(Duration::from_secs(5)).await;
    assert_eq!(report.delivered, 500, "nothing relayed while refused");
    // The runbook's remedy: a prefixed ACL covers both ids; the relay's next
    // attempt succeeds without a restart.
    tokio::task::block_in_place(|| {
        kafka.grant(
            &[
                &literal_id[..],
                &[
                    "--transactional-id",
                    &id,
                    "--resource-pattern-type",
                    "prefixed",
                ],
            ]
            .concat(),
        );
    });
    let mut relay = relay;
    assert_exactly_once(&outbox, 1_000, &relay.log_text()).await;
    relay.stop_cleanly();
}

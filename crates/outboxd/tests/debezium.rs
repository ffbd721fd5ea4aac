//! Golden tests against the real Debezium 3.7.0 (Kafka Connect 4.3.1): for each
//! group of Outbox Event Router settings, the same rows relayed by Debezium and by
//! outboxd — configured by `outboxd migrate` from the very same connector
//! configuration, so each is also a migrate round trip — must give the same topic,
//! key bytes, value bytes, headers, timestamp and partition. Plus the cut-over from
//! a running connector to outboxd on its slot.
//!
//! They need a Kafka Connect worker with Debezium: `scripts/test-debezium.sh` starts
//! one (one worker for all of them) and runs
//! `cargo test -p outboxd --test debezium -- --ignored`.

#![allow(clippy::unwrap_used, reason = "in tests an unwrap is an assertion")]

#[path = "debezium/cutover.rs"]
mod cutover;
#[path = "debezium/golden.rs"]
mod golden;
#[path = "debezium/scenarios.rs"]
mod scenarios;
#[path = "debezium/scenarios_more.rs"]
mod scenarios_more;
#[path = "debezium/tracing_context.rs"]
mod tracing_context;

const OUTBOXD: &str = env!("CARGO_BIN_EXE_outboxd");

//! Test harness shared by every integration test of outboxd.
//!
//! Integration tests run against the real local PostgreSQL and Apache Kafka that
//! `scripts/pg.sh` and `scripts/kafka.sh` start (`scripts/test.sh` starts both and
//! exports their addresses). Each test gets its own database, slot, publication and
//! topics with unique names, so tests run in parallel and never see each other's data;
//! everything is dropped again when the guard goes out of scope, also after a panic.
//!
//! The everyday pieces are re-exported here; the specialised ones stay in their
//! modules: [`faults`] (what scenarios break, and the schedule that breaks it),
//! [`proxy`] (a TCP proxy that injects network faults), [`secure_kafka`] (a broker
//! with SASL_SSL) and [`fake_walsender`] (a replication server that misbehaves).

mod db;
mod dedicated;
mod env;
mod kafka;
mod load;
mod outbox;
mod process;
mod report;

pub mod connect;
pub mod fake_walsender;
pub mod faults;
pub mod hanging;
pub mod pg_cluster;
pub mod proxy;
pub mod secure_kafka;

pub use db::{pg_connect, TestDb};
pub use dedicated::DedicatedKafka;
pub use env::{env_or, free_port, init_tracing, seed, services, unique_name, Services};
pub use kafka::{
    alter_topic, consume_all, consume_until, consume_until_from, delete_topics, kafka_admin,
    produce_one, require_kafka, ConsumedRecord, TestTopics,
};
pub use load::{Load, LoadSpec};
pub use outbox::{Endpoints, Outbox, AGGREGATE_TYPE};
pub use pg_cluster::DedicatedPg;
pub use process::{http_get, metric, outboxd_command, tail, wait_ready, workspace_binary, Process};
pub use report::{assert_no_holes, DeliveryReport, ScenarioResult};

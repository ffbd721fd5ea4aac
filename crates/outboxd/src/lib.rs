//! outboxd: the relay from a PostgreSQL logical replication slot to Kafka.
//!
//! The pieces: [`router`] turns outbox rows and messages into records (pure);
//! [`relay`] runs sessions of replication stream → router → Kafka sink, with its
//! ack tracker deciding which LSN may be confirmed; [`config`] layers file,
//! environment and flags, and [`settings`] turns it into the components'
//! settings; [`http`] serves health and metrics; [`shutdown`] is the one stop
//! signal. [`check`], [`init`], [`tail`] and [`replay`] are the other commands.

pub mod advice;
pub mod check;
pub mod checkpoint;
pub mod config;
pub mod health;
pub mod http;
pub mod init;
pub mod java_properties;
pub mod metrics;
pub mod migrate;
pub mod relay;
pub mod replay;
pub mod router;
pub mod settings;
pub mod shutdown;
pub mod table_catalog;
pub mod tail;
pub mod topics;

//! `[routing]`: how outbox rows and messages become Kafka records.

use serde::{Deserialize, Serialize};

/// How the record key is serialized.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum KeyFormat {
    /// The aggregate id's bytes, as Kafka Connect's StringConverter writes them.
    #[default]
    String,
    /// A JSON string (`"order-1"`), as Connect's JsonConverter (schemas off) writes it.
    Json,
}

/// Names of the outbox table's columns (Debezium's defaults).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ColumnNames {
    pub id: String,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub event_type: String,
    pub payload: String,
}

impl Default for ColumnNames {
    fn default() -> Self {
        ColumnNames {
            id: "id".to_owned(),
            aggregate_type: "aggregatetype".to_owned(),
            aggregate_id: "aggregateid".to_owned(),
            event_type: "type".to_owned(),
            payload: "payload".to_owned(),
        }
    }
}

/// A column placed as a record header (Debezium's `column:header:name`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct HeaderPlacement {
    pub column: String,
    pub header: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RoutingConfig {
    /// Topic template; `${routedByValue}` (or `${aggregatetype}`) is the aggregate type.
    pub topic: String,
    pub key_format: KeyFormat,
    pub columns: ColumnNames,
    /// Further columns as headers, e.g. `{ column = "type", header = "eventType" }`.
    pub additional_headers: Vec<HeaderPlacement>,
    /// Add `outboxd.lsn`, `outboxd.index`, `outboxd.xid`, `outboxd.commit_time`.
    pub source_headers: bool,
    /// Prefix of `pg_logical_emit_message` outbox messages; empty disables them.
    pub message_prefix: String,
    /// Largest key + value accepted; keep it at or below the broker's message.max.bytes.
    pub max_record_bytes: usize,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        RoutingConfig {
            topic: "outbox.event.${routedByValue}".to_owned(),
            key_format: KeyFormat::String,
            columns: ColumnNames::default(),
            additional_headers: Vec::new(),
            source_headers: true,
            message_prefix: "outbox".to_owned(),
            max_record_bytes: 1_000_000,
        }
    }
}

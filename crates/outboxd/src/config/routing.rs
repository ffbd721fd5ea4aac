//! `[routing]`: how outbox rows and messages become Kafka records, with the name of
//! the Outbox Event Router setting each key corresponds to
//! (docs/configuration.md has the full table).
//!
//! `[routing]` applies to every outbox table and to outbox messages;
//! `[routing.tables."schema.table"]` overrides any of its keys for one table.

use std::collections::BTreeMap;

use figment::providers::Serialized;
use figment::value::Dict;
use figment::Figment;
use outboxd_replication::TableName;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RoutingConfig {
    /// Topic name (`route.topic.replacement`): `${routedByValue}` and the other
    /// groups of `topic_regex` (`$1`, `${name}`) are replaced.
    pub topic: String,
    /// What the routed value must match, in full, for `topic` to apply
    /// (`route.topic.regex`); otherwise the routed value itself is the topic.
    pub topic_regex: String,
    pub columns: ColumnNames,
    /// How the key is written (Connect's `key.converter`).
    pub key_format: RecordFormat,
    /// How the value is written (Connect's `value.converter`).
    pub value_format: RecordFormat,
    /// Columns as headers (`table.fields.additional.placement=col:header:name`).
    pub additional_headers: Vec<HeaderPlacement>,
    /// Columns beside the payload in an envelope struct
    /// (`table.fields.additional.placement=col:envelope:name`).
    pub envelope_fields: Vec<EnvelopeField>,
    /// An `int4` column whose value is the partition
    /// (`table.fields.additional.placement=col:partition`).
    pub partition_column: Option<String>,
    /// A placed column the table lacks (`table.field.additional.missing`).
    pub missing_columns: MissingColumns,
    /// A NULL or blank payload becomes a tombstone (`route.tombstone.on.empty.payload`).
    pub tombstone_on_empty_payload: bool,
    /// JSON text payloads become structs (`table.expand.json.payload`).
    pub expand_json_payload: bool,
    /// `table.json.payload.null.behavior`.
    pub json_payload_nulls: JsonPayloadNulls,
    /// `table.json.payload.empty.array.behavior`.
    pub json_payload_empty_arrays: JsonPayloadEmptyArrays,
    /// UPDATEs of an outbox table (`table.op.invalid.behavior`).
    pub invalid_operation: InvalidOperation,
    /// How `bytea` columns are represented (the connector's `binary.handling.mode`).
    pub binary_handling: BinaryHandling,
    /// The connector's `topic.prefix`: it names envelope schemas
    /// (`<logical_name>.<schema>.<table>.<routed value>.Value`) and the context headers.
    pub logical_name: String,
    /// The connector's `extended.headers.enabled`: the `__debezium.context.*` headers.
    pub context_headers: bool,
    /// Add `outboxd.lsn`, `outboxd.index`, `outboxd.xid`, `outboxd.commit_time`.
    pub source_headers: bool,
    /// Largest key + value accepted; keep it at or below the broker's message.max.bytes.
    pub max_record_bytes: usize,
    /// Prefix of `pg_logical_emit_message` outbox messages; empty disables them.
    /// Replaced by `message_prefix_include` / `message_prefix_exclude` when either is set.
    pub message_prefix: String,
    /// Regular expressions; a message is relayed when its prefix matches one in full
    /// (the connector's `message.prefix.include.list`).
    pub message_prefix_include: Vec<String>,
    /// Regular expressions; every message is relayed unless its prefix matches one in
    /// full (`message.prefix.exclude.list`).
    pub message_prefix_exclude: Vec<String>,
    /// Per-table overrides of the keys above, by `schema.table`.
    pub tables: BTreeMap<String, Dict>,
}

/// Keys that apply to all of outboxd and cannot differ per table.
const GLOBAL_KEYS: [&str; 4] = [
    "message_prefix",
    "message_prefix_include",
    "message_prefix_exclude",
    "tables",
];

impl Default for RoutingConfig {
    fn default() -> Self {
        RoutingConfig {
            topic: "outbox.event.${routedByValue}".to_owned(),
            topic_regex: "(?<routedByValue>.*)".to_owned(),
            columns: ColumnNames::default(),
            key_format: RecordFormat::String,
            value_format: RecordFormat::String,
            additional_headers: Vec::new(),
            envelope_fields: Vec::new(),
            partition_column: None,
            missing_columns: MissingColumns::Error,
            tombstone_on_empty_payload: false,
            expand_json_payload: false,
            json_payload_nulls: JsonPayloadNulls::Ignore,
            json_payload_empty_arrays: JsonPayloadEmptyArrays::Ignore,
            invalid_operation: InvalidOperation::Warn,
            binary_handling: BinaryHandling::Bytes,
            logical_name: "outboxd".to_owned(),
            context_headers: false,
            source_headers: true,
            max_record_bytes: 1_000_000,
            message_prefix: "outbox".to_owned(),
            message_prefix_include: Vec::new(),
            message_prefix_exclude: Vec::new(),
            tables: BTreeMap::new(),
        }
    }
}

impl RoutingConfig {
    /// The settings of `table` (`table` or `schema.table`): `[routing]` with the
    /// table's overrides merged in.
    pub fn for_table(&self, table: &str) -> Result<RoutingConfig, String> {
        let base = self.base();
        let wanted = TableName::parse(table).ok();
        let Some((table, overrides)) = self
            .tables
            .iter()
            .find(|(k, _)| TableName::parse(k).ok() == wanted)
        else {
            return Ok(base);
        };
        if let Some(key) = GLOBAL_KEYS.iter().find(|k| overrides.contains_key(**k)) {
            return Err(format!(
                "routing.tables.\"{table}\".{key}: this key applies to every table; set it \
                 under [routing]"
            ));
        }
        Figment::from(Serialized::defaults(base))
            .merge(Serialized::defaults(overrides))
            .extract()
            .map_err(|e| format!("[routing.tables.\"{table}\"]: {e}"))
    }

    /// `[routing]` without the per-table overrides: what messages (and tables without
    /// overrides) use.
    pub fn base(&self) -> RoutingConfig {
        RoutingConfig {
            tables: BTreeMap::new(),
            ..self.clone()
        }
    }

    /// The columns a table's rows must have for this routing: the routed ones, and
    /// the placed ones unless `missing_columns = "ignore"`.
    pub fn required_columns(&self) -> Vec<&str> {
        let c = &self.columns;
        let mut out = vec![
            c.id.as_str(),
            c.aggregate_type.as_str(),
            c.aggregate_id.as_str(),
            c.payload.as_str(),
        ];
        out.extend(c.timestamp.as_deref());
        out.extend(c.schema_version.as_deref());
        if self.missing_columns == MissingColumns::Error {
            out.extend(self.additional_headers.iter().map(|h| h.column.as_str()));
            out.extend(self.envelope_fields.iter().map(|f| f.column.as_str()));
            out.extend(self.partition_column.as_deref());
        }
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Whether messages are relayed at all.
    pub fn relays_messages(&self) -> bool {
        !self.message_prefix.is_empty()
            || !self.message_prefix_include.is_empty()
            || !self.message_prefix_exclude.is_empty()
    }
}

/// How a key or value is serialized: the Kafka Connect converter it matches.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum RecordFormat {
    /// `StringConverter`: text as is, other values as Java prints them.
    #[default]
    String,
    /// `ByteArrayConverter` (also Debezium's `BinaryDataConverter`): bytes as is.
    Bytes,
    /// `JsonConverter` with `schemas.enable=false`.
    Json,
    /// `JsonConverter` with `schemas.enable=true` (Connect's default).
    JsonSchema,
}

impl RecordFormat {
    pub fn is_json(self) -> bool {
        matches!(self, RecordFormat::Json | RecordFormat::JsonSchema)
    }
}

/// Names of the outbox table's columns (Debezium's defaults).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ColumnNames {
    /// The event id, the `id` header (`table.field.event.id`).
    pub id: String,
    /// The routed value (`route.by.field`).
    pub aggregate_type: String,
    /// The record key (`table.field.event.key`).
    pub aggregate_id: String,
    /// The event type (`table.field.event.type`; placed only where configured).
    pub event_type: String,
    /// The record value (`table.field.event.payload`).
    pub payload: String,
    /// The record timestamp (`table.field.event.timestamp`); unset: the commit time.
    pub timestamp: Option<String>,
    /// The envelope schema's version (`table.field.event.schema.version`).
    pub schema_version: Option<String>,
    /// A serialized `java.util.Properties` with a W3C trace context
    /// (`tracing.span.context.field`); empty: no trace headers.
    pub tracing_span_context: String,
}

impl Default for ColumnNames {
    fn default() -> Self {
        ColumnNames {
            id: "id".to_owned(),
            aggregate_type: "aggregatetype".to_owned(),
            aggregate_id: "aggregateid".to_owned(),
            event_type: "type".to_owned(),
            payload: "payload".to_owned(),
            timestamp: None,
            schema_version: None,
            tracing_span_context: "tracingspancontext".to_owned(),
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

/// A column placed in the envelope (Debezium's `column:envelope:name`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct EnvelopeField {
    pub column: String,
    pub field: String,
}

/// `table.field.additional.missing`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum MissingColumns {
    /// The event is unroutable.
    #[default]
    Error,
    /// The placement is left out.
    Ignore,
}

/// `table.json.payload.null.behavior`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum JsonPayloadNulls {
    /// Fields whose value is null are left out of the inferred schema.
    #[default]
    Ignore,
    /// They become optional bytes fields.
    OptionalBytes,
}

/// `table.json.payload.empty.array.behavior`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum JsonPayloadEmptyArrays {
    /// Fields whose value is an empty array are left out.
    #[default]
    Ignore,
    /// They become optional arrays of optional strings.
    OptionalString,
}

/// `table.op.invalid.behavior`: what an UPDATE of an outbox table does.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum InvalidOperation {
    /// Logged as a warning and skipped.
    #[default]
    Warn,
    /// Logged as an error and skipped.
    Error,
    /// Stops the relay before the transaction.
    Fatal,
}

/// The connector's `binary.handling.mode`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum BinaryHandling {
    #[default]
    Bytes,
    Base64,
    Base64UrlSafe,
    Hex,
}

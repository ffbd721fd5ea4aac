//! Outbox events sent with `pg_logical_emit_message` (outboxd's own; Debezium has no
//! equivalent): a JSON envelope routed with `[routing]`'s settings as if it were a
//! row whose `id`, `aggregatetype`, `aggregateid` and `type` are text and whose
//! payload is `jsonb`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::connect::{Datum, Kind, Schema, Text, Value};
use super::route::{OutboxEvent, Route};
use super::{synthetic_id, RouteError, SourcePosition};

/// The JSON envelope of an outbox event sent with `pg_logical_emit_message`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MessageEnvelope {
    /// Event id; defaults to `<commit LSN>:<index>`, stable across re-deliveries.
    #[serde(default)]
    pub id: Option<String>,
    pub aggregatetype: String,
    pub aggregateid: String,
    #[serde(default, rename = "type")]
    pub event_type: Option<String>,
    /// Any JSON; written as its compact JSON text.
    #[serde(default)]
    pub payload: serde_json::Value,
    /// Extra headers, string values.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

fn text(value: Option<String>, optional: bool) -> Datum {
    Datum {
        value: value.map_or(Value::Null, |s| Value::String(Text::from(s))),
        schema: Schema::new(Kind::String, optional),
    }
}

/// The event of a message's content. Header and envelope placements of the event
/// type column take the envelope's `type`; placements of other columns do not
/// apply to messages and are left out.
pub fn event(
    route: &Route,
    content: &[u8],
    position: SourcePosition,
) -> Result<OutboxEvent, RouteError> {
    let envelope: MessageEnvelope = serde_json::from_slice(content).map_err(|e| RouteError {
        event_id: synthetic_id(position),
        position,
        reason: format!(
            "logical message is not an outbox envelope ({e}); expected JSON like \
             {{\"aggregatetype\": …, \"aggregateid\": …, \"type\": …, \"payload\": …}}"
        ),
    })?;
    let payload = match &envelope.payload {
        serde_json::Value::Null => None,
        v => Some(v.to_string()),
    };
    let config = &route.config;
    let event_type = || text(envelope.event_type.clone(), true);
    let mut headers: Vec<_> = config
        .additional_headers
        .iter()
        .filter(|p| p.column == config.columns.event_type)
        .map(|p| (p.header.clone().into(), event_type()))
        .collect();
    headers.extend(
        envelope
            .headers
            .into_iter()
            .map(|(k, v)| (k.into(), text(Some(v), true))),
    );
    let envelope_fields = config
        .envelope_fields
        .iter()
        .filter(|f| f.column == config.columns.event_type)
        .map(|f| (f.field.clone(), event_type()))
        .collect();
    Ok(OutboxEvent {
        route: None,
        id: text(
            Some(envelope.id.unwrap_or_else(|| synthetic_id(position))),
            false,
        ),
        routed_by: text(Some(envelope.aggregatetype), false),
        key: text(Some(envelope.aggregateid), false),
        payload: Datum {
            value: payload.map_or(Value::Null, |p| Value::String(Text::from(p))),
            schema: Schema::named(Kind::String, true, "io.debezium.data.Json", 1),
        },
        timestamp_ms: None,
        schema_version: None,
        headers,
        envelope: envelope_fields,
        partition: None,
        trace: Ok(None),
        source_name: "message".to_owned(),
    })
}

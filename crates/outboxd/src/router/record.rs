//! An event to its Kafka record, in the order Debezium's router and Connect build
//! it: topic, key, value (payload, expanded or wrapped in an envelope, or a
//! tombstone), headers, timestamp and partition.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use outboxd_kafka_sink::{headers as header, HeaderName, Record, RecordMeta};
use outboxd_pgoutput::{pg_time_to_system_time, Lsn};
use rand::Rng;

use super::connect::{Datum, Field, Kind, Schema, Value};
use super::convert::encode;
use super::expand::Expansion;
use super::json;
use super::route::{OutboxEvent, Route};
use super::{synthetic_id, RouteError, SourcePosition};
use crate::config::RecordFormat;

/// The context headers of Debezium's `extended.headers.enabled`.
const CONTEXT_LOGICAL_NAME: &str = "__debezium.context.connectorLogicalName";
const CONTEXT_TASK_ID: &str = "__debezium.context.taskId";
const CONTEXT_CONNECTOR_NAME: &str = "__debezium.context.connectorName";
const CONTEXT_RUN_ID: &str = "__debezium.context.runId";

/// Builds records, keeping what repeats from record to record: the source headers
/// of the current transaction (in a profile of the 1M-event drain, malloc was a
/// fifth of the samples before) and this run's id.
#[derive(Debug)]
pub struct RecordBuilder {
    source: Option<SourceHeaders>,
    /// A UUIDv7 per outboxd process, as Debezium's `runId` is per task start.
    run_id: Bytes,
}

/// Header values shared by every record of a transaction.
#[derive(Debug, Clone)]
struct SourceHeaders {
    commit_lsn: Lsn,
    lsn: Bytes,
    xid: Bytes,
    commit_time: Bytes,
    timestamp_ms: i64,
}

impl SourceHeaders {
    fn of(p: SourcePosition) -> Self {
        let commit_time = pg_time_to_system_time(p.commit_time);
        SourceHeaders {
            commit_lsn: p.commit_lsn,
            lsn: Bytes::from(p.commit_lsn.to_string()),
            xid: Bytes::from(p.xid.to_string()),
            commit_time: Bytes::from(humantime::format_rfc3339_micros(commit_time).to_string()),
            timestamp_ms: unix_millis(commit_time),
        }
    }
}

impl Default for RecordBuilder {
    fn default() -> Self {
        RecordBuilder {
            source: None,
            run_id: Bytes::from(uuid_v7(SystemTime::now())),
        }
    }
}

impl RecordBuilder {
    pub fn build(
        &mut self,
        route: &mut Route,
        event: OutboxEvent,
        position: SourcePosition,
    ) -> Result<Record, RouteError> {
        let event_id = event
            .id
            .value
            .header_string(&event.id.schema)
            .unwrap_or_else(|| synthetic_id(position));
        let fail = |reason: String| RouteError {
            event_id: event_id.clone(),
            position,
            reason,
        };
        let config = &route.config;
        let routed = match &event.routed_by.value {
            Value::String(t) => t.as_str(),
            Value::Null => {
                return Err(fail(format!(
                    "{} is NULL: the topic cannot be chosen",
                    config.columns.aggregate_type
                )))
            }
            _ => {
                return Err(fail(format!(
                    "{} is a {}, not text: the topic cannot be chosen",
                    config.columns.aggregate_type,
                    event.routed_by.schema.type_name()
                )))
            }
        };
        let envelope_name = format!(
            "{}.{}.{routed}.Value",
            config.logical_name, event.source_name
        );
        let topic = route.topics.topic(routed).map_err(fail)?;
        let key =
            encode(config.key_format, Some(&event.key)).map_err(|e| fail(format!("key: {e}")))?;
        let payload = self
            .expanded(route, event.payload, &event_id)
            .map_err(&fail)?;
        let config = &route.config;
        let value = match payload {
            Payload::Schemaless(text) => Some(schemaless_json(config.value_format, &text)),
            Payload::Datum(payload) => {
                let tombstone = config.tombstone_on_empty_payload && is_empty(&payload.value);
                let value_datum = if tombstone {
                    None
                } else if config.envelope_fields.is_empty() {
                    Some(payload)
                } else {
                    let version = event.schema_version;
                    Some(envelope(envelope_name, version, payload, event.envelope))
                };
                encode(config.value_format, value_datum.as_ref())
                    .map_err(|e| fail(format!("value: {e}")))?
            }
        };
        let size = key.as_ref().map_or(0, Bytes::len) + value.as_ref().map_or(0, Bytes::len);
        if size > config.max_record_bytes {
            return Err(fail(format!(
                "the record is {size} bytes, above routing.max_record_bytes = {} (the broker's \
                 message.max.bytes): shrink the payload or raise both limits",
                config.max_record_bytes
            )));
        }
        if let Some(p) = event.partition.filter(|p| *p < 0) {
            return Err(fail(format!(
                "partition column holds {p}: Invalid partition"
            )));
        }
        let mut headers: Vec<(HeaderName, Option<Bytes>)> =
            Vec::with_capacity(8 + event.headers.len());
        if config.context_headers {
            headers.extend([
                (
                    CONTEXT_LOGICAL_NAME.into(),
                    Some(Bytes::from(config.logical_name.clone())),
                ),
                (CONTEXT_TASK_ID.into(), Some(Bytes::from_static(b"0"))),
                (
                    CONTEXT_CONNECTOR_NAME.into(),
                    Some(Bytes::from_static(b"postgresql")),
                ),
                (CONTEXT_RUN_ID.into(), Some(self.run_id.clone())),
            ]);
        }
        match event.trace {
            Ok(Some(trace)) => {
                headers.push(("traceparent".into(), Some(Bytes::from(trace.traceparent))));
                if let Some(state) = trace.tracestate {
                    headers.push(("tracestate".into(), Some(Bytes::from(state))));
                }
            }
            Ok(None) => {}
            Err(reason) => {
                tracing::warn!(event_id = %event_id, lsn = %position.commit_lsn, reason = %reason, "trace context not usable; the record goes out without trace headers");
            }
        }
        headers.push((
            header::ID.into(),
            event
                .id
                .value
                .header_string(&event.id.schema)
                .map(Bytes::from),
        ));
        headers.extend(event.headers.into_iter().map(|(name, d)| {
            let value = d.value.header_string(&d.schema).map(Bytes::from);
            (name, value)
        }));
        let source = match &self.source {
            Some(s) if s.commit_lsn == position.commit_lsn => s,
            _ => self.source.insert(SourceHeaders::of(position)),
        };
        if config.source_headers {
            headers.extend([
                (header::LSN.into(), Some(source.lsn.clone())),
                (
                    header::INDEX.into(),
                    Some(Bytes::from(position.index.to_string())),
                ),
                (header::XID.into(), Some(source.xid.clone())),
                (header::COMMIT_TIME.into(), Some(source.commit_time.clone())),
            ]);
        }
        Ok(Record {
            topic,
            key,
            partition: event.partition,
            value,
            headers,
            timestamp_ms: Some(event.timestamp_ms.unwrap_or(source.timestamp_ms)),
            meta: RecordMeta {
                event_id,
                lsn: position.commit_lsn.0,
                index: position.index,
            },
        })
    }

    /// The payload, expanded into a struct when configured and possible; when not,
    /// it stays text and the reason is logged, as in Debezium. A broken expansion (see
    /// [`Expansion::Broken`]) fails the record as it fails Connect, except where
    /// Connect would write the text anyway.
    fn expanded(&self, route: &Route, payload: Datum, event_id: &str) -> Result<Payload, String> {
        if !route.config.expand_json_payload {
            return Ok(Payload::Datum(payload));
        }
        let Value::String(text) = &payload.value else {
            if !payload.value.is_null() {
                tracing::warn!(event_id = %event_id, "expand_json_payload is on but the payload is not text; it is written as it is");
            }
            return Ok(Payload::Datum(payload));
        };
        let config = &route.config;
        match route
            .expander
            .expand(&config.columns.payload, text.as_str())
        {
            Expansion::Expanded(schema, value) => Ok(Payload::Datum(Datum { value, schema })),
            Expansion::Unchanged(reason) => {
                tracing::warn!(event_id = %event_id, reason = %reason, "JSON expansion failed; the payload is written as text");
                Ok(Payload::Datum(payload))
            }
            Expansion::Broken(schema, reason) => {
                tracing::warn!(event_id = %event_id, reason = %reason, "JSON expansion failed after its schema was inferred");
                let fails = |why: &str| {
                    Err(format!(
                        "JSON expansion of the payload failed after Debezium would have \
                         inferred its schema ({reason}): {why}, so Debezium fails on this record \
                         too. Fix the payload, or turn expand_json_payload off"
                    ))
                };
                match (config.value_format, schema) {
                    _ if !config.envelope_fields.is_empty() => fails("the envelope cannot hold it"),
                    (RecordFormat::String, _) => Ok(Payload::Datum(payload)),
                    (RecordFormat::Json | RecordFormat::JsonSchema, None) => {
                        Ok(Payload::Schemaless(text.as_str().to_owned()))
                    }
                    _ => fails("the value converter cannot write text with that schema"),
                }
            }
        }
    }
}

/// The payload to write: a datum, or text without a schema (what Connect has after
/// an expansion that inferred an empty schema).
#[derive(Debug)]
enum Payload {
    Datum(Datum),
    Schemaless(String),
}

/// Text without a schema as JsonConverter writes it (a JSON string; with schemas
/// in an envelope whose schema is null).
fn schemaless_json(format: RecordFormat, text: &str) -> Bytes {
    let mut out = String::new();
    if format == RecordFormat::JsonSchema {
        out.push_str("{\"schema\":null,\"payload\":");
        json::write_string(&mut out, text);
        out.push('}');
    } else {
        json::write_string(&mut out, text);
    }
    Bytes::from(out)
}

/// Debezium's `payload == null || payload.toString().trim().isEmpty()`; Java's
/// `trim` removes characters up to U+0020.
fn is_empty(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::String(t) => t.as_str().trim_matches(|c| c <= ' ').is_empty(),
        _ => false,
    }
}

/// The envelope struct: the payload, then the envelope fields, named
/// `<logical name>.<schema>.<table>.<routed value>.Value` as Debezium names it.
fn envelope(
    name: String,
    version: Option<i32>,
    payload: Datum,
    fields: Vec<(String, Datum)>,
) -> Datum {
    let mut schema_fields = Vec::with_capacity(1 + fields.len());
    let mut values = Vec::with_capacity(1 + fields.len());
    schema_fields.push(Field {
        name: "payload".to_owned(),
        schema: payload.schema,
    });
    values.push(payload.value);
    for (field, datum) in fields {
        schema_fields.push(Field {
            name: field,
            schema: datum.schema,
        });
        values.push(datum.value);
    }
    Datum {
        value: Value::Struct(values),
        schema: Schema {
            name: Some(name.into()),
            version,
            ..Schema::new(Kind::Struct(schema_fields), false)
        },
    }
}

fn unix_millis(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_millis()
        .try_into()
        .unwrap_or(i64::MAX)
}

/// A version 7 UUID (RFC 9562): 48 bits of Unix milliseconds, then random bits.
fn uuid_v7(now: SystemTime) -> String {
    let ms = u64::try_from(unix_millis(now)).unwrap_or(0) & 0xFFFF_FFFF_FFFF;
    let mut rng = rand::rng();
    let a: u16 = rng.random::<u16>() & 0x0FFF | 0x7000;
    let b: u16 = rng.random::<u16>() & 0x3FFF | 0x8000;
    let c: u64 = rng.random::<u64>() & 0xFFFF_FFFF_FFFF;
    format!(
        "{:08x}-{:04x}-{a:04x}-{b:04x}-{c:012x}",
        ms >> 16,
        ms & 0xFFFF
    )
}

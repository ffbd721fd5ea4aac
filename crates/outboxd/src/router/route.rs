//! One route: the settings of an outbox table (or of outbox messages), compiled,
//! and the reading of a row into an [`OutboxEvent`].

use std::collections::HashMap;

use outboxd_kafka_sink::HeaderName;
use outboxd_pgoutput::{ColumnValue, Relation};
use outboxd_replication::TableName;

use super::catalog::Catalog;
use super::connect::{Datum, Kind, Value};
use super::expand::Expander;
use super::layout::{Col, Layout};
use super::temporal::{micros_to_millis, parse_timestamp};
use super::topic::TopicNamer;
use super::trace_context::{self, TraceHeaders};
use super::{synthetic_id, RouteError, SourcePosition};
use crate::config::{RecordFormat, RoutingConfig};

/// The fields of one outbox event, however it arrived, as Connect values.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxEvent {
    /// The table route it belongs to; `None`: a logical message.
    pub(super) route: Option<usize>,
    pub id: Datum,
    /// The value routed by (`route.by.field`).
    pub routed_by: Datum,
    pub key: Datum,
    pub payload: Datum,
    /// The record timestamp from a column, when configured and not NULL.
    pub timestamp_ms: Option<i64>,
    /// The envelope schema's version (`table.field.event.schema.version`).
    pub schema_version: Option<i32>,
    pub headers: Vec<(HeaderName, Datum)>,
    pub envelope: Vec<(String, Datum)>,
    pub partition: Option<i32>,
    /// The trace context, or why the row's context cannot be used (logged; the
    /// record goes out without trace headers, as a new trace would start in Debezium).
    pub trace: Result<Option<TraceHeaders>, String>,
    /// `<schema>.<table>` for envelope schema names (a message: its prefix).
    pub source_name: String,
}

/// A route's settings and what is compiled from them.
#[derive(Debug)]
pub struct Route {
    pub config: RoutingConfig,
    pub topics: TopicNamer,
    pub expander: Expander,
    table: Option<TableName>,
    /// Layouts by table OID.
    layouts: HashMap<u32, Layout>,
}

impl Route {
    pub fn new(config: RoutingConfig, table: Option<TableName>) -> Result<Route, String> {
        let topics = TopicNamer::new(&config.topic_regex, &config.topic)?;
        let wraps = config.expand_json_payload || !config.envelope_fields.is_empty();
        if config.value_format == RecordFormat::Bytes && wraps {
            return Err(format!(
                "{}value_format = \"bytes\" (ByteArrayConverter) cannot write the struct that \
                 envelope_fields or expand_json_payload make; Debezium fails the same way. Use \
                 \"string\" or a JSON format",
                table
                    .as_ref()
                    .map_or(String::new(), |t| format!("routing for {t}: "))
            ));
        }
        Ok(Route {
            expander: Expander {
                nulls: config.json_payload_nulls,
                empty_arrays: config.json_payload_empty_arrays,
            },
            topics,
            config,
            table,
            layouts: HashMap::new(),
        })
    }

    /// JSON schemas say which columns are optional and their defaults; JSON values
    /// replace nulls with defaults: both need the catalog.
    pub fn needs_catalog(&self) -> bool {
        self.config.key_format.is_json() || self.config.value_format.is_json()
    }

    pub fn forget_layouts(&mut self) {
        self.layouts.clear();
    }

    fn layout(&mut self, relation: &Relation, catalog: &Catalog) -> &Layout {
        let stale = self
            .layouts
            .get(&relation.oid)
            .is_none_or(|l| !l.fits(relation));
        if stale {
            if self.layouts.len() > 64 {
                self.layouts.clear();
            }
            self.layouts
                .insert(relation.oid, Layout::new(relation, &self.config, catalog));
        }
        &self.layouts[&relation.oid]
    }

    /// The id column's text in a row, if it can be read (for log lines).
    pub fn event_id_of(&self, relation: &Relation, row: &[ColumnValue]) -> Option<String> {
        let idx = relation.column_index(&self.config.columns.id)?;
        match row.get(idx)? {
            ColumnValue::Text(t) | ColumnValue::Binary(t) => {
                std::str::from_utf8(t).ok().map(str::to_owned)
            }
            _ => None,
        }
    }

    pub fn event_from_row(
        &mut self,
        relation: &Relation,
        row: &[ColumnValue],
        catalog: &Catalog,
        position: SourcePosition,
        route_index: usize,
    ) -> Result<OutboxEvent, RouteError> {
        let event_id = self
            .event_id_of(relation, row)
            .unwrap_or_else(|| synthetic_id(position));
        let source_name = match &self.table {
            Some(t) => format!("{}.{}", t.schema, t.name),
            None => String::new(),
        };
        let layout = self.layout(relation, catalog);
        read_row(layout, row, source_name, route_index).map_err(|reason| RouteError {
            event_id,
            position,
            reason,
        })
    }
}

fn read_row(
    layout: &Layout,
    row: &[ColumnValue],
    source_name: String,
    route_index: usize,
) -> Result<OutboxEvent, String> {
    let col = |c: &Result<Col, String>| c.as_ref().map_err(Clone::clone)?.datum(row);
    let timestamp_ms = match &layout.timestamp {
        Some(c) => timestamp_millis(c.as_ref().map_err(Clone::clone)?, row)?,
        None => None,
    };
    let schema_version = match &layout.schema_version {
        Some(c) => c
            .as_ref()
            .map_err(Clone::clone)?
            .int32(row, "schema version")?,
        None => None,
    };
    let partition = match &layout.partition {
        Some(c) => c.as_ref().map_err(Clone::clone)?.int32(row, "partition")?,
        None => None,
    };
    let trace = match &layout.tracing {
        Some(c) => trace_headers(col(c)?),
        None => Ok(None),
    };
    Ok(OutboxEvent {
        route: Some(route_index),
        id: col(&layout.id)?,
        routed_by: col(&layout.routed_by)?,
        key: col(&layout.key)?,
        payload: col(&layout.payload)?,
        timestamp_ms,
        schema_version,
        headers: layout
            .headers
            .iter()
            .map(|(name, c)| Ok((name.clone(), col(c)?)))
            .collect::<Result<_, String>>()?,
        envelope: layout
            .envelope
            .iter()
            .map(|(name, c)| Ok((name.clone(), col(c)?)))
            .collect::<Result<_, String>>()?,
        partition,
        trace,
        source_name,
    })
}

/// `table.field.event.timestamp`: a `timestamp` column as Debezium reads it
/// (microseconds or milliseconds since the epoch, truncated to milliseconds), or
/// a `timestamptz` (which Debezium refuses: its values are text); NULL: none.
fn timestamp_millis(col: &Col, row: &[ColumnValue]) -> Result<Option<i64>, String> {
    if col.ty.schema.name.as_deref() == Some("io.debezium.time.ZonedTimestamp") {
        return match row_text(col, row)? {
            Some(text) => Ok(Some(micros_to_millis(parse_timestamp(&text)?))),
            None => Ok(None),
        };
    }
    let Some(micros) = col.ty.timestamp_unit_micros() else {
        return Err(format!(
            "timestamp column '{}' is a {}; it must be a timestamp or timestamptz \
             (Debezium accepts timestamp only)",
            col.name,
            col.ty.schema.type_name()
        ));
    };
    match col.datum(row)?.value {
        Value::Int64(v) if micros => Ok(Some(micros_to_millis(v))),
        Value::Int64(v) => Ok(Some(v)),
        _ => Ok(None),
    }
}

fn row_text(col: &Col, row: &[ColumnValue]) -> Result<Option<String>, String> {
    match col.datum(row)?.value {
        Value::String(t) => Ok(Some(t.as_str().to_owned())),
        _ => Ok(None),
    }
}

/// The tracing column: a `java.util.Properties` text with a W3C trace context.
fn trace_headers(datum: Datum) -> Result<Option<TraceHeaders>, String> {
    match &datum.value {
        Value::Null => Ok(None),
        Value::String(t) => trace_context::from_properties(t.as_str())
            .map_err(|e| format!("tracing span context column: {e}")),
        _ if datum.schema.kind != Kind::String => Err(format!(
            "the tracing span context column is a {}, not text",
            datum.schema.type_name()
        )),
        _ => Ok(None),
    }
}

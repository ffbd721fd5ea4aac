//! Turns outbox rows and outbox messages into Kafka records the way Debezium's
//! Outbox Event Router (with the Kafka Connect converters it is configured with)
//! does, so existing consumers keep working. Pure apart from its logs: no I/O.
//!
//! | module | job |
//! | --- | --- |
//! | [`route`] | one table's (or the messages') settings, compiled; rows to events |
//! | [`record`] | an event to the record: topic, key, value, headers, timestamp, partition |
//! | [`layout`] | where a route's columns are in a table's rows |
//! | [`columns`] | column types to Connect schemas and values |
//! | [`catalog`] | column nullability and defaults (for the JSON formats) |
//! | [`connect`], [`json`], [`convert`] | Connect's data model and its converters, byte for byte |
//! | [`expand`], [`json_tree`] | `table.expand.json.payload` |
//! | [`topic`] | topic names (`route.topic.regex`, `route.topic.replacement`) |
//! | [`trace_context`] | `tracingspancontext` to `traceparent` / `tracestate` |
//! | [`temporal`] | PostgreSQL dates and times as Debezium represents them |
//! | [`message`] | outbox events sent as logical messages |

pub mod catalog;
pub mod columns;
pub mod connect;
pub mod convert;
pub mod expand;
pub mod json;
pub mod json_tree;
pub mod layout;
pub mod message;
pub mod record;
pub mod route;
pub mod temporal;
pub mod topic;
pub mod trace_context;

use std::fmt;

use outboxd_kafka_sink::Record;
use outboxd_pgoutput::{ColumnValue, Lsn, Relation};
use outboxd_replication::TableName;
use regex::Regex;

pub use catalog::{Catalog, ColumnInfo};
pub use message::MessageEnvelope;
pub use route::OutboxEvent;

use crate::config::{InvalidOperation, RoutingConfig};
use record::RecordBuilder;
use route::Route;

/// Where an event sits in the source: enough to name it in errors and to give
/// consumers a unique, ordered idempotency key (commit LSN + index).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourcePosition {
    pub commit_lsn: Lsn,
    /// 0-based position of the event among the transaction's events.
    pub index: u32,
    pub commit_time: i64,
    pub xid: u32,
}

/// Why an event cannot be turned into a record. The relay stops on it (or
/// dead-letters it); it is never skipped silently.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteError {
    pub event_id: String,
    pub position: SourcePosition,
    pub reason: String,
}

impl fmt::Display for RouteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "event {} (commit LSN {}, #{} in transaction {}): {}",
            self.event_id,
            self.position.commit_lsn,
            self.position.index,
            self.position.xid,
            self.reason
        )
    }
}

impl std::error::Error for RouteError {}

/// The id of an event that has none of its own: stable across re-deliveries.
pub fn synthetic_id(p: SourcePosition) -> String {
    format!("{}:{}", p.commit_lsn, p.index)
}

/// Builds records from events: one [`Route`] per outbox table, one for messages.
#[derive(Debug)]
pub struct Router {
    tables: Vec<(TableName, Route)>,
    messages: Route,
    message_filter: MessageFilter,
    builder: RecordBuilder,
    catalog: Catalog,
}

impl Router {
    /// Compiles the routing of `tables` (each with its `[routing.tables]` overrides)
    /// and of messages. Errors name the setting.
    pub fn new(config: &RoutingConfig, tables: &[TableName]) -> Result<Router, String> {
        for name in config.tables.keys() {
            let parsed = TableName::parse(name).map_err(|e| e.to_string())?;
            if !tables.contains(&parsed) {
                return Err(format!(
                    "[routing.tables.\"{name}\"] names a table that is not in postgres.tables \
                     ({})",
                    tables
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
        }
        let mut routes = Vec::with_capacity(tables.len());
        for table in tables {
            let settings = config.for_table(&table.to_string())?;
            routes.push((table.clone(), Route::new(settings, Some(table.clone()))?));
        }
        Ok(Router {
            tables: routes,
            messages: Route::new(config.base(), None)?,
            message_filter: MessageFilter::new(config)?,
            builder: RecordBuilder::default(),
            catalog: Catalog::default(),
        })
    }

    /// Column nullability and defaults, read when a session opens.
    pub fn set_catalog(&mut self, catalog: Catalog) {
        self.catalog = catalog;
        for (_, route) in &mut self.tables {
            route.forget_layouts();
        }
    }

    /// Whether any route writes JSON, whose schemas and nulls need the catalog.
    pub fn needs_catalog(&self) -> bool {
        self.tables.iter().any(|(_, r)| r.needs_catalog())
    }

    fn route_of(&self, relation: &Relation) -> Option<usize> {
        self.tables
            .iter()
            .position(|(t, _)| t.schema == relation.namespace && t.name == relation.name)
    }

    /// Whether a change belongs to an outbox table (no allocation: this runs for
    /// every change).
    pub fn is_outbox_table(&self, relation: &Relation) -> bool {
        self.route_of(relation).is_some()
    }

    /// Whether a logical message with this prefix is an outbox event.
    pub fn relays_message(&self, prefix: &str) -> bool {
        self.message_filter.accepts(prefix)
    }

    /// Reads an outbox row (an INSERT's new tuple) into an event.
    pub fn event_from_row(
        &mut self,
        relation: &Relation,
        values: &[ColumnValue],
        position: SourcePosition,
    ) -> Result<OutboxEvent, RouteError> {
        let index = self.route_of(relation).ok_or_else(|| RouteError {
            event_id: synthetic_id(position),
            position,
            reason: format!(
                "{}.{} is not an outbox table",
                relation.namespace, relation.name
            ),
        })?;
        let catalog = &self.catalog;
        let (_, route) = &mut self.tables[index];
        route.event_from_row(relation, values, catalog, position, index)
    }

    /// Reads a logical message's content (a JSON envelope) into an event.
    pub fn event_from_message(
        &self,
        content: &[u8],
        position: SourcePosition,
    ) -> Result<OutboxEvent, RouteError> {
        message::event(&self.messages, content, position)
    }

    /// Builds the Kafka record for an event.
    pub fn route(
        &mut self,
        event: OutboxEvent,
        position: SourcePosition,
    ) -> Result<Record, RouteError> {
        let route = match event.route {
            Some(i) => &mut self.tables[i].1,
            None => &mut self.messages,
        };
        self.builder.build(route, event, position)
    }

    /// An UPDATE of an outbox table (`table.op.invalid.behavior`): logged and
    /// skipped, or with `fatal` the error that stops the relay.
    pub fn unexpected_update(
        &self,
        relation: &Relation,
        new: &[ColumnValue],
        position: SourcePosition,
    ) -> Result<(), RouteError> {
        let Some(index) = self.route_of(relation) else {
            return Ok(());
        };
        let route = &self.tables[index].1;
        let event_id = route
            .event_id_of(relation, new)
            .unwrap_or_else(|| synthetic_id(position));
        let table = format!("{}.{}", relation.namespace, relation.name);
        match route.config.invalid_operation {
            InvalidOperation::Warn => {
                tracing::warn!(table = %table, event_id = %event_id, lsn = %position.commit_lsn, "unexpected UPDATE of an outbox table ignored (outbox rows are inserted, never updated; routing.invalid_operation = warn)");
                Ok(())
            }
            InvalidOperation::Error => {
                tracing::error!(table = %table, event_id = %event_id, lsn = %position.commit_lsn, "unexpected UPDATE of an outbox table ignored (outbox rows are inserted, never updated; routing.invalid_operation = error)");
                Ok(())
            }
            InvalidOperation::Fatal => Err(RouteError {
                event_id,
                position,
                reason: format!(
                    "unexpected UPDATE of outbox table {table} (routing.invalid_operation = \
                     fatal): outbox rows must only be inserted; find the writer that updates \
                     them, then set invalid_operation to warn or error to skip this update"
                ),
            }),
        }
    }
}

/// Which logical-message prefixes are outbox events: `message_prefix`, or the
/// include / exclude lists of regular expressions (full matches).
#[derive(Debug)]
struct MessageFilter {
    exact: String,
    include: Vec<Regex>,
    exclude: Vec<Regex>,
}

impl MessageFilter {
    fn new(config: &RoutingConfig) -> Result<MessageFilter, String> {
        if !config.message_prefix_include.is_empty() && !config.message_prefix_exclude.is_empty() {
            return Err(
                "set routing.message_prefix_include or routing.message_prefix_exclude, not \
                 both (as Debezium's message.prefix.include.list / exclude.list)"
                    .to_owned(),
            );
        }
        let compile = |list: &[String], key: &str| -> Result<Vec<Regex>, String> {
            list.iter()
                .map(|p| {
                    Regex::new(&format!("^(?:{p})$")).map_err(|e| {
                        format!("routing.{key}: '{p}' is not a regular expression: {e}")
                    })
                })
                .collect()
        };
        Ok(MessageFilter {
            exact: config.message_prefix.clone(),
            include: compile(&config.message_prefix_include, "message_prefix_include")?,
            exclude: compile(&config.message_prefix_exclude, "message_prefix_exclude")?,
        })
    }

    fn accepts(&self, prefix: &str) -> bool {
        if !self.include.is_empty() {
            return self.include.iter().any(|r| r.is_match(prefix));
        }
        if !self.exclude.is_empty() {
            return !self.exclude.iter().any(|r| r.is_match(prefix));
        }
        !self.exact.is_empty() && prefix == self.exact
    }
}

#[cfg(test)]
mod tests;

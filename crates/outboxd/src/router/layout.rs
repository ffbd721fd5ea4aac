//! Where a route's columns are in a table's rows, and their Connect types: worked
//! out once per table layout (pgoutput's Relation message plus the catalog), so a
//! row costs only its values.

use outboxd_kafka_sink::HeaderName;
use outboxd_pgoutput::{ColumnValue, Relation};

use super::catalog::Catalog;
use super::columns::ColumnType;
use super::connect::{Datum, Kind, Value};
use crate::config::{MissingColumns, RoutingConfig};

/// One routed column: its position in the row and how to read it.
#[derive(Debug, Clone)]
pub struct Col {
    pub name: String,
    index: usize,
    pub ty: ColumnType,
}

impl Col {
    /// The column's value in `row` with its schema.
    pub fn datum(&self, row: &[ColumnValue]) -> Result<Datum, String> {
        let text = match row.get(self.index) {
            Some(ColumnValue::Null) | None => None,
            Some(ColumnValue::Text(t) | ColumnValue::Binary(t)) => Some(t),
            Some(ColumnValue::UnchangedToast) => {
                return Err(format!(
                    "column '{}' arrived without its value (unchanged TOAST)",
                    self.name
                ))
            }
        };
        let value = self
            .ty
            .value(text)
            .map_err(|e| format!("column '{}': {e}", self.name))?;
        Ok(Datum {
            value,
            schema: self.ty.schema.clone(),
        })
    }

    /// The column's value, which must be an `int4` (as Debezium's `getInt32`).
    pub fn int32(&self, row: &[ColumnValue], role: &str) -> Result<Option<i32>, String> {
        if self.ty.schema.kind != Kind::Int32 {
            return Err(format!(
                "{role} column '{}' is a {}, not an int4 (Debezium refuses it the same way)",
                self.name,
                self.ty.schema.type_name()
            ));
        }
        match self.datum(row)?.value {
            Value::Int32(n) => Ok(Some(n)),
            _ => Ok(None),
        }
    }
}

/// The routed columns of one table layout. A column the route needs but the table
/// lacks is kept as the error every event of the table reports.
#[derive(Debug, Clone)]
pub struct Layout {
    /// The Relation this layout was made for (a new one replaces it).
    relation: Relation,
    pub id: Result<Col, String>,
    pub routed_by: Result<Col, String>,
    pub key: Result<Col, String>,
    pub payload: Result<Col, String>,
    pub timestamp: Option<Result<Col, String>>,
    pub schema_version: Option<Result<Col, String>>,
    /// `None` when the table has no such column (no trace headers then).
    pub tracing: Option<Result<Col, String>>,
    /// Header name and column, in configuration order; missing columns left out
    /// with `missing_columns = "ignore"`.
    pub headers: Vec<(HeaderName, Result<Col, String>)>,
    pub envelope: Vec<(String, Result<Col, String>)>,
    pub partition: Option<Result<Col, String>>,
}

impl Layout {
    pub fn new(relation: &Relation, config: &RoutingConfig, catalog: &Catalog) -> Layout {
        let find = |name: &str, setting: &str| -> Result<Col, String> {
            let index = relation.column_index(name).ok_or_else(|| {
                format!(
                    "table {}.{} has no column '{name}' (routing.{setting})",
                    relation.namespace, relation.name
                )
            })?;
            let column = &relation.columns[index];
            let info = catalog.column(&relation.namespace, &relation.name, name);
            let ty = ColumnType::of(column, info, config.binary_handling)?;
            Ok(Col {
                name: name.to_owned(),
                index,
                ty,
            })
        };
        let placed = |name: &str, setting: &str| -> Option<Result<Col, String>> {
            match find(name, setting) {
                Err(_)
                    if config.missing_columns == MissingColumns::Ignore
                        && relation.column_index(name).is_none() =>
                {
                    None
                }
                other => Some(other),
            }
        };
        let c = &config.columns;
        Layout {
            relation: relation.clone(),
            id: find(&c.id, "columns.id"),
            routed_by: find(&c.aggregate_type, "columns.aggregate_type"),
            key: find(&c.aggregate_id, "columns.aggregate_id"),
            payload: find(&c.payload, "columns.payload"),
            timestamp: c
                .timestamp
                .as_deref()
                .map(|name| find(name, "columns.timestamp")),
            schema_version: c
                .schema_version
                .as_deref()
                .map(|name| find(name, "columns.schema_version")),
            tracing: relation
                .column(&c.tracing_span_context)
                .map(|_| find(&c.tracing_span_context, "columns.tracing_span_context")),
            headers: config
                .additional_headers
                .iter()
                .filter_map(|h| {
                    placed(&h.column, "additional_headers")
                        .map(|col| (HeaderName::from(h.header.clone()), col))
                })
                .collect(),
            envelope: config
                .envelope_fields
                .iter()
                .filter_map(|f| {
                    placed(&f.column, "envelope_fields").map(|col| (f.field.clone(), col))
                })
                .collect(),
            partition: config
                .partition_column
                .as_deref()
                .and_then(|name| placed(name, "partition_column")),
        }
    }

    /// Whether this layout was made for `relation`.
    pub fn fits(&self, relation: &Relation) -> bool {
        self.relation == *relation
    }
}

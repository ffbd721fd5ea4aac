//! What pgoutput's Relation messages do not say about outbox columns but Connect's
//! schemas do: whether a column is `NOT NULL` and its default. Read from
//! `pg_attribute` / `pg_attrdef` when a session opens (`crate::table_catalog`), only
//! when a JSON format needs it.

use std::collections::HashMap;

/// One column's nullability and default expression (`pg_get_expr`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ColumnInfo {
    pub not_null: bool,
    pub default: Option<String>,
}

/// Columns of the outbox tables, by `(schema, table)` and column name.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Catalog {
    tables: HashMap<(String, String), HashMap<String, ColumnInfo>>,
}

impl Catalog {
    pub fn insert(&mut self, schema: &str, table: &str, column: &str, info: ColumnInfo) {
        self.tables
            .entry((schema.to_owned(), table.to_owned()))
            .or_default()
            .insert(column.to_owned(), info);
    }

    pub fn column(&self, schema: &str, table: &str, column: &str) -> Option<&ColumnInfo> {
        self.tables
            .get(&(schema.to_owned(), table.to_owned()))?
            .get(column)
    }

    pub fn is_empty(&self) -> bool {
        self.tables.is_empty()
    }
}

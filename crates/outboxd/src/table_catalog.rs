//! Reads the outbox tables' column nullability and defaults for the router's JSON
//! schemas (`router::catalog`): once per replication session, so a session after
//! an `ALTER TABLE` sees the change.

use outboxd_replication::{Admin, TableName};

use crate::router::{Catalog, ColumnInfo};

pub async fn load(
    admin: &Admin,
    tables: &[TableName],
) -> Result<Catalog, outboxd_replication::Error> {
    let mut catalog = Catalog::default();
    for table in tables {
        for (column, not_null, default) in admin.column_details(table).await? {
            catalog.insert(
                &table.schema,
                &table.name,
                &column,
                ColumnInfo { not_null, default },
            );
        }
    }
    Ok(catalog)
}

//! The inbox's two tables: their DDL and the statements that use them.

/// The DDL template; `{inbox}` and `{inbox_versions}` are the table names.
const DDL_TEMPLATE: &str = include_str!("../sql/inbox.sql");

/// The transaction-level advisory lock [`Tables::create`] holds: concurrent
/// `CREATE TABLE IF NOT EXISTS` of one table is not safe in PostgreSQL (all but one
/// fail on `pg_type_typname_nsp_index`), so instances starting together take turns.
/// Take it around your own startup DDL too.
pub const SCHEMA_LOCK: i64 = i64::from_be_bytes(*b"inboxddl");

/// The inbox table's name and the versions table's (`<inbox>_versions`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tables {
    inbox: String,
    versions: String,
}

impl Tables {
    /// `table` is `name` or `schema.name`: letters, digits and `_`, not starting
    /// with a digit (it goes into SQL text, so nothing else is accepted).
    pub fn new(table: &str) -> Result<Tables, String> {
        let ident = |part: &str| {
            part.chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && part.len() <= 56
        };
        let parts: Vec<&str> = table.split('.').collect();
        if parts.len() > 2 || !parts.iter().all(|p| ident(p)) {
            return Err(format!(
                "inbox table '{table}' is not a plain name or schema.name (letters, digits, \
                 '_'; at most 56 characters each)"
            ));
        }
        Ok(Tables {
            inbox: table.to_owned(),
            versions: format!("{table}_versions"),
        })
    }

    pub fn inbox(&self) -> &str {
        &self.inbox
    }

    pub fn versions(&self) -> &str {
        &self.versions
    }

    /// `CREATE TABLE IF NOT EXISTS` for both tables.
    pub fn ddl(&self) -> String {
        DDL_TEMPLATE
            .replace("{inbox_versions}", &self.versions)
            .replace("{inbox}", &self.inbox)
    }

    /// [`Tables::ddl`] in one transaction under [`SCHEMA_LOCK`].
    pub(crate) fn create(&self) -> String {
        format!(
            "BEGIN; SELECT pg_advisory_xact_lock({SCHEMA_LOCK}); {} COMMIT;",
            self.ddl()
        )
    }

    /// Records an event id; 0 rows when it is there already (a duplicate). Waits
    /// for a concurrent transaction holding the same id, so of two instances
    /// handling one event, exactly one records it.
    pub(crate) fn insert_event(&self) -> String {
        format!(
            "INSERT INTO {} (event_id, topic, partition, \"offset\", aggregate_id, lsn, \
             event_index, replayed) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
             ON CONFLICT (event_id) DO NOTHING",
            self.inbox
        )
    }

    /// An aggregate's first version; 0 rows when it has one already.
    pub(crate) fn insert_version(&self) -> String {
        format!(
            "INSERT INTO {} (topic, aggregate_id, lsn, event_index, event_id) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (topic, aggregate_id) DO NOTHING",
            self.versions
        )
    }

    /// The applied version, locked until the transaction ends: events of one
    /// aggregate are applied one at a time, whichever instance has them.
    pub(crate) fn lock_version(&self) -> String {
        format!(
            "SELECT lsn, event_index FROM {} WHERE topic = $1 AND aggregate_id = $2 FOR UPDATE",
            self.versions
        )
    }

    pub(crate) fn update_version(&self) -> String {
        format!(
            "UPDATE {} SET lsn = $3, event_index = $4, event_id = $5, updated_at = now() \
             WHERE topic = $1 AND aggregate_id = $2",
            self.versions
        )
    }
}

impl Default for Tables {
    fn default() -> Self {
        Tables {
            inbox: "inbox".to_owned(),
            versions: "inbox_versions".to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        for good in ["inbox", "orders.inbox", "_x1"] {
            assert!(Tables::new(good).is_ok(), "{good}");
        }
        for bad in ["", "1x", "a.b.c", "inbox; DROP TABLE x", "in-box", "\"q\""] {
            assert!(Tables::new(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ddl_names_both_tables() {
        let ddl = Tables::new("svc.inbox").unwrap().ddl();
        assert!(ddl.contains("CREATE TABLE IF NOT EXISTS svc.inbox ("));
        assert!(ddl.contains("CREATE TABLE IF NOT EXISTS svc.inbox_versions ("));
        assert!(!ddl.contains('{'), "{ddl}");
        assert_eq!(Tables::default(), Tables::new("inbox").unwrap());
    }
}

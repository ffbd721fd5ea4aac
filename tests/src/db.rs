//! Test databases on the shared PostgreSQL cluster: one per test, dropped (with its
//! slots) when the guard drops.

use std::time::Duration;

use tokio_postgres::{Client, NoTls};

use crate::env::{init_tracing, run_cleanup, services, unique_name};

/// Connects to the test cluster, or panics with what to do when it is not up.
pub async fn pg_connect(url: &str) -> Client {
    let attempt =
        tokio::time::timeout(Duration::from_secs(10), tokio_postgres::connect(url, NoTls));
    match attempt.await {
        Ok(Ok((client, connection))) => {
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::debug!(error = %e, "test connection closed");
                }
            });
            client
        }
        Ok(Err(e)) => panic!(
            "PostgreSQL is not reachable at {url}: {e}.\n\
             Start the local services with `scripts/test.sh` (or `scripts/pg.sh start`)."
        ),
        Err(_) => panic!(
            "PostgreSQL at {url} did not answer within 10 s.\n\
             Start the local services with `scripts/test.sh` (or `scripts/pg.sh start`)."
        ),
    }
}

/// Replaces the database name in a `postgres://…/db` URL.
fn with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let host_end = base[scheme_end..]
        .find('/')
        .map_or(base.len(), |i| scheme_end + i);
    let mut out = format!("{}/{database}", &base[..host_end]);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

/// A database of its own for one test, dropped (with its slots) when the guard drops.
#[derive(Debug)]
pub struct TestDb {
    /// The database name.
    pub name: String,
    /// A URL for the superuser on this database.
    pub url: String,
    /// Host, port and user for building other connection strings.
    pub host: String,
    pub port: u16,
}

impl TestDb {
    /// Creates a fresh database on the test cluster.
    pub async fn create() -> TestDb {
        init_tracing();
        let admin_url = &services().pg_url;
        let admin = pg_connect(admin_url).await;
        let name = unique_name("outboxd_t");
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap_or_else(|e| panic!("CREATE DATABASE {name} failed: {e}"));
        let config: tokio_postgres::Config = admin_url.parse().expect("OUTBOXD_TEST_PG_URL parses");
        let host = match config.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
            _ => "127.0.0.1".to_owned(),
        };
        let port = config.get_ports().first().copied().unwrap_or(5432);
        TestDb {
            url: with_database(admin_url, &name),
            name,
            host,
            port,
        }
    }

    /// A new superuser connection to this database.
    pub async fn connect(&self) -> Client {
        pg_connect(&self.url).await
    }

    /// Connection options for this database as `user` (no TLS, no password).
    pub fn connect_options(&self, user: &str) -> outboxd_replication::ConnectOptions {
        outboxd_replication::ConnectOptions {
            hosts: vec![outboxd_replication::Host::new(self.host.clone(), self.port)],
            user: user.to_owned(),
            dbname: self.name.clone(),
            sslmode: outboxd_replication::SslMode::Disable,
            ..Default::default()
        }
    }

    /// A slot name unique to this test (slots are cluster-wide).
    pub fn slot_name(&self) -> String {
        unique_name("outboxd_slot")
    }
}

/// Drops a test database: its slots first (an active one's walsender is terminated),
/// then the database itself.
async fn drop_database(name: &str) {
    let admin = pg_connect(&services().pg_url).await;
    for _ in 0..50 {
        let rows = admin
            .query(
                "SELECT slot_name::text, active_pid FROM pg_replication_slots WHERE database = $1",
                &[&name],
            )
            .await
            .unwrap_or_default();
        if rows.is_empty() {
            break;
        }
        for row in rows {
            let slot: String = row.get(0);
            let pid: Option<i32> = row.get(1);
            if let Some(pid) = pid {
                let _ = admin
                    .execute("SELECT pg_terminate_backend($1)", &[&pid])
                    .await;
            }
            let _ = admin
                .execute("SELECT pg_drop_replication_slot($1)", &[&slot])
                .await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if let Err(e) = admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .await
    {
        tracing::warn!(database = %name, error = %e, "could not drop test database");
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        run_cleanup(async move { drop_database(&name).await });
    }
}

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn replaces_the_database_in_a_url() {
        assert_eq!(
            with_database("postgres://u@127.0.0.1:5/postgres", "t1"),
            "postgres://u@127.0.0.1:5/t1"
        );
        assert_eq!(
            with_database("postgres://u:p@h:5/db?sslmode=disable", "t2"),
            "postgres://u:p@h:5/t2?sslmode=disable"
        );
        assert_eq!(with_database("postgres://h:5", "t3"), "postgres://h:5/t3");
    }
}

//! Debezium in Kafka Connect, for the tests that compare outboxd's records with
//! Debezium's: one Connect worker (scripts/test-debezium.sh starts it with Debezium
//! 3.7.0 on its plugin path and exports its REST address as
//! `OUTBOXD_TEST_CONNECT_URL`), on which each test creates its own connector.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};

use crate::db::TestDb;

/// The worker's REST address (`http://127.0.0.1:PORT`), or a panic saying how to get one.
pub fn connect_url() -> String {
    std::env::var("OUTBOXD_TEST_CONNECT_URL")
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| {
            panic!(
                "OUTBOXD_TEST_CONNECT_URL is not set: these tests need a Kafka Connect worker \
                 with Debezium; run them with scripts/test-debezium.sh"
            )
        })
}

/// One HTTP/1.1 request to the worker: (status, body as JSON or null).
pub fn request(method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
    let url = connect_url();
    let authority = url.trim_start_matches("http://").trim_end_matches('/');
    let mut stream = std::net::TcpStream::connect(authority)
        .unwrap_or_else(|e| panic!("Kafka Connect at {url} is not reachable: {e}"));
    let _ = stream.set_read_timeout(Some(Duration::from_secs(60)));
    let body = body.map(Value::to_string).unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {authority}\r\nContent-Type: application/json\r\n\
         Accept: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream
        .write_all(request.as_bytes())
        .expect("sending to Connect");
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let text = String::from_utf8_lossy(&response);
    let (head, raw) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let content = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(raw)
    } else {
        raw.to_owned()
    };
    (
        status,
        serde_json::from_str(&content).unwrap_or(Value::Null),
    )
}

fn dechunk(mut raw: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = raw.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        raw = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// The settings every test connector shares: Debezium's PostgreSQL connector on a
/// test database, with the slot and publication the test made, streaming only (no
/// snapshot). Tests add the router's settings and converters.
pub fn postgres_connector(
    db: &TestDb,
    slot: &str,
    publication: &str,
    topic_prefix: &str,
    tables: &[&str],
) -> Map<String, Value> {
    let config = json!({
        "connector.class": "io.debezium.connector.postgresql.PostgresConnector",
        "tasks.max": "1",
        "database.hostname": db.host,
        "database.port": db.port.to_string(),
        "database.user": "postgres",
        "database.password": "unused",
        "database.dbname": db.name,
        "topic.prefix": topic_prefix,
        "plugin.name": "pgoutput",
        "slot.name": slot,
        "publication.name": publication,
        "publication.autocreate.mode": "disabled",
        "snapshot.mode": "no_data",
        "table.include.list": tables.join(","),
        "transforms": "outbox",
        "transforms.outbox.type": "io.debezium.transforms.outbox.EventRouter",
    });
    match config {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

/// A connector on the worker, deleted when dropped (its slot stays: Debezium does not
/// drop slots by default; the test database's cleanup does).
#[derive(Debug)]
pub struct Connector {
    pub name: String,
}

impl Connector {
    /// Creates (or replaces) the connector and waits until its task runs.
    pub fn start(name: &str, config: &Map<String, Value>) -> Connector {
        let connector = Connector::create(name, config);
        connector.wait_for("RUNNING", Duration::from_secs(120));
        connector
    }

    /// Creates (or replaces) the connector without waiting for it.
    pub fn create(name: &str, config: &Map<String, Value>) -> Connector {
        let (status, body) = request(
            "PUT",
            &format!("/connectors/{name}/config"),
            Some(&Value::Object(config.clone())),
        );
        assert!(
            status == 200 || status == 201,
            "creating connector {name}: HTTP {status}: {body}"
        );
        Connector {
            name: name.to_owned(),
        }
    }

    /// Waits until the task has failed; its trace.
    pub fn wait_failed(&self, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let (_, task, trace) = self.status();
            if task == "FAILED" {
                return trace;
            }
            assert!(
                Instant::now() < deadline,
                "connector {}'s task is {task}, not FAILED, after {timeout:?}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// The connector's and its task's state, and a task's failure trace.
    pub fn status(&self) -> (String, String, String) {
        let (_, body) = request("GET", &format!("/connectors/{}/status", self.name), None);
        let state = |v: &Value| v["state"].as_str().unwrap_or("").to_owned();
        let task = &body["tasks"][0];
        (
            state(&body["connector"]),
            state(task),
            task["trace"].as_str().unwrap_or("").to_owned(),
        )
    }

    /// Waits until connector and task are in `state`; panics on a failed task.
    pub fn wait_for(&self, state: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let (connector, task, trace) = self.status();
            if task == "FAILED" {
                panic!("connector {}'s task failed:\n{trace}", self.name);
            }
            if connector == state && (task == state || state == "STOPPED") {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "connector {} is {connector}/{task}, not {state}, after {timeout:?}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Stops the connector (Connect's `PUT …/stop`: tasks shut down after a last
    /// offset commit) and waits until it has.
    pub fn stop(&self) {
        let (status, body) = request("PUT", &format!("/connectors/{}/stop", self.name), None);
        assert!(
            status == 202 || status == 204,
            "stopping {}: HTTP {status}: {body}",
            self.name
        );
        self.wait_for("STOPPED", Duration::from_secs(60));
    }
}

impl Drop for Connector {
    fn drop(&mut self) {
        let _ = std::panic::catch_unwind(|| {
            request("DELETE", &format!("/connectors/{}", self.name), None)
        });
    }
}

//! Test harness shared by every integration test of outboxd.
//!
//! Integration tests run against the real local PostgreSQL and Apache Kafka that
//! `scripts/pg.sh` and `scripts/kafka.sh` start (`scripts/test.sh` starts both and
//! exports their addresses). Each test gets its own database, slot, publication and
//! topics with unique names, so tests run in parallel and never see each other's data;
//! everything is dropped again when the guard goes out of scope, also after a panic.

pub mod faults;
pub mod pg_cluster;
pub mod proxy;
pub mod scenario;
pub mod secure_kafka;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use tokio_postgres::{Client, NoTls};

/// Default addresses: the ports the local scripts use.
const DEFAULT_PG_URL: &str = "postgres://postgres@127.0.0.1:54329/postgres";
const DEFAULT_KAFKA_BROKERS: &str = "127.0.0.1:19092";

/// Where the real services are, from the environment the scripts export.
#[derive(Debug, Clone)]
pub struct Services {
    /// Superuser URL of the test cluster (database `postgres`).
    pub pg_url: String,
    /// Path of the CA certificate that signed the test cluster's server certificate.
    pub pg_ca: Option<String>,
    /// Kafka bootstrap servers.
    pub kafka_brokers: String,
}

impl Services {
    /// Reads `OUTBOXD_TEST_PG_URL`, `OUTBOXD_TEST_PG_CA` and `OUTBOXD_TEST_KAFKA_BROKERS`,
    /// falling back to the scripts' default ports.
    pub fn from_env() -> Self {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        Services {
            pg_url: var("OUTBOXD_TEST_PG_URL").unwrap_or_else(|| DEFAULT_PG_URL.to_owned()),
            pg_ca: var("OUTBOXD_TEST_PG_CA").or_else(|| {
                let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../.local/pg/tls/ca.crt");
                std::path::Path::new(path).exists().then(|| path.to_owned())
            }),
            kafka_brokers: var("OUTBOXD_TEST_KAFKA_BROKERS")
                .unwrap_or_else(|| DEFAULT_KAFKA_BROKERS.to_owned()),
        }
    }
}

/// The services, read once per test binary.
pub fn services() -> &'static Services {
    static SERVICES: OnceLock<Services> = OnceLock::new();
    SERVICES.get_or_init(Services::from_env)
}

/// Installs a test-friendly tracing subscriber once (honours `RUST_LOG`).
pub fn init_tracing() {
    static INIT: OnceLock<()> = OnceLock::new();
    INIT.get_or_init(|| {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "warn".into()),
            )
            .with_test_writer()
            .try_init();
    });
}

/// A name no other test (in this or a concurrent test binary) uses.
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let salt: u32 = rand::random();
    format!("{prefix}_{}_{n}_{salt:08x}", std::process::id())
}

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
            host: self.host.clone(),
            port: self.port,
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

/// Runs cleanup on a thread with a runtime of its own: `Drop` may run inside a test's
/// runtime (where blocking on it would panic) or during a panic unwinding.
fn run_cleanup<F: std::future::Future<Output = ()> + Send + 'static>(cleanup: F) {
    let _ = std::thread::spawn(move || {
        match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt.block_on(cleanup),
            Err(e) => eprintln!("test cleanup skipped: no runtime: {e}"),
        }
    })
    .join();
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        run_cleanup(async move { drop_database(&name).await });
    }
}

/// Kafka topics of one test, deleted when the guard drops.
#[derive(Debug)]
pub struct TestTopics {
    names: Vec<String>,
}

/// An admin client for the test broker.
pub fn kafka_admin() -> AdminClient<DefaultClientContext> {
    ClientConfig::new()
        .set("bootstrap.servers", &services().kafka_brokers)
        .create()
        .expect("Kafka admin client")
}

/// Fails with what to do when the broker does not answer a metadata request.
pub fn require_kafka() {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &services().kafka_brokers)
        .create()
        .expect("Kafka client");
    if let Err(e) = consumer.fetch_metadata(None, Duration::from_secs(15)) {
        panic!(
            "Kafka is not reachable at {}: {e}.\n\
             Start the local services with `scripts/test.sh` (or `scripts/kafka.sh start`).",
            services().kafka_brokers
        );
    }
}

impl TestTopics {
    /// Creates `count` topics with unique names and `partitions` partitions each.
    pub async fn create(prefix: &str, count: usize, partitions: i32) -> TestTopics {
        let names: Vec<String> = (0..count).map(|_| unique_name(prefix)).collect();
        Self::create_named(&names, partitions).await
    }

    /// Creates topics with the given names (deleted when the guard drops).
    pub async fn create_named(names: &[String], partitions: i32) -> TestTopics {
        init_tracing();
        require_kafka();
        let new_topics: Vec<NewTopic> = names
            .iter()
            .map(|n| NewTopic::new(n, partitions, TopicReplication::Fixed(1)))
            .collect();
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
        for r in kafka_admin()
            .create_topics(&new_topics, &opts)
            .await
            .expect("create_topics request")
        {
            if let Err((topic, code)) = r {
                panic!("creating topic {topic} failed: {code}");
            }
        }
        TestTopics {
            names: names.to_vec(),
        }
    }

    /// The topic names.
    pub fn names(&self) -> &[String] {
        &self.names
    }
}

impl Drop for TestTopics {
    fn drop(&mut self) {
        let names = std::mem::take(&mut self.names);
        run_cleanup(async move {
            let refs: Vec<&str> = names.iter().map(String::as_str).collect();
            let _ = kafka_admin()
                .delete_topics(&refs, &AdminOptions::new())
                .await;
        });
    }
}

/// A record as read back from Kafka by an independent consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumedRecord {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

impl ConsumedRecord {
    fn from_message(m: &BorrowedMessage<'_>) -> Self {
        let headers = m
            .headers()
            .map(|hs| {
                hs.iter()
                    .map(|h| (h.key.to_owned(), h.value.map(<[u8]>::to_vec)))
                    .collect()
            })
            .unwrap_or_default();
        ConsumedRecord {
            topic: m.topic().to_owned(),
            partition: m.partition(),
            offset: m.offset(),
            key: m.key().map(<[u8]>::to_vec),
            value: m.payload().map(<[u8]>::to_vec),
            headers,
        }
    }

    /// The first header with this name, as UTF-8.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| v.as_ref())
            .map(|v| String::from_utf8_lossy(v).into_owned())
    }
}

/// A consumer of its own (no group offsets shared with anything else) subscribed to
/// `topics` from the beginning, with one more `setting`.
fn checker(brokers: &str, topics: &[String], setting: (&str, &str)) -> BaseConsumer {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", unique_name("outboxd_checker"))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set(setting.0, setting.1)
        .create()
        .expect("Kafka consumer");
    let refs: Vec<&str> = topics.iter().map(String::as_str).collect();
    consumer.subscribe(&refs).expect("subscribe");
    consumer
}

/// Reads `topics` from the beginning with a consumer of its own (no group offsets
/// shared with anything else) until `expected` records arrived or `timeout` passed.
/// `isolation` is `read_committed` or `read_uncommitted`.
pub fn consume_all(
    topics: &[String],
    expected: usize,
    timeout: Duration,
    isolation: &str,
) -> Vec<ConsumedRecord> {
    let consumer = checker(
        &services().kafka_brokers,
        topics,
        ("isolation.level", isolation),
    );
    let deadline = std::time::Instant::now() + timeout;
    let mut out = Vec::new();
    while out.len() < expected && std::time::Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => out.push(ConsumedRecord::from_message(&m)),
            Some(Err(e)) => tracing::debug!(error = %e, "consumer error while checking"),
            None => {}
        }
    }
    out
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

/// The `outboxd` binary, built once per test run (a no-op when up to date).
pub fn outboxd_binary() -> std::path::PathBuf {
    static BINARY: OnceLock<std::path::PathBuf> = OnceLock::new();
    BINARY
        .get_or_init(|| {
            let mut cargo = std::process::Command::new(env!("CARGO"));
            // Without the variables cargo sets for this test process: build scripts
            // (ring's) watch some of them, so a build with them rebuilds ring and all
            // above it, and the next plain `cargo test` rebuilds it back.
            for (name, _) in std::env::vars_os() {
                let name = name.to_string_lossy();
                if name.starts_with("CARGO_PKG_")
                    || name.starts_with("CARGO_MANIFEST_")
                    || [
                        "CARGO_CRATE_NAME",
                        "CARGO_PRIMARY_PACKAGE",
                        "CARGO_TARGET_TMPDIR",
                    ]
                    .contains(&name.as_ref())
                {
                    cargo.env_remove(name.as_ref());
                }
            }
            let status = cargo
                .args(["build", "-q", "-p", "outboxd"])
                .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
                .status()
                .expect("running cargo build -p outboxd");
            assert!(status.success(), "cargo build -p outboxd failed");
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .map(std::path::PathBuf::from)
                .unwrap_or_else(|| {
                    std::path::PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target"))
                });
            let bin = target.join("debug").join("outboxd");
            assert!(bin.exists(), "{} missing after build", bin.display());
            bin
        })
        .clone()
}

/// A running `outboxd run` process whose output goes to a log file.
#[derive(Debug)]
pub struct RelayProcess {
    child: std::process::Child,
    /// Where its stderr goes.
    pub log: std::path::PathBuf,
}

impl RelayProcess {
    /// Starts `outboxd run` with `env` (OUTBOXD_… variables) on top of a clean
    /// environment for outboxd's settings.
    pub fn start(env: &[(String, String)], log_name: &str) -> RelayProcess {
        let dir = std::env::temp_dir().join("outboxd-test-logs");
        std::fs::create_dir_all(&dir).expect("log dir");
        let log = dir.join(format!("{}.log", unique_name(log_name)));
        let file = std::fs::File::create(&log).expect("log file");
        let mut cmd = std::process::Command::new(outboxd_binary());
        cmd.arg("run")
            .env_remove("OUTBOXD_CONFIG")
            .env("RUST_LOG", "info,outboxd=debug")
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(std::process::Stdio::null())
            .stderr(file);
        let child = cmd.spawn().expect("spawning outboxd");
        RelayProcess { child, log }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal (`KILL`, `TERM`, `INT`).
    pub fn signal(&self, name: &str) {
        let _ = std::process::Command::new("kill")
            .args([format!("-{name}"), self.child.id().to_string()])
            .status();
    }

    /// Waits up to `timeout` for the process to exit; `None` if it did not.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if std::time::Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, then asserts a clean exit (status 0) within 60 s.
    pub fn stop_cleanly(&mut self) {
        self.signal("TERM");
        let status = self.wait_timeout(Duration::from_secs(60));
        assert!(
            status.is_some_and(|s| s.success()),
            "outboxd did not exit cleanly after SIGTERM: {status:?}\n{}",
            self.log_text()
        );
    }

    /// The log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Reads `topics` from the beginning with an independent consumer until `done`
/// says the records so far are enough (checked after every poll) or `timeout`.
pub fn consume_until(
    topics: &[String],
    timeout: Duration,
    done: impl FnMut(&[ConsumedRecord]) -> bool,
) -> Vec<ConsumedRecord> {
    consume_until_from(&services().kafka_brokers, topics, timeout, done)
}

/// [`consume_until`] against other brokers (a test's own).
pub fn consume_until_from(
    brokers: &str,
    topics: &[String],
    timeout: Duration,
    mut done: impl FnMut(&[ConsumedRecord]) -> bool,
) -> Vec<ConsumedRecord> {
    let consumer = checker(
        brokers,
        topics,
        ("topic.metadata.refresh.interval.ms", "1000"),
    );
    let deadline = std::time::Instant::now() + timeout;
    let mut out = Vec::new();
    while std::time::Instant::now() < deadline {
        let mut got = false;
        while let Some(result) = consumer.poll(Duration::from_millis(100)) {
            match result {
                Ok(m) => {
                    out.push(ConsumedRecord::from_message(&m));
                    got = true;
                }
                Err(e) => tracing::debug!(error = %e, "consumer error while checking"),
            }
            if out.len() % 10_000 == 0 {
                break;
            }
        }
        if (got || out.is_empty()) && done(&out) {
            break;
        }
    }
    out
}

/// What an independent consumer saw, compared with what the writers committed.
#[derive(Debug, Default)]
pub struct DeliveryReport {
    /// Distinct events seen.
    pub delivered: usize,
    /// Events seen more than once (at-least-once replays).
    pub duplicates: usize,
    /// Committed events never seen.
    pub missing: usize,
    /// A newer event of an aggregate seen before an older one was first delivered.
    pub order_violations: usize,
    /// A few examples of what went wrong, for the assertion message.
    pub examples: Vec<String>,
}

impl DeliveryReport {
    /// Zero missing, zero order violations and `expected` events delivered;
    /// `context` (what ran, a log) goes into the failure message.
    pub fn assert_complete(&self, expected: usize, context: &str) {
        assert_eq!(
            self.missing, 0,
            "missing events: {:?}\n{context}",
            self.examples
        );
        assert_eq!(
            self.order_violations, 0,
            "order violations: {:?}\n{context}",
            self.examples
        );
        assert_eq!(
            self.delivered, expected,
            "delivered: {:?}\n{context}",
            self.examples
        );
    }

    /// Checks records whose value is `{"agg": <aggregate id>, "seq": <1-based sequence
    /// number in commit order>, …}` against `expected` (aggregate id → last sequence
    /// number committed). A replayed suffix (seeing 3, 4 again after 5) is allowed and
    /// counted as duplicates; seeing 5 before 4 was ever seen is an order violation.
    pub fn check(
        records: &[ConsumedRecord],
        expected: &std::collections::HashMap<String, i64>,
    ) -> DeliveryReport {
        let mut report = DeliveryReport::default();
        let mut high: std::collections::HashMap<&str, i64> = std::collections::HashMap::new();
        let mut parsed = Vec::with_capacity(records.len());
        for r in records {
            let value: serde_json::Value = match r.value.as_deref().map(serde_json::from_slice) {
                Some(Ok(v)) => v,
                _ => {
                    report.order_violations += 1;
                    report.examples.push(format!("unparsable record {r:?}"));
                    continue;
                }
            };
            let agg = value["agg"].as_str().unwrap_or_default().to_owned();
            let seq = value["seq"].as_i64().unwrap_or(-1);
            if r.key.as_deref() != Some(agg.as_bytes()) {
                report.order_violations += 1;
                report
                    .examples
                    .push(format!("key {:?} is not the aggregate {agg}", r.key));
            }
            parsed.push((agg, seq));
        }
        for (agg, seq) in &parsed {
            let h = high.entry(agg.as_str()).or_insert(0);
            if *seq == *h + 1 {
                *h = *seq;
                report.delivered += 1;
            } else if *seq <= *h {
                report.duplicates += 1;
            } else {
                report.order_violations += 1;
                if report.examples.len() < 10 {
                    report
                        .examples
                        .push(format!("aggregate {agg}: seq {seq} arrived after {h}"));
                }
            }
        }
        for (agg, last) in expected {
            let seen = high.get(agg.as_str()).copied().unwrap_or(0);
            if seen < *last {
                report.missing += usize::try_from(*last - seen).unwrap_or(0);
                if report.examples.len() < 20 {
                    report
                        .examples
                        .push(format!("aggregate {agg}: saw up to {seen} of {last}"));
                }
            }
        }
        report
    }
}

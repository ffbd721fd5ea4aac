//! Building blocks for fault scenarios: an outbox with its relay settings, resilient
//! concurrent writers, dedicated PostgreSQL and Kafka instances that a test may crash
//! and restart (never the shared ones), and the scenario report.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;

use crate::{
    consume_until_from, pg_connect, services, unique_name, ConsumedRecord, DeliveryReport,
    RelayProcess, TestDb, TestTopics,
};

pub const AGGREGATE_TYPE: &str = "order";

/// The value of environment variable `name`, or `default` when unset or unparsable.
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// The seed of a scenario: `OUTBOXD_TEST_SEED` or a random one (printed, so a
/// failing schedule can be replayed).
pub fn seed(name: &str) -> u64 {
    let seed = env_or("OUTBOXD_TEST_SEED", rand::random());
    println!("{name}: seed {seed} (rerun with OUTBOXD_TEST_SEED={seed})");
    seed
}

fn repo_root() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

pub(crate) fn run_script(
    script: &str,
    args: &[&str],
    env: &[(&str, String)],
) -> Result<(), String> {
    let out = std::process::Command::new(repo_root().join("scripts").join(script))
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .map_err(|e| format!("{script}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "scripts/{script} {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Runs `scripts/kafka.sh cmd` for a broker of a test's own: its ports and state
/// directory `(port, controller port, state)`, plus the listener settings in `env`.
pub(crate) fn kafka_script(
    cmd: &str,
    (port, controller_port, state): (u16, u16, &std::path::Path),
    mut env: Vec<(&str, String)>,
) -> Result<(), String> {
    env.extend([
        ("KAFKA_PORT", port.to_string()),
        ("KAFKA_CONTROLLER_PORT", controller_port.to_string()),
        ("KAFKA_STATE_DIR", state.display().to_string()),
    ]);
    run_script("kafka.sh", &[cmd], &env)
}

pub use crate::pg_cluster::DedicatedPg;

/// A Kafka broker of the test's own (scripts/kafka.sh with KAFKA_STATE_DIR and
/// ports), with a second listener reached through a [`FaultProxy`](crate::proxy::FaultProxy)
/// that advertises the proxy's address. Stopped and wiped when dropped.
#[derive(Debug)]
pub struct DedicatedKafka {
    pub port: u16,
    controller_port: u16,
    proxied_port: u16,
    pub proxy: crate::proxy::FaultProxy,
    state: PathBuf,
}

impl DedicatedKafka {
    pub fn start() -> DedicatedKafka {
        let port = free_port();
        let controller_port = free_port();
        let proxied_port = free_port();
        let proxy = crate::proxy::FaultProxy::start(
            format!("127.0.0.1:{proxied_port}").parse().expect("addr"),
        );
        let state = std::env::temp_dir().join(unique_name("outboxd-faults-kafka"));
        let k = DedicatedKafka {
            port,
            controller_port,
            proxied_port,
            proxy,
            state,
        };
        k.script("start").expect("dedicated Kafka starts");
        k
    }

    fn script(&self, cmd: &str) -> Result<(), String> {
        kafka_script(
            cmd,
            (self.port, self.controller_port, &self.state),
            vec![
                ("KAFKA_PROXIED_PORT", self.proxied_port.to_string()),
                ("KAFKA_PROXY_PORT", self.proxy.port().to_string()),
            ],
        )
    }

    /// Bootstrap address through the proxy (what outboxd gets).
    pub fn proxied_brokers(&self) -> String {
        format!("127.0.0.1:{}", self.proxy.port())
    }

    /// Direct bootstrap address (what the checker uses).
    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// A clean stop (SIGTERM, controlled shutdown) and start.
    pub fn restart(&self) {
        self.script("stop").expect("kafka.sh stop");
        self.script("start").expect("kafka.sh start");
    }

    /// SIGKILL the broker (no controlled shutdown).
    pub fn kill(&self) {
        let pid = std::fs::read_to_string(self.state.join("kafka.pid")).expect("broker pid file");
        let _ = std::process::Command::new("kill")
            .args(["-KILL", pid.trim()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::path::Path::new(&format!("/proc/{}", pid.trim())).exists()
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Starts the broker again (after `kill`).
    pub fn start_again(&self) {
        self.script("start").expect("kafka.sh start");
    }

    /// Creates a topic on this broker (blocking; safe to call from async tests).
    pub fn create_topic(&self, name: &str, partitions: i32) {
        let brokers = self.brokers();
        let name = name.to_owned();
        std::thread::spawn(move || {
            let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
                .set("bootstrap.servers", brokers)
                .create()
                .expect("admin client");
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            let topic = NewTopic::new(&name, partitions, TopicReplication::Fixed(1));
            let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
            for r in rt
                .block_on(admin.create_topics([&topic], &opts))
                .expect("create_topics")
            {
                r.unwrap_or_else(|(t, e)| panic!("creating {t}: {e}"));
            }
        })
        .join()
        .expect("create_topic thread");
    }
}

impl Drop for DedicatedKafka {
    fn drop(&mut self) {
        let _ = self.script("stop");
        let _ = std::fs::remove_dir_all(&self.state);
        let _ = std::fs::remove_file(self.state.with_extension("lock"));
        let lock = format!("{}.lock", self.state.display());
        let _ = std::fs::remove_file(lock);
    }
}

/// Where an outbox lives and how the relay reaches the services.
#[derive(Debug, Clone)]
pub struct Endpoints {
    /// Superuser URL of the outbox's database (writers and checks; direct).
    pub pg_url: String,
    /// Host and port outboxd uses for PostgreSQL (direct or a proxy).
    pub relay_pg: (String, u16),
    /// Bootstrap servers outboxd uses (direct or a proxy).
    pub relay_brokers: String,
    /// Bootstrap servers the checker reads from (direct).
    pub checker_brokers: String,
}

/// An outbox table, a publication and slot, the topic it routes to and the relay's
/// settings.
#[derive(Debug)]
pub struct Outbox {
    pub endpoints: Endpoints,
    pub slot: String,
    pub topic: String,
    pub env: Vec<(String, String)>,
    _db: Option<TestDb>,
    _topics: Option<TestTopics>,
}

const SCHEMA: &str = "CREATE TABLE outbox (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), \
         aggregatetype text, aggregateid text, type text NOT NULL DEFAULT 'created', \
         payload jsonb, timestamp timestamptz NOT NULL DEFAULT now());
     CREATE TABLE aggregates (id text PRIMARY KEY, seq bigint NOT NULL);
     CREATE TABLE busy (id bigint, pad text);
     CREATE PUBLICATION outboxd_pub FOR TABLE outbox WITH (publish = 'insert');";

impl Outbox {
    /// An outbox in a fresh database of the shared cluster, routed to a fresh topic
    /// of 3 partitions on the shared broker. `relay_pg` overrides where outboxd
    /// connects (a proxy).
    pub async fn on_shared(relay_pg: Option<(String, u16)>, extra_env: &[(&str, &str)]) -> Outbox {
        Self::on_shared_with_partitions(relay_pg, 3, extra_env).await
    }

    /// [`on_shared`](Self::on_shared) with a topic of `partitions` partitions.
    pub async fn on_shared_with_partitions(
        relay_pg: Option<(String, u16)>,
        partitions: i32,
        extra_env: &[(&str, &str)],
    ) -> Outbox {
        let db = TestDb::create().await;
        let prefix = unique_name("outbox");
        let topic = format!("{prefix}.{AGGREGATE_TYPE}");
        let topics = TestTopics::create_named(std::slice::from_ref(&topic), partitions).await;
        let endpoints = Endpoints {
            pg_url: db.url.clone(),
            relay_pg: relay_pg.unwrap_or_else(|| (db.host.clone(), db.port)),
            relay_brokers: services().kafka_brokers.clone(),
            checker_brokers: services().kafka_brokers.clone(),
        };
        let mut o = Self::prepare(endpoints, &db.name, &prefix, extra_env).await;
        o._db = Some(db);
        o._topics = Some(topics);
        o
    }

    /// An outbox in database `postgres` of a dedicated cluster (or any database
    /// given by `endpoints.pg_url`); the topic must exist or be auto-created.
    pub async fn on(endpoints: Endpoints, prefix: &str, extra_env: &[(&str, &str)]) -> Outbox {
        let dbname = endpoints
            .pg_url
            .rsplit('/')
            .next()
            .unwrap_or("postgres")
            .split('?')
            .next()
            .unwrap_or("postgres")
            .to_owned();
        Self::prepare(endpoints, &dbname, prefix, extra_env).await
    }

    async fn prepare(
        endpoints: Endpoints,
        dbname: &str,
        prefix: &str,
        extra_env: &[(&str, &str)],
    ) -> Outbox {
        let c = pg_connect(&endpoints.pg_url).await;
        c.batch_execute(SCHEMA).await.expect("outbox schema");
        // As `outboxd init --apply` would: the slot exists before the first event.
        let slot = unique_name("outboxd_slot");
        c.execute(
            "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
            &[&slot],
        )
        .await
        .expect("slot");
        let (host, port) = &endpoints.relay_pg;
        let mut env: Vec<(String, String)> = [
            (
                "OUTBOXD_POSTGRES__URL",
                format!("postgres://postgres@{host}:{port}/{dbname}?sslmode=disable"),
            ),
            ("OUTBOXD_POSTGRES__SLOT", slot.clone()),
            ("OUTBOXD_POSTGRES__PUBLICATION", "outboxd_pub".to_owned()),
            ("OUTBOXD_POSTGRES__STATUS_INTERVAL_MS", "1000".to_owned()),
            ("OUTBOXD_KAFKA__BROKERS", endpoints.relay_brokers.clone()),
            (
                "OUTBOXD_ROUTING__TOPIC",
                format!("{prefix}.${{routedByValue}}"),
            ),
            ("OUTBOXD_SERVER__METRICS_ADDRESS", String::new()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        for (k, v) in extra_env {
            env.retain(|(key, _)| key != k);
            env.push((k.to_string(), v.to_string()));
        }
        Outbox {
            endpoints,
            slot,
            topic: format!("{prefix}.{AGGREGATE_TYPE}"),
            env,
            _db: None,
            _topics: None,
        }
    }

    /// Sets (or replaces) one of the relay's settings.
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_owned(), value.to_owned()));
    }

    pub fn start(&self, name: &str) -> RelayProcess {
        RelayProcess::start(&self.env, name)
    }

    /// Restarts `relay` if it exits within `wait` (a delivery it could not complete),
    /// as a supervisor would; true if it had to.
    pub fn restart_if_exited(
        &self,
        relay: &mut RelayProcess,
        wait: Duration,
        after: &dyn std::fmt::Display,
    ) -> bool {
        let Some(status) = relay.wait_timeout(wait) else {
            return false;
        };
        println!(
            "relay exited ({status:?}) after {after}:\n{}",
            tail(&relay.log_text())
        );
        *relay = self.start("restarted");
        true
    }

    /// A new superuser connection to the outbox's database.
    pub async fn connect(&self) -> tokio_postgres::Client {
        pg_connect(&self.endpoints.pg_url).await
    }

    /// Aggregate id → last sequence number committed (retries while the server is
    /// coming back).
    pub async fn committed(&self) -> HashMap<String, i64> {
        for _ in 0..60 {
            if let Ok(Ok((c, conn))) = tokio::time::timeout(
                Duration::from_secs(5),
                tokio_postgres::connect(&self.endpoints.pg_url, tokio_postgres::NoTls),
            )
            .await
            {
                tokio::spawn(conn);
                if let Ok(rows) = c.query("SELECT id, seq FROM aggregates", &[]).await {
                    return rows.into_iter().map(|r| (r.get(0), r.get(1))).collect();
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        panic!(
            "cannot read the committed events from {}",
            self.endpoints.pg_url
        );
    }

    pub async fn confirmed_flush(&self) -> Option<outboxd_pgoutput::Lsn> {
        let row = self
            .connect()
            .await
            .query_opt(
                "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
                &[&self.slot],
            )
            .await
            .ok()??;
        row.get::<_, Option<String>>(0).and_then(|s| s.parse().ok())
    }

    /// Reads the topic until `expected` distinct events arrived (or `timeout`).
    pub async fn read_events(&self, expected: usize, timeout: Duration) -> Vec<ConsumedRecord> {
        let topics = vec![self.topic.clone()];
        let brokers = self.endpoints.checker_brokers.clone();
        tokio::task::spawn_blocking(move || {
            let mut seen = HashSet::new();
            let mut checked = 0;
            consume_until_from(&brokers, &topics, timeout, |records| {
                for r in &records[checked..] {
                    seen.insert(r.header("id"));
                }
                checked = records.len();
                seen.len() >= expected
            })
        })
        .await
        .expect("checker")
    }

    /// Reads the topic until every committed event arrived (or `timeout`) and checks
    /// what arrived against what was committed.
    pub async fn check(&self, timeout: Duration) -> (DeliveryReport, usize) {
        let committed = self.committed().await;
        let expected: usize = committed.values().map(|v| *v as usize).sum();
        let records = self.read_events(expected, timeout).await;
        (DeliveryReport::check(&records, &committed), expected)
    }
}

/// What the writers should do.
#[derive(Debug, Clone, Copy)]
pub struct LoadSpec {
    pub writers: usize,
    pub aggregates: usize,
    pub per_txn: usize,
    pub seed: u64,
    /// Events each writer writes before stopping (None: until stopped).
    pub events_per_writer: Option<usize>,
    /// Transactions per second per writer (None: as fast as possible).
    pub txn_rate: Option<f64>,
}

/// Concurrent writers that keep going through failures: a transaction that fails
/// (or whose commit outcome is unknown) is given up and the writer reconnects. Each
/// event carries its aggregate's next sequence number taken under the aggregate's
/// row lock, so the database holds the truth of what was committed, in order.
#[derive(Debug)]
pub struct Load {
    stop: Arc<AtomicBool>,
    pub committed_txns: Arc<AtomicU64>,
    pub failed_txns: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    pub fn start(pg_url: &str, spec: LoadSpec) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let committed_txns = Arc::new(AtomicU64::new(0));
        let failed_txns = Arc::new(AtomicU64::new(0));
        let tasks = (0..spec.writers)
            .map(|w| {
                let url = pg_url.to_owned();
                let stop = stop.clone();
                let ok = committed_txns.clone();
                let failed = failed_txns.clone();
                tokio::spawn(async move { writer(url, spec, w, stop, ok, failed).await })
            })
            .collect();
        Load {
            stop,
            committed_txns,
            failed_txns,
            tasks,
        }
    }

    /// Waits for writers with a quota to finish.
    pub async fn finish(self) -> Self {
        let Load {
            stop,
            committed_txns,
            failed_txns,
            tasks,
        } = self;
        for t in tasks {
            t.await.expect("writer");
        }
        Load {
            stop,
            committed_txns,
            failed_txns,
            tasks: Vec::new(),
        }
    }

    /// Stops the writers and waits for them.
    pub async fn stop(self) -> Self {
        self.stop.store(true, Ordering::SeqCst);
        self.finish().await
    }
}

async fn writer(
    url: String,
    spec: LoadSpec,
    w: usize,
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(spec.seed.wrapping_add(w as u64));
    let mut written = 0usize;
    let mut client: Option<tokio_postgres::Client> = None;
    let started = Instant::now();
    let mut txns = 0u64;
    while !stop.load(Ordering::SeqCst) {
        if let Some(quota) = spec.events_per_writer {
            if written >= quota {
                break;
            }
        }
        if let Some(rate) = spec.txn_rate {
            let due = started + Duration::from_secs_f64(txns as f64 / rate);
            tokio::time::sleep_until(due.into()).await;
        }
        txns += 1;
        if client.as_ref().is_none_or(|c| c.is_closed()) {
            match tokio::time::timeout(
                Duration::from_secs(5),
                tokio_postgres::connect(&url, tokio_postgres::NoTls),
            )
            .await
            {
                Ok(Ok((c, conn))) => {
                    tokio::spawn(conn);
                    client = Some(c);
                }
                _ => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            }
        }
        let n = spec
            .events_per_writer
            .map_or(spec.per_txn, |q| spec.per_txn.min(q - written));
        // Sorted, so concurrent transactions lock aggregates in one order.
        let mut ids: Vec<String> = (0..n)
            .map(|_| format!("agg-{:04}", rng.random_range(0..spec.aggregates)))
            .collect();
        ids.sort();
        let c = client.as_mut().expect("connected");
        let result = tokio::time::timeout(Duration::from_secs(15), write_txn(c, &ids)).await;
        match result {
            Ok(Ok(())) => {
                written += n;
                ok.fetch_add(1, Ordering::Relaxed);
            }
            _ => {
                failed.fetch_add(1, Ordering::Relaxed);
                client = None;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn write_txn(
    client: &mut tokio_postgres::Client,
    ids: &[String],
) -> Result<(), tokio_postgres::Error> {
    let tx = client.transaction().await?;
    let statement = tx
        .prepare(
            "WITH s AS (INSERT INTO aggregates AS a VALUES ($1, 1) \
                        ON CONFLICT (id) DO UPDATE SET seq = a.seq + 1 RETURNING seq) \
             INSERT INTO outbox (aggregatetype, aggregateid, payload) \
             SELECT 'order', $1, jsonb_build_object('agg', $1::text, 'seq', s.seq, \
                                                    'pad', repeat('p', 150)) FROM s",
        )
        .await?;
    for id in ids {
        tx.execute(&statement, &[id]).await?;
    }
    tx.commit().await
}

/// One scenario's result, printed and appended to `$OUTBOXD_FAULT_REPORT` (a file)
/// when that is set.
#[derive(Debug)]
pub struct ScenarioResult<'a> {
    pub name: &'a str,
    pub seed: u64,
    pub events: usize,
    pub faults: usize,
    pub report: &'a DeliveryReport,
    pub elapsed: Duration,
}

impl ScenarioResult<'_> {
    pub fn print(&self) {
        let line = format!(
            "{{\"scenario\":\"{}\",\"seed\":{},\"events\":{},\"faults\":{},\"delivered\":{},\"missing\":{},\"reordered\":{},\"duplicated\":{},\"seconds\":{:.1}}}",
            self.name,
            self.seed,
            self.events,
            self.faults,
            self.report.delivered,
            self.report.missing,
            self.report.order_violations,
            self.report.duplicates,
            self.elapsed.as_secs_f64()
        );
        println!("SCENARIO {line}");
        if let Ok(path) = std::env::var("OUTBOXD_FAULT_REPORT") {
            use std::io::Write;
            if let Ok(mut f) = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
            {
                let _ = writeln!(f, "{line}");
            }
        }
    }

    /// Zero missing, zero order violations, every committed event delivered.
    pub fn assert_complete(&self, log: &str) {
        self.report.assert_complete(
            self.events,
            &format!("{}\n--- relay log tail ---\n{}", self.name, tail(log)),
        );
    }
}

/// The last 80 lines of a log.
pub fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(80)..].join("\n")
}

/// A plain HTTP GET on 127.0.0.1 (status, body); status 0 when nobody answers.
pub fn http_get(port: u16, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return (0, String::new());
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    );
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, response)
}

/// The value of a metric line `name value` in a Prometheus text body.
pub fn metric(body: &str, name: &str) -> Option<f64> {
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

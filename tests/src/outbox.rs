//! An outbox to relay: its table, publication and slot, the topic it routes to, and
//! the relay's binary and settings; what was committed and what arrived.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::db::{pg_connect, TestDb};
use crate::env::{services, unique_name};
use crate::kafka::{consume_until_from, ConsumedRecord, TestTopics};
use crate::process::{outboxd_command, tail, Process};
use crate::report::DeliveryReport;

/// The aggregate type the writers use: events go to `<prefix>.order`.
pub const AGGREGATE_TYPE: &str = "order";

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

/// An outbox table, a publication and slot, the topic it routes to and the relay:
/// its binary and its settings.
#[derive(Debug)]
pub struct Outbox {
    pub endpoints: Endpoints,
    pub slot: String,
    pub topic: String,
    pub env: Vec<(String, String)>,
    /// The `outboxd` binary the relay runs.
    binary: PathBuf,
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
    /// of 3 partitions on the shared broker, relayed by `binary` (the `outboxd`
    /// binary). `relay_pg` overrides where outboxd connects (a proxy).
    pub async fn on_shared(
        binary: impl AsRef<Path>,
        relay_pg: Option<(String, u16)>,
        extra_env: &[(&str, &str)],
    ) -> Outbox {
        Self::on_shared_with_partitions(binary, relay_pg, 3, extra_env).await
    }

    /// [`on_shared`](Self::on_shared) with a topic of `partitions` partitions.
    pub async fn on_shared_with_partitions(
        binary: impl AsRef<Path>,
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
        let mut o = Self::prepare(binary.as_ref(), endpoints, &db.name, &prefix, extra_env).await;
        o._db = Some(db);
        o._topics = Some(topics);
        o
    }

    /// An outbox in database `postgres` of a dedicated cluster (or any database
    /// given by `endpoints.pg_url`); the topic must exist or be auto-created.
    pub async fn on(
        binary: impl AsRef<Path>,
        endpoints: Endpoints,
        prefix: &str,
        extra_env: &[(&str, &str)],
    ) -> Outbox {
        let dbname = endpoints
            .pg_url
            .rsplit('/')
            .next()
            .unwrap_or("postgres")
            .split('?')
            .next()
            .unwrap_or("postgres")
            .to_owned();
        Self::prepare(binary.as_ref(), endpoints, &dbname, prefix, extra_env).await
    }

    async fn prepare(
        binary: &Path,
        endpoints: Endpoints,
        dbname: &str,
        prefix: &str,
        extra_env: &[(&str, &str)],
    ) -> Outbox {
        let c = pg_connect(&endpoints.pg_url).await;
        c.batch_execute(SCHEMA).await.expect("outbox schema");
        let slot = unique_name("outboxd_slot");
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
        let outbox = Outbox {
            endpoints,
            slot,
            topic: format!("{prefix}.{AGGREGATE_TYPE}"),
            binary: binary.to_owned(),
            env,
            _db: None,
            _topics: None,
        };
        // The slot and the checkpoint topic exist before the first event.
        outbox.init_apply();
        outbox
    }

    /// Runs `outboxd init --apply` with the relay's settings.
    pub fn init_apply(&self) {
        let out = self.command(&["init", "--apply"]);
        assert!(
            out.status.success(),
            "outboxd init --apply failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Runs `outboxd` with `args` and the relay's settings, to completion.
    pub fn command(&self, args: &[&str]) -> std::process::Output {
        Command::new(&self.binary)
            .args(args)
            .env_remove("OUTBOXD_CONFIG")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("NO_COLOR", "1")
            .output()
            .unwrap_or_else(|e| panic!("running outboxd {args:?}: {e}"))
    }

    /// Sets (or replaces) one of the relay's settings.
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_owned(), value.to_owned()));
    }

    /// Starts `outboxd run`; its log is named after `name`.
    pub fn start(&self, name: &str) -> Process {
        self.start_with(&["run"], name)
    }

    /// Starts `outboxd` with the command line `args` (e.g. `run --accept-gap`) and
    /// the relay's settings on top of a clean environment for outboxd's settings.
    pub fn start_with(&self, args: &[&str], name: &str) -> Process {
        Process::start(outboxd_command(&self.binary, args, &self.env), name)
    }

    /// Restarts `relay` if it exits within `wait` (a delivery it could not complete),
    /// as a supervisor would; true if it had to.
    pub fn restart_if_exited(
        &self,
        relay: &mut Process,
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

    /// Commits one transaction of `events` events, each of its own new aggregate
    /// (`agg-1` …) with a payload of about 1 kB, as the writers' ledger expects them.
    pub async fn commit_one_large_transaction(&self, events: usize) {
        self.connect()
            .await
            .batch_execute(&format!(
                "INSERT INTO aggregates SELECT 'agg-' || g, 1 FROM generate_series(1, {events}) g;
                 INSERT INTO outbox (aggregatetype, aggregateid, payload)
                 SELECT 'order', 'agg-' || g,
                        jsonb_build_object('agg', 'agg-' || g, 'seq', 1, 'pad', repeat('m', 1000))
                 FROM generate_series(1, {events}) g;"
            ))
            .await
            .expect("the large transaction commits");
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

//! What the inbox's integration tests share: a database with the inbox and an
//! `applied` table, a producer of outboxd-shaped records, a recording handler, and
//! an inbox running in the background.

#![allow(dead_code)] // each test binary uses a part

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use outboxd_inbox::deadpool_postgres::{self, Pool};
use outboxd_inbox::rdkafka::message::{Header, OwnedHeaders};
use outboxd_inbox::rdkafka::producer::{FutureProducer, FutureRecord};
use outboxd_inbox::rdkafka::ClientConfig;
use outboxd_inbox::tokio_postgres::{NoTls, Transaction};
use outboxd_inbox::{BoxError, Config, Error, Event, Handler, Inbox, Metrics};
use outboxd_tests::{services, TestDb};

/// Every application of an event, in the order they committed; deliberately no
/// unique constraint, so that applying twice would show.
const APPLIED: &str = "CREATE TABLE applied (n bigserial PRIMARY KEY, event_id text NOT NULL, \
     aggregate_id text, seq bigint, late_after text, replayed boolean NOT NULL)";

pub async fn database() -> (TestDb, Pool) {
    let db = TestDb::create().await;
    let mut config = deadpool_postgres::Config::new();
    config.url = Some(db.url.clone());
    let pool = config
        .create_pool(Some(deadpool_postgres::Runtime::Tokio1), NoTls)
        .expect("pool");
    pool.get()
        .await
        .expect("connection")
        .batch_execute(APPLIED)
        .await
        .expect("applied table");
    (db, pool)
}

/// Records each event in `applied`; fails the first `fail_first` attempts at the
/// event with id `fail_id` (all of them with `u32::MAX`), and sleeps `delay` inside
/// the transaction to widen the windows rebalances can hit.
#[derive(Debug, Clone, Default)]
pub struct Recorder {
    pub fail_id: Option<String>,
    pub fail_first: u32,
    pub attempts: Arc<AtomicU32>,
    pub delay: Duration,
    /// Panics on the event with this id.
    pub panic_id: Option<String>,
}

impl Handler for Recorder {
    async fn handle(&self, tx: &Transaction<'_>, event: &Event) -> Result<(), BoxError> {
        assert_ne!(self.panic_id.as_deref(), Some(event.id()), "injected panic");
        if self.fail_id.as_deref() == Some(event.id()) {
            let attempt = self.attempts.fetch_add(1, Ordering::SeqCst) + 1;
            if attempt <= self.fail_first {
                return Err(format!("injected failure, attempt {attempt}").into());
            }
        }
        let seq: Option<i64> = event
            .payload()
            .and_then(|p| std::str::from_utf8(p).ok())
            .and_then(|s| s.parse().ok());
        tx.execute(
            "INSERT INTO applied (event_id, aggregate_id, seq, late_after, replayed) \
             VALUES ($1, $2, $3, $4, $5)",
            &[
                &event.id(),
                &event.aggregate_id(),
                &seq,
                &event.late_after().map(|v| v.to_string()),
                &event.is_replay(),
            ],
        )
        .await?;
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        Ok(())
    }
}

pub fn producer() -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", &services().kafka_brokers)
        .set("enable.idempotence", "true")
        .create()
        .expect("producer")
}

/// One outboxd-shaped record: `headers` as given, key = aggregate, value = seq.
pub struct Rec<'a> {
    pub aggregate: &'a str,
    pub seq: i64,
    pub headers: &'a [(&'a str, &'a str)],
}

pub async fn produce(producer: &FutureProducer, topic: &str, records: &[Rec<'_>]) {
    for r in records {
        let mut headers = OwnedHeaders::new();
        for (k, v) in r.headers {
            headers = headers.insert(Header {
                key: k,
                value: Some(v.as_bytes()),
            });
        }
        let value = r.seq.to_string();
        producer
            .send(
                FutureRecord::to(topic)
                    .key(r.aggregate)
                    .payload(&value)
                    .headers(headers),
                Duration::from_secs(30),
            )
            .await
            .expect("produce");
    }
}

/// An inbox running in the background until [`Running::stop`].
pub struct Running {
    pub metrics: Arc<Metrics>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), Error>>,
}

pub fn config(topic: &str, group: &str) -> Config {
    let mut c = Config::new(services().kafka_brokers.clone(), group, [topic]);
    c.backoff = Duration::from_millis(20);
    c.max_attempts = 5;
    // Quick rebalances: the broker's minimum session timeout.
    c.property("session.timeout.ms", "6000")
        .property("heartbeat.interval.ms", "500")
        .property("topic.metadata.refresh.interval.ms", "1000")
}

pub async fn start(config: Config, pool: Pool, handler: Recorder) -> Running {
    let inbox = Inbox::new(config, pool).expect("inbox");
    inbox.create_tables().await.expect("inbox tables");
    let metrics = inbox.metrics();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(inbox.run(handler, async move {
        let _ = stopped.await;
    }));
    Running {
        metrics,
        stop: Some(stop),
        task,
    }
}

impl Running {
    /// Graceful shutdown; the run's result.
    pub async fn stop(mut self) -> Result<(), Error> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(Duration::from_secs(60), &mut self.task)
            .await
            .expect("the inbox stops within 60 s")
            .expect("inbox task")
    }

    /// The run's result once it ends by itself (an error), within `timeout`.
    pub async fn ended(mut self, timeout: Duration) -> Result<(), Error> {
        tokio::time::timeout(timeout, &mut self.task)
            .await
            .expect("the inbox ended by itself")
            .expect("inbox task")
    }

    /// Events done (applied, duplicate or stale).
    pub fn done(&self) -> u64 {
        self.metrics.applied() + self.metrics.duplicates() + self.metrics.stale()
    }
}

/// Waits until `condition` holds, or panics with `what` after `timeout`.
pub async fn wait_for(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `SELECT event_id … FROM applied ORDER BY n`.
pub async fn applied(pool: &Pool) -> Vec<(String, Option<String>, Option<i64>, Option<String>)> {
    pool.get()
        .await
        .expect("connection")
        .query(
            "SELECT event_id, aggregate_id, seq, late_after FROM applied ORDER BY n",
            &[],
        )
        .await
        .expect("applied")
        .into_iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect()
}

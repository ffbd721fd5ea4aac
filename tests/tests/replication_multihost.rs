//! Multi-host connection strings against real servers: both connections (the
//! replication connection and the admin connection) pass over hosts that refuse,
//! stay silent or do not match `target_session_attrs`, and name every host they
//! passed over when none will do.
//!
//! The primary/standby cases run a dedicated primary (scripts/pg.sh on a free port)
//! and a hot standby of it made here with `pg_basebackup -R`, never the shared
//! cluster.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use outboxd_replication::{
    Admin, AuthFailure, ConnectOptions, Error, Host, PgConnection, ReplicationClient, SslMode,
    TargetSessionAttrs,
};
use outboxd_tests::proxy::{FaultProxy, Mode};
use outboxd_tests::{free_port, DedicatedPg};
use outboxd_tests::{services, unique_name, TestDb};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// A port nothing listens on: connecting is refused.
fn closed_port() -> u16 {
    free_port()
}

/// The port the replication connection reached, and the admin connection's peer.
async fn connected_ports(opts: &ConnectOptions) -> (String, String) {
    let conn = PgConnection::connect(opts, true)
        .await
        .unwrap_or_else(|e| panic!("replication connection to {}: {e}", opts.describe()));
    let peer = conn.peer().to_owned();
    conn.terminate().await;
    let admin = Admin::connect(opts)
        .await
        .unwrap_or_else(|e| panic!("admin connection to {}: {e}", opts.describe()));
    (peer, admin.peer().to_owned())
}

/// Both connections' errors for `opts`, which must fail.
async fn both_errors(opts: &ConnectOptions) -> [Error; 2] {
    let replication = ReplicationClient::connect(opts)
        .await
        .expect_err("the replication connection must fail");
    let admin = Admin::connect(opts)
        .await
        .expect_err("the admin connection must fail");
    [replication, admin]
}

#[tokio::test]
async fn a_refusing_first_host_is_passed_over_by_both_connections() {
    let db = TestDb::create().await;
    let closed = closed_port();
    let url = format!(
        "postgres://postgres@127.0.0.1:{closed},{}:{}/{}?sslmode=disable",
        db.host, db.port, db.name
    );
    let opts: ConnectOptions = url.parse().unwrap();
    let (replication, admin) = connected_ports(&opts).await;
    assert_eq!(replication, format!("{}:{}", db.host, db.port));
    assert_eq!(
        admin,
        format!("{}:{}/{} as postgres", db.host, db.port, db.name)
    );
    let mut client = ReplicationClient::connect(&opts).await.unwrap();
    client.identify_system().await.unwrap();
}

#[tokio::test]
async fn connect_timeout_bounds_each_host_so_a_silent_one_is_passed_over() {
    let db = TestDb::create().await;
    let silent = FaultProxy::start(format!("{}:{}", db.host, db.port).parse().unwrap());
    silent.set_mode(Mode::Blackhole);
    let mut opts = db.connect_options("postgres");
    opts.hosts.insert(0, Host::new("127.0.0.1", silent.port()));
    opts.connect_timeout = CONNECT_TIMEOUT;
    let started = Instant::now();
    let (replication, _) = connected_ports(&opts).await;
    let took = started.elapsed();
    assert_eq!(replication, opts.hosts[1].to_string());
    // Each connection waits out the silent host once.
    assert!(
        took >= CONNECT_TIMEOUT * 2 && took < CONNECT_TIMEOUT * 4,
        "{took:?}"
    );
}

#[tokio::test]
async fn when_every_host_refuses_the_error_names_each() {
    let (a, b) = (closed_port(), closed_port());
    let opts: ConnectOptions = format!("host=127.0.0.1,localhost port={a},{b} sslmode=disable")
        .parse()
        .unwrap();
    for e in both_errors(&opts).await {
        let text = e.to_string();
        assert!(matches!(e, Error::NoUsableHost { .. }), "{e:?}");
        assert!(
            text.contains(&format!("127.0.0.1:{a}: "))
                && text.contains(&format!("localhost:{b}: ")),
            "{text}"
        );
        assert!(text.to_lowercase().contains("connection refused"), "{text}");
        assert!(e.is_retryable(), "{text}");
    }
}

#[tokio::test]
async fn a_refused_login_ends_the_search() {
    let db = TestDb::create().await;
    let mut opts = db.connect_options(&unique_name("no_such_role"));
    opts.hosts.push(Host::new("127.0.0.1", closed_port()));
    for e in both_errors(&opts).await {
        // The server's refusal itself, not a list: the next host would say the same.
        let code = match &e {
            Error::Auth {
                failure: AuthFailure::Rejected(server),
                ..
            } => Some(server.code.as_str()),
            other => other.sqlstate(),
        };
        assert_eq!(code, Some("28000"), "{e:?}");
        assert!(!e.is_retryable(), "{e}");
    }
}

#[tokio::test]
async fn verify_full_checks_each_host_against_its_own_name() {
    let db = TestDb::create().await;
    let ca = services()
        .pg_ca
        .clone()
        .expect("the test cluster's CA certificate (OUTBOXD_TEST_PG_CA or .local/pg/tls/ca.crt)");
    // Both hosts are reached at the shared cluster's address; only the names
    // differ, and the certificate names localhost, not db.invalid.
    let options = |names: &str, ports: String| -> ConnectOptions {
        format!(
            "host={names} hostaddr=127.0.0.1,127.0.0.1 port={ports} dbname={} user=postgres \
             sslmode=verify-full sslrootcert={ca}",
            db.name
        )
        .parse()
        .unwrap()
    };
    let closed = closed_port();
    let good = options("db.invalid,localhost", format!("{closed},{}", db.port));
    let (replication, admin) = connected_ports(&good).await;
    assert_eq!(replication, format!("localhost:{}", db.port));
    assert!(
        admin.starts_with(&format!("localhost:{}/", db.port)),
        "{admin}"
    );

    let bad = options("localhost,db.invalid", format!("{closed},{}", db.port));
    for e in both_errors(&bad).await {
        assert!(
            matches!(&e, Error::Tls { peer, .. } if *peer == format!("db.invalid:{}", db.port)),
            "{e:?}"
        );
    }
}

/// A hot standby of a dedicated primary: `pg_basebackup -R` (standby.signal and
/// primary_conninfo) into a cluster directory of its own, run by scripts/pg.sh on a
/// free port. Stopped and removed when dropped.
struct HotStandby {
    port: u16,
    state: PathBuf,
}

impl HotStandby {
    fn of(primary: &DedicatedPg) -> HotStandby {
        let standby = HotStandby {
            port: free_port(),
            state: std::env::temp_dir().join(unique_name("outboxd-standby")),
        };
        let cluster = standby.state.join("cluster");
        std::fs::create_dir_all(cluster.join("run")).unwrap();
        std::fs::write(
            standby.state.join("location"),
            cluster.display().to_string(),
        )
        .unwrap();
        run(Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(&cluster));
        run(Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(bindir().join("pg_basebackup"))
            .args([
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
                "-R",
                "-c",
                "fast",
                "--no-sync",
            ])
            .args(["-p", &primary.port.to_string()])
            .arg("-D")
            .arg(cluster.join("data")));
        run(&mut standby.pg_sh("start"));
        standby
    }

    fn pg_sh(&self, cmd: &str) -> Command {
        let mut command = Command::new(repo_root().join("scripts/pg.sh"));
        command
            .arg(cmd)
            .env("PG_PORT", self.port.to_string())
            .env("PG_STATE_DIR", &self.state);
        command
    }
}

impl Drop for HotStandby {
    fn drop(&mut self) {
        let _ = self.pg_sh("stop").output();
        let _ = std::fs::remove_dir_all(&self.state);
    }
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The PostgreSQL server binaries scripts/pg.sh uses.
fn bindir() -> PathBuf {
    let out = run(Command::new(repo_root().join("scripts/pg.sh")).arg("env"));
    let line = out
        .lines()
        .find_map(|l| l.strip_prefix("export OUTBOXD_TEST_PG_BINDIR="))
        .expect("scripts/pg.sh env names the bin directory");
    PathBuf::from(line.trim())
}

fn run(command: &mut Command) -> String {
    let out = command.output().expect("command runs");
    assert!(
        out.status.success(),
        "{command:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Options for database `postgres` on `hosts` (ports on 127.0.0.1), wanting `attrs`.
fn on(ports: &[u16], attrs: TargetSessionAttrs) -> ConnectOptions {
    ConnectOptions {
        hosts: ports.iter().map(|p| Host::new("127.0.0.1", *p)).collect(),
        dbname: "postgres".to_owned(),
        sslmode: SslMode::Disable,
        connect_timeout: CONNECT_TIMEOUT,
        target_session_attrs: attrs,
        ..ConnectOptions::default()
    }
}

#[tokio::test]
async fn target_session_attrs_picks_between_a_standby_and_its_primary() {
    let primary = DedicatedPg::start();
    let standby = HotStandby::of(&primary);
    let (p, s, closed) = (primary.port, standby.port, closed_port());
    let at = |port: u16| format!("127.0.0.1:{port}");
    use TargetSessionAttrs::*;

    for (hosts, attrs, expected) in [
        (vec![s, p], Any, s),
        (vec![s, p], ReadWrite, p),
        (vec![s, p], Primary, p),
        (vec![p, s], ReadOnly, s),
        (vec![p, s], Standby, s),
        (vec![p, s], PreferStandby, s),
        (vec![p], PreferStandby, p),
    ] {
        let (replication, admin) = connected_ports(&on(&hosts, attrs)).await;
        assert_eq!(replication, at(expected), "{attrs} on {hosts:?}");
        assert!(
            admin.starts_with(&at(expected)),
            "{attrs} on {hosts:?}: {admin}"
        );
    }

    // The read-write one is found through a URL too, as an operator writes it.
    let url = format!(
        "postgres://postgres@127.0.0.1:{s},127.0.0.1:{p}/postgres?target_session_attrs=read-write&sslmode=disable"
    );
    let (replication, _) = connected_ports(&url.parse().unwrap()).await;
    assert_eq!(replication, at(p));

    // Mid-failover: the primary is gone and the standby not yet promoted.
    for e in both_errors(&on(&[closed, s], ReadWrite)).await {
        let text = e.to_string();
        eprintln!("{text}");
        assert!(matches!(e, Error::NoUsableHost { .. }), "{e:?}");
        assert!(text.contains(&format!("{}: ", at(closed))), "{text}");
        assert!(
            text.contains(&format!(
                "{}: read-only (a standby in hot standby mode)",
                at(s)
            )),
            "{text}"
        );
        assert!(e.is_retryable(), "{text}");
    }
}

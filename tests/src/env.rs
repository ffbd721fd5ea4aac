//! The environment a test runs in: where the shared services are, seeds and settings
//! from environment variables, names no other test uses, free ports, tracing, and
//! cleanup that works from `Drop`.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

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

    /// The shared cluster's port on 127.0.0.1, for a proxy in front of it.
    pub fn pg_addr(&self) -> std::net::SocketAddr {
        let config: tokio_postgres::Config =
            self.pg_url.parse().expect("OUTBOXD_TEST_PG_URL parses");
        let port = config.get_ports().first().copied().unwrap_or(5432);
        std::net::SocketAddr::from(([127, 0, 0, 1], port))
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

/// Ports handed to the tests' own servers: below Linux's ephemeral range (32768 and
/// up by default), which `bind(0)` and every outgoing connection draw from, so a port
/// found free there could be taken before the server meant for it binds; and apart
/// from the ranges the scripts pick from (scripts/test-pg-versions.sh,
/// scripts/test-debezium.sh).
const TEST_PORTS: std::ops::Range<u16> = 20000..25000;

/// A TCP port on 127.0.0.1 that nothing listens on and that this process has not
/// handed out before (two tests running side by side get different ones).
pub fn free_port() -> u16 {
    static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    for _ in 0..1000 {
        let port = rand::random_range(TEST_PORTS);
        if !handed_out.contains(&port) && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            handed_out.insert(port);
            return port;
        }
    }
    panic!("no free port in {TEST_PORTS:?} after 1000 tries: are old test servers still running?")
}

/// Runs cleanup on a thread with a runtime of its own: `Drop` may run inside a test's
/// runtime (where blocking on it would panic) or during a panic unwinding.
pub(crate) fn run_cleanup<F: std::future::Future<Output = ()> + Send + 'static>(cleanup: F) {
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

//! PostgreSQL clusters and Kafka brokers of a test's own, started with the project's
//! scripts on free ports and in their own state directories, that the test may crash
//! and restart (never the shared ones).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;

use crate::env::{free_port, unique_name};
use crate::process::tail;
use crate::proxy::FaultProxy;

fn repo_root() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// Runs `scripts/<script>`: its standard output, or what it printed if it failed.
pub(crate) fn run_script(
    script: &str,
    args: &[&str],
    env: &[(&str, String)],
) -> Result<String, String> {
    let out = std::process::Command::new(repo_root().join("scripts").join(script))
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .map_err(|e| format!("{script}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
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
    (port, controller_port, state): (u16, u16, &Path),
    mut env: Vec<(&str, String)>,
) -> Result<(), String> {
    env.extend([
        ("KAFKA_PORT", port.to_string()),
        ("KAFKA_CONTROLLER_PORT", controller_port.to_string()),
        ("KAFKA_STATE_DIR", state.display().to_string()),
    ]);
    run_script("kafka.sh", &[cmd], &env).map(drop)
}

/// Runs one of Kafka's command-line tools (`scripts/kafka.sh tool <class>`, what
/// `kafka-transactions.sh`, `kafka-acls.sh` and friends run) against `brokers`: its
/// standard output, or what it printed if it failed. Blocking.
pub fn kafka_tool(class: &str, brokers: &str, args: &[&str]) -> Result<String, String> {
    let tool = [&["tool", class, "--bootstrap-server", brokers], args].concat();
    run_script("kafka.sh", &tool, &[])
}

/// A Kafka broker of the test's own (scripts/kafka.sh with KAFKA_STATE_DIR and
/// ports), with a second listener reached through a [`FaultProxy`]
/// that advertises the proxy's address. Stopped and wiped when dropped (kept, with
/// its logs' ends printed, when the test panicked).
#[derive(Debug)]
pub struct DedicatedKafka {
    pub port: u16,
    controller_port: u16,
    proxied_port: u16,
    pub proxy: FaultProxy,
    state: PathBuf,
}

impl DedicatedKafka {
    pub fn start() -> DedicatedKafka {
        let port = free_port();
        let controller_port = free_port();
        let proxied_port = free_port();
        let proxy = FaultProxy::start(format!("127.0.0.1:{proxied_port}").parse().expect("addr"));
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
        while Path::new(&format!("/proc/{}", pid.trim())).exists() && Instant::now() < deadline {
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

    /// Prints the ends of the broker's logs (scripts/kafka.sh writes them to its
    /// state directory): the evidence of a failed test.
    fn print_logs(&self) {
        for log in ["server.log", "console.log"] {
            let path = self.state.join(log);
            let text = std::fs::read(&path)
                .map(|bytes| tail(&String::from_utf8_lossy(&bytes)))
                .unwrap_or_else(|e| format!("({e})"));
            eprintln!("---- end of {} ----\n{text}", path.display());
        }
    }
}

impl Drop for DedicatedKafka {
    /// Stops the broker and wipes its state, but keeps the state (and prints the
    /// logs' ends first, before `stop` adds to them) when the test failed.
    fn drop(&mut self) {
        let failed = std::thread::panicking();
        if failed {
            self.print_logs();
        }
        let _ = self.script("stop");
        if failed {
            eprintln!("dedicated Kafka's state kept in {}", self.state.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.state);
        }
        let _ = std::fs::remove_file(format!("{}.lock", self.state.display()));
    }
}

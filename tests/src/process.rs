//! The programs under test as processes: a workspace package's binary built and
//! located, started with its log in a file, signalled, waited for, and asked over
//! HTTP.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::env::unique_name;

/// The binary `bin` of the workspace package `package`, built if it is not up to date
/// (`cargo build -p package --bin bin`, once per test process and binary), for tests
/// that run another package's binary: `env!("CARGO_BIN_EXE_…")` only names the tested
/// package's own. Built with the profile of the running test, next to it.
pub fn workspace_binary(package: &str, bin: &str) -> PathBuf {
    static BUILT: Mutex<BTreeMap<String, PathBuf>> = Mutex::new(BTreeMap::new());
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(path) = built.get(bin) {
        return path.clone();
    }
    // The test runs as <target>/<profile>/deps/<test>; binaries sit in <profile>.
    let exe = std::env::current_exe().expect("the test's own path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test runs from <target>/<profile>/deps")
        .to_owned();
    let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => "dev".to_owned(),
        Some(name) => name.to_owned(),
    };
    let mut cargo = Command::new(env!("CARGO"));
    // Without the variables cargo sets for this test process: build scripts (ring's)
    // watch some of them, so a build with them rebuilds ring and everything above it,
    // and the next plain `cargo test` rebuilds it all back.
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if ["CARGO_PKG_", "CARGO_MANIFEST_", "CARGO_BIN_EXE_"]
            .iter()
            .any(|prefix| name.starts_with(prefix))
            || [
                "CARGO_CRATE_NAME",
                "CARGO_BIN_NAME",
                "CARGO_PRIMARY_PACKAGE",
                "CARGO_TARGET_TMPDIR",
            ]
            .contains(&name.as_ref())
        {
            cargo.env_remove(name.as_ref());
        }
    }
    let status = cargo
        .args([
            "build",
            "-q",
            "--profile",
            &profile,
            "-p",
            package,
            "--bin",
            bin,
        ])
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .status()
        .unwrap_or_else(|e| panic!("running cargo build -p {package}: {e}"));
    assert!(
        status.success(),
        "cargo build -p {package} --bin {bin} failed"
    );
    let path = profile_dir.join(bin);
    assert!(
        path.exists(),
        "{} missing after cargo build -p {package} (a target dir other than the test's?)",
        path.display()
    );
    built.insert(bin.to_owned(), path.clone());
    path
}

/// `outboxd <args>` with `env` as its settings, on a clean environment for
/// outboxd's settings (no `OUTBOXD_CONFIG`) and with debug logs of its own.
pub fn outboxd_command(binary: &Path, args: &[&str], env: &[(String, String)]) -> Command {
    let mut command = Command::new(binary);
    command
        .args(args)
        .env_remove("OUTBOXD_CONFIG")
        .env("RUST_LOG", "info,outboxd=debug")
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    command
}

/// A running program whose stderr goes to a log file; killed when dropped.
#[derive(Debug)]
pub struct Process {
    child: Child,
    /// The program's file name, for messages.
    name: String,
    /// Where its stderr goes.
    pub log: PathBuf,
}

impl Process {
    /// Spawns `command` with stdout discarded and stderr written to a new log file
    /// named after `log_name` in the temporary directory's `outboxd-test-logs`.
    pub fn start(mut command: Command, log_name: &str) -> Process {
        let dir = std::env::temp_dir().join("outboxd-test-logs");
        std::fs::create_dir_all(&dir).expect("log dir");
        let log = dir.join(format!("{}.log", unique_name(log_name)));
        let file = std::fs::File::create(&log).expect("log file");
        let name = Path::new(command.get_program())
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let child = command
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {name}: {e}"));
        Process { child, name, log }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The process's peak resident memory so far (`VmHWM`), in bytes; 0 if unknown.
    pub fn peak_rss(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    }

    /// Sends a signal (`KILL`, `TERM`, `INT`).
    pub fn signal(&self, name: &str) {
        let _ = Command::new("kill")
            .args([format!("-{name}"), self.child.id().to_string()])
            .status();
    }

    /// Waits up to `timeout` for the process to exit; `None` if it did not.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
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
            "{} did not exit cleanly after SIGTERM: {status:?}\n{}",
            self.name,
            tail(&self.log_text())
        );
    }

    /// The log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
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

/// Waits until the relay's `/readyz` on `port` answers `status` (or `timeout`); true
/// if it did.
pub async fn wait_ready(port: u16, status: u16, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        let got = tokio::task::spawn_blocking(move || http_get(port, "/readyz").0)
            .await
            .unwrap_or(0);
        if got == status {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

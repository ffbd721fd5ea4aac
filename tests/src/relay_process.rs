//! The `outboxd` binary as a process under test: started with its settings in the
//! environment and its log in a file, signalled, waited for, and asked over HTTP.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::env::unique_name;

/// A running `outboxd run` process whose output goes to a log file.
#[derive(Debug)]
pub struct RelayProcess {
    child: std::process::Child,
    /// Where its stderr goes.
    pub log: PathBuf,
}

impl RelayProcess {
    /// Starts `binary run` (the `outboxd` binary: `env!("CARGO_BIN_EXE_outboxd")` in
    /// its package's tests) with `env` (OUTBOXD_… variables) on top of a clean
    /// environment for outboxd's settings.
    pub fn start(binary: &Path, env: &[(String, String)], log_name: &str) -> RelayProcess {
        Self::start_args(binary, &["run"], env, log_name)
    }

    /// As [`start`](Self::start), with the command line `args` (e.g. `run
    /// --accept-gap`).
    pub fn start_args(
        binary: &Path,
        args: &[&str],
        env: &[(String, String)],
        log_name: &str,
    ) -> RelayProcess {
        let dir = std::env::temp_dir().join("outboxd-test-logs");
        std::fs::create_dir_all(&dir).expect("log dir");
        let log = dir.join(format!("{}.log", unique_name(log_name)));
        let file = std::fs::File::create(&log).expect("log file");
        let mut cmd = std::process::Command::new(binary);
        cmd.args(args)
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
        let _ = std::process::Command::new("kill")
            .args([format!("-{name}"), self.child.id().to_string()])
            .status();
    }

    /// Waits up to `timeout` for the process to exit; `None` if it did not.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
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

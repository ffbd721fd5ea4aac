//! A Kafka broker of the test's own with a SASL_SSL listener (SCRAM over TLS, the
//! certificate signed by a throwaway CA) next to its plaintext one, for testing
//! outboxd's Kafka security settings end to end. `scripts/kafka.sh` makes the
//! certificates (`KAFKA_SASL_SSL_PORT`) and the SCRAM user (`KAFKA_SCRAM_USERS`),
//! and optionally turns on ACLs (`KAFKA_AUTHORIZER`) for that listener.

use std::path::PathBuf;

use crate::dedicated::{kafka_script, kafka_tool};
use crate::env::{free_port, unique_name};
use crate::{Endpoints, Outbox, TestDb};

/// Stopped and wiped when dropped.
#[derive(Debug)]
pub struct SecureKafka {
    port: u16,
    controller_port: u16,
    sasl_ssl_port: u16,
    /// Whether Kafka's authorizer holds the user to its ACLs.
    acls: bool,
    state: PathBuf,
    /// The SCRAM user (SCRAM-SHA-256 and SCRAM-SHA-512 credentials).
    pub user: String,
    /// Its password: random, so that a test can look for it in logs.
    pub password: String,
}

impl SecureKafka {
    /// Starts the broker (blocking: run it on a blocking thread in async tests).
    pub fn start(user: &str) -> SecureKafka {
        SecureKafka::start_with(user, false)
    }

    /// Starts the broker with Kafka's ACL authorizer: the user may do only what
    /// [`grant`](Self::grant) allows (the plaintext listener stays unrestricted).
    pub fn start_with_acls(user: &str) -> SecureKafka {
        SecureKafka::start_with(user, true)
    }

    fn start_with(user: &str, acls: bool) -> SecureKafka {
        let k = SecureKafka {
            port: free_port(),
            controller_port: free_port(),
            sasl_ssl_port: free_port(),
            acls,
            state: std::env::temp_dir().join(unique_name("outboxd-secure-kafka")),
            user: user.to_owned(),
            password: format!("scram-{:016x}", rand::random::<u64>()),
        };
        k.script("start")
            .expect("broker with a SASL_SSL listener starts");
        k
    }

    fn script(&self, cmd: &str) -> Result<(), String> {
        let mut env = vec![
            ("KAFKA_SASL_SSL_PORT", self.sasl_ssl_port.to_string()),
            (
                "KAFKA_SCRAM_USERS",
                format!("{}:{}", self.user, self.password),
            ),
        ];
        if self.acls {
            env.push(("KAFKA_AUTHORIZER", "1".to_owned()));
        }
        kafka_script(cmd, (self.port, self.controller_port, &self.state), env)
    }

    /// Allows the user what `acl` names (`kafka-acls.sh` arguments after
    /// `--allow-principal`, e.g. `["--operation", "Write", "--topic", "t"]`).
    /// Blocking.
    pub fn grant(&self, acl: &[&str]) {
        let principal = format!("User:{}", self.user);
        let args = [&["--add", "--allow-principal", &principal], acl].concat();
        kafka_tool("org.apache.kafka.tools.AclCommand", &self.brokers(), &args)
            .unwrap_or_else(|e| panic!("kafka-acls {args:?} failed: {e}"));
    }

    /// The plaintext listener (checkers, topic set-up).
    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The SASL_SSL listener.
    pub fn sasl_ssl_brokers(&self) -> String {
        format!("127.0.0.1:{}", self.sasl_ssl_port)
    }

    /// The CA that signed the broker's certificate.
    pub fn ca_file(&self) -> PathBuf {
        self.state.join("tls").join("ca.crt")
    }

    /// outboxd's settings for the SASL_SSL listener as this user, through the
    /// librdkafka pass-through only.
    pub fn relay_env(&self, mechanism: &str) -> Vec<(String, String)> {
        [
            ("OUTBOXD_KAFKA__BROKERS", self.sasl_ssl_brokers()),
            (
                "OUTBOXD_KAFKA__PRODUCER__SECURITY_PROTOCOL",
                "SASL_SSL".to_owned(),
            ),
            (
                "OUTBOXD_KAFKA__PRODUCER__SASL_MECHANISMS",
                mechanism.to_owned(),
            ),
            ("OUTBOXD_KAFKA__PRODUCER__SASL_USERNAME", self.user.clone()),
            (
                "OUTBOXD_KAFKA__PRODUCER__SASL_PASSWORD",
                self.password.clone(),
            ),
            (
                "OUTBOXD_KAFKA__PRODUCER__SSL_CA_LOCATION",
                self.ca_file().display().to_string(),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }

    /// An outbox on `db` whose relay (`binary`) reaches the SASL_SSL listener as the
    /// user ([`relay_env`](Self::relay_env) with `mechanism`, then `extra`), read
    /// back by an independent consumer on the plaintext listener. `outboxd init
    /// --apply` reaches the broker with the same settings.
    pub async fn outbox(
        &self,
        binary: &str,
        db: &TestDb,
        prefix: &str,
        mechanism: &str,
        extra: &[(String, String)],
    ) -> Outbox {
        let env: Vec<(String, String)> = self
            .relay_env(mechanism)
            .into_iter()
            .chain(extra.iter().cloned())
            .collect();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let endpoints = Endpoints {
            pg_url: db.url.clone(),
            relay_pg: (db.host.clone(), db.port),
            relay_brokers: self.sasl_ssl_brokers(),
            checker_brokers: self.brokers(),
        };
        Outbox::on(binary, endpoints, prefix, &env).await
    }
}

impl Drop for SecureKafka {
    fn drop(&mut self) {
        let _ = self.script("stop");
        let _ = std::fs::remove_dir_all(&self.state);
        let _ = std::fs::remove_file(format!("{}.lock", self.state.display()));
    }
}

//! End-to-end security: the `outboxd` binary against Kafka over SASL_SSL (SCRAM) and
//! PostgreSQL over TLS with `sslmode=verify-full` and a SCRAM password, both checked
//! against throwaway CAs; wrong credentials, names and CAs fail clearly; no password
//! reaches the logs.

#![allow(clippy::unwrap_used, reason = "in tests an unwrap is an assertion")]

use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::Duration;

use outboxd_tests::secure_kafka::SecureKafka;
use outboxd_tests::{
    pg_connect, seed, services, unique_name, DeliveryReport, Load, Outbox, TestDb,
};

const OUTBOXD: &str = env!("CARGO_BIN_EXE_outboxd");

/// Runs `outboxd check` with `env` on top of a clean environment for outboxd's
/// settings; returns its exit status and everything it printed.
async fn outboxd_check(env: &[(String, String)]) -> (ExitStatus, String) {
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(OUTBOXD)
            .arg("check")
            .env_remove("OUTBOXD_CONFIG")
            .env_remove("PGPASSWORD")
            .env("RUST_LOG", "info,outboxd=debug")
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .output(),
    )
    .await
    .expect("outboxd check finishes within 60 s")
    .expect("outboxd check runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status, text)
}

/// `env` with `changes` applied (replaced or added).
fn with(env: &[(String, String)], changes: &[(&str, String)]) -> Vec<(String, String)> {
    let mut env = env.to_vec();
    for (key, value) in changes {
        env.retain(|(k, _)| k != key);
        env.push((key.to_string(), value.clone()));
    }
    env
}

/// A CA that signed nothing the test services present.
fn unrelated_ca(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let ca = dir.join("unrelated-ca.crt");
    let status = std::process::Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .arg("ec_paramgen_curve:prime256v1")
        .args(["-nodes", "-days", "2", "-subj", "/CN=outboxd unrelated CA"])
        .arg("-keyout")
        .arg(dir.join("unrelated-ca.key"))
        .arg("-out")
        .arg(&ca)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl (needed to make a throwaway CA) runs");
    assert!(status.success(), "openssl failed to make a CA");
    ca
}

fn assert_delivered_in_order(report: &DeliveryReport, expected: usize, log: &str) {
    assert_eq!(report.missing, 0, "missing: {:?}\n{log}", report.examples);
    assert_eq!(
        report.order_violations, 0,
        "reordered: {:?}\n{log}",
        report.examples
    );
    assert_eq!(report.delivered, expected, "{:?}", report.examples);
    assert_eq!(report.duplicates, 0, "no fault, so no duplicates");
}

fn assert_secret_absent(secret: &str, text: &str, what: &str) {
    assert!(
        !text.contains(secret),
        "the password appears in {what}:\n{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_over_sasl_ssl_with_scram_relays_in_order_and_refuses_wrong_credentials() {
    let kafka = tokio::task::spawn_blocking(|| SecureKafka::start("outboxd"))
        .await
        .unwrap();
    let db = TestDb::create().await;
    let prefix = unique_name("sasl");
    let outbox = kafka
        .outbox(OUTBOXD, &db, &prefix, "SCRAM-SHA-512", &[])
        .await;
    Load::write(&db.url, seed("sasl_ssl"), 500).await;
    let mut relay = outbox.start("sasl-ssl");
    // The topic is auto-created by the relay's first produce.
    let (report, expected) = outbox.check(Duration::from_secs(90)).await;
    assert_eq!(expected, 1_000);
    assert_delivered_in_order(&report, expected, &relay.log_text());
    relay.stop_cleanly();
    let log = relay.log_text();
    assert_secret_absent(&kafka.password, &log, "the relay's log");
    // The configuration is logged at start, with the password redacted.
    assert!(log.contains(r#""sasl.password": "<redacted>""#), "{log}");

    // The control for the failures below: the right credentials pass `check`
    // (with the other SCRAM mechanism).
    let sha256 = with(
        &outbox.env,
        &[(
            "OUTBOXD_KAFKA__PRODUCER__SASL_MECHANISMS",
            "SCRAM-SHA-256".to_owned(),
        )],
    );
    let wrong_password = format!("wrong-{:016x}", rand::random::<u64>());
    let dir = std::env::temp_dir().join(unique_name("outboxd_security"));
    let wrong_ca = with(
        &outbox.env,
        &[(
            "OUTBOXD_KAFKA__PRODUCER__SSL_CA_LOCATION",
            unrelated_ca(&dir).display().to_string(),
        )],
    );
    let wrong_password_env = with(
        &outbox.env,
        &[(
            "OUTBOXD_KAFKA__PRODUCER__SASL_PASSWORD",
            wrong_password.clone(),
        )],
    );
    // Failing checks wait for their metadata timeout: run them side by side.
    let ((ok, ok_out), (bad_password, bad_password_out), (bad_ca, bad_ca_out)) = tokio::join!(
        outboxd_check(&sha256),
        outboxd_check(&wrong_password_env),
        outboxd_check(&wrong_ca),
    );
    let _ = std::fs::remove_dir_all(&dir);
    assert!(ok.success(), "{ok_out}");
    assert!(ok_out.contains("ok    Kafka reachable at"), "{ok_out}");

    assert!(!bad_password.success(), "{bad_password_out}");
    assert!(
        bad_password_out.contains("FAIL  Kafka reachable"),
        "{bad_password_out}"
    );
    // librdkafka's reason, in the FAIL line itself: the cause, not just a timeout.
    let fail_line = |out: &str| {
        out.lines()
            .find(|l| l.contains("FAIL  Kafka reachable"))
            .unwrap_or_default()
            .to_owned()
    };
    let line = fail_line(&bad_password_out);
    assert!(
        line.contains("SASL authentication error")
            && line.contains("invalid credentials with SASL mechanism SCRAM-SHA-512"),
        "{bad_password_out}"
    );

    assert!(!bad_ca.success(), "{bad_ca_out}");
    assert!(bad_ca_out.contains("FAIL  Kafka reachable"), "{bad_ca_out}");
    let line = fail_line(&bad_ca_out);
    // librdkafka prefixes "SSL handshake failed: " to the first report only; the
    // last one, which the line carries, may be a repeat without it.
    assert!(
        line.contains("certificate verify failed") && line.contains("SSL"),
        "{bad_ca_out}"
    );
    for (out, what) in [
        (&ok_out, "check's output"),
        (&bad_password_out, "check's output (wrong password)"),
        (&bad_ca_out, "check's output (unrelated CA)"),
    ] {
        assert_secret_absent(&kafka.password, out, what);
        assert_secret_absent(&wrong_password, out, what);
    }
}

/// pg_hba.conf of the test cluster (scripts/pg.sh) lets this role in over TLS only,
/// with scram-sha-256.
const TLS_USER: &str = "outboxd_tls";
/// As in tests/tests/replication_auth.rs, which sets up the same role: both binaries may run at
/// once, and must agree.
const TLS_PASSWORD: &str = "tls-Secret-4711";

async fn ensure_tls_role() {
    let admin = pg_connect(&services().pg_url).await;
    let sql = format!(
        "DO $$ BEGIN CREATE ROLE {TLS_USER}; \
         EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$; \
         SET password_encryption = 'scram-sha-256'; \
         ALTER ROLE {TLS_USER} WITH LOGIN REPLICATION PASSWORD '{TLS_PASSWORD}'; \
         RESET password_encryption"
    );
    // Concurrent ALTER ROLEs of one role (other tests, other binaries) can collide.
    for attempt in 1.. {
        match admin.batch_execute(&sql).await {
            Ok(()) => return,
            Err(e) if attempt < 10 => {
                tracing::debug!(error = %e, "role setup collided; retrying");
                tokio::time::sleep(Duration::from_millis(50 * attempt)).await;
            }
            Err(e) => panic!("creating role {TLS_USER} failed: {e}"),
        }
    }
}

/// The CA that signed the test cluster's server certificate.
fn pg_ca() -> String {
    services().pg_ca.clone().expect(
        "the test cluster's CA certificate was not found: start PostgreSQL with \
         scripts/pg.sh (it writes .local/pg/tls/ca.crt) or set OUTBOXD_TEST_PG_CA",
    )
}

/// The relay's PostgreSQL URL for the TLS user, without the password.
fn tls_url(outbox: &Outbox, host: &str, port: u16, sslmode: &str, ca: &str) -> String {
    let db = outbox.endpoints.pg_url.rsplit('/').next().unwrap();
    format!("postgres://{TLS_USER}@{host}:{port}/{db}?sslmode={sslmode}&sslrootcert={ca}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_over_verify_full_tls_with_a_scram_password_relays_in_order() {
    ensure_tls_role().await;
    let mut outbox = Outbox::on_shared(OUTBOXD, None, &[]).await;
    let port = outbox.endpoints.relay_pg.1;
    outbox.set_env(
        "OUTBOXD_POSTGRES__URL",
        &tls_url(&outbox, "localhost", port, "verify-full", &pg_ca()),
    );
    outbox.set_env("OUTBOXD_POSTGRES__PASSWORD", TLS_PASSWORD);
    Load::write(&outbox.endpoints.pg_url, seed("pg_verify_full"), 250).await;
    let mut relay = outbox.start("pg-verify-full");
    let (report, expected) = outbox.check(Duration::from_secs(60)).await;
    assert_eq!(expected, 500);
    assert_delivered_in_order(&report, expected, &relay.log_text());

    // The walsender serving the slot is the SCRAM user's, over TLS.
    let c = pg_connect(&outbox.endpoints.pg_url).await;
    let row = c
        .query_one(
            "SELECT a.usename::text, s.ssl FROM pg_replication_slots r \
             JOIN pg_stat_activity a ON a.pid = r.active_pid \
             JOIN pg_stat_ssl s ON s.pid = r.active_pid WHERE r.slot_name = $1",
            &[&outbox.slot],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), TLS_USER);
    assert!(
        row.get::<_, bool>(1),
        "the replication session is encrypted"
    );

    // `check` too, with the password from a file and the certificate's IP name.
    let dir = std::env::temp_dir().join(unique_name("outboxd_security"));
    std::fs::create_dir_all(&dir).unwrap();
    let password_file = dir.join("pg-password");
    std::fs::write(&password_file, format!("{TLS_PASSWORD}\n")).unwrap();
    let env = with(
        &outbox.env,
        &[
            (
                "OUTBOXD_POSTGRES__URL",
                tls_url(&outbox, "127.0.0.1", port, "verify-full", &pg_ca()),
            ),
            (
                "OUTBOXD_POSTGRES__PASSWORD_FILE",
                password_file.display().to_string(),
            ),
        ],
    );
    let env: Vec<_> = env
        .into_iter()
        .filter(|(k, _)| k != "OUTBOXD_POSTGRES__PASSWORD")
        .collect();
    let (status, out) = outboxd_check(&env).await;
    let _ = std::fs::remove_dir_all(&dir);
    assert!(status.success(), "{out}");
    assert!(
        out.contains(&format!("ok    PostgreSQL reachable at 127.0.0.1:{port}")),
        "{out}"
    );
    assert_secret_absent(TLS_PASSWORD, &out, "check's output");

    relay.stop_cleanly();
    assert_secret_absent(TLS_PASSWORD, &relay.log_text(), "the relay's log");
}

/// Forwards 127.0.0.2 (loopback too, but not a name in the server's certificate) to
/// `upstream`; returns the port.
async fn alias_proxy(upstream: (String, u16)) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.2:0")
        .await
        .expect("binding 127.0.0.2 (any 127/8 address is loopback on Linux)");
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            let upstream = upstream.clone();
            tokio::spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(upstream).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_refuses_a_wrong_host_name_and_an_unknown_ca() {
    ensure_tls_role().await;
    let mut outbox = Outbox::on_shared(OUTBOXD, None, &[]).await;
    outbox.set_env("OUTBOXD_POSTGRES__PASSWORD", TLS_PASSWORD);
    let alias_port = alias_proxy(outbox.endpoints.relay_pg.clone()).await;
    let port = outbox.endpoints.relay_pg.1;
    let dir = std::env::temp_dir().join(unique_name("outboxd_security"));
    let unrelated = unrelated_ca(&dir).display().to_string();

    for (what, url, expected) in [
        (
            "a host name the certificate does not have",
            tls_url(&outbox, "127.0.0.2", alias_port, "verify-full", &pg_ca()),
            "certificate not valid for name",
        ),
        (
            "an unrelated CA",
            tls_url(&outbox, "localhost", port, "verify-full", &unrelated),
            "UnknownIssuer",
        ),
    ] {
        outbox.set_env("OUTBOXD_POSTGRES__URL", &url);
        let mut relay = outbox.start("pg-tls-refused");
        let status = relay.wait_timeout(Duration::from_secs(30));
        let log = relay.log_text();
        assert!(
            status.is_some_and(|s| !s.success()),
            "{what}: the relay must exit non-zero, got {status:?}\n{log}"
        );
        assert!(
            log.contains("TLS with") && log.contains(expected),
            "{what}\n{log}"
        );
        assert_secret_absent(TLS_PASSWORD, &log, "the relay's log");
    }
    let _ = std::fs::remove_dir_all(&dir);

    // The control: through the same alias, verify-ca (chain only, no name check)
    // passes, so it was the name that failed above.
    let env = with(
        &outbox.env,
        &[(
            "OUTBOXD_POSTGRES__URL",
            tls_url(&outbox, "127.0.0.2", alias_port, "verify-ca", &pg_ca()),
        )],
    );
    let (status, out) = outboxd_check(&env).await;
    assert!(status.success(), "{out}");
    assert_secret_absent(TLS_PASSWORD, &out, "check's output");
}

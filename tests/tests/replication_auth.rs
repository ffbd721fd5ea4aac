//! Authentication and TLS of the replication client (and of the admin connection)
//! against the real PostgreSQL.
//!
//! The test cluster's pg_hba.conf (scripts/pg.sh) gives fixed role names fixed auth
//! methods: `outboxd_password` → password (cleartext), `outboxd_md5` → md5,
//! `outboxd_scram` → scram-sha-256, `outboxd_tls` → scram-sha-256 over TLS only;
//! everyone else is trusted. The roles are created here, once per test binary and
//! idempotently, with fixed passwords, so parallel tests (and binaries) agree.

use std::path::PathBuf;
use std::time::Duration;

use outboxd_pgoutput::{LogicalMessage, Lsn};
use outboxd_replication::{
    open_stream, Admin, AuthFailure, ConnectOptions, Error, PgConnection, ReaderConfig,
    ReplicationClient, ReplicationReader, SourceSpec, SslMode, StreamSettings,
};
use outboxd_tests::{pg_connect, services, unique_name, TestDb};
use tokio::sync::OnceCell;

const PASSWORD_USER: &str = "outboxd_password";
const MD5_USER: &str = "outboxd_md5";
const SCRAM_USER: &str = "outboxd_scram";
const TLS_USER: &str = "outboxd_tls";

/// Fixed per role, so that every test (in any binary) sets the same one.
fn password_of(user: &str) -> &'static str {
    match user {
        PASSWORD_USER => "cleartext-Secret-4711",
        MD5_USER => "md5-Secret-4711",
        SCRAM_USER => "scram-Secret-4711",
        TLS_USER => "tls-Secret-4711",
        other => panic!("no password for {other}"),
    }
}

const WRONG_PASSWORD: &str = "Wrong-Guess-0815";

/// Creates the four roles once per test binary (idempotent, retried because
/// concurrent `ALTER ROLE`s of one role from other binaries can collide).
async fn ensure_roles() {
    static ROLES: OnceCell<()> = OnceCell::const_new();
    ROLES
        .get_or_init(|| async {
            let admin = pg_connect(&services().pg_url).await;
            for (user, encryption) in [
                (PASSWORD_USER, "scram-sha-256"),
                (MD5_USER, "md5"),
                (SCRAM_USER, "scram-sha-256"),
                (TLS_USER, "scram-sha-256"),
            ] {
                let sql = format!(
                    "DO $$ BEGIN CREATE ROLE {user}; \
                     EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$; \
                     SET password_encryption = '{encryption}'; \
                     ALTER ROLE {user} WITH LOGIN REPLICATION PASSWORD '{}'; \
                     RESET password_encryption",
                    password_of(user)
                );
                let mut attempt = 0;
                loop {
                    match admin.batch_execute(&sql).await {
                        Ok(()) => break,
                        Err(e) if attempt < 10 => {
                            attempt += 1;
                            tracing::debug!(user, error = %e, "role setup collided; retrying");
                            tokio::time::sleep(Duration::from_millis(50 * attempt)).await;
                        }
                        Err(e) => panic!("creating role {user} failed: {e}"),
                    }
                }
            }
        })
        .await;
}

/// The CA that signed the test cluster's server certificate.
fn test_ca() -> PathBuf {
    services().pg_ca.as_ref().map(PathBuf::from).expect(
        "the test cluster's CA certificate was not found: start PostgreSQL with \
         scripts/pg.sh (it writes .local/pg/tls/ca.crt) or set OUTBOXD_TEST_PG_CA",
    )
}

/// Options for `user` (with its password when `with_password`) on the test database.
fn opts(db: &TestDb, user: &str, with_password: bool, sslmode: SslMode) -> ConnectOptions {
    let mut o = db.connect_options(user);
    if with_password {
        o.password = Some(password_of(user).to_owned());
    }
    o.sslmode = sslmode;
    o.connect_timeout = Duration::from_secs(10);
    o
}

/// `verify-*` options for the TLS-only user against `host`, trusting `ca`.
fn verified(db: &TestDb, sslmode: SslMode, host: &str, ca: Option<PathBuf>) -> ConnectOptions {
    let mut o = opts(db, TLS_USER, true, sslmode);
    o.hosts[0].host = host.to_owned();
    o.sslrootcert = ca;
    o
}

/// Connects a replication session and runs IDENTIFY_SYSTEM on it.
async fn identify(o: &ConnectOptions) -> Result<ReplicationClient, Error> {
    let mut client = ReplicationClient::connect(o).await?;
    let id = client.identify_system().await?;
    assert!(!id.system_id.is_empty());
    assert!(id.timeline >= 1);
    assert_eq!(id.dbname.as_deref(), Some(o.database()), "{o:?}");
    Ok(client)
}

async fn expect_connected(o: &ConnectOptions) -> ReplicationClient {
    match identify(o).await {
        Ok(client) => client,
        Err(e) => panic!("connecting with {o:?} failed: {e}"),
    }
}

/// Whether the server sees this session as encrypted (`pg_stat_ssl`), asked on a
/// plain (non-replication) session of our own client.
async fn server_sees_tls(o: &ConnectOptions) -> bool {
    let mut conn = PgConnection::connect(o, false).await.unwrap();
    let r = conn
        .simple_query("SELECT ssl::text AS ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .await
        .unwrap();
    let ssl = r.first("ssl").map(str::to_owned);
    conn.terminate().await;
    ssl.as_deref() == Some("true")
}

#[tokio::test]
async fn every_password_method_authenticates_a_replication_session() {
    let db = TestDb::create().await;
    ensure_roles().await;

    // trust; the major the session reports is the one the server runs.
    let client = expect_connected(&opts(&db, "postgres", false, SslMode::Disable)).await;
    assert!(!client.is_tls());
    let version_num: i32 = db
        .connect()
        .await
        .query_one("SELECT current_setting('server_version_num')::int", &[])
        .await
        .unwrap()
        .get(0);
    let major = u32::try_from(version_num / 10_000).unwrap();
    assert_eq!(client.server_major_version(), Some(major));
    client.close().await;

    // password (cleartext), md5, scram-sha-256: each over plain TCP.
    for user in [PASSWORD_USER, MD5_USER, SCRAM_USER] {
        let client = expect_connected(&opts(&db, user, true, SslMode::Disable)).await;
        assert!(!client.is_tls(), "{user}");
        client.close().await;
    }

    // Proof that the roles really use the method pg_hba.conf names (and not trust):
    // the md5 role's stored password is an md5 hash, the others' SCRAM verifiers.
    let c = db.connect().await;
    for (user, prefix) in [
        (MD5_USER, "md5"),
        (SCRAM_USER, "SCRAM-SHA-256$"),
        (PASSWORD_USER, "SCRAM-SHA-256$"),
    ] {
        let stored: String = c
            .query_one(
                "SELECT rolpassword FROM pg_authid WHERE rolname = $1",
                &[&user],
            )
            .await
            .unwrap()
            .get(0);
        assert!(stored.starts_with(prefix), "{user}: {stored}");
    }
}

#[tokio::test]
async fn a_wrong_password_is_an_auth_error_that_names_the_user_but_not_the_password() {
    let db = TestDb::create().await;
    ensure_roles().await;
    for user in [PASSWORD_USER, MD5_USER, SCRAM_USER] {
        let mut o = opts(&db, user, false, SslMode::Disable);
        o.password = Some(WRONG_PASSWORD.to_owned());
        let err = ReplicationClient::connect(&o)
            .await
            .expect_err("a wrong password must not authenticate");
        let message = err.to_string();
        let debug = format!("{err:?}");
        match &err {
            Error::Auth { user: u, failure } => {
                assert_eq!(u, user);
                let reason = failure.to_string();
                // The server's own words (28P01) are passed on.
                assert!(
                    reason.contains("28P01") && reason.contains("password authentication failed"),
                    "{message}"
                );
            }
            other => panic!("{user}: expected Error::Auth, got {other:?}"),
        }
        assert!(message.contains(user), "{message}");
        for secret in [WRONG_PASSWORD, password_of(user)] {
            assert!(!message.contains(secret), "{message}");
            assert!(!debug.contains(secret), "{debug}");
        }
        assert!(!err.is_retryable(), "a wrong password does not fix itself");
    }
}

#[tokio::test]
async fn a_missing_password_is_a_clear_auth_error() {
    let db = TestDb::create().await;
    ensure_roles().await;
    for user in [PASSWORD_USER, MD5_USER, SCRAM_USER] {
        let err = ReplicationClient::connect(&opts(&db, user, false, SslMode::Disable))
            .await
            .expect_err("no password, no session");
        match &err {
            Error::Auth { user: u, failure } => {
                assert_eq!(u, user);
                assert_eq!(failure, &AuthFailure::PasswordMissing, "{err}");
            }
            other => panic!("{user}: expected Error::Auth, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn the_admin_connection_uses_the_same_options() {
    let db = TestDb::create().await;
    ensure_roles().await;
    let o = opts(&db, SCRAM_USER, true, SslMode::Disable);
    let admin = Admin::connect(&o).await.unwrap();
    let row = admin
        .client()
        .query_one("SELECT current_user::text, current_database()::text", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), SCRAM_USER);
    assert_eq!(row.get::<_, String>(1), db.name);
    admin.check_replication_role().await.unwrap();

    let mut wrong = o.clone();
    wrong.password = Some(WRONG_PASSWORD.to_owned());
    let err = Admin::connect(&wrong).await.expect_err("wrong password");
    assert_eq!(err.sqlstate(), Some("28P01"), "{err}");
    assert!(!err.to_string().contains(WRONG_PASSWORD), "{err}");
}

#[tokio::test]
async fn sslmode_require_encrypts_and_the_tls_only_user_needs_it() {
    let db = TestDb::create().await;
    ensure_roles().await;

    let require = opts(&db, "postgres", false, SslMode::Require);
    let client = expect_connected(&require).await;
    assert!(client.is_tls());
    client.close().await;
    assert!(server_sees_tls(&require).await, "pg_stat_ssl says plain");
    // The control: disable is plain on both ends.
    let plain = opts(&db, "postgres", false, SslMode::Disable);
    assert!(!expect_connected(&plain).await.is_tls());
    assert!(!server_sees_tls(&plain).await);
    // prefer takes TLS when the server offers it.
    assert!(
        expect_connected(&opts(&db, "postgres", false, SslMode::Prefer))
            .await
            .is_tls()
    );

    // The TLS-only user: fine over TLS (require and prefer) ...
    for mode in [SslMode::Require, SslMode::Prefer] {
        let client = expect_connected(&opts(&db, TLS_USER, true, mode)).await;
        assert!(client.is_tls(), "{mode:?}");
        client.close().await;
    }
    // ... refused by the server's pg_hba.conf over plain TCP, right password or not.
    let err = ReplicationClient::connect(&opts(&db, TLS_USER, true, SslMode::Disable))
        .await
        .expect_err("outboxd_tls must not connect without TLS");
    match &err {
        Error::Auth { user, failure } => {
            assert_eq!(user, TLS_USER);
            let reason = failure.to_string();
            assert!(
                reason.contains("28000") && reason.contains("pg_hba.conf rejects connection"),
                "{err}"
            );
            assert!(reason.contains("no encryption"), "{err}");
        }
        other => panic!("expected the server's refusal as Error::Auth, got {other:?}"),
    }
}

#[tokio::test]
async fn verify_full_and_verify_ca_accept_the_test_ca() {
    let db = TestDb::create().await;
    ensure_roles().await;
    let ca = test_ca();
    for (mode, host) in [
        (SslMode::VerifyFull, "localhost"),
        // The certificate has an IP SAN for 127.0.0.1.
        (SslMode::VerifyFull, "127.0.0.1"),
        (SslMode::VerifyCa, "localhost"),
        (SslMode::VerifyCa, "127.0.0.1"),
    ] {
        let o = verified(&db, mode, host, Some(ca.clone()));
        let client = expect_connected(&o).await;
        assert!(client.is_tls(), "{mode:?} {host}");
        client.close().await;
    }
}

#[tokio::test]
async fn verify_full_refuses_servers_it_cannot_authenticate() {
    let db = TestDb::create().await;
    ensure_roles().await;
    let dir = std::env::temp_dir().join(unique_name("outboxd_other_ca"));
    std::fs::create_dir_all(&dir).unwrap();
    let other_ca = dir.join("other-ca.crt");
    let status = std::process::Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .arg("ec_paramgen_curve:prime256v1")
        .args(["-nodes", "-days", "2", "-subj", "/CN=outboxd unrelated CA"])
        .arg("-keyout")
        .arg(dir.join("other-ca.key"))
        .arg("-out")
        .arg(&other_ca)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl (needed to make a throwaway CA) runs");
    assert!(status.success(), "openssl failed to make a CA");
    let not_pem = dir.join("not-a-cert.pem");
    std::fs::write(&not_pem, "this is not a certificate\n").unwrap();

    let cases: Vec<(&str, ConnectOptions, &str)> = vec![
        // The system roots do not know the throwaway CA.
        (
            "system roots",
            verified(&db, SslMode::VerifyFull, "localhost", None),
            "",
        ),
        (
            "an unrelated CA",
            verified(
                &db,
                SslMode::VerifyFull,
                "localhost",
                Some(other_ca.clone()),
            ),
            "UnknownIssuer",
        ),
        // verify-ca skips the name check, never the chain.
        (
            "an unrelated CA, verify-ca",
            verified(&db, SslMode::VerifyCa, "127.0.0.1", Some(other_ca.clone())),
            "UnknownIssuer",
        ),
        (
            "a missing sslrootcert",
            verified(
                &db,
                SslMode::VerifyFull,
                "localhost",
                Some(dir.join("absent.crt")),
            ),
            "cannot read sslrootcert",
        ),
        (
            "an sslrootcert without certificates",
            verified(&db, SslMode::VerifyFull, "localhost", Some(not_pem.clone())),
            "no CA certificates",
        ),
    ];
    for (what, o, expected) in &cases {
        let err = ReplicationClient::connect(o)
            .await
            .expect_err("an unauthenticated server must be refused");
        match &err {
            Error::Tls { peer, reason } => {
                assert_eq!(peer, &o.hosts[0].to_string(), "{what}");
                assert!(reason.contains(expected), "{what}: {err}");
            }
            other => panic!("{what}: expected Error::Tls, got {other:?}"),
        }
        assert!(!err.to_string().contains(password_of(TLS_USER)), "{err}");
        // The admin connection applies the same rules, with the same reason (and
        // so is not retried either).
        match Admin::connect(o).await {
            Err(Error::Tls { reason, .. }) => {
                assert!(reason.contains(expected), "{what}: {reason}")
            }
            other => panic!("admin with {what}: expected Error::Tls, got {other:?}"),
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn the_admin_connection_verifies_the_server_too() {
    let db = TestDb::create().await;
    ensure_roles().await;
    for host in ["localhost", "127.0.0.1"] {
        let o = verified(&db, SslMode::VerifyFull, host, Some(test_ca()));
        let admin = Admin::connect(&o)
            .await
            .unwrap_or_else(|e| panic!("admin with verify-full to {host}: {e}"));
        let row = admin
            .client()
            .query_one(
                "SELECT current_user::text, ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                &[],
            )
            .await
            .unwrap();
        assert_eq!(row.get::<_, String>(0), TLS_USER);
        assert!(row.get::<_, bool>(1), "the admin session is encrypted");
    }
}

#[tokio::test]
async fn a_stream_over_verified_tls_with_scram_delivers_an_insert() {
    let db = TestDb::create().await;
    ensure_roles().await;
    let c = db.connect().await;
    c.batch_execute(&format!(
        "CREATE TABLE outbox (id uuid PRIMARY KEY, aggregatetype text NOT NULL, \
         aggregateid text NOT NULL, type text NOT NULL, payload jsonb); \
         CREATE PUBLICATION pub FOR TABLE outbox; \
         GRANT SELECT ON outbox TO {TLS_USER}"
    ))
    .await
    .unwrap();
    let o = verified(&db, SslMode::VerifyFull, "localhost", Some(test_ca()));
    let admin = Admin::connect(&o).await.unwrap();
    let slot = db.slot_name();
    let spec = SourceSpec {
        slot: slot.clone(),
        publications: vec!["pub".to_owned()],
        messages: false,
        create_slot: true,
        already_delivered: Lsn::ZERO,
        settings: StreamSettings::default(),
    };
    let (stream, started) = open_stream(&o, &admin, &spec).await.unwrap();
    assert!(started.created_slot);
    let mut reader = ReplicationReader::spawn(stream, ReaderConfig::default());

    // The walsender serving the slot is the TLS user's, over TLS.
    let row = c
        .query_one(
            "SELECT a.usename::text, s.ssl FROM pg_replication_slots r \
             JOIN pg_stat_activity a ON a.pid = r.active_pid \
             JOIN pg_stat_ssl s ON s.pid = r.active_pid WHERE r.slot_name = $1",
            &[&slot],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), TLS_USER);
    assert!(row.get::<_, bool>(1));

    c.execute(
        "INSERT INTO outbox (id, aggregatetype, aggregateid, type, payload) \
         VALUES (gen_random_uuid(), 'order', 'tls-1', 'created', '{\"n\": 1}')",
        &[],
    )
    .await
    .unwrap();
    let mut inserted = None;
    loop {
        let e = tokio::time::timeout(Duration::from_secs(30), reader.recv())
            .await
            .expect("an event within 30 s")
            .expect("the reader is running");
        match &e.message {
            LogicalMessage::Insert(i) => {
                let rel = e.relation.clone().expect("an insert knows its relation");
                assert_eq!(
                    (rel.namespace.as_str(), rel.name.as_str()),
                    ("public", "outbox")
                );
                let value = |name: &str| {
                    i.new[rel.column_index(name).unwrap()]
                        .as_text()
                        .map(|t| t.unwrap().to_owned())
                };
                inserted = Some((value("aggregateid"), value("payload")));
            }
            LogicalMessage::Commit(commit) => {
                reader.acknowledge(commit.end_lsn);
                break;
            }
            _ => {}
        }
    }
    let (aggregate, payload) = inserted.expect("the Insert came before its Commit");
    assert_eq!(aggregate.as_deref(), Some("tls-1"));
    assert_eq!(payload.as_deref(), Some("{\"n\": 1}"));
    reader.close().await.unwrap();
}

//! Liveness of the replication and admin connections against the real PostgreSQL,
//! with a [`FaultProxy`] in between that can blackhole the path: connections stay
//! open and nothing moves, the failure TCP alone notices late or never.

use std::time::{Duration, Instant};

use outboxd_pgoutput::{LogicalMessage, Lsn};
use outboxd_replication::{
    open_stream, Admin, ConnectOptions, Error, Host, ReaderConfig, ReplicationClient,
    ReplicationReader, SourceSpec, SslMode, StreamSettings,
};
use outboxd_tests::proxy::{FaultProxy, Mode};
use outboxd_tests::TestDb;

/// Short, to keep the tests fast; the server's wal_sender_timeout (10 s on the
/// test cluster) is far longer, so nothing but our own timer can end a stream.
const RECEIVE_TIMEOUT: Duration = Duration::from_secs(2);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Scheduling slack on a busy 2-core machine.
const SLACK: Duration = Duration::from_millis(1500);

async fn setup(db: &TestDb) {
    db.connect()
        .await
        .batch_execute(
            "CREATE TABLE outbox (id bigserial PRIMARY KEY, payload text); \
             CREATE PUBLICATION pub FOR TABLE outbox",
        )
        .await
        .unwrap();
}

/// The test database's options, through `proxy` when given.
fn options(db: &TestDb, proxy: Option<&FaultProxy>) -> ConnectOptions {
    let mut opts = db.connect_options("postgres");
    if let Some(proxy) = proxy {
        opts.hosts = vec![Host::new("127.0.0.1", proxy.port())];
    }
    opts.connect_timeout = CONNECT_TIMEOUT;
    opts
}

async fn start_reader(opts: &ConnectOptions, slot: &str) -> ReplicationReader {
    let admin = Admin::connect(opts).await.unwrap();
    let spec = SourceSpec {
        slot: slot.to_owned(),
        publications: vec!["pub".to_owned()],
        messages: false,
        create_slot: true,
        already_delivered: Lsn::ZERO,
        settings: StreamSettings {
            receive_timeout: Some(RECEIVE_TIMEOUT),
            ..StreamSettings::default()
        },
    };
    let (stream, _) = open_stream(opts, &admin, &spec).await.unwrap();
    ReplicationReader::spawn(stream, ReaderConfig::default())
}

/// Inserts one row and reads its transaction, acknowledging the commit.
async fn one_transaction(db: &TestDb, reader: &mut ReplicationReader) {
    db.connect()
        .await
        .batch_execute("INSERT INTO outbox (payload) VALUES ('x')")
        .await
        .unwrap();
    loop {
        let event = tokio::time::timeout(Duration::from_secs(30), reader.recv())
            .await
            .expect("a message within 30 s")
            .expect("the reader is running");
        if let LogicalMessage::Commit(c) = event.message {
            reader.acknowledge(c.end_lsn);
            return;
        }
    }
}

fn shared_pg_addr(db: &TestDb) -> std::net::SocketAddr {
    format!("127.0.0.1:{}", db.port).parse().unwrap()
}

#[tokio::test]
async fn a_blackholed_stream_fails_with_a_retryable_receive_timeout() {
    let db = TestDb::create().await;
    setup(&db).await;
    let proxy = FaultProxy::start(shared_pg_addr(&db));
    let mut reader = start_reader(&options(&db, Some(&proxy)), &db.slot_name()).await;
    one_transaction(&db, &mut reader).await;

    proxy.set_mode(Mode::Blackhole);
    let cut = Instant::now();
    // The reader ends on its own; without a receive timeout it would wait for the
    // server's bytes forever.
    let drained = tokio::time::timeout(RECEIVE_TIMEOUT + SLACK, async {
        while reader.recv().await.is_some() {}
    })
    .await;
    let detected = cut.elapsed();
    assert!(
        drained.is_ok(),
        "the stream did not fail within {:?} of the blackhole",
        RECEIVE_TIMEOUT + SLACK
    );
    let e = reader.close().await.unwrap_err();
    eprintln!("blackhole detected after {detected:?}: {e}");
    assert!(
        matches!(&e, Error::ReceiveTimeout { timeout, .. } if *timeout == RECEIVE_TIMEOUT),
        "{e:?}"
    );
    assert!(e.is_retryable(), "{e}");
    assert!(e.to_string().contains("nothing received"), "{e}");
}

#[tokio::test]
async fn an_idle_healthy_stream_outlives_its_receive_timeout() {
    let db = TestDb::create().await;
    setup(&db).await;
    let mut reader = start_reader(&options(&db, None), &db.slot_name()).await;
    one_transaction(&db, &mut reader).await;
    // Four receive timeouts with nothing to stream. The walsender speaks only when
    // WAL moves (other databases of the shared cluster may make it) or when we ask;
    // replication_bad_server.rs has the strictly silent server.
    tokio::time::sleep(RECEIVE_TIMEOUT * 4).await;
    assert!(
        !reader.is_finished(),
        "the stream ended while idle: {:?}",
        reader.close().await
    );
    one_transaction(&db, &mut reader).await;
    reader.close().await.unwrap();
}

/// Runs `attempt` and checks that it fails within the connect timeout with a
/// retryable time-out.
async fn fails_within_connect_timeout<T, F>(what: &str, attempt: F)
where
    F: std::future::Future<Output = Result<T, Error>>,
{
    let started = Instant::now();
    let result = tokio::time::timeout(CONNECT_TIMEOUT + SLACK, attempt).await;
    let took = started.elapsed();
    let Ok(result) = result else {
        panic!("{what} still hangs after {:?}", CONNECT_TIMEOUT + SLACK);
    };
    let Err(e) = result else {
        panic!("{what} succeeded through a blackhole");
    };
    eprintln!("{what} failed after {took:?}: {e}");
    assert!(took >= CONNECT_TIMEOUT, "{what} failed early: {e}");
    assert!(e.is_retryable(), "{what}: {e}");
    assert!(e.to_string().contains("timed out after 2s"), "{what}: {e}");
}

#[tokio::test]
async fn a_blackholed_connect_fails_within_connect_timeout() {
    let db = TestDb::create().await;
    let proxy = FaultProxy::start(shared_pg_addr(&db));
    proxy.set_mode(Mode::Blackhole);
    let plain = options(&db, Some(&proxy));
    let tls = ConnectOptions {
        sslmode: SslMode::Prefer,
        ..plain.clone()
    };
    tokio::join!(
        fails_within_connect_timeout("replication connect", ReplicationClient::connect(&plain)),
        fails_within_connect_timeout(
            "replication connect (TLS request)",
            ReplicationClient::connect(&tls)
        ),
        fails_within_connect_timeout("admin connect", Admin::connect(&plain)),
    );
}

#[tokio::test]
async fn commands_on_a_blackholed_connection_fail_within_connect_timeout() {
    let db = TestDb::create().await;
    let proxy = FaultProxy::start(shared_pg_addr(&db));
    let opts = options(&db, Some(&proxy));
    let mut client = ReplicationClient::connect(&opts).await.unwrap();
    let admin = Admin::connect(&opts).await.unwrap();
    client.identify_system().await.unwrap();
    admin.slot("none").await.unwrap();

    proxy.set_mode(Mode::Blackhole);
    tokio::join!(
        fails_within_connect_timeout("IDENTIFY_SYSTEM", client.identify_system()),
        fails_within_connect_timeout("an admin catalog read", admin.slot("none")),
    );
}

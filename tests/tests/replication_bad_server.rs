//! The replication client against a server that misbehaves.
//!
//! A fake server in the test (a TCP listener on 127.0.0.1) speaks just enough of the
//! protocol: it accepts the startup, answers START_REPLICATION with CopyBothResponse
//! and then sends whatever the scenario says. Every scenario must end in an error of
//! the right kind, promptly — never a panic, never a hang, never a huge allocation.

use std::collections::BTreeMap;
use std::io;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use futures_util::FutureExt;
use outboxd_pgoutput::encode::encode;
use outboxd_pgoutput::{
    Begin, Column, ColumnValue, Commit, DecodeErrorKind, Delete, Insert, LogicalMessage, Lsn,
    Message, OldTuple, Origin, Relation, ReplicaIdentity, Truncate, TypeMessage, Update,
};
use outboxd_replication::{
    ConnectOptions, Error, Host, LogicalStream, ReplicationClient, SslMode, StartOptions,
    StreamEvent, StreamSettings,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::timeout;

/// How long any scenario may take to produce its error.
const PROMPTLY: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------------
// Backend message bytes
// ---------------------------------------------------------------------------------

/// A backend message: tag, Int32 length (itself included), body.
fn backend(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    out.extend_from_slice(&(u32::try_from(body.len() + 4).unwrap()).to_be_bytes());
    out.extend_from_slice(body);
    out
}

fn auth_ok() -> Vec<u8> {
    backend(b'R', &0u32.to_be_bytes())
}

fn parameter_status(name: &str, value: &str) -> Vec<u8> {
    let mut body = Vec::new();
    for s in [name, value] {
        body.extend_from_slice(s.as_bytes());
        body.push(0);
    }
    backend(b'S', &body)
}

fn backend_key_data() -> Vec<u8> {
    backend(b'K', &[0, 0, 0x30, 0x39, 1, 2, 3, 4])
}

fn ready_for_query() -> Vec<u8> {
    backend(b'Z', b"I")
}

fn command_complete(tag: &str) -> Vec<u8> {
    let mut body = tag.as_bytes().to_vec();
    body.push(0);
    backend(b'C', &body)
}

/// CopyBothResponse: overall format 0 (text), zero columns.
fn copy_both_response() -> Vec<u8> {
    backend(b'W', &[0, 0, 0])
}

/// ErrorResponse (or, with tag `N`, NoticeResponse).
fn error_fields(tag: u8, severity: &str, code: &str, message: &str) -> Vec<u8> {
    let mut body = Vec::new();
    for (field, value) in [
        (b'S', severity),
        (b'V', severity),
        (b'C', code),
        (b'M', message),
    ] {
        body.push(field);
        body.extend_from_slice(value.as_bytes());
        body.push(0);
    }
    body.push(0);
    backend(tag, &body)
}

fn error_response(severity: &str, code: &str, message: &str) -> Vec<u8> {
    error_fields(b'E', severity, code, message)
}

fn copy_data(payload: &[u8]) -> Vec<u8> {
    backend(b'd', payload)
}

/// An XLogData frame carrying `data` (a pgoutput message, or not).
fn xlog(wal_start: Lsn, wal_end: Lsn, data: &[u8]) -> Vec<u8> {
    let mut payload = vec![b'w'];
    payload.extend_from_slice(&wal_start.0.to_be_bytes());
    payload.extend_from_slice(&wal_end.0.to_be_bytes());
    payload.extend_from_slice(&0i64.to_be_bytes());
    payload.extend_from_slice(data);
    copy_data(&payload)
}

fn keepalive(wal_end: Lsn, reply_requested: bool) -> Vec<u8> {
    let mut payload = vec![b'k'];
    payload.extend_from_slice(&wal_end.0.to_be_bytes());
    payload.extend_from_slice(&0i64.to_be_bytes());
    payload.push(u8::from(reply_requested));
    copy_data(&payload)
}

fn pgoutput(message: &LogicalMessage) -> Vec<u8> {
    encode(message).expect("encodable").to_vec()
}

/// An XLogData frame with one encoded pgoutput message.
fn xlog_message(wal_start: Lsn, message: &LogicalMessage) -> Vec<u8> {
    xlog(wal_start, wal_start, &pgoutput(message))
}

const OUTBOX_OID: u32 = 16_385;

fn begin(final_lsn: Lsn, xid: u32) -> LogicalMessage {
    LogicalMessage::Begin(Begin {
        final_lsn,
        commit_time: 0,
        xid,
    })
}

fn commit(commit_lsn: Lsn, end_lsn: Lsn) -> LogicalMessage {
    LogicalMessage::Commit(Commit {
        flags: 0,
        commit_lsn,
        end_lsn,
        commit_time: 0,
    })
}

fn outbox_relation() -> LogicalMessage {
    let column = |flags, name: &str, type_oid| Column {
        flags,
        name: name.to_owned(),
        type_oid,
        type_modifier: -1,
    };
    LogicalMessage::Relation(Relation {
        oid: OUTBOX_OID,
        namespace: "public".to_owned(),
        name: "outbox".to_owned(),
        replica_identity: ReplicaIdentity::Default,
        columns: vec![column(1, "id", 2950), column(0, "payload", 3802)],
    })
}

fn outbox_insert(payload: &'static str) -> LogicalMessage {
    LogicalMessage::Insert(Insert {
        relation_oid: OUTBOX_OID,
        new: vec![
            ColumnValue::Text("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11".into()),
            ColumnValue::Text(payload.into()),
        ],
    })
}

// ---------------------------------------------------------------------------------
// The fake server
// ---------------------------------------------------------------------------------

/// One thing the fake server does.
#[derive(Debug, Clone)]
enum Step {
    Send(Vec<u8>),
    /// Half-close (FIN) and wait for the client to hang up: a close that never turns
    /// into a reset, so the client reads everything sent before it.
    Close,
}

/// What the fake server received from the client.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Received {
    Startup(Vec<(String, String)>),
    Query(String),
    CopyData(Vec<u8>),
}

#[derive(Debug)]
struct FakeServer {
    port: u16,
    received: mpsc::UnboundedReceiver<Received>,
    task: JoinHandle<io::Result<()>>,
    answers_keepalive_requests: Arc<AtomicBool>,
}

impl FakeServer {
    /// Listens on an ephemeral port and serves one connection: `startup` answers the
    /// startup packet, `streaming` follows the CopyBothResponse to START_REPLICATION.
    async fn start(startup: Vec<Step>, streaming: Vec<Step>) -> FakeServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("local address").port();
        let (tx, received) = mpsc::unbounded_channel();
        let answers_keepalive_requests = Arc::new(AtomicBool::new(false));
        let answers = answers_keepalive_requests.clone();
        let task = tokio::spawn(async move {
            let (socket, _) = listener.accept().await?;
            serve(socket, startup, streaming, tx, answers).await
        });
        FakeServer {
            port,
            received,
            task,
            answers_keepalive_requests,
        }
    }

    /// From now on, answer a status update that asks for a reply with a keepalive,
    /// as a walsender does.
    fn answer_keepalive_requests(&self) {
        self.answers_keepalive_requests
            .store(true, Ordering::Relaxed);
    }

    /// The error connecting to a server that answers the startup packet with `startup`.
    async fn startup_error(startup: Vec<Step>) -> Error {
        let fake = FakeServer::start(startup, vec![]).await;
        timeout(PROMPTLY, ReplicationClient::connect(&fake.options()))
            .await
            .expect("the startup fails promptly")
            .expect_err("the startup fails")
    }

    /// A server that starts up normally and then streams `streaming`.
    async fn streaming(streaming: Vec<Step>) -> FakeServer {
        FakeServer::start(normal_startup(), streaming).await
    }

    fn options(&self) -> ConnectOptions {
        ConnectOptions {
            hosts: vec![Host::new("127.0.0.1", self.port)],
            user: "fake_user".to_owned(),
            password: None,
            dbname: "fake_db".to_owned(),
            sslmode: SslMode::Disable,
            connect_timeout: Duration::from_secs(5),
            ..ConnectOptions::default()
        }
    }

    /// Connects and starts streaming with `settings`.
    async fn stream_with(&self, settings: StreamSettings) -> LogicalStream {
        let client = timeout(PROMPTLY, ReplicationClient::connect(&self.options()))
            .await
            .expect("startup against the fake server hangs")
            .expect("startup against the fake server");
        assert_eq!(client.server_major_version(), Some(15));
        let start = StartOptions {
            slot: "fake_slot".to_owned(),
            start_lsn: Lsn::ZERO,
            publications: vec!["pub".to_owned()],
            messages: false,
        };
        timeout(PROMPTLY, client.start(&start, settings))
            .await
            .expect("START_REPLICATION against the fake server hangs")
            .expect("START_REPLICATION against the fake server")
    }

    async fn stream(&self) -> LogicalStream {
        self.stream_with(StreamSettings::default()).await
    }

    /// A stream that gives up after `receive_timeout` of silence.
    async fn stream_with_receive_timeout(&self, receive_timeout: Duration) -> LogicalStream {
        self.stream_with(StreamSettings {
            receive_timeout: Some(receive_timeout),
            ..StreamSettings::default()
        })
        .await
    }

    /// Waits (briefly) for something the client sent that `pick` selects.
    async fn wait_for<T>(&mut self, mut pick: impl FnMut(&Received) -> Option<T>) -> Option<T> {
        timeout(PROMPTLY, async {
            while let Some(r) = self.received.recv().await {
                if let Some(t) = pick(&r) {
                    return Some(t);
                }
            }
            None
        })
        .await
        .ok()
        .flatten()
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn normal_startup() -> Vec<Step> {
    vec![Step::Send(
        [
            auth_ok(),
            parameter_status("server_version", "15.0"),
            backend_key_data(),
            ready_for_query(),
        ]
        .concat(),
    )]
}

async fn serve(
    mut socket: TcpStream,
    startup: Vec<Step>,
    streaming: Vec<Step>,
    tx: mpsc::UnboundedSender<Received>,
    answers_keepalive_requests: Arc<AtomicBool>,
) -> io::Result<()> {
    // The startup packet (after an SSLRequest, which we decline, if one comes).
    loop {
        let len = socket.read_u32().await? as usize;
        let mut body = vec![0; len.saturating_sub(4)];
        socket.read_exact(&mut body).await?;
        if body.get(..4) == Some(&80_877_103u32.to_be_bytes()[..]) {
            socket.write_all(b"N").await?;
            continue;
        }
        let strings: Vec<String> = body
            .get(4..)
            .unwrap_or_default()
            .split(|b| *b == 0)
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect();
        let params = strings
            .chunks(2)
            .filter(|kv| kv.len() == 2 && !kv[0].is_empty())
            .map(|kv| (kv[0].clone(), kv[1].clone()))
            .collect();
        let _ = tx.send(Received::Startup(params));
        break;
    }
    if !run(&mut socket, startup).await? {
        return Ok(());
    }
    let mut streaming = Some(streaming);
    loop {
        let tag = match socket.read_u8().await {
            Ok(tag) => tag,
            Err(_) => return Ok(()),
        };
        let len = socket.read_u32().await? as usize;
        let mut body = vec![0; len.saturating_sub(4)];
        socket.read_exact(&mut body).await?;
        match tag {
            b'Q' => {
                let sql = String::from_utf8_lossy(&body)
                    .trim_end_matches('\0')
                    .to_owned();
                let start = sql.starts_with("START_REPLICATION");
                let _ = tx.send(Received::Query(sql));
                if start {
                    socket.write_all(&copy_both_response()).await?;
                    let steps = streaming.take().unwrap_or_default();
                    if !run(&mut socket, steps).await? {
                        return Ok(());
                    }
                } else {
                    socket
                        .write_all(&[command_complete("SELECT 0"), ready_for_query()].concat())
                        .await?;
                }
            }
            b'd' => {
                if answers_keepalive_requests.load(Ordering::Relaxed)
                    && body.first() == Some(&b'r')
                    && body.last() == Some(&1)
                {
                    socket.write_all(&keepalive(Lsn(0x10), false)).await?;
                }
                let _ = tx.send(Received::CopyData(body));
            }
            b'X' => return Ok(()),
            _ => {}
        }
    }
}

/// Runs `steps`; `false` when the connection was closed.
async fn run(socket: &mut TcpStream, steps: Vec<Step>) -> io::Result<bool> {
    for step in steps {
        match step {
            Step::Send(bytes) => {
                socket.write_all(&bytes).await?;
                socket.flush().await?;
            }
            Step::Close => {
                socket.shutdown().await?;
                let mut sink = [0u8; 4096];
                while matches!(socket.read(&mut sink).await, Ok(n) if n > 0) {}
                return Ok(false);
            }
        }
    }
    Ok(true)
}

/// Reads events until the first error, which must come within [`PROMPTLY`].
async fn first_error(stream: &mut LogicalStream) -> (Vec<StreamEvent>, Error) {
    let read = async {
        let mut events = Vec::new();
        loop {
            match stream.next_event().await {
                Ok(e) => {
                    assert!(events.len() < 10_000, "endless events");
                    events.push(e);
                }
                Err(e) => return (events, e),
            }
        }
    };
    timeout(PROMPTLY, read)
        .await
        .expect("the stream neither failed nor ended within 5 s")
}

fn error_kind(e: &Error) -> &'static str {
    match e {
        Error::Io { .. } => "io",
        Error::Protocol(_) => "protocol",
        Error::Decode { .. } => "decode",
        Error::Server { .. } => "server",
        Error::Auth { .. } => "auth",
        Error::StreamClosed => "stream-closed",
        _ => "other",
    }
}

// ---------------------------------------------------------------------------------
// Scenarios
// ---------------------------------------------------------------------------------

/// The baseline: the fake server is right, so what fails below fails because of
/// the scenario, not because of the fake.
#[tokio::test]
async fn a_well_behaved_fake_server_streams_a_transaction() {
    let lsn = Lsn(0x16_B374_D848);
    let mut fake = FakeServer::streaming(vec![
        Step::Send(error_fields(b'N', "NOTICE", "00000", "just so you know")),
        Step::Send(xlog_message(lsn, &begin(Lsn(lsn.0 + 0x100), 742))),
        Step::Send(xlog_message(lsn, &outbox_relation())),
        Step::Send(xlog_message(lsn, &outbox_insert("{\"n\": 1}"))),
        Step::Send(xlog_message(
            Lsn(lsn.0 + 0x100),
            &commit(Lsn(lsn.0 + 0x100), Lsn(lsn.0 + 0x130)),
        )),
        Step::Send(keepalive(Lsn(lsn.0 + 0x200), true)),
    ])
    .await;
    let mut stream = fake.stream().await;

    let mut kinds = Vec::new();
    for _ in 0..5 {
        let event = timeout(PROMPTLY, stream.next_event())
            .await
            .expect("an event")
            .expect("a valid event");
        match event {
            StreamEvent::Message {
                message, relation, ..
            } => {
                if let LogicalMessage::Insert(i) = &message {
                    let rel = relation.expect("the insert's relation");
                    assert_eq!(rel.name, "outbox");
                    assert_eq!(i.new[1].as_text(), Some(Ok("{\"n\": 1}")));
                }
                kinds.push(message.name());
            }
            StreamEvent::Keepalive { wal_end } => {
                assert_eq!(wal_end, Lsn(lsn.0 + 0x200));
                kinds.push("Keepalive");
            }
        }
    }
    assert_eq!(
        kinds,
        ["Begin", "Relation", "Insert", "Commit", "Keepalive"]
    );
    assert_eq!(stream.positions().received, Lsn(lsn.0 + 0x200));

    // What the client sent: a walsender startup, the START_REPLICATION command and,
    // because the keepalive asked for one, a standby status update.
    let startup = fake
        .wait_for(|r| match r {
            Received::Startup(p) => Some(p.clone()),
            _ => None,
        })
        .await
        .expect("a startup packet");
    for (k, v) in [
        ("user", "fake_user"),
        ("database", "fake_db"),
        ("replication", "database"),
    ] {
        assert!(
            startup.iter().any(|(pk, pv)| pk == k && pv == v),
            "{k}={v} missing from {startup:?}"
        );
    }
    let query = fake
        .wait_for(|r| match r {
            Received::Query(q) => Some(q.clone()),
            _ => None,
        })
        .await
        .expect("the START_REPLICATION query");
    assert!(
        query.starts_with("START_REPLICATION SLOT \"fake_slot\" LOGICAL 0/0 (proto_version '1'"),
        "{query}"
    );
    let status = fake
        .wait_for(|r| match r {
            Received::CopyData(d) if d.first() == Some(&b'r') => Some(d.clone()),
            _ => None,
        })
        .await
        .expect("a standby status update after the keepalive");
    assert_eq!(status.len(), 34);
    // write = the keepalive's WAL end; flush = the end of the (unacknowledged)
    // transaction is not confirmed: still the start position.
    assert_eq!(status[1..9], (lsn.0 + 0x200).to_be_bytes());
    assert_eq!(status[9..17], 0u64.to_be_bytes());
}

#[tokio::test]
async fn an_unknown_replication_frame_is_a_protocol_error() {
    let cases: [(Vec<u8>, &str); 4] = [
        (copy_data(b"x\x00\x01\x02"), "unknown replication frame 'x'"),
        (copy_data(b""), "empty CopyData frame"),
        (copy_data(b"w\x00\x00\x00\x01"), "XLogData header truncated"),
        (copy_data(b"k\x00\x00"), "keepalive must be 17 bytes"),
    ];
    for (frame, expected) in cases {
        // The socket stays open: the error must come from the frame, not from EOF.
        let fake = FakeServer::streaming(vec![Step::Send(frame)]).await;
        let mut stream = fake.stream().await;
        let (events, err) = first_error(&mut stream).await;
        assert!(events.is_empty(), "{events:?}");
        assert!(
            matches!(&err, Error::Protocol(m) if m.contains(expected)),
            "expected a protocol error with '{expected}', got {err:?}"
        );
        assert!(!err.is_retryable());
    }
}

#[tokio::test]
async fn garbage_pgoutput_is_a_decode_error_at_its_wal_position() {
    let lsn = Lsn(0x16_B374_D848);
    let truncated_begin = pgoutput(&begin(lsn, 7))[..10].to_vec();
    let cases: [(&str, Vec<u8>, &str); 3] = [
        (
            "unknown tag",
            b"Zgarbage".to_vec(),
            "unknown message tag 0x5A 'Z'",
        ),
        (
            "truncated Begin",
            truncated_begin,
            "pgoutput Begin message: truncated",
        ),
        ("empty payload", Vec::new(), "truncated"),
    ];
    for (what, data, expected) in cases {
        let fake = FakeServer::streaming(vec![Step::Send(xlog(lsn, lsn, &data))]).await;
        let mut stream = fake.stream().await;
        let (events, err) = first_error(&mut stream).await;
        assert!(events.is_empty(), "{what}: {events:?}");
        let message = err.to_string();
        match &err {
            Error::Decode { lsn: at, source } => {
                assert_eq!(*at, lsn, "{what}");
                assert!(!source.kind().is_protocol_violation(), "{what}: {source}");
            }
            other => panic!("{what}: expected Error::Decode, got {other:?}"),
        }
        assert!(message.contains("16/B374D848"), "{what}: {message}");
        assert!(message.contains(expected), "{what}: {message}");
        assert!(!err.is_retryable(), "{what}");
    }
}

#[tokio::test]
async fn a_commit_that_does_not_match_its_begin_is_a_decode_error() {
    let final_lsn = Lsn(0x3000);
    let cases = [
        (
            commit(Lsn(0x3100), Lsn(0x3200)),
            "commit LSN 0/3100 does not match final LSN 0/3000",
        ),
        (
            commit(final_lsn, Lsn(0x2FFF)),
            "end LSN 0/2FFF precedes commit LSN 0/3000",
        ),
    ];
    for (bad_commit, expected) in cases {
        let fake = FakeServer::streaming(vec![
            Step::Send(xlog_message(Lsn(0x2000), &begin(final_lsn, 9))),
            Step::Send(xlog_message(final_lsn, &bad_commit)),
        ])
        .await;
        let mut stream = fake.stream().await;
        let (events, err) = first_error(&mut stream).await;
        assert!(
            matches!(
                events.as_slice(),
                [StreamEvent::Message {
                    message: LogicalMessage::Begin(_),
                    ..
                }]
            ),
            "{events:?}"
        );
        match &err {
            Error::Decode { lsn, source } => {
                assert_eq!(*lsn, final_lsn);
                assert!(
                    matches!(
                        source.kind(),
                        DecodeErrorKind::CommitLsnMismatch { .. }
                            | DecodeErrorKind::CommitEndBeforeCommitLsn { .. }
                    ),
                    "{source}"
                );
            }
            other => panic!("expected Error::Decode, got {other:?}"),
        }
        assert!(err.to_string().contains(expected), "{err}");
        assert!(err.to_string().contains("at WAL position 0/3000"), "{err}");
        // Nothing of the broken transaction may be confirmed.
        assert!(stream.in_transaction());
        assert_eq!(stream.positions().acknowledged, Lsn::ZERO);
        assert_eq!(stream.flush_position(), Lsn::ZERO);
    }
}

#[tokio::test]
async fn a_server_that_closes_mid_frame_is_an_io_error() {
    // A CopyData header announcing 100 bytes, 10 of them, then the end.
    let mut partial = vec![b'd'];
    partial.extend_from_slice(&104u32.to_be_bytes());
    partial.extend_from_slice(b"w123456789");
    let fake = FakeServer::streaming(vec![Step::Send(partial), Step::Close]).await;
    let mut stream = fake.stream().await;
    let (events, err) = first_error(&mut stream).await;
    assert!(events.is_empty(), "{events:?}");
    match &err {
        Error::Io { peer, source } => {
            assert_eq!(peer, &format!("127.0.0.1:{}", fake.port));
            assert_eq!(source.kind(), io::ErrorKind::UnexpectedEof, "{err}");
            assert!(source.to_string().contains("middle of a message"), "{err}");
        }
        other => panic!("expected Error::Io, got {other:?}"),
    }
    assert!(err.is_retryable(), "a dropped connection is worth a retry");

    // Closed between frames: the events before it, then the same kind of error.
    let fake =
        FakeServer::streaming(vec![Step::Send(keepalive(Lsn(0x10), false)), Step::Close]).await;
    let mut stream = fake.stream().await;
    let (events, err) = first_error(&mut stream).await;
    assert_eq!(events, [StreamEvent::Keepalive { wal_end: Lsn(0x10) }]);
    assert!(
        matches!(&err, Error::Io { source, .. } if source.kind() == io::ErrorKind::UnexpectedEof),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_silent_server_is_asked_for_a_keepalive_then_given_up_on() {
    // Nothing after CopyBothResponse; then a frame that stops in the middle. Both
    // leave the socket open: only the receive timeout can end the wait.
    let mut partial = vec![b'd'];
    partial.extend_from_slice(&104u32.to_be_bytes());
    partial.extend_from_slice(b"w123456789");
    for streaming in [vec![], vec![Step::Send(partial)]] {
        let mut fake = FakeServer::streaming(streaming).await;
        let receive_timeout = Duration::from_secs(1);
        let mut stream = fake.stream_with_receive_timeout(receive_timeout).await;
        let started = std::time::Instant::now();
        let (events, err) = first_error(&mut stream).await;
        let took = started.elapsed();
        assert!(events.is_empty(), "{events:?}");
        assert!(
            matches!(&err, Error::ReceiveTimeout { peer, timeout, .. }
                if *peer == format!("127.0.0.1:{}", fake.port) && *timeout == receive_timeout),
            "{err:?}"
        );
        assert!(err.is_retryable(), "{err}");
        assert!(took >= receive_timeout / 2, "gave up after {took:?}");
        // Halfway through, a standby status update with reply-requested went out.
        let asked = fake
            .wait_for(|r| match r {
                Received::CopyData(d) if d.first() == Some(&b'r') => Some(d[33] == 1),
                _ => None,
            })
            .await;
        assert_eq!(asked, Some(true), "no keepalive request before giving up");
    }
}

#[tokio::test]
async fn a_quiet_server_that_answers_keepalive_requests_is_not_given_up_on() {
    let fake = FakeServer::streaming(vec![]).await;
    fake.answer_keepalive_requests();
    let receive_timeout = Duration::from_secs(1);
    let mut stream = fake.stream_with_receive_timeout(receive_timeout).await;
    // Four receive timeouts in which the server says nothing of its own accord.
    let mut keepalives = 0;
    let quiet = timeout(receive_timeout * 4, async {
        loop {
            match stream.next_event().await {
                Ok(StreamEvent::Keepalive { .. }) => keepalives += 1,
                other => return other,
            }
        }
    })
    .await;
    assert!(quiet.is_err(), "the stream ended: {quiet:?}");
    // One request per half timeout, each answered.
    assert!((4..=10).contains(&keepalives), "{keepalives} keepalives");
}

#[tokio::test]
async fn an_absurd_message_length_is_refused_before_any_buffering() {
    let header = |tag: u8, len: u32| {
        let mut h = vec![tag];
        h.extend_from_slice(&len.to_be_bytes());
        h
    };
    // During streaming: 2 GiB, 4 GiB - 1, and lengths below the 4 of the field itself.
    for len in [1u32 << 31, u32::MAX, 3, 0] {
        let fake = FakeServer::streaming(vec![Step::Send(header(b'd', len))]).await;
        let mut stream = fake.stream().await;
        let started = tokio::time::Instant::now();
        let (_, err) = first_error(&mut stream).await;
        assert!(
            matches!(&err, Error::Protocol(m) if m.contains(&format!("declares length {len}"))),
            "length {len}: {err:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(1), "not prompt");
    }

    // The stream's own cap applies too: 2 MiB against a 1 MiB limit.
    let fake = FakeServer::streaming(vec![Step::Send(header(b'd', 2 << 20))]).await;
    let mut stream = fake
        .stream_with(StreamSettings {
            max_message_bytes: 1 << 20,
            ..StreamSettings::default()
        })
        .await;
    let (_, err) = first_error(&mut stream).await;
    assert!(
        matches!(&err, Error::Protocol(m) if m.contains("allowed 4..=1048576")),
        "{err:?}"
    );

    // And during startup, before streaming.
    let err = FakeServer::startup_error(vec![Step::Send(header(b'R', 1 << 31))]).await;
    assert!(
        matches!(&err, Error::Protocol(m) if m.contains("declares length 2147483648")),
        "{err:?}"
    );
}

#[tokio::test]
async fn an_error_response_while_streaming_is_a_server_error_with_its_sqlstate() {
    let cases = [
        (
            "57P01",
            "terminating connection due to administrator command",
            true,
        ),
        ("XX000", "could not read WAL: invalid record length", false),
    ];
    for (code, text, retryable) in cases {
        let fake = FakeServer::streaming(vec![
            Step::Send(keepalive(Lsn(0x20), false)),
            Step::Send(error_response("FATAL", code, text)),
        ])
        .await;
        let mut stream = fake.stream().await;
        let (events, err) = first_error(&mut stream).await;
        assert_eq!(events, [StreamEvent::Keepalive { wal_end: Lsn(0x20) }]);
        match &err {
            Error::Server { during, error } => {
                assert_eq!(during, "replication");
                assert_eq!(error.code, code);
                assert_eq!(error.severity, "FATAL");
                assert_eq!(error.message, text);
            }
            other => panic!("expected Error::Server, got {other:?}"),
        }
        assert_eq!(err.sqlstate(), Some(code));
        assert_eq!(err.is_retryable(), retryable, "{code}");
        assert!(err.to_string().contains(text), "{err}");
    }
}

#[tokio::test]
async fn an_error_response_to_the_startup_is_an_auth_or_server_error() {
    let refusal = |code, message| {
        FakeServer::startup_error(vec![
            Step::Send(error_response("FATAL", code, message)),
            Step::Close,
        ])
    };
    // Refused credentials.
    let err = refusal(
        "28P01",
        "password authentication failed for user \"fake_user\"",
    )
    .await;
    match &err {
        Error::Auth { user, failure } => {
            assert_eq!(user, "fake_user");
            let reason = failure.to_string();
            assert!(reason.contains("28P01"), "{err}");
            assert!(reason.contains("password authentication failed"), "{err}");
        }
        other => panic!("expected Error::Auth, got {other:?}"),
    }
    assert!(!err.is_retryable());

    // Not about credentials: too many connections is a (retryable) server error.
    let err = refusal("53300", "sorry, too many clients already").await;
    assert_eq!(err.sqlstate(), Some("53300"), "{err:?}");
    assert!(err.is_retryable());

    // A method we do not speak (GSSAPI = 7), and a password request without one.
    for (code, expected) in [(7u32, "Kerberos, GSSAPI"), (3, "none was given")] {
        let err =
            FakeServer::startup_error(vec![Step::Send(backend(b'R', &code.to_be_bytes()))]).await;
        assert!(
            matches!(&err, Error::Auth { failure, .. } if failure.to_string().contains(expected)),
            "{err:?}"
        );
    }
}

// ---------------------------------------------------------------------------------
// Random bytes
// ---------------------------------------------------------------------------------

fn random_bytes(rng: &mut StdRng, max: usize) -> Vec<u8> {
    let len = rng.random_range(0..=max);
    (0..len).map(|_| rng.random()).collect()
}

fn random_lsn(rng: &mut StdRng) -> Lsn {
    if rng.random_bool(0.5) {
        Lsn(rng.random_range(0..0x10_0000))
    } else {
        Lsn(rng.random())
    }
}

/// Valid pgoutput messages of every kind, to corrupt or to send as they are.
fn valid_messages() -> Vec<LogicalMessage> {
    let tuple = || {
        vec![
            ColumnValue::Text("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11".into()),
            ColumnValue::Null,
        ]
    };
    vec![
        begin(Lsn(0x3000), 5),
        outbox_relation(),
        outbox_insert("{}"),
        LogicalMessage::Update(Update {
            relation_oid: OUTBOX_OID,
            old: Some(OldTuple::Key(tuple())),
            new: vec![
                ColumnValue::Binary(vec![1u8, 2].into()),
                ColumnValue::UnchangedToast,
            ],
        }),
        LogicalMessage::Delete(Delete {
            relation_oid: OUTBOX_OID,
            old: OldTuple::Full(tuple()),
        }),
        LogicalMessage::Truncate(Truncate {
            options: Truncate::OPTION_CASCADE,
            relation_oids: vec![OUTBOX_OID],
        }),
        LogicalMessage::Message(Message {
            transactional: true,
            lsn: Lsn(0x3000),
            prefix: "outbox".to_owned(),
            content: b"content".to_vec().into(),
        }),
        LogicalMessage::Type(TypeMessage {
            oid: 17_000,
            namespace: "public".to_owned(),
            name: "mood".to_owned(),
        }),
        LogicalMessage::Origin(Origin {
            commit_lsn: Lsn(0x3000),
            name: "elsewhere".to_owned(),
        }),
        commit(Lsn(0x3000), Lsn(0x3030)),
    ]
}

/// Flips, drops, inserts or truncates bytes.
fn mutate(rng: &mut StdRng, mut data: Vec<u8>) -> Vec<u8> {
    for _ in 0..rng.random_range(1..=3) {
        match rng.random_range(0..4) {
            0 if !data.is_empty() => {
                let i = rng.random_range(0..data.len());
                data[i] = rng.random();
            }
            1 if !data.is_empty() => {
                data.truncate(rng.random_range(0..data.len()));
            }
            2 => {
                let i = rng.random_range(0..=data.len());
                data.insert(i, rng.random());
            }
            _ => data.extend(random_bytes(rng, 4)),
        }
    }
    data
}

/// A few frames: some well-formed (so later frames are reached), some corrupted,
/// some pure noise.
fn random_stream(rng: &mut StdRng, messages: &[LogicalMessage]) -> Vec<u8> {
    let pick = |rng: &mut StdRng| messages[rng.random_range(0..messages.len())].clone();
    let mut out = BytesMut::new();
    for _ in 0..rng.random_range(1..=8) {
        let frame = match rng.random_range(0..100) {
            0..10 => random_bytes(rng, 64),
            10..20 => copy_data(&random_bytes(rng, 64)),
            20..30 => xlog(random_lsn(rng), random_lsn(rng), &random_bytes(rng, 48)),
            30..50 => {
                let valid = pgoutput(&pick(rng));
                let data = mutate(rng, valid);
                xlog(random_lsn(rng), random_lsn(rng), &data)
            }
            50..60 => xlog_message(random_lsn(rng), &pick(rng)),
            60..70 => keepalive(random_lsn(rng), rng.random_bool(0.5)),
            // A whole valid transaction.
            70..80 => [
                xlog_message(Lsn(0x2000), &begin(Lsn(0x3000), 5)),
                xlog_message(Lsn(0x2000), &outbox_relation()),
                xlog_message(Lsn(0x2000), &outbox_insert("{}")),
                xlog_message(Lsn(0x3000), &commit(Lsn(0x3000), Lsn(0x3030))),
            ]
            .concat(),
            80..90 => {
                let tags = b"EN cdZSTDCWRK";
                let tag = if rng.random_bool(0.8) {
                    tags[rng.random_range(0..tags.len())]
                } else {
                    rng.random()
                };
                backend(tag, &random_bytes(rng, 32))
            }
            90..94 => error_response("FATAL", "57P01", "terminating"),
            94..97 => error_fields(b'N', "NOTICE", "00000", "notice"),
            _ => backend(b'c', &[]),
        };
        out.extend_from_slice(&frame);
    }
    out.to_vec()
}

#[tokio::test]
async fn random_bytes_after_copy_both_never_panic_or_hang() {
    const SEED: u64 = 0x0B0C_5EED;
    const ITERATIONS: u64 = 200;
    let messages = valid_messages();
    let mut outcomes: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut events_seen = 0usize;
    for i in 0..ITERATIONS {
        let seed = SEED + i;
        let mut rng = StdRng::seed_from_u64(seed);
        let bytes = random_stream(&mut rng, &messages);
        let fake = FakeServer::streaming(vec![Step::Send(bytes), Step::Close]).await;
        let mut stream = fake.stream().await;
        let outcome = AssertUnwindSafe(timeout(PROMPTLY, async {
            let mut events = 0usize;
            loop {
                match stream.next_event().await {
                    Ok(_) => events += 1,
                    Err(e) => return (events, e),
                }
            }
        }))
        .catch_unwind()
        .await;
        let (events, err) = match outcome {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => panic!("seed {seed}: the stream hangs"),
            Err(_) => panic!("seed {seed}: the stream panicked"),
        };
        assert!(
            events <= 100,
            "seed {seed}: {events} events from a few frames"
        );
        events_seen += events;
        *outcomes.entry(error_kind(&err)).or_default() += 1;
        assert_ne!(error_kind(&err), "other", "seed {seed}: {err:?}");
    }
    eprintln!("random streams: {outcomes:?}, {events_seen} events before the errors");
    // The generator must reach every layer, or the test proves little.
    for kind in ["io", "protocol", "decode", "server", "stream-closed"] {
        assert!(outcomes.contains_key(kind), "no {kind} error: {outcomes:?}");
    }
    assert!(events_seen > 0);
}

/// Authentication requests and other startup answers, valid and corrupted.
fn random_startup(rng: &mut StdRng) -> Vec<u8> {
    let mut out = Vec::new();
    for _ in 0..rng.random_range(1..=5) {
        let code: u32 = [0, 3, 5, 7, 10, 11, 12][rng.random_range(0..7)];
        let mut body = code.to_be_bytes().to_vec();
        match code {
            5 => body.extend_from_slice(&random_bytes(rng, 6)), // md5 salt (4)
            10 if rng.random_bool(0.5) => body.extend_from_slice(b"SCRAM-SHA-256\0\0"),
            11 if rng.random_bool(0.5) => {
                let mut first = b"r=".to_vec();
                first.extend(random_bytes(rng, 24).iter().map(|b| b'!' + b % 90));
                first.extend_from_slice(b",s=QSXCR+Q6sek8bf92,i=");
                first.extend_from_slice(rng.random_range(0u32..5).to_string().as_bytes());
                body.extend(mutate(rng, first));
            }
            _ => body.extend_from_slice(&random_bytes(rng, 24)),
        }
        let frame = match rng.random_range(0..10) {
            0..6 => backend(b'R', &body),
            6 => backend(b'R', &mutate(rng, body)),
            7 => parameter_status("server_version", "15.0"),
            8 => error_response("FATAL", "28P01", "no"),
            _ => random_bytes(rng, 16),
        };
        out.extend_from_slice(&frame);
    }
    out
}

#[tokio::test]
async fn random_answers_to_the_startup_never_panic_or_hang() {
    const SEED: u64 = 0x57A2_7000;
    const ITERATIONS: u64 = 200;
    let mut outcomes: BTreeMap<&'static str, usize> = BTreeMap::new();
    for i in 0..ITERATIONS {
        let seed = SEED + i;
        let mut rng = StdRng::seed_from_u64(seed);
        let fake = FakeServer::start(
            vec![Step::Send(random_startup(&mut rng)), Step::Close],
            vec![],
        )
        .await;
        let mut options = fake.options();
        options.password = Some("pw".to_owned());
        let outcome = AssertUnwindSafe(timeout(PROMPTLY, ReplicationClient::connect(&options)))
            .catch_unwind()
            .await;
        let kind = match outcome {
            Ok(Ok(Ok(_))) => "connected",
            Ok(Ok(Err(e))) => {
                assert_ne!(error_kind(&e), "other", "seed {seed}: {e:?}");
                error_kind(&e)
            }
            Ok(Err(_)) => panic!("seed {seed}: the startup hangs"),
            Err(_) => panic!("seed {seed}: the startup panicked"),
        };
        *outcomes.entry(kind).or_default() += 1;
    }
    eprintln!("random startups: {outcomes:?}");
    for kind in ["io", "protocol", "auth"] {
        assert!(outcomes.contains_key(kind), "no {kind} error: {outcomes:?}");
    }
}

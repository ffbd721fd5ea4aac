//! The replication client against a server that misbehaves.
//!
//! A fake walsender ([`FakeServer`]) speaks just enough of the protocol and then
//! sends whatever the scenario says. Every scenario must end in an error of the right
//! kind, promptly — never a panic, never a hang, never a huge allocation.

use std::collections::BTreeMap;
use std::io;
use std::panic::AssertUnwindSafe;
use std::time::Duration;

use futures_util::FutureExt;
use outboxd_pgoutput::{DecodeErrorKind, LogicalMessage, Lsn};
use outboxd_replication::{Error, ReplicationClient, StreamEvent, StreamSettings};
use outboxd_tests::fake_walsender::frames::{
    backend, begin, commit, copy_data, error_fields, error_response, keepalive, outbox_insert,
    outbox_relation, pgoutput, xlog, xlog_message,
};
use outboxd_tests::fake_walsender::random::{random_startup, random_stream, valid_messages};
use outboxd_tests::fake_walsender::{
    error_kind, first_error, FakeServer, Received, Step, PROMPTLY,
};
use rand::rngs::StdRng;
use rand::SeedableRng;
use tokio::time::timeout;

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

//! A sink whose broker is unreachable must say so once, not flood the log: librdkafka
//! repeats the connection failure and "all brokers down" every ~50 ms.
//!
//! Its own test binary, because librdkafka logs from its own threads: only a global
//! subscriber sees those lines.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use outboxd_kafka_sink::{KafkaSink, Record, RecordMeta, SinkConfig, TxnId};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::Layer;

/// One captured event: level and its fields, rendered `name=value`.
#[derive(Debug, Clone)]
struct Line {
    level: Level,
    text: String,
}

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<Line>>>);

struct Render(String);

impl Visit for Render {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.push_str(&format!(" {}={value:?}", field.name()));
    }
}

impl<S: Subscriber> Layer<S> for Capture {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let mut render = Render(String::new());
        event.record(&mut render);
        let line = Line {
            level: *event.metadata().level(),
            text: format!("{}:{}", event.metadata().target(), render.0),
        };
        self.0.lock().expect("capture lock").push(line);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_broker_is_reported_once_not_flooded() {
    let capture = Capture::default();
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(capture.clone()))
        .expect("the only subscriber of this test binary");

    // A port nobody listens on: bound, then released.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let (sink, _rx) = KafkaSink::new(SinkConfig {
        brokers: format!("127.0.0.1:{port}"),
        ..SinkConfig::default()
    })
    .expect("sink");
    // A record waiting for the broker keeps the producer trying, as in `outboxd run`.
    let record = Record {
        topic: "orders".into(),
        key: Some(Bytes::from_static(b"k")),
        value: Some(Bytes::from_static(b"v")),
        meta: RecordMeta {
            event_id: "e-1".into(),
            ..RecordMeta::default()
        },
        ..Record::default()
    };
    sink.send(TxnId(1), record).await.expect("enqueued");
    let started = Instant::now();
    let check = sink.check(&[], Duration::from_secs(5)).await;
    assert!(check.is_err(), "no broker answers: {check:?}");
    let waited = started.elapsed();
    drop(sink);

    let lines = capture.0.lock().expect("capture lock").clone();
    let shown: Vec<&Line> = lines.iter().filter(|l| l.level <= Level::INFO).collect();
    let all_debug_and_above = lines.iter().filter(|l| l.level <= Level::DEBUG).count();
    eprintln!(
        "{} lines at info and above ({all_debug_and_above} at debug and above) in {waited:?}:",
        shown.len()
    );
    for l in &shown {
        eprintln!("  {} {}", l.level, l.text);
    }
    assert!(
        waited >= Duration::from_secs(4),
        "the broker was unreachable for {waited:?}: too short to show a flood"
    );
    assert!(shown.len() < 10, "{} lines: a flood", shown.len());
    let refused = shown
        .iter()
        .filter(|l| l.text.contains(&format!("127.0.0.1:{port}")) && l.text.contains("refused"))
        .count();
    // Once through the log callback, once through the error callback.
    assert!(
        (1..=2).contains(&refused),
        "the refused connection should be named once per channel, was {refused} times"
    );
    assert!(
        shown.iter().any(|l| l.text.contains("AllBrokersDown")),
        "all brokers down is named"
    );
}

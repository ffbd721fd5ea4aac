//! The relay's session, failure and reconnect logic against in-process fakes.

use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use outboxd_pgoutput::Lsn;
use outboxd_replication::TableName;
use tokio_util::sync::CancellationToken;

use super::fakes::{
    Change, Completing, End, FakeConnector, FakeSinks, FakeStore, Observed, Script, Shared, Step,
    Wal,
};
use super::pipeline::{Mode, RelayState, Routing};
use super::supervisor::Supervisor;
use super::RelayError;
use crate::checkpoint::EventPosition;
use crate::config::RoutingConfig;
use crate::health::Health;
use crate::metrics::Metrics;
use crate::router::Router;

use Change::{Message, Other, Outbox};

pub(super) struct Run {
    pub result: Result<(), RelayError>,
    pub observed: Observed,
    pub metrics: Arc<Metrics>,
}

pub(super) struct Setup {
    scripts: Vec<Script>,
    pub mode: Mode,
    skip_through: Option<EventPosition>,
    completing: Completing,
    pub fail: Vec<(&'static str, bool)>,
    dead_letter_topic: Option<String>,
    pub refusals: usize,
    /// Exactly once: commit number `.0` (from 1) hangs for `.1` from the start.
    pub hang: Option<(usize, Duration)>,
    /// Exactly once: how long each commit takes.
    pub commit_time: Duration,
}

impl Setup {
    pub fn new(scripts: Vec<Script>) -> Self {
        Setup {
            scripts,
            mode: Mode::AtLeastOnce {
                checkpoint_interval: Duration::from_millis(20),
            },
            skip_through: None,
            completing: Completing::AtOnce,
            fail: Vec::new(),
            dead_letter_topic: None,
            refusals: 0,
            hang: None,
            commit_time: Duration::from_millis(2),
        }
    }

    pub async fn run(self) -> Run {
        self.run_until(Duration::MAX).await
    }

    /// Runs, and stops the relay (as SIGTERM would) after `limit` if it has not ended.
    async fn run_until(self, limit: Duration) -> Run {
        let observed: Shared = Rc::default();
        let shutdown = CancellationToken::new();
        let shutdown_handle = shutdown.clone();
        let metrics = Arc::new(Metrics::default());
        let state = RelayState {
            routing: Routing {
                router: Router::new(
                    &RoutingConfig::default(),
                    &[TableName::parse("public.outbox").expect("table")],
                )
                .expect("router"),
                topics: None,
                dead_letter_topic: self.dead_letter_topic,
            },
            metrics: Arc::clone(&metrics),
            health: Arc::new(Health::default()),
            last_txn: 0,
            confirmed: Lsn::ZERO,
            drain_timeout: Duration::from_secs(5),
            mode: self.mode,
        };
        let connector = FakeConnector {
            scripts: self.scripts.into(),
            observed: Rc::clone(&observed),
            shutdown: shutdown.clone(),
            skip_through: self.skip_through,
        };
        let sinks = FakeSinks {
            observed: Rc::clone(&observed),
            completing: self.completing,
            fail: self.fail,
            refusals: self.refusals,
            commit_time: self.commit_time,
        };
        let store = FakeStore {
            observed: Rc::clone(&observed),
            delay: Duration::from_millis(3),
            hang: self
                .hang
                .map(|(commit, hang)| (commit, tokio::time::Instant::now() + hang)),
        };
        let exactly_once = matches!(state.mode, Mode::ExactlyOnce { .. }).then_some(None);
        let supervisor = Supervisor::new(
            connector,
            sinks,
            exactly_once,
            store,
            state,
            shutdown,
            false,
        );
        let stop = shutdown_after(shutdown_handle, limit);
        let result = tokio::select! {
            r = supervisor.run() => r,
            () = tokio::time::sleep(Duration::from_secs(600)) => panic!("the relay did not end"),
        };
        stop.abort();
        let observed = Rc::try_unwrap(observed)
            .expect("fakes dropped")
            .into_inner();
        Run {
            result,
            observed,
            metrics,
        }
    }
}

pub(super) fn session(transactions: Vec<Vec<Step>>, end: End) -> Script {
    Script::Session(transactions.into_iter().flatten().collect(), end)
}

fn ids(observed: &Observed, generation: usize) -> Vec<String> {
    observed
        .sent
        .iter()
        .filter(|(g, _, _)| *g == generation)
        .map(|(_, _, r)| r.meta.event_id.clone())
        .collect()
}

fn lost_connection() -> outboxd_replication::Error {
    outboxd_replication::Error::Io {
        peer: "db:5432".to_owned(),
        source: std::io::Error::from(std::io::ErrorKind::ConnectionReset),
    }
}

#[tokio::test(start_paused = true)]
async fn relays_outbox_rows_and_messages_in_order_and_confirms_them_through_a_checkpoint() {
    let mut wal = Wal::default();
    let (a, a_end) = wal.transaction(&[
        Outbox("e1", Some("order"), "o-1"),
        Other,
        Outbox("e2", Some("order"), "o-1"),
    ]);
    let (b, b_end) = wal.transaction(&[
        Message(
            "outbox",
            true,
            r#"{"id":"e3","aggregatetype":"user","aggregateid":"u-1"}"#,
        ),
        Message("other", true, "{}"),
        Message(
            "outbox",
            false,
            r#"{"aggregatetype":"user","aggregateid":"u-2"}"#,
        ),
    ]);
    let run = Setup::new(vec![session(vec![a, b, vec![Step::Shutdown]], End::Quiet)])
        .run()
        .await;
    run.result.expect("a clean stop");
    assert_eq!(ids(&run.observed, 1), ["e1", "e2", "e3"]);
    let topics: Vec<&str> = run
        .observed
        .sent
        .iter()
        .map(|(_, _, r)| r.topic.as_str())
        .collect();
    assert_eq!(
        topics,
        [
            "outbox.event.order",
            "outbox.event.order",
            "outbox.event.user"
        ]
    );
    // Both complete before the first checkpoint write ends: one confirmation.
    assert_eq!(run.observed.acknowledged, [b_end]);
    assert!(a_end < b_end);
    let last = run.observed.checkpoints.last().expect("a checkpoint");
    assert_eq!(last.confirmed_lsn, b_end);
    assert_eq!(
        last.last_event.map(|e| e.index),
        Some(0),
        "e3, the first of b"
    );
    assert_eq!(run.metrics.events_published.get(), 3);
    assert_eq!(
        run.metrics.ignored_changes.get(),
        1,
        "the non-transactional message"
    );
}

#[tokio::test(start_paused = true)]
async fn completions_out_of_order_confirm_only_the_completed_prefix() {
    let mut wal = Wal::default();
    let (a, _) = wal.transaction(&[Outbox("e1", Some("t"), "k")]);
    let (b, _) = wal.transaction(&[Outbox("e2", Some("t"), "k")]);
    let (c, c_end) = wal.transaction(&[Outbox("e3", Some("t"), "k")]);
    let mut setup = Setup::new(vec![session(
        vec![a, b, c, vec![Step::Shutdown]],
        End::Quiet,
    )]);
    setup.completing = Completing::Reversed(3);
    let run = setup.run().await;
    run.result.expect("a clean stop");
    // c completes first, then b, then a: nothing is confirmed before a is done,
    // and then everything at once.
    assert_eq!(run.observed.acknowledged, [c_end]);
}

#[tokio::test(start_paused = true)]
async fn a_delivery_timeout_replaces_the_producer_and_resends_from_the_confirmed_position() {
    let mut wal = Wal::default();
    let (a, a_end) = wal.transaction(&[Outbox("e1", Some("t"), "k")]);
    let (b, b_end) = wal.transaction(&[Outbox("e2", Some("t"), "k")]);
    let (b_again, _) = {
        let mut replay = Wal::default();
        replay.transaction(&[Outbox("e1", Some("t"), "k")]);
        replay.transaction(&[Outbox("e2", Some("t"), "k")])
    };
    let mut setup = Setup::new(vec![
        session(vec![a, b], End::Quiet),
        session(vec![b_again, vec![Step::Shutdown]], End::Quiet),
    ]);
    setup.fail = vec![("e2", true)];
    let run = setup.run().await;
    run.result.expect("a clean stop after the replay");
    assert_eq!(run.observed.sinks_created, 2, "a new producer");
    assert_eq!(run.observed.opened_after, [Lsn::ZERO, a_end]);
    assert_eq!(ids(&run.observed, 2), ["e2"]);
    assert_eq!(run.observed.acknowledged, [a_end, b_end]);
    assert_eq!(run.metrics.reconnects.get(), 1);
    // Bytes count across producers: both sinks delivered one record each.
    let one_record = run.observed.sent[0].2.payload_size() as u64;
    assert_eq!(run.metrics.bytes_published.get(), 2 * one_record);
}

#[tokio::test(start_paused = true)]
async fn a_refused_record_stops_the_relay_at_the_confirmed_position() {
    let mut wal = Wal::default();
    let (a, a_end) = wal.transaction(&[Outbox("e1", Some("t"), "k")]);
    let (b, _) = wal.transaction(&[Outbox("e2", Some("t"), "k")]);
    let (c, _) = wal.transaction(&[Outbox("e3", Some("t"), "k")]);
    let mut setup = Setup::new(vec![session(vec![a, b, c], End::Quiet)]);
    setup.fail = vec![("e2", false)];
    let run = setup.run().await;
    match run.result {
        Err(RelayError::Delivery { failure, confirmed }) => {
            assert_eq!(failure.event_id, "e2");
            assert_eq!(confirmed, a_end);
        }
        other => panic!("expected a delivery failure, got {other:?}"),
    }
    assert_eq!(
        run.observed.acknowledged,
        [a_end],
        "nothing after the failure"
    );
    assert_eq!(run.observed.opened_after.len(), 1, "not retried");
}

#[tokio::test(start_paused = true)]
async fn an_unroutable_event_stops_the_relay_after_confirming_what_came_before() {
    let mut wal = Wal::default();
    let (a, a_end) = wal.transaction(&[Outbox("e1", Some("t"), "k")]);
    let (b, _) = wal.transaction(&[Outbox("e2", None, "k")]);
    let run = Setup::new(vec![session(vec![a, b], End::Quiet)])
        .run()
        .await;
    match &run.result {
        Err(RelayError::Unroutable(e)) => {
            assert_eq!(e.event_id, "e2");
            assert!(e.reason.contains("aggregatetype is NULL"), "{}", e.reason);
        }
        other => panic!("expected an unroutable event, got {other:?}"),
    }
    let message = run.result.expect_err("failed").to_string();
    assert!(message.contains("kafka.dead_letter_topic"), "{message}");
    assert_eq!(ids(&run.observed, 1), ["e1"]);
    assert_eq!(run.observed.acknowledged, [a_end]);
}

#[tokio::test(start_paused = true)]
async fn with_a_dead_letter_topic_an_unroutable_event_is_dead_lettered_and_the_rest_flows() {
    let mut wal = Wal::default();
    let (a, _) = wal.transaction(&[Outbox("e1", None, "k"), Outbox("e2", Some("t"), "k")]);
    let (b, b_end) = wal.transaction(&[Outbox("e3", Some("t"), "k")]);
    let mut setup = Setup::new(vec![session(vec![a, b, vec![Step::Shutdown]], End::Quiet)]);
    setup.dead_letter_topic = Some("dlq".to_owned());
    let run = setup.run().await;
    run.result.expect("a clean stop");
    let topics: Vec<&str> = run
        .observed
        .sent
        .iter()
        .map(|(_, _, r)| r.topic.as_str())
        .collect();
    assert_eq!(topics, ["dlq", "outbox.event.t", "outbox.event.t"]);
    let dead = &run.observed.sent[0].2;
    assert!(dead
        .headers
        .iter()
        .any(|(k, v)| k == "outboxd.event.id" && v.as_deref() == Some(&b"e1"[..])));
    assert_eq!(run.observed.acknowledged.last(), Some(&b_end));
    assert_eq!(run.metrics.dead_lettered.get(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_lost_connection_reconnects_after_what_was_already_delivered() {
    let mut wal = Wal::default();
    let (a, a_end) = wal.transaction(&[Outbox("e1", Some("t"), "k")]);
    let (b, b_end) = wal.transaction(&[Outbox("e2", Some("t"), "k")]);
    let run = Setup::new(vec![
        session(vec![a], End::Fail(lost_connection())),
        Script::Refuse(lost_connection()),
        session(vec![b, vec![Step::Shutdown]], End::Quiet),
    ])
    .run()
    .await;
    run.result.expect("a clean stop");
    assert_eq!(run.observed.opened_after, [Lsn::ZERO, a_end, a_end]);
    assert_eq!(run.observed.acknowledged, [a_end, b_end]);
    assert_eq!(run.observed.sinks_created, 1, "the producer was fine");
    assert_eq!(run.metrics.reconnects.get(), 2);
}

#[tokio::test(start_paused = true)]
async fn an_invalidated_slot_is_fatal_at_once() {
    let run = Setup::new(vec![Script::Refuse(
        outboxd_replication::Error::SlotInvalidated {
            slot: "outboxd".to_owned(),
            reason: "wal_status lost".to_owned(),
        },
    )])
    .run()
    .await;
    assert!(matches!(
        run.result,
        Err(RelayError::Replication(
            outboxd_replication::Error::SlotInvalidated { .. }
        ))
    ));
    assert_eq!(run.observed.opened_after.len(), 1);
    assert_eq!(run.metrics.reconnects.get(), 0);
}

#[tokio::test(start_paused = true)]
async fn shutdown_finishes_the_transaction_in_progress_and_no_more() {
    let mut wal = Wal::default();
    let (mut a, a_end) =
        wal.transaction(&[Outbox("e1", Some("t"), "k"), Outbox("e2", Some("t"), "k")]);
    a.insert(2, Step::Shutdown);
    let (b, _) = wal.transaction(&[Outbox("e3", Some("t"), "k")]);
    let run = Setup::new(vec![session(vec![a, b], End::Quiet)])
        .run()
        .await;
    run.result.expect("a clean stop");
    assert_eq!(ids(&run.observed, 1), ["e1", "e2"]);
    assert_eq!(run.observed.acknowledged, [a_end]);
}

#[tokio::test(start_paused = true)]
async fn a_partly_delivered_transaction_resumes_after_its_last_delivered_event() {
    let mut wal = Wal::default();
    let (a, a_end) = wal.transaction(&[
        Outbox("e1", Some("t"), "k"),
        Outbox("e2", Some("t"), "k"),
        Outbox("e3", Some("t"), "k"),
    ]);
    let mut setup = Setup::new(vec![session(vec![a, vec![Step::Shutdown]], End::Quiet)]);
    let commit_lsn = run_commit_lsn(&setup.scripts[0]);
    setup.skip_through = Some(EventPosition {
        commit_lsn,
        index: 1,
    });
    let run = setup.run().await;
    run.result.expect("a clean stop");
    let sent: Vec<(String, u32)> = run
        .observed
        .sent
        .iter()
        .map(|(_, _, r)| (r.meta.event_id.clone(), r.meta.index))
        .collect();
    assert_eq!(
        sent,
        [("e3".to_owned(), 2)],
        "e1 and e2 were delivered before"
    );
    assert_eq!(run.metrics.skipped_events.get(), 2);
    assert_eq!(run.observed.acknowledged, [a_end]);
    let last = run.observed.checkpoints.last().expect("a checkpoint");
    assert_eq!(
        (last.confirmed_lsn, last.last_event.map(|e| e.index)),
        (a_end, Some(2))
    );
}

#[tokio::test(start_paused = true)]
async fn an_idle_wal_end_is_confirmed_only_through_a_checkpoint() {
    let mut wal = Wal::default();
    let (a, a_end) = wal.transaction(&[Outbox("e1", Some("t"), "k")]);
    let idle = Lsn(a_end.0 + 0x10_0000);
    let run = Setup::new(vec![session(vec![a, vec![Step::Idle(idle)]], End::Quiet)])
        .run_until(Duration::from_secs(3))
        .await;
    run.result.expect("a clean stop");
    assert_eq!(run.observed.acknowledged, [a_end, idle]);
    let last = run.observed.checkpoints.last().expect("a checkpoint");
    assert_eq!(last.confirmed_lsn, idle);
    assert_eq!(
        last.last_event.map(|e| e.index),
        Some(0),
        "the last event is kept"
    );
}

#[tokio::test(start_paused = true)]
async fn checkpoints_are_written_at_a_bounded_rate() {
    let mut wal = Wal::default();
    let transactions: Vec<Vec<Step>> = (0..200)
        .map(|_| wal.transaction(&[Outbox("e", Some("t"), "k")]).0)
        .collect();
    let mut steps = transactions;
    steps.push(vec![Step::Shutdown]);
    let run = Setup::new(vec![session(steps, End::Quiet)]).run().await;
    run.result.expect("a clean stop");
    let writes = run.observed.checkpoints.len();
    assert!(
        (1..20).contains(&writes),
        "{writes} writes for 200 transactions"
    );
    assert_eq!(
        run.observed.checkpoints.last().map(|c| c.confirmed_lsn),
        run.observed.acknowledged.last().copied()
    );
}

fn run_commit_lsn(script: &Script) -> Lsn {
    match script {
        Script::Session(steps, _) => steps
            .iter()
            .find_map(|s| match s {
                Step::Event(e) => match &e.message {
                    outboxd_pgoutput::LogicalMessage::Begin(b) => Some(b.final_lsn),
                    _ => None,
                },
                _ => None,
            })
            .expect("a Begin"),
        Script::Refuse(_) => panic!("not a session"),
    }
}

fn shutdown_after(token: CancellationToken, limit: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        if limit != Duration::MAX {
            tokio::time::sleep(limit).await;
            token.cancel();
        }
    })
}

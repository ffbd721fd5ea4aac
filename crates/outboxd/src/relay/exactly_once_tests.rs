//! Exactly-once sessions against in-process fakes: what a commit confirms, aborts,
//! transaction limits, and registering the producer.

use std::time::Duration;

use outboxd_pgoutput::Lsn;

use super::fakes::{Change::Outbox, End, Script, Step, Wal};
use super::pipeline::Mode;
use super::tests::{session, Run, Setup};

fn exactly_once(scripts: Vec<Script>) -> Setup {
    let mut setup = Setup::new(scripts);
    setup.mode = Mode::ExactlyOnce {
        checkpoint_topic: "checkpoints".to_owned(),
        max_age: Duration::from_millis(20),
        max_bytes: 1 << 20,
    };
    setup
}

#[tokio::test(start_paused = true)]
async fn exactly_once_confirms_only_what_a_committed_kafka_transaction_holds() {
    let mut wal = Wal::default();
    let (a, _) = wal.transaction(&[Outbox("e1", Some("t"), "k"), Outbox("e2", Some("t"), "k")]);
    let (b, b_end) = wal.transaction(&[Outbox("e3", Some("t"), "k")]);
    let run = exactly_once(vec![session(vec![a, b, vec![Step::Shutdown]], End::Quiet)])
        .run()
        .await;
    run.result.expect("a clean stop");
    assert_eq!(
        run.observed.transactional_ids.len(),
        1,
        "one producer, fenced in"
    );
    assert!(run.observed.commits >= 1);
    assert_eq!(run.observed.aborts, 0);
    // The last record of the last commit is the checkpoint, naming the last event.
    let (_, _, last) = run.observed.sent.last().expect("records");
    assert_eq!(last.topic, "checkpoints");
    let cp: crate::checkpoint::Checkpoint =
        serde_json::from_slice(last.value.as_deref().expect("a value")).expect("json");
    assert_eq!(cp.confirmed_lsn, b_end);
    assert_eq!(cp.last_event.map(|e| e.index), Some(0));
    assert_eq!(run.observed.acknowledged.last(), Some(&b_end));
    assert_eq!(
        run.metrics.events_published.get(),
        3,
        "the checkpoint is no event"
    );
    assert_eq!(
        run.metrics.kafka_transactions.get(),
        run.observed.commits as u64
    );
}

#[tokio::test(start_paused = true)]
async fn exactly_once_aborts_after_a_failure_and_resends_from_the_commit() {
    let mut wal = Wal::default();
    let (a, a_end) = wal.transaction(&[Outbox("e1", Some("t"), "k")]);
    let (b, _) = wal.transaction(&[Outbox("e2", Some("t"), "k")]);
    let mut setup = exactly_once(vec![
        session(
            // Long enough for a's checkpoint to be seen visible and confirmed.
            vec![a, vec![Step::Pause(Duration::from_millis(250))], b],
            End::Quiet,
        ),
        session(vec![vec![Step::Shutdown]], End::Quiet),
    ]);
    setup.fail = vec![("e2", true)];
    let run = setup.run().await;
    run.result.expect("a clean stop after the retry");
    assert_eq!(run.observed.aborts, 1, "the failed transaction was aborted");
    assert_eq!(
        run.observed.transactional_ids.len(),
        2,
        "a new producer per session"
    );
    assert!(
        run.observed.acknowledged.iter().all(|l| *l <= a_end),
        "b was never confirmed"
    );
    assert_eq!(run.observed.acknowledged.last(), Some(&a_end));
    assert_eq!(run.observed.opened_after, [Lsn::ZERO, a_end]);
}

#[tokio::test(start_paused = true)]
async fn exactly_once_commits_at_its_byte_limit_while_events_keep_coming() {
    let mut wal = Wal::default();
    let mut steps = Vec::new();
    const IDS: [&str; 20] = [
        "e0", "e1", "e2", "e3", "e4", "e5", "e6", "e7", "e8", "e9", "e10", "e11", "e12", "e13",
        "e14", "e15", "e16", "e17", "e18", "e19",
    ];
    for id in IDS {
        let (txn, _) = wal.transaction(&[Outbox(id, Some("t"), "k")]);
        steps.push(txn);
    }
    steps.push(vec![Step::Shutdown]);
    let mut setup = exactly_once(vec![session(steps, End::Quiet)]);
    setup.mode = Mode::ExactlyOnce {
        checkpoint_topic: "checkpoints".to_owned(),
        max_age: Duration::from_secs(3600),
        max_bytes: 1,
    };
    let run = setup.run().await;
    run.result.expect("a clean stop");
    // Every event reaches the byte limit: a commit before the next one is sent, not
    // one for the whole backlog once the stream pauses.
    assert!(
        run.observed.commits >= 20,
        "{} commits",
        run.observed.commits
    );
}

#[tokio::test(start_paused = true)]
async fn records_are_sent_while_the_commit_before_them_is_under_way() {
    let mut wal = Wal::default();
    let (a, _) = wal.transaction(&[Outbox("e1", Some("t"), "k")]);
    let (b, b_end) = wal.transaction(&[Outbox("e2", Some("t"), "k")]);
    let pause = |ms| vec![Step::Pause(Duration::from_millis(ms))];
    // a's commit is due at 20 ms and takes until 50 ms; b arrives at 25 ms, and its
    // own commit is due at 45 ms, before a's ended (the fake sink refuses a commit
    // that begins before the previous one ended).
    let mut setup = exactly_once(vec![session(
        vec![a, pause(25), b, pause(200), vec![Step::Shutdown]],
        End::Quiet,
    )]);
    setup.commit_time = Duration::from_millis(30);
    let run = setup.run().await;
    run.result.expect("a clean stop");
    assert_eq!(run.observed.sent_while_committing, 1, "b's record");
    assert_eq!(run.observed.commits, 2, "a's, then b's");
    assert_eq!(run.observed.aborts, 0);
    assert_eq!(run.observed.acknowledged.last(), Some(&b_end));
}

#[tokio::test(start_paused = true)]
async fn a_commit_that_hangs_stops_commits_and_is_not_confirmed_when_it_settles() {
    let mut wal = Wal::default();
    let (a, a_end) = wal.transaction(&[Outbox("e1", Some("t"), "k")]);
    let (b, _) = wal.transaction(&[Outbox("e2", Some("t"), "k")]);
    let (c, _) = wal.transaction(&[Outbox("e3", Some("t"), "k")]);
    let pause = |ms| vec![Step::Pause(Duration::from_millis(ms))];
    let mut setup = exactly_once(vec![
        session(
            // a is confirmed; b's commit hangs until 15 s and is overdue from about
            // 10.4 s; c comes at about 12.5 s.
            vec![a, pause(250), b, pause(12_000), c, pause(10_000)],
            End::Quiet,
        ),
        session(vec![vec![Step::Shutdown]], End::Quiet),
    ]);
    setup.hang = Some((2, Duration::from_secs(15)));
    let run = setup.run().await;
    run.result.expect("a clean stop after the restart");
    assert_eq!(
        run.observed.commits, 2,
        "a's and b's commits; none while b was overdue"
    );
    assert_eq!(run.observed.aborts, 1, "c's transaction was aborted");
    assert_eq!(
        run.observed.acknowledged.last(),
        Some(&a_end),
        "b settled late: not confirmed"
    );
    assert_eq!(
        run.observed.opened_after,
        [Lsn::ZERO, a_end],
        "the next session resumes after what was confirmed"
    );
}

/// One session relaying one event, after the first `refusals` producers were refused
/// a quick registration; the run and the event's end LSN.
async fn after_refusals(refusals: usize) -> (Run, Lsn) {
    let mut wal = Wal::default();
    let (a, a_end) = wal.transaction(&[Outbox("e1", Some("t"), "k")]);
    let mut setup = exactly_once(vec![session(vec![a, vec![Step::Shutdown]], End::Quiet)]);
    setup.refusals = refusals;
    let run = setup.run().await;
    run.result.as_ref().expect("a clean stop");
    (run, a_end)
}

#[tokio::test(start_paused = true)]
async fn a_takeover_replaces_producers_the_broker_refused_while_it_aborts() {
    let (run, a_end) = after_refusals(2).await;
    assert_eq!(
        run.observed.transactional_ids.len(),
        3,
        "two refused producers, then the one that registered"
    );
    assert_eq!(run.observed.patient_registrations, 0);
    assert!(
        run.observed
            .sent
            .iter()
            .all(|(generation, _, _)| *generation == 3),
        "only the registered producer sent"
    );
    assert_eq!(run.observed.acknowledged.last(), Some(&a_end));
}

#[tokio::test(start_paused = true)]
async fn a_broker_that_keeps_refusing_is_waited_out_after_a_few_producers() {
    let (run, a_end) = after_refusals(100).await;
    assert_eq!(
        run.observed.transactional_ids.len(),
        6,
        "5 refused, then one that waits"
    );
    assert_eq!(run.observed.patient_registrations, 1);
    assert_eq!(run.observed.acknowledged.last(), Some(&a_end));
}

//! The sink's transactional mode against the real broker: what a read_committed
//! consumer sees after commit and abort, and fencing by a newer producer with the
//! same transactional id.

use std::time::Duration;

use bytes::Bytes;
use outboxd_kafka_sink::{
    KafkaSink, Record, RecordMeta, Registration, SinkConfig, SinkError, TransactionError, TxnId,
};
use outboxd_tests::{alter_topic, consume_all, services, unique_name, TestTopics};

const TIMEOUT: Duration = Duration::from_secs(30);

/// A transactional sink with overlapping commits.
fn sink(transactional_id: &str) -> KafkaSink {
    sink_with(transactional_id, true)
}

fn sink_with(transactional_id: &str, overlap_commits: bool) -> KafkaSink {
    let (sink, _completions) = KafkaSink::new(SinkConfig {
        brokers: services().kafka_brokers.clone(),
        transactional_id: Some(transactional_id.to_owned()),
        overlap_commits,
        ..SinkConfig::default()
    })
    .expect("transactional sink");
    sink
}

/// A new sink with transactional id `id` registers (fencing older producers) and
/// commits the record "new" to `topic`.
async fn take_over(id: &str, overlap_commits: bool, topic: &str) -> KafkaSink {
    let new = sink_with(id, overlap_commits);
    new.init_transactions(TIMEOUT)
        .await
        .expect("init new fences the old");
    send_one(&new, 1, topic, "new").await;
    new.commit_transaction(TIMEOUT).await.expect("commit new");
    new
}

fn record(topic: &str, id: &str) -> Record {
    Record {
        topic: topic.to_owned(),
        key: Some(Bytes::from_static(b"k")),
        value: Some(Bytes::from(id.to_owned())),
        meta: RecordMeta {
            event_id: id.to_owned(),
            ..RecordMeta::default()
        },
        ..Record::default()
    }
}

fn values(topic: &str, expected: usize, isolation: &str) -> Vec<String> {
    consume_all(
        &[topic.to_owned()],
        expected,
        Duration::from_secs(5),
        isolation,
    )
    .into_iter()
    .map(|r| String::from_utf8(r.value.unwrap_or_default().to_vec()).unwrap_or_default())
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_records_are_visible_and_aborted_ones_never() {
    let topics = TestTopics::create("txn", 1, 1).await;
    let topic = &topics.names()[0];
    let sink = sink(&unique_name("outboxd-test-txn"));
    sink.init_transactions(TIMEOUT).await.expect("init");
    sink.send(TxnId(1), record(topic, "a1"))
        .await
        .expect("send");
    sink.end_transaction(TxnId(1), 1);
    sink.commit_transaction(TIMEOUT).await.expect("commit");
    sink.send(TxnId(2), record(topic, "b1"))
        .await
        .expect("send");
    sink.end_transaction(TxnId(2), 1);
    sink.flush(TIMEOUT).await.expect("acknowledged");
    sink.abort_transaction(TIMEOUT).await.expect("abort");
    sink.send(TxnId(3), record(topic, "c1"))
        .await
        .expect("send");
    sink.end_transaction(TxnId(3), 1);
    sink.commit_transaction(TIMEOUT).await.expect("commit");
    // Nothing open: a commit is a no-op.
    sink.commit_transaction(TIMEOUT)
        .await
        .expect("empty commit");

    assert_eq!(values(topic, 2, "read_committed"), ["a1", "c1"]);
    assert_eq!(
        values(topic, 3, "read_uncommitted"),
        ["a1", "b1", "c1"],
        "the aborted record was written, but never committed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_producer_with_the_same_id_fences_the_older_one() {
    let topics = TestTopics::create("fence", 1, 1).await;
    let topic = &topics.names()[0];
    let id = unique_name("outboxd-test-fence");
    let old = with_open_transaction(&id, topic, "old-open").await;

    take_over(&id, true, topic).await;
    assert_fenced(&old).await;
    assert_eq!(
        values(topic, 2, "read_committed"),
        ["new"],
        "the old producer's open transaction was aborted"
    );
}

/// `sink` was fenced: its commit fails as such.
async fn assert_fenced(sink: &KafkaSink) {
    let err = sink
        .commit_transaction(TIMEOUT)
        .await
        .expect_err("a fenced producer cannot commit");
    assert!(
        matches!(
            err,
            SinkError::Transaction {
                kind: TransactionError::Fenced,
                ..
            }
        ),
        "{err}"
    );
}

async fn send_one(sink: &KafkaSink, txn: u64, topic: &str, id: &str) {
    sink.send(TxnId(txn), record(topic, id))
        .await
        .expect("send");
    sink.end_transaction(TxnId(txn), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_sent_while_a_commit_is_under_way_commit_after_it_in_order() {
    let topics = TestTopics::create("overlap", 1, 1).await;
    let topic = &topics.names()[0];
    let id = unique_name("outboxd-test-overlap");
    let sink = sink(&id);
    assert_eq!(sink.transactional_ids(), [id.clone(), format!("{id}.2")]);
    sink.init_transactions(TIMEOUT).await.expect("init");
    for round in 0..3 {
        send_one(&sink, round * 10 + 1, topic, &format!("a{round}")).await;
        let a = sink.begin_commit(TIMEOUT).await.expect("begin a");
        // The other producer's transaction takes these while a commits.
        send_one(&sink, round * 10 + 2, topic, &format!("b{round}")).await;
        send_one(&sink, round * 10 + 3, topic, &format!("c{round}")).await;
        a.await.expect("a committed");
        sink.commit_transaction(TIMEOUT).await.expect("b and c");
    }
    assert_eq!(
        values(topic, 9, "read_committed"),
        ["a0", "b0", "c0", "a1", "b1", "c1", "a2", "b2", "c2"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_overlap_the_commit_is_answered_before_begin_commit_returns() {
    let topics = TestTopics::create("nooverlap", 1, 1).await;
    let topic = &topics.names()[0];
    let id = unique_name("outboxd-test-nooverlap");
    let sink = sink_with(&id, false);
    // Registered all the same: a takeover fences a previous holder that overlapped.
    assert_eq!(sink.transactional_ids(), [id.clone(), format!("{id}.2")]);
    sink.init_transactions(TIMEOUT).await.expect("init");
    for round in 0..2 {
        send_one(&sink, round + 1, topic, &format!("e{round}")).await;
        let commit = sink.begin_commit(TIMEOUT).await.expect("committed");
        assert_eq!(
            values(topic, round as usize + 1, "read_committed").len(),
            round as usize + 1,
            "visible before the returned commit is awaited"
        );
        commit.await.expect("already answered");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_takeover_fences_both_producers_and_aborts_what_followed_a_commit() {
    takeover_of_overlapping_producers(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_takeover_without_overlap_fences_the_second_producer_too() {
    takeover_of_overlapping_producers(false).await;
}

/// An overlapping relay's first producer committed and its second holds an open
/// transaction; a new sink (`overlap_commits` as given) takes over.
async fn takeover_of_overlapping_producers(overlap: bool) {
    let topics = TestTopics::create("overlapfence", 1, 1).await;
    let topic = &topics.names()[0];
    let id = unique_name("outboxd-test-overlapfence");
    let old = sink(&id);
    old.init_transactions(TIMEOUT).await.expect("init");
    send_one(&old, 1, topic, "committed").await;
    let first = old.begin_commit(TIMEOUT).await.expect("begin");
    send_one(&old, 2, topic, "open-on-the-second-producer").await;
    first.await.expect("committed");
    old.flush(TIMEOUT).await.expect("acknowledged");

    take_over(&id, overlap, topic).await;
    // The open transaction is the second producer's.
    assert_fenced(&old).await;
    assert_eq!(
        values(topic, 3, "read_committed"),
        ["committed", "new"],
        "the second producer's open transaction was aborted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_that_failed_delivery_forbids_the_commit() {
    let topics = TestTopics::create("txnfail", 1, 1).await;
    let topic = &topics.names()[0];
    let (sink, _completions) = KafkaSink::new(SinkConfig {
        brokers: services().kafka_brokers.clone(),
        transactional_id: Some(unique_name("outboxd-test-txnfail")),
        // The missing topic's record fails in librdkafka's queue, before any send.
        properties: vec![
            ("message.timeout.ms".into(), "2000".into()),
            ("allow.auto.create.topics".into(), "false".into()),
        ],
        ..SinkConfig::default()
    })
    .expect("transactional sink");
    sink.init_transactions(TIMEOUT).await.expect("init");
    sink.send(TxnId(1), record(topic, "before"))
        .await
        .expect("send");
    sink.send(TxnId(1), record(&unique_name("no-such-topic"), "lost"))
        .await
        .expect("send");
    sink.send(TxnId(1), record(topic, "after"))
        .await
        .expect("send");
    sink.end_transaction(TxnId(1), 3);
    let err = sink
        .commit_transaction(TIMEOUT)
        .await
        .expect_err("a transaction with a failed record must not commit");
    assert!(
        matches!(
            err,
            SinkError::Transaction {
                kind: TransactionError::Abortable,
                ..
            }
        ),
        "{err}"
    );
    sink.abort_transaction(TIMEOUT).await.expect("abort");
    assert!(
        values(topic, 1, "read_committed").is_empty(),
        "nothing of the failed transaction is visible"
    );
}

/// A registered producer of `id` whose open transaction holds one acknowledged
/// record, `value`, on `topic`.
async fn with_open_transaction(id: &str, topic: &str, value: &str) -> KafkaSink {
    let producer = sink(id);
    producer.init_transactions(TIMEOUT).await.expect("init");
    producer
        .send(TxnId(1), record(topic, value))
        .await
        .expect("send");
    producer.end_transaction(TxnId(1), 1);
    producer.flush(TIMEOUT).await.expect("acknowledged");
    producer
}

/// Drops a sink off the runtime and waits until its producer is gone.
async fn dispose(sink: KafkaSink) {
    tokio::task::spawn_blocking(move || drop(sink))
        .await
        .expect("drop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producer_refused_while_the_broker_aborts_is_replaced_and_never_fences_its_successor() {
    let topics = TestTopics::create("takeover", 1, 1).await;
    let topic = &topics.names()[0];
    // The refusal is a race: a producer whose `init_transactions` is called again
    // asks again at once, and once the broker's abort is done it is accepted. Only
    // an attempt with a refused producer tests its replacement.
    let mut attempts = 0;
    let successor = loop {
        attempts += 1;
        assert!(
            attempts <= 5,
            "no registration was refused in {} attempts",
            attempts - 1
        );
        let (successor, refused) = take_over_an_open_transaction(topic).await;
        if refused > 0 {
            break successor;
        }
        dispose(successor).await;
    };
    successor
        .send(TxnId(1), record(topic, "first"))
        .await
        .expect("send");
    successor.end_transaction(TxnId(1), 1);
    successor.commit_transaction(TIMEOUT).await.expect("commit");
    // Past librdkafka's 500 ms retry of the refused producers: had one survived, its
    // retry would have fenced the successor by now.
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    successor
        .send(TxnId(2), record(topic, "second"))
        .await
        .expect("send");
    successor.end_transaction(TxnId(2), 1);
    successor
        .commit_transaction(TIMEOUT)
        .await
        .expect("commit: not fenced");
    assert_eq!(values(topic, 2, "read_committed"), ["first", "second"]);
}

/// A producer dies with its transaction open on `topic`; then producers with its
/// id register until one is accepted, each refused one disposed of at once. The
/// accepted one, and how many were refused.
async fn take_over_an_open_transaction(topic: &str) -> (KafkaSink, usize) {
    let id = unique_name("outboxd-test-takeover");
    let dead = with_open_transaction(&id, topic, "dead-open").await;
    // Dies with its transaction open: dropping a producer does not abort it.
    dispose(dead).await;
    let started = std::time::Instant::now();
    let mut refused = 0;
    loop {
        let candidate = sink(&id);
        match candidate
            .try_init_transactions(TIMEOUT)
            .await
            .expect("an answer")
        {
            Registration::Registered => {
                eprintln!(
                    "registered after {:?}, {refused} producer(s) refused",
                    started.elapsed()
                );
                return (candidate, refused);
            }
            Registration::AbortInProgress => {
                refused += 1;
                assert!(refused < 20, "still refused after {refused} producers");
                dispose(candidate).await;
            }
        }
    }
}

/// Once the broker refused a record of the open transaction, librdkafka takes no
/// more records until it is aborted: `send` reports the transaction's failure (abort
/// and resend), not a refusal of the next record (the relay would stop on it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_into_a_failed_transaction_asks_for_an_abort() {
    let topics = TestTopics::create("txnstate", 1, 1).await;
    let topic = &topics.names()[0];
    alter_topic(topic, &[("max.message.bytes", "10000")]).await;
    let sink = sink(&unique_name("outboxd-test-txnstate"));
    sink.init_transactions(TIMEOUT).await.expect("init");
    let mut too_large = record(topic, "too large");
    too_large.value = Some(Bytes::from(vec![b'x'; 20_000]));
    sink.send(TxnId(1), too_large).await.expect("send");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let err = loop {
        match sink.send(TxnId(1), record(topic, "next")).await {
            Err(e) => break e,
            Ok(()) => assert!(
                std::time::Instant::now() < deadline,
                "the producer kept taking records"
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        matches!(
            err,
            SinkError::Transaction {
                call: "send",
                kind: TransactionError::Abortable,
                ..
            }
        ),
        "{err}"
    );
    sink.abort_transaction(TIMEOUT).await.expect("abort");
    // As the relay does: resend in a new transaction until one commits. The second
    // may fail too: the refused batch left a gap in the partition's sequence numbers,
    // which librdkafka repairs (epoch bump) only at that transaction's abort.
    for attempt in 2..=4 {
        let txn = TxnId(attempt);
        let sent = sink.send(txn, record(topic, "resent")).await;
        sink.end_transaction(txn, 1);
        match sent {
            Ok(()) if sink.commit_transaction(TIMEOUT).await.is_ok() => {
                assert_eq!(values(topic, 1, "read_committed"), ["resent"]);
                return;
            }
            _ => sink.abort_transaction(TIMEOUT).await.expect("abort"),
        }
    }
    panic!("no transaction committed after the failed one");
}

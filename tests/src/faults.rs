//! The faults scenarios inject: network faults through a [`FaultProxy`], the
//! walsender terminated, the relay killed, a dedicated PostgreSQL or Kafka crashed or
//! restarted; and the [`Schedule`] that injects them one after another while writers
//! run. Shared by outboxd's `faults` and `soak` tests.

mod schedule;

use std::fmt;
use std::ops::Range;
use std::path::Path;
use std::time::Duration;

use rand::Rng;
use tokio::task::block_in_place;

use crate::proxy::{FaultProxy, Mode};
use crate::{
    unique_name, DedicatedKafka, DedicatedPg, Endpoints, Outbox, Process, TestDb, AGGREGATE_TYPE,
};

pub use schedule::{Applied, Gaps, Length, Order, Schedule};

/// Relay settings for scenarios that partition Kafka: a delivery timeout that
/// [`Fault::KafkaPartition`] outlasts, and a shutdown that does not wait that long.
const SHORT_DELIVERY_TIMEOUT: &[(&str, &str)] = &[
    ("OUTBOXD_KAFKA__PRODUCER__MESSAGE_TIMEOUT_MS", "8000"),
    ("OUTBOXD_SERVER__SHUTDOWN_TIMEOUT_SECS", "10"),
];

/// A broker of the test's own, a fresh database on the shared cluster, and an
/// outbox on both ([`outbox_on_kafka`]) named after `name`.
pub async fn outbox_on_dedicated_kafka(
    binary: impl AsRef<Path>,
    name: &str,
) -> (DedicatedKafka, TestDb, Outbox) {
    let kafka = tokio::task::spawn_blocking(DedicatedKafka::start)
        .await
        .expect("dedicated Kafka starts");
    let db = TestDb::create().await;
    let outbox = outbox_on_kafka(
        binary,
        &kafka,
        db.url.clone(),
        (db.host.clone(), db.port),
        name,
    )
    .await;
    (kafka, db, outbox)
}

/// An outbox for Kafka faults, routed to a fresh topic of `kafka`, which outboxd
/// (`binary`) reaches through the broker's proxy with [`SHORT_DELIVERY_TIMEOUT`].
/// Writers use `pg_url`, outboxd `relay_pg`.
pub async fn outbox_on_kafka(
    binary: impl AsRef<Path>,
    kafka: &DedicatedKafka,
    pg_url: String,
    relay_pg: (String, u16),
    name: &str,
) -> Outbox {
    let prefix = unique_name(name);
    kafka.create_topic(&format!("{prefix}.{AGGREGATE_TYPE}"), 3);
    let endpoints = Endpoints {
        pg_url,
        relay_pg,
        relay_brokers: kafka.proxied_brokers(),
        checker_brokers: kafka.brokers(),
    };
    Outbox::on(binary, endpoints, &prefix, SHORT_DELIVERY_TIMEOUT).await
}

/// What faults act on; a fault whose target is absent panics.
#[derive(Debug, Clone, Copy)]
pub struct Targets<'a> {
    pub outbox: &'a Outbox,
    /// The proxy between outboxd and PostgreSQL.
    pub pg_proxy: Option<&'a FaultProxy>,
    pub pg: Option<&'a DedicatedPg>,
    /// Its own proxy sits between outboxd and the broker.
    pub kafka: Option<&'a DedicatedKafka>,
}

impl Targets<'_> {
    fn pg_proxy(&self) -> &FaultProxy {
        self.pg_proxy
            .expect("this fault needs a proxy to PostgreSQL")
    }

    fn pg(&self) -> &DedicatedPg {
        self.pg.expect("this fault needs a dedicated PostgreSQL")
    }

    fn kafka(&self) -> &DedicatedKafka {
        self.kafka.expect("this fault needs a dedicated Kafka")
    }
}

/// One kind of fault; random parts (how long, how slow) are drawn when injected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// The walsender serving the slot terminated.
    TerminateWalsender,
    /// Connections to PostgreSQL reset.
    PgReset,
    /// A frame from PostgreSQL cut in the middle.
    PgCutMidFrame,
    /// A network partition from PostgreSQL for a time drawn from `ms`.
    PgPartition { ms: Range<u64> },
    /// PostgreSQL refuses connections for a time drawn from `ms`.
    PgRefuse { ms: Range<u64> },
    /// A slow link to PostgreSQL, then SIGKILL: records are acknowledged by Kafka
    /// but their confirmation is still on the way. The relay is started again.
    SlowConfirmationsKill,
    /// The dedicated cluster stopped with `-m immediate`, down a moment, restarted.
    PgCrash,
    /// A clean stop (controlled shutdown) and start of the dedicated broker.
    KafkaRestart,
    /// The dedicated broker SIGKILLed and started again.
    KafkaKill,
    /// A partition from the broker longer than the delivery timeout
    /// ([`SHORT_DELIVERY_TIMEOUT`]).
    KafkaPartition,
    /// Connections to the broker reset.
    KafkaReset,
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::TerminateWalsender => write!(f, "walsender terminated"),
            Fault::PgReset => write!(f, "postgres connections reset"),
            Fault::PgCutMidFrame => write!(f, "postgres connection cut mid-frame"),
            Fault::PgPartition { ms } => write!(f, "postgres partition ({ms:?} ms)"),
            Fault::PgRefuse { ms } => write!(f, "postgres refuses connections ({ms:?} ms)"),
            Fault::SlowConfirmationsKill => write!(f, "relay SIGKILL during slow confirmations"),
            Fault::PgCrash => write!(f, "postgres -m immediate + restart"),
            Fault::KafkaRestart => write!(f, "kafka clean restart"),
            Fault::KafkaKill => write!(f, "kafka SIGKILL + start"),
            Fault::KafkaPartition => write!(f, "kafka partition longer than the delivery timeout"),
            Fault::KafkaReset => write!(f, "kafka connections reset"),
        }
    }
}

impl Fault {
    /// How soon after it begins this fault must turn the relay's `/readyz` to 503,
    /// if it must: while PostgreSQL refuses connections the relay is disconnected.
    pub fn unready_within(&self) -> Option<Duration> {
        match self {
            Fault::PgRefuse { ms } => Some(Duration::from_millis(ms.end) + Duration::from_secs(2)),
            _ => None,
        }
    }

    /// Injects the fault and returns once it is over (the service back, the proxy
    /// passing again). `relay` is replaced when the fault kills it. The scripts that
    /// stop and start services block, so this needs a multi-thread runtime.
    pub async fn inject(&self, rng: &mut impl Rng, at: &Targets<'_>, relay: &mut Process) {
        match self {
            Fault::TerminateWalsender => terminate_walsender(at.outbox).await,
            Fault::PgReset => hold(at.pg_proxy(), Mode::Reset, Duration::from_millis(300)).await,
            Fault::PgCutMidFrame => at.pg_proxy().cut_mid_frame(),
            Fault::PgPartition { ms } => {
                hold(at.pg_proxy(), Mode::Blackhole, millis(rng, ms)).await;
            }
            Fault::PgRefuse { ms } => hold(at.pg_proxy(), Mode::Refuse, millis(rng, ms)).await,
            Fault::SlowConfirmationsKill => {
                let latency = millis(rng, &(200..1_500));
                at.pg_proxy().set_mode(Mode::Latency(latency));
                tokio::time::sleep(millis(rng, &(500..2_000))).await;
                relay.signal("KILL");
                let _ = relay.wait_timeout(Duration::from_secs(10));
                at.pg_proxy().set_mode(Mode::Pass);
                *relay = at.outbox.start("after-kill");
            }
            Fault::PgCrash => {
                let down = millis(rng, &(200..3_000));
                block_in_place(|| at.pg().crash());
                tokio::time::sleep(down).await;
                block_in_place(|| at.pg().restart());
            }
            Fault::KafkaRestart => block_in_place(|| at.kafka().restart()),
            Fault::KafkaKill => block_in_place(|| {
                at.kafka().kill();
                at.kafka().start_again();
            }),
            Fault::KafkaPartition => {
                hold(&at.kafka().proxy, Mode::Blackhole, Duration::from_secs(12)).await;
            }
            Fault::KafkaReset => {
                hold(&at.kafka().proxy, Mode::Reset, Duration::from_millis(300)).await;
            }
        }
    }
}

/// A time drawn from `ms` (milliseconds).
fn millis(rng: &mut impl Rng, ms: &Range<u64>) -> Duration {
    Duration::from_millis(rng.random_range(ms.clone()))
}

/// Puts `proxy` in `mode` for `duration`, then back to passing.
async fn hold(proxy: &FaultProxy, mode: Mode, duration: Duration) {
    proxy.set_mode(mode);
    tokio::time::sleep(duration).await;
    proxy.set_mode(Mode::Pass);
}

/// Terminates the walsender serving the outbox's slot, if there is one.
async fn terminate_walsender(outbox: &Outbox) {
    let _ = outbox
        .connect()
        .await
        .execute(
            "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots \
             WHERE slot_name = $1 AND active_pid IS NOT NULL",
            &[&outbox.slot],
        )
        .await;
}

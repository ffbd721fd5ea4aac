//! A fault schedule: one fault after another, each after a drawn pause, while the
//! writers run. Seeded: one seed draws the same pauses, the same faults and the same
//! fault parameters, so `OUTBOXD_TEST_SEED` replays a schedule.

use std::ops::Range;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::{Fault, Targets};
use crate::{wait_ready, Outbox, Process};

/// Which kind of fault comes next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// Drawn at random each time.
    Random,
    /// Every kind once first, in an order shuffled by the seed, then at random.
    EachKindFirst,
}

/// The pause before each fault, drawn uniformly from a range.
#[derive(Debug, Clone, PartialEq)]
pub enum Gaps {
    Millis(Range<u64>),
    Secs(Range<f64>),
}

impl Gaps {
    fn draw(&self, rng: &mut StdRng) -> Duration {
        match self {
            Gaps::Millis(ms) => Duration::from_millis(rng.random_range(ms.clone())),
            Gaps::Secs(secs) => Duration::from_secs_f64(rng.random_range(secs.clone())),
        }
    }
}

/// How long a schedule goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Length {
    /// This many faults.
    Faults(usize),
    /// Another fault as long as this moment has not passed.
    Until(Instant),
}

impl Length {
    fn goes_on(&self, faults_so_far: usize) -> bool {
        match self {
            Length::Faults(n) => faults_so_far < *n,
            Length::Until(end) => Instant::now() < *end,
        }
    }
}

/// What to inject, in which order, how far apart and for how long.
#[derive(Debug, Clone)]
pub struct Schedule {
    pub kinds: Vec<Fault>,
    pub order: Order,
    pub gaps: Gaps,
    pub length: Length,
    /// Restart the relay when it exits within 100 ms of a fault, as a supervisor
    /// would, and count it in [`Applied::restarts`].
    pub supervise: bool,
    /// The relay's metrics port: during each fault that must turn `/readyz` to 503
    /// ([`Fault::unready_within`]), watch for it and count it in
    /// [`Applied::unready_seen`].
    pub readyz_port: Option<u16>,
}

/// What a schedule did.
#[derive(Debug, Default)]
pub struct Applied {
    /// The faults injected, in order.
    pub faults: Vec<Fault>,
    /// How often the relay exited and was restarted as a supervisor would.
    pub restarts: usize,
    /// How many faults turned `/readyz` to 503 while they lasted.
    pub unready_seen: usize,
}

impl Schedule {
    /// Injects the faults on `at`, each over before the next pause begins. `relay`
    /// is replaced when a fault kills it or, with [`supervise`](Self::supervise),
    /// when it exits. The scripts that stop and start services block, so this needs a
    /// multi-thread runtime.
    pub async fn run(&self, seed: u64, at: &Targets<'_>, relay: &mut Process) -> Applied {
        assert!(!self.kinds.is_empty(), "a schedule needs a kind of fault");
        let mut rng = StdRng::seed_from_u64(seed);
        let first = self.first_kinds(seed);
        let started = Instant::now();
        let mut applied = Applied::default();
        while self.length.goes_on(applied.faults.len()) {
            tokio::time::sleep(self.gaps.draw(&mut rng)).await;
            let i = applied.faults.len();
            let fault = &self.kinds[self.pick(i, &first, &mut rng)];
            let t0 = Instant::now();
            let inject = fault.inject(&mut rng, at, relay);
            match (self.readyz_port, fault.unready_within()) {
                (Some(port), Some(within)) => {
                    let unready = wait_ready(port, 503, within);
                    applied.unready_seen += usize::from(tokio::join!(inject, unready).1);
                }
                _ => inject.await,
            }
            println!(
                "[{:>6.1} s] fault {i}: {fault} ({:.1} s)",
                started.elapsed().as_secs_f64(),
                t0.elapsed().as_secs_f64()
            );
            applied.faults.push(fault.clone());
            if self.supervise {
                let wait = Duration::from_millis(100);
                applied.restarts += usize::from(at.outbox.restart_if_exited(relay, wait, fault));
            }
        }
        applied
    }

    /// The kinds (indices) that open the schedule: with [`Order::EachKindFirst`] every
    /// kind, shuffled by a generator of their own so the main one draws as with
    /// [`Order::Random`].
    fn first_kinds(&self, seed: u64) -> Vec<usize> {
        let mut order: Vec<usize> = Vec::new();
        if self.order == Order::EachKindFirst {
            order.extend(0..self.kinds.len());
            let mut r = StdRng::seed_from_u64(seed);
            for j in (1..order.len()).rev() {
                order.swap(j, r.random_range(0..=j));
            }
        }
        order
    }

    /// The kind (index) of fault `i`. With one kind there is nothing to draw, and
    /// nothing is: the generator's draws stay those of the pauses and faults.
    fn pick(&self, i: usize, first: &[usize], rng: &mut StdRng) -> usize {
        match first.get(i) {
            Some(&kind) => kind,
            None if self.kinds.len() == 1 => 0,
            None => rng.random_range(0..self.kinds.len()),
        }
    }
}

impl Applied {
    /// After the schedule, with the writers stopped: a relay about to give up does so
    /// within the producer's delivery timeout (8 s with [`super::outbox_on_kafka`]) of
    /// the last fault, so wait that long before deciding whether it needs a
    /// supervisor's restart (counted in [`restarts`](Self::restarts)).
    pub fn supervise_after_the_last_fault(&mut self, outbox: &Outbox, relay: &mut Process) {
        let wait = Duration::from_secs(10);
        self.restarts += usize::from(outbox.restart_if_exited(relay, wait, &"the last fault"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule(kinds: Vec<Fault>, order: Order) -> Schedule {
        Schedule {
            kinds,
            order,
            gaps: Gaps::Millis(1..2),
            length: Length::Faults(10),
            supervise: false,
            readyz_port: None,
        }
    }

    const FOUR: [Fault; 4] = [
        Fault::KafkaRestart,
        Fault::KafkaKill,
        Fault::KafkaPartition,
        Fault::KafkaReset,
    ];

    #[test]
    fn each_kind_first_opens_with_every_kind_once_in_a_seeded_order() {
        let s = schedule(FOUR.to_vec(), Order::EachKindFirst);
        let mut orders = std::collections::HashSet::new();
        for seed in 0..20 {
            let first = s.first_kinds(seed);
            let mut sorted = first.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, [0, 1, 2, 3], "seed {seed}: {first:?}");
            assert_eq!(first, s.first_kinds(seed), "seed {seed} replays");
            orders.insert(first);
        }
        assert!(orders.len() > 1, "the seed shuffles: {orders:?}");
        assert!(schedule(FOUR.to_vec(), Order::Random)
            .first_kinds(1)
            .is_empty());
    }

    #[test]
    fn picks_draw_from_the_generator_only_when_there_is_a_choice() {
        let one = schedule(vec![Fault::PgCrash], Order::Random);
        let mut rng = StdRng::seed_from_u64(7);
        assert_eq!(one.pick(0, &[], &mut rng), 0);
        assert_eq!(
            rng.random::<u64>(),
            StdRng::seed_from_u64(7).random::<u64>(),
            "one kind: nothing drawn"
        );

        let four = schedule(FOUR.to_vec(), Order::EachKindFirst);
        let first = four.first_kinds(7);
        let mut rng = StdRng::seed_from_u64(7);
        let picks: Vec<usize> = (0..4).map(|i| four.pick(i, &first, &mut rng)).collect();
        assert_eq!(picks, first);
        assert_eq!(
            rng.random::<u64>(),
            StdRng::seed_from_u64(7).random::<u64>(),
            "the opening kinds come from their own generator"
        );
        let later: Vec<usize> = (4..200).map(|i| four.pick(i, &first, &mut rng)).collect();
        assert!(later.iter().all(|k| *k < 4));
        assert!((0..4).all(|k| later.contains(&k)), "{later:?}");
    }

    #[test]
    fn gaps_are_drawn_from_their_range() {
        let mut rng = StdRng::seed_from_u64(3);
        for _ in 0..100 {
            let ms = Gaps::Millis(1_000..3_000).draw(&mut rng);
            assert!(
                ms >= Duration::from_secs(1) && ms < Duration::from_secs(3),
                "{ms:?}"
            );
            let s = Gaps::Secs(15.0..45.0).draw(&mut rng);
            assert!(
                s >= Duration::from_secs(15) && s < Duration::from_secs(45),
                "{s:?}"
            );
        }
    }

    #[test]
    fn a_length_in_faults_counts_them() {
        assert!(Length::Faults(2).goes_on(1));
        assert!(!Length::Faults(2).goes_on(2));
        assert!(!Length::Until(Instant::now()).goes_on(0));
        assert!(Length::Until(Instant::now() + Duration::from_secs(60)).goes_on(1_000));
    }
}

//! The nemesis's schedule: which fault hits which process or link, when, and for how long,
//! drawn from one seed. Sans-IO: the runner that applies a schedule to the real pipeline
//! comes on top of it; here the schedule is a value that tests can inspect.
//!
//! Invariants of every schedule (checked by the tests below for many seeds):
//! - the same `(seed, shape, duration)` gives the same steps (the simulator's xoshiro256**,
//!   [`edgesync_sim::rng::Rng`], so a seed means the same schedule in every dependency version);
//! - steps are in start order, and each ends (heals) before the schedule does;
//! - a target has at most one fault at a time, with [`SETTLE_MS`] after each heal, so a fault
//!   never lands on a process still coming back from the last one;
//! - at most one Kafka node is faulted at a time, with [`KAFKA_SETTLE_MS`] after each heal for
//!   its replicas to return to the in-sync set: two nodes down would leave a 3-node cluster
//!   below `min.insync.replicas=2`, which stops progress without testing anything new.

use edgesync_sim::rng::Rng;

/// Quiet time on a target after its fault heals.
pub const SETTLE_MS: u64 = 1_000;
/// Quiet time on the cluster after a Kafka node's fault heals.
pub const KAFKA_SETTLE_MS: u64 = 20_000;
/// Mean time between fault draws (a draw on a busy target is skipped): 10 minutes hold over
/// 1,000 faults.
pub const MEAN_GAP_MS: f64 = 250.0;

/// What the pipeline is made of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    /// Edge agents (each behind its own link).
    pub agents: usize,
    /// Bridges sharing the MQTT subscription.
    pub bridges: usize,
    /// Reconcilers in one consumer group.
    pub reconcilers: usize,
    /// Kafka nodes.
    pub kafka: usize,
}

impl Default for Shape {
    /// The nemesis's pipeline: 6 agents, 2 bridges, 2 reconcilers, 3 Kafka nodes.
    fn default() -> Self {
        Self {
            agents: 6,
            bridges: 2,
            reconcilers: 2,
            kafka: 3,
        }
    }
}

/// Where a fault lands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Target {
    /// Agent `i`'s process.
    Agent(usize),
    /// Agent `i`'s uplink (its fault proxy to Mosquitto).
    Link(usize),
    /// Bridge `i`.
    Bridge(usize),
    /// Reconciler `i`.
    Reconciler(usize),
    /// The MQTT broker.
    Mosquitto,
    /// Kafka node `i`.
    Kafka(usize),
}

impl Target {
    /// The edgesync service it runs (the names of `servicekit::crash::POINTS`), if any.
    pub fn service(self) -> Option<&'static str> {
        match self {
            Target::Agent(_) => Some("agent"),
            Target::Bridge(_) => Some("bridge"),
            Target::Reconciler(_) => Some("reconciler"),
            Target::Link(_) | Target::Mosquitto | Target::Kafka(_) => None,
        }
    }
}

/// What happens to a target for a step's hold time, healed at its end.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Fault {
    /// `kill -9`, restarted on its data at the end.
    Kill,
    /// SIGSTOP, SIGCONT at the end.
    Hang,
    /// Link: connections reset and refused.
    Cut,
    /// Link: connections held, nothing forwarded.
    Blackhole,
    /// Link: this many ms added per chunk.
    Latency(u64),
    /// Link: this many bytes/s per direction.
    Throttle(u64),
    /// Link: every connection reset once (the hold is the settle time).
    Reset,
    /// Agent: restarted with its wall clock this many days off, restarted right at the end.
    Clock(i8),
    /// Agent: link cut and events fed until its spool is over quota (its policy decides).
    Quota,
    /// Reconciler: `kill -9`, state directory deleted, restarted to rebuild from the topics.
    StateLoss,
}

impl Fault {
    /// The kind, for counting in reports (`latency` whatever its ms).
    pub fn kind(self) -> &'static str {
        match self {
            Fault::Kill => "kill",
            Fault::Hang => "hang",
            Fault::Cut => "cut",
            Fault::Blackhole => "blackhole",
            Fault::Latency(_) => "latency",
            Fault::Throttle(_) => "throttle",
            Fault::Reset => "reset",
            Fault::Clock(_) => "clock",
            Fault::Quota => "quota",
            Fault::StateLoss => "state-loss",
        }
    }
}

/// One fault: starts at `at_ms` from the schedule's start, healed `hold_ms` later.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Step {
    /// Start, ms from the schedule's start.
    pub at_ms: u64,
    /// Where.
    pub target: Target,
    /// What.
    pub fault: Fault,
    /// How long until it heals.
    pub hold_ms: u64,
}

impl Step {
    /// When it heals.
    pub fn end_ms(&self) -> u64 {
        self.at_ms + self.hold_ms
    }
}

/// The schedule for `seed` on `shape` over `duration_ms`.
pub fn schedule(seed: u64, shape: Shape, duration_ms: u64) -> Vec<Step> {
    let mut rng = Rng::new(seed);
    let targets = targets(shape);
    let mut free_at = vec![0u64; targets.len()];
    let mut kafka_free_at = 0u64;
    let mut steps = Vec::new();
    let mut t = 0u64;
    loop {
        t += rng.exp(MEAN_GAP_MS) as u64 + 1;
        if t >= duration_ms {
            return steps;
        }
        let i = rng.below(targets.len() as u64) as usize;
        let target = targets[i];
        let kafka = matches!(target, Target::Kafka(_));
        if free_at[i] > t || (kafka && kafka_free_at > t) {
            continue; // busy: this draw is skipped, the next one tries again
        }
        let (fault, hold_ms) = draw(&mut rng, target);
        if t + hold_ms >= duration_ms {
            continue;
        }
        free_at[i] = t + hold_ms + SETTLE_MS;
        if kafka {
            kafka_free_at = t + hold_ms + KAFKA_SETTLE_MS;
        }
        steps.push(Step {
            at_ms: t,
            target,
            fault,
            hold_ms,
        });
    }
}

/// Every target of `shape`, links weighted as the agents are (faults there are cheap).
fn targets(shape: Shape) -> Vec<Target> {
    let mut v = Vec::new();
    v.extend((0..shape.agents).map(Target::Agent));
    v.extend((0..shape.agents).map(Target::Link));
    v.extend((0..shape.bridges).map(Target::Bridge));
    v.extend((0..shape.reconcilers).map(Target::Reconciler));
    v.push(Target::Mosquitto);
    v.extend((0..shape.kafka).map(Target::Kafka));
    v
}

/// Every process of `shape` (the targets but the links).
pub fn processes(shape: Shape) -> Vec<Target> {
    targets(shape)
        .into_iter()
        .filter(|t| !matches!(t, Target::Link(_)))
        .collect()
}

/// A fault that fits `target` and its hold time.
fn draw(rng: &mut Rng, target: Target) -> (Fault, u64) {
    let ms = |rng: &mut Rng, lo: f64, hi: f64| rng.between(lo, hi) as u64;
    match target {
        Target::Link(_) => match rng.below(5) {
            0 => (Fault::Cut, ms(rng, 200.0, 8_000.0)),
            1 => (Fault::Blackhole, ms(rng, 200.0, 8_000.0)),
            2 => (
                Fault::Latency(ms(rng, 20.0, 500.0)),
                ms(rng, 1_000.0, 10_000.0),
            ),
            3 => (
                Fault::Throttle(ms(rng, 2_000.0, 64_000.0)),
                ms(rng, 1_000.0, 10_000.0),
            ),
            _ => (Fault::Reset, SETTLE_MS),
        },
        Target::Agent(_) => match rng.below(6) {
            0 => (
                Fault::Clock(if rng.chance(0.5) { 1 } else { -1 }),
                ms(rng, 5_000.0, 20_000.0),
            ),
            1 => (Fault::Quota, ms(rng, 5_000.0, 15_000.0)),
            2 | 3 => (Fault::Hang, ms(rng, 100.0, 5_000.0)),
            _ => (Fault::Kill, ms(rng, 0.0, 3_000.0)),
        },
        Target::Reconciler(_) => match rng.below(5) {
            0 => (Fault::StateLoss, ms(rng, 0.0, 3_000.0)),
            1 | 2 => (Fault::Hang, ms(rng, 100.0, 5_000.0)),
            _ => (Fault::Kill, ms(rng, 0.0, 3_000.0)),
        },
        Target::Bridge(_) | Target::Mosquitto | Target::Kafka(_) => {
            if rng.chance(0.5) {
                (Fault::Hang, ms(rng, 100.0, 5_000.0))
            } else {
                (Fault::Kill, ms(rng, 0.0, 3_000.0))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    const TEN_MINUTES: u64 = 600_000;

    #[test]
    fn a_seed_is_a_schedule() {
        let s = Shape::default();
        assert_eq!(schedule(7, s, TEN_MINUTES), schedule(7, s, TEN_MINUTES));
        assert_ne!(schedule(7, s, TEN_MINUTES), schedule(8, s, TEN_MINUTES));
    }

    #[test]
    fn ten_minutes_hold_a_thousand_faults_of_every_kind_on_every_target() {
        for seed in 0..50 {
            let steps = schedule(seed, Shape::default(), TEN_MINUTES);
            assert!(steps.len() >= 1_000, "seed {seed}: {} faults", steps.len());
            let kinds: BTreeSet<_> = steps.iter().map(|s| s.fault.kind()).collect();
            assert_eq!(kinds.len(), 10, "seed {seed}: kinds {kinds:?}");
            let hit: BTreeSet<_> = steps.iter().map(|s| s.target).collect();
            assert_eq!(hit.len(), targets(Shape::default()).len(), "seed {seed}");
        }
    }

    #[test]
    fn faults_never_overlap_on_a_target_nor_on_two_kafka_nodes() {
        for seed in 0..200 {
            let steps = schedule(seed, Shape::default(), TEN_MINUTES);
            assert!(steps.windows(2).all(|w| w[0].at_ms <= w[1].at_ms));
            assert!(steps.iter().all(|s| s.end_ms() < TEN_MINUTES));
            for (i, a) in steps.iter().enumerate() {
                for b in &steps[i + 1..] {
                    if b.target == a.target {
                        assert!(
                            b.at_ms >= a.end_ms() + SETTLE_MS,
                            "seed {seed}: {a:?} {b:?}"
                        );
                    }
                    let both_kafka = matches!(a.target, Target::Kafka(_))
                        && matches!(b.target, Target::Kafka(_));
                    if both_kafka {
                        assert!(b.at_ms >= a.end_ms() + KAFKA_SETTLE_MS, "seed {seed}");
                    }
                }
            }
        }
    }

    #[test]
    fn faults_fit_their_targets() {
        for s in schedule(3, Shape::default(), TEN_MINUTES) {
            let ok = match s.fault {
                Fault::Cut
                | Fault::Blackhole
                | Fault::Latency(_)
                | Fault::Throttle(_)
                | Fault::Reset => matches!(s.target, Target::Link(_)),
                Fault::Clock(d) => matches!(s.target, Target::Agent(_)) && d.abs() == 1,
                Fault::Quota => matches!(s.target, Target::Agent(_)),
                Fault::StateLoss => matches!(s.target, Target::Reconciler(_)),
                Fault::Kill | Fault::Hang => !matches!(s.target, Target::Link(_)),
            };
            assert!(ok, "{s:?}");
        }
    }
}

//! The crash-point run: the nemesis's pipeline ([`Rig`]) under the same load, every process
//! armed to abort at one of the persistence steps ([`POINTS`], compiled into the test build
//! only), started again each time it dies, armed for its next crash, until every point has
//! crashed `per_point` times; then the same drain and history check as the nemesis.
//!
//! The points are dealt out so that processes crash side by side: each agent takes an agent
//! point, the bridges and the reconcilers share theirs in turn. A crash lands on a point's
//! `k`-th hit after a start, `k` drawn from the seed in `0..MAX_SKIP`, so it falls early in a
//! restart as well as in steady running. A point that an armed process does not reach within
//! [`STALL`] is an incident (a point the pipeline never passes proves nothing).

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use edgesync_servicekit::crash::POINTS;
use edgesync_sim::rng::Rng;
use edgesync_testkit::Error;

use super::rig::Rig;
use super::{drained, feed, history, Options, Report};
use crate::nemesis::{processes, Shape, Target};

/// How long an armed process may run without reaching its point.
pub const STALL: Duration = Duration::from_secs(90);
/// A crash lands on one of a point's first `MAX_SKIP` hits after a start.
pub const MAX_SKIP: u64 = 4;
const FAILPOINTS: &str = "FAILPOINTS";

/// The pipeline of the crash-point run: six agents (one per agent point), two bridges, two
/// reconcilers, one Kafka node.
pub const SHAPE: Shape = Shape {
    agents: 6,
    bridges: 2,
    reconcilers: 2,
    kafka: 1,
};

/// One process's crashes to come, in order.
#[derive(Debug)]
struct Armed {
    target: Target,
    queue: VecDeque<&'static str>,
    since: Instant,
}

/// Runs every crash point `per_point` times on a fresh pipeline, then checks the history.
pub fn run(seed: u64, per_point: usize, prefix: &str) -> Result<Report, Error> {
    let mut rig = Rig::start(SHAPE, prefix)?;
    let mut rng = Rng::new(seed);
    let mut armed = deal(per_point);
    let mut crashes: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut incidents = Vec::new();
    let started = Instant::now();
    for a in &mut armed {
        arm(&mut rig, a, &mut rng, &mut incidents);
    }
    while armed.iter().any(|a| !a.queue.is_empty()) {
        for a in &mut armed {
            let Some(&point) = a.queue.front() else {
                continue;
            };
            let p = rig.process(a.target).expect("only processes are armed");
            if !p.is_running() {
                *crashes.entry(point).or_default() += 1;
                a.queue.pop_front();
                arm(&mut rig, a, &mut rng, &mut incidents);
            } else if a.since.elapsed() > STALL {
                incidents.push(format!(
                    "{point} not reached by {:?} in {STALL:?}",
                    a.target
                ));
                a.queue.retain(|q| *q != point);
                arm(&mut rig, a, &mut rng, &mut incidents);
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let duration = started.elapsed();
    let tallies: Vec<_> = rig.feeders.iter_mut().map(feed::Feeder::stop).collect();
    incidents.extend(rig.revive());
    incidents.extend(panics(&mut rig));
    let healed = Instant::now();
    let converged_after = drained(&rig, &tallies).then(|| healed.elapsed());
    let history = history::check(&mut rig, &tallies, &[]);
    let mut report = Report {
        name: "crash points",
        options: Options {
            seed,
            duration,
            shape: SHAPE,
        },
        faults: crashes,
        converged_after,
        history,
        incidents,
        replay: format!("cargo test -p edgesync-tests --test crash_points (seed {seed})"),
    };
    super::keep_logs(&mut rig, &mut report);
    Ok(report)
}

/// Every point `per_point` times, dealt to the processes of its service in turn.
fn deal(per_point: usize) -> Vec<Armed> {
    let mut by_service: BTreeMap<&str, Vec<&'static str>> = BTreeMap::new();
    for (name, service) in POINTS {
        by_service.entry(service).or_default().push(name);
    }
    let targets = |service: &str| -> Vec<Target> {
        let ts: Vec<_> = processes(SHAPE)
            .into_iter()
            .filter(|t| t.service() == Some(service))
            .collect();
        assert!(!ts.is_empty(), "no process of the run is a {service}");
        ts
    };
    let mut armed = Vec::new();
    for (service, points) in by_service {
        let ts = targets(service);
        let mut queues: Vec<VecDeque<&'static str>> = vec![VecDeque::new(); ts.len()];
        for (i, p) in points.into_iter().enumerate() {
            queues[i % ts.len()].extend(std::iter::repeat_n(p, per_point));
        }
        armed.extend(ts.into_iter().zip(queues).map(|(target, queue)| Armed {
            target,
            queue,
            since: Instant::now(),
        }));
    }
    armed
}

/// Restarts `a`'s process armed for its next crash (unarmed when none is left).
fn arm(rig: &mut Rig, a: &mut Armed, rng: &mut Rng, incidents: &mut Vec<String>) {
    let spec = a.queue.front().map(|point| match rng.below(MAX_SKIP) {
        0 => format!("{point}=return"),
        k => format!("{point}={k}*off->return"),
    });
    let p = rig.process(a.target).expect("only processes are armed");
    p.set_env(FAILPOINTS, spec.as_deref());
    if let Err(e) = p.relaunch() {
        incidents.push(format!("{:?} did not start again: {e}", a.target));
    }
    a.since = Instant::now();
}

/// A process that died of anything but its crash point panicked: each is an incident.
fn panics(rig: &mut Rig) -> Vec<String> {
    processes(SHAPE)
        .into_iter()
        .filter(|t| !matches!(t, Target::Mosquitto | Target::Kafka(_)))
        .filter_map(|t| {
            let log = rig.process(t)?.log_tail(1_000_000);
            log.contains("panicked at")
                .then(|| format!("{t:?} panicked:\n{}", tail_around(&log, "panicked at")))
        })
        .collect()
}

fn tail_around(log: &str, needle: &str) -> String {
    let at = log.find(needle).unwrap_or(0);
    log[at..].lines().take(10).collect::<Vec<_>>().join("\n")
}

//! The nemesis runner: a seeded [`schedule`](crate::nemesis::schedule) of faults applied to
//! the real pipeline under a steady load, then healed, drained and checked by history.
//!
//! A run: start the pipeline ([`rig`]) and its load ([`feed`]); apply each step's fault at its
//! time and heal it at its end (heals first when both fall on one instant); stop the load;
//! start again any process that did not come back (a failure, reported); wait until every
//! agent is acknowledged up to its last seq with an empty spool (the time this takes is the
//! report's *converged after*); then check the history ([`history`]).
//!
//! The same seed gives the same schedule. The pipeline's timing is not deterministic (real
//! processes on a real clock), so a seed replays the same faults, not the same interleaving:
//! a seed that failed once is rerun several times as a regression test.

pub mod bad_input;
pub mod crash;
pub mod feed;
pub mod history;
pub mod rig;

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, Instant};

use edgesync_testkit::Error;

use crate::nemesis::{schedule, Shape, Step};
use crate::status;
use history::History;
use rig::Rig;

/// How long the drain may take after the last heal before the run counts as not converged.
pub const CONVERGE_TIMEOUT: Duration = Duration::from_secs(300);
/// The converge target the report is judged against.
pub const CONVERGE_TARGET: Duration = Duration::from_secs(60);

/// What to run.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// The schedule's seed.
    pub seed: u64,
    /// How long faults are applied.
    pub duration: Duration,
    /// The pipeline.
    pub shape: Shape,
}

/// A run's outcome.
#[derive(Debug)]
pub struct Report {
    /// Which run: `nemesis` or `crash points`.
    pub name: &'static str,
    /// What ran.
    pub options: Options,
    /// Faults applied, by kind (crashes by point for the crash-point run).
    pub faults: BTreeMap<&'static str, usize>,
    /// From the last heal to every agent drained, if it happened within [`CONVERGE_TIMEOUT`].
    pub converged_after: Option<Duration>,
    /// The history check.
    pub history: History,
    /// Faults that could not be applied or healed, and processes found dead at the end.
    pub incidents: Vec<String>,
    /// The command that replays the run.
    pub replay: String,
}

impl Report {
    /// Whether every promise held: nothing lost, doubled or invented, everything accounted,
    /// every process back, converged at all (within [`CONVERGE_TIMEOUT`]).
    pub fn held(&self) -> bool {
        self.history.problems.is_empty()
            && self.incidents.is_empty()
            && self.converged_after.is_some()
    }

    /// [`Report::held`], and converged within [`CONVERGE_TARGET`] (a figure for the command's
    /// report; the test asserts behaviour, not speed).
    pub fn passed(&self) -> bool {
        let total = self.converged_after.zip(self.history.state_after);
        self.held() && total.is_some_and(|(a, b)| a + b <= CONVERGE_TARGET)
    }

    fn sum(&self, f: impl Fn(&history::DeviceHistory) -> u64) -> u64 {
        self.history.devices.values().map(f).sum()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let o = &self.options;
        let total: usize = self.faults.values().sum();
        writeln!(
            f,
            "{}: seed {}, {} s, {:?}",
            self.name,
            o.seed,
            o.duration.as_secs(),
            o.shape
        )?;
        writeln!(f, "faults: {total} ({:?})", self.faults)?;
        writeln!(
            f,
            "events: answered {}, delivered {}, lost {}, doubled {}, never appended {}",
            self.sum(|h| h.answered),
            self.sum(|h| h.delivered),
            self.sum(|h| h.lost),
            self.sum(|h| h.doubled),
            self.sum(|h| h.never_appended)
        )?;
        writeln!(
            f,
            "policy: dropped at the edge {} (drop-oldest, in the server's ledger), dropped on \
             arrival {} (drop-newest, answered 202), refused {} (block, answered 503); \
             unanswered requests held {} events",
            self.sum(|h| h.dropped_at_edge),
            self.sum(|h| h.dropped_newest),
            self.sum(|h| h.refused_full),
            self.sum(|h| h.unknown)
        )?;
        match self.converged_after {
            Some(c) => writeln!(f, "drained {:.1} s after the last heal", c.as_secs_f64())?,
            None => writeln!(f, "not drained within {} s", CONVERGE_TIMEOUT.as_secs())?,
        }
        match self.history.state_after {
            Some(c) => writeln!(
                f,
                "state converged {:.1} s after the drain",
                c.as_secs_f64()
            )?,
            None => writeln!(
                f,
                "state not converged within {} s",
                CONVERGE_TIMEOUT.as_secs()
            )?,
        }
        for (d, h) in &self.history.devices {
            writeln!(f, "  {d}: {h:?}")?;
        }
        for p in self.incidents.iter().chain(&self.history.problems) {
            writeln!(f, "FAIL: {p}")?;
        }
        let verdict = if self.passed() { "PASSED" } else { "FAILED" };
        write!(f, "{verdict} (replay: {})", self.replay)
    }
}

/// Where a failed run leaves its processes' logs: `$EDGESYNC_HOME/chaos/<name>-seed-<seed>/`.
pub fn logs_dir(name: &str, seed: u64) -> std::path::PathBuf {
    edgesync_testkit::tools_home()
        .join("chaos")
        .join(format!("{}-seed-{seed}", name.replace(' ', "-")))
}

/// Saves the logs of a run that did not hold, and says where in its incidents.
pub(crate) fn keep_logs(rig: &mut Rig, report: &mut Report) {
    if report.held() {
        return;
    }
    let dir = logs_dir(report.name, report.options.seed);
    match rig.save_logs(&dir) {
        Ok(()) => report
            .incidents
            .push(format!("logs kept in {}", dir.display())),
        Err(e) => report.incidents.push(format!("logs not kept: {e}")),
    }
}

/// Runs `options` on a fresh pipeline (agents named `<prefix>-<n>`) and reports.
pub fn run(options: Options, prefix: &str) -> Result<Report, Error> {
    let duration_ms = u64::try_from(options.duration.as_millis()).unwrap_or(u64::MAX);
    let steps = schedule(options.seed, options.shape, duration_ms);
    let mut rig = Rig::start(options.shape, prefix)?;
    let mut incidents = Vec::new();
    let mut faults = BTreeMap::new();
    let started = Instant::now();
    for (at_ms, heal, step) in timeline(&steps) {
        let due = started + Duration::from_millis(at_ms);
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
        let done = if heal {
            rig.heal(step)
        } else {
            *faults.entry(step.fault.kind()).or_default() += 1;
            rig.apply(step)
        };
        if let Err(e) = done {
            let what = if heal { "healing" } else { "applying" };
            incidents.push(format!("{what} {step:?}: {e}"));
        }
    }
    let tallies: Vec<_> = rig.feeders.iter_mut().map(feed::Feeder::stop).collect();
    incidents.extend(rig.revive());
    let healed = Instant::now();
    let converged_after = drained(&rig, &tallies).then(|| healed.elapsed());
    let history = history::check(&mut rig, &tallies, &[]);
    let mut report = Report {
        name: "nemesis",
        options,
        faults,
        converged_after,
        history,
        incidents,
        replay: format!(
            "scripts/chaos --seconds {} --seed {}",
            options.duration.as_secs(),
            options.seed
        ),
    };
    keep_logs(&mut rig, &mut report);
    Ok(report)
}

/// Every step's start and heal, in time order (a heal before a start at the same instant).
fn timeline(steps: &[Step]) -> Vec<(u64, bool, &Step)> {
    let mut t: Vec<_> = steps
        .iter()
        .flat_map(|s| [(s.at_ms, false, s), (s.end_ms(), true, s)])
        .collect();
    t.sort_by_key(|&(at, heal, _)| (at, !heal));
    t
}

/// Waits up to [`CONVERGE_TIMEOUT`] until every agent is acknowledged up to its last seq (at
/// least its last answered one) with an empty spool.
pub fn drained(rig: &Rig, tallies: &[feed::Tally]) -> bool {
    let done = |i: usize| {
        let s = status(&rig.agents[i]);
        let last = s["last_seq"].as_u64();
        let answered = tallies[i].answered.last().copied().unwrap_or(0);
        last.is_some_and(|l| l >= answered && s["acked_watermark"].as_u64() == Some(l))
            && s["spool_events"] == 0
    };
    edgesync_testkit::wait_until(CONVERGE_TIMEOUT, || (0..rig.agents.len()).all(done))
}

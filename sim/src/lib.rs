//! # edgesync-sim: a deterministic fleet simulator
//!
//! Runs edgesync — the real sans-IO agent and server state machines from `edgesync-protocol`,
//! real batches through the real codec — and a traditional retry-based baseline over the *same*
//! seeded trace: N devices generating telemetry, status and alarm events that update counters,
//! registers, sets and rollups shared between devices; each behind an intermittent link
//! (exponential up/down periods, latency with jitter, loss, duplication, reordering,
//! bandwidth); device crashes (volatile state lost, durable state kept) and server restarts.
//! The link comes from a named profile ([`SimConfig::profile`]: `default`, `cellular`,
//! `outage`), every parameter printed with the results.
//!
//! Virtual time, one seed, no wall clock: the same configuration gives the same report, byte
//! for byte. Devices interact only through the server, whose protocol state is per replica, so
//! the fleet runs as parts of consecutive devices, each with its own event queue, on as many
//! threads as there are (the parts' outcomes merge by sums and CRDT joins, in part order: the
//! report does not depend on the thread count). After the measured window the network heals
//! and faults stop, and the run continues until both approaches are quiescent, so
//! "completeness after heal" says what an approach lost for good.
//!
//! A protocol-only run ([`SimConfig::protocol_only`]) leaves out the baseline and the batch
//! codec (batch sizes on the wire come from a model measured with the codec): the agent and
//! server machines, the deltas and the checks below are the same, at a hundred times the fleet.
//!
//! ## Definitions
//! - **completeness**: distinct generated events applied at the server / events generated.
//! - **latency**: from an event's (true) generation time to when the server applied it
//!   (edgesync: released in dot order; baseline: first arrival), over applied events (so an
//!   approach that drops old events has them missing from its latencies, not long).
//! - **sync failure rate**: sync attempts (a batch or request put on the link) abandoned before
//!   their acknowledgement arrived — lost, timed out, cut by the link, or lost in a crash —
//!   divided by all attempts. The report splits the failed attempts into those that never
//!   reached the server (lost on the link, sent into an outage not yet noticed, arriving while
//!   the server restarts: no sender avoids these, so the link's loss rate bounds the rate from
//!   below) and those the server had (the acknowledgement was lost or late, or the sender
//!   crashed first: what a protocol can avoid).
//! - **bandwidth**: payload bytes on the wire in both directions / the Avro-encoded size of
//!   every generated event, once each (transport headers excluded for both approaches; a
//!   request for the retained ack counts its topic filter).
//! - **state equals reference**: the reference is every generated event's CRDT deltas joined
//!   (computed as the join of the devices' own states, which each are the join of their
//!   deltas); edgesync compares digests of full states, the baseline compares each key's read
//!   value.

use edgesync_core::StateDigest;

pub mod baseline;
pub mod config;
pub mod edgesync;
pub mod fleet;
pub mod net;
pub mod report;
pub mod rng;

pub use config::SimConfig;
pub use report::Report;

/// Why a run's results cannot be trusted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SimError {
    /// The two approaches generated different traces (a simulator bug).
    #[error("the approaches saw different traces: {edgesync} vs {baseline} events")]
    TraceMismatch {
        /// Events edgesync generated.
        edgesync: u64,
        /// Events the baseline generated.
        baseline: u64,
    },
    /// The server failed to decode an edgesync batch (a codec bug).
    #[error("{0} batches failed to decode")]
    DecodeErrors(u64),
    /// The server released events out of dot order or twice (a protocol bug).
    #[error("{0} events released out of dot order or twice")]
    OrderViolations(u64),
}

/// Runs both approaches on the trace of `cfg` and compares them, on as many threads as the
/// machine has (see [`run_on`]).
pub fn run(cfg: &SimConfig) -> Result<Report, SimError> {
    run_on(cfg, default_threads())
}

/// The threads [`run`] uses: what the machine offers.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// Runs both approaches on the trace of `cfg` on `threads` threads. The fleet is split into
/// parts of consecutive devices, each run with its own event queue (devices interact only
/// through the server, whose protocol state is per replica), and the parts' outcomes are merged
/// with order-independent sums and joins: the report is byte-identical for any thread count.
pub fn run_on(cfg: &SimConfig, threads: usize) -> Result<Report, SimError> {
    let (e, b) = run_parts(cfg, threads.max(1));
    if let Some(b) = &b {
        if e.metrics.generated != b.metrics.generated || e.reference != b.reference {
            return Err(SimError::TraceMismatch {
                edgesync: e.metrics.generated,
                baseline: b.metrics.generated,
            });
        }
    }
    if e.decode_errors > 0 {
        return Err(SimError::DecodeErrors(e.decode_errors));
    }
    if e.order_violations > 0 {
        return Err(SimError::OrderViolations(e.order_violations));
    }
    let reference_digest = StateDigest::of_map(&e.reference).to_hex();
    let edgesync_values = edgesync::values(&e.state);
    let mut results = vec![report::ApproachReport::new(
        "edgesync",
        e.metrics,
        &edgesync_values,
        &e.reference,
        Some(StateDigest::of_map(&e.state)),
    )];
    if let Some(b) = b {
        let baseline_values = b.values();
        results.push(report::ApproachReport::new(
            "baseline",
            b.metrics,
            &baseline_values,
            &b.reference,
            None,
        ));
    }
    Ok(Report {
        config: cfg.clone(),
        reference_digest,
        results,
    })
}

/// One piece of work: an approach on a part of the fleet.
#[derive(Clone)]
enum Job {
    Edgesync(std::ops::Range<usize>),
    Baseline(std::ops::Range<usize>),
}

enum Done {
    Edgesync(edgesync::Outcome),
    Baseline(baseline::Outcome),
}

/// Devices per part of the fleet: few enough that a part's working set stays small (a part
/// of 250 devices runs about four times faster per device than one of 3,000, which no longer
/// fits the caches) and that memory is bounded by the parts in flight; enough that what every
/// part repeats (setting up, merging) does not matter.
const PART_DEVICES: usize = 250;

/// Splits `0..devices` into `n` consecutive parts of near-equal size (none empty).
fn split(devices: usize, n: usize) -> Vec<std::ops::Range<usize>> {
    let n = n.clamp(1, devices.max(1));
    (0..n)
        .map(|i| devices * i / n..devices * (i + 1) / n)
        .collect()
}

/// The merged outcomes so far.
#[derive(Default)]
struct Merged {
    edgesync: Option<edgesync::Outcome>,
    baseline: Option<baseline::Outcome>,
}

impl Merged {
    fn add(&mut self, done: Done) {
        match done {
            Done::Edgesync(o) => match self.edgesync.as_mut() {
                Some(acc) => acc.merge(o),
                None => self.edgesync = Some(o),
            },
            Done::Baseline(o) => match self.baseline.as_mut() {
                Some(acc) => acc.merge(o),
                None => self.baseline = Some(o),
            },
        }
    }
}

/// Runs every part of both approaches (edgesync alone in a protocol-only run) on `threads`
/// threads, merging the parts' outcomes in part order as they come in.
fn run_parts(cfg: &SimConfig, threads: usize) -> (edgesync::Outcome, Option<baseline::Outcome>) {
    // At least two parts per thread, so that a part that happens to take longer is evened out.
    let parts = cfg
        .devices
        .div_ceil(PART_DEVICES)
        .max(if threads == 1 { 1 } else { threads * 2 });
    let mut jobs: Vec<Job> = split(cfg.devices, parts)
        .into_iter()
        .map(Job::Edgesync)
        .collect();
    if cfg.protocol_only.is_none() {
        jobs.extend(split(cfg.devices, parts).into_iter().map(Job::Baseline));
    }
    let run_job = |job: &Job| match job {
        Job::Edgesync(r) => Done::Edgesync(edgesync::run_part(cfg, r.clone())),
        Job::Baseline(r) => Done::Baseline(baseline::run_part(cfg, r.clone())),
    };
    let mut merged = Merged::default();
    if threads == 1 {
        for job in &jobs {
            merged.add(run_job(job));
        }
    } else {
        let next = std::sync::atomic::AtomicUsize::new(0);
        let (tx, rx) = std::sync::mpsc::channel::<(usize, Done)>();
        std::thread::scope(|s| {
            for _ in 0..threads.min(jobs.len()) {
                let tx = tx.clone();
                let (jobs, next, run_job) = (&jobs, &next, &run_job);
                s.spawn(move || loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(job) = jobs.get(i) else { break };
                    if tx.send((i, run_job(job))).is_err() {
                        break;
                    }
                });
            }
            drop(tx);
            // Merge in part order: a part that finishes early waits for those before it.
            let mut waiting = std::collections::BTreeMap::new();
            let mut due = 0;
            for (i, done) in rx {
                waiting.insert(i, done);
                while let Some(done) = waiting.remove(&due) {
                    merged.add(done);
                    due += 1;
                }
            }
        });
    }
    match merged.edgesync {
        Some(e) => (e, merged.baseline),
        None => unreachable!("every part ran (a part that panicked has panicked the scope)"),
    }
}

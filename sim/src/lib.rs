//! # edgesync-sim: a deterministic fleet simulator
//!
//! Runs edgesync — the real sans-IO agent and server state machines from `edgesync-protocol`,
//! real batches through the real codec — and a traditional retry-based baseline over the *same*
//! seeded trace: N devices generating telemetry, status and alarm events that update counters,
//! registers, sets and rollups shared between devices; each behind an intermittent link
//! (exponential up/down periods, latency with jitter, loss, duplication, reordering,
//! bandwidth); device crashes (volatile state lost, durable state kept) and server restarts.
//!
//! Virtual time, one seed, no wall clock, no threads: the same configuration gives the same
//! report, byte for byte. After the measured window the network heals and faults stop, and the
//! run continues until both approaches are quiescent, so "completeness after heal" says what an
//! approach lost for good.
//!
//! ## Definitions
//! - **completeness**: distinct generated events applied at the server / events generated.
//! - **latency**: from an event's (true) generation time to when the server applied it
//!   (edgesync: released in dot order; baseline: first arrival), over applied events.
//! - **sync failure rate**: sync attempts (a batch or request put on the link) abandoned before
//!   their acknowledgement arrived — lost, timed out, cut by the link, or lost in a crash —
//!   divided by all attempts.
//! - **bandwidth**: payload bytes on the wire in both directions / the Avro-encoded size of
//!   every generated event, once each (transport headers excluded for both approaches).
//! - **state equals reference**: the reference is every generated event's CRDT deltas joined;
//!   edgesync compares digests of full states, the baseline compares each key's read value.

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
    if e.metrics.generated != b.metrics.generated || e.reference != b.reference {
        return Err(SimError::TraceMismatch {
            edgesync: e.metrics.generated,
            baseline: b.metrics.generated,
        });
    }
    if e.decode_errors > 0 {
        return Err(SimError::DecodeErrors(e.decode_errors));
    }
    if e.order_violations > 0 {
        return Err(SimError::OrderViolations(e.order_violations));
    }
    let reference_digest = StateDigest::of_map(&e.reference).to_hex();
    let edgesync_values = edgesync::values(&e.state);
    let baseline_values = b.values();
    let results = vec![
        report::ApproachReport::new(
            "edgesync",
            e.metrics,
            &edgesync_values,
            &e.reference,
            Some(StateDigest::of_map(&e.state)),
        ),
        report::ApproachReport::new("baseline", b.metrics, &baseline_values, &b.reference, None),
    ];
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

/// Splits `0..devices` into `n` consecutive parts of near-equal size (none empty).
fn split(devices: usize, n: usize) -> Vec<std::ops::Range<usize>> {
    let n = n.clamp(1, devices.max(1));
    (0..n)
        .map(|i| devices * i / n..devices * (i + 1) / n)
        .collect()
}

/// Runs every part of both approaches on `threads` threads and merges them in part order.
fn run_parts(cfg: &SimConfig, threads: usize) -> (edgesync::Outcome, baseline::Outcome) {
    // More parts than threads evens out parts that happen to take longer.
    let parts = if threads == 1 { 1 } else { threads * 2 };
    let mut jobs: Vec<Job> = split(cfg.devices, parts)
        .into_iter()
        .map(Job::Edgesync)
        .collect();
    jobs.extend(split(cfg.devices, parts).into_iter().map(Job::Baseline));
    let run_job = |job: &Job| match job {
        Job::Edgesync(r) => Done::Edgesync(edgesync::run_part(cfg, r.clone())),
        Job::Baseline(r) => Done::Baseline(baseline::run_part(cfg, r.clone())),
    };
    let results: Vec<Done> = if threads == 1 {
        jobs.iter().map(run_job).collect()
    } else {
        let next = std::sync::atomic::AtomicUsize::new(0);
        let slots: Vec<std::sync::Mutex<Option<Done>>> =
            jobs.iter().map(|_| std::sync::Mutex::new(None)).collect();
        std::thread::scope(|s| {
            for _ in 0..threads.min(jobs.len()) {
                s.spawn(|| loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(job) = jobs.get(i) else { break };
                    let done = run_job(job);
                    if let Ok(mut slot) = slots[i].lock() {
                        *slot = Some(done);
                    }
                });
            }
        });
        slots
            .into_iter()
            .filter_map(|m| m.into_inner().ok().flatten())
            .collect()
    };
    let (mut e, mut b) = (None::<edgesync::Outcome>, None::<baseline::Outcome>);
    for done in results {
        match done {
            Done::Edgesync(o) => match e.as_mut() {
                Some(acc) => acc.merge(o),
                None => e = Some(o),
            },
            Done::Baseline(o) => match b.as_mut() {
                Some(acc) => acc.merge(o),
                None => b = Some(o),
            },
        }
    }
    match (e, b) {
        (Some(e), Some(b)) => (e, b),
        _ => unreachable!("every part ran (a part that panicked has panicked the scope)"),
    }
}

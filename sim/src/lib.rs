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

/// Runs both approaches on the trace of `cfg` and compares them.
pub fn run(cfg: &SimConfig) -> Result<Report, SimError> {
    let e = edgesync::run(cfg);
    let b = baseline::run(cfg);
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
    let results = vec![
        report::ApproachReport::new(
            "edgesync",
            e.metrics,
            &edgesync_values,
            &e.reference,
            Some(StateDigest::of_map(&e.state)),
        ),
        report::ApproachReport::new("baseline", b.metrics, &b.values, &b.reference, None),
    ];
    Ok(Report {
        config: cfg.clone(),
        reference_digest,
        results,
    })
}

//! The reconciler's Prometheus metrics (prefix `edgesync_reconciler_`), registered in a
//! registry the caller passes in. Per-device figures are aggregated (histograms, counts);
//! the per-device detail is in `/v1/status`.

use std::sync::atomic::AtomicU64;

use edgesync_schemas::DeadLetterReason;
use edgesync_servicekit::metrics::ReasonCounters;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::ledger::Ledger;

/// A stage of the reconciler (`device` or `key`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageLabel {
    /// The stage.
    pub stage: String,
}

/// A completeness bucket (`le`: at most this fraction complete).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LeLabel {
    /// Upper bound.
    pub le: String,
}

/// Every metric of the reconciler.
#[derive(Debug)]
pub struct ReconcilerMetrics {
    /// Batches consumed.
    pub batches: Counter,
    /// Events received again (absorbed by the causal context).
    pub duplicates: Counter,
    /// Events released but not produced because the events topic already had them.
    pub suppressed: Counter,
    /// Events in the events topic (counted once Kafka confirmed them).
    pub events: Counter,
    /// State deltas in the state-deltas topic (counted once Kafka confirmed them).
    pub deltas: Counter,
    /// Acknowledgements produced.
    pub acks: Counter,
    /// Acknowledgements whose delivery failed (the agent sends again and is acknowledged then).
    pub acks_failed: Counter,
    /// Deltas joined into the state store.
    pub merges: Counter,
    /// Converged states emitted.
    pub states: Counter,
    /// Records dead-lettered, by reason.
    pub dead_lettered: ReasonCounters,
    /// |receive time - event HLC|.
    pub clock_skew: Histogram,
    /// Events from clocks off by more than the bound.
    pub skew_flagged: Counter,
    /// Oldest event HLC of a delta → its converged value emitted.
    pub convergence: Histogram,
    /// Replicas owned.
    pub replicas: Gauge,
    /// Replicas with a gap.
    pub replicas_with_gaps: Gauge,
    /// Seqs missing below the highest seen, over all replicas.
    pub missing_seqs: Gauge,
    /// Age of the oldest open gap.
    pub oldest_gap_age: Gauge<f64, AtomicU64>,
    /// Replicas whose latest clock skew is beyond the bound.
    pub replicas_skew_flagged: Gauge,
    /// Replicas at most `le` complete (cumulative).
    pub completeness: Family<LeLabel, Gauge<f64, AtomicU64>>,
    /// Records between each stage's position and the end of its input topic, over the
    /// partitions this process owns (from librdkafka's statistics).
    pub consumer_lag: Family<StageLabel, Gauge>,
}

const COMPLETENESS_BUCKETS: [f64; 6] = [0.5, 0.9, 0.99, 0.999, 0.9999, 1.0];

impl ReconcilerMetrics {
    /// Creates and registers the metrics.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            batches: Counter::default(),
            duplicates: Counter::default(),
            suppressed: Counter::default(),
            events: Counter::default(),
            deltas: Counter::default(),
            acks: Counter::default(),
            acks_failed: Counter::default(),
            merges: Counter::default(),
            states: Counter::default(),
            dead_lettered: ReasonCounters::new(DeadLetterReason::ALL.map(DeadLetterReason::label)),
            clock_skew: Histogram::new(exponential_buckets(0.01, 4.0, 12)),
            skew_flagged: Counter::default(),
            convergence: Histogram::new(exponential_buckets(0.001, 2.0, 20)),
            replicas: Gauge::default(),
            replicas_with_gaps: Gauge::default(),
            missing_seqs: Gauge::default(),
            oldest_gap_age: Gauge::default(),
            completeness: Family::default(),
            replicas_skew_flagged: Gauge::default(),
            consumer_lag: Family::default(),
        };
        let r = registry.sub_registry_with_prefix("edgesync_reconciler");
        r.register("batches", "Batches consumed", m.batches.clone());
        r.register(
            "duplicates",
            "Events received again, absorbed",
            m.duplicates.clone(),
        );
        r.register(
            "events_suppressed",
            "Released events the events topic already had",
            m.suppressed.clone(),
        );
        r.register(
            "events",
            "Events confirmed by Kafka on the events topic, once each in dot order",
            m.events.clone(),
        );
        r.register(
            "deltas",
            "State deltas confirmed by Kafka",
            m.deltas.clone(),
        );
        r.register("acks", "Acknowledgements produced", m.acks.clone());
        r.register(
            "acks_failed",
            "Acknowledgements whose delivery failed",
            m.acks_failed.clone(),
        );
        r.register(
            "merges",
            "Deltas joined into the state store",
            m.merges.clone(),
        );
        r.register("states", "Converged states emitted", m.states.clone());
        r.register(
            "dead_lettered",
            "Records dead-lettered, by reason",
            m.dead_lettered.family(),
        );
        r.register(
            "clock_skew_seconds",
            "Receive time minus event HLC, absolute",
            m.clock_skew.clone(),
        );
        r.register(
            "clock_skew_flagged_events",
            "Events from clocks beyond the bound",
            m.skew_flagged.clone(),
        );
        r.register(
            "convergence_latency_seconds",
            "Event HLC to converged value emitted",
            m.convergence.clone(),
        );
        r.register("replicas", "Replicas owned", m.replicas.clone());
        r.register(
            "replicas_with_gaps",
            "Replicas with a gap",
            m.replicas_with_gaps.clone(),
        );
        r.register(
            "missing_seqs",
            "Seqs missing below the highest seen",
            m.missing_seqs.clone(),
        );
        r.register(
            "oldest_gap_age_seconds",
            "Age of the oldest open gap",
            m.oldest_gap_age.clone(),
        );
        r.register(
            "replicas_by_completeness",
            "Replicas at most le complete",
            m.completeness.clone(),
        );
        r.register(
            "replicas_clock_skew_flagged",
            "Replicas whose clock is off beyond the bound",
            m.replicas_skew_flagged.clone(),
        );
        r.register(
            "consumer_lag",
            "Records behind the end of the input topic on the partitions this process owns, by stage (librdkafka statistics)",
            m.consumer_lag.clone(),
        );
        for stage in ["device", "key"] {
            let _ = m.consumer_lag.get_or_create(&StageLabel {
                stage: stage.into(),
            });
        }
        m
    }

    /// The lag gauge of `stage`.
    pub fn lag(&self, stage: &str) -> Gauge {
        self.consumer_lag
            .get_or_create(&StageLabel {
                stage: stage.into(),
            })
            .clone()
    }

    /// Counts a dead letter.
    pub fn dead(&self, reason: DeadLetterReason) {
        self.dead_lettered.inc(&reason.label());
    }

    /// Records one event's clock skew.
    pub fn observe_skew(&self, skew_ms: i64, bound_ms: u64) {
        self.clock_skew
            .observe(skew_ms.unsigned_abs() as f64 / 1000.0);
        if skew_ms.unsigned_abs() > bound_ms {
            self.skew_flagged.inc();
        }
    }

    /// Recomputes the ledger gauges (before a scrape).
    pub fn refresh(&self, ledger: &Ledger, now_ms: u64) {
        let all = ledger.snapshot();
        self.replicas.set(all.len() as i64);
        let gaps: Vec<_> = all.iter().filter(|(_, e)| !e.missing.is_empty()).collect();
        self.replicas_with_gaps.set(gaps.len() as i64);
        self.replicas_skew_flagged.set(
            all.iter()
                .filter(|(_, e)| ledger.flagged(e.clock_skew_ms))
                .count() as i64,
        );
        self.missing_seqs.set(
            all.iter()
                .flat_map(|(_, e)| e.missing.iter().map(|m| m.len()))
                .sum::<u64>() as i64,
        );
        let oldest = all
            .iter()
            .filter_map(|(_, e)| e.gap_since_ms)
            .min()
            .map_or(0.0, |g| now_ms.saturating_sub(g) as f64 / 1000.0);
        self.oldest_gap_age.set(oldest);
        for le in COMPLETENESS_BUCKETS {
            let n = all.iter().filter(|(_, e)| e.completeness() <= le).count();
            self.completeness
                .get_or_create(&LeLabel { le: le.to_string() })
                .set(n as f64);
        }
    }
}

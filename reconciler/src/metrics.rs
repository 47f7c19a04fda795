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

edgesync_servicekit::metric_set! {
    /// Every metric of the reconciler.
    #[derive(Debug)]
    pub struct ReconcilerMetrics, prefix "edgesync_reconciler" {
        /// Batches consumed.
        batches: Counter = Counter::default(), "batches", "Batches consumed";
        /// Events received again (absorbed by the causal context).
        duplicates: Counter = Counter::default(), "duplicates", "Events received again, absorbed";
        /// Events released but not produced because the events topic already had them.
        suppressed: Counter = Counter::default(),
            "events_suppressed", "Released events the events topic already had";
        /// Events in the events topic (counted once Kafka confirmed them).
        events: Counter = Counter::default(),
            "events", "Events confirmed by Kafka on the events topic, once each in dot order";
        /// State deltas in the state-deltas topic (counted once Kafka confirmed them).
        deltas: Counter = Counter::default(), "deltas", "State deltas confirmed by Kafka";
        /// Acknowledgements produced.
        acks: Counter = Counter::default(), "acks", "Acknowledgements produced";
        /// Acknowledgements whose delivery failed (the agent sends again and is acknowledged then).
        acks_failed: Counter = Counter::default(),
            "acks_failed", "Acknowledgements whose delivery failed";
        /// Completeness records whose delivery failed (the device's next change, or the next
        /// owner of its partition, publishes it again).
        completeness_failed: Counter = Counter::default(),
            "completeness_failed", "Completeness records whose delivery failed";
        /// Deltas joined into the state store.
        merges: Counter = Counter::default(), "merges", "Deltas joined into the state store";
        /// Converged states emitted.
        states: Counter = Counter::default(), "states", "Converged states emitted";
        /// Records dead-lettered, by reason.
        dead_lettered: ReasonCounters = ReasonCounters::new(DeadLetterReason::ALL.map(DeadLetterReason::label)),
            "dead_lettered", "Records dead-lettered, by reason";
        /// |receive time - event HLC|.
        clock_skew: Histogram = Histogram::new(exponential_buckets(0.01, 4.0, 12)),
            "clock_skew_seconds", "Receive time minus event HLC, absolute";
        /// Events from clocks off by more than the bound.
        skew_flagged: Counter = Counter::default(),
            "clock_skew_flagged_events", "Events from clocks beyond the bound";
        /// Oldest event HLC of a delta → its converged value emitted.
        convergence: Histogram = Histogram::new(exponential_buckets(0.001, 2.0, 20)),
            "convergence_latency_seconds", "Event HLC to converged value emitted";
        /// Replicas owned.
        replicas: Gauge = Gauge::default(), "replicas", "Replicas owned";
        /// Replicas with a gap.
        replicas_with_gaps: Gauge = Gauge::default(), "replicas_with_gaps", "Replicas with a gap";
        /// Seqs missing below the highest seen, over all replicas.
        missing_seqs: Gauge = Gauge::default(),
            "missing_seqs", "Seqs missing below the highest seen";
        /// Age of the oldest open gap.
        oldest_gap_age: Gauge<f64, AtomicU64> = Gauge::default(),
            "oldest_gap_age_seconds", "Age of the oldest open gap";
        /// Replicas whose latest clock skew is beyond the bound.
        replicas_skew_flagged: Gauge = Gauge::default(),
            "replicas_clock_skew_flagged", "Replicas whose clock is off beyond the bound";
        /// Replicas at most `le` complete (cumulative).
        completeness: Family<LeLabel, Gauge<f64, AtomicU64>> = Family::default(),
            "replicas_by_completeness", "Replicas at most le complete";
        /// Records between each stage's position and the end of its input topic, over the
        /// partitions this process owns (from librdkafka's statistics).
        consumer_lag: Family<StageLabel, Gauge> = stage_family(),
            "consumer_lag", "Records behind the end of the input topic on the partitions this process owns, by stage (librdkafka statistics)";
        /// Input records per processing group, by stage: each group costs a wait for Kafka,
        /// a synced store write and an offset commit, so small groups under load mean many
        /// small produce requests.
        group_records: Family<StageLabel, Histogram, fn() -> Histogram> = Family::new_with_constructor(group_histogram),
            "group_records", "Input records per processing group, by stage";
    }
    extra {}
}

/// A gauge per stage, each present from the start at 0.
fn stage_family() -> Family<StageLabel, Gauge> {
    let family = Family::default();
    for stage in ["device", "key"] {
        let _ = family.get_or_create(&StageLabel {
            stage: stage.into(),
        });
    }
    family
}

fn group_histogram() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 4.0, 9))
}

const COMPLETENESS_BUCKETS: [f64; 6] = [0.5, 0.9, 0.99, 0.999, 0.9999, 1.0];

impl ReconcilerMetrics {
    /// The lag gauge of `stage`.
    pub fn lag(&self, stage: &str) -> Gauge {
        self.consumer_lag
            .get_or_create(&StageLabel {
                stage: stage.into(),
            })
            .clone()
    }

    /// Records the size of a processing group of `stage`.
    pub fn group(&self, stage: &str, records: usize) {
        self.group_records
            .get_or_create(&StageLabel {
                stage: stage.into(),
            })
            .observe(records as f64);
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

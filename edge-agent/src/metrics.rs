//! The agent's Prometheus metrics, registered once in a registry the caller passes in.
//!
//! One agent is one device, so no metric carries a device label (the device is the scrape
//! target). Counters that the spool writer keeps itself (drops, refusals) are copied in on
//! every scrape by [`AgentMetrics::refresh`], so the spool stays free of Prometheus. The spool
//! gauges and drop counters add up every lane's spool; `acked_watermark` and `last_seq` are the
//! `default` lane's (each lane is its own replica: `lane_*{lane}` has them per lane).

use std::sync::atomic::AtomicU64;
use std::sync::Mutex;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};

use crate::lanes::{OpenLane, Totals};
use crate::spool::SpoolStats;

/// Where an event came in.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabel {
    /// `api`, `http` or `mqtt`.
    pub source: &'static str,
}

/// Why ingest refused events.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RejectLabel {
    /// `api`, `http` or `mqtt`.
    pub source: &'static str,
    /// `invalid`, `full`, `too_large`, `unavailable`.
    pub reason: &'static str,
}

/// Why events were dropped at the edge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DropLabel {
    /// `quota_newest`, `quota_oldest`, `age_oldest`, `corrupt`.
    pub reason: &'static str,
}

/// A priority lane (`lanes.rs`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LaneLabel {
    /// The lane's name.
    pub lane: String,
}

/// Why the uplink budget held a batch back.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BudgetLabel {
    /// `rate` or `daily`.
    pub reason: &'static str,
}

/// A Sparkplug B message type.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SparkplugKindLabel {
    /// `NBIRTH`, `NDATA`, `DDEATH`, …, or `invalid` for a topic that does not parse.
    pub kind: &'static str,
}

/// What was wrong with a Sparkplug B message.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SparkplugProblemLabel {
    /// See `ingest::sparkplug::Problem::reason`.
    pub reason: &'static str,
}

edgesync_servicekit::metric_set! {
    /// Every metric of the agent.
    #[derive(Debug)]
    pub struct AgentMetrics, prefix "edgesync_agent" {
        /// Event records held in the spool.
        spool_events: Gauge = Gauge::default(), "spool_events", "Event records held in the spool";
        /// Bytes of records held in the spool.
        spool_bytes: Gauge = Gauge::default(), "spool_bytes", "Bytes of records held in the spool";
        /// Age of the oldest unacknowledged event, in seconds.
        oldest_unacked_age: Gauge<f64, AtomicU64> = Gauge::default(),
            "oldest_unacked_age_seconds", "Age of the oldest event the server has not acknowledged";
        /// The server's acknowledged watermark.
        acked_watermark: Gauge = Gauge::default(),
            "acked_watermark", "Highest seq the server acknowledged";
        /// Highest seq assigned.
        last_seq: Gauge = Gauge::default(), "last_seq", "Highest seq assigned";
        /// Ingest request arrival to durable answer (buckets 100 µs .. ~3.3 s).
        append_latency: Histogram = Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            "append_latency_seconds", "Ingest arrival to durable answer";
        /// One spool group write (fsync included).
        spool_write: Histogram = Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            "spool_write_seconds", "One group write to the spool, fsync included";
        /// Events stored, by source.
        ingested: Family<SourceLabel, Counter> = Family::default(),
            "ingested_events", "Events stored, by source";
        /// Events refused, by source and reason.
        rejected: Family<RejectLabel, Counter> = Family::default(),
            "rejected_events", "Events refused, by source and reason";
        /// Events dropped at the edge, by reason.
        dropped: Family<DropLabel, Counter> = Family::default(),
            "dropped_events", "Events dropped at the edge, by reason";
        /// Batches published.
        batches: Counter = Counter::default(), "published_batches", "Batches published";
        /// Bytes published (compressed, on the wire).
        wire_bytes: Counter = Counter::default(),
            "published_wire_bytes", "Bytes published on the wire";
        /// Spool record bytes of the published events (before batching and compression).
        raw_bytes: Counter = Counter::default(),
            "published_raw_bytes", "Spool bytes of the published events, before batching and compression";
        /// Acknowledgements received.
        acks: Counter = Counter::default(), "acks", "Acknowledgements received";
        /// Connections established after the first.
        reconnects: Counter = Counter::default(),
            "reconnects", "Connections established after the first";
        /// Connection losses.
        disconnects: Counter = Counter::default(), "disconnects", "Connection losses";
        /// 1 while connected to the broker.
        link_up: Gauge = Gauge::default(), "link_up", "1 while connected to the broker";
        /// Bytes published today (UTC), as the budget counts them.
        budget_spent_today: Gauge = Gauge::default(),
            "uplink_budget_spent_today_bytes", "Bytes published today (UTC day of the agent's clock)";
        /// 1 while today's byte budget is spent.
        budget_exhausted: Gauge = Gauge::default(),
            "uplink_budget_exhausted", "1 while today's byte budget is spent";
        /// 1 while a built batch waits for the budget.
        budget_waiting: Gauge = Gauge::default(),
            "uplink_budget_waiting", "1 while a built batch waits for the rate cap or the daily budget";
        /// Times a batch started waiting for the budget, by reason.
        budget_holds: Family<BudgetLabel, Counter> = Family::default(),
            "uplink_budget_holds", "Times a batch started waiting for the budget, by reason";
        /// Per lane: event records held in its spool.
        lane_spool_events: Family<LaneLabel, Gauge> = Family::default(),
            "lane_spool_events", "Event records held in the lane's spool";
        /// Per lane: seqs the server has not acknowledged.
        lane_unacked: Family<LaneLabel, Gauge> = Family::default(),
            "lane_unacked_seqs", "Seqs of the lane the server has not acknowledged";
        /// Per lane: age of its oldest unacknowledged event.
        lane_oldest_unacked_age: Family<LaneLabel, Gauge<f64, AtomicU64>> = Family::default(),
            "lane_oldest_unacked_age_seconds", "Age of the lane's oldest event the server has not acknowledged";
        /// Per lane: the server's acknowledged watermark.
        lane_acked_watermark: Family<LaneLabel, Gauge> = Family::default(),
            "lane_acked_watermark", "Highest seq of the lane the server acknowledged";
        /// Per lane: batches published.
        lane_batches: Family<LaneLabel, Counter> = Family::default(),
            "lane_published_batches", "Batches of the lane published";
        /// Per lane: bytes published on the wire.
        lane_wire_bytes: Family<LaneLabel, Counter> = Family::default(),
            "lane_published_wire_bytes", "Bytes of the lane's batches published on the wire";
        /// Sparkplug B messages received, by type.
        sparkplug_messages: Family<SparkplugKindLabel, Counter> = Family::default(),
            "sparkplug_messages", "Sparkplug B messages received, by type";
        /// Sparkplug B problems, by reason.
        sparkplug_problems: Family<SparkplugProblemLabel, Counter> = Family::default(),
            "sparkplug_problems", "Sparkplug B problems (seq gaps, data before birth, unknown aliases, malformed payloads, ...)";
        /// Rebirth requests sent.
        sparkplug_rebirths: Counter = Counter::default(),
            "sparkplug_rebirth_requests", "Node Control/Rebirth commands sent";
        /// Sparkplug B edge nodes online.
        sparkplug_nodes_online: Gauge = Gauge::default(),
            "sparkplug_nodes_online", "Sparkplug B edge nodes whose last word was a birth";
        /// Sparkplug B devices online.
        sparkplug_devices_online: Gauge = Gauge::default(),
            "sparkplug_devices_online", "Sparkplug B devices born and not dead, on online nodes";
    }
    extra {
        /// The spool's counters at the last refresh: drops are counted as the increase since.
        last_stats: Mutex<SpoolStats> = Mutex::new(SpoolStats::default());
    }
}

impl AgentMetrics {
    /// Copies the lanes' spool states and counters in (called before every scrape).
    pub fn refresh(&self, lanes: &[OpenLane], now_ms: u64) {
        let secs = |ms: Option<u64>| ms.map_or(0.0, |a| a as f64 / 1000.0);
        for l in lanes {
            let meta = l.spool.meta();
            let label = LaneLabel {
                lane: l.name.to_string(),
            };
            (self.lane_spool_events.get_or_create(&label)).set(meta.events as i64);
            (self.lane_unacked.get_or_create(&label)).set(meta.unacked() as i64);
            (self.lane_oldest_unacked_age.get_or_create(&label))
                .set(secs(meta.oldest_age_ms(now_ms)));
            (self.lane_acked_watermark.get_or_create(&label)).set(meta.acked as i64);
            if l.is_default() {
                self.acked_watermark.set(meta.acked as i64);
                self.last_seq.set(meta.next_seq as i64 - 1);
            }
        }
        let t = Totals::of(lanes, now_ms);
        self.spool_events.set(t.events as i64);
        self.spool_bytes.set(t.bytes as i64);
        self.oldest_unacked_age.set(secs(t.oldest_age_ms));
        let now = t.stats;
        let mut last = self.last_stats.lock().unwrap_or_else(|e| e.into_inner());
        let add = |reason, new: u64, old: u64| {
            self.dropped
                .get_or_create(&DropLabel { reason })
                .inc_by(new.saturating_sub(old));
        };
        add("quota_newest", now.dropped_newest, last.dropped_newest);
        add(
            "quota_oldest",
            now.dropped_oldest_quota,
            last.dropped_oldest_quota,
        );
        add(
            "age_oldest",
            now.dropped_oldest_age,
            last.dropped_oldest_age,
        );
        *last = now;
    }

    /// Counts one batch of `lane` published, of `bytes` on the wire.
    pub fn lane_published(&self, lane: &str, bytes: u64) {
        let label = LaneLabel {
            lane: lane.to_owned(),
        };
        self.lane_batches.get_or_create(&label).inc();
        self.lane_wire_bytes.get_or_create(&label).inc_by(bytes);
    }

    /// Counts `n` stored events from `source`.
    pub fn stored(&self, source: &'static str, n: u64) {
        self.ingested
            .get_or_create(&SourceLabel { source })
            .inc_by(n);
    }

    /// Counts `n` refused events from `source`.
    pub fn refused(&self, source: &'static str, reason: &'static str, n: u64) {
        self.rejected
            .get_or_create(&RejectLabel { source, reason })
            .inc_by(n);
    }

    /// Counts one Sparkplug B message of `kind` (`None`: the topic did not parse) with its
    /// problems and rebirth request, and sets the online gauges from `census`.
    pub fn sparkplug_seen(
        &self,
        kind: Option<&'static str>,
        problems: &[crate::ingest::sparkplug::Problem],
        rebirth: bool,
        census: &crate::ingest::sparkplug::Census,
    ) {
        let kind = kind.unwrap_or("invalid");
        self.sparkplug_messages
            .get_or_create(&SparkplugKindLabel { kind })
            .inc();
        for p in problems {
            self.sparkplug_problems
                .get_or_create(&SparkplugProblemLabel { reason: p.reason() })
                .inc();
        }
        if rebirth {
            self.sparkplug_rebirths.inc();
        }
        self.sparkplug_nodes_online.set(census.nodes_online as i64);
        self.sparkplug_devices_online
            .set(census.devices_online as i64);
    }

    /// The budget's state after a decision.
    pub fn budget_seen(&self, view: &crate::budget::BudgetView) {
        self.budget_spent_today.set(view.spent_today as i64);
        self.budget_exhausted.set(i64::from(view.exhausted));
    }

    /// A batch starts waiting for the budget.
    pub fn budget_held(&self, wait: crate::budget::Wait) {
        let reason = match wait {
            crate::budget::Wait::Rate(_) => "rate",
            crate::budget::Wait::Daily(_) => "daily",
        };
        self.budget_holds
            .get_or_create(&BudgetLabel { reason })
            .inc();
        self.budget_waiting.set(1);
    }

    /// Counts records the uplink sent as dropped because they no longer decode.
    pub fn corrupt(&self, n: u64) {
        self.dropped
            .get_or_create(&DropLabel { reason: "corrupt" })
            .inc_by(n);
    }
}

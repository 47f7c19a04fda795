//! The agent's Prometheus metrics, registered once in a registry the caller passes in.
//!
//! One agent is one device, so no metric carries a device label (the device is the scrape
//! target). Counters that the spool writer keeps itself (drops, refusals) are copied in on
//! every scrape by [`AgentMetrics::refresh`], so the spool stays free of Prometheus.

use std::sync::atomic::AtomicU64;
use std::sync::Mutex;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::spool::{Spool, SpoolStats};

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

/// Every metric of the agent.
#[derive(Debug)]
pub struct AgentMetrics {
    /// Event records held in the spool.
    pub spool_events: Gauge,
    /// Bytes of records held in the spool.
    pub spool_bytes: Gauge,
    /// Age of the oldest unacknowledged event, in seconds.
    pub oldest_unacked_age: Gauge<f64, AtomicU64>,
    /// The server's acknowledged watermark.
    pub acked_watermark: Gauge,
    /// Highest seq assigned.
    pub last_seq: Gauge,
    /// Ingest request arrival to durable answer.
    pub append_latency: Histogram,
    /// One spool group write (fsync included).
    pub spool_write: Histogram,
    /// Events stored, by source.
    pub ingested: Family<SourceLabel, Counter>,
    /// Events refused, by source and reason.
    pub rejected: Family<RejectLabel, Counter>,
    /// Events dropped at the edge, by reason.
    pub dropped: Family<DropLabel, Counter>,
    /// Batches published.
    pub batches: Counter,
    /// Bytes published (compressed, on the wire).
    pub wire_bytes: Counter,
    /// Spool record bytes of the published events (before batching and compression).
    pub raw_bytes: Counter,
    /// Acknowledgements received.
    pub acks: Counter,
    /// Connections established after the first.
    pub reconnects: Counter,
    /// Connection losses.
    pub disconnects: Counter,
    /// 1 while connected to the broker.
    pub link_up: Gauge,
    last_stats: Mutex<SpoolStats>,
}

impl AgentMetrics {
    /// Creates the metrics and registers them under `edgesync_agent_`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            spool_events: Gauge::default(),
            spool_bytes: Gauge::default(),
            oldest_unacked_age: Gauge::default(),
            acked_watermark: Gauge::default(),
            last_seq: Gauge::default(),
            // 100 us .. ~3.3 s
            append_latency: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            spool_write: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            ingested: Family::default(),
            rejected: Family::default(),
            dropped: Family::default(),
            batches: Counter::default(),
            wire_bytes: Counter::default(),
            raw_bytes: Counter::default(),
            acks: Counter::default(),
            reconnects: Counter::default(),
            disconnects: Counter::default(),
            link_up: Gauge::default(),
            last_stats: Mutex::new(SpoolStats::default()),
        };
        let r = registry.sub_registry_with_prefix("edgesync_agent");
        r.register(
            "spool_events",
            "Event records held in the spool",
            m.spool_events.clone(),
        );
        r.register(
            "spool_bytes",
            "Bytes of records held in the spool",
            m.spool_bytes.clone(),
        );
        r.register(
            "oldest_unacked_age_seconds",
            "Age of the oldest event the server has not acknowledged",
            m.oldest_unacked_age.clone(),
        );
        r.register(
            "acked_watermark",
            "Highest seq the server acknowledged",
            m.acked_watermark.clone(),
        );
        r.register("last_seq", "Highest seq assigned", m.last_seq.clone());
        r.register(
            "append_latency_seconds",
            "Ingest arrival to durable answer",
            m.append_latency.clone(),
        );
        r.register(
            "spool_write_seconds",
            "One group write to the spool, fsync included",
            m.spool_write.clone(),
        );
        r.register(
            "ingested_events",
            "Events stored, by source",
            m.ingested.clone(),
        );
        r.register(
            "rejected_events",
            "Events refused, by source and reason",
            m.rejected.clone(),
        );
        r.register(
            "dropped_events",
            "Events dropped at the edge, by reason",
            m.dropped.clone(),
        );
        r.register("published_batches", "Batches published", m.batches.clone());
        r.register(
            "published_wire_bytes",
            "Bytes published on the wire",
            m.wire_bytes.clone(),
        );
        r.register(
            "published_raw_bytes",
            "Spool bytes of the published events, before batching and compression",
            m.raw_bytes.clone(),
        );
        r.register("acks", "Acknowledgements received", m.acks.clone());
        r.register(
            "reconnects",
            "Connections established after the first",
            m.reconnects.clone(),
        );
        r.register("disconnects", "Connection losses", m.disconnects.clone());
        r.register(
            "link_up",
            "1 while connected to the broker",
            m.link_up.clone(),
        );
        m
    }

    /// Copies the spool's state and counters in (called before every scrape).
    pub fn refresh(&self, spool: &Spool, now_ms: u64) {
        let meta = spool.meta();
        self.spool_events.set(meta.events as i64);
        self.spool_bytes.set(meta.bytes as i64);
        self.acked_watermark.set(meta.acked as i64);
        self.last_seq.set(meta.next_seq as i64 - 1);
        self.oldest_unacked_age.set(
            meta.oldest_ms
                .map_or(0.0, |o| now_ms.saturating_sub(o) as f64 / 1000.0),
        );
        let now = spool.stats();
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

    /// Counts records the uplink sent as dropped because they no longer decode.
    pub fn corrupt(&self, n: u64) {
        self.dropped
            .get_or_create(&DropLabel { reason: "corrupt" })
            .inc_by(n);
    }
}

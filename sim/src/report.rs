//! What a run measured, and how it is printed (Markdown and JSON).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use edgesync_core::{Crdt, StateDigest};
use serde::Serialize;

use crate::config::SimConfig;
use crate::fleet::ReadValue;

/// Counters an approach accumulates during a run.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Events generated inside the window.
    pub generated: u64,
    /// Distinct events applied at the server by the end of the window.
    pub delivered_in_window: u64,
    /// Distinct events applied at the server by the end of the run.
    pub delivered: u64,
    /// Events applied again (the server could not tell they were copies).
    pub duplicates_applied: u64,
    /// Event time to applied at the server, per distinct event.
    pub latencies_ms: Vec<u64>,
    /// Sync attempts (a batch or message put on the link).
    pub attempts: u64,
    /// Attempts abandoned before their acknowledgement (timeout, link or device lost).
    pub failures: u64,
    /// Payload bytes device to server.
    pub bytes_up: u64,
    /// Payload bytes server to device.
    pub bytes_down: u64,
    /// Avro-encoded size of every generated event, once.
    pub raw_bytes: u64,
    /// Events the approach dropped for good, by reason.
    pub dropped: BTreeMap<&'static str, u64>,
}

impl Metrics {
    /// Counts a drop.
    pub fn drop_events(&mut self, reason: &'static str, n: u64) {
        if n > 0 {
            *self.dropped.entry(reason).or_insert(0) += n;
        }
    }
}

/// One approach's line of the comparison.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ApproachReport {
    /// "edgesync" or "baseline".
    pub approach: &'static str,
    /// Events generated in the window.
    pub events_generated: u64,
    /// Share of them applied at the server by the end of the window.
    pub completeness_in_window: f64,
    /// Share applied by the end of the run (after the network healed).
    pub completeness_final: f64,
    /// Median event time to applied at the server, ms.
    pub latency_p50_ms: u64,
    /// 99th percentile, ms.
    pub latency_p99_ms: u64,
    /// Sync attempts.
    pub sync_attempts: u64,
    /// Attempts abandoned before their acknowledgement.
    pub sync_failures: u64,
    /// `sync_failures / sync_attempts`.
    pub sync_failure_rate: f64,
    /// Payload bytes in both directions.
    pub bytes_on_wire: u64,
    /// Of which device to server.
    pub bytes_up: u64,
    /// Of which server to device (acks, responses).
    pub bytes_down: u64,
    /// Avro size of the generated events, once each.
    pub bytes_of_new_data: u64,
    /// `bytes_on_wire / bytes_of_new_data`.
    pub bandwidth_ratio: f64,
    /// Events applied more than once.
    pub duplicates_applied: u64,
    /// Events dropped for good, by reason.
    pub dropped: BTreeMap<&'static str, u64>,
    /// State keys in the reference.
    pub state_keys: usize,
    /// Keys whose value at the server equals the reference value.
    pub state_keys_equal: usize,
    /// Digest of the server's converged state (edgesync only).
    pub state_digest: Option<String>,
    /// Whether the server's state equals the reference (digests equal for edgesync).
    pub converged: bool,
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

impl ApproachReport {
    /// Summarises `m`; `values` are the server's per-key values to compare with `reference`.
    pub fn new(
        approach: &'static str,
        mut m: Metrics,
        values: &BTreeMap<String, ReadValue>,
        reference: &BTreeMap<String, Crdt>,
        digest: Option<StateDigest>,
    ) -> Self {
        m.latencies_ms.sort_unstable();
        let state_keys_equal = reference
            .iter()
            .filter(|(k, c)| values.get(*k) == Some(&ReadValue::of(c)))
            .count();
        let converged = match digest {
            Some(d) => d == StateDigest::of_map(reference),
            None => state_keys_equal == reference.len() && values.len() == reference.len(),
        };
        let wire = m.bytes_up + m.bytes_down;
        Self {
            approach,
            events_generated: m.generated,
            completeness_in_window: ratio(m.delivered_in_window, m.generated),
            completeness_final: ratio(m.delivered, m.generated),
            latency_p50_ms: percentile(&m.latencies_ms, 0.50),
            latency_p99_ms: percentile(&m.latencies_ms, 0.99),
            sync_attempts: m.attempts,
            sync_failures: m.failures,
            sync_failure_rate: ratio(m.failures, m.attempts),
            bytes_on_wire: wire,
            bytes_up: m.bytes_up,
            bytes_down: m.bytes_down,
            bytes_of_new_data: m.raw_bytes,
            bandwidth_ratio: ratio(wire, m.raw_bytes),
            duplicates_applied: m.duplicates_applied,
            dropped: m.dropped,
            state_keys: reference.len(),
            state_keys_equal,
            state_digest: digest.map(|d| d.to_hex()),
            converged,
        }
    }
}

/// The comparison of both approaches on one trace.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Report {
    /// Every parameter of the run.
    pub config: SimConfig,
    /// Digest of the reference state (all generated events' deltas joined).
    pub reference_digest: String,
    /// Results.
    pub results: Vec<ApproachReport>,
}

fn pct(x: f64) -> String {
    format!("{:.2} %", x * 100.0)
}

fn secs(ms: u64) -> String {
    format!("{:.2} s", ms as f64 / 1000.0)
}

impl Report {
    /// Pretty JSON (deterministic: fixed field order, no clocks).
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    }

    /// The article's table, plus the details behind it.
    pub fn to_markdown(&self) -> String {
        let c = &self.config;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "## edgesync vs retry-based sync — seed {}, {} devices, {} h\n",
            c.seed, c.devices, c.hours
        );
        let _ = writeln!(
            s,
            "| approach | completeness (24 h window) | completeness (after heal) | median latency | p99 latency | sync failure rate | bandwidth (wire / new data) | state equals reference |"
        );
        let _ = writeln!(s, "|---|---|---|---|---|---|---|---|");
        for r in &self.results {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {:.2} | {} ({}/{} keys) |",
                r.approach,
                pct(r.completeness_in_window),
                pct(r.completeness_final),
                secs(r.latency_p50_ms),
                secs(r.latency_p99_ms),
                pct(r.sync_failure_rate),
                r.bandwidth_ratio,
                if r.converged { "yes" } else { "no" },
                r.state_keys_equal,
                r.state_keys
            );
        }
        self.details(&mut s);
        let _ = writeln!(s, "\nReference state digest: `{}`", self.reference_digest);
        links(&mut s, c);
        s
    }

    /// The table of details behind the article's table, one column per approach.
    fn details(&self, s: &mut String) {
        let _ = writeln!(
            s,
            "\n| detail | {} |",
            self.results
                .iter()
                .map(|r| r.approach)
                .collect::<Vec<_>>()
                .join(" | ")
        );
        let _ = writeln!(s, "|---|{}", "---|".repeat(self.results.len()));
        let row = |s: &mut String, name: &str, f: &dyn Fn(&ApproachReport) -> String| {
            let cells: Vec<String> = self.results.iter().map(f).collect();
            let _ = writeln!(s, "| {name} | {} |", cells.join(" | "));
        };
        row(s, "events generated", &|r| r.events_generated.to_string());
        row(s, "sync attempts / failed", &|r| {
            format!("{} / {}", r.sync_attempts, r.sync_failures)
        });
        row(s, "bytes up + down / of new data", &|r| {
            format!(
                "{} + {} / {}",
                r.bytes_up, r.bytes_down, r.bytes_of_new_data
            )
        });
        row(s, "duplicates applied", &|r| {
            r.duplicates_applied.to_string()
        });
        row(s, "events dropped", &|r| {
            if r.dropped.is_empty() {
                "0".to_owned()
            } else {
                r.dropped
                    .iter()
                    .map(|(k, v)| format!("{v} ({k})"))
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        });
    }
}

/// The paragraph naming the links, faults and baseline the run simulated.
fn links(s: &mut String, c: &SimConfig) {
    let b = &c.baseline;
    let l = &c.link;
    let _ = writeln!(
        s,
        "\nLinks: up {:.0} min / down {:.0} min on average, latency {:.0} ms + exp({:.0} ms), loss {} %, duplicates {} %, reordering {} %, {:.0} kB/s. \
         Faults: a device crashes every {} h on average (down {:.0} s), the server restarts every {} h (down {:.0} s). \
         Baseline: queue of {} messages, backoff {:.0} ms doubling to {:.0} s (±{:.0} %), {} attempts per message, {} s request timeout, last write wins by device clock.",
        l.mean_up_s / 60.0, l.mean_down_s / 60.0, l.latency_ms, l.jitter_mean_ms, l.loss * 100.0, l.duplicate * 100.0, l.reorder * 100.0,
        l.bandwidth_bytes_per_s / 1000.0, c.faults.device_crash_mean_h, c.faults.device_down_mean_s, c.faults.server_restart_mean_h,
        c.faults.server_down_s, b.queue_capacity, b.initial_backoff_ms, b.max_backoff_ms / 1000.0, b.backoff_jitter * 100.0,
        b.max_attempts, b.request_timeout_ms / 1000
    );
}

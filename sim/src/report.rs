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
    pub latencies_ms: Latencies,
    /// Sync attempts (a batch or message put on the link).
    pub attempts: u64,
    /// Attempts abandoned before their acknowledgement (timeout, link or device lost).
    pub failures: u64,
    /// Of those, attempts the server had nonetheless (their acknowledgement was lost or late,
    /// or the device crashed before it came): the rest never reached the server.
    pub failures_reached: u64,
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

    /// Adds the counters of another part of the fleet (the sum does not depend on the order).
    pub fn merge(&mut self, o: Metrics) {
        self.generated += o.generated;
        self.delivered_in_window += o.delivered_in_window;
        self.delivered += o.delivered;
        self.duplicates_applied += o.duplicates_applied;
        self.latencies_ms.merge(o.latencies_ms);
        self.attempts += o.attempts;
        self.failures += o.failures;
        self.failures_reached += o.failures_reached;
        self.bytes_up += o.bytes_up;
        self.bytes_down += o.bytes_down;
        self.raw_bytes += o.raw_bytes;
        for (reason, n) in o.dropped {
            self.drop_events(reason, n);
        }
    }
}

/// Latencies below this many ms are counted per ms; longer ones are kept one by one.
const DENSE_MS: usize = 1 << 16;

/// Every latency of a run, kept exactly (percentiles are the same as over the sorted list of
/// all of them) in bounded memory for the common case: a count per millisecond below 65.5 s,
/// and 4 bytes per latency above (events that waited out an outage).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Latencies {
    dense: Vec<u64>,
    long: Vec<u32>,
    n: u64,
}

impl Latencies {
    /// Records one latency.
    pub fn push(&mut self, ms: u64) {
        self.n += 1;
        match usize::try_from(ms) {
            Ok(i) if i < DENSE_MS => {
                if self.dense.is_empty() {
                    self.dense = vec![0; DENSE_MS];
                }
                self.dense[i] += 1;
            }
            _ => self.long.push(u32::try_from(ms).unwrap_or(u32::MAX)),
        }
    }

    /// How many were recorded.
    pub fn len(&self) -> u64 {
        self.n
    }

    /// Whether none were recorded.
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// Adds another part's latencies.
    pub fn merge(&mut self, mut o: Latencies) {
        if self.dense.is_empty() {
            self.dense = std::mem::take(&mut o.dense);
        } else {
            for (a, b) in self.dense.iter_mut().zip(&o.dense) {
                *a += b;
            }
        }
        self.long.append(&mut o.long);
        self.n += o.n;
    }

    /// The `p`-quantile (nearest rank, as over the sorted list); 0 if empty.
    pub fn percentile(&mut self, p: f64) -> u64 {
        if self.n == 0 {
            return 0;
        }
        let rank = ((p * self.n as f64).ceil() as u64).clamp(1, self.n);
        let mut seen = 0;
        for (ms, &count) in self.dense.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return ms as u64;
            }
        }
        let k = (rank - seen - 1) as usize;
        let (_, nth, _) = self.long.select_nth_unstable(k);
        u64::from(*nth)
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
    /// Failed attempts the server had nonetheless (acknowledgement lost or late, or the
    /// sender crashed first): what a sender could have been told instead of giving up. The
    /// other failed attempts never reached the server (lost, sent into an outage, server down).
    pub sync_failures_reached_server: u64,
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
            latency_p50_ms: m.latencies_ms.percentile(0.50),
            latency_p99_ms: m.latencies_ms.percentile(0.99),
            sync_attempts: m.attempts,
            sync_failures: m.failures,
            sync_failure_rate: ratio(m.failures, m.attempts),
            sync_failures_reached_server: m.failures_reached,
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
            "## edgesync vs retry-based sync — profile {}, seed {}, {} devices, {} h\n",
            c.profile, c.seed, c.devices, c.hours
        );
        if let Some(w) = &c.protocol_only {
            let _ = writeln!(
                s,
                "Protocol-only run: edgesync alone, batches not encoded; their wire size is modelled \
                 ({:.1} B for one event, {:.1} B per further event; events {}/{}/{} B of Avro).\n",
                w.first_event_bytes,
                w.further_event_bytes,
                w.telemetry_event_bytes,
                w.status_event_bytes,
                w.alarm_event_bytes
            );
        }
        let _ = writeln!(
            s,
            "| approach | completeness ({} h window) | completeness (after heal) | median latency | p99 latency | sync failure rate | bandwidth (wire / new data) | state equals reference |",
            c.hours
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
        row(s, "failed: never reached the server / reached it", &|r| {
            format!(
                "{} / {}",
                r.sync_failures - r.sync_failures_reached_server,
                r.sync_failures_reached_server
            )
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

/// A mean duration, in the unit that reads best.
fn duration(seconds: f64) -> String {
    if seconds >= 3600.0 {
        format!("{:.0} h", seconds / 3600.0)
    } else if seconds >= 60.0 {
        format!("{:.0} min", seconds / 60.0)
    } else {
        format!("{seconds:.0} s")
    }
}

/// The paragraph naming the links, faults and baseline the run simulated.
fn links(s: &mut String, c: &SimConfig) {
    let b = &c.baseline;
    let l = &c.link;
    let _ = writeln!(
        s,
        "\nLinks ({} profile): up {} / down {} on average (exponential), latency {:.0} ms + exp({:.0} ms), loss {} %, duplicates {} %, reordering {} % by up to {:.1} s, {:.0} kB/s each way; a dead link is noticed after {:.0} s (keep-alive), a reconnect takes {:.1} s. \
         Faults: a device crashes every {} h on average (down {:.0} s), the server restarts every {} h (down {:.0} s). \
         Baseline: queue of {} messages, backoff {:.0} ms doubling to {:.0} s (±{:.0} %), {} attempts per message, {} s request timeout, last write wins by device clock.",
        c.profile, duration(l.mean_up_s), duration(l.mean_down_s), l.latency_ms, l.jitter_mean_ms, l.loss * 100.0, l.duplicate * 100.0, l.reorder * 100.0,
        l.reorder_max_ms / 1000.0, l.bandwidth_bytes_per_s / 1000.0, l.detect_down_ms as f64 / 1000.0, l.connect_ms as f64 / 1000.0, c.faults.device_crash_mean_h, c.faults.device_down_mean_s, c.faults.server_restart_mean_h,
        c.faults.server_down_s, b.queue_capacity, b.initial_backoff_ms, b.max_backoff_ms / 1000.0, b.backoff_jitter * 100.0,
        b.max_attempts, b.request_timeout_ms / 1000
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    /// The nearest-rank percentile over the sorted list, as the report always defined it.
    fn sorted_percentile(sorted: &[u64], p: f64) -> u64 {
        if sorted.is_empty() {
            return 0;
        }
        let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
        sorted[rank - 1]
    }

    #[test]
    fn latencies_give_the_percentiles_of_the_sorted_list_however_merged() {
        let mut r = Rng::new(3);
        for n in [0usize, 1, 2, 99, 100, 101, 5_000] {
            let all: Vec<u64> = (0..n)
                .map(|_| match r.below(3) {
                    0 => r.below(200),
                    1 => r.below(100_000),
                    _ => r.below(90_000_000),
                })
                .collect();
            let mut sorted = all.clone();
            sorted.sort_unstable();
            let (mut a, mut b) = (Latencies::default(), Latencies::default());
            for (i, &x) in all.iter().enumerate() {
                if i % 3 == 0 { &mut a } else { &mut b }.push(x);
            }
            a.merge(b);
            assert_eq!(a.len(), n as u64);
            for p in [0.0, 0.01, 0.5, 0.9, 0.99, 1.0] {
                assert_eq!(
                    a.percentile(p),
                    sorted_percentile(&sorted, p),
                    "n {n} p {p}"
                );
            }
        }
    }
}

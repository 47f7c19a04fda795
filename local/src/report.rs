//! The report of a run: what was delivered, how fast against the raw hops it is built from,
//! where the time goes, what each process cost, and what Prometheus saw; `ok` is the verdict
//! the exit code gives.
//!
//! The latency targets (issue #17) compare each end-to-end latency with the sum of the raw
//! hops an event crosses, each timed on the same brokers and disk in the same run
//! (`hops.rs`): **append → event read from `edgesync.events`** crosses one fsync, one MQTT
//! QoS 1 hop and two Kafka hops (bridge → reconciler, reconciler → reader); **append →
//! converged record read from `edgesync.state`** one fsync, one MQTT hop and three Kafka hops
//! (the third: device stage → key stage). p50 is compared with the sum of the hops' p50s
//! (target ≤ 2×), p99 with the sum of their p99s (target ≤ 4×).

use edgesync_testkit::{PrometheusView, Service};

use crate::fleet::Fleet;
use crate::hops::RawHops;
use crate::observe::Latencies;
use crate::usage::Window;

/// Everything the report prints.
pub struct Report<'a> {
    /// The broker and its version.
    pub broker: String,
    /// Service settings the run changed (`--reconciler-set`, `--agent-set`).
    pub sets: Vec<String>,
    /// Events the agents answered.
    pub total: u64,
    /// Of which found in the events topic.
    pub delivered: u64,
    /// Found more than once.
    pub duplicates: u64,
    /// Requests that got no durable answer.
    pub failed_requests: u64,
    /// Event records whose dot the two readings disagreed on, or that did not decode.
    pub misread: u64,
    /// Whether links were cut (latencies then include outages).
    pub cuts: usize,
    /// The timed events' latencies.
    pub latency: &'a Latencies,
    /// The fleet, the bridge and the reconciler, for their own histograms.
    pub fleet: &'a Fleet,
    /// See `fleet`.
    pub bridge: &'a Service,
    /// See `fleet`.
    pub reconciler: &'a Service,
    /// The raw hops timed on the same brokers.
    pub raw: &'a RawHops,
    /// CPU of every process while the feed ran.
    pub cpu: &'a Window,
    /// Events answered per second while the feed ran.
    pub fed_per_s: f64,
    /// Batch bytes on the wire and the raw spool bytes they carried.
    pub wire_and_raw: (f64, f64),
    /// Keys with a converged record.
    pub keys: usize,
    /// Whether the counters equal the reference.
    pub counters_ok: bool,
    /// Whether every spool drained behind its acknowledged watermark.
    pub drained: bool,
    /// Events dropped at the edge, and dead letters of both services.
    pub dropped_and_dead: (f64, f64),
    /// What Prometheus saw.
    pub ops: PrometheusView,
}

impl Report<'_> {
    /// Whether the run passed: nothing lost or doubled, converged, drained, nothing dropped,
    /// every target up and every rule healthy.
    pub fn ok(&self) -> bool {
        let ops = &self.ops;
        let ops_ok =
            ops.targets_up == ops.targets && ops.unhealthy_rules.is_empty() && ops.rules > 0;
        self.total == self.delivered
            && self.duplicates == 0
            && self.misread == 0
            && self.counters_ok
            && self.drained
            && self.dropped_and_dead.0 == 0.0
            && ops_ok
    }

    /// Prints the tables.
    pub fn print(&self) {
        println!("| | |\n|---|---|");
        println!("| Kafka broker | {} |", self.broker);
        if !self.sets.is_empty() {
            println!("| settings | `{}` |", self.sets.join("`, `"));
        }
        self.print_delivery();
        self.print_costs();
        println!();
        self.print_latency();
        println!();
        self.print_stages();
        println!("\nCPU while feeding:\n");
        self.cpu.print(self.fed_per_s);
    }

    fn print_delivery(&self) {
        let (total, delivered) = (self.total, self.delivered);
        println!("| events answered by agents (durable at the edge) | {total} |");
        println!("| delivered to edgesync.events | {delivered} |");
        println!(
            "| missing / duplicated | {} / {} |",
            total - delivered.min(total),
            self.duplicates
        );
        let completeness = if total == 0 {
            100.0
        } else {
            delivered as f64 * 100.0 / total as f64
        };
        println!("| completeness | {completeness:.4} % |");
        if self.failed_requests > 0 || self.misread > 0 {
            println!(
                "| requests without an answer / event records misread | {} / {} |",
                self.failed_requests, self.misread
            );
        }
    }

    /// End-to-end latency against the raw sums, with the ratios the targets use.
    fn print_latency(&self) {
        let outages = if self.cuts > 0 {
            " (link outages included)"
        } else {
            ""
        };
        let l = self.latency;
        println!("| latency, ms{outages} | p50 | p99 | max |");
        println!("|---|---|---|---|");
        for (what, samples, kafka_hops) in [
            ("append → event read from `edgesync.events`", &l.to_event, 2),
            (
                "append → converged record read from `edgesync.state`",
                &l.to_converged,
                3,
            ),
        ] {
            let (p50, p99) = (ms(percentile(samples, 0.5)), ms(percentile(samples, 0.99)));
            let (s50, s99) = self.raw.sum(kafka_hops);
            println!(
                "| {what} ({} events) | {p50:.1} | {p99:.1} | {:.1} |",
                samples.len(),
                ms(samples.last().copied().unwrap_or(0))
            );
            println!(
                "| raw sum: fsync + MQTT + {kafka_hops} × Kafka hop | {s50:.1} | {s99:.1} | |"
            );
            println!(
                "| ratio (targets: p50 ≤ 2×, p99 ≤ 4×) | **{}** | **{}** | |",
                ratio(p50, s50, 2.0),
                ratio(p99, s99, 4.0)
            );
        }
        for (name, us) in self.raw.rows() {
            println!(
                "| raw hop: {name} | {:.2} | {:.2} | {:.2} |",
                ms(percentile(us, 0.5)),
                ms(percentile(us, 0.99)),
                ms(us.last().copied().unwrap_or(0))
            );
        }
    }

    /// Where the time goes: each stage from the topics and the MQTT tap, then the services'
    /// own histograms.
    fn print_stages(&self) {
        println!("| where the time goes, ms | p50 | p99 | events |");
        println!("|---|---|---|---|");
        for (name, v) in &self.latency.stages {
            if v.is_empty() {
                continue;
            }
            println!(
                "| {name} | {:.1} | {:.1} | {} |",
                ms(percentile(v, 0.5)),
                ms(percentile(v, 0.99)),
                v.len()
            );
        }
        let agents: Vec<String> = self
            .fleet
            .agents
            .iter()
            .filter_map(|a| a.service.get("/metrics").ok().map(|x| x.1))
            .collect();
        let text = |s: &Service| s.get("/metrics").map(|(_, t)| t).unwrap_or_default();
        let (bridge, reconciler) = (text(self.bridge), text(self.reconciler));
        for (what, texts, name) in [
            (
                "agents: one spool group write, fsync included (their histogram)",
                agents.clone(),
                "edgesync_agent_spool_write_seconds",
            ),
            (
                "agents: ingest arrival → durable answer (their histogram)",
                agents,
                "edgesync_agent_append_latency_seconds",
            ),
            (
                "bridge: MQTT receive → Kafka confirmed (its histogram)",
                vec![bridge],
                "edgesync_bridge_produce_latency_seconds",
            ),
            (
                "reconciler: event HLC → converged emit (its histogram)",
                vec![reconciler],
                "edgesync_reconciler_convergence_latency_seconds",
            ),
        ] {
            match (
                bucket_quantile_ms(&texts, name, 0.5),
                bucket_quantile_ms(&texts, name, 0.99),
            ) {
                (Some(a), Some(b)) => println!("| {what} | ≤ {a:.1} | ≤ {b:.1} | |"),
                _ => println!("| {what} | no samples | | |"),
            }
        }
    }

    fn print_costs(&self) {
        let (wire, raw) = self.wire_and_raw;
        let ratio = if wire > 0.0 { raw / wire } else { 0.0 };
        println!(
            "| bytes on the wire / raw spool bytes | {wire:.0} / {raw:.0} ({ratio:.1}x smaller) |"
        );
        println!(
            "| converged keys | {} (counters equal the reference: {}) |",
            self.keys,
            yes_no(self.counters_ok)
        );
        println!(
            "| spools drained behind their acknowledged watermark | {} |",
            yes_no(self.drained)
        );
        let (dropped, dead) = self.dropped_and_dead;
        println!("| dropped at the edge / dead letters | {dropped:.0} / {dead:.0} |");
        let ops = &self.ops;
        println!(
            "| Prometheus on deploy/prometheus: targets up, rules evaluated | {} of {}, {} of {} |",
            ops.targets_up,
            ops.targets,
            ops.rules - ops.unhealthy_rules.len(),
            ops.rules
        );
        println!(
            "| alerts firing / pending at the end | {} / {} |",
            list_or_none(&ops.firing),
            list_or_none(&ops.pending)
        );
    }
}

/// `x / of` as `2.31× ✓` against `target`.
pub fn ratio(x: f64, of: f64, target: f64) -> String {
    if of <= 0.0 {
        return "–".into();
    }
    let r = x / of;
    format!("{r:.2}× {}", if r <= target { "✓" } else { "✗" })
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "NO"
    }
}

/// µs → ms.
pub fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

/// The upper bound (ms) of the bucket holding quantile `q` of Prometheus histogram `name`,
/// its buckets summed over several `/metrics` texts (bucket resolution: an estimate).
pub fn bucket_quantile_ms(texts: &[String], name: &str, q: f64) -> Option<f64> {
    let prefix = format!("{name}_bucket{{le=\"");
    let mut buckets: Vec<(f64, f64)> = Vec::new();
    for text in texts {
        for l in text.lines() {
            let Some(rest) = l.strip_prefix(&prefix) else {
                continue;
            };
            let Some((le, count)) = rest.split_once("\"}") else {
                continue;
            };
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                let Ok(x) = le.parse() else { continue };
                x
            };
            let Ok(count) = count.trim().parse::<f64>() else {
                continue;
            };
            match buckets.iter_mut().find(|(b, _)| *b == le) {
                Some(b) => b.1 += count,
                None => buckets.push((le, count)),
            }
        }
    }
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = buckets.last()?.1;
    (total > 0.0).then_some(())?;
    buckets
        .iter()
        .find(|(_, c)| *c >= q * total)
        .map(|(le, _)| le * 1000.0)
}

fn list_or_none(v: &[String]) -> String {
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

/// The `p` quantile of sorted samples (nearest rank).
pub fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1]
}

//! The report of a run: one Markdown table of what was delivered, how fast, at what cost, and
//! what Prometheus saw; `ok` is the verdict the exit code gives.

use edgesync_testkit::{PrometheusView, Service};

/// Everything the report prints.
pub struct Report<'a> {
    /// The broker and its version.
    pub broker: String,
    /// Reconciler settings the run changed.
    pub reconciler_sets: &'a [String],
    /// Events the agents answered.
    pub total: usize,
    /// Of which found in the events topic.
    pub delivered: usize,
    /// Found more than once.
    pub duplicates: u64,
    /// Whether links were cut (latencies then include outages).
    pub cuts: usize,
    /// Answer → event record, ms, sorted.
    pub to_event: &'a [u64],
    /// Answer → converged record, ms, sorted.
    pub to_converged: &'a [u64],
    /// The bridge and the reconciler, for their own histograms.
    pub bridge: &'a Service,
    /// See `bridge`.
    pub reconciler: &'a Service,
    /// The raw hops timed on the same brokers: name and samples in µs, sorted.
    pub raw_hops: &'a [(&'static str, Vec<u64>)],
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
            && self.counters_ok
            && self.drained
            && self.dropped_and_dead.0 == 0.0
            && ops_ok
    }

    /// Prints the table.
    pub fn print(&self) {
        println!("| | |\n|---|---|");
        println!("| Kafka broker | {} |", self.broker);
        if !self.reconciler_sets.is_empty() {
            println!(
                "| reconciler settings | `{}` |",
                self.reconciler_sets.join("`, `")
            );
        }
        self.print_delivery();
        self.print_latency();
        self.print_costs();
    }

    fn print_delivery(&self) {
        let (total, delivered) = (self.total, self.delivered);
        println!("| events answered by agents (durable at the edge) | {total} |");
        println!("| delivered to edgesync.events | {delivered} |");
        println!(
            "| missing / duplicated | {} / {} |",
            total - delivered,
            self.duplicates
        );
        let completeness = if total == 0 {
            100.0
        } else {
            delivered as f64 * 100.0 / total as f64
        };
        println!("| completeness | {completeness:.4} % |");
    }

    fn print_latency(&self) {
        let outages = if self.cuts > 0 {
            " (outages included)"
        } else {
            ""
        };
        println!(
            "| latency, agent answer → event in Kafka | {}{outages} |",
            spread_ms(self.to_event)
        );
        println!(
            "| latency, agent answer → converged record | {} ({} events) |",
            spread_ms(self.to_converged),
            self.to_converged.len()
        );
        // Where the time goes, from the services' own histograms (bucket upper bounds).
        println!(
            "| bridge: MQTT receive → Kafka confirmed (its histogram) | {} |",
            histogram(self.bridge, "edgesync_bridge_produce_latency_seconds")
        );
        println!(
            "| reconciler: event HLC → converged emit (its histogram) | {} |",
            histogram(
                self.reconciler,
                "edgesync_reconciler_convergence_latency_seconds"
            )
        );
        for (name, us) in self.raw_hops {
            println!(
                "| raw hop: {name} | p50 {:.2} ms, p99 {:.2} ms |",
                percentile(us, 0.5) as f64 / 1000.0,
                percentile(us, 0.99) as f64 / 1000.0
            );
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

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "NO"
    }
}

/// `p50 …, p99 …, max …` of sorted milliseconds.
fn spread_ms(sorted: &[u64]) -> String {
    format!(
        "p50 {} ms, p99 {} ms, max {} ms",
        percentile(sorted, 0.5),
        percentile(sorted, 0.99),
        sorted.last().copied().unwrap_or(0)
    )
}

/// p50 and p99 of a service's histogram `name`, as bucket upper bounds.
fn histogram(svc: &Service, name: &str) -> String {
    let text = svc.get("/metrics").map(|(_, t)| t).unwrap_or_default();
    match (
        bucket_quantile_ms(&text, name, 0.5),
        bucket_quantile_ms(&text, name, 0.99),
    ) {
        (Some(a), Some(b)) => format!("p50 ≤ {a:.1} ms, p99 ≤ {b:.1} ms"),
        _ => "no samples".into(),
    }
}

/// The upper bound of the histogram bucket holding quantile `q` of Prometheus histogram
/// `name` in a `/metrics` text, in milliseconds (bucket resolution: an estimate).
fn bucket_quantile_ms(metrics: &str, name: &str, q: f64) -> Option<f64> {
    let prefix = format!("{name}_bucket{{le=\"");
    let buckets: Vec<(f64, f64)> = metrics
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(&prefix)?;
            let (le, count) = rest.split_once("\"}")?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, count.trim().parse().ok()?))
        })
        .collect();
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

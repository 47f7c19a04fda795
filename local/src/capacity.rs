//! The capacity curve: one warm pipeline fed at a rising rate, a step at a time, until it
//! saturates (`--steps`).
//!
//! A step feeds every agent for `--step-seconds` at its share of the step's rate (links up),
//! sampling every second the backlog at each place it can build up: events answered and not
//! yet read from `edgesync.events`, events not yet in a converged record, the agents' spools
//! (events not yet acknowledged) and oldest unacknowledged age, and the reconciler's consumer
//! lag per stage (librdkafka's statistics, refreshed every 5 s). Then the feed stops and the
//! pipeline drains before the next step, so each step starts from idle.
//!
//! Per step: the rate the agents accepted, the rate delivered to `edgesync.events` while the
//! step ran, p50/p99 latency of the step's events (append → read from `edgesync.events`, and
//! → converged record read from `edgesync.state`), the backlog's growth (least-squares slope
//! over the step after its first 3 s) and the CPU of every process and of its busiest thread.
//! A step is **sustainable** when the agents took the offered rate (≥ 95 %), the pipeline
//! delivered it (≥ 90 % while the step ran), neither end-to-end backlog grew by more than 5 %
//! of the offered rate per second, and it drained afterwards. The run stops after the first
//! step that is not (`--all-steps` goes on). What saturates first is named from the first
//! such step: a thread at ≥ 90 % of a core (a single-threaded stage at its ceiling), else
//! the machine with every core busy, else no CPU ceiling (then the backlog's place says which
//! hop holds the events back).

use std::time::{Duration, Instant};

use crate::fleet::Request;
use crate::observe;
use crate::report::{ms, percentile};
use crate::usage::{self, round3, Window};
use crate::{now_us, Args, Pipeline};

/// One sample of the backlog.
#[derive(Clone, Copy, Debug, Default)]
struct Sample {
    /// Seconds since the step started.
    t: f64,
    /// Answered events not yet read from `edgesync.events`.
    not_delivered: f64,
    /// Answered events not yet in a converged record of their device's counter.
    not_converged: f64,
    /// Events in the agents' spools (not yet acknowledged), summed.
    spooled: f64,
    /// The oldest unacknowledged event's age over the agents, s.
    oldest: f64,
    /// The reconciler's device-stage lag (records).
    device_lag: f64,
    /// The reconciler's key-stage lag (records).
    key_lag: f64,
}

/// Traffic per answered event on each link the sizing model needs.
#[derive(Clone, Copy, Debug, Default)]
pub struct Traffic {
    /// Batches the agents published (MQTT messages, and `edgesync.deltas` records).
    pub batches: f64,
    /// The agents' published batches (MQTT payload, compressed), bytes.
    pub mqtt: f64,
    /// `edgesync.events` records.
    pub events: f64,
    /// `edgesync.state` records.
    pub state: f64,
}

impl Traffic {
    /// Counters now: (batches published, wire bytes published, event record bytes, state
    /// record bytes).
    fn counters(p: &Pipeline) -> [f64; 4] {
        let (e, s) = p.observer.lock().record_bytes;
        [
            p.fleet.metric_sum("edgesync_agent_published_batches_total"),
            p.fleet
                .metric_sum("edgesync_agent_published_wire_bytes_total"),
            e as f64,
            s as f64,
        ]
    }

    /// Between two readings of [`Traffic::counters`], per event.
    fn per_event(before: [f64; 4], after: [f64; 4], events: u64) -> Self {
        let per = |i: usize| (after[i] - before[i]) / events.max(1) as f64;
        Self {
            batches: per(0),
            mqtt: per(1),
            events: per(2),
            state: per(3),
        }
    }
}

/// What one step measured.
#[derive(Debug)]
pub struct Step {
    /// Offered events/s (what the agents were asked to take).
    pub offered: f64,
    /// Events/s the agents answered during the step.
    pub accepted: f64,
    /// Events/s read from `edgesync.events` during the step.
    pub delivered: f64,
    /// Append → event read: p50, p99 (ms).
    pub to_event: (f64, f64),
    /// Append → converged record read: p50, p99 (ms).
    pub to_converged: (f64, f64),
    /// Events of the step, and of those never read.
    pub events: (u64, u64),
    /// Backlog growth, events/s: not delivered, not converged, spooled.
    pub growth: (f64, f64, f64),
    /// Largest sample of: spooled events, oldest unacked age (s), device lag, key lag.
    pub peaks: (f64, f64, f64, f64),
    /// Seconds to drain after the feed stopped (`None`: not within `--drain-seconds`).
    pub drain: Option<f64>,
    /// Requests that got no durable answer.
    pub failed: u64,
    /// p50 and p99 of each stage with samples (ms), in the order of `observe::STAGES`.
    pub stages: Vec<(usize, f64, f64)>,
    /// Per answered event: the agents' batches and their bytes on the MQTT wire, and the
    /// bytes of the event and converged records read from Kafka (key and value, before the
    /// topic's compression).
    pub per_event: Traffic,
    /// CPU while the step ran.
    pub cpu: Window,
    /// Why the step is not sustainable (empty: it is).
    pub not_sustainable: Vec<String>,
}

impl Step {
    /// Whether the pipeline kept up.
    pub fn sustainable(&self) -> bool {
        self.not_sustainable.is_empty()
    }

    /// What limits the pipeline at this step, by the rule in the module docs.
    pub fn limit(&self) -> String {
        let busiest = |c: &usage::Used| {
            format!(
                "{}: thread `{}` at {:.0} % of a core",
                c.name,
                c.busiest.0,
                c.busiest.1 * 100.0
            )
        };
        if let Some(c) = self.cpu.thread_at_ceiling() {
            return busiest(c);
        }
        if self.cpu.machine_full() {
            let mut v: Vec<&usage::Used> = self.cpu.components.iter().collect();
            v.sort_by(|a, b| b.cores.total_cmp(&a.cores));
            let top: Vec<String> = v
                .iter()
                .take(3)
                .map(|c| format!("{} {:.2}", c.name, c.cores))
                .collect();
            return format!(
                "the machine: {:.2} of {:.0} cores busy, {:.2} of them by the pipeline (largest: {}) and {:.2} by other processes",
                self.cpu.machine_cores,
                self.cpu.machine_of,
                self.cpu.ours(),
                top.join(", "),
                (self.cpu.machine_cores - self.cpu.ours()).max(0.0)
            );
        }
        let slowest = self
            .stages
            .iter()
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .map_or("no stage measured".to_owned(), |(i, p50, _)| {
                format!(
                    "the time goes to {} (p50 {p50:.0} ms)",
                    observe::STAGE_OWNERS[*i]
                )
            });
        format!(
            "no CPU ceiling (machine {:.2} of {:.0} cores busy); {slowest}",
            self.cpu.machine_cores, self.cpu.machine_of
        )
    }

    fn component(&self, name_starts: &str) -> f64 {
        self.cpu
            .components
            .iter()
            .filter(|c| c.name.starts_with(name_starts))
            .map(|c| c.cores)
            .sum()
    }

    /// The Kafka broker's cores (Apache Kafka or tansu, whichever the run has).
    fn broker_cores(&self) -> f64 {
        self.component("Apache Kafka") + self.component("tansu")
    }

    /// The component whose busiest thread is the busiest of all.
    fn busiest(&self) -> Option<&usage::Used> {
        self.cpu
            .components
            .iter()
            .max_by(|a, b| a.busiest.1.total_cmp(&b.busiest.1))
    }

    fn feed_cores(&self) -> f64 {
        self.cpu
            .components
            .iter()
            .flat_map(|c| c.by_thread.iter())
            .filter(|(n, _)| n == "feed")
            .map(|(_, v)| *v)
            .sum()
    }

    /// As JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "offered_events_per_s": self.offered.round(),
            "accepted_events_per_s": self.accepted.round(),
            "delivered_events_per_s": self.delivered.round(),
            "append_to_event_ms": {"p50": round3(self.to_event.0), "p99": round3(self.to_event.1)},
            "append_to_converged_ms": {"p50": round3(self.to_converged.0), "p99": round3(self.to_converged.1)},
            "events": self.events.0,
            "events_not_read": self.events.1,
            "backlog_growth_events_per_s": {
                "not_delivered": self.growth.0.round(),
                "not_converged": self.growth.1.round(),
                "spooled": self.growth.2.round(),
            },
            "peaks": {
                "spooled_events": self.peaks.0,
                "oldest_unacked_s": round3(self.peaks.1),
                "device_stage_lag_records": self.peaks.2,
                "key_stage_lag_records": self.peaks.3,
            },
            "stages_ms": self.stages.iter().map(|(i, p50, p99)| serde_json::json!({
                "stage": observe::STAGES[*i],
                "p50": round3(*p50),
                "p99": round3(*p99),
            })).collect::<Vec<_>>(),
            "drain_s": self.drain.map(round3),
            "failed_requests": self.failed,
            "per_event": {
                "batches": (self.per_event.batches * 1e6).round() / 1e6,
                "mqtt_batch_bytes": round3(self.per_event.mqtt),
                "event_record_bytes": round3(self.per_event.events),
                "state_record_bytes": round3(self.per_event.state),
            },
            "cpu_cores": {
                "machine_busy": round3(self.cpu.machine_cores),
                "machine_cores": self.cpu.machine_of,
                "load_generator_threads": round3(self.feed_cores()),
                "processes": self.cpu.components.iter().map(usage::Used::json).collect::<Vec<_>>(),
            },
            "sustainable": self.sustainable(),
            "not_sustainable_because": self.not_sustainable,
            "limit": self.limit(),
        })
    }
}

/// Runs every step of `args.steps` (stopping after the first unsustainable one unless
/// `args.all_steps`); prints each as it ends.
pub fn run(p: &Pipeline, args: &Args) -> Vec<Step> {
    let mut steps = Vec::new();
    println!("\n{}", header());
    for &rate in &args.steps {
        let step = one(p, args, rate);
        println!("{}", row(&step));
        let stop = !step.sustainable() && !args.all_steps || step.drain.is_none();
        steps.push(step);
        if stop {
            break;
        }
    }
    steps
}

/// Feeds `rate` events/s for a step, then drains.
fn one(p: &Pipeline, args: &Args, rate: u64) -> Step {
    let fleet = &p.fleet;
    let agents = fleet.agents.len().max(1) as u64;
    let per_agent = rate.div_ceil(agents);
    // Ten requests a second per agent, each of a tenth of its rate, rounded up.
    let offered = (per_agent.div_ceil(10) * 10 * agents) as f64;
    let secs = args.step_seconds.max(1);
    let failed0 = fleet.failed_requests();
    let answered0 = fleet.answered_events();
    let cpu0 = usage::read(&p.components);
    let traffic0 = Traffic::counters(p);
    let start_us = now_us();
    let started = Instant::now();
    let feed = fleet.start_feed(per_agent);
    let mut samples = Vec::new();
    let mut next = started;
    while started.elapsed() < Duration::from_secs(secs) {
        next += Duration::from_secs(1);
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
        samples.push(sample(p, started));
    }
    let cpu1 = usage::read(&p.components);
    feed.stop();
    let end_us = now_us();
    let elapsed = (end_us - start_us) as f64 / 1e6;
    let answered = fleet.answered_events() - answered0;
    // Drain: every answered event read and converged, every spool empty.
    let stopped = Instant::now();
    let drained = |p: &Pipeline| {
        p.observer.unique_events() >= fleet.answered_events()
            && p.observer.not_converged(fleet) == 0
            && fleet.drained_now()
    };
    let deadline = stopped + Duration::from_secs(args.drain_seconds);
    while Instant::now() < deadline && !drained(p) {
        std::thread::sleep(Duration::from_millis(200));
    }
    let drain = drained(p).then(|| stopped.elapsed().as_secs_f64());
    let traffic = Traffic::per_event(traffic0, Traffic::counters(p), answered);
    let answers = fleet.answers();
    let o = p.observer.lock();
    let in_step = |r: &Request| r.sent_us >= start_us && r.sent_us < end_us;
    let l = o.latencies(&answers, fleet, |us| p.observer.ticks(us), in_step);
    let delivered = o.read_between(p.observer.ticks(start_us), p.observer.ticks(end_us)) as f64;
    drop(o);
    let q = |v: &Vec<u64>| (ms(percentile(v, 0.5)), ms(percentile(v, 0.99)));
    let after3: Vec<Sample> = samples.iter().copied().filter(|s| s.t >= 3.0).collect();
    let growth = (
        slope(&after3, |s| s.not_delivered),
        slope(&after3, |s| s.not_converged),
        slope(&after3, |s| s.spooled),
    );
    let peak = |f: fn(&Sample) -> f64| samples.iter().map(f).fold(0.0, f64::max);
    let mut step = Step {
        offered,
        accepted: answered as f64 / elapsed,
        delivered: delivered / elapsed,
        to_event: q(&l.to_event),
        to_converged: q(&l.to_converged),
        events: (l.events, l.missing),
        growth,
        peaks: (
            peak(|s| s.spooled),
            peak(|s| s.oldest),
            peak(|s| s.device_lag),
            peak(|s| s.key_lag),
        ),
        drain,
        failed: fleet.failed_requests() - failed0,
        stages: l
            .stages
            .iter()
            .enumerate()
            .filter(|(_, (_, v))| !v.is_empty())
            .map(|(i, (_, v))| (i, q(v).0, q(v).1))
            .collect(),
        per_event: traffic,
        cpu: usage::between(&p.components, &cpu0, &cpu1),
        not_sustainable: Vec::new(),
    };
    step.not_sustainable = verdict(&step);
    step
}

/// Why a step is not sustainable (empty: it is).
fn verdict(s: &Step) -> Vec<String> {
    let mut why = Vec::new();
    if s.accepted < 0.95 * s.offered {
        why.push(format!(
            "agents accepted {:.0} of {:.0} events/s",
            s.accepted, s.offered
        ));
    }
    if s.delivered < 0.9 * s.offered {
        why.push(format!("delivered {:.0} events/s", s.delivered));
    }
    let bound = 0.05 * s.offered;
    if s.growth.0 > bound {
        why.push(format!(
            "undelivered backlog grew {:.0} events/s",
            s.growth.0
        ));
    }
    if s.growth.1 > bound {
        why.push(format!(
            "unconverged backlog grew {:.0} events/s",
            s.growth.1
        ));
    }
    if s.drain.is_none() {
        why.push("did not drain".into());
    }
    if s.failed > 0 {
        why.push(format!("{} requests failed", s.failed));
    }
    why
}

/// The backlog now.
fn sample(p: &Pipeline, started: Instant) -> Sample {
    let fleet = &p.fleet;
    let answered = fleet.answered_events() as f64;
    let mut s = Sample {
        t: started.elapsed().as_secs_f64(),
        not_delivered: (answered - p.observer.unique_events() as f64).max(0.0),
        not_converged: p.observer.not_converged(fleet) as f64,
        ..Sample::default()
    };
    for a in &fleet.agents {
        let Ok((200, text)) = a.service.get("/metrics") else {
            continue;
        };
        s.spooled += edgesync_testkit::metric_in(&text, "edgesync_agent_spool_events", "");
        let age =
            edgesync_testkit::metric_in(&text, "edgesync_agent_oldest_unacked_age_seconds", "");
        s.oldest = s.oldest.max(age);
    }
    if let Ok((200, text)) = p.reconciler.get("/metrics") {
        let lag = |stage: &str| {
            edgesync_testkit::metric_in(
                &text,
                "edgesync_reconciler_consumer_lag",
                &format!("stage=\"{stage}\""),
            )
        };
        s.device_lag = lag("device");
        s.key_lag = lag("key");
    }
    s
}

/// Least-squares slope of `f` over the samples' time, per second (0 for fewer than 3).
fn slope(samples: &[Sample], f: impl Fn(&Sample) -> f64) -> f64 {
    let n = samples.len() as f64;
    if samples.len() < 3 {
        return 0.0;
    }
    let (mt, my) = (
        samples.iter().map(|s| s.t).sum::<f64>() / n,
        samples.iter().map(&f).sum::<f64>() / n,
    );
    let (mut num, mut den) = (0.0, 0.0);
    for s in samples {
        num += (s.t - mt) * (f(s) - my);
        den += (s.t - mt) * (s.t - mt);
    }
    if den > 0.0 {
        num / den
    } else {
        0.0
    }
}

fn header() -> String {
    [
        "| offered events/s | accepted | delivered | append → event p50 / p99 ms | append → converged p50 / p99 ms | backlog growth events/s (undelivered, unconverged, spooled) | CPU cores: agents / bridge / reconciler / Mosquitto / Kafka broker / load generator | machine busy | busiest thread | sustainable |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    .join("\n")
}

fn row(s: &Step) -> String {
    let busiest = s
        .busiest()
        .map(|c| format!("{} `{}` {:.0} %", c.name, c.busiest.0, c.busiest.1 * 100.0))
        .unwrap_or_default();
    format!(
        "| {:.0} | {:.0} | {:.0} | {:.1} / {:.1} | {:.1} / {:.1} | {:.0}, {:.0}, {:.0} | {:.2} / {:.2} / {:.2} / {:.2} / {:.2} / {:.2} | {:.2} of {:.0} | {busiest} | {} |",
        s.offered,
        s.accepted,
        s.delivered,
        s.to_event.0,
        s.to_event.1,
        s.to_converged.0,
        s.to_converged.1,
        s.growth.0,
        s.growth.1,
        s.growth.2,
        s.component("agents"),
        s.component("bridge"),
        s.component("reconciler"),
        s.component("Mosquitto"),
        s.broker_cores(),
        s.feed_cores(),
        s.cpu.machine_cores,
        s.cpu.machine_of,
        if s.sustainable() {
            "yes".to_owned()
        } else {
            format!("**no**: {}", s.not_sustainable.join("; "))
        }
    )
}

/// The summary after the table: the sustainable rate and what saturates first.
pub fn summary(steps: &[Step]) -> (Option<f64>, String) {
    let sustainable = steps
        .iter()
        .filter(|s| s.sustainable())
        .map(|s| s.offered)
        .fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.max(x))));
    let first_bad = steps.iter().find(|s| !s.sustainable());
    let limit = match first_bad {
        Some(s) => format!("at {:.0} events/s: {}", s.offered, s.limit()),
        None => match steps.last() {
            Some(s) => format!(
                "not reached; at the last step ({:.0} events/s): {}",
                s.offered,
                s.limit()
            ),
            None => "no steps".into(),
        },
    };
    (sustainable, limit)
}

/// The CSV of the steps (one row each).
pub fn csv(steps: &[Step]) -> String {
    let mut out = String::from(
        "offered,accepted,delivered,event_p50_ms,event_p99_ms,converged_p50_ms,converged_p99_ms,growth_undelivered,growth_unconverged,growth_spooled,peak_spooled,peak_oldest_unacked_s,peak_device_lag,peak_key_lag,drain_s,cpu_agents,cpu_bridge,cpu_reconciler,cpu_mosquitto,cpu_broker,cpu_load_generator,cpu_machine,busiest_thread,busiest_thread_cores,sustainable\n",
    );
    for s in steps {
        let busiest = s.busiest();
        out.push_str(&format!(
            "{:.0},{:.0},{:.0},{:.3},{:.3},{:.3},{:.3},{:.0},{:.0},{:.0},{:.0},{:.3},{:.0},{:.0},{},{:.3},{:.3},{:.3},{:.3},{:.3},{:.3},{:.3},{},{:.3},{}\n",
            s.offered,
            s.accepted,
            s.delivered,
            s.to_event.0,
            s.to_event.1,
            s.to_converged.0,
            s.to_converged.1,
            s.growth.0,
            s.growth.1,
            s.growth.2,
            s.peaks.0,
            s.peaks.1,
            s.peaks.2,
            s.peaks.3,
            s.drain.map_or(String::new(), |d| format!("{d:.1}")),
            s.component("agents"),
            s.component("bridge"),
            s.component("reconciler"),
            s.component("Mosquitto"),
            s.broker_cores(),
            s.feed_cores(),
            s.cpu.machine_cores,
            busiest.map_or(String::new(), |c| format!("{} {}", c.name, c.busiest.0).replace(',', ";")),
            busiest.map_or(0.0, |c| c.busiest.1),
            s.sustainable()
        ));
    }
    out
}

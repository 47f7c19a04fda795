//! `edgesync-local`: the whole pipeline on this machine, fed and measured.
//!
//! Starts Mosquitto and a Kafka broker (Apache Kafka in KRaft mode by default, or tansu on
//! SQLite storage with `--broker tansu`), the reconciler, the bridge and a fleet of agents,
//! each agent behind its own fault proxy that cuts its link now and then. Producers post
//! events to the agents over HTTP at a steady rate, while a reader follows the output topics
//! live (`observe`). At the end the links heal, every agent must drain its spool, and the
//! report is computed from what the reader saw: every answered event found once, converged
//! counters equal to the reference, latency from the append to the event read from
//! `edgesync.events` and to the converged record that includes it read from `edgesync.state`,
//! each against the sum of the raw hops it crosses (MQTT, Kafka, fsync: timed on the same
//! brokers in the same run), where the time goes stage by stage, the CPU of every process,
//! bytes on the wire against raw. A real Prometheus on the shipped `deploy/prometheus/` config
//! scrapes every service throughout; the report gives what it saw (targets up, rules
//! evaluated, alerts firing).
//!
//! With `--steps` it draws the capacity curve instead (`capacity`): the same pipeline, started
//! once and warmed up, fed step by step at a rising rate with links up until it saturates.
//!
//! Everything it started stops with it (also on Ctrl-C or a crash: the processes die with
//! their parent).
#![allow(clippy::print_stdout)]

mod capacity;
mod fleet;
mod hops;
mod observe;
mod report;
mod usage;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use edgesync_testkit::{workspace_binary, Broker, Kafka, Mosquitto, Prometheus, Service};

use fleet::Fleet;
use hops::RawHops;
use observe::Observer;
use report::Report;
use usage::Component;

/// Run the edgesync pipeline locally on embedded defaults and report how it did.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// The Kafka broker: `apache` (Apache Kafka, KRaft, one node) or `tansu` (SQLite).
    #[arg(long, default_value = "apache")]
    broker: Broker,
    /// Edge agents (each its own process, spool and link).
    #[arg(long, default_value_t = 8)]
    agents: usize,
    /// How long producers feed events.
    #[arg(long, default_value_t = 30)]
    seconds: u64,
    /// Events per second per agent.
    #[arg(long, default_value_t = 50)]
    rate: u64,
    /// Every this many seconds (after the previous cut healed) one agent's link is cut
    /// (0: links never fail). Ignored with `--steps` (links stay up).
    #[arg(long, default_value_t = 5)]
    outage_every: u64,
    /// How long a cut lasts.
    #[arg(long, default_value_t = 4)]
    outage_secs: u64,
    /// Latency added to every agent's link, each way (ms).
    #[arg(long, default_value_t = 0)]
    link_latency_ms: u64,
    /// Bandwidth of every agent's link, each way (KiB/s; 0: unlimited).
    #[arg(long, default_value_t = 0)]
    link_kib_per_s: u64,
    /// A reconciler setting, as its `--set` takes it (repeatable), e.g.
    /// `--reconciler-set 'exactly_once="transactions"'`; named in the report.
    #[arg(long = "reconciler-set", value_name = "KEY=VALUE")]
    reconciler_sets: Vec<String>,
    /// An agent setting, as its `--set` takes it (repeatable); named in the report.
    #[arg(long = "agent-set", value_name = "KEY=VALUE")]
    agent_sets: Vec<String>,
    /// A bridge setting, as its `--set` takes it (repeatable); named in the report.
    #[arg(long = "bridge-set", value_name = "KEY=VALUE")]
    bridge_sets: Vec<String>,
    /// The capacity curve: total offered rates (events/s over the fleet, `k` for thousands),
    /// fed one step after another on one pipeline, links up, e.g. `1k,5k,10k,20k`.
    #[arg(long, value_delimiter = ',', value_parser = parse_rate)]
    steps: Vec<u64>,
    /// How long each step feeds.
    #[arg(long, default_value_t = 20)]
    step_seconds: u64,
    /// Before measuring: a feed at the run's rate (with `--steps`, the first step's), links
    /// up, for this long, then a drain; its events are checked but not timed. Default: 0, and
    /// 10 with `--steps`.
    #[arg(long)]
    warm_seconds: Option<u64>,
    /// After each step: how long the pipeline may take to drain before the run stops.
    #[arg(long, default_value_t = 60)]
    drain_seconds: u64,
    /// Run every step even after one that is not sustainable.
    #[arg(long)]
    all_steps: bool,
    /// With `--steps`: write `<PATH>.json` and `<PATH>.csv`.
    #[arg(long, value_name = "PATH")]
    out: Option<PathBuf>,
}

fn parse_rate(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mul) = match s.strip_suffix(['k', 'K']) {
        Some(n) => (n, 1000.0),
        None => (s, 1.0),
    };
    let v: f64 = num.parse().map_err(|e| format!("{s}: {e}"))?;
    Ok((v * mul).round() as u64)
}

fn fail(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("edgesync-local: {msg}");
    ExitCode::from(2)
}

/// Any error, as the message the run stops with.
fn err(x: impl std::fmt::Display) -> String {
    x.to_string()
}

/// Wall clock, µs since the epoch (the same clock as Kafka's record timestamps).
pub fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

fn main() -> ExitCode {
    let args = Args::parse();
    let result = if args.steps.is_empty() {
        run(&args)
    } else {
        run_steps(&args)
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => fail(e),
    }
}

/// A workspace binary, which must have been built.
fn bin(name: &str) -> Result<PathBuf, String> {
    let p = workspace_binary(name);
    p.exists()
        .then_some(p.clone())
        .ok_or_else(|| format!("{} missing: build the workspace first", p.display()))
}

/// The reconciler (with `args`' extra settings) and the bridge on `k` and `m`.
fn services(args: &Args, k: &Kafka, m: &Mosquitto) -> Result<(Service, Service), String> {
    let kafka = format!("kafka.bootstrap_servers={}", k.bootstrap());
    let mut sets = vec![
        kafka.clone(),
        "kafka.partitions=4".into(),
        "state_dir=\"{dir}/state\"".into(),
    ];
    sets.extend(args.reconciler_sets.iter().cloned());
    let reconciler =
        Service::start(bin("edgesync-reconciler")?, None, "reconciler", &sets).map_err(err)?;
    let mut sets = vec![
        kafka,
        format!("mqtt.port={}", m.port()),
        "kafka.partitions=4".into(),
    ];
    sets.extend(args.bridge_sets.iter().cloned());
    let bridge = Service::start(bin("edgesync-bridge")?, None, "bridge", &sets).map_err(err)?;
    Ok((reconciler, bridge))
}

/// Everything the run started; it all stops when this is dropped, in field order: the
/// observers and the agents first, the brokers last.
struct Pipeline {
    started: Instant,
    broker: String,
    observer: Observer,
    prometheus: Option<Prometheus>,
    fleet: Fleet,
    bridge: Service,
    reconciler: Service,
    /// The processes whose CPU is measured.
    components: Vec<Component>,
    k: Kafka,
    m: Mosquitto,
}

fn run(args: &Args) -> Result<bool, String> {
    let mut p = Pipeline::start(args, true)?;
    println!("==> warming up: one event per agent, end to end");
    p.fleet.warm_up()?;
    let warm = args.warm_seconds.unwrap_or(0);
    if warm > 0 {
        println!(
            "==> warming up: {} events/s per agent for {warm} s, links up (checked, not timed)",
            args.rate
        );
        p.fleet
            .warm_feed(args.rate, warm, Duration::from_secs(args.drain_seconds));
    }
    let links = match args.outage_every {
        0 => "links up".to_owned(),
        n => format!("one link cut for {} s every {n} s", args.outage_secs),
    };
    println!(
        "==> feeding {} events/s per agent for {} s; {links}",
        args.rate, args.seconds
    );
    let released = || p.reconciler.metric("edgesync_reconciler_events_total", "");
    let cpu0 = usage::read(&p.components);
    let (fed0, t0) = (p.fleet.answered_events(), Instant::now());
    let cuts = p.fleet.feed(args, released, p.started);
    let cpu = usage::between(&p.components, &cpu0, &usage::read(&p.components));
    let fed_per_s = (p.fleet.answered_events() - fed0) as f64 / t0.elapsed().as_secs_f64();
    println!("==> feeding stopped; links healed; waiting for every spool to drain");
    let drained = p.fleet.drain(Duration::from_secs(180));
    // The reader has everything once every answered event and its converged record are read.
    edgesync_testkit::wait_until(Duration::from_secs(30), || {
        p.observer.unique_events() >= p.fleet.answered_events()
            && p.observer.not_converged(&p.fleet) == 0
    });
    let raw = p.time_raw_hops()?;
    let ok = p.report(args, cuts, drained, &cpu, fed_per_s, &raw)?;
    println!(
        "\n{}",
        if ok {
            "==> OK: nothing lost, nothing doubled, state converged"
        } else {
            "==> FAILED (see above)"
        }
    );
    Ok(ok)
}

fn run_steps(args: &Args) -> Result<bool, String> {
    let mut p = Pipeline::start(args, false)?;
    println!("==> warming up: one event per agent, end to end");
    p.fleet.warm_up()?;
    let first = args.steps.first().copied().unwrap_or(1000);
    let agents = p.fleet.agents.len().max(1) as u64;
    let warm = args.warm_seconds.unwrap_or(10);
    println!("==> warming up: {first} events/s for {warm} s (not measured)");
    let drain = Duration::from_secs(args.drain_seconds);
    p.fleet.warm_feed(first.div_ceil(agents), warm, drain);
    println!(
        "==> capacity: {} agents, steps of {} s at {} events/s, links up; each step drains before the next",
        p.fleet.agents.len(),
        args.step_seconds,
        args.steps
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    );
    let steps = capacity::run(&p, args);
    let (sustainable, limit) = capacity::summary(&steps);
    // Whatever the steps did, nothing may be lost or doubled: drained, then checked.
    let drained = p.fleet.drain(Duration::from_secs(args.drain_seconds));
    edgesync_testkit::wait_until(Duration::from_secs(30), || {
        p.observer.unique_events() >= p.fleet.answered_events()
    });
    let raw = p.time_raw_hops()?;
    let answers = p.fleet.answers();
    let o = p.observer.lock();
    let total: u64 = answers.values().flatten().map(fleet::Request::len).sum();
    let delivered = o.delivered(&answers);
    let clean = total == delivered
        && o.duplicates == 0
        && o.mismatched == 0
        && o.undecodable == 0
        && drained;
    println!(
        "\n==> {}: sustainable rate {}; first to saturate {limit}",
        p.broker,
        sustainable.map_or("none of the steps".into(), |r| format!("{r:.0} events/s")),
    );
    println!(
        "==> every step: {total} events answered, {delivered} delivered, {} duplicated, {} misread ({} decoded in full), counters equal the reference: {}",
        o.duplicates,
        o.mismatched + o.undecodable,
        o.decoded,
        o.counters_match(&answers)
    );
    println!("\n==> CPU per step (cores), every process:\n");
    for s in &steps {
        println!(
            "offered {:.0} events/s (accepted {:.0}):\n",
            s.offered, s.accepted
        );
        s.cpu.print(s.accepted);
        println!("\n| where the time goes, ms | p50 | p99 |\n|---|---|---|");
        for (i, p50, p99) in &s.stages {
            println!("| {} | {p50:.1} | {p99:.1} |", observe::STAGES[*i]);
        }
        println!();
    }
    if let Some(out) = &args.out {
        let q = |v: &Vec<u64>| {
            serde_json::json!({
                "p50": report::ms(report::percentile(v, 0.5)),
                "p99": report::ms(report::percentile(v, 0.99)),
            })
        };
        let doc = serde_json::json!({
            "broker": p.broker,
            "source": describe(),
            "date": date(),
            "machine": {
                "cores": std::thread::available_parallelism().map_or(1, |n| n.get()),
                "cpu": cpu_model(),
            },
            "agents": p.fleet.agents.len(),
            "step_seconds": args.step_seconds,
            "settings": args.reconciler_sets.iter().chain(&args.agent_sets).chain(&args.bridge_sets).collect::<Vec<_>>(),
            "raw_hops_ms": {
                "fsync": q(&raw.fsync),
                "mqtt": q(&raw.mqtt),
                "kafka": q(&raw.kafka),
            },
            "steps": steps.iter().map(capacity::Step::json).collect::<Vec<_>>(),
            "sustainable_events_per_s": sustainable,
            "first_limit": limit,
            "complete": {
                "answered": total,
                "delivered": delivered,
                "duplicates": o.duplicates,
                "misread": o.mismatched + o.undecodable,
                "counters_match": o.counters_match(&answers),
            },
        });
        let json = serde_json::to_string_pretty(&doc).map_err(err)?;
        let path = out.with_extension("json");
        std::fs::write(&path, json + "\n").map_err(|e| format!("{}: {e}", path.display()))?;
        let path = out.with_extension("csv");
        std::fs::write(&path, capacity::csv(&steps))
            .map_err(|e| format!("{}: {e}", path.display()))?;
        println!("==> wrote {0}.json and {0}.csv", out.display());
    }
    Ok(clean)
}

/// `git describe` of the workspace the binary was built from, if it is a checkout.
fn describe() -> String {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    std::process::Command::new("git")
        .args(["-C", root, "describe", "--always", "--dirty"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map_or_else(String::new, |o| {
            String::from_utf8_lossy(&o.stdout).trim().to_owned()
        })
}

fn date() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map_or_else(
            |_| String::new(),
            |o| String::from_utf8_lossy(&o.stdout).trim().to_owned(),
        )
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_default()
}

impl Pipeline {
    /// Times the raw hops on this run's brokers, once the run is over: the brokers are warm
    /// (a fresh JVM is slower for its first minutes) and the pipeline idle.
    fn time_raw_hops(&self) -> Result<RawHops, String> {
        println!("==> timing the raw hops on these brokers, warm and idle (MQTT publish → subscriber, Kafka produce → consumer, fsync)");
        RawHops::time(self.m.addr(), &self.k)
    }

    /// The brokers, the services, the fleet, the observers
    /// (with the MQTT tap when `tap`) and, for a single run, Prometheus.
    fn start(args: &Args, single: bool) -> Result<Self, String> {
        let started = Instant::now();
        let broker = args.broker.version();
        println!("==> starting Mosquitto and the Kafka broker ({broker})");
        let mut m = Mosquitto::start().map_err(err)?;
        let mut k = Kafka::start_on(args.broker).map_err(err)?;
        println!("==> starting edgesync-reconciler and edgesync-bridge");
        let (reconciler, bridge) = services(args, &k, &m)?;
        let link = match args.link_kib_per_s {
            0 => "unlimited".to_owned(),
            n => format!("{n} KiB/s"),
        };
        println!(
            "==> starting {} edge agents, each behind a fault proxy (latency {} ms, bandwidth {link})",
            args.agents, args.link_latency_ms
        );
        let fleet = Fleet::start(args, m.addr(), &bin("edgesync-agent")?)?;
        let mut prometheus = if single {
            println!("==> starting Prometheus on deploy/prometheus (every service scraped, the alert rules evaluated)");
            Some(
                Prometheus::start(&[
                    ("edgesync-agent", fleet.http_addrs()),
                    ("edgesync-bridge", vec![bridge.http]),
                    ("edgesync-reconciler", vec![reconciler.http]),
                ])
                .map_err(err)?,
            )
        } else {
            None
        };
        println!(
            "==> following edgesync.events, edgesync.state and edgesync.deltas{}",
            if single {
                ", and the MQTT batch topics (QoS 0)"
            } else {
                ""
            }
        );
        let observer = Observer::start(&k, single.then(|| m.addr()), if single { 1 } else { 64 })?;
        let one = |name: &str, pid: Option<u32>| Component {
            name: name.to_owned(),
            pids: pid.into_iter().collect(),
        };
        let mut components = vec![
            Component {
                name: format!("agents ({})", fleet.agents.len()),
                pids: fleet.pids(),
            },
            one("bridge", bridge.process.pid()),
            one("reconciler", reconciler.process.pid()),
            one("Mosquitto", m.process().pid()),
            one(&broker, k.process().pid()),
            one(
                "edgesync-local (load generator, observers, link proxies)",
                Some(std::process::id()),
            ),
        ];
        if let Some(prom) = prometheus.as_mut() {
            components.push(one("Prometheus", prom.process().pid()));
        }
        components.retain(|c| !c.pids.is_empty());
        Ok(Self {
            started,
            broker,
            observer,
            prometheus,
            fleet,
            bridge,
            reconciler,
            components,
            k,
            m,
        })
    }

    /// Prints the report and says whether the run passed.
    fn report(
        &mut self,
        args: &Args,
        cuts: usize,
        drained: bool,
        cpu: &usage::Window,
        fed_per_s: f64,
        raw: &RawHops,
    ) -> Result<bool, String> {
        // What Prometheus, on the shipped config and rules, saw of the run.
        let ops = match &self.prometheus {
            Some(prom) => prom.view().map_err(err)?,
            None => return Err("no Prometheus in this run".into()),
        };
        self.observer.stop();
        let (fleet, bridge, reconciler) = (&self.fleet, &self.bridge, &self.reconciler);
        let answers = fleet.answers();
        let o = self.observer.lock();
        let latency = o.latencies(&answers, fleet, |us| self.observer.ticks(us), |_| true);
        let report = Report {
            broker: self.broker.clone(),
            sets: args
                .reconciler_sets
                .iter()
                .map(|s| format!("reconciler {s}"))
                .chain(args.agent_sets.iter().map(|s| format!("agent {s}")))
                .chain(args.bridge_sets.iter().map(|s| format!("bridge {s}")))
                .collect(),
            total: answers.values().flatten().map(fleet::Request::len).sum(),
            delivered: o.delivered(&answers),
            duplicates: o.duplicates,
            failed_requests: fleet.failed_requests(),
            misread: o.mismatched + o.undecodable,
            cuts,
            latency: &latency,
            fleet,
            bridge,
            reconciler,
            raw,
            cpu,
            fed_per_s,
            wire_and_raw: (
                fleet.metric_sum("edgesync_agent_published_wire_bytes_total"),
                fleet.metric_sum("edgesync_agent_published_raw_bytes_total"),
            ),
            keys: o.keys.len(),
            counters_ok: o.counters_match(&answers),
            drained,
            dropped_and_dead: (
                fleet.metric_sum("edgesync_agent_dropped_events_total"),
                bridge.metric("edgesync_bridge_dead_lettered_total", "")
                    + reconciler.metric("edgesync_reconciler_dead_lettered_total", ""),
            ),
            ops,
        };
        println!(
            "\n==> report ({} agents, {} s of feeding, {cuts} link cuts, {} s in all)\n",
            args.agents,
            args.seconds,
            self.started.elapsed().as_secs()
        );
        report.print();
        Ok(report.ok())
    }
}

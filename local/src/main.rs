//! `edgesync-local`: the whole pipeline on this machine, fed and measured.
//!
//! Starts Mosquitto and a Kafka broker (Apache Kafka in KRaft mode by default, or tansu on
//! SQLite storage with `--broker tansu`), the reconciler, the
//! bridge and a fleet of agents, each agent behind its own fault proxy that cuts its link now
//! and then. Producers post events to the agents over HTTP at a steady rate. At the end the
//! links heal, every agent must drain its spool, and the report is computed from the output
//! topics themselves: every answered event found once, converged counters equal to the
//! reference, latency from the agent's answer to the event's record in Kafka and to the
//! converged record that includes it (against the raw hops — MQTT, Kafka, fsync — timed on the
//! same brokers in the same run), bytes on the wire against raw. A real Prometheus on the
//! shipped `deploy/prometheus/` config scrapes every service throughout; the report gives what
//! it saw (targets up, rules evaluated, alerts firing). Everything it started stops with it
//! (also on Ctrl-C or a crash: the processes die with their parent).
#![allow(clippy::print_stdout)]

mod fleet;
mod hops;
mod readback;
mod report;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use edgesync_schemas::{Codec, Limits};
use edgesync_testkit::{workspace_binary, Broker, Kafka, Mosquitto, Prometheus, Service};

use fleet::Fleet;
use report::Report;

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
    /// (0: links never fail).
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
}

fn fail(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("edgesync-local: {msg}");
    ExitCode::from(2)
}

/// Any error, as the message the run stops with.
fn err(x: impl std::fmt::Display) -> String {
    x.to_string()
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
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
    let sets = [
        kafka,
        format!("mqtt.port={}", m.port()),
        "kafka.partitions=4".into(),
    ];
    let bridge = Service::start(bin("edgesync-bridge")?, None, "bridge", &sets).map_err(err)?;
    Ok((reconciler, bridge))
}

/// Everything the run started; it all stops when this is dropped, in field order: the
/// observers and the agents first, the brokers last.
struct Pipeline {
    started: Instant,
    broker: String,
    raw_hops: Vec<(&'static str, Vec<u64>)>,
    prometheus: Prometheus,
    fleet: Fleet,
    bridge: Service,
    reconciler: Service,
    k: Kafka,
    _m: Mosquitto,
}

fn run(args: &Args) -> Result<bool, String> {
    let mut p = Pipeline::start(args)?;
    println!("==> warming up: one event per agent, end to end");
    p.fleet.warm_up()?;
    println!(
        "==> feeding {} events/s per agent for {} s; one link cut for {} s every {} s",
        args.rate, args.seconds, args.outage_secs, args.outage_every
    );
    let released = || p.reconciler.metric("edgesync_reconciler_events_total", "");
    let cuts = p.fleet.feed(args, released, p.started);
    println!("==> feeding stopped; links healed; waiting for every spool to drain");
    let drained = p.fleet.drain();
    let ok = p.report(args, cuts, drained)?;
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

impl Pipeline {
    /// The brokers (with the raw hops timed on them), the services, the fleet and Prometheus.
    fn start(args: &Args) -> Result<Self, String> {
        let started = Instant::now();
        let broker = args.broker.version();
        println!("==> starting Mosquitto and the Kafka broker ({broker})");
        let m = Mosquitto::start().map_err(err)?;
        let k = Kafka::start_on(args.broker).map_err(err)?;
        println!("==> timing the raw hops on these brokers (MQTT publish → subscriber, Kafka produce → consumer, fsync)");
        let raw_hops = vec![
            ("MQTT QoS 1 publish → subscriber", hops::mqtt(m.addr())?),
            ("Kafka produce (acks=all) → consumer", hops::kafka(&k)?),
            ("one fsync of 256 B", hops::fsync()?),
        ];
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
        println!("==> starting Prometheus on deploy/prometheus (every service scraped, the alert rules evaluated)");
        let prometheus = Prometheus::start(&[
            ("edgesync-agent", fleet.http_addrs()),
            ("edgesync-bridge", vec![bridge.http]),
            ("edgesync-reconciler", vec![reconciler.http]),
        ])
        .map_err(err)?;
        Ok(Self {
            started,
            broker,
            k,
            _m: m,
            raw_hops,
            reconciler,
            bridge,
            fleet,
            prometheus,
        })
    }

    /// Reads the output topics back, prints the report and says whether the run passed.
    fn report(&self, args: &Args, cuts: usize, drained: bool) -> Result<bool, String> {
        // What Prometheus, on the shipped config and rules, saw of the run.
        let ops = self.prometheus.view().map_err(err)?;
        let (fleet, bridge, reconciler) = (&self.fleet, &self.bridge, &self.reconciler);
        let codec = Codec::new(Limits::default()).map_err(err)?;
        let answers = fleet.answers();
        let mut seen = readback::read(&self.k, &codec, fleet, &answers)?;
        let to_converged = seen.converged_latencies(fleet, &answers);
        let report = Report {
            broker: self.broker.clone(),
            reconciler_sets: &args.reconciler_sets,
            total: answers.values().map(|a| a.len()).sum(),
            delivered: seen.delivered(&answers),
            duplicates: seen.duplicates,
            cuts,
            to_event: &seen.to_event,
            to_converged: &to_converged,
            bridge,
            reconciler,
            raw_hops: &self.raw_hops,
            wire_and_raw: (
                fleet.metric_sum("edgesync_agent_published_wire_bytes_total"),
                fleet.metric_sum("edgesync_agent_published_raw_bytes_total"),
            ),
            keys: seen.keys.len(),
            counters_ok: seen.counters_match(&answers),
            drained,
            dropped_and_dead: (
                fleet.metric_sum("edgesync_agent_dropped_events_total"),
                bridge.metric("edgesync_bridge_dead_lettered_total", "")
                    + reconciler.metric("edgesync_reconciler_dead_lettered_total", ""),
            ),
            ops,
        };
        println!(
            "\n==> report ({} agents, {} s of feeding, {cuts} link cuts, {} s in all)",
            args.agents,
            args.seconds,
            self.started.elapsed().as_secs()
        );
        report.print();
        Ok(report.ok())
    }
}

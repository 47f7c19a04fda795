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

mod hops;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use edgesync_core::Crdt;
use edgesync_schemas::{Codec, Limits};
use edgesync_servicekit::now_ms;
use edgesync_testkit::{
    unique, workspace_binary, Broker, FaultProxy, Kafka, Mosquitto, Prometheus, Service,
};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::Message;

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

/// What an agent answered: seq → when (ms since the epoch).
type Answered = Arc<Mutex<BTreeMap<u64, u64>>>;

/// Posts NDJSON events to an agent; the seqs it answered (durable), now.
fn post_events(
    agent: std::net::SocketAddr,
    body: &[u8],
) -> Result<(std::ops::RangeInclusive<u64>, u64), String> {
    let (status, _, text) =
        edgesync_testkit::http(agent, "POST", "/v1/events", "application/x-ndjson", body)
            .map_err(|e| e.to_string())?;
    if status != 200 {
        return Err(format!("{status}: {text}"));
    }
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
    let (a, b) = (
        v["first_seq"].as_u64().unwrap_or(1),
        v["last_seq"].as_u64().unwrap_or(0),
    );
    Ok((a..=b, now_ms()))
}

fn events_body(device: &str, start: u64, n: u64) -> Vec<u8> {
    let mut out = String::new();
    for i in start..start + n {
        let p = 100.0 + (i % 17) as f64 / 10.0;
        out.push_str(&format!(
            "{{\"stream\":\"pump.telemetry\",\"fields\":{{\"i\":{i},\"pressure_kpa\":{p}}},\"ops\":[\
             {{\"op\":\"inc\",\"key\":\"fleet/readings\",\"by\":1}},{{\"op\":\"inc\",\"key\":\"{device}/readings\",\"by\":1}},\
             {{\"op\":\"max\",\"key\":\"{device}/pressure-max\",\"value\":{p}}}]}}\n"
        ));
    }
    out.into_bytes()
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

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1]
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => fail(e),
    }
}

fn run(args: &Args) -> Result<bool, String> {
    let e = |x: &dyn std::fmt::Display| x.to_string();
    let started = Instant::now();
    let broker = args.broker.version();
    println!("==> starting Mosquitto and the Kafka broker ({broker})");
    let m = Mosquitto::start().map_err(|x| e(&x))?;
    let k = Kafka::start_on(args.broker).map_err(|x| e(&x))?;
    let kafka = format!("kafka.bootstrap_servers={}", k.bootstrap());
    println!("==> timing the raw hops on these brokers (MQTT publish → subscriber, Kafka produce → consumer, fsync)");
    let raw_hops = [
        ("MQTT QoS 1 publish → subscriber", hops::mqtt(m.addr())?),
        ("Kafka produce (acks=all) → consumer", hops::kafka(&k)?),
        ("one fsync of 256 B", hops::fsync()?),
    ];
    let bin = |name: &str| -> Result<PathBuf, String> {
        let p = workspace_binary(name);
        p.exists()
            .then_some(p.clone())
            .ok_or_else(|| format!("{} missing: build the workspace first", p.display()))
    };
    println!("==> starting edgesync-reconciler and edgesync-bridge");
    let reconciler = Service::start(
        bin("edgesync-reconciler")?,
        None,
        "reconciler",
        &[
            kafka.clone(),
            "kafka.partitions=4".into(),
            "state_dir=\"{dir}/state\"".into(),
        ]
        .into_iter()
        .chain(args.reconciler_sets.iter().cloned())
        .collect::<Vec<_>>(),
    )
    .map_err(|x| e(&x))?;
    let bridge = Service::start(
        bin("edgesync-bridge")?,
        None,
        "bridge",
        &[
            kafka.clone(),
            format!("mqtt.port={}", m.port()),
            "kafka.partitions=4".into(),
        ],
    )
    .map_err(|x| e(&x))?;
    println!(
        "==> starting {} edge agents, each behind a fault proxy (latency {} ms, bandwidth {})",
        args.agents,
        args.link_latency_ms,
        if args.link_kib_per_s == 0 {
            "unlimited".to_owned()
        } else {
            format!("{} KiB/s", args.link_kib_per_s)
        }
    );
    let mut agents = Vec::new();
    for i in 0..args.agents {
        let device = format!("pump-{i:04}");
        let proxy = FaultProxy::start(m.addr()).map_err(|x| e(&x))?;
        proxy.set_latency(Duration::from_millis(args.link_latency_ms));
        if args.link_kib_per_s > 0 {
            proxy.set_bandwidth(Some(args.link_kib_per_s * 1024));
        }
        let agent = Service::start(
            bin("edgesync-agent")?,
            Some("run"),
            &device,
            &[
                format!("device.id={device}"),
                "spool.dir=\"{dir}/spool\"".into(),
                format!("uplink.port={}", proxy.addr().port()),
                "uplink.keep_alive_secs=5".into(),
                "uplink.backoff_min_ms=200".into(),
                "uplink.backoff_max_ms=2000".into(),
                "uplink.resend_timeout_ms=5000".into(),
            ],
        )
        .map_err(|x| e(&x))?;
        agents.push((device, proxy, agent, Answered::default()));
    }
    println!("==> starting Prometheus on deploy/prometheus (every service scraped, the alert rules evaluated)");
    let prometheus = Prometheus::start(&[
        ("edgesync-agent", agents.iter().map(|a| a.2.http).collect()),
        ("edgesync-bridge", vec![bridge.http]),
        ("edgesync-reconciler", vec![reconciler.http]),
    ])
    .map_err(|x| e(&x))?;
    // Warm up: one event through every agent, acknowledged, before the timed feed, so that the
    // figures are the running pipeline's (consumer groups assigned, producers have ids) and
    // not its start-up.
    println!("==> warming up: one event per agent, end to end");
    let warm_deadline = Instant::now() + Duration::from_secs(120);
    // Delivered and counted like any other, but not in the latency figures.
    let mut warm: BTreeSet<(String, u64)> = BTreeSet::new();
    for (device, _, agent, answered) in &agents {
        let body = events_body(device, 0, 1);
        let (seqs, t) = post_events(agent.http, &body)
            .map_err(|x| format!("{device}: warm-up event refused: {x}"))?;
        let mut ans = answered.lock().unwrap_or_else(|p| p.into_inner());
        for seq in seqs {
            warm.insert((device.clone(), seq));
            ans.insert(seq, t);
        }
    }
    while agents
        .iter()
        .any(|a| a.2.metric("edgesync_agent_acked_watermark", "") < 1.0)
    {
        if Instant::now() > warm_deadline {
            return Err("warm-up: an agent was not acknowledged within 120 s".into());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    println!(
        "==> feeding {} events/s per agent for {} s; one link cut for {} s every {} s",
        args.rate, args.seconds, args.outage_secs, args.outage_every
    );
    let stop = Arc::new(AtomicBool::new(false));
    let producers: Vec<_> = agents
        .iter()
        .map(|(device, _, agent, answered)| {
            let (device, http, answered, stop) = (
                device.clone(),
                agent.http,
                Arc::clone(answered),
                Arc::clone(&stop),
            );
            let rate = args.rate.max(1);
            std::thread::spawn(move || {
                // Ten requests a second, each with a tenth of the rate.
                let per = rate.div_ceil(10);
                let mut next = 0u64;
                let mut tick = Instant::now();
                while !stop.load(Ordering::SeqCst) {
                    let body = events_body(&device, next, per);
                    if let Ok((seqs, t)) = post_events(http, &body) {
                        let mut ans = answered.lock().unwrap_or_else(|p| p.into_inner());
                        ans.extend(seqs.map(|s| (s, t)));
                        next += per;
                    }
                    tick += Duration::from_millis(100);
                    std::thread::sleep(tick.saturating_duration_since(Instant::now()));
                }
            })
        })
        .collect();
    let feed_until = Instant::now() + Duration::from_secs(args.seconds);
    let mut outage: Option<(usize, Instant)> = None;
    let mut next_cut = Instant::now() + Duration::from_secs(args.outage_every.max(1));
    let mut cuts = 0;
    let mut last_report = Instant::now();
    while Instant::now() < feed_until {
        std::thread::sleep(Duration::from_millis(200));
        if let Some((i, until)) = outage {
            if Instant::now() >= until {
                agents[i].1.heal();
                outage = None;
            }
        } else if args.outage_every > 0 && Instant::now() >= next_cut {
            let i = cuts % agents.len();
            agents[i].1.cut();
            cuts += 1;
            let until = Instant::now() + Duration::from_secs(args.outage_secs);
            outage = Some((i, until));
            next_cut = until + Duration::from_secs(args.outage_every);
        }
        if last_report.elapsed() >= Duration::from_secs(3) {
            last_report = Instant::now();
            let answered: usize = agents
                .iter()
                .map(|a| a.3.lock().map(|x| x.len()).unwrap_or(0))
                .sum();
            let acked: f64 = agents
                .iter()
                .map(|a| a.2.metric("edgesync_agent_acked_watermark", ""))
                .sum();
            let released = reconciler.metric("edgesync_reconciler_events_total", "");
            println!(
                "    t={:>3}s  answered {answered:>7}  in Kafka {released:>7.0}  acknowledged {acked:>7.0}  links cut so far {cuts}",
                started.elapsed().as_secs()
            );
        }
    }
    stop.store(true, Ordering::SeqCst);
    producers.into_iter().for_each(|p| {
        let _ = p.join();
    });
    for a in &agents {
        a.1.heal();
    }
    println!("==> feeding stopped; links healed; waiting for every spool to drain");
    let last: Vec<u64> = agents
        .iter()
        .map(|a| {
            a.3.lock()
                .map(|x| x.keys().next_back().copied().unwrap_or(0))
                .unwrap_or(0)
        })
        .collect();
    let drain_deadline = Instant::now() + Duration::from_secs(180);
    let drained = |a: &Service, last: u64| {
        a.metric("edgesync_agent_acked_watermark", "") as u64 >= last
            && a.metric("edgesync_agent_spool_events", "") == 0.0
    };
    while Instant::now() < drain_deadline
        && !agents.iter().zip(&last).all(|(a, l)| drained(&a.2, *l))
    {
        std::thread::sleep(Duration::from_millis(500));
    }
    let all_drained = agents.iter().zip(&last).all(|(a, l)| drained(&a.2, *l));
    // What Prometheus, on the shipped config and rules, saw of the run.
    let ops = prometheus.view().map_err(|x| e(&x))?;

    // The report, from the output topics.
    let codec = Codec::new(Limits::default()).map_err(|x| e(&x))?;
    let c: BaseConsumer = k
        .client_config()
        .set("group.id", unique("report"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .map_err(|x| e(&x))?;
    c.subscribe(&["edgesync.events", "edgesync.state"])
        .map_err(|x| e(&x))?;
    let mut seen: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();
    let mut duplicates = 0u64;
    let mut latencies = Vec::new();
    let mut state: BTreeMap<String, u128> = BTreeMap::new();
    // Per device, its own counter's converged records: (the device's seq they include, when).
    let mut converged: BTreeMap<String, Vec<(u64, u64)>> = BTreeMap::new();
    let mut keys = BTreeSet::new();
    let answered: BTreeMap<String, BTreeMap<u64, u64>> = agents
        .iter()
        .map(|a| {
            (
                a.0.clone(),
                a.3.lock().map(|x| x.clone()).unwrap_or_default(),
            )
        })
        .collect();
    let total: usize = answered.values().map(BTreeMap::len).sum();
    let mut idle = Instant::now();
    let mut events_read = 0usize;
    while idle.elapsed() < Duration::from_secs(3)
        || events_read < total && idle.elapsed() < Duration::from_secs(30)
    {
        let Some(Ok(msg)) = c.poll(Duration::from_millis(200)) else {
            continue;
        };
        idle = Instant::now();
        let payload = msg.payload().unwrap_or_default();
        if msg.topic() == "edgesync.events" {
            events_read += 1;
            let Ok(ev) = codec.decode_event(payload) else {
                continue;
            };
            let device = ev.dot.replica.device.to_string();
            if !seen.entry(device.clone()).or_default().insert(ev.dot.seq) {
                duplicates += 1;
            }
            if let (Some(at), Some(ts)) = (
                answered.get(&device).and_then(|a| a.get(&ev.dot.seq)),
                msg.timestamp().to_millis(),
            ) {
                if !warm.contains(&(device.clone(), ev.dot.seq)) {
                    latencies.push((ts as u64).saturating_sub(*at));
                }
            }
        } else if let Ok(s) = codec.decode_state_record(payload) {
            keys.insert(s.key.clone());
            if let (Some(device), Some(ts)) =
                (s.key.strip_suffix("/readings"), msg.timestamp().to_millis())
            {
                if let Some((_, seq)) = s
                    .version_vector
                    .iter()
                    .find(|(r, _)| r.device.as_str() == device)
                {
                    converged
                        .entry(device.to_owned())
                        .or_default()
                        .push((seq, ts as u64));
                }
            }
            if let Crdt::GCounter(g) = &s.state {
                state.insert(s.key.clone(), g.value());
            }
        }
    }
    let delivered: usize = answered
        .iter()
        .map(|(d, a)| {
            a.keys()
                .filter(|s| seen.get(d).is_some_and(|x| x.contains(s)))
                .count()
        })
        .sum();
    let missing = total - delivered;
    let mut expect: BTreeMap<String, u128> = answered
        .iter()
        .map(|(d, a)| (format!("{d}/readings"), a.len() as u128))
        .collect();
    expect.insert("fleet/readings".into(), total as u128);
    let counters_ok = expect.iter().all(|(k, v)| state.get(k) == Some(v));
    latencies.sort_unstable();
    // Append → the first converged record of the device's counter that includes the event.
    let mut to_converged = Vec::new();
    for (device, recs) in &mut converged {
        recs.sort_unstable();
        for (seq, at) in answered.get(device).into_iter().flatten() {
            if warm.contains(&(device.clone(), *seq)) {
                continue;
            }
            let i = recs.partition_point(|(s, _)| s < seq);
            if let Some((_, ts)) = recs.get(i) {
                to_converged.push(ts.saturating_sub(*at));
            }
        }
    }
    to_converged.sort_unstable();
    let wire: f64 = agents
        .iter()
        .map(|a| a.2.metric("edgesync_agent_published_wire_bytes_total", ""))
        .sum();
    let raw: f64 = agents
        .iter()
        .map(|a| a.2.metric("edgesync_agent_published_raw_bytes_total", ""))
        .sum();
    let dropped: f64 = agents
        .iter()
        .map(|a| a.2.metric("edgesync_agent_dropped_events_total", ""))
        .sum();
    let dead = bridge.metric("edgesync_bridge_dead_lettered_total", "")
        + reconciler.metric("edgesync_reconciler_dead_lettered_total", "");
    let ops_ok = ops.targets_up == ops.targets && ops.unhealthy_rules.is_empty() && ops.rules > 0;
    let ok =
        missing == 0 && duplicates == 0 && counters_ok && all_drained && dropped == 0.0 && ops_ok;
    println!(
        "\n==> report ({} agents, {} s of feeding, {cuts} link cuts, {} s in all)",
        args.agents,
        args.seconds,
        started.elapsed().as_secs()
    );
    println!("| | |\n|---|---|");
    println!("| Kafka broker | {broker} |");
    if !args.reconciler_sets.is_empty() {
        println!(
            "| reconciler settings | `{}` |",
            args.reconciler_sets.join("`, `")
        );
    }
    println!("| events answered by agents (durable at the edge) | {total} |");
    println!("| delivered to edgesync.events | {delivered} |");
    println!("| missing / duplicated | {missing} / {duplicates} |");
    println!(
        "| completeness | {:.4} % |",
        if total == 0 {
            100.0
        } else {
            delivered as f64 * 100.0 / total as f64
        }
    );
    println!(
        "| latency, agent answer → event in Kafka | p50 {} ms, p99 {} ms, max {} ms{} |",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies.last().copied().unwrap_or(0),
        if cuts > 0 { " (outages included)" } else { "" }
    );
    println!(
        "| latency, agent answer → converged record | p50 {} ms, p99 {} ms, max {} ms ({} events) |",
        percentile(&to_converged, 0.5),
        percentile(&to_converged, 0.99),
        to_converged.last().copied().unwrap_or(0),
        to_converged.len()
    );
    // Where the time goes, from the services' own histograms (bucket upper bounds).
    let hist = |svc: &Service, name: &str| -> String {
        let text = svc.get("/metrics").map(|(_, t)| t).unwrap_or_default();
        match (
            bucket_quantile_ms(&text, name, 0.5),
            bucket_quantile_ms(&text, name, 0.99),
        ) {
            (Some(a), Some(b)) => format!("p50 ≤ {a:.1} ms, p99 ≤ {b:.1} ms"),
            _ => "no samples".into(),
        }
    };
    println!(
        "| bridge: MQTT receive → Kafka confirmed (its histogram) | {} |",
        hist(&bridge, "edgesync_bridge_produce_latency_seconds")
    );
    println!(
        "| reconciler: event HLC → converged emit (its histogram) | {} |",
        hist(
            &reconciler,
            "edgesync_reconciler_convergence_latency_seconds"
        )
    );
    for (name, us) in &raw_hops {
        println!(
            "| raw hop: {name} | p50 {:.2} ms, p99 {:.2} ms |",
            percentile(us, 0.5) as f64 / 1000.0,
            percentile(us, 0.99) as f64 / 1000.0
        );
    }
    println!(
        "| bytes on the wire / raw spool bytes | {:.0} / {:.0} ({:.1}x smaller) |",
        wire,
        raw,
        if wire > 0.0 { raw / wire } else { 0.0 }
    );
    println!(
        "| converged keys | {} (counters equal the reference: {}) |",
        keys.len(),
        if counters_ok { "yes" } else { "NO" }
    );
    println!(
        "| spools drained behind their acknowledged watermark | {} |",
        if all_drained { "yes" } else { "NO" }
    );
    println!("| dropped at the edge / dead letters | {dropped:.0} / {dead:.0} |");
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

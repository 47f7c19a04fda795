//! The agent's uplink against a raw rumqttc publisher of the same bytes, on the same broker
//! set-up, in the same run.
//!
//! `cargo bench -p edgesync-agent --bench uplink` fills a spool offline with N telemetry
//! events through the agent's own ingest (library API, requests of 100 events: two fields and
//! a tag, a G-counter increment and a rollup sample each, stamped by a 10 Hz sensor clock),
//! then, on a fresh Mosquitto per run, times two sides:
//!
//! - **agent**: the real uplink (`uplink::run`, the library, configured from
//!   `deploy/edge-agent.toml` as shipped) on a copy of that spool: it reads the spool, builds
//!   and encodes each batch, publishes it at QoS 1, and moves its window on the server's acks;
//! - **raw**: one rumqttc client publishing the exact payloads the agent published (captured
//!   by the subscriber in the latest agent run) on the same topic, at QoS 1, with the same
//!   in-flight window (`uplink.max_inflight` unacknowledged PUBLISHes), options made by the
//!   agent's own `UplinkConfig::mqtt_options`.
//!
//! Both sides publish to the same subscriber playing the server (bridge + reconciler): it
//! decodes each batch, applies it to the protocol's `Server` and publishes the watermark,
//! retained, on the device's ack topic, in both runs (so the machine carries the same work;
//! only the agent listens to the acks). Each side is timed from its first batch at the
//! The raw side is timed from its first publish to its last PUBACK. The agent, whose PUBACKs
//! its library does not expose, from its first batch at the subscriber to its last there:
//! Mosquitto hands a message to the subscriber in the same step as it sends the PUBACK, and
//! with the agent's window the subscriber is never more than a few batches behind (under a
//! millisecond), so that is its last PUBACK. The ratio compares these two: the time to put
//! the same bytes through the broker at QoS 1. The agent is also timed to the moment its
//! spool is acknowledged and trimmed to the end (the last server ack received and applied),
//! which adds one round trip through the server and a trim; the raw side's second figure is
//! the subscriber done with its last batch (it falls behind a raw publisher).
//!
//! Sides alternate (agent, raw, raw, agent, ...) over `UPLINK_BENCH_ROUNDS` rounds (default
//! 4). Prints every run (events/s, batches/s, MB/s of payload), the means, the ratio agent /
//! raw with its spread over rounds (target >= 0.8), and CPU per event in the agent's
//! window: the agent's threads (runtime, spool writer, RocksDB), the server stand-in and
//! Mosquitto. Knobs: `UPLINK_BENCH_EVENTS` (N, default 500,000), `UPLINK_BENCH_SET` (`;`
//! separated `--set` values for the agent, e.g. `uplink.max_inflight=8`),
//! `UPLINK_BENCH_ONLY=agent|raw`, `UPLINK_BENCH_PERF=<file>` (`perf record -g` of this process
//! for the first agent run's first 5 s of sending).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use edgesync_agent::config::Config;
use edgesync_agent::ingest::{Ingest, IngestEvent, Op};
use edgesync_agent::lanes::OpenLane;
use edgesync_agent::metrics::AgentMetrics;
use edgesync_agent::spool::{Clock, Spool};
use edgesync_agent::uplink::{self, UplinkConfig, UplinkDeps};
use edgesync_core::{DeviceId, Value};
use edgesync_protocol::{Server, ServerConfig};
use edgesync_schemas::{topics, Ack, Codec, Limits};
use edgesync_servicekit::config::ServiceConfig;
use edgesync_testkit::cpu::{process_secs, since, thread_secs};
use edgesync_testkit::{deploy, knob, Mosquitto, MosquittoOptions};
use rumqttc::{AsyncClient, Client, Event as MqttEvent, MqttOptions, Packet, QoS};
use tokio_util::sync::CancellationToken;

const DEVICE: &str = "pump-0042";
const PER_REQUEST: u64 = 100;

/// The agent's configuration as shipped, pointed at `port`, plus `UPLINK_BENCH_SET`.
fn agent_config(port: u16, spool: &Path) -> Config {
    let mut sets = vec![
        format!("device.id={DEVICE}"),
        format!("uplink.port={port}"),
        format!("spool.dir=\"{}\"", spool.display()),
    ];
    if let Ok(s) = std::env::var("UPLINK_BENCH_SET") {
        sets.extend(s.split(';').filter(|x| !x.is_empty()).map(str::to_owned));
    }
    Config::load(Some(&deploy("edge-agent.toml")), [], &sets).unwrap()
}

/// A 10 Hz sensor: every reading of the clock is 100 ms after the previous one.
fn sensor_clock() -> Clock {
    let t = Arc::new(AtomicU64::new(1_700_000_000_000));
    Arc::new(move || t.fetch_add(100, Ordering::Relaxed))
}

fn reading(i: u64) -> IngestEvent {
    IngestEvent {
        stream: "pump.telemetry".into(),
        schema_version: 1,
        fields: BTreeMap::from([
            ("i".into(), Value::Long(i as i64)),
            (
                "pressure_kpa".into(),
                Value::Double(101.0 + (i % 50) as f64 / 10.0),
            ),
        ]),
        tags: BTreeMap::from([("site".into(), "north".into())]),
        ops: vec![
            Op::Inc {
                key: "readings".into(),
                by: 1,
            },
            Op::Rollup {
                key: "pressure".into(),
                value: 101.5,
                bucket_ms: 60_000,
            },
        ],
    }
}

/// Fills a spool in `dir` with `n` events through the agent's ingest, then closes it.
fn fill(dir: &Path, n: u64) {
    let cfg = agent_config(1883, dir);
    let spool = Arc::new(Spool::open(dir, cfg.spool_config()).unwrap());
    let codec = Arc::new(Codec::new(Limits::default()).unwrap());
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = Arc::new(AgentMetrics::register(&mut registry));
    let (ingest, thread) = Ingest::start(
        Arc::clone(&spool),
        codec,
        DeviceId::new(DEVICE).unwrap(),
        cfg.ingest_config(),
        sensor_clock(),
        metrics,
        Arc::new(tokio::sync::Notify::new()),
        Arc::default(),
    )
    .unwrap();
    // Four producers, so the ingest thread groups requests as it does under load.
    let next = Arc::new(AtomicU64::new(0));
    let producers: Vec<_> = (0..4)
        .map(|_| {
            let (ingest, next) = (ingest.clone(), Arc::clone(&next));
            std::thread::spawn(move || loop {
                let start = next.fetch_add(PER_REQUEST, Ordering::SeqCst);
                if start >= n {
                    break;
                }
                let events = (start..(start + PER_REQUEST).min(n)).map(reading).collect();
                ingest.append_blocking("api", events).unwrap();
            })
        })
        .collect();
    for p in producers {
        p.join().unwrap();
    }
    drop(ingest);
    thread.join().unwrap();
    assert_eq!(spool.meta().events, n);
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

/// What the subscriber playing the server saw.
#[derive(Default)]
struct Seen {
    payloads: Vec<Vec<u8>>,
    first: Option<Instant>,
    last: Option<Instant>,
}

/// The server stand-in: subscribed to every batch topic; decodes, applies and acknowledges
/// (retained) each batch, as bridge + reconciler do.
struct ServerStandIn {
    seen: Arc<Mutex<Seen>>,
    watermark: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    client: Client,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ServerStandIn {
    fn start(addr: std::net::SocketAddr) -> Self {
        let mut o = MqttOptions::new("bench-server", addr.ip().to_string(), addr.port());
        o.set_max_packet_size(4 << 20, 4 << 20);
        o.set_keep_alive(Duration::from_secs(30));
        let (client, mut conn) = Client::new(o, 10_000);
        client
            .subscribe(topics::BATCH_FILTER, QoS::AtLeastOnce)
            .unwrap();
        let seen = Arc::new(Mutex::new(Seen::default()));
        let watermark = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let subscribed = Arc::new(AtomicBool::new(false));
        let (s, w, st, sub, c) = (
            Arc::clone(&seen),
            Arc::clone(&watermark),
            Arc::clone(&stop),
            Arc::clone(&subscribed),
            client.clone(),
        );
        let thread = std::thread::Builder::new()
            .name("server".into())
            .spawn(move || {
                let codec = Codec::new(Limits::default()).unwrap();
                let mut server = Server::new(ServerConfig::default());
                for ev in conn.iter() {
                    let p = match ev {
                        Ok(MqttEvent::Incoming(Packet::SubAck(_))) => {
                            sub.store(true, Ordering::SeqCst);
                            continue;
                        }
                        Ok(MqttEvent::Incoming(Packet::Publish(p))) => p,
                        Ok(_) => continue,
                        Err(_) if st.load(Ordering::SeqCst) => break,
                        Err(_) => continue,
                    };
                    let now = Instant::now();
                    {
                        let mut s = s.lock().unwrap();
                        s.first.get_or_insert(now);
                        s.last = Some(now);
                        s.payloads.push(p.payload.to_vec());
                    }
                    let batch = codec.decode_batch(&p.payload).unwrap();
                    let replica = batch.replica().clone();
                    let a = server.apply(batch, 0);
                    let ack = Ack {
                        replica: replica.clone(),
                        watermark: a.watermark,
                        acked_at_ms: 0,
                    };
                    c.publish(
                        topics::ack(&replica.device),
                        QoS::AtLeastOnce,
                        true,
                        codec.encode_ack(&ack).unwrap(),
                    )
                    .unwrap();
                    w.store(a.watermark, Ordering::SeqCst);
                }
            })
            .unwrap();
        while !subscribed.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(5));
        }
        Self {
            seen,
            watermark,
            stop,
            client,
            thread: Some(thread),
        }
    }

    fn wait_for(&self, watermark: u64, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.watermark.load(Ordering::SeqCst) < watermark {
            assert!(
                Instant::now() < deadline,
                "the server never saw seq {watermark}"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn finish(mut self) -> Seen {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.client.disconnect();
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        std::mem::take(&mut *self.seen.lock().unwrap())
    }
}

/// One timed run of one side.
struct Run {
    /// Agent: first batch to last batch at the subscriber (the PUBACK goes out in the same
    /// step). Raw: first publish to last PUBACK.
    secs: f64,
    /// Agent: first batch at the subscriber to the spool acknowledged and trimmed. Raw: first
    /// publish to the subscriber done with the last batch.
    secs_to_ack: f64,
    batches: u64,
    bytes: u64,
    /// CPU seconds by thread group of this process, and Mosquitto's, over the run.
    cpu: BTreeMap<String, f64>,
    mosquitto: f64,
}

/// A fresh broker: Nagle off on its client sockets unless `UPLINK_BENCH_NAGLE=1`.
fn broker() -> Mosquitto {
    let nagle: u8 = knob("UPLINK_BENCH_NAGLE", 0);
    Mosquitto::start_with(MosquittoOptions {
        nagle: nagle != 0,
        ..MosquittoOptions::default()
    })
    .unwrap()
}

fn agent(n: u64, template: &Path, perf: Option<&str>) -> (Run, Vec<Vec<u8>>) {
    let mut m = broker();
    let mpid = m.process().pid().unwrap();
    let server = ServerStandIn::start(m.addr());
    let dir = tempfile::tempdir().unwrap();
    copy_dir(template, dir.path());
    let cfg = agent_config(m.port(), dir.path());
    let spool = Arc::new(Spool::open(dir.path(), cfg.spool_config()).unwrap());
    assert_eq!(spool.meta().events, n);
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = Arc::new(AgentMetrics::register(&mut registry));
    let deps = UplinkDeps {
        lanes: vec![OpenLane::single(Arc::clone(&spool))],
        codec: Arc::new(Codec::new(Limits::default()).unwrap()),
        appended: Arc::new(tokio::sync::Notify::new()),
        metrics: Arc::clone(&metrics),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .thread_name("agent")
        .enable_all()
        .build()
        .unwrap();
    let pid = std::process::id();
    let (cpu0, m0) = (thread_secs(pid), process_secs(mpid));
    let stop = CancellationToken::new();
    let ucfg: UplinkConfig = edgesync_agent::service::uplink_config(&cfg).unwrap();
    let task = rt.spawn(uplink::run(ucfg, deps, stop.clone()));
    let mut recording = None;
    if let Some(file) = perf {
        while server.seen.lock().unwrap().first.is_none() {
            std::thread::sleep(Duration::from_millis(1));
        }
        recording = Some(
            std::process::Command::new("perf")
                .args([
                    "record",
                    "-g",
                    "-o",
                    file,
                    "-p",
                    &pid.to_string(),
                    "--",
                    "sleep",
                    "5",
                ])
                .spawn()
                .unwrap(),
        );
    }
    server.wait_for(n, Duration::from_secs(600));
    let deadline = Instant::now() + Duration::from_secs(60);
    while spool.meta().acked < n || spool.meta().events > 0 {
        assert!(Instant::now() < deadline, "not trimmed: {:?}", spool.meta());
        std::thread::sleep(Duration::from_millis(1));
    }
    let trimmed = Instant::now();
    let (cpu1, m1) = (thread_secs(pid), process_secs(mpid));
    stop.cancel();
    rt.block_on(task).unwrap().unwrap();
    if let Some(mut r) = recording {
        r.wait().unwrap();
    }
    let seen = server.finish();
    let (first, last) = (seen.first.unwrap(), seen.last.unwrap());
    let run = Run {
        secs: (last - first).as_secs_f64(),
        secs_to_ack: (trimmed - first).as_secs_f64(),
        batches: metrics.batches.get(),
        bytes: metrics.wire_bytes.get(),
        cpu: since(&cpu0, &cpu1),
        mosquitto: m1 - m0,
    };
    assert_eq!(run.batches, seen.payloads.len() as u64);
    (run, seen.payloads)
}

fn raw(n: u64, payloads: &[Vec<u8>]) -> Run {
    let mut m = broker();
    let mpid = m.process().pid().unwrap();
    let server = ServerStandIn::start(m.addr());
    let dir = tempfile::tempdir().unwrap();
    let cfg = agent_config(m.port(), dir.path());
    let ucfg = edgesync_agent::service::uplink_config(&cfg).unwrap();
    let mut opts: MqttOptions = ucfg.mqtt_options(DEVICE);
    opts.set_inflight(cfg.uplink.max_inflight as u16);
    let topic = topics::batch(&ucfg.device);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .thread_name("raw")
        .enable_all()
        .build()
        .unwrap();
    let pid = std::process::id();
    let (cpu0, m0) = (thread_secs(pid), process_secs(mpid));
    let total = payloads.len() as u64;
    let (started, pubacked) = rt.block_on(async {
        let (client, mut events) = AsyncClient::new(opts, 64);
        loop {
            if let Ok(MqttEvent::Incoming(Packet::ConnAck(_))) = events.poll().await {
                break;
            }
        }
        let owned: Vec<Vec<u8>> = payloads.to_vec();
        let started = Instant::now();
        let publisher = tokio::spawn(async move {
            for p in owned {
                client
                    .publish(topic.as_str(), QoS::AtLeastOnce, false, p)
                    .await
                    .unwrap();
            }
            client
        });
        let mut acked = 0u64;
        while acked < total {
            if let MqttEvent::Incoming(Packet::PubAck(_)) = events.poll().await.unwrap() {
                acked += 1;
            }
        }
        let pubacked = Instant::now();
        let client = publisher.await.unwrap();
        let _ = client.disconnect().await;
        let _ = tokio::time::timeout(Duration::from_secs(1), events.poll()).await;
        (started, pubacked)
    });
    server.wait_for(n, Duration::from_secs(600));
    let (cpu1, m1) = (thread_secs(pid), process_secs(mpid));
    let seen = server.finish();
    Run {
        secs: (pubacked - started).as_secs_f64(),
        secs_to_ack: (seen.last.unwrap() - started).as_secs_f64(),
        batches: total,
        bytes: payloads.iter().map(|p| p.len() as u64).sum(),
        cpu: since(&cpu0, &cpu1),
        mosquitto: m1 - m0,
    }
}

/// CPU seconds of the thread groups whose name starts with one of `prefixes`.
fn cpu_of(r: &Run, prefixes: &[&str]) -> f64 {
    r.cpu
        .iter()
        .filter(|(k, _)| prefixes.iter().any(|p| k.starts_with(p)))
        .map(|(_, v)| v)
        .sum()
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

fn main() {
    let n: u64 = knob("UPLINK_BENCH_EVENTS", 500_000);
    let rounds: usize = knob("UPLINK_BENCH_ROUNDS", 4);
    let only: String = knob("UPLINK_BENCH_ONLY", String::new());
    let perf: String = knob("UPLINK_BENCH_PERF", String::new());
    let template = tempfile::tempdir().unwrap();
    let t = Instant::now();
    fill(template.path(), n);
    println!(
        "spool filled offline with {n} events through ingest in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let cfg = agent_config(1883, template.path());
    let u = &cfg.uplink;
    let (mut agents, mut raws): (Vec<Run>, Vec<Run>) = (Vec::new(), Vec::new());
    let mut payloads: Vec<Vec<u8>> = Vec::new();
    let mut ratios = Vec::new();
    println!(
        "| run | side | events/s | batches/s | MB/s | s to last PUBACK | s (agent: to acknowledged and trimmed; raw: to the subscriber's last batch) |"
    );
    println!("|---|---|---|---|---|---|---|");
    for round in 0..rounds {
        let order = if round % 2 == 0 {
            ["agent", "raw"]
        } else {
            ["raw", "agent"]
        };
        let (mut a, mut r) = (None, None);
        for side in order {
            if !only.is_empty() && only != side {
                continue;
            }
            let run = if side == "agent" {
                let p = (round == 0 && !perf.is_empty()).then_some(perf.as_str());
                let (run, sent) = agent(n, template.path(), p);
                payloads = sent;
                run
            } else {
                if payloads.is_empty() {
                    // The raw side needs the agent's bytes: one untimed agent run first.
                    payloads = agent(n, template.path(), None).1;
                }
                raw(n, &payloads)
            };
            println!(
                "| {} | {side} | {:.0} | {:.0} | {:.1} | {:.3} | {:.3} |",
                round + 1,
                n as f64 / run.secs,
                run.batches as f64 / run.secs,
                run.bytes as f64 / run.secs / 1e6,
                run.secs,
                run.secs_to_ack
            );
            if side == "agent" {
                a = Some(n as f64 / run.secs);
                agents.push(run);
            } else {
                r = Some(n as f64 / run.secs);
                raws.push(run);
            }
        }
        if let (Some(a), Some(r)) = (a, r) {
            ratios.push(a / r);
        }
    }
    let rate = |v: &[Run]| mean(&v.iter().map(|r| n as f64 / r.secs).collect::<Vec<_>>());
    let payload_bytes: u64 = payloads.iter().map(|p| p.len() as u64).sum();
    println!(
        "\n{n} events in {} batches ({:.0} B of payload per batch, {:.1} B per event), window {} batches of at most {} events / {} B, fresh Mosquitto per run",
        payloads.len(),
        payload_bytes as f64 / payloads.len().max(1) as f64,
        payload_bytes as f64 / n as f64,
        u.max_inflight,
        u.max_batch_events,
        u.max_batch_bytes
    );
    if !agents.is_empty() {
        println!(
            "agent: {:.0} events/s (to last PUBACK), {:.0} events/s (to acknowledged and trimmed)",
            rate(&agents),
            mean(
                &agents
                    .iter()
                    .map(|r| n as f64 / r.secs_to_ack)
                    .collect::<Vec<_>>()
            )
        );
    }
    if !raws.is_empty() {
        println!("raw:   {:.0} events/s", rate(&raws));
    }
    if !ratios.is_empty() {
        let lo = ratios.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = ratios.iter().copied().fold(0.0, f64::max);
        let each: Vec<String> = ratios.iter().map(|r| format!("{r:.2}")).collect();
        println!(
            "ratio agent / raw: {:.2} (rounds: {}; {lo:.2}..{hi:.2}) target >= 0.8",
            mean(&ratios),
            each.join(", ")
        );
    }
    let per_event = |v: &[Run], f: &dyn Fn(&Run) -> f64| {
        mean(&v.iter().map(|r| f(r) / n as f64 * 1e6).collect::<Vec<_>>())
    };
    println!("CPU µs per event over each run (agent: whole uplink run; groups by thread name):");
    for (name, v) in [("agent", &agents), ("raw", &raws)] {
        if v.is_empty() {
            continue;
        }
        let own: &[&str] = if name == "agent" {
            &["agent", "spool-writer", "rocksdb"]
        } else {
            &["raw"]
        };
        let mut groups: BTreeMap<String, Vec<f64>> = BTreeMap::new();
        for r in v.iter() {
            for (k, s) in &r.cpu {
                groups.entry(k.clone()).or_default().push(*s);
            }
        }
        let detail: Vec<String> = groups
            .iter()
            .filter(|(_, s)| mean(s) / n as f64 * 1e6 >= 0.005)
            .map(|(k, s)| format!("{k} {:.2}", mean(s) / n as f64 * 1e6))
            .collect();
        println!(
            "  {name}: {:.2} (its threads), server stand-in {:.2}, Mosquitto {:.2}; by thread: {}",
            per_event(v, &|r| cpu_of(r, own)),
            per_event(v, &|r| cpu_of(r, &["server"])),
            per_event(v, &|r| r.mosquitto),
            detail.join(", ")
        );
    }
}

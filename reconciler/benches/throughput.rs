//! Reconciler throughput against the broker alone confirming the same output records, on the
//! same broker, in the same run.
//!
//! `cargo bench -p edgesync-reconciler --bench throughput` starts a broker (Apache Kafka,
//! single node, by default), writes N delta batches (100 devices, 100 events each, with
//! G-counter and rollup deltas) to a 4-partition deltas topic, and times two sides:
//!
//! - **events alone** (the baseline): the exact records the reconciler writes to
//!   `edgesync.events` — one per event, byte for byte (encoding is deterministic), keyed by
//!   device, on the partition of their batch — produced from memory and confirmed, by a
//!   producer made from the reconciler's own configuration (idempotent, `acks=all`, lz4,
//!   `RECONCILER_BENCH_SET` applied), timed from the first send to the last confirmation. It is
//!   what any implementation that writes one record per event costs the broker, with the
//!   leanest client (a delivery callback that counts, no per-record future).
//! - **reconciler**: the `edgesync-reconciler` binary on its defaults — decode, causal
//!   de-duplication, release in dot order, one record per event, re-keyed deltas, acks,
//!   RocksDB state with fsync, the key stage joining and emitting converged state — timed from
//!   its first batch until every event is confirmed in the events topic.
//!
//! Each run gets a fresh broker holding the same N batches; the sides alternate over
//! `RECONCILER_BENCH_ROUNDS` rounds (default 3; a, b, b, a, a, b, ...), so broker drift falls
//! on both. Prints every run, the means, the ratio reconciler / events alone (target: at
//! least 0.7) and where the CPU went in each side's timed window: µs per event of each thread
//! group of the reconciler or the baseline's producer, and of the broker.
//!
//! Before the timed side, both sides run once, untimed, on a warm-up workload of their own
//! topics and groups on the same broker (`RECONCILER_BENCH_WARMUP` batches, default 3,000; 0
//! for none), so that neither is timed on a JVM still compiling.
//!
//! Knobs: `RECONCILER_BENCH_BATCHES` (N, default 6,000 = 600k events; smaller runs are
//! dominated by start-up), `RECONCILER_BENCH_SET` (settings for both sides, e.g.
//! `kafka.properties={ "linger.ms" = "10" }`), `RECONCILER_BENCH_PERF=<file>` (records the
//! reconciler with `perf record -g` for 5 s from its first batch, in the first round),
//! `RECONCILER_BENCH_JFR=<prefix>` (a Java Flight Recording of an Apache Kafka broker over each
//! side's first timed window, into `<prefix>-alone.jfr` and
//! `<prefix>-reconciler.jfr`; read with `jfr print --events jdk.ExecutionSample`),
//! `RECONCILER_BENCH_BIN=<path>` (another `edgesync-reconciler` binary, e.g. an earlier
//! commit's, measured against the same baseline) and `EDGESYNC_TEST_BROKER` as for the
//! tests: `apache` (default), `tansu` or `tansu-memory`.
//!
//! On Apache Kafka it also prints what the broker served each side, per 1,000 events and by
//! request type (`testkit::broker_requests`, the broker's own JMX metrics): requests, and the
//! milliseconds its request threads spent in them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use edgesync_core::crdt::{GCounter, RollupMap};
use edgesync_core::{
    Crdt, DeltaBatch, DeviceId, Dot, Event, EventLimits, Hlc, Incarnation, ReplicaId, Value,
};
use edgesync_schemas::{Codec, Framing, Limits};
use edgesync_servicekit::config::ServiceConfig;
use edgesync_testkit::{
    broker_requests, cpu, knob, partition_for, CountingDeliveries, Kafka, Service,
};
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};

const DEVICES: u64 = 100;
const PER: u64 = 100;
/// Partitions of every topic, the reconciler's own included (its events topic must match the
/// deltas topic).
const PARTITIONS: i32 = 4;

/// One output record of the reconciler, as it writes it.
struct Output {
    key: String,
    partition: i32,
    value: Vec<u8>,
}

/// The N batches as the devices' agents would send them, and the records the reconciler must
/// write for them.
struct Workload {
    batches: Vec<(String, Vec<u8>)>,
    outputs: Vec<Output>,
}

fn workload(n: u64) -> Workload {
    let codec = Codec::new(Limits::default()).unwrap();
    let mut counters: BTreeMap<u64, (GCounter, RollupMap)> = BTreeMap::new();
    let (mut batches, mut outputs) = (Vec::new(), Vec::new());
    for i in 0..n {
        let d = i % DEVICES;
        let dev = format!("pump-{d}");
        let partition = partition_for(dev.as_bytes(), PARTITIONS as u32) as i32;
        let r = ReplicaId::new(DeviceId::new(&dev).unwrap(), Incarnation::new(3).unwrap());
        let first = i / DEVICES * PER + 1;
        let (g, roll) = counters.entry(d).or_default();
        let mut state = BTreeMap::new();
        let events: Vec<Event> = (0..PER)
            .map(|k| {
                let t = 1_700_000_000_000 + (first + k) * 1000;
                state.insert("fleet/readings".to_string(), Crdt::GCounter(g.inc(&r, 1)));
                state.insert(
                    format!("{dev}/pressure"),
                    Crdt::RollupMap(roll.record(&r, t - t % 60_000, 101.5).unwrap()),
                );
                Event {
                    dot: Dot::new(r.clone(), first + k),
                    hlc: Hlc::new(t, 0),
                    stream: "pump.telemetry".into(),
                    schema_version: 1,
                    fields: BTreeMap::from([
                        ("pressure_kpa".into(), Value::Double(101.5)),
                        ("rpm".into(), Value::Long(1450)),
                    ]),
                    tags: BTreeMap::new(),
                }
            })
            .collect();
        for e in &events {
            let value = codec.encode_event(e, Framing::SingleObject).unwrap();
            let key = dev.clone();
            outputs.push(Output {
                key,
                partition,
                value,
            });
        }
        let b = DeltaBatch::new(r, first, events, state, &EventLimits::default()).unwrap();
        batches.push((dev, codec.encode_batch(&b).unwrap()));
    }
    Workload { batches, outputs }
}

/// The settings both sides run with: the reconciler's, on `k`, plus `RECONCILER_BENCH_SET`.
fn settings(k: &Kafka) -> Vec<String> {
    let mut sets = vec![
        format!("kafka.bootstrap_servers={}", k.bootstrap()),
        "state_dir=\"{dir}/state\"".into(),
        format!("kafka.partitions={PARTITIONS}"),
    ];
    sets.extend(std::env::var("RECONCILER_BENCH_SET").ok());
    sets
}

/// The reconciler's producer settings, with a counting context.
fn baseline_producer(k: &Kafka) -> ThreadedProducer<CountingDeliveries> {
    let cfg = edgesync_reconciler::config::Config::load(None, [], &settings(k)).unwrap();
    edgesync_reconciler::service::producer_config(&cfg.kafka)
        .create_with_context(CountingDeliveries::default())
        .unwrap()
}

/// Writes every batch to `topic`, as the bridges would (keyed by device, Kafka's partitioner).
fn write_batches(k: &Kafka, topic: &str, w: &Workload) {
    let p = baseline_producer(k);
    for (dev, bytes) in &w.batches {
        let partition = partition_for(dev.as_bytes(), PARTITIONS as u32) as i32;
        send(
            &p,
            BaseRecord::to(topic)
                .partition(partition)
                .key(dev)
                .payload(bytes),
        );
    }
    p.flush(Duration::from_secs(60)).unwrap();
    assert_eq!(p.context().failed.load(Ordering::Relaxed), 0);
}

fn send(p: &ThreadedProducer<CountingDeliveries>, mut rec: BaseRecord<'_, String, Vec<u8>>) {
    loop {
        match p.send(rec) {
            Ok(()) => return,
            Err((_, r)) => {
                rec = r;
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
}

/// What one timed run measured.
struct Run {
    rate: f64,
    /// CPU seconds of each thread group of the measured client in the timed window.
    client: BTreeMap<String, f64>,
    /// CPU seconds of each thread group of the broker in the timed window.
    broker: BTreeMap<String, f64>,
    /// What the broker served for the side (Apache Kafka only): for the baseline the timed
    /// window, for the reconciler its whole life (start-up included, idle shutdown not).
    served: Option<broker_requests::Reading>,
    /// Input records per processing group of the device and key stages (reconciler only).
    groups: Option<(f64, f64)>,
}

/// Fails the bench if the broker died: the producers never give a record up
/// (`message.timeout.ms=0`), so waiting for their deliveries would wait for ever.
fn alive(k: &mut Kafka) {
    let p = k.process();
    if !p.is_running() {
        panic!("the broker exited; its log:\n{}", p.log_tail(40));
    }
}

fn events_alone(k: &mut Kafka, w: &Workload, names: &Names, jfr: Option<&str>) -> Run {
    let p = baseline_producer(k);
    let broker_pid = k.process().pid().unwrap();
    let served = broker_requests::read(broker_pid);
    let (me, b0) = (std::process::id(), cpu::thread_secs(broker_pid));
    let t0 = cpu::thread_secs(me);
    let started = Instant::now();
    let flight = FlightRecord::start(broker_pid, jfr.map(|p| format!("{p}-alone.jfr")));
    for o in &w.outputs {
        let rec = BaseRecord::to(names.alone)
            .partition(o.partition)
            .key(&o.key)
            .payload(&o.value);
        send(&p, rec);
    }
    let n = w.outputs.len() as u64;
    let c = p.context();
    while c.reported() < n {
        alive(k);
        std::thread::sleep(Duration::from_millis(1));
    }
    let secs = started.elapsed().as_secs_f64();
    flight.dump();
    assert_eq!(
        c.failed.load(Ordering::Relaxed),
        0,
        "baseline deliveries failed"
    );
    let (client, broker) = (cpu::thread_secs(me), cpu::thread_secs(broker_pid));
    Run {
        rate: n as f64 / secs,
        client: cpu::since(&t0, &client),
        broker: cpu::since(&b0, &broker),
        served: served_since(served, broker_pid),
        groups: None,
    }
}

/// What the broker `pid` served since `before`.
fn served_since(
    before: Option<broker_requests::Reading>,
    pid: u32,
) -> Option<broker_requests::Reading> {
    Some(broker_requests::read(pid)?.since(&before?))
}

fn reconciler(
    k: &mut Kafka,
    w: &Workload,
    names: &Names,
    perf: Option<&str>,
    jfr: Option<&str>,
) -> Run {
    let program = std::env::var_os("RECONCILER_BENCH_BIN").map_or_else(
        || PathBuf::from(env!("CARGO_BIN_EXE_edgesync-reconciler")),
        PathBuf::from,
    );
    let env = [("RUST_LOG".to_owned(), "warn".to_owned())];
    let mut sets = settings(k);
    sets.extend(names.settings());
    let broker_pid = k.process().pid().unwrap();
    let served = broker_requests::read(broker_pid);
    let svc = Service::start_with_env(program, None, "bench reconciler", &sets, &env).unwrap();
    let pid = svc.process.pid().unwrap();
    let metric = |name: &str| svc.metric(name, "") as u64;
    while metric("edgesync_reconciler_batches_total") == 0 {
        alive(k);
        std::thread::sleep(Duration::from_millis(2));
    }
    let (t0, b0) = (cpu::thread_secs(pid), cpu::thread_secs(broker_pid));
    let started = Instant::now();
    let recording = perf.map(|out| record(pid, out));
    let flight = FlightRecord::start(broker_pid, jfr.map(|p| format!("{p}-reconciler.jfr")));
    let n = w.outputs.len() as u64;
    while metric("edgesync_reconciler_events_total") < n {
        alive(k);
        std::thread::sleep(Duration::from_millis(20));
    }
    let secs = started.elapsed().as_secs_f64();
    flight.dump();
    let (client, broker) = (cpu::thread_secs(pid), cpu::thread_secs(broker_pid));
    if let Some(mut r) = recording {
        r.wait().unwrap();
    }
    let group = |stage: &str| {
        let labels = format!("stage=\"{stage}\"");
        let sum = svc.metric("edgesync_reconciler_group_records_sum", &labels);
        sum / svc.metric("edgesync_reconciler_group_records_count", &labels)
    };
    let groups = Some((group("device"), group("key")));
    drop(svc);
    Run {
        rate: n as f64 / secs,
        client: cpu::since(&t0, &client),
        broker: cpu::since(&b0, &broker),
        served: served_since(served, broker_pid),
        groups,
    }
}

/// `perf record` of `pid` for 5 s into `out`.
fn record(pid: u32, out: &str) -> std::process::Child {
    std::process::Command::new("perf")
        .args([
            "record",
            "-F",
            "1999",
            "-g",
            "-o",
            out,
            "-p",
            &pid.to_string(),
        ])
        .args(["--", "sleep", "5"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("perf")
}

/// A Java Flight Recording of the broker `pid` while a timed window runs: started by
/// [`FlightRecord::start`] when `out` is given, written to `out` by [`FlightRecord::dump`].
struct FlightRecord(Option<(u32, String)>);

impl FlightRecord {
    fn start(pid: u32, out: Option<String>) -> Self {
        let rec = Self(out.map(|o| (pid, o)));
        rec.jcmd(&[
            "JFR.start",
            "name=bench",
            "settings=profile",
            "jdk.ExecutionSample#period=1ms",
            // Every compilation and deoptimization, to see what the JIT works on.
            "jdk.Compilation#threshold=0ms",
            "jdk.Deoptimization#enabled=true",
        ]);
        rec
    }

    fn dump(self) {
        if let Some((_, out)) = &self.0 {
            self.jcmd(&["JFR.dump", "name=bench", &format!("filename={out}")]);
        }
    }

    fn jcmd(&self, args: &[&str]) {
        let Some((pid, _)) = &self.0 else { return };
        let status = std::process::Command::new("jcmd")
            .arg(pid.to_string())
            .args(args)
            .stdout(std::process::Stdio::null())
            .status()
            .expect("jcmd");
        assert!(status.success(), "jcmd {args:?} failed");
    }
}

/// The topics and groups of one side's run on a broker.
struct Names {
    deltas: &'static str,
    events: &'static str,
    /// Where the baseline writes the event records: the events topic in a timed run (one side
    /// per broker); its own in the warm-up, where the reconciler's read-back would otherwise
    /// find its events already there and write none.
    alone: &'static str,
    /// Prefix of the other topics and the groups (`None`: the reconciler's defaults).
    prefix: Option<&'static str>,
}

/// The timed runs: the reconciler's own names.
const TIMED: Names = Names {
    deltas: "edgesync.deltas",
    events: "edgesync.events",
    alone: "edgesync.events",
    prefix: None,
};

/// The warm-up runs.
const WARM_UP: Names = Names {
    deltas: "warm.deltas",
    events: "warm.events",
    alone: "warm.alone",
    prefix: Some("warm"),
};

impl Names {
    /// The reconciler's settings for these names.
    fn settings(&self) -> Vec<String> {
        let Some(p) = self.prefix else {
            return Vec::new();
        };
        let topics = ["state_deltas", "state", "acks", "dlq"];
        let mut sets: Vec<String> = topics
            .iter()
            .map(|t| format!("kafka.{t}_topic=\"{p}.{t}\""))
            .collect();
        sets.push(format!("kafka.deltas_topic=\"{}\"", self.deltas));
        sets.push(format!("kafka.events_topic=\"{}\"", self.events));
        sets.push(format!("kafka.device_group=\"{p}-device\""));
        sets.push(format!("kafka.key_group=\"{p}-key\""));
        sets
    }

    /// Creates the input and events topics and writes the workload's batches.
    fn prepare(&self, k: &Kafka, w: &Workload) {
        let mut topics = vec![self.deltas, self.events, self.alone];
        topics.dedup();
        for topic in topics {
            k.create_topic(topic, PARTITIONS, &[]).unwrap();
        }
        write_batches(k, self.deltas, w);
    }
}

/// A fresh broker holding the N batches, so that neither side runs on a broker already holding
/// the other's records (tansu slows down as its log grows), warmed up by both sides on a
/// smaller workload of their own topics: a fresh JVM spends its first seconds compiling
/// (C1/C2 threads took more CPU than the request handlers in a cold 3 s run), which a broker in
/// service has long done. On 2 cores its compile queue outlasts the warm-up (JFR showed
/// methods queued before it compiled during the timed window, 800 compilations in a second),
/// so the timed run also waits for the compiler threads to go quiet.
fn broker_with(w: &Workload, warm_up: &Workload) -> Kafka {
    let mut k = Kafka::start().unwrap();
    if !warm_up.outputs.is_empty() {
        WARM_UP.prepare(&k, warm_up);
        events_alone(&mut k, warm_up, &WARM_UP, None);
        reconciler(&mut k, warm_up, &WARM_UP, None, None);
    }
    TIMED.prepare(&k, w);
    // Then until the broker's compiler threads have worked off their queue (less than 2 % of a
    // core over a second), so that neither side pays for compiling what the other warmed up.
    let pid = k.process().pid().unwrap();
    let (window, max) = (Duration::from_secs(1), Duration::from_secs(120));
    let waited = cpu::wait_quiet(pid, cpu::JIT_THREADS, 0.02, window, max);
    println!("broker JIT quiet after {:.0} s", waited.as_secs_f64());
    k
}

fn main() {
    let n: u64 = knob("RECONCILER_BENCH_BATCHES", 6_000);
    let rounds: usize = knob("RECONCILER_BENCH_ROUNDS", 3);
    let warm_up = workload(knob("RECONCILER_BENCH_WARMUP", 3_000));
    let perf = std::env::var("RECONCILER_BENCH_PERF").ok();
    let jfr = std::env::var("RECONCILER_BENCH_JFR").ok();
    let w = workload(n);
    let (mut alone, mut recs) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        for baseline in [round % 2 == 0, round % 2 == 1] {
            let mut k = broker_with(&w, &warm_up);
            if baseline {
                let jfr = jfr.as_deref().filter(|_| alone.is_empty());
                alone.push(events_alone(&mut k, &w, &TIMED, jfr));
            } else {
                let first = recs.is_empty();
                let (perf, jfr) = (perf.as_deref(), jfr.as_deref());
                let (perf, jfr) = (perf.filter(|_| first), jfr.filter(|_| first));
                recs.push(reconciler(&mut k, &w, &TIMED, perf, jfr));
            }
        }
    }
    report(n, rounds, &alone, &recs);
}

fn client(r: &Run) -> &BTreeMap<String, f64> {
    &r.client
}

fn broker(r: &Run) -> &BTreeMap<String, f64> {
    &r.broker
}

fn report(n: u64, rounds: usize, alone: &[Run], recs: &[Run]) {
    let mean = |v: &[Run]| v.iter().map(|r| r.rate).sum::<f64>() / v.len() as f64;
    let runs = |v: &[Run]| {
        let rates: Vec<String> = v.iter().map(|r| format!("{:.0}", r.rate)).collect();
        rates.join(", ")
    };
    let (base, rec) = (mean(alone), mean(recs));
    println!(
        "{n} batches x {PER} events from {DEVICES} devices, {rounds} rounds, a fresh broker per run ({})",
        edgesync_testkit::Broker::from_env().map_or_else(|e| e.to_string(), |b| b.version())
    );
    println!("| | events/s (mean) | runs |");
    println!("|---|---|---|");
    println!(
        "| the broker alone: the same event records, produced and confirmed | {base:.0} | {} |",
        runs(alone)
    );
    println!(
        "| edgesync-reconciler (both stages) | {rec:.0} | {} |",
        runs(recs)
    );
    let lo = recs.iter().map(|r| r.rate).fold(f64::MAX, f64::min);
    let hi = recs.iter().map(|r| r.rate).fold(0.0, f64::max);
    println!(
        "ratio reconciler / events alone: {:.2} (runs {:.2}..{:.2} of the baseline's mean; target >= 0.7)",
        rec / base,
        lo / base,
        hi / base
    );
    let events = (n * PER) as f64;
    println!("\nCPU µs per event in the timed window (mean over runs):");
    println!("| thread | events alone | reconciler |");
    println!("|---|---|---|");
    let (mut ta, mut tr) = (0.0, 0.0);
    for (what, side) in [
        ("", client as fn(&Run) -> &BTreeMap<String, f64>),
        ("broker: ", broker),
    ] {
        let per_event = |v: &[Run], name: &str| {
            let secs = v.iter().map(|r| side(r).get(name).copied().unwrap_or(0.0));
            secs.sum::<f64>() / v.len() as f64 * 1e6 / events
        };
        let mut names: Vec<&String> = alone
            .iter()
            .chain(recs)
            .flat_map(|r| side(r).keys())
            .collect();
        names.sort();
        names.dedup();
        let (mut sa, mut sr) = (0.0, 0.0);
        for name in names {
            let (a, r) = (per_event(alone, name), per_event(recs, name));
            (sa, sr) = (sa + a, sr + r);
            if a >= 0.05 || r >= 0.05 {
                println!("| {what}{name} | {a:.2} | {r:.2} |");
            }
        }
        let total = if what.is_empty() { "client" } else { "broker" };
        println!("| **{total}** | {sa:.2} | {sr:.2} |");
        (ta, tr) = (ta + sa, tr + sr);
    }
    println!("| all | {ta:.2} | {tr:.2} |");
    let groups: Vec<String> = recs
        .iter()
        .filter_map(|r| r.groups)
        .map(|(d, k)| format!("{d:.0} / {k:.0}"))
        .collect();
    println!(
        "\ninput records per group, device / key stage (mean per run): {}",
        groups.join(", ")
    );
    served_report(events, alone, recs);
}

/// Requests the broker served per 1,000 events, and its request threads' milliseconds in
/// them, by request type (Apache Kafka: read from its JMX metrics), mean over runs.
fn served_report(events: f64, alone: &[Run], recs: &[Run]) {
    let readings = |v: &[Run]| -> Vec<broker_requests::Reading> {
        v.iter().filter_map(|r| r.served.clone()).collect()
    };
    let (a, r) = (readings(alone), readings(recs));
    if a.is_empty() || r.is_empty() {
        return;
    }
    let mut types: Vec<&String> = a.iter().chain(&r).flat_map(|x| x.by_type.keys()).collect();
    types.sort();
    types.dedup();
    let per_k = |v: &[broker_requests::Reading], t: &str, ms: bool| {
        let sum: u64 = v
            .iter()
            .filter_map(|x| x.by_type.get(t))
            .map(|s| if ms { s.local_ms } else { s.requests })
            .sum();
        sum as f64 / v.len() as f64 * 1000.0 / events
    };
    println!(
        "\nWhat the broker served per 1,000 events (its JMX request metrics, mean over runs):"
    );
    println!("| request | events alone: requests | ms on request threads | reconciler: requests | ms on request threads |");
    println!("|---|---|---|---|---|");
    for t in types {
        println!(
            "| {t} | {:.2} | {:.2} | {:.2} | {:.2} |",
            per_k(&a, t, false),
            per_k(&a, t, true),
            per_k(&r, t, false),
            per_k(&r, t, true)
        );
    }
    let records = |v: &[broker_requests::Reading]| {
        v.iter().map(|x| x.records).sum::<u64>() as f64 / v.len() as f64 * 1000.0 / events
    };
    println!(
        "| records appended (all topics) | {:.0} | | {:.0} | |",
        records(&a),
        records(&r)
    );
    topics_report(events, &a, &r);
}

/// Produce requests and records per 1,000 events by topic (Apache Kafka's per-topic
/// `BrokerTopicMetrics`), mean over runs: where the reconciler's extra requests go.
fn topics_report(events: f64, a: &[broker_requests::Reading], r: &[broker_requests::Reading]) {
    let mut topics: Vec<&String> = a.iter().chain(r).flat_map(|x| x.topics.keys()).collect();
    topics.sort();
    topics.dedup();
    println!(
        "\nProduce requests (one partition's batch each) and records per 1,000 events, by topic:"
    );
    println!("| topic | events alone: requests | records | reconciler: requests | records |");
    println!("|---|---|---|---|---|");
    let per_k = |v: &[broker_requests::Reading], t: &str, f: fn(&(u64, u64)) -> u64| {
        let sum: u64 = v.iter().filter_map(|x| x.topics.get(t)).map(f).sum();
        sum as f64 / v.len() as f64 * 1000.0 / events
    };
    for t in topics.into_iter().filter(|t| !t.starts_with("warm")) {
        println!(
            "| {t} | {:.2} | {:.0} | {:.2} | {:.0} |",
            per_k(a, t, |x| x.0),
            per_k(a, t, |x| x.1),
            per_k(r, t, |x| x.0),
            per_k(r, t, |x| x.1)
        );
    }
}

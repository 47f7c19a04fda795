//! Reconciler throughput against a raw consume-and-produce passthrough of the same records,
//! over the same broker, in the same run.
//!
//! `cargo bench -p edgesync-reconciler --bench throughput` starts a broker (Apache Kafka,
//! single node, by default), writes N delta batches (100 devices, 100 events each, with G-counter and rollup
//! deltas) to a deltas topic, then times:
//!
//! - **passthrough**: a consumer group reads the batch records and the reconciler's own
//!   producer (idempotent, `acks=all`) writes each one, unchanged, to another topic (what any
//!   Kafka stream job costs);
//! - **reconciler**: the `edgesync-reconciler` binary — decode, causal de-duplication, release
//!   in dot order, one Avro record per event, re-keyed deltas, acks, RocksDB state with fsync,
//!   and the key stage joining and emitting converged state — timed until every event is in
//!   the events topic.
//!
//! Prints events/s of both and the ratio (targets: >= 150k events/s and >= 0.5x).
//! Each run gets a fresh broker and the sides alternate over `RECONCILER_BENCH_ROUNDS` rounds
//! (default 2); the means are compared. A third figure is the broker's own ceiling for one
//! small record per event. `RECONCILER_BENCH_BATCHES` sets N (default 6,000 = 600k events;
//! smaller runs are dominated by start-up). `EDGESYNC_TEST_BROKER` picks the broker, as for
//! the tests: `apache` (default), `tansu` (SQLite, whose per-record inserts cap it near 75k
//! records/s on this machine) or `tansu-memory`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use edgesync_core::crdt::{GCounter, RollupMap};
use edgesync_core::{
    Crdt, DeltaBatch, DeviceId, Dot, Event, EventLimits, Hlc, Incarnation, ReplicaId, Value,
};
use edgesync_schemas::{Codec, Limits};
use edgesync_servicekit::config::ServiceConfig;
use edgesync_testkit::{knob, unique, Kafka, Service};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{
    BaseRecord, DefaultProducerContext, FutureProducer, FutureRecord, Producer, ThreadedProducer,
};
use rdkafka::Message;

const DEVICES: u64 = 100;
const PER: u64 = 100;
/// Partitions of every topic, the reconciler's own included (its events topic must match the
/// deltas topic).
const PARTITIONS: i32 = 4;

fn write_batches(k: &Kafka, topic: &str, n: u64) {
    let codec = Codec::new(Limits::default()).unwrap();
    let p: ThreadedProducer<DefaultProducerContext> = k
        .client_config()
        .set("partitioner", "murmur2_random")
        .set("linger.ms", "20")
        .create()
        .unwrap();
    let mut counters: BTreeMap<u64, (GCounter, RollupMap)> = BTreeMap::new();
    for i in 0..n {
        let d = i % DEVICES;
        let dev = format!("pump-{d}");
        let r = ReplicaId::new(DeviceId::new(&dev).unwrap(), Incarnation::new(3).unwrap());
        let first = i / DEVICES * PER + 1;
        let (g, roll) = counters.entry(d).or_default();
        let mut state = BTreeMap::new();
        let events = (0..PER)
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
        let b = DeltaBatch::new(r, first, events, state, &EventLimits::default()).unwrap();
        let bytes = codec.encode_batch(&b).unwrap();
        loop {
            match p.send(BaseRecord::to(topic).key(&dev).payload(&bytes)) {
                Ok(()) => break,
                Err(_) => {
                    p.poll(Duration::from_millis(10));
                }
            }
        }
    }
    p.flush(Duration::from_secs(60)).unwrap();
}

fn passthrough(k: &Kafka, n: u64) -> f64 {
    let c: BaseConsumer = k
        .client_config()
        .set("group.id", unique("passthrough"))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    c.subscribe(&["bench.deltas"]).unwrap();
    let p = reconciler_producer(k);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let delivered = Arc::new(AtomicU64::new(0));
    let mut started = None;
    let mut seen = 0;
    while seen < n {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(100)) {
            started.get_or_insert_with(Instant::now);
            seen += 1;
            let f = loop {
                let rec = FutureRecord::to("bench.passthrough")
                    .key(m.key().unwrap_or_default())
                    .payload(m.payload().unwrap_or_default());
                match p.send_result(rec) {
                    Ok(f) => break f,
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            };
            let d = Arc::clone(&delivered);
            rt.spawn(async move {
                if let Ok(Ok(_)) = f.await {
                    d.fetch_add(1, Ordering::SeqCst);
                }
            });
        }
    }
    while delivered.load(Ordering::SeqCst) < n {
        std::thread::sleep(Duration::from_millis(2));
    }
    let secs = started.unwrap().elapsed().as_secs_f64();
    (n * PER) as f64 / secs
}

fn reconciler(k: &Kafka, n: u64) -> f64 {
    let mut sets = vec![
        format!("kafka.bootstrap_servers={}", k.bootstrap()),
        "state_dir=\"{dir}/state\"".into(),
        format!("kafka.partitions={PARTITIONS}"),
    ];
    // Tuning runs: e.g. RECONCILER_BENCH_SET='kafka.properties={ "linger.ms" = "10" }'.
    sets.extend(std::env::var("RECONCILER_BENCH_SET").ok());
    let program = PathBuf::from(env!("CARGO_BIN_EXE_edgesync-reconciler"));
    let env = [("RUST_LOG".to_owned(), "warn".to_owned())];
    let svc = Service::start_with_env(program, None, "bench reconciler", &sets, &env).unwrap();
    let metric = |name: &str| svc.metric(name, "") as u64;
    while metric("edgesync_reconciler_batches_total") == 0 {
        std::thread::sleep(Duration::from_millis(2));
    }
    let started = Instant::now();
    while metric("edgesync_reconciler_events_total") < n * PER {
        std::thread::sleep(Duration::from_millis(20));
    }
    (n * PER) as f64 / started.elapsed().as_secs_f64()
}

/// The reconciler's own producer, from its own configuration, on `k`.
fn reconciler_producer(k: &Kafka) -> FutureProducer {
    let cfg = edgesync_reconciler::config::Config::load(
        None,
        [],
        &[format!("kafka.bootstrap_servers={}", k.bootstrap())],
    )
    .unwrap();
    edgesync_reconciler::service::producer(&cfg.kafka).unwrap()
}

/// The broker's own ceiling for one small record per event: `n` records of an event's size
/// produced with the reconciler's producer settings, timed to the last delivery.
fn record_ceiling(n: u64, size: usize) -> f64 {
    let k = Kafka::start().unwrap();
    k.create_topic("bench.records", PARTITIONS, &[]).unwrap();
    let p = reconciler_producer(&k);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let payload = vec![7u8; size];
    let started = Instant::now();
    let mut futures = Vec::with_capacity(n as usize);
    for i in 0..n {
        let key = format!("pump-{}", i % DEVICES);
        loop {
            let rec = FutureRecord::to("bench.records")
                .key(&key)
                .payload(&payload[..]);
            match p.send_result(rec) {
                Ok(f) => {
                    futures.push(f);
                    break;
                }
                Err(_) => std::thread::sleep(Duration::from_millis(1)),
            }
        }
    }
    rt.block_on(async {
        for f in futures {
            f.await.unwrap().unwrap();
        }
    });
    n as f64 / started.elapsed().as_secs_f64()
}

/// A fresh broker holding the N batches on `topic`, so that neither side runs on a broker
/// already holding the other's records (tansu slows down as its log grows).
fn broker_with(topic: &str, n: u64) -> Kafka {
    let k = Kafka::start().unwrap();
    k.create_topic(topic, PARTITIONS, &[]).unwrap();
    if topic == "bench.deltas" {
        k.create_topic("bench.passthrough", PARTITIONS, &[])
            .unwrap();
    }
    write_batches(&k, topic, n);
    k
}

fn main() {
    let n: u64 = knob("RECONCILER_BENCH_BATCHES", 6_000);
    let rounds: usize = knob("RECONCILER_BENCH_ROUNDS", 2);
    // Alternating order (passthrough, reconciler, reconciler, passthrough, ...).
    let (mut raws, mut recs) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        for raw_side in [round % 2 == 0, round % 2 == 1] {
            if raw_side {
                let k = broker_with("bench.deltas", n);
                raws.push(passthrough(&k, n));
            } else {
                let k = broker_with("edgesync.deltas", n);
                recs.push(reconciler(&k, n));
            }
        }
    }
    let ceiling = record_ceiling(n * PER, 90);
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let runs = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let (raw, rec) = (mean(&raws), mean(&recs));
    println!(
        "{n} batches x {PER} events from {DEVICES} devices, {rounds} rounds, a fresh broker per run ({})",
        edgesync_testkit::Broker::from_env().map_or_else(|e| e.to_string(), |b| b.version())
    );
    println!("| | events/s (mean) | runs |");
    println!("|---|---|---|");
    println!(
        "| passthrough (consume, produce the batch record) | {raw:.0} | {} |",
        runs(&raws)
    );
    println!(
        "| edgesync-reconciler (both stages, one record per event) | {rec:.0} | {} |",
        runs(&recs)
    );
    println!(
        "| the broker alone: one 90-byte record per event, produced and confirmed | {ceiling:.0} | |"
    );
    println!(
        "ratio reconciler / passthrough: {:.2} (target >= 0.5); reconciler >= 150k events/s: {}",
        rec / raw,
        if rec >= 150_000.0 { "yes" } else { "no" }
    );
    // Any implementation that writes one record per event is bounded by the broker alone.
    println!(
        "upper bound of the ratio with one record per event on this broker: {:.2} (the broker alone / passthrough)",
        ceiling / raw
    );
}

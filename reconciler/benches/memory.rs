//! Reconciler memory with many replicas and keys, against the RocksDB budget its configuration
//! sets.
//!
//! `cargo bench -p edgesync-reconciler --bench memory` runs the `edgesync-reconciler` binary on
//! Apache Kafka (single node, the test kit's sizing), once per scenario on a fresh broker:
//! it starts the reconciler on empty topics (4 partitions), reads its idle RSS, writes one
//! batch per replica (10 events, 10 state keys: max registers, so a key's state has the same
//! size however many replicas write it) to the deltas topic as the bridges would, waits until
//! every event is in the events topic, every delta merged and the emitted states have stopped
//! moving (converged), and reads `VmRSS` and `VmHWM` (the peak) from `/proc`.
//!
//! Scenarios (`MEMORY_BENCH_ONLY=a,c` picks some):
//!
//! - **a**: 100,000 replicas, 1,000,000 distinct keys, the shipped `[store]` settings;
//! - **b**: 100,000 replicas, 1,000 keys (each written by 100 replicas), shipped settings:
//!   against a, what a million keys cost in memory;
//! - **c**: 1,000 replicas, 1,000 keys, shipped settings: against b, what a replica costs;
//! - **d**: as a, with a small store (`MEMORY_BENCH_SMALL`, default 16 MiB of block cache and
//!   two 8 MiB memtables): RSS follows the setting.
//!
//! `MEMORY_BENCH_REPLICAS` and `MEMORY_BENCH_KEYS` change the large counts (100,000 and
//! 1,000,000); `MEMORY_BENCH_SET` adds `;`-separated `--set` values to every scenario.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use edgesync_core::crdt::MaxRegister;
use edgesync_core::{
    Crdt, DeltaBatch, DeviceId, Dot, Event, EventLimits, Hlc, Incarnation, ReplicaId, Value,
};
use edgesync_reconciler::config::Config;
use edgesync_schemas::{Codec, Limits};
use edgesync_servicekit::config::ServiceConfig;
use edgesync_testkit::{knob, partition_for, Kafka, Service};
use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;

const PARTITIONS: i32 = 4;
/// Events, and distinct state keys, in each replica's batch.
const PER_BATCH: u64 = 10;

struct Scenario {
    name: &'static str,
    replicas: u64,
    keys: u64,
    sets: Vec<String>,
}

/// Counts confirmations and failures.
#[derive(Default)]
struct Counting {
    ok: AtomicU64,
    failed: AtomicU64,
}

impl ClientContext for Counting {}

impl ProducerContext for Counting {
    type DeliveryOpaque = ();
    fn delivery(&self, r: &DeliveryResult<'_>, _: ()) {
        let n = if r.is_ok() { &self.ok } else { &self.failed };
        n.fetch_add(1, Ordering::Relaxed);
    }
}

/// Replica `r`'s batch: seqs 1..=10, each event setting one of its 10 keys (`k/<index>`, the
/// index `(10 r + j) mod keys`).
fn batch(codec: &Codec, r: u64, keys: u64) -> (String, Vec<u8>) {
    let dev = format!("dev-{r:07}");
    let replica = ReplicaId::new(DeviceId::new(&dev).unwrap(), Incarnation::new(7).unwrap());
    let mut state = BTreeMap::new();
    let events = (0..PER_BATCH)
        .map(|j| {
            let value = 100.0 + ((r + j) % 97) as f64;
            state.insert(
                format!("k/{:07}", (r * PER_BATCH + j) % keys),
                Crdt::MaxRegister(MaxRegister::of(Value::Double(value))),
            );
            Event {
                dot: Dot::new(replica.clone(), j + 1),
                hlc: Hlc::new(1_700_000_000_000 + r * 1000 + j * 100, 0),
                stream: "pump.telemetry".into(),
                schema_version: 1,
                fields: BTreeMap::from([
                    ("pressure_kpa".into(), Value::Double(value)),
                    ("rpm".into(), Value::Long(1400 + j as i64)),
                ]),
                tags: BTreeMap::new(),
            }
        })
        .collect();
    let b = DeltaBatch::new(replica, 1, events, state, &EventLimits::default()).unwrap();
    (dev, codec.encode_batch(&b).unwrap())
}

/// Writes every replica's batch to the deltas topic, keyed by device on Kafka's partition for
/// it, as the bridges would.
fn write_batches(k: &Kafka, s: &Scenario) {
    let codec = Codec::new(Limits::default()).unwrap();
    let p: ThreadedProducer<Counting> = ClientConfig::new()
        .set("bootstrap.servers", k.bootstrap())
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .create_with_context(Counting::default())
        .unwrap();
    for r in 0..s.replicas {
        let (dev, bytes) = batch(&codec, r, s.keys);
        let partition = partition_for(dev.as_bytes(), PARTITIONS as u32) as i32;
        let mut rec = BaseRecord::to("edgesync.deltas")
            .partition(partition)
            .key(&dev)
            .payload(&bytes);
        loop {
            match p.send(rec) {
                Ok(()) => break,
                Err((_, back)) => {
                    rec = back;
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
    }
    p.flush(Duration::from_secs(120)).unwrap();
    assert_eq!(p.context().failed.load(Ordering::Relaxed), 0);
}

/// `VmRSS` and `VmHWM` of `pid`, in bytes.
fn rss(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap()
            * 1024
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn dir_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum()
}

struct Measured {
    idle: u64,
    rss: u64,
    hwm: u64,
    budget: usize,
    secs: f64,
    store_bytes: u64,
}

fn run(s: &Scenario) -> Measured {
    let k = Kafka::start().unwrap();
    for topic in ["edgesync.deltas", "edgesync.events"] {
        k.create_topic(topic, PARTITIONS, &[]).unwrap();
    }
    let mut sets = vec![
        format!("kafka.bootstrap_servers={}", k.bootstrap()),
        "state_dir=\"{dir}/state\"".into(),
        format!("kafka.partitions={PARTITIONS}"),
    ];
    sets.extend(s.sets.iter().cloned());
    if let Ok(extra) = std::env::var("MEMORY_BENCH_SET") {
        sets.extend(
            extra
                .split(';')
                .filter(|x| !x.is_empty())
                .map(str::to_owned),
        );
    }
    let budget = Config::load(None, [], &sets)
        .unwrap()
        .store
        .memory()
        .budget();
    let program = PathBuf::from(env!("CARGO_BIN_EXE_edgesync-reconciler"));
    let env = [("RUST_LOG".to_owned(), "warn".to_owned())];
    let svc = Service::start_with_env(program, None, "bench reconciler", &sets, &env).unwrap();
    let pid = svc.process.pid().unwrap();
    let metric = |name: &str| svc.metric(name, "") as u64;
    // Idle: both stages joined their groups on the empty topics.
    std::thread::sleep(Duration::from_secs(5));
    let idle = rss(pid).0;
    let started = Instant::now();
    write_batches(&k, s);
    let (events, deltas) = (s.replicas * PER_BATCH, s.replicas * PER_BATCH);
    while metric("edgesync_reconciler_events_total") < events
        || metric("edgesync_reconciler_merges_total") < deltas
    {
        assert!(
            started.elapsed() < Duration::from_secs(1800),
            "not converged: {} events, {} merges",
            metric("edgesync_reconciler_events_total"),
            metric("edgesync_reconciler_merges_total")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Converged once the key stage has stopped emitting.
    let mut states = metric("edgesync_reconciler_states_total");
    loop {
        std::thread::sleep(Duration::from_secs(2));
        let now = metric("edgesync_reconciler_states_total");
        if now == states {
            break;
        }
        states = now;
    }
    let secs = started.elapsed().as_secs_f64();
    assert_eq!(
        metric("edgesync_reconciler_replicas"),
        s.replicas,
        "replicas in the ledger"
    );
    let (rss, hwm) = rss(pid);
    Measured {
        idle,
        rss,
        hwm,
        budget,
        secs,
        store_bytes: dir_bytes(&svc.dir().join("state")),
    }
}

fn mib(b: u64) -> f64 {
    b as f64 / (1 << 20) as f64
}

fn main() {
    let replicas: u64 = knob("MEMORY_BENCH_REPLICAS", 100_000);
    let keys: u64 = knob("MEMORY_BENCH_KEYS", 1_000_000);
    let small: String = knob(
        "MEMORY_BENCH_SMALL",
        "store.block_cache_bytes=16777216;store.write_buffer_bytes=8388608".to_owned(),
    );
    let only: String = knob("MEMORY_BENCH_ONLY", String::new());
    let small: Vec<String> = small.split(';').map(str::to_owned).collect();
    let scenarios = [
        Scenario {
            name: "a",
            replicas,
            keys,
            sets: vec![],
        },
        Scenario {
            name: "b",
            replicas,
            keys: 1_000,
            sets: vec![],
        },
        Scenario {
            name: "c",
            replicas: 1_000,
            keys: 1_000,
            sets: vec![],
        },
        Scenario {
            name: "d",
            replicas,
            keys,
            sets: small.clone(),
        },
    ];
    println!("| scenario | replicas | keys | events | store settings | RocksDB budget (MiB) | idle RSS (MiB) | converged VmRSS (MiB) | VmHWM (MiB) | state dir on disk (MiB) | time to converge (s) |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    let mut got = BTreeMap::new();
    for s in &scenarios {
        if !only.is_empty() && !only.split(',').any(|o| o == s.name) {
            continue;
        }
        let m = run(s);
        println!(
            "| {} | {} | {} | {} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} |",
            s.name,
            s.replicas,
            s.keys,
            s.replicas * PER_BATCH,
            if s.sets.is_empty() {
                "shipped".to_owned()
            } else {
                s.sets.join(", ")
            },
            mib(m.budget as u64),
            mib(m.idle),
            mib(m.rss),
            mib(m.hwm),
            mib(m.store_bytes),
            m.secs
        );
        got.insert(s.name, (s.replicas, m.rss));
    }
    if let (Some((_, a)), Some((_, b))) = (got.get("a"), got.get("b")) {
        println!(
            "a - b: {:.0} MiB for {} more keys ({:.1} B a key)",
            (*a as f64 - *b as f64) / (1 << 20) as f64,
            keys - 1_000,
            (*a as f64 - *b as f64) / (keys - 1_000) as f64
        );
    }
    if let (Some((rb, b)), Some((rc, c))) = (got.get("b"), got.get("c")) {
        println!(
            "b - c: {:.0} MiB for {} more replicas ({:.0} B a replica)",
            (*b as f64 - *c as f64) / (1 << 20) as f64,
            rb - rc,
            (*b as f64 - *c as f64) / (rb - rc) as f64
        );
    }
}

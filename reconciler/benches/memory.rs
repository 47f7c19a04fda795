//! Reconciler memory with many replicas and keys, against the RocksDB budget its configuration
//! sets.
//!
//! `cargo bench -p edgesync-reconciler --bench memory` runs the `edgesync-reconciler` binary on
//! Apache Kafka (single node, the test kit's sizing), once per scenario on a fresh broker:
//! it starts the reconciler on empty topics (4 partitions), reads its idle RSS, writes one
//! batch per replica to the deltas topic as the bridges would (10 events setting max registers
//! on the replica's own keys, `keys / replicas` of them: every key has one writer, so a key's
//! state, version vector included, has the same size in every scenario), waits until every
//! event is in the events topic, every delta merged and the emitted states have stopped moving
//! (converged), and reads `VmRSS` and `VmHWM` (the peak) from `/proc`; then stops it (SIGTERM)
//! and starts it again on its state directory, and once it has taken its partitions back (every
//! replica's protocol state loaded from the store, one ledger line each) reads them again: what
//! the process keeps, without what processing the load left in the allocator.
//!
//! Scenarios (`MEMORY_BENCH_ONLY=a,c` picks some):
//!
//! - **a**: 100,000 replicas, 1,000,000 keys, the shipped `[store]` settings;
//! - **b**: 100,000 replicas, 100,000 keys: against a, what 900,000 more keys cost;
//! - **c**: 1,000 replicas, 1,000 keys: against b, what 99,000 more replicas cost;
//! - **d**: as a, with a small store (`MEMORY_BENCH_SMALL`, default 16 MiB of block cache and
//!   two 8 MiB memtables).
//!
//! `MEMORY_BENCH_REPLICAS` and `MEMORY_BENCH_KEYS` change the large counts (100,000 and
//! 1,000,000); `MEMORY_BENCH_SET` adds `;`-separated `--set` values to every scenario, and
//! `MEMORY_BENCH_ENV` `;`-separated `NAME=value` variables to the reconciler's environment
//! (e.g. `MALLOC_ARENA_MAX=2`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use edgesync_core::crdt::MaxRegister;
use edgesync_core::{
    Crdt, DeltaBatch, DeviceId, Dot, Event, EventLimits, Hlc, Incarnation, ReplicaId, Value,
};
use edgesync_reconciler::config::Config;
use edgesync_schemas::{Codec, Limits};
use edgesync_servicekit::config::ServiceConfig;
use edgesync_testkit::mem::{dir_bytes, mib, rss};
use edgesync_testkit::{knob, partition_for, CountingDeliveries, Kafka, Service};
use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};

const PARTITIONS: i32 = 4;
/// Events, and distinct state keys, in each replica's batch.
const PER_BATCH: u64 = 10;

struct Scenario {
    name: &'static str,
    replicas: u64,
    keys: u64,
    sets: Vec<String>,
}

/// Replica `r`'s batch: seqs 1..=10, event `j` setting its key `j mod per` of its `per` own
/// keys (`k/<r * per + j mod per>`).
fn batch(codec: &Codec, r: u64, per: u64) -> (String, Vec<u8>) {
    let dev = format!("dev-{r:07}");
    let replica = ReplicaId::new(DeviceId::new(&dev).unwrap(), Incarnation::new(7).unwrap());
    let mut state = BTreeMap::new();
    let events = (0..PER_BATCH)
        .map(|j| {
            let value = 100.0 + ((r + j) % 97) as f64;
            state.insert(
                format!("k/{:07}", r * per + j % per),
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
    let p: ThreadedProducer<CountingDeliveries> = ClientConfig::new()
        .set("bootstrap.servers", k.bootstrap())
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .create_with_context(CountingDeliveries::default())
        .unwrap();
    let per = (s.keys / s.replicas).clamp(1, PER_BATCH);
    for r in 0..s.replicas {
        let (dev, bytes) = batch(&codec, r, per);
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

struct Measured {
    idle: u64,
    rss: u64,
    hwm: u64,
    /// After a restart on the converged state.
    restarted: (u64, u64),
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
    let mut env = vec![("RUST_LOG".to_owned(), "warn".to_owned())];
    if let Ok(extra) = std::env::var("MEMORY_BENCH_ENV") {
        env.extend(
            extra
                .split(';')
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_owned(), v.to_owned())),
        );
    }
    let mut svc = Service::start_with_env(program, None, "bench reconciler", &sets, &env).unwrap();
    let pid = svc.process.pid().unwrap();
    let metric = |name: &str| svc.metric(name, "") as u64;
    // Idle: both stages joined their groups on the empty topics.
    std::thread::sleep(Duration::from_secs(5));
    let idle = rss(pid).0;
    let started = Instant::now();
    write_batches(&k, s);
    let per = (s.keys / s.replicas).clamp(1, PER_BATCH);
    let (events, deltas) = (s.replicas * PER_BATCH, s.replicas * per);
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
    let (rss_now, hwm) = rss(pid);
    svc.process.terminate(Duration::from_secs(30));
    svc.process.restart().unwrap();
    let metric = |name: &str| svc.metric(name, "") as u64;
    let deadline = Instant::now() + Duration::from_secs(300);
    while metric("edgesync_reconciler_replicas") < s.replicas {
        assert!(Instant::now() < deadline, "partitions not taken back");
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(5));
    let restarted = rss(svc.process.pid().unwrap());
    Measured {
        idle,
        rss: rss_now,
        hwm,
        restarted,
        budget,
        secs,
        store_bytes: dir_bytes(&svc.dir().join("state")),
    }
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
            keys: replicas,
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
    println!("| scenario | replicas | keys | events | store settings | RocksDB budget (MiB) | idle RSS (MiB) | converged VmRSS (MiB) | VmHWM (MiB) | VmRSS after a restart (MiB) | state dir on disk (MiB) | time to converge (s) |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    let mut got = BTreeMap::new();
    for s in &scenarios {
        if !only.is_empty() && !only.split(',').any(|o| o == s.name) {
            continue;
        }
        let m = run(s);
        println!(
            "| {} | {} | {} | {} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} |",
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
            mib(m.restarted.0),
            mib(m.store_bytes),
            m.secs
        );
        got.insert(s.name, (s.replicas, s.keys, m.rss, m.restarted.0));
    }
    let diff = |x: &str, y: &str, what: &str| {
        if let (Some(a), Some(b)) = (got.get(x), got.get(y)) {
            let (n, d_conv, d_rest) = match what {
                "key" => (a.1 - b.1, a.2 as f64 - b.2 as f64, a.3 as f64 - b.3 as f64),
                _ => (a.0 - b.0, a.2 as f64 - b.2 as f64, a.3 as f64 - b.3 as f64),
            };
            println!(
                "{x} - {y}: {n} more {what}s: {:+.0} MiB converged ({:+.0} B a {what}), {:+.0} MiB after a restart ({:+.0} B a {what})",
                d_conv / (1 << 20) as f64,
                d_conv / n as f64,
                d_rest / (1 << 20) as f64,
                d_rest / n as f64
            );
        }
    };
    diff("a", "b", "key");
    diff("b", "c", "replica");
}

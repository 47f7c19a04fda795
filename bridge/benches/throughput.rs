//! Bridge throughput against a raw forwarding loop, over the same brokers and messages, in the
//! same run.
//!
//! `cargo bench -p edgesync-bridge --bench throughput` starts Mosquitto and a Kafka broker
//! (Apache Kafka, single node; `EDGESYNC_TEST_BROKER=tansu` for tansu), queues N real delta batches (50 events each) for an offline persistent
//! session, then lets a consumer drain them into Kafka and times it:
//!
//! - **raw**: subscribe, produce, nothing else (automatic MQTT acks, no validation, no
//!   waiting for delivery before acknowledging), in this process, with the bridge's own
//!   producer built from its own configuration (idempotent, `acks=all`, murmur2 keys, lz4);
//! - **bridge**: the `edgesync-bridge` binary (validation, dead-letter check, manual MQTT
//!   acks after each Kafka delivery report), timed until it has acknowledged all N.
//!
//! Prints messages/s of both, the ratio (target >= 0.9), the CPU each needs per 10k messages/s
//! and the CPU Mosquitto and the Kafka broker spent per 10k messages/s in the timed window (a
//! forwarder that makes the brokers work harder shows there). Each run gets fresh brokers and
//! the sides alternate over `BRIDGE_BENCH_ROUNDS` rounds (default 4: single runs vary by ±15 %
//! here); the means are compared. `BRIDGE_BENCH_MSGS` sets N (default 80,000; shorter runs are
//! noise). The bridge runs on its defaults. For tuning runs: `BRIDGE_BENCH_SET` passes one
//! `--set` to the bridge (e.g. `mqtt.max_inflight=1000`), `BRIDGE_BENCH_PROPS` librdkafka
//! properties for both sides' producers as a TOML inline table (e.g. `{ "linger.ms" = "20" }`),
//! and `BRIDGE_BENCH_ONLY=raw|bridge` runs one side (to profile it).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use edgesync_core::{
    DeltaBatch, DeviceId, Dot, Event, EventLimits, Hlc, Incarnation, ReplicaId, Value,
};
use edgesync_schemas::{Codec, Limits};
use edgesync_servicekit::config::ServiceConfig;
use edgesync_testkit::cpu::process_secs;
use edgesync_testkit::{knob, unique, Kafka, Mosquitto, Service};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rumqttc::{Client, Event as MqttEvent, MqttOptions, Packet, QoS};

const DEVICES: u64 = 100;

fn batches(n: u64) -> Vec<(String, Vec<u8>)> {
    let codec = Codec::new(Limits::default()).unwrap();
    (0..n)
        .map(|i| {
            let dev = format!("pump-{}", i % DEVICES);
            let r = ReplicaId::new(DeviceId::new(&dev).unwrap(), Incarnation::new(9).unwrap());
            let first = i / DEVICES * 50 + 1;
            let events = (0..50)
                .map(|k| Event {
                    dot: Dot::new(r.clone(), first + k),
                    hlc: Hlc::new(1_700_000_000_000 + i * 50 + k, 0),
                    stream: "pump.telemetry".into(),
                    schema_version: 1,
                    fields: BTreeMap::from([
                        (
                            "pressure_kpa".into(),
                            Value::Double(101.0 + k as f64 / 10.0),
                        ),
                        ("rpm".into(), Value::Long(1400 + k as i64)),
                    ]),
                    tags: BTreeMap::new(),
                })
                .collect();
            let b = DeltaBatch::new(r, first, events, BTreeMap::new(), &EventLimits::default())
                .unwrap();
            (
                format!("edgesync/v1/{dev}/batch"),
                codec.encode_batch(&b).unwrap(),
            )
        })
        .collect()
}

/// Creates the persistent session `client_id` subscribed to `filter`, then leaves. MQTT 5 with
/// a session expiry, like the bridge's own session.
fn make_session(mqtt: SocketAddr, client_id: &str, filter: &str) {
    use rumqttc::v5::mqttbytes::v5::Packet as P5;
    use rumqttc::v5::{Client as Client5, Event as Event5, MqttOptions as Options5};
    let mut o = Options5::new(client_id, mqtt.ip().to_string(), mqtt.port());
    o.set_clean_start(false);
    o.set_session_expiry_interval(Some(3600));
    let (client, mut conn) = Client5::new(o, 10);
    client
        .subscribe(filter, rumqttc::v5::mqttbytes::QoS::AtLeastOnce)
        .unwrap();
    for ev in conn.iter() {
        if let Ok(Event5::Incoming(P5::SubAck(_))) = ev {
            break;
        }
    }
    client.disconnect().unwrap();
    for ev in conn.iter() {
        if ev.is_err() {
            break;
        }
    }
}

/// Publishes every message (QoS 1) and waits for the broker to have them all.
fn publish_all(mqtt: SocketAddr, msgs: &[(String, Vec<u8>)]) {
    let mut o = MqttOptions::new(unique("feeder"), mqtt.ip().to_string(), mqtt.port());
    o.set_max_packet_size(4 << 20, 4 << 20);
    let (client, mut conn) = Client::new(o, 1000);
    let acked = Arc::new(AtomicU64::new(0));
    let a = Arc::clone(&acked);
    let n = msgs.len() as u64;
    let t = std::thread::spawn(move || {
        for ev in conn.iter() {
            if let Ok(MqttEvent::Incoming(Packet::PubAck(_))) = ev {
                if a.fetch_add(1, Ordering::SeqCst) + 1 == n {
                    break;
                }
            }
        }
    });
    for (topic, payload) in msgs {
        client
            .publish(topic.as_str(), QoS::AtLeastOnce, false, payload.clone())
            .unwrap();
    }
    t.join().unwrap();
}

/// `BRIDGE_BENCH_PROPS` (`{ "linger.ms" = "20", ... }`) as the bridge's environment setting of
/// its librdkafka properties, for both sides' producers.
fn props_env() -> Option<(String, String)> {
    std::env::var("BRIDGE_BENCH_PROPS")
        .ok()
        .map(|p| ("EDGESYNC_BRIDGE__KAFKA__PROPERTIES".to_owned(), p))
}

/// What one side measured.
#[derive(Clone, Copy)]
struct Run {
    /// Batches per second, first receipt to last delivery.
    rate: f64,
    /// CPU seconds of the forwarder (whole run).
    cpu: f64,
    /// CPU seconds of Mosquitto and of the Kafka broker in the timed window.
    brokers: [f64; 2],
}

/// CPU seconds of the brokers (Mosquitto, Kafka) so far.
fn brokers_cpu(pids: [u32; 2]) -> [f64; 2] {
    pids.map(process_secs)
}

/// CPU the brokers used since `before`.
fn brokers_since(pids: [u32; 2], before: [f64; 2]) -> [f64; 2] {
    let now = brokers_cpu(pids);
    [now[0] - before[0], now[1] - before[1]]
}

fn raw(mqtt: SocketAddr, kafka: &Kafka, pids: [u32; 2], n: u64, msgs: &[(String, Vec<u8>)]) -> Run {
    let id = "raw-forwarder";
    make_session(mqtt, id, "edgesync/v1/+/batch");
    publish_all(mqtt, msgs);
    // The bridge's own producer, from its own configuration: the ratio measures what the bridge
    // adds, not a weaker producer.
    let cfg = edgesync_bridge::config::Config::load(
        None,
        props_env(),
        &[format!("kafka.bootstrap_servers={}", kafka.bootstrap())],
    )
    .unwrap();
    let producer: FutureProducer = edgesync_bridge::kafka::producer(&cfg.kafka).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let cpu0 = process_secs(std::process::id());
    let mut started = Instant::now();
    let mut brokers0 = [0.0; 2];
    rt.block_on(async {
        let mut o = MqttOptions::new(id, mqtt.ip().to_string(), mqtt.port());
        o.set_clean_session(false);
        o.set_max_packet_size(4 << 20, 4 << 20);
        let (_client, mut events) = rumqttc::AsyncClient::new(o, 1000);
        let delivered = Arc::new(AtomicU64::new(0));
        let mut received = 0u64;
        while received < n {
            if let Ok(MqttEvent::Incoming(Packet::Publish(p))) = events.poll().await {
                if received == 0 {
                    started = Instant::now();
                    brokers0 = brokers_cpu(pids);
                }
                received += 1;
                let key = p.topic.split('/').nth(2).unwrap_or_default().to_owned();
                loop {
                    let rec = FutureRecord::to("raw.deltas")
                        .key(&key)
                        .payload(&p.payload[..]);
                    match producer.send_result(rec) {
                        Ok(f) => {
                            let d = Arc::clone(&delivered);
                            tokio::spawn(async move {
                                if let Ok(Ok(_)) = f.await {
                                    d.fetch_add(1, Ordering::SeqCst);
                                }
                            });
                            break;
                        }
                        Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
                    }
                }
            }
        }
        while delivered.load(Ordering::SeqCst) < n {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    let secs = started.elapsed().as_secs_f64();
    let brokers = brokers_since(pids, brokers0);
    producer.flush(Duration::from_secs(10)).unwrap();
    Run {
        rate: n as f64 / secs,
        cpu: process_secs(std::process::id()) - cpu0,
        brokers,
    }
}

fn bridge(
    mqtt: SocketAddr,
    kafka: &Kafka,
    pids: [u32; 2],
    n: u64,
    msgs: &[(String, Vec<u8>)],
) -> Run {
    let id = "bench-bridge";
    // The same plain subscription as the raw loop: a session queued while offline.
    make_session(mqtt, id, "edgesync/v1/+/batch");
    publish_all(mqtt, msgs);
    let mut sets = vec![
        format!("mqtt.port={}", mqtt.port()),
        format!("mqtt.client_id={id}"),
        "mqtt.shared_group=".into(),
        format!("kafka.bootstrap_servers={}", kafka.bootstrap()),
        "kafka.partitions=4".into(),
    ];
    sets.extend(std::env::var("BRIDGE_BENCH_SET").ok());
    let env: Vec<(String, String)> = props_env()
        .into_iter()
        .chain([("RUST_LOG".to_owned(), "warn".to_owned())])
        .collect();
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_edgesync-bridge"));
    let svc = Service::start_with_env(bin, None, "bench bridge", &sets, &env).unwrap();
    let pid = svc.process.pid().unwrap();
    let metric = |name: &str| svc.metric(name, "") as u64;
    // Timed from the first message received, like the raw loop (start-up excluded).
    while metric("edgesync_bridge_received_total") == 0 {
        std::thread::sleep(Duration::from_millis(2));
    }
    let started = Instant::now();
    let brokers0 = brokers_cpu(pids);
    while metric("edgesync_bridge_mqtt_acked_total") < n {
        std::thread::sleep(Duration::from_millis(20));
    }
    let secs = started.elapsed().as_secs_f64();
    let brokers = brokers_since(pids, brokers0);
    let peak = metric("edgesync_bridge_inflight_peak");
    PEAK.fetch_max(peak, Ordering::SeqCst);
    Run {
        rate: n as f64 / secs,
        cpu: process_secs(pid),
        brokers,
    }
}

/// The most messages the bridge had in flight in any run (the receive maximum, unless the
/// broker ignored it).
static PEAK: AtomicU64 = AtomicU64::new(0);

/// Fresh brokers for one phase, so that neither side runs on a broker already holding the
/// other's records (tansu slows down as its log grows: the side that ran second lost 15-20 %).
fn brokers() -> (Mosquitto, Kafka) {
    let m = Mosquitto::start().unwrap();
    let k = Kafka::start().unwrap();
    k.create_topic("raw.deltas", 4, &[]).unwrap();
    (m, k)
}

fn main() {
    let n: u64 = knob("BRIDGE_BENCH_MSGS", 80_000);
    let rounds: usize = knob("BRIDGE_BENCH_ROUNDS", 4);
    // "raw" or "bridge" runs one side only (for profiling); the ratio needs both.
    let only: String = knob("BRIDGE_BENCH_ONLY", String::new());
    let msgs = batches(n);
    let bytes: usize = msgs.iter().map(|(_, p)| p.len()).sum();
    // Alternating order (raw, bridge, bridge, raw, ...) so drift on the machine hits both.
    let (mut raws, mut bridges) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        for is_raw in [round % 2 == 0, round % 2 == 1] {
            if !only.is_empty() && (only == "raw") != is_raw {
                continue;
            }
            let (mut m, mut k) = brokers();
            let pids = [m.process().pid().unwrap(), k.process().pid().unwrap()];
            if is_raw {
                raws.push(raw(m.addr(), &k, pids, n, &msgs));
            } else {
                bridges.push(bridge(m.addr(), &k, pids, n, &msgs));
            }
        }
    }
    println!(
        "{n} batches of 50 events ({:.0} B average) from {DEVICES} devices, {rounds} rounds, fresh brokers per run",
        bytes as f64 / n as f64
    );
    println!("| | batches/s (mean) | runs | events/s | CPU cores per 10k msg/s | Mosquitto's | Kafka broker's |");
    println!("|---|---|---|---|---|---|---|");
    let row = |name: &str, v: &[Run]| -> f64 {
        if v.is_empty() {
            return f64::NAN;
        }
        let l = v.len() as f64;
        let rate = v.iter().map(|r| r.rate).sum::<f64>() / l;
        // CPU seconds per second of work, scaled to 10k batches/s.
        let per10k = |f: fn(&Run) -> f64| {
            v.iter()
                .map(|r| f(r) / (n as f64 / r.rate) * (10_000.0 / r.rate))
                .sum::<f64>()
                / l
        };
        let runs: Vec<String> = v.iter().map(|r| format!("{:.0}", r.rate)).collect();
        println!(
            "| {name} | {rate:.0} | {} | {:.0} | {:.2} | {:.2} | {:.2} |",
            runs.join(", "),
            rate * 50.0,
            per10k(|r| r.cpu),
            per10k(|r| r.brokers[0]),
            per10k(|r| r.brokers[1]),
        );
        rate
    };
    let raw_rate = row("raw forward (subscribe, produce)", &raws);
    let bridge_rate = row("edgesync-bridge", &bridges);
    println!(
        "ratio bridge / raw: {:.2} (target >= 0.9); bridge in flight at most {} ({})",
        bridge_rate / raw_rate,
        PEAK.load(Ordering::SeqCst),
        std::env::var("BRIDGE_BENCH_SET").unwrap_or_else(|_| "bridge defaults".into())
    );
}

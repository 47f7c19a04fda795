//! The `edgesync-bridge` binary between a real Mosquitto and a real Kafka broker (Apache
//! Kafka; forwarding, Kafka down and the ack path also on tansu, the paths where brokers can
//! differ: partitioning by key, producer recovery after a broker restart, a consumer group):
//! forwarding keyed by device and in order, shared subscriptions, every dead-letter case,
//! `kill -9` mid-stream, Kafka down, and the ack path.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use edgesync_core::{
    DeltaBatch, DeviceId, DropReason, DroppedRange, EventLimits, Incarnation, ReplicaId, SeqRange,
};
use edgesync_schemas::{Ack, Codec, DeadLetterReason, Limits};
use edgesync_testkit::{
    on_both_brokers, unique, wait_until, Broker, Kafka, Mosquitto, MosquittoOptions, Record as Rec,
    Service,
};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rumqttc::{Client, Event, MqttOptions, Packet, QoS};

const BIN: &str = env!("CARGO_BIN_EXE_edgesync-bridge");

/// The bridge binary against `mqtt` and `kafka`, plus `sets` flags, once it has subscribed
/// (it connects to MQTT only when Kafka has leaders for its topics: batches published before
/// its first subscription have no subscriber, and the broker drops them).
fn start_bridge(mqtt: SocketAddr, kafka: &Kafka, client_id: &str, sets: &[&str]) -> Service {
    let mut all = vec![
        format!("mqtt.host={}", mqtt.ip()),
        format!("mqtt.port={}", mqtt.port()),
        format!("mqtt.client_id={client_id}"),
        "mqtt.keep_alive_secs=5".into(),
        format!("kafka.bootstrap_servers={}", kafka.bootstrap()),
        "kafka.partitions=4".into(),
    ];
    all.extend(sets.iter().map(|s| s.to_string()));
    let name = format!("edgesync-bridge {client_id}");
    let s = Service::start(PathBuf::from(BIN), None, &name, &all).unwrap();
    let subscribed = wait_until(Duration::from_secs(60), || {
        s.process.log_tail(10_000).contains("bridge subscribed")
    });
    assert!(
        subscribed,
        "{name} never subscribed:\n{}",
        s.process.log_tail(30)
    );
    s
}

fn replica(device: &str) -> ReplicaId {
    ReplicaId::new(
        DeviceId::new(device).unwrap(),
        Incarnation::new(42).unwrap(),
    )
}

/// A valid batch of `device` covering seqs `first..first+n` (as dropped seqs: small and valid).
fn batch(codec: &Codec, device: &str, first: u64, n: u64) -> Vec<u8> {
    let b = DeltaBatch::with_dropped(
        replica(device),
        first,
        vec![],
        vec![DroppedRange {
            range: SeqRange {
                start: first,
                end: first + n - 1,
            },
            reason: DropReason::Quota,
        }],
        BTreeMap::new(),
        &EventLimits::default(),
    )
    .unwrap();
    codec.encode_batch(&b).unwrap()
}

/// A device-side MQTT client that publishes QoS 1 and counts broker acknowledgements.
struct Publisher {
    client: Client,
    acked: Arc<AtomicU64>,
}

fn publisher(addr: SocketAddr) -> Publisher {
    let mut o = MqttOptions::new(unique("dev"), addr.ip().to_string(), addr.port());
    o.set_keep_alive(Duration::from_secs(5));
    o.set_max_packet_size(4 << 20, 4 << 20);
    let (client, mut conn) = Client::new(o, 1000);
    let acked = Arc::new(AtomicU64::new(0));
    let a = Arc::clone(&acked);
    std::thread::spawn(move || {
        for ev in conn.iter() {
            if let Ok(Event::Incoming(Packet::PubAck(_))) = ev {
                a.fetch_add(1, Ordering::SeqCst);
            }
        }
    });
    Publisher { client, acked }
}

impl Publisher {
    fn publish(&self, topic: &str, payload: Vec<u8>) {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .unwrap();
    }
}

/// Everything in `topic` until `done` or the timeout.
fn read_topic(
    k: &Kafka,
    topic: &str,
    timeout: Duration,
    done: impl Fn(&[Rec]) -> bool,
) -> Vec<Rec> {
    k.read_topic(topic, timeout, done).unwrap()
}

/// (device, first seq) of every batch record.
fn batches_of(codec: &Codec, recs: &[Rec]) -> Vec<(String, u64)> {
    recs.iter()
        .map(|r| {
            let b = codec.decode_batch(&r.payload).unwrap();
            assert_eq!(r.key, b.replica().device.as_str(), "key is not the device");
            (r.key.clone(), b.first_seq())
        })
        .collect()
}

fn batches_from_many_devices_land_once_keyed_by_device_in_order_across_shared_bridges(b: Broker) {
    let m = Mosquitto::start().unwrap();
    let k = Kafka::start_on(b).unwrap();
    let codec = Codec::new(Limits::default()).unwrap();
    let a = start_bridge(m.addr(), &k, "bridge-a", &[]);
    let b = start_bridge(m.addr(), &k, "bridge-b", &[]);
    std::thread::sleep(Duration::from_millis(500)); // both subscriptions in place
    let p = publisher(m.addr());
    let (devices, per_device) = (20u64, 10u64);
    for round in 0..per_device {
        for d in 0..devices {
            let dev = format!("pump-{d}");
            p.publish(
                &format!("edgesync/v1/{dev}/batch"),
                batch(&codec, &dev, round * 5 + 1, 5),
            );
        }
    }
    let total = (devices * per_device) as usize;
    let recs = read_topic(&k, "edgesync.deltas", Duration::from_secs(60), |r| {
        r.len() >= total
    });
    let got = batches_of(&codec, &recs);
    assert_eq!(got.len(), total, "a batch is missing or doubled");
    let mut partition_of: BTreeMap<&str, BTreeSet<i32>> = BTreeMap::new();
    for r in &recs {
        partition_of.entry(&r.key).or_default().insert(r.partition);
    }
    assert!(
        partition_of.values().all(|p| p.len() == 1),
        "a device spans partitions"
    );
    for d in 0..devices {
        let dev = format!("pump-{d}");
        let seqs: Vec<u64> = got
            .iter()
            .filter(|(k, _)| *k == dev)
            .map(|(_, s)| *s)
            .collect();
        let want: Vec<u64> = (0..per_device).map(|r| r * 5 + 1).collect();
        assert_eq!(seqs, want, "{dev} out of order or incomplete");
    }
    let (ra, rb) = (
        a.metric("edgesync_bridge_received_total", ""),
        b.metric("edgesync_bridge_received_total", ""),
    );
    assert_eq!(ra + rb, total as f64);
    assert!(
        ra > 0.0 && rb > 0.0,
        "the shared subscription did not split the load: {ra} / {rb}"
    );
    assert!(wait_until(Duration::from_secs(10), || {
        a.metric("edgesync_bridge_mqtt_acked_total", "")
            + b.metric("edgesync_bridge_mqtt_acked_total", "")
            == total as f64
    }));
}

on_both_brokers!(
    batches_from_many_devices_land_once_keyed_by_device_in_order_across_shared_bridges,
    with_kafka_down_nothing_is_acknowledged_or_lost,
    the_ack_path_leaves_the_latest_watermark_retained_for_devices_that_connect_later,
);

#[test]
fn every_bad_input_is_dead_lettered_with_its_reason_and_the_stream_goes_on() {
    let m = Mosquitto::start().unwrap();
    let k = Kafka::start().unwrap();
    let codec = Codec::new(Limits::default()).unwrap();
    let bridge = start_bridge(m.addr(), &k, "bridge-dlq", &["max_payload_bytes=2000"]);
    std::thread::sleep(Duration::from_millis(300));
    let p = publisher(m.addr());
    let cases: Vec<(&str, Vec<u8>, DeadLetterReason)> = vec![
        (
            "edgesync/v1/pump-a/batch",
            batch(&codec, "pump-b", 1, 3),
            DeadLetterReason::DeviceMismatch,
        ),
        (
            "edgesync/v1/Pump_A/batch",
            batch(&codec, "pump-a", 1, 3),
            DeadLetterReason::BadDeviceId,
        ),
        (
            "edgesync/v1/pump-a/batch",
            vec![7u8; 3000],
            DeadLetterReason::Oversize,
        ),
        (
            "edgesync/v1/pump-a/batch",
            b"\x28\xb5\x2f\xfd garbage".to_vec(),
            DeadLetterReason::Undecodable,
        ),
        (
            "edgesync/v1/pump-a/batch",
            Vec::new(),
            DeadLetterReason::Undecodable,
        ),
    ];
    for (topic, payload, _) in &cases {
        p.publish(topic, payload.clone());
    }
    p.publish("edgesync/v1/pump-a/batch", batch(&codec, "pump-a", 1, 3));
    let dlq = read_topic(&k, "edgesync.dlq", Duration::from_secs(30), |r| {
        r.len() >= cases.len()
    });
    assert_eq!(dlq.len(), cases.len());
    // Keys differ (device, or the topic when there is no valid device): partitions differ, so
    // match by content rather than by position.
    let letters: Vec<_> = dlq
        .iter()
        .map(|r| codec.decode_dead_letter(&r.payload).unwrap())
        .collect();
    for (topic, payload, reason) in &cases {
        let d = letters
            .iter()
            .find(|d| &d.payload == payload && d.source == format!("mqtt:{topic}"))
            .unwrap_or_else(|| panic!("no dead letter for {topic} ({reason:?})"));
        assert_eq!(d.reason, *reason, "{}", d.detail);
        assert!(!d.detail.is_empty());
    }
    let good = read_topic(&k, "edgesync.deltas", Duration::from_secs(30), |r| {
        !r.is_empty()
    });
    assert_eq!(batches_of(&codec, &good), vec![("pump-a".to_string(), 1)]);
    assert!(wait_until(Duration::from_secs(10), || p
        .acked
        .load(Ordering::SeqCst)
        == 6));
    assert_eq!(
        bridge.metric("edgesync_bridge_dead_lettered_total", "undecodable"),
        2.0
    );
    assert_eq!(
        bridge.metric("edgesync_bridge_dead_lettered_total", ""),
        5.0
    );
    assert!(wait_until(Duration::from_secs(10), || bridge
        .metric("edgesync_bridge_mqtt_acked_total", "")
        == 6.0));
}

#[test]
fn kill_9_mid_stream_loses_nothing() {
    let m = Mosquitto::start().unwrap();
    let k = Kafka::start().unwrap();
    let codec = Arc::new(Codec::new(Limits::default()).unwrap());
    let mut bridge = start_bridge(m.addr(), &k, "bridge-kill", &[]);
    std::thread::sleep(Duration::from_millis(300));
    let p = publisher(m.addr());
    let n = 3000u64;
    let sent = Arc::new(AtomicBool::new(false));
    let (c2, s2) = (Arc::clone(&codec), Arc::clone(&sent));
    let client = p.client.clone();
    let feeder = std::thread::spawn(move || {
        for i in 0..n {
            let dev = format!("pump-{}", i % 10);
            let payload = batch(&c2, &dev, i / 10 * 2 + 1, 2);
            client
                .publish(
                    format!("edgesync/v1/{dev}/batch"),
                    QoS::AtLeastOnce,
                    false,
                    payload,
                )
                .unwrap();
            if i % 100 == 0 {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        s2.store(true, Ordering::SeqCst);
    });
    std::thread::sleep(Duration::from_millis(400));
    bridge.process.kill9();
    std::thread::sleep(Duration::from_millis(300));
    bridge.process.restart().unwrap();
    feeder.join().unwrap();
    assert!(sent.load(Ordering::SeqCst));
    let want: BTreeSet<(String, u64)> = (0..n)
        .map(|i| (format!("pump-{}", i % 10), i / 10 * 2 + 1))
        .collect();
    let recs = read_topic(&k, "edgesync.deltas", Duration::from_secs(90), |r| {
        r.len() as u64 >= n && batches_of(&codec, r).into_iter().collect::<BTreeSet<_>>() == want
    });
    let got = batches_of(&codec, &recs);
    let unique: BTreeSet<(String, u64)> = got.iter().cloned().collect();
    let missing: Vec<_> = want.difference(&unique).take(5).collect();
    assert!(
        missing.is_empty(),
        "lost: {missing:?}\n{}",
        bridge.process.log_tail(60)
    );
    let duplicates = got.len() - unique.len();
    eprintln!("kill -9 mid-stream: {n} batches, {duplicates} duplicates in Kafka");
}

fn with_kafka_down_nothing_is_acknowledged_or_lost(b: Broker) {
    let m = Mosquitto::start().unwrap();
    let mut k = Kafka::start_on(b).unwrap();
    let codec = Codec::new(Limits::default()).unwrap();
    // A window of 10: the broker may have at most 10 unacknowledged batches out to the bridge.
    let bridge = start_bridge(m.addr(), &k, "bridge-down", &["mqtt.max_inflight=10"]);
    std::thread::sleep(Duration::from_millis(300));
    k.process().kill9();
    let p = publisher(m.addr());
    for i in 0..50u64 {
        p.publish(
            "edgesync/v1/pump-d/batch",
            batch(&codec, "pump-d", i * 3 + 1, 3),
        );
    }
    assert!(wait_until(Duration::from_secs(10), || {
        bridge.metric("edgesync_bridge_received_total", "") == 10.0
    }));
    std::thread::sleep(Duration::from_secs(3));
    // Bounded: the bridge stopped reading at its window, the broker keeps the other 40.
    assert_eq!(bridge.metric("edgesync_bridge_received_total", ""), 10.0);
    assert_eq!(
        bridge.metric("edgesync_bridge_mqtt_acked_total", ""),
        0.0,
        "acknowledged to MQTT while Kafka was down"
    );
    assert_eq!(bridge.metric("edgesync_bridge_inflight", ""), 10.0);
    assert_eq!(bridge.metric("edgesync_bridge_inflight_peak", ""), 10.0);
    assert_eq!(bridge.metric("edgesync_bridge_inflight_limit", ""), 10.0);
    assert!(bridge.metric("edgesync_bridge_inflight_bytes", "") > 0.0);
    k.process().restart().unwrap();
    let recs = read_topic(&k, "edgesync.deltas", Duration::from_secs(60), |r| {
        r.len() >= 50
    });
    let got: BTreeSet<(String, u64)> = batches_of(&codec, &recs).into_iter().collect();
    assert_eq!(
        got.len(),
        50,
        "lost while Kafka was down\n{}",
        bridge.process.log_tail(60)
    );
    assert!(wait_until(Duration::from_secs(20), || {
        bridge.metric("edgesync_bridge_mqtt_acked_total", "") == 50.0
    }));
}

fn the_ack_path_leaves_the_latest_watermark_retained_for_devices_that_connect_later(b: Broker) {
    let m = Mosquitto::start().unwrap();
    let k = Kafka::start_on(b).unwrap();
    let codec = Codec::new(Limits::default()).unwrap();
    let bridge = start_bridge(m.addr(), &k, "bridge-acks", &[]);
    let producer: ThreadedProducer<DefaultProducerContext> = k.client_config().create().unwrap();
    for (device, wm) in [
        ("pump-x", 5u64),
        ("pump-x", 9),
        ("pump-x", 7),
        ("pump-y", 3),
    ] {
        let ack = Ack {
            replica: replica(device),
            watermark: wm,
            acked_at_ms: 1,
        };
        let bytes = codec.encode_ack(&ack).unwrap();
        producer
            .send(BaseRecord::to("edgesync.acks").key(device).payload(&bytes))
            .unwrap();
    }
    producer.flush(Duration::from_secs(10)).unwrap();
    assert!(
        wait_until(Duration::from_secs(30), || {
            bridge.metric("edgesync_bridge_acks_published_total", "") == 3.0
        }),
        "{}",
        bridge.process.log_tail(60)
    );
    assert_eq!(bridge.metric("edgesync_bridge_acks_stale_total", ""), 1.0);
    // A device connecting now gets its latest watermark at once, retained.
    for (device, want) in [("pump-x", 9u64), ("pump-y", 3)] {
        let mut o = MqttOptions::new(device, m.addr().ip().to_string(), m.addr().port());
        o.set_keep_alive(Duration::from_secs(5));
        let (client, mut conn) = Client::new(o, 10);
        client
            .subscribe(format!("edgesync/v1/{device}/ack"), QoS::AtLeastOnce)
            .unwrap();
        let got = conn.iter().find_map(|ev| match ev {
            Ok(Event::Incoming(Packet::Publish(p))) => Some(p),
            _ => None,
        });
        let p = got.unwrap();
        assert!(p.retain);
        assert_eq!(codec.decode_ack(&p.payload).unwrap().watermark, want);
    }
}

#[test]
fn the_shipped_acl_keeps_each_device_to_its_own_topics() {
    let acl = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/mosquitto.acl"),
    )
    .unwrap();
    let users = ["pump-1", "pump-2", "edgesync-bridge"]
        .map(|u| (u.to_string(), format!("pw-{u}")))
        .to_vec();
    let m = Mosquitto::start_with(MosquittoOptions {
        users,
        acl: Some(acl),
        ..MosquittoOptions::default()
    })
    .unwrap();
    let k = Kafka::start().unwrap();
    let codec = Codec::new(Limits::default()).unwrap();
    let secrets = tempfile::tempdir().unwrap();
    let pw = secrets.path().join("bridge-password");
    std::fs::write(&pw, "pw-edgesync-bridge\n").unwrap();
    let user = "mqtt.username=edgesync-bridge".to_string();
    let pass = format!("mqtt.password_file={:?}", pw.display().to_string());
    let bridge = start_bridge(m.addr(), &k, "bridge-acl", &[&user, &pass]);
    std::thread::sleep(Duration::from_millis(300));

    let mut o = MqttOptions::new("pump-1", m.addr().ip().to_string(), m.addr().port());
    o.set_credentials("pump-1", "pw-pump-1");
    o.set_keep_alive(Duration::from_secs(5));
    let (client, mut conn) = Client::new(o, 10);
    std::thread::spawn(move || for _ in conn.iter() {});
    // pump-1 forging a batch on pump-2's topic (named in the batch too, so only the ACL can
    // stop it), then its own.
    client
        .publish(
            "edgesync/v1/pump-2/batch",
            QoS::AtLeastOnce,
            false,
            batch(&codec, "pump-2", 1, 3),
        )
        .unwrap();
    client
        .publish(
            "edgesync/v1/pump-1/batch",
            QoS::AtLeastOnce,
            false,
            batch(&codec, "pump-1", 1, 3),
        )
        .unwrap();
    let recs = read_topic(&k, "edgesync.deltas", Duration::from_secs(20), |r| {
        !r.is_empty()
    });
    std::thread::sleep(Duration::from_secs(2)); // a forged batch would have arrived by now
    let more = read_topic(&k, "edgesync.deltas", Duration::from_secs(3), |r| {
        r.len() > 1
    });
    assert_eq!(batches_of(&codec, &recs), vec![("pump-1".to_string(), 1)]);
    assert_eq!(more.len(), 1, "the forged batch got through");
    assert_eq!(bridge.metric("edgesync_bridge_received_total", ""), 1.0);
}

#[test]
fn sigterm_drains_in_flight_batches_and_a_restart_takes_the_rest() {
    let m = Mosquitto::start().unwrap();
    let k = Kafka::start().unwrap();
    let codec = Codec::new(Limits::default()).unwrap();
    let mut bridge = start_bridge(m.addr(), &k, "bridge-term", &[]);
    std::thread::sleep(Duration::from_millis(300));
    let p = publisher(m.addr());
    for i in 0..300u64 {
        p.publish(
            "edgesync/v1/pump-t/batch",
            batch(&codec, "pump-t", i * 2 + 1, 2),
        );
    }
    std::thread::sleep(Duration::from_millis(200));
    let status = bridge.process.terminate(Duration::from_secs(20));
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}\n{}",
        bridge.process.log_tail(20)
    );
    bridge.process.restart().unwrap();
    let recs = read_topic(&k, "edgesync.deltas", Duration::from_secs(60), |r| {
        batches_of(&codec, r)
            .into_iter()
            .collect::<BTreeSet<_>>()
            .len()
            >= 300
    });
    let got: BTreeSet<(String, u64)> = batches_of(&codec, &recs).into_iter().collect();
    assert_eq!(got.len(), 300, "batches lost across a graceful restart");
}

/// A second consumer joining the acks group with the bridge's own `group.instance.id` makes
/// the broker fence the bridge's acks consumer (`FENCED_INSTANCE_ID`, fatal in librdkafka:
/// what Apache Kafka also does to a static member whose rejoin it failed to persist in a
/// failover). The ack path joins again as the same member and acks reach devices again.
#[test]
fn a_fenced_acks_consumer_joins_again_and_acks_flow_on() {
    let m = Mosquitto::start().unwrap();
    let k = Kafka::start().unwrap();
    let codec = Codec::new(Limits::default()).unwrap();
    let bridge = start_bridge(m.addr(), &k, "bridge-fenced", &[]);
    let producer: ThreadedProducer<DefaultProducerContext> = k.client_config().create().unwrap();
    let ack = |watermark: u64, published: f64| {
        let a = Ack {
            replica: replica("pump-f"),
            watermark,
            acked_at_ms: 1,
        };
        let bytes = codec.encode_ack(&a).unwrap();
        producer
            .send(
                BaseRecord::to("edgesync.acks")
                    .key("pump-f")
                    .payload(&bytes),
            )
            .unwrap();
        producer.flush(Duration::from_secs(10)).unwrap();
        assert!(
            wait_until(Duration::from_secs(60), || {
                bridge.metric("edgesync_bridge_acks_published_total", "") == published
            }),
            "ack {watermark} not published:\n{}",
            bridge.process.log_tail(60)
        );
    };
    ack(5, 1.0);
    let rogue: rdkafka::consumer::BaseConsumer = k
        .client_config()
        .set("group.id", "edgesync-bridge-acks")
        .set("group.instance.id", "bridge-fenced-acks")
        .create()
        .unwrap();
    rdkafka::consumer::Consumer::subscribe(&rogue, &["edgesync.acks"]).unwrap();
    assert!(
        wait_until(Duration::from_secs(60), || {
            let _ = rogue.poll(Duration::from_millis(200));
            bridge
                .process
                .log_tail(10_000)
                .contains("acks consumer unusable; joining again")
        }),
        "the bridge's acks consumer was not fenced:\n{}",
        bridge.process.log_tail(60)
    );
    // Static members do not leave on close: the bridge's new consumer takes the place.
    drop(rogue);
    ack(9, 2.0);
}

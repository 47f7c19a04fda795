//! The whole pipeline on a 3-node Apache Kafka cluster (three KRaft voters, replication factor
//! 3, `min.insync.replicas=2`) through broker faults, with the services on their shipped
//! client settings and the topics replicated three times:
//!
//! 1. `kill -9` of the leader of the partition carrying one device's deltas, then of the one
//!    carrying its events, while the agents send; each restarted on its data;
//! 2. SIGSTOP of the deltas leader for longer than the producer's request timeout (a broker
//!    that hangs, holding its connections, rather than dies), then SIGCONT;
//! 3. the reconciler killed, and a second later the broker coordinating its consumer group
//!    (the case tansu failed: a broker restart while the group waits out a dead member);
//! 4. the whole cluster down: the bridge receives batches but acknowledges none of them to
//!    MQTT while Kafka cannot take them, then the cluster restarts and everything recovers by
//!    itself.
//!
//! Checked by history ([`edgesync_tests::Fleet::assert_converged`]).
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use edgesync_schemas::topics::kafka as topics;
use edgesync_testkit::Kafka;
use edgesync_tests::Fleet;

/// The pipeline's topics (shipped names) whose replicas must be back before the next fault.
const TOPICS: [&str; 3] = [topics::DELTAS, topics::EVENTS, topics::STATE];
/// librdkafka's `request.timeout.ms` default, which the services keep.
const PRODUCER_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// The reconciler's device-stage consumer group (`deploy/reconciler.toml`).
const DEVICE_GROUP: &str = "edgesync-reconciler-device";
/// `offsets.topic.num.partitions` in the test cluster.
const OFFSETS_PARTITIONS: i32 = 5;

/// The partition of `topic` holding `device`'s records (read back, not recomputed).
fn partition_of(k: &Kafka, topic: &str, device: &str) -> i32 {
    let recs = k
        .read_topic(topic, Duration::from_secs(60), |r| {
            r.iter().any(|x| x.key == device)
        })
        .unwrap();
    recs.iter()
        .find(|x| x.key == device)
        .unwrap_or_else(|| panic!("no record of {device} in {topic}"))
        .partition
}

/// The `__consumer_offsets` partition whose leader coordinates `group`: Kafka's
/// `Utils.abs(group.hashCode()) % partitions`, with Java's string hash.
fn coordinator_partition(group: &str) -> i32 {
    let h = group
        .encode_utf16()
        .fold(0i32, |h, c| h.wrapping_mul(31).wrapping_add(i32::from(c)));
    let abs = if h == i32::MIN { 0 } else { h.abs() };
    abs % OFFSETS_PARTITIONS
}

/// `rounds` rounds of `n` events per agent, `pause` apart.
fn send_for(f: &mut Fleet, rounds: usize, n: u64, pause: Duration) {
    for _ in 0..rounds {
        f.send_round(n);
        std::thread::sleep(pause);
    }
}

/// `E2E_LOGS=dir` keeps every process's log (and the topics' record counts) for diagnosis.
#[test]
fn agents_to_converged_state_through_leader_kills_a_hung_broker_and_a_cluster_restart() {
    let mut k = Kafka::cluster().unwrap();
    let mut f = Fleet::start(&k, "bf-pump", 4, &["partitions=4", "replication_factor=3"]);
    f.send_round(30);
    let probe = f.devices[0].clone();

    // 1. The leaders of the probe device's deltas, then events partition, killed mid-stream.
    for topic in [topics::DELTAS, topics::EVENTS] {
        let p = partition_of(&k, topic, &probe);
        let leader = k.leader(topic, p).unwrap();
        k.node(leader).kill9();
        send_for(&mut f, 4, 30, Duration::from_millis(500));
        k.node(leader).restart().unwrap();
        f.send_round(30);
        k.wait_in_sync(&TOPICS, Duration::from_secs(120)).unwrap();
    }

    // 2. A hang longer than the producer's request timeout, with the agents sending.
    let p = partition_of(&k, topics::DELTAS, &probe);
    let hung = k.leader(topics::DELTAS, p).unwrap();
    k.node(hung).pause().unwrap();
    let until = Instant::now() + PRODUCER_REQUEST_TIMEOUT + Duration::from_secs(5);
    while Instant::now() < until {
        send_for(&mut f, 1, 10, Duration::from_secs(2));
    }
    k.node(hung).resume().unwrap();
    send_for(&mut f, 2, 30, Duration::from_millis(500));
    k.wait_in_sync(&TOPICS, Duration::from_secs(120)).unwrap();

    // 3. The reconciler dies, then the broker coordinating its group.
    let coordinator = k
        .leader("__consumer_offsets", coordinator_partition(DEVICE_GROUP))
        .unwrap();
    f.reconciler.process.kill9();
    f.send_round(30);
    std::thread::sleep(Duration::from_secs(1));
    k.node(coordinator).kill9();
    f.reconciler.process.restart().unwrap();
    send_for(&mut f, 4, 30, Duration::from_millis(500));
    k.node(coordinator).restart().unwrap();
    f.send_round(30);
    k.wait_in_sync(&TOPICS, Duration::from_secs(120)).unwrap();

    // 4. The whole cluster down: batches arrive at the bridge, none is acknowledged to MQTT.
    for i in 0..k.len() {
        k.node(i).kill9();
    }
    // A delivery report that beat the kill still gets its PUBACK; nothing after it may.
    std::thread::sleep(Duration::from_secs(1));
    let acked = f.bridge.metric("edgesync_bridge_mqtt_acked_total", "");
    let received = f.bridge.metric("edgesync_bridge_received_total", "");
    send_for(&mut f, 3, 30, Duration::from_secs(2));
    assert!(
        f.bridge.metric("edgesync_bridge_received_total", "") > received,
        "the bridge should have received batches while Kafka was down"
    );
    assert_eq!(
        f.bridge.metric("edgesync_bridge_mqtt_acked_total", ""),
        acked,
        "the bridge acknowledged MQTT while Kafka could not take the batch"
    );
    k.restart_all().unwrap();
    send_for(&mut f, 2, 30, Duration::from_millis(500));

    f.assert_converged(&mut k, Duration::from_secs(240));
}

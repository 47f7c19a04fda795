//! The 3-node Apache Kafka cluster the broker-fault tests run on: three KRaft voters,
//! replication factor 3, `min.insync.replicas=2`; nodes killed with `kill -9`, hung with
//! SIGSTOP, restarted on their own data, and the whole cluster restarted.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use edgesync_testkit::{unique, Kafka};
use rdkafka::producer::{FutureProducer, FutureRecord};

const T: Duration = Duration::from_secs(30);

/// A producer that keeps retrying (acks=all, idempotent) for up to `timeout` per record.
fn patient_producer(k: &Kafka, timeout: Duration) -> FutureProducer {
    k.client_config()
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("message.timeout.ms", timeout.as_millis().to_string())
        .create()
        .unwrap()
}

fn send(p: &FutureProducer, topic: &str, key: &str) -> Result<(), String> {
    runtime()
        .block_on(p.send(
            FutureRecord::to(topic).key(key).payload("v"),
            Duration::from_secs(5),
        ))
        .map(|_| ())
        .map_err(|(e, _)| e.to_string())
}

fn all_keys(k: &Kafka, topic: &str, n: usize) -> Vec<String> {
    let mut got: Vec<String> = consume(&consumer(k, &unique("g"), topic), n, T, false)
        .into_iter()
        .map(|r| r.key)
        .collect();
    got.sort();
    got
}

#[test]
fn the_cluster_keeps_acknowledged_records_across_a_leader_kill_9_and_refuses_writes_below_min_isr()
{
    let mut k = Kafka::cluster().unwrap();
    assert_eq!(k.len(), 3);
    let t = topic(&k, 1);
    assert_eq!(
        k.in_sync_replicas(&[&t]).unwrap(),
        3,
        "replication factor 3"
    );
    // The same, but every replica must have a write before it is acknowledged.
    let strict = unique("strict");
    k.create_topic(&strict, 1, &[("min.insync.replicas", "3")])
        .unwrap();
    let first = keys("before", 0..50);
    produce(&k, &t, &first);
    let leader = k.leader(&t, 0).unwrap();
    k.node(leader).kill9();
    // A new leader takes acks=all writes: two replicas in sync meet min.insync.replicas=2.
    let after = keys("after", 0..50);
    produce(&k, &t, &after);
    assert_ne!(k.leader(&t, 0).unwrap(), leader);
    // Below a topic's min.insync.replicas, acks=all writes are refused, not risked.
    let p = patient_producer(&k, Duration::from_secs(8));
    assert!(
        send(&p, &strict, "refused").is_err(),
        "acks=all below min ISR"
    );
    k.node(leader).restart().unwrap();
    k.wait_in_sync(&[&t, &strict], T).unwrap();
    send(&p, &strict, "accepted").unwrap();
    let mut expected: Vec<String> = first.into_iter().chain(after).collect();
    expected.sort();
    assert_eq!(all_keys(&k, &t, expected.len()), expected);
    assert_eq!(
        all_keys(&k, &strict, 1),
        ["accepted"],
        "the refused write is not there"
    );
}

#[test]
fn a_hung_leader_is_replaced_and_rejoins_when_resumed() {
    let mut k = Kafka::cluster().unwrap();
    let t = topic(&k, 1);
    produce(&k, &t, &keys("before", 0..20));
    let leader = k.leader(&t, 0).unwrap();
    k.node(leader).pause().unwrap();
    // The controllers fence a broker that stops heartbeating; a patient producer gets its
    // writes acknowledged by the new leader.
    let p = patient_producer(&k, Duration::from_secs(60));
    for key in keys("during", 0..20) {
        send(&p, &t, &key).unwrap();
    }
    assert_ne!(k.leader(&t, 0).unwrap(), leader);
    k.node(leader).resume().unwrap();
    k.wait_in_sync(&[&t], Duration::from_secs(60)).unwrap();
    assert_eq!(all_keys(&k, &t, 40).len(), 40);
}

#[test]
fn the_whole_cluster_restarts_on_its_data() {
    let mut k = Kafka::cluster().unwrap();
    let t = topic(&k, 3);
    let written = keys("k", 0..90);
    produce(&k, &t, &written);
    let pids: Vec<u32> = (0..3).map(|i| k.node(i).pid().unwrap()).collect();
    k.restart_all().unwrap();
    assert!(pids.iter().all(|p| !alive(*p)));
    assert_eq!(all_keys(&k, &t, written.len()), written);
}

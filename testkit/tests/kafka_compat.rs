//! The Kafka features edgesync relies on, checked against both brokers the suite runs:
//! Apache Kafka (the reference) and tansu. Each test is the evidence for one row of the
//! compatibility record in ARCHITECTURE.md, with one test per broker (`name::apache`,
//! `name::tansu`); where the brokers differ, the test states what each does, so a change in
//! either fails it and the record must be updated with it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::*;
use edgesync_testkit::{on_both_brokers, outside_python, unique, Broker, Kafka};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};

const T: Duration = Duration::from_secs(20);

on_both_brokers!(
    idempotent_producer_with_acks_all_is_supported,
    headers_round_trip,
    topics_are_created_through_the_admin_api,
    consumer_group_rebalance_splits_partitions_between_members,
    committed_offsets_survive_a_consumer_restart,
    a_broker_kill_9_loses_no_acknowledged_record,
    transactions,
    compaction,
    the_outside_python_client_talks_to_the_broker,
);

fn idempotent_producer_with_acks_all_is_supported(b: Broker) {
    let k = Kafka::start_on(b).unwrap();
    let t = topic(&k, 1);
    let acked = produce(&k, &t, &keys("i", 0..50));
    let offsets: Vec<i64> = acked.iter().map(|(_, o)| *o).collect();
    assert_eq!(
        offsets,
        (0..50).collect::<Vec<_>>(),
        "dense, in order, no duplicates"
    );
}

fn headers_round_trip(b: Broker) {
    let k = Kafka::start_on(b).unwrap();
    let t = topic(&k, 1);
    produce(&k, &t, &keys("h", 0..3));
    let got = consume(&consumer(&k, &unique("g"), &t), 3, T, false);
    assert!(got.iter().all(|r| r.origin.as_deref() == Some("testkit")));
}

/// Topics made through the admin API get the partitions asked for. On first use Apache Kafka
/// creates a missing topic (its default `auto.create.topics.enable=true`); tansu never does.
fn topics_are_created_through_the_admin_api(b: Broker) {
    let k = Kafka::start_on(b).unwrap();
    let t = topic(&k, 3);
    let c: BaseConsumer = k.client_config().create().unwrap();
    let md = c.fetch_metadata(Some(&t), Duration::from_secs(5)).unwrap();
    assert_eq!(md.topics()[0].partitions().len(), 3);
    let p: ThreadedProducer<DefaultProducerContext> = k
        .client_config()
        .set("message.timeout.ms", "5000")
        .create()
        .unwrap();
    let missing = unique("missing");
    p.send(BaseRecord::<str, str>::to(&missing).payload("x"))
        .unwrap();
    let _ = p.flush(Duration::from_secs(8));
    let md = c
        .fetch_metadata(Some(&missing), Duration::from_secs(5))
        .unwrap();
    let exists = md
        .topics()
        .iter()
        .any(|t| t.name() == missing && t.error().is_none());
    assert_eq!(
        exists,
        b == Broker::Apache,
        "created on first use by {b:?}: update the compatibility record"
    );
}

fn consumer_group_rebalance_splits_partitions_between_members(b: Broker) {
    let k = Kafka::start_on(b).unwrap();
    let t = topic(&k, 4);
    let group = unique("g");
    let a = consumer(&k, &group, &t);
    let owned = |c: &BaseConsumer| -> BTreeSet<i32> {
        c.assignment()
            .map(|l| l.elements().iter().map(|e| e.partition()).collect())
            .unwrap_or_default()
    };
    let deadline = Instant::now() + T;
    while owned(&a).len() < 4 && Instant::now() < deadline {
        a.poll(Duration::from_millis(100));
    }
    assert_eq!(owned(&a).len(), 4, "a lone member owns every partition");
    let b = consumer(&k, &group, &t);
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        a.poll(Duration::from_millis(100));
        b.poll(Duration::from_millis(100));
        let (oa, ob) = (owned(&a), owned(&b));
        if !oa.is_empty() && !ob.is_empty() && oa.len() + ob.len() == 4 && oa.is_disjoint(&ob) {
            break;
        }
        assert!(Instant::now() < deadline, "no rebalance: a={oa:?} b={ob:?}");
    }
}

fn committed_offsets_survive_a_consumer_restart(b: Broker) {
    let k = Kafka::start_on(b).unwrap();
    let t = topic(&k, 2);
    let keys = keys("k", 0..100);
    produce(&k, &t, &keys);
    let group = unique("g");
    let first = {
        let c = consumer(&k, &group, &t);
        consume(&c, 40, T, true)
        // dropped: the consumer leaves the group; only its commits remain
    };
    assert_eq!(first.len(), 40);
    let c = consumer(&k, &group, &t);
    let rest = consume(&c, 60, T, true);
    let mut seen: Vec<String> = first.iter().chain(&rest).map(|r| r.key.clone()).collect();
    seen.sort();
    assert_eq!(
        seen, keys,
        "every record once: nothing lost, nothing re-delivered"
    );
    assert!(consume(&c, 1, Duration::from_secs(2), false).is_empty());
}

/// On durable storage (Apache Kafka's log, tansu's SQLite file) every record acknowledged with
/// `acks=all` is there after `kill -9` and a restart on the same data.
fn a_broker_kill_9_loses_no_acknowledged_record(b: Broker) {
    let mut k = Kafka::start_on(b).unwrap();
    let t = topic(&k, 3);
    let keys = keys("durable", 0..200);
    let acked = produce(&k, &t, &keys);
    assert_eq!(acked.len(), 200);
    let pid = k.process().pid().unwrap();
    k.process().restart().unwrap();
    assert!(!alive(pid));
    let c = consumer(&k, &unique("g"), &t);
    let mut got: Vec<String> = consume(&c, 200, T, false)
        .into_iter()
        .map(|r| r.key)
        .collect();
    got.sort();
    assert_eq!(got, keys);
}

/// Apache Kafka: a committed transaction's records are visible to `read_committed` readers and
/// an aborted one's are not (what `exactly_once = "transactions"` needs). tansu refuses EndTxn.
fn transactions(b: Broker) {
    let k = Kafka::start_on(b).unwrap();
    let t = topic(&k, 1);
    let p: ThreadedProducer<DefaultProducerContext> = k
        .client_config()
        .set("transactional.id", unique("tx"))
        .set("transaction.timeout.ms", "10000")
        .create()
        .unwrap();
    let send_in_tx = |keys: &[&str], commit: bool| {
        p.begin_transaction()?;
        for key in keys {
            p.send(BaseRecord::<str, str>::to(&t).key(*key).payload("v"))
                .map_err(|(e, _)| e)?;
        }
        if commit {
            p.commit_transaction(Duration::from_secs(10))
        } else {
            // On the broker first: an abort purges records still queued in the client.
            p.flush(Duration::from_secs(10))?;
            p.abort_transaction(Duration::from_secs(10))
        }
    };
    let outcome = p
        .init_transactions(Duration::from_secs(10))
        .and_then(|()| send_in_tx(&["c1", "c2", "c3"], true))
        .and_then(|()| send_in_tx(&["a1", "a2"], false))
        .and_then(|()| send_in_tx(&["c4"], true));
    if b != Broker::Apache {
        assert!(
            outcome.is_err(),
            "transactions work on {b:?} now: update the compatibility record"
        );
        return;
    }
    outcome.unwrap();
    let read = |isolation: &str| -> Vec<String> {
        let c: BaseConsumer = k
            .client_config()
            .set("group.id", unique("g"))
            .set("auto.offset.reset", "earliest")
            .set("isolation.level", isolation)
            .create()
            .unwrap();
        c.subscribe(&[&t]).unwrap();
        consume(&c, 6, Duration::from_secs(8), false)
            .into_iter()
            .map(|r| r.key)
            .collect()
    };
    assert_eq!(read("read_committed"), ["c1", "c2", "c3", "c4"]);
    assert_eq!(
        read("read_uncommitted"),
        ["c1", "c2", "c3", "a1", "a2", "c4"]
    );
}

/// Apache Kafka compacts: once a segment is closed, a reader from the beginning gets the
/// latest value per key only. tansu accepts `cleanup.policy=compact` but keeps every value.
fn compaction(b: Broker) {
    let k = Kafka::start_on(b).unwrap();
    let t = unique("compacted");
    k.create_topic(
        &t,
        1,
        &[
            ("cleanup.policy", "compact"),
            ("segment.ms", "1000"),
            ("min.cleanable.dirty.ratio", "0.01"),
            ("min.compaction.lag.ms", "0"),
            ("delete.retention.ms", "0"),
        ],
    )
    .unwrap();
    let mut written = Vec::new();
    for i in 0..5 {
        written.push(("a".to_owned(), format!("a{i}")));
        if i < 3 {
            written.push(("b".to_owned(), format!("b{i}")));
        }
    }
    produce_values(&k, &t, &written);
    // The active segment is never compacted: a record appended after segment.ms rolls it.
    std::thread::sleep(Duration::from_millis(1500));
    produce_values(&k, &t, &[("roll".to_owned(), "r".to_owned())]);
    let read_all = || -> Vec<(String, String)> {
        k.read_topic(&t, T, |r| r.iter().any(|r| r.key == "roll"))
            .unwrap()
            .into_iter()
            .map(|r| (r.key, String::from_utf8_lossy(&r.payload).into_owned()))
            .collect()
    };
    let latest: BTreeMap<String, String> = written.iter().cloned().collect();
    if b != Broker::Apache {
        assert_eq!(read_all().len(), written.len() + 1, "every value stays");
        return;
    }
    // The log cleaner looks for work every 15 s (log.cleaner.backoff.ms).
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let got = read_all();
        let per_key: BTreeMap<String, String> = got.iter().cloned().collect();
        if got.len() == latest.len() + 1 {
            assert_eq!(per_key.get("a"), latest.get("a"));
            assert_eq!(per_key.get("b"), latest.get("b"));
            break;
        }
        assert!(Instant::now() < deadline, "not compacted: {got:?}");
        std::thread::sleep(Duration::from_secs(2));
    }
}

fn the_outside_python_client_talks_to_the_broker(b: Broker) {
    // The analytics-side reader in end-to-end tests is PyPI's confluent-kafka (librdkafka 2.12+),
    // installed by scripts/setup; Debian's kcat (librdkafka 2.0.2) cannot parse tansu's replies.
    let k = Kafka::start_on(b).unwrap();
    let t = topic(&k, 1);
    let script = format!(
        "from confluent_kafka import Producer\n\
         p = Producer({{'bootstrap.servers': '{}', 'enable.idempotence': True}})\n\
         [p.produce('{t}', key=b'py-%d' % i, value=b'v', headers=[('origin', b'testkit')]) for i in range(5)]\n\
         assert p.flush(15) == 0\n",
        k.bootstrap()
    );
    outside_python(["-c", &script]).unwrap_or_else(|e| panic!("{e}"));
    let got = consume(&consumer(&k, &unique("g"), &t), 5, T, false);
    let keys: Vec<String> = got.into_iter().map(|r| r.key).collect();
    assert_eq!(keys, (0..5).map(|i| format!("py-{i}")).collect::<Vec<_>>());
}

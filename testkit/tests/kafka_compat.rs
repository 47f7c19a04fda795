//! The Kafka features edgesync relies on, checked against the broker the tests use (tansu).
//! Each test is the evidence for one line of the compatibility record in ARCHITECTURE.md; if the
//! broker changes behaviour, the test fails and the record must be updated with it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::*;
use edgesync_testkit::{outside_python, unique, Kafka};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};

const T: Duration = Duration::from_secs(20);

#[test]
fn idempotent_producer_with_acks_all_is_supported() {
    let k = Kafka::start().unwrap();
    let t = topic(&k, 1);
    let acked = produce(&k, &t, &keys("i", 0..50));
    let offsets: Vec<i64> = acked.iter().map(|(_, o)| *o).collect();
    assert_eq!(
        offsets,
        (0..50).collect::<Vec<_>>(),
        "dense, in order, no duplicates"
    );
}

#[test]
fn headers_round_trip() {
    let k = Kafka::start().unwrap();
    let t = topic(&k, 1);
    produce(&k, &t, &keys("h", 0..3));
    let got = consume(&consumer(&k, &unique("g"), &t), 3, T, false);
    assert!(got.iter().all(|r| r.origin.as_deref() == Some("testkit")));
}

#[test]
fn topics_are_created_through_the_admin_api_and_never_on_first_use() {
    let k = Kafka::start().unwrap();
    let t = topic(&k, 3);
    let c: BaseConsumer = k.client_config().create().unwrap();
    let md = c.fetch_metadata(Some(&t), Duration::from_secs(5)).unwrap();
    assert_eq!(md.topics()[0].partitions().len(), 3);
    // Producing to a topic nobody created fails instead of creating it.
    let p: ThreadedProducer<DefaultProducerContext> = k
        .client_config()
        .set("message.timeout.ms", "3000")
        .create()
        .unwrap();
    let missing = unique("missing");
    p.send(BaseRecord::<str, str>::to(&missing).payload("x"))
        .unwrap();
    let _ = p.flush(Duration::from_secs(5));
    let md = c
        .fetch_metadata(Some(&missing), Duration::from_secs(5))
        .unwrap();
    let exists = md
        .topics()
        .iter()
        .any(|t| t.name() == missing && t.error().is_none());
    assert!(!exists, "the broker created a topic on first use");
}

#[test]
fn consumer_group_rebalance_splits_partitions_between_members() {
    let k = Kafka::start().unwrap();
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

#[test]
fn transactions_are_refused_so_the_project_does_not_use_them() {
    let k = Kafka::start().unwrap();
    let t = topic(&k, 1);
    let p: ThreadedProducer<DefaultProducerContext> = k
        .client_config()
        .set("transactional.id", unique("tx"))
        .set("transaction.timeout.ms", "10000")
        .create()
        .unwrap();
    let outcome = p
        .init_transactions(Duration::from_secs(10))
        .and_then(|()| p.begin_transaction())
        .and_then(|()| {
            p.send(BaseRecord::<str, str>::to(&t).key("k").payload("v"))
                .map_err(|(e, _)| e)
        })
        .and_then(|()| p.commit_transaction(Duration::from_secs(10)));
    assert!(
        outcome.is_err(),
        "transactions work now: update the compatibility record"
    );
}

#[test]
fn compaction_config_is_accepted_but_older_values_stay_readable() {
    let k = Kafka::start().unwrap();
    let t = unique("compacted");
    k.create_topic(&t, 1, &[("cleanup.policy", "compact")])
        .unwrap();
    let keys = vec!["same".to_owned(), "same".to_owned(), "same".to_owned()];
    produce(&k, &t, &keys);
    let got = consume(&consumer(&k, &unique("g"), &t), 3, T, false);
    // No compaction happens (at least not promptly): readers of the state topic must take the
    // latest record per key, which they do anyway.
    assert_eq!(got.len(), 3);
}

#[test]
fn the_outside_python_client_talks_to_the_broker() {
    // The analytics-side reader in end-to-end tests is PyPI's confluent-kafka (librdkafka 2.12+),
    // installed by scripts/setup; Debian's kcat (librdkafka 2.0.2) cannot parse tansu's replies.
    let k = Kafka::start().unwrap();
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

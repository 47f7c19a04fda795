//! `edgesync.state` really compacts on Apache Kafka: with small segments, a reader that starts
//! from the beginning after the log cleaner ran gets exactly one converged value per key, equal
//! to the reference (tansu does not compact: see the compatibility record in ARCHITECTURE.md).
//!
//! The test creates the topic before the reconciler (which then finds it) with segments that
//! roll every 100 ms and a cleaner that takes any dirty segment; the broker's cleaner wakes every
//! 15 s (`log.cleaner.backoff.ms`, its default). The cleaner never touches a partition's active
//! segment, so once the pipeline has converged the test appends a tombstone of a key of its own
//! to every partition: the segments holding the last converged values close and become
//! cleanable.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use edgesync_core::Crdt;
use edgesync_schemas::topics::kafka as topics;
use edgesync_schemas::{Codec, Limits};
use edgesync_testkit::{Broker, Kafka, Record};
use edgesync_tests::Fleet;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

const STATE: &str = topics::STATE;
const PARTITIONS: i32 = 4;
const ROLL: &str = "compaction-test-roll";

/// Every counter value per key, in log order (a key compacted to one record has one).
fn values(codec: &Codec, recs: &[Record]) -> BTreeMap<String, Vec<u128>> {
    let mut out: BTreeMap<String, Vec<u128>> = BTreeMap::new();
    for r in recs.iter().filter(|r| r.key != ROLL) {
        if let Ok(s) = codec.decode_state_record(&r.payload) {
            if let Crdt::GCounter(c) = s.state {
                out.entry(r.key.clone()).or_default().push(c.value());
            }
        }
    }
    out
}

/// A tombstone of the test's own key in every partition: each active segment closes.
fn roll_every_partition(k: &Kafka) {
    let p: BaseProducer = k.client_config().create().unwrap();
    for partition in 0..PARTITIONS {
        p.send(
            BaseRecord::<str, [u8]>::to(STATE)
                .key(ROLL)
                .partition(partition),
        )
        .map_err(|(e, _)| e)
        .unwrap();
    }
    p.flush(Duration::from_secs(30)).unwrap();
}

/// Waits (up to 60 s) until the reconciler has written more converged states than `before`.
fn more_states_than(f: &Fleet, before: f64) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let now = f.reconciler.metric("edgesync_reconciler_states_total", "");
        if now > before || Instant::now() > deadline {
            return now;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_state_topic_compacts_to_one_converged_value_per_key() {
    let mut k = Kafka::start_on(Broker::Apache).unwrap();
    k.create_topic(
        STATE,
        PARTITIONS,
        &[
            ("cleanup.policy", "compact"),
            ("segment.ms", "100"),
            ("min.cleanable.dirty.ratio", "0.01"),
            ("delete.retention.ms", "1000"),
        ],
    )
    .unwrap();
    let mut f = Fleet::start(&k, "compact-pump", 3, &["partitions=4"]);
    // Each round waits for the states it causes: rounds sent faster than the reconciler's group
    // joins (Kafka delays a new group's first rebalance by 3 s) converge as one value per key.
    let mut written = 0.0;
    for _ in 0..20 {
        f.send_round(20);
        written = more_states_than(&f, written);
    }
    f.assert_converged(&mut k, Duration::from_secs(120));
    let codec = Codec::new(Limits::default()).unwrap();
    let reference = f.reference();
    let written = more_states_than(&f, written - 1.0);
    // Converged states the reconciler wrote: far more than one per key.
    assert!(
        written > 3.0 * reference.len() as f64,
        "the test needs several values per key to compact ({written} for {} keys)",
        reference.len()
    );

    std::thread::sleep(Duration::from_millis(200));
    roll_every_partition(&k);
    // Read to the end each time (a partial read would look compacted).
    let all = || {
        values(
            &codec,
            &k.read_topic(STATE, Duration::from_secs(5), |_| false)
                .unwrap(),
        )
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    let after = loop {
        let v = all();
        let compacted = v.len() == reference.len() && v.values().all(|x| x.len() == 1);
        if compacted || Instant::now() > deadline {
            break v;
        }
        std::thread::sleep(Duration::from_secs(2));
    };
    let last: BTreeMap<String, u128> = after
        .iter()
        .map(|(key, v)| (key.clone(), *v.last().unwrap()))
        .collect();
    assert!(
        after.values().all(|v| v.len() == 1),
        "not compacted to one value per key after 120 s: {after:?}"
    );
    assert_eq!(
        last, reference,
        "compacted state differs from the reference"
    );
    eprintln!(
        "edgesync.state: {written} values for {} keys compacted to one each",
        reference.len()
    );
}

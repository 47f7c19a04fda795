//! The `edgesync-reconciler` binary on real brokers (Apache Kafka; the tests that prove the
//! exactly-once paths also on tansu): duplicated and reordered batches, a poison record,
//! `kill -9` mid-stream, and a second process joining the group, with the default read-back
//! method and with Kafka transactions; a hung owner fenced by its successor; a restart that
//! takes its partitions back at once on the shipped group settings — checked by history:
//! every dot once in the events topic, in dot order per replica, and converged state equal to
//! the reference.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use edgesync_core::crdt::GCounter;
use edgesync_core::{
    Crdt, DeltaBatch, DeviceId, Dot, Event, EventLimits, Hlc, Incarnation, ReplicaId, SeqRange,
    Value,
};
use edgesync_schemas::{Codec, DeadLetterReason, Limits};
use edgesync_testkit::{on_both_brokers, read_outputs, Broker, Kafka, Record, Service};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};

const BIN: &str = env!("CARGO_BIN_EXE_edgesync-reconciler");

/// The reconciler binary on `k` with its own state directory.
fn start(k: &Kafka, name: &str) -> Service {
    start_with(k, name, &[])
}

/// The same with more `--set` flags.
fn start_with(k: &Kafka, name: &str, more: &[&str]) -> Service {
    let mut sets = vec![
        format!("kafka.bootstrap_servers={}", k.bootstrap()),
        "kafka.partitions=4".into(),
        "state_dir=\"{dir}/state\"".into(),
        "max_group_records=200".into(),
    ];
    sets.extend(more.iter().map(|s| (*s).to_owned()));
    let name = format!("edgesync-reconciler {name}");
    Service::start(PathBuf::from(BIN), None, &name, &sets).unwrap()
}

/// Batches of `per` events for `device`, each event +1 on `fleet/readings` and on its own
/// device counter; the batch carries the joined deltas.
fn batches(codec: &Codec, device: &str, n: u64, per: u64) -> Vec<Vec<u8>> {
    let r = ReplicaId::new(DeviceId::new(device).unwrap(), Incarnation::new(5).unwrap());
    let mut fleet = GCounter::default();
    let mut own = GCounter::default();
    (0..n)
        .map(|b| {
            let first = b * per + 1;
            let events: Vec<Event> = (0..per)
                .map(|i| Event {
                    dot: Dot::new(r.clone(), first + i),
                    hlc: Hlc::new(1_700_000_000_000 + first + i, 0),
                    stream: "pump.telemetry".into(),
                    schema_version: 1,
                    fields: BTreeMap::from([("i".into(), Value::Long((first + i) as i64))]),
                    tags: BTreeMap::new(),
                })
                .collect();
            let mut state = BTreeMap::new();
            for _ in 0..per {
                state.insert(
                    "fleet/readings".to_string(),
                    Crdt::GCounter(fleet.inc(&r, 1)),
                );
                state.insert(format!("{device}/readings"), Crdt::GCounter(own.inc(&r, 1)));
            }
            let batch =
                DeltaBatch::new(r.clone(), first, events, state, &EventLimits::default()).unwrap();
            codec.encode_batch(&batch).unwrap()
        })
        .collect()
}

fn producer(k: &Kafka) -> ThreadedProducer<DefaultProducerContext> {
    k.client_config()
        .set("partitioner", "murmur2_random")
        .create()
        .unwrap()
}

fn send(p: &ThreadedProducer<DefaultProducerContext>, key: &str, payload: &[u8]) {
    p.send(BaseRecord::to("edgesync.deltas").key(key).payload(payload))
        .unwrap();
}

/// Everything in `topic` until `done` or the timeout.
fn read(
    k: &Kafka,
    topic: &str,
    timeout: Duration,
    done: impl Fn(&[Record]) -> bool,
) -> Vec<Record> {
    k.read_topic(topic, timeout, done).unwrap()
}

/// Every dot in the events topic: (device, seq) in topic order.
fn dots(codec: &Codec, recs: &[Record]) -> Vec<(String, u64)> {
    recs.iter()
        .map(|Record { payload: b, .. }| {
            let e = codec.decode_event(b).unwrap();
            (e.dot.replica.device.to_string(), e.dot.seq)
        })
        .collect()
}

/// Checks every dot of `devices` × `1..=total` appears once, in seq order per device.
fn check_events(got: &[(String, u64)], devices: &[&str], total: u64) {
    let unique: BTreeSet<_> = got.iter().cloned().collect();
    assert_eq!(
        unique.len(),
        got.len(),
        "a dot appears twice in the events topic"
    );
    for d in devices {
        let seqs: Vec<u64> = got
            .iter()
            .filter(|(x, _)| x == d)
            .map(|(_, s)| *s)
            .collect();
        assert_eq!(
            seqs,
            (1..=total).collect::<Vec<_>>(),
            "{d}: missing or out of order"
        );
    }
}

/// The latest converged value per key in the state topic.
fn latest_state(
    codec: &Codec,
    k: &Kafka,
    want_keys: usize,
    expect: &BTreeMap<String, u128>,
) -> BTreeMap<String, u128> {
    let recs = read(k, "edgesync.state", Duration::from_secs(60), |r| {
        let mut last = BTreeMap::new();
        for Record {
            key, payload: b, ..
        } in r
        {
            if let Ok(s) = codec.decode_state_record(b) {
                if let Crdt::GCounter(c) = s.state {
                    last.insert(key.clone(), c.value());
                }
            }
        }
        last.len() >= want_keys && &last == expect
    });
    let mut last = BTreeMap::new();
    for Record {
        key, payload: b, ..
    } in recs
    {
        let s = codec.decode_state_record(&b).unwrap();
        if let Crdt::GCounter(c) = s.state {
            last.insert(key, c.value());
        }
    }
    last
}

on_both_brokers!(
    duplicated_and_reordered_batches_give_each_event_once_in_order_and_converged_state,
    kill_9_mid_stream_and_a_second_process_leave_no_dot_missing_or_doubled,
    a_restarted_process_takes_its_partitions_back_at_once,
);

fn duplicated_and_reordered_batches_give_each_event_once_in_order_and_converged_state(b: Broker) {
    let k = Kafka::start_on(b).unwrap();
    let codec = Codec::new(Limits::default()).unwrap();
    let p = producer(&k);
    let devices = ["pump-1", "pump-2", "pump-3"];
    let (n, per) = (20u64, 10u64);
    let r = start(&k, "a");
    for d in devices {
        let bs = batches(&codec, d, n, per);
        // Every batch twice; odd batches before the even one they follow (a gap, then filled).
        for pair in bs.chunks(2) {
            for b in pair.iter().rev() {
                send(&p, d, b);
            }
        }
        for b in &bs {
            send(&p, d, b);
        }
    }
    // A poison record in the middle of a device's partition.
    send(&p, "pump-1", b"not a batch");
    for b in batches(&codec, "pump-1", n, per).iter().skip(5).take(3) {
        send(&p, "pump-1", b);
    }
    p.flush(Duration::from_secs(10)).unwrap();
    let total = (devices.len() as u64 * n * per) as usize;
    let recs = read(&k, "edgesync.events", Duration::from_secs(90), |r| {
        r.len() >= total
    });
    check_events(&dots(&codec, &recs), &devices, n * per);
    let mut expect: BTreeMap<String, u128> = devices
        .iter()
        .map(|d| (format!("{d}/readings"), u128::from(n * per)))
        .collect();
    expect.insert("fleet/readings".into(), u128::from(3 * n * per));
    assert_eq!(latest_state(&codec, &k, 4, &expect), expect);
    let dlq = read(&k, "edgesync.dlq", Duration::from_secs(20), |r| {
        !r.is_empty()
    });
    let d = codec.decode_dead_letter(&dlq[0].payload).unwrap();
    assert_eq!(d.reason, DeadLetterReason::Undecodable);
    assert_eq!(d.payload, b"not a batch");
    drop(r);
}

fn kill_9_mid_stream_and_a_second_process_leave_no_dot_missing_or_doubled(b: Broker) {
    kill_9_and_a_second_process(&Kafka::start_on(b).unwrap(), &[]);
}

#[test]
fn with_transactions_kill_9_mid_transaction_and_a_rebalance_leave_no_dot_missing_or_doubled() {
    let k = Kafka::start_on(Broker::Apache).unwrap();
    kill_9_and_a_second_process(&k, &[r#"exactly_once="transactions""#]);
    // An outside reader (PyPI confluent-kafka) with read_committed sees each dot once too.
    let seen = outside_seqs(&k, "read_committed", 6 * 40 * 10);
    assert_eq!(seen.len(), 6);
    for (device, seqs) in seen {
        assert_eq!(seqs, (1..=400).collect::<Vec<_>>(), "{device}");
    }
}

/// The seqs per device in the events topic as the outside reader sees them with `isolation`.
fn outside_seqs(k: &Kafka, isolation: &str, total: usize) -> BTreeMap<String, Vec<u64>> {
    let v = read_outputs(&k.bootstrap(), total, isolation).unwrap_or_else(|e| panic!("{e}"));
    serde_json::from_value(v["events"].clone()).unwrap()
}

/// `kill -9` of the only reconciler after a quarter of the stream (mid-group: with
/// transactions, mid-transaction), a restart, and a second process joining at two thirds.
fn kill_9_and_a_second_process(k: &Kafka, more: &[&str]) {
    let codec = Codec::new(Limits::default()).unwrap();
    let p = producer(k);
    let devices = ["pump-a", "pump-b", "pump-c", "pump-d", "pump-e", "pump-f"];
    let (n, per) = (40u64, 10u64);
    let all: Vec<Vec<Vec<u8>>> = devices.iter().map(|d| batches(&codec, d, n, per)).collect();
    let mut r = start_with(k, "a", more);
    let mut second = None;
    for i in 0..n as usize {
        for (d, bs) in devices.iter().zip(&all) {
            send(&p, d, &bs[i]);
        }
        if i == 10 {
            p.flush(Duration::from_secs(10)).unwrap();
            std::thread::sleep(Duration::from_millis(300));
            r.process.kill9();
            r.process.restart().unwrap();
        }
        if i == 25 {
            // A second process joins: the group rebalances in the middle of the stream.
            p.flush(Duration::from_secs(10)).unwrap();
            second = Some(start_with(k, "b", more));
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    p.flush(Duration::from_secs(10)).unwrap();
    let total = (devices.len() as u64 * n * per) as usize;
    let recs = read(k, "edgesync.events", Duration::from_secs(120), |r| {
        r.len() >= total
    });
    std::thread::sleep(Duration::from_secs(2)); // a late duplicate would show up now
    let recs2 = read(k, "edgesync.events", Duration::from_secs(5), |r| {
        r.len() > recs.len()
    });
    check_events(&dots(&codec, &recs2), &devices, n * per);
    let mut expect: BTreeMap<String, u128> = devices
        .iter()
        .map(|d| (format!("{d}/readings"), u128::from(n * per)))
        .collect();
    expect.insert(
        "fleet/readings".into(),
        u128::from(devices.len() as u64 * n * per),
    );
    assert_eq!(latest_state(&codec, k, expect.len(), &expect), expect);
    assert!(second.is_some());
}

#[test]
fn the_ledger_shows_a_gap_with_its_exact_missing_range_until_it_is_filled() {
    let k = Kafka::start().unwrap();
    let codec = Codec::new(Limits::default()).unwrap();
    let p = producer(&k);
    let r = start(&k, "ledger");
    let bs = batches(&codec, "pump-gap", 4, 10);
    // Seqs 1..=10 and 21..=40 arrive; 11..=20 are missing.
    for i in [0, 2, 3] {
        send(&p, "pump-gap", &bs[i]);
    }
    p.flush(Duration::from_secs(10)).unwrap();
    let status = |r: &Service| -> serde_json::Value {
        let (code, body) = edgesync_servicekit::http::get(r.http, "/v1/status").unwrap();
        assert_eq!(code, 200);
        serde_json::from_str(&body).unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut st = status(&r);
    while Instant::now() < deadline && st["with_gaps"] != 1 {
        std::thread::sleep(Duration::from_millis(200));
        st = status(&r);
    }
    let dev = &st["devices"][0];
    assert_eq!(dev["device"], "pump-gap", "{st}");
    assert_eq!(dev["watermark"], 10);
    assert_eq!(dev["max_seen"], 40);
    assert_eq!(dev["missing"], serde_json::json!([[11, 20]]));
    assert_eq!(dev["pending"], 20, "events above the gap are held back");
    assert!(dev["gap_age_ms"].as_u64().is_some());
    // The test's events are stamped in 2023: far beyond the default 5-minute skew bound.
    assert_eq!(dev["clock_skew_flagged"], true, "{st}");
    assert!(dev["clock_skew_ms"].as_i64().unwrap() > 300_000);
    let (_, metrics) = edgesync_servicekit::http::get(r.http, "/metrics").unwrap();
    assert!(
        metrics.contains("edgesync_reconciler_replicas_with_gaps 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("edgesync_reconciler_replicas_clock_skew_flagged 1"),
        "{metrics}"
    );
    // The same line on the compacted completeness topic, keyed by device.
    let latest = |recs: &[Record]| {
        recs.iter()
            .rev()
            .find(|r| r.key == "pump-gap")
            .map(|r| codec.decode_completeness(&r.payload).unwrap())
    };
    let recs = read(&k, "edgesync.completeness", Duration::from_secs(30), |r| {
        latest(r).is_some_and(|c| c.replicas[0].max_seen == 40)
    });
    let line = &latest(&recs).unwrap().replicas[0];
    assert_eq!((line.watermark, line.pending), (10, 20), "{line:?}");
    assert_eq!(line.missing, vec![SeqRange::new(11, 20).unwrap()]);
    assert!(line.gap_since_ms.is_some() && line.clock_skewed, "{line:?}");
    assert_eq!(line.completeness(), 0.75);
    // Only 1..=10 are released so far.
    let early = read(&k, "edgesync.events", Duration::from_secs(5), |r| {
        r.len() > 10
    });
    assert_eq!(early.len(), 10);
    send(&p, "pump-gap", &bs[1]);
    p.flush(Duration::from_secs(10)).unwrap();
    let recs = read(&k, "edgesync.events", Duration::from_secs(30), |r| {
        r.len() >= 40
    });
    check_events(&dots(&codec, &recs), &["pump-gap"], 40);
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline && status(&r)["with_gaps"] != 0 {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(status(&r)["devices"][0]["watermark"], 40);
    let recs = read(&k, "edgesync.completeness", Duration::from_secs(30), |r| {
        latest(r).is_some_and(|c| c.replicas[0].watermark == 40)
    });
    let line = &latest(&recs).unwrap().replicas[0];
    assert!(
        line.missing.is_empty() && line.gap_since_ms.is_none(),
        "{line:?}"
    );
}

#[test]
fn sigterm_stops_cleanly_and_a_restart_resumes_without_doubling() {
    let k = Kafka::start().unwrap();
    let codec = Codec::new(Limits::default()).unwrap();
    let p = producer(&k);
    let mut r = start(&k, "term");
    let bs = batches(&codec, "pump-t", 10, 10);
    for b in &bs[..5] {
        send(&p, "pump-t", b);
    }
    p.flush(Duration::from_secs(10)).unwrap();
    read(&k, "edgesync.events", Duration::from_secs(30), |r| {
        r.len() >= 50
    });
    let status = r.process.terminate(Duration::from_secs(15));
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}\n{}",
        r.process.log_tail(20)
    );
    r.process.restart().unwrap();
    for b in &bs {
        send(&p, "pump-t", b); // the first half again, then the rest
    }
    p.flush(Duration::from_secs(10)).unwrap();
    let recs = read(&k, "edgesync.events", Duration::from_secs(60), |r| {
        r.len() >= 100
    });
    std::thread::sleep(Duration::from_secs(2));
    let all = read(&k, "edgesync.events", Duration::from_secs(5), |r| {
        r.len() > recs.len()
    });
    check_events(&dots(&codec, &all), &["pump-t"], 100);
}

#[test]
fn consumer_lag_shows_a_backlog_and_returns_to_zero() {
    let k = Kafka::start().unwrap();
    let codec = Codec::new(Limits::default()).unwrap();
    let p = producer(&k);
    let devices = ["lag-a", "lag-b", "lag-c", "lag-d"];
    let (n, per) = (300u64, 5u64);
    // The reconciler creates its topics when it starts; the backlog comes first here.
    k.create_topic("edgesync.deltas", 4, &[]).unwrap();
    for d in devices {
        for b in batches(&codec, d, n, per) {
            send(&p, d, &b);
        }
    }
    p.flush(Duration::from_secs(30)).unwrap();
    // A backlog of 1,200 batch records before the reconciler starts, taken 20 at a time;
    // statistics every 100 ms.
    let r = start_with(
        &k,
        "lag",
        &[
            "max_group_records=20",
            r#"kafka.properties={ "statistics.interval.ms" = "100" }"#,
        ],
    );
    let total = devices.len() as f64 * (n * per) as f64;
    let lag = || r.metric("edgesync_reconciler_consumer_lag", "stage=\"device\"");
    let mut most = 0.0f64;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while r.metric("edgesync_reconciler_events_total", "") < total {
        assert!(
            std::time::Instant::now() < deadline,
            "{} of {total} events; log:\n{}",
            r.metric("edgesync_reconciler_events_total", ""),
            r.process.log_tail(30)
        );
        most = most.max(lag());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(most > 0.0, "the backlog never showed as lag");
    assert!(
        most <= (devices.len() as u64 * n) as f64,
        "lag {most} above the backlog"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while lag() > 0.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "lag stays at {}",
            lag()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// On the shipped group settings (45 s session timeout): a reconciler restarted after
/// `kill -9`, even twice within one session timeout, is the same static member and resumes
/// delivery at once, instead of waiting out its dead predecessor's session.
fn a_restarted_process_takes_its_partitions_back_at_once(b: Broker) {
    let k = Kafka::start_on(b).unwrap();
    let codec = Codec::new(Limits::default()).unwrap();
    let p = producer(&k);
    let devices = ["st-a", "st-b", "st-c", "st-d"];
    let all: Vec<Vec<Vec<u8>>> = devices.iter().map(|d| batches(&codec, d, 4, 10)).collect();
    let mut r = start(&k, "static");
    let round = |i: usize, r: &Service| {
        for (d, bs) in devices.iter().zip(&all) {
            send(&p, d, &bs[i]);
        }
        p.flush(Duration::from_secs(10)).unwrap();
        let want = devices.len() * 10 * (i + 1);
        let since = Instant::now();
        let got = read(&k, "edgesync.events", Duration::from_secs(20), |recs| {
            recs.len() >= want
        });
        assert!(
            got.len() >= want,
            "round {i}: {} of {want} events after {:?}; log:\n{}",
            got.len(),
            since.elapsed(),
            r.process.log_tail(30)
        );
    };
    round(0, &r);
    r.process.kill9();
    r.process.restart().unwrap();
    round(1, &r);
    // Two crashes within one session timeout.
    r.process.kill9();
    r.process.restart().unwrap();
    r.process.kill9();
    r.process.restart().unwrap();
    round(2, &r);
    round(3, &r);
    let recs = read(&k, "edgesync.events", Duration::from_secs(5), |_| false);
    check_events(&dots(&codec, &recs), &devices, 40);
}

/// With transactions: the owner hangs (SIGSTOP) while working through a backlog, a second
/// process takes its partitions once its session expires (the shipped 45 s), and its
/// `init_transactions` fences the hung one. Resumed, the hung process cannot commit what it
/// had open; `read_committed` readers see every dot once, in order.
#[test]
fn with_transactions_a_hung_owner_is_fenced_and_no_dot_is_doubled() {
    let k = Kafka::start_on(Broker::Apache).unwrap();
    let codec = Codec::new(Limits::default()).unwrap();
    let p = producer(&k);
    let devices = ["z-a", "z-b", "z-c", "z-d", "z-e", "z-f"];
    let (n, per) = (150u64, 10u64);
    let txn = r#"exactly_once="transactions""#;
    let all: Vec<Vec<Vec<u8>>> = devices.iter().map(|d| batches(&codec, d, n, per)).collect();
    let mut a = start_with(&k, "zombie", &[txn, "max_group_records=50"]);
    for i in 0..n as usize {
        for (d, bs) in devices.iter().zip(&all) {
            send(&p, d, &bs[i]);
        }
    }
    p.flush(Duration::from_secs(30)).unwrap();
    read(&k, "edgesync.events", Duration::from_secs(60), |r| {
        r.len() >= 1000
    });
    a.process.pause().unwrap();
    let b = start_with(&k, "successor", &[txn, "max_group_records=50"]);
    let total = devices.len() * (n * per) as usize;
    let recs = read(&k, "edgesync.events", Duration::from_secs(120), |r| {
        r.len() >= total
    });
    assert!(
        recs.len() >= total,
        "{} of {total}; successor log:\n{}",
        recs.len(),
        b.process.log_tail(30)
    );
    a.process.resume().unwrap();
    std::thread::sleep(Duration::from_secs(5)); // whatever the zombie can still do, it does now
    let fenced = a.process.log_tail(200).contains("fenced");
    eprintln!("the hung process was fenced on resume: {fenced}");
    let recs = read(&k, "edgesync.events", Duration::from_secs(10), |_| false);
    check_events(&dots(&codec, &recs), &devices, n * per);
    let seen = outside_seqs(&k, "read_committed", total);
    for d in devices {
        assert_eq!(seen[d], (1..=n * per).collect::<Vec<_>>(), "{d}");
    }
}

/// A second consumer joining the device group with the reconciler's own `group.instance.id`
/// makes the broker fence the reconciler's consumer (`FENCED_INSTANCE_ID`, fatal in librdkafka:
/// what Apache Kafka also does to a static member whose rejoin it failed to persist in a
/// failover). The stage joins again as the same member with a new consumer and goes on; every
/// dot once, in order.
#[test]
fn a_fenced_static_member_joins_again_and_loses_nothing() {
    let k = Kafka::start().unwrap();
    let codec = Codec::new(Limits::default()).unwrap();
    let p = producer(&k);
    let devices = ["fz-a", "fz-b", "fz-c"];
    let all: Vec<Vec<Vec<u8>>> = devices.iter().map(|d| batches(&codec, d, 2, 10)).collect();
    let r = start_with(&k, "fenced", &["kafka.group_instance_id=\"fz\""]);
    let round = |i: usize| {
        for (d, bs) in devices.iter().zip(&all) {
            send(&p, d, &bs[i]);
        }
        p.flush(Duration::from_secs(10)).unwrap();
        let want = devices.len() * 10 * (i + 1);
        let got = read(&k, "edgesync.events", Duration::from_secs(90), |recs| {
            recs.len() >= want
        });
        assert!(
            got.len() >= want,
            "round {i}: {} of {want} events",
            got.len()
        );
    };
    round(0);
    let rogue: rdkafka::consumer::BaseConsumer = k
        .client_config()
        .set("group.id", "edgesync-reconciler-device")
        .set("group.instance.id", "fz-device")
        .create()
        .unwrap();
    rdkafka::consumer::Consumer::subscribe(&rogue, &["edgesync.deltas"]).unwrap();
    let fenced = "consumer unusable; joining again as the same member";
    let deadline = Instant::now() + Duration::from_secs(60);
    while !r.process.log_tail(100_000).contains(fenced) {
        assert!(
            Instant::now() < deadline,
            "the reconciler was not fenced; log:\n{}",
            r.process.log_tail(30)
        );
        let _ = rogue.poll(Duration::from_millis(200));
    }
    // Static members do not leave on close: the reconciler's new consumer takes the place.
    drop(rogue);
    round(1);
    let recs = read(&k, "edgesync.events", Duration::from_secs(5), |_| false);
    check_events(&dots(&codec, &recs), &devices, 20);
}

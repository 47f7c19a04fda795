//! The whole pipeline as processes on real brokers: edge agents → Mosquitto → bridge → Kafka
//! (Apache Kafka, and again on tansu on SQLite) → reconciler → events and converged state, acknowledgements back to the
//! agents. Six agents reach Mosquitto through fault proxies that add latency, throttle
//! bandwidth and cut links, while the bridge, the reconciler, one agent, Mosquitto and the
//! Kafka broker are each killed with `kill -9` and restarted. Checked by history: every event
//! an agent answered appears in the events topic exactly once, in seq order per device; the
//! converged counters equal the reference; every spool ends empty behind its acknowledged
//! watermark; each agent's own state digest equals the converged record's of the same key.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use edgesync_core::Crdt;
use edgesync_schemas::StateRecord;
use edgesync_schemas::{Codec, Limits};
use edgesync_testkit::{
    on_both_brokers, read_outputs, workspace_binary, Broker, FaultProxy, Kafka, Mosquitto, Record,
    Service,
};

fn binary(name: &str) -> std::path::PathBuf {
    let p = workspace_binary(name);
    assert!(
        p.exists(),
        "{} missing: run `cargo build --workspace` (scripts/test does)",
        p.display()
    );
    p
}

/// NDJSON: `n` events of `device` from index `start`, each +1 on the fleet and device counters.
fn events(device: &str, start: u64, n: u64) -> Vec<u8> {
    let mut out = String::new();
    for i in start..start + n {
        out.push_str(&format!(
            "{{\"stream\":\"pump.telemetry\",\"fields\":{{\"i\":{i},\"pressure_kpa\":101.5}},\"ops\":[\
             {{\"op\":\"inc\",\"key\":\"fleet/readings\",\"by\":1}},{{\"op\":\"inc\",\"key\":\"{device}/readings\",\"by\":1}}]}}\n"
        ));
    }
    out.into_bytes()
}

/// Posts until the agent answers 200 (it may be restarting); returns the seqs it answered.
fn post(agent: &Service, body: &[u8]) -> (u64, u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok((200, text)) = agent.post("/v1/events", "application/x-ndjson", body) {
            let v: serde_json::Value = serde_json::from_str(&text).unwrap();
            return (
                v["first_seq"].as_u64().unwrap(),
                v["last_seq"].as_u64().unwrap(),
            );
        }
        assert!(Instant::now() < deadline, "agent did not take events");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn status(agent: &Service) -> serde_json::Value {
    match agent.get("/v1/status") {
        Ok((200, body)) => serde_json::from_str(&body).unwrap(),
        _ => serde_json::Value::Null,
    }
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

on_both_brokers!(agents_to_converged_state_through_kill_9_of_every_component);

/// The services run on their shipped group settings: a restarted reconciler or bridge is the
/// same static group member and takes its partitions back at once.
fn agents_to_converged_state_through_kill_9_of_every_component(b: Broker) {
    let mut m = Mosquitto::start().unwrap();
    let mut k = Kafka::start_on(b).unwrap();
    let codec = Codec::new(Limits::default()).unwrap();
    let kafka = format!("kafka.bootstrap_servers={}", k.bootstrap());
    let mut reconciler = Service::start(
        binary("edgesync-reconciler"),
        None,
        "reconciler",
        &[
            kafka.clone(),
            "kafka.partitions=4".into(),
            "state_dir=\"{dir}/state\"".into(),
        ],
    )
    .unwrap();
    let mut bridge = Service::start(
        binary("edgesync-bridge"),
        None,
        "bridge",
        &[
            kafka.clone(),
            format!("mqtt.port={}", m.port()),
            "mqtt.keep_alive_secs=5".into(),
            "kafka.partitions=4".into(),
        ],
    )
    .unwrap();
    let devices = [
        "e2e-pump-1",
        "e2e-pump-2",
        "e2e-pump-3",
        "e2e-pump-4",
        "e2e-pump-5",
        "e2e-pump-6",
    ];
    // Each agent's uplink goes through its own proxy: the links the faults are applied to.
    let links: Vec<FaultProxy> = devices
        .iter()
        .map(|_| FaultProxy::start(m.addr()).unwrap())
        .collect();
    let mut agents: Vec<Service> = devices
        .iter()
        .zip(&links)
        .map(|(d, link)| {
            Service::start(
                binary("edgesync-agent"),
                Some("run"),
                d,
                &[
                    format!("device.id={d}"),
                    "spool.dir=\"{dir}/spool\"".into(),
                    format!("uplink.port={}", link.addr().port()),
                    "uplink.keep_alive_secs=5".into(),
                    "uplink.backoff_min_ms=100".into(),
                    "uplink.backoff_max_ms=1000".into(),
                    "uplink.resend_timeout_ms=3000".into(),
                ],
            )
            .unwrap()
        })
        .collect();

    let mut answered: BTreeMap<&str, BTreeSet<u64>> = BTreeMap::new();
    let mut sent = BTreeMap::new();
    // Link quality for the whole run: a slow link, a throttled one, one with both.
    links[1].set_latency(Duration::from_millis(80));
    links[2].set_bandwidth(Some(16 * 1024));
    links[4].set_latency(Duration::from_millis(40));
    links[4].set_bandwidth(Some(32 * 1024));
    for round in 0..12u64 {
        // Cuts: link 3 down for rounds 1-3, link 5 for rounds 5-7.
        match round {
            1 => links[3].cut(),
            4 => links[3].heal(),
            5 => links[5].cut(),
            8 => links[5].heal(),
            _ => {}
        }
        for (d, a) in devices.iter().zip(&agents) {
            let n = sent.entry(*d).or_insert(0u64);
            let (first, last) = post(a, &events(d, *n, 30));
            *n += 30;
            answered.entry(d).or_default().extend(first..=last);
        }
        // E2E_ONLY=bridge,reconciler,agent,mosquitto,kafka restricts the kills (diagnosis).
        let only = std::env::var("E2E_ONLY").ok();
        let kill = |what: &str| {
            only.as_deref()
                .is_none_or(|o| o.split(',').any(|x| x == what))
        };
        match round {
            2 if kill("kafka") => k.process().restart().unwrap(),
            4 if kill("bridge") => bridge.process.restart().unwrap(),
            6 if kill("reconciler") => reconciler.process.restart().unwrap(),
            8 if kill("agent") => agents[0].process.restart().unwrap(),
            10 if kill("mosquitto") => m.process().restart().unwrap(),
            _ => {}
        }
        std::thread::sleep(Duration::from_millis(300));
    }

    for link in &links {
        link.heal();
        link.set_latency(Duration::ZERO);
        link.set_bandwidth(None);
    }

    // Every agent ends acknowledged up to its last seq with an empty spool.
    let deadline = Instant::now() + Duration::from_secs(180);
    let synced = |a: &Service, last: u64| {
        let s = status(a);
        s["acked_watermark"] == last && s["spool_events"] == 0
    };
    while Instant::now() < deadline
        && !devices
            .iter()
            .zip(&agents)
            .all(|(d, a)| synced(a, *answered[d].last().unwrap()))
    {
        std::thread::sleep(Duration::from_millis(500));
    }
    if let Ok(dir) = std::env::var("E2E_LOGS") {
        // Diagnosis: every log in full.
        let _ = std::fs::create_dir_all(&dir);
        for (name, svc) in [("bridge", &bridge), ("reconciler", &reconciler)] {
            let _ = std::fs::write(format!("{dir}/{name}.log"), svc.process.log_tail(100_000));
            if let Ok((_, text)) = svc.get("/metrics") {
                let _ = std::fs::write(format!("{dir}/{name}.metrics"), text);
            }
        }
        for (d, a) in devices.iter().zip(&agents) {
            let _ = std::fs::write(format!("{dir}/{d}.log"), a.process.log_tail(100_000));
        }
        let _ = std::fs::write(format!("{dir}/kafka.log"), k.process().log_tail(100_000));
        for topic in ["edgesync.deltas", "edgesync.events", "edgesync.acks"] {
            let recs = read(&k, topic, Duration::from_secs(5), |_| false);
            let mut per: BTreeMap<i32, usize> = BTreeMap::new();
            for r in &recs {
                *per.entry(r.partition).or_default() += 1;
            }
            let _ = std::fs::write(format!("{dir}/{topic}.count"), format!("{per:?}\n"));
        }
        let _ = std::fs::write(
            format!("{dir}/mosquitto.log"),
            m.process().log_tail(100_000),
        );
    }
    for (d, a) in devices.iter().zip(&agents) {
        assert!(
            synced(a, *answered[d].last().unwrap()),
            "{d} not synced: {}\nagent log:\n{}\nbridge log:\n{}\nreconciler log:\n{}",
            status(a),
            a.process.log_tail(15),
            bridge.process.log_tail(15),
            reconciler.process.log_tail(15)
        );
    }

    // Every answered event exactly once in the events topic, in seq order per device.
    let total: usize = answered.values().map(BTreeSet::len).sum();
    let recs = read(&k, "edgesync.events", Duration::from_secs(60), |r| {
        r.len() >= total
    });
    let mut got: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for Record { payload: b, .. } in &recs {
        let e = codec.decode_event(b).unwrap();
        got.entry(e.dot.replica.device.to_string())
            .or_default()
            .push(e.dot.seq);
    }
    for d in devices {
        let seqs = got.remove(d).unwrap_or_default();
        let want: Vec<u64> = answered[d].iter().copied().collect();
        assert_eq!(seqs, want, "{d}: events missing, doubled or out of order");
    }
    assert!(
        got.is_empty(),
        "events of unknown devices: {:?}",
        got.keys()
    );

    // Converged state equals the reference.
    let mut expect: BTreeMap<String, u128> = devices
        .iter()
        .map(|d| (format!("{d}/readings"), answered[d].len() as u128))
        .collect();
    expect.insert("fleet/readings".into(), total as u128);
    let latest = |r: &[Record]| {
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
        last
    };
    let states = read(&k, "edgesync.state", Duration::from_secs(60), |r| {
        latest(r) == expect
    });
    assert_eq!(latest(&states), expect);
    // Edge and server agree: a device's own counter is written by that device alone, so its
    // converged record carries the digest of the agent's local state.
    let mut server_digest = BTreeMap::new();
    for Record {
        key, payload: b, ..
    } in &states
    {
        let rec: StateRecord = codec.decode_state_record(b).unwrap();
        server_digest.insert(key.clone(), rec.digest().to_hex());
    }
    for (d, a) in devices.iter().zip(&agents) {
        let key = format!("{d}/readings");
        assert_eq!(
            status(a)["state_digests"][&key].as_str(),
            server_digest.get(&key).map(String::as_str),
            "{key}: edge and server digests differ"
        );
    }
    assert_eq!(
        bridge.metric("edgesync_bridge_dead_lettered_total", ""),
        0.0
    );

    // The outside reader: PyPI's confluent-kafka and fastavro with only the .avsc files.
    let read =
        read_outputs(&k.bootstrap(), total, "read_committed").unwrap_or_else(|e| panic!("{e}"));
    for d in devices {
        let want: Vec<u64> = answered[d].iter().copied().collect();
        assert_eq!(
            read["events"][d],
            serde_json::json!(want),
            "{d} as the outside reader sees it"
        );
    }
    for (key, value) in &expect {
        assert_eq!(
            read["state"][key],
            serde_json::json!(*value as u64),
            "{key} as the outside reader sees it"
        );
    }
}

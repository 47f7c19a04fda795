//! The real pipeline as processes, for the end-to-end suites in `tests/tests/`: a [`Fleet`] of
//! edge agents (each behind its own [`FaultProxy`]), Mosquitto, one bridge and one reconciler
//! on a given Kafka, and the history check every suite ends with.
//!
//! The history check ([`Fleet::assert_converged`]) is the promise, stated once:
//! - every agent ends acknowledged up to the last seq it answered, with an empty spool;
//! - every answered event is in `edgesync.events` exactly once, in seq order per device (per
//!   lane: each lane is its own replica, with its own seqs), and no event that was never
//!   answered;
//! - the converged counters in `edgesync.state` equal the reference computed from the answers;
//! - each agent's own state digest equals its converged record's (edge and server agree);
//! - nothing was dead-lettered;
//! - the outside reader (PyPI's confluent-kafka and fastavro, `read_committed`) sees the same,
//!   from the `.avsc` files, or through the Schema Registry alone once the services use one
//!   ([`Fleet::use_registry`]), and a completeness ledger line per replica: complete, with
//!   the bytes its link carried.
//!
//! Every event an agent takes is `+1` on `fleet/readings` and on `<device>/readings`, so the
//! reference is a count.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::missing_panics_doc)]

pub mod chaos;
pub mod lanes;
pub mod nemesis;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use edgesync_core::Crdt;
use edgesync_schemas::topics::kafka as topics;
use edgesync_schemas::{Codec, Limits, MessageKind, StateRecord};
use edgesync_servicekit::registry::{subject, Registry, RegistrySection};
use edgesync_testkit::{
    read_outputs_from, workspace_binary, FaultProxy, Kafka, Mosquitto, Record, Service,
};

/// A built workspace binary (the suite runs after `cargo build --workspace`).
pub fn binary(name: &str) -> PathBuf {
    let p = workspace_binary(name);
    assert!(
        p.exists(),
        "{} missing: run `cargo build --workspace` (scripts/test does)",
        p.display()
    );
    p
}

/// The agent's lane of every stream no lane names, as its answers and status spell it.
pub const DEFAULT_LANE: &str = "default";

/// The stream [`events`] writes to (the `default` lane unless a test's lanes name it).
pub const TELEMETRY: &str = "pump.telemetry";

/// NDJSON: `n` events of `device` from index `start`, each +1 on the fleet and device counters.
pub fn events(device: &str, start: u64, n: u64) -> Vec<u8> {
    stream_events(TELEMETRY, device, start, n)
}

/// [`events`] on `stream`.
pub fn stream_events(stream: &str, device: &str, start: u64, n: u64) -> Vec<u8> {
    events_with(stream, device, start, n, |i| {
        format!("\"i\":{i},\"pressure_kpa\":101.5")
    })
}

/// `n` events of `device` on `stream` from index `start` with the fields `fields(i)` makes
/// (JSON members), each +1 on the fleet and device counters.
pub fn events_with(
    stream: &str,
    device: &str,
    start: u64,
    n: u64,
    fields: impl Fn(u64) -> String,
) -> Vec<u8> {
    let mut out = String::new();
    for i in start..start + n {
        out.push_str(&format!(
            "{{\"stream\":\"{stream}\",\"fields\":{{{}}},\"ops\":[\
             {{\"op\":\"inc\",\"key\":\"fleet/readings\",\"by\":1}},{{\"op\":\"inc\",\"key\":\"{device}/readings\",\"by\":1}}]}}\n",
            fields(i)
        ));
    }
    out.into_bytes()
}

/// Posts until the agent answers 200 (it may be restarting); returns the seqs it answered, by
/// lane.
pub fn post(agent: &Service, body: &[u8]) -> Vec<(String, u64, u64)> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok((200, text)) = agent.post("/v1/events", "application/x-ndjson", body) {
            let v: serde_json::Value = serde_json::from_str(&text).unwrap();
            let lanes = v["lanes"].as_object().unwrap();
            return lanes
                .iter()
                .map(|(lane, r)| {
                    let seq = |k: &str| r[k].as_u64().unwrap();
                    (lane.clone(), seq("first_seq"), seq("last_seq"))
                })
                .collect();
        }
        assert!(Instant::now() < deadline, "agent did not take events");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A service's `/v1/status` (an agent's, or the reconciler's ledger), or null while it restarts.
pub fn status(agent: &Service) -> serde_json::Value {
    match agent.get("/v1/status") {
        Ok((200, body)) => serde_json::from_str(&body).unwrap(),
        _ => serde_json::Value::Null,
    }
}

/// Agents, Mosquitto, a bridge and a reconciler on one Kafka, and what the agents answered.
pub struct Fleet {
    /// The MQTT broker between agents and bridge.
    pub mosquitto: Mosquitto,
    /// MQTT → Kafka.
    pub bridge: Service,
    /// Kafka → events, state and acks.
    pub reconciler: Service,
    /// One device id per agent.
    pub devices: Vec<String>,
    /// Each agent's uplink goes through its own proxy: the links faults are applied to.
    pub links: Vec<FaultProxy>,
    /// The agents, in `devices` order.
    pub agents: Vec<Service>,
    /// The seqs answered, by device and lane.
    answered: BTreeMap<(String, String), BTreeSet<u64>>,
    sent: BTreeMap<String, u64>,
    codec: Codec,
    /// The Schema Registry the services frame their outputs for, if any.
    registry: Option<String>,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet")
            .field("devices", &self.devices)
            .field("answered", &self.answered())
            .finish_non_exhaustive()
    }
}

impl Fleet {
    /// Starts `n` agents named `<prefix>-1`…, Mosquitto, the bridge and the reconciler on `k`,
    /// on their shipped settings except the addresses, the fast reconnects the agents' links
    /// need in a test, and `kafka` (settings for both services' `kafka` sections, e.g. the
    /// replication factor on a cluster).
    pub fn start(k: &Kafka, prefix: &str, n: usize, kafka: &[&str]) -> Self {
        Self::start_with(k, prefix, n, kafka, &[], None)
    }

    /// [`Fleet::start`] with more reconciler settings (`reconciler`, e.g. its exactly-once
    /// method) and both services framing their outputs for the Schema Registry at `registry`
    /// from the start.
    pub fn start_with(
        k: &Kafka,
        prefix: &str,
        n: usize,
        kafka: &[&str],
        reconciler: &[&str],
        registry: Option<&str>,
    ) -> Self {
        let mosquitto = Mosquitto::start().unwrap();
        let mut common = vec![format!("kafka.bootstrap_servers={}", k.bootstrap())];
        common.extend(kafka.iter().map(|s| format!("kafka.{s}")));
        common.extend(registry.map(|url| format!("schema_registry.url={url:?}")));
        let with = |extra: &[String]| [common.clone(), extra.to_vec()].concat();
        let mut own = vec!["state_dir=\"{dir}/state\"".to_owned()];
        own.extend(reconciler.iter().map(|s| (*s).to_owned()));
        let reconciler = Service::start(
            binary("edgesync-reconciler"),
            None,
            "reconciler",
            &with(&own),
        )
        .unwrap();
        let bridge = Service::start(
            binary("edgesync-bridge"),
            None,
            "bridge",
            &with(&[
                format!("mqtt.port={}", mosquitto.port()),
                "mqtt.keep_alive_secs=5".into(),
            ]),
        )
        .unwrap();
        let devices: Vec<String> = (1..=n).map(|i| format!("{prefix}-{i}")).collect();
        let links: Vec<FaultProxy> = devices
            .iter()
            .map(|_| FaultProxy::start(mosquitto.addr()).unwrap())
            .collect();
        let agents = devices
            .iter()
            .zip(&links)
            .map(|(d, link)| start_agent(d, link))
            .collect();
        Self {
            mosquitto,
            bridge,
            reconciler,
            devices,
            links,
            agents,
            answered: BTreeMap::new(),
            sent: BTreeMap::new(),
            codec: Codec::new(Limits::default()).unwrap(),
            registry: registry.map(str::to_owned),
        }
    }

    /// Restarts the bridge and the reconciler with `[schema_registry] url` set to `url`: from
    /// then on their analytics-facing outputs carry the Confluent wire format, and the history
    /// check reads them through the registry.
    pub fn use_registry(&mut self, url: &str) {
        for (svc, prefix) in [
            (&mut self.reconciler, "EDGESYNC_RECONCILER__"),
            (&mut self.bridge, "EDGESYNC_BRIDGE__"),
        ] {
            let var = format!("{prefix}SCHEMA_REGISTRY__URL");
            svc.process.set_env(&var, Some(url));
            svc.process.restart().unwrap();
        }
        self.registry = Some(url.to_owned());
    }

    /// Makes the fleet's codec read every schema id the registry holds for the outputs.
    fn learn_registry_ids(&mut self) {
        let Some(url) = &self.registry else { return };
        let registry = Registry::new(&RegistrySection::at(url.as_str())).unwrap();
        for (topic, kind) in [
            (topics::EVENTS, MessageKind::Event),
            (topics::STATE, MessageKind::StateRecord),
        ] {
            for v in registry.versions(&subject(topic)).unwrap() {
                self.codec
                    .register_confluent_writer(v.id, kind, &v.schema)
                    .unwrap();
            }
        }
    }

    /// Starts agent `i` again, on a new spool, with `extra` settings after the test's usual ones
    /// (e.g. lanes, or a shipped value the usual ones change). Before it answered anything.
    pub fn replace_agent(&mut self, i: usize, extra: &[String]) {
        assert_eq!(
            self.answered_by(&self.devices[i]),
            0,
            "agent {i} answered already"
        );
        self.agents[i].process.terminate(Duration::from_secs(10));
        let d = &self.devices[i];
        let mut sets = agent_sets(d, &self.links[i]);
        sets.extend_from_slice(extra);
        let agent = Service::start(binary("edgesync-agent"), Some("run"), d, &sets).unwrap();
        self.agents[i] = agent;
    }

    /// Posts `n` events to every agent and records the seqs each answered.
    pub fn send_round(&mut self, n: u64) {
        self.send_stream(TELEMETRY, n);
    }

    /// [`Fleet::send_round`] on `stream`.
    pub fn send_stream(&mut self, stream: &str, n: u64) {
        self.send_made(n, |d, start, n| stream_events(stream, d, start, n));
    }

    /// Posts `n` events to every agent, as `make(device, first index, n)` writes them (each
    /// +1 on the fleet and device counters, as [`events_with`] does), and records the seqs each
    /// answered.
    pub fn send_made(&mut self, n: u64, make: impl Fn(&str, u64, u64) -> Vec<u8>) {
        for (d, a) in self.devices.iter().zip(&self.agents) {
            let sent = self.sent.entry(d.clone()).or_insert(0);
            let answered = post(a, &make(d, *sent, n));
            *sent += n;
            for (lane, first, last) in answered {
                self.answered
                    .entry((d.clone(), lane))
                    .or_default()
                    .extend(first..=last);
            }
        }
    }

    /// The seqs each device's agent answered (on its `default` lane).
    pub fn answered_seqs(&self, device: &str) -> Vec<u64> {
        self.answered_on(device, DEFAULT_LANE)
    }

    /// The seqs `device`'s agent answered on `lane`.
    pub fn answered_on(&self, device: &str, lane: &str) -> Vec<u64> {
        self.answered
            .get(&(device.to_owned(), lane.to_owned()))
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default()
    }

    /// How many events the agents answered in all.
    pub fn answered(&self) -> usize {
        self.answered.values().map(BTreeSet::len).sum()
    }

    /// How many events `device`'s agent answered, over its lanes.
    fn answered_by(&self, device: &str) -> usize {
        (self.answered.iter())
            .filter(|((d, _), _)| d == device)
            .map(|(_, s)| s.len())
            .sum()
    }

    /// Agent `i`'s lanes that answered something: (lane, its incarnation, the seqs answered).
    fn replicas(&self, i: usize) -> Vec<(String, u64, Vec<u64>)> {
        let s = status(&self.agents[i]);
        let d = &self.devices[i];
        (self.answered.iter())
            .filter(|((dev, _), _)| dev == d)
            .map(|((_, lane), seqs)| {
                let inc = s["lanes"][lane]["incarnation"].as_u64();
                let inc = inc.unwrap_or_else(|| panic!("{d}: no lane {lane} in {s}"));
                (lane.clone(), inc, seqs.iter().copied().collect())
            })
            .collect()
    }

    /// Every link back to full quality.
    pub fn heal_links(&self) {
        for link in &self.links {
            link.heal();
            link.set_latency(Duration::ZERO);
            link.set_bandwidth(None);
        }
    }

    fn synced(&self, i: usize) -> bool {
        let s = status(&self.agents[i]);
        let d = &self.devices[i];
        let acked =
            (self.answered.iter())
                .filter(|((dev, _), _)| dev == d)
                .all(|((_, lane), seqs)| {
                    seqs.last() == s["lanes"][lane]["acked_watermark"].as_u64().as_ref()
                });
        acked && self.answered_by(d) > 0 && s["spool_events"] == 0
    }

    /// Waits up to `timeout` for every agent to be acknowledged up to its last answered seq
    /// with an empty spool, then checks the whole history (see the module header) on `k`.
    pub fn assert_converged(&mut self, k: &mut Kafka, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline && !(0..self.agents.len()).all(|i| self.synced(i)) {
            std::thread::sleep(Duration::from_millis(500));
        }
        if let Ok(dir) = std::env::var("E2E_LOGS") {
            self.dump(k, &dir);
        }
        for (i, (d, a)) in self.devices.iter().zip(&self.agents).enumerate() {
            assert!(
                self.synced(i),
                "{d} not synced: {}\nagent log:\n{}\nbridge log:\n{}\nreconciler log:\n{}",
                status(a),
                a.process.log_tail(15),
                self.bridge.process.log_tail(15),
                self.reconciler.process.log_tail(15)
            );
        }
        self.learn_registry_ids();
        self.assert_events(k);
        let states = self.assert_state(k);
        self.assert_digests(&states);
        assert_eq!(
            self.bridge
                .metric("edgesync_bridge_dead_lettered_total", ""),
            0.0
        );
        self.assert_outside_reader(k);
    }

    /// Every answered event exactly once in the events topic, in seq order per device and
    /// lane.
    fn assert_events(&self, k: &Kafka) {
        let total = self.answered();
        let recs = k
            .read_topic(topics::EVENTS, Duration::from_secs(60), |r| {
                r.len() >= total
            })
            .unwrap();
        let mut got: BTreeMap<(String, u64), Vec<u64>> = BTreeMap::new();
        for Record { payload: b, .. } in &recs {
            let e = self.codec.decode_event(b).unwrap();
            let r = e.dot.replica;
            got.entry((r.device.to_string(), r.incarnation.get()))
                .or_default()
                .push(e.dot.seq);
        }
        for (i, d) in self.devices.iter().enumerate() {
            for (lane, inc, want) in self.replicas(i) {
                let seqs = got.remove(&(d.clone(), inc)).unwrap_or_default();
                assert_eq!(
                    seqs, want,
                    "{d} {lane}: events missing, doubled or out of order"
                );
            }
        }
        assert!(
            got.is_empty(),
            "events of unknown replicas: {:?}",
            got.keys()
        );
    }

    /// The converged counters every key must reach.
    pub fn reference(&self) -> BTreeMap<String, u128> {
        let mut expect: BTreeMap<String, u128> = self
            .devices
            .iter()
            .map(|d| (format!("{d}/readings"), self.answered_by(d) as u128))
            .collect();
        expect.insert("fleet/readings".into(), self.answered() as u128);
        expect
    }

    /// Converged state equals the reference; returns the state records read.
    fn assert_state(&self, k: &Kafka) -> Vec<Record> {
        let expect = self.reference();
        let states = k
            .read_topic(topics::STATE, Duration::from_secs(60), |r| {
                latest_counters(&self.codec, r) == expect
            })
            .unwrap();
        assert_eq!(latest_counters(&self.codec, &states), expect);
        states
    }

    /// A device's own counter is written by that device alone, so its converged record
    /// carries the digest of the agent's local state.
    fn assert_digests(&self, states: &[Record]) {
        let mut server = BTreeMap::new();
        for Record {
            key, payload: b, ..
        } in states
        {
            let rec: StateRecord = self.codec.decode_state_record(b).unwrap();
            server.insert(key.clone(), rec.digest().to_hex());
        }
        for (d, a) in self.devices.iter().zip(&self.agents) {
            let key = format!("{d}/readings");
            assert_eq!(
                status(a)["state_digests"][&key].as_str(),
                server.get(&key).map(String::as_str),
                "{key}: edge and server digests differ"
            );
        }
    }

    /// The outside reader: PyPI's confluent-kafka and fastavro, with the .avsc files or the
    /// registry. Also every device's completeness record: no gap, nothing held back, and the
    /// watermark at the last answered seq.
    fn assert_outside_reader(&self, k: &Kafka) {
        let registry = self.registry.as_deref();
        let total = self.answered();
        let read = read_outputs_from(&k.bootstrap(), registry, total, "read_committed", true)
            .unwrap_or_else(|e| panic!("{e}"));
        let replicas = read["replicas"].as_object().cloned().unwrap_or_default();
        for (i, d) in self.devices.iter().enumerate() {
            let expected: Vec<String> = (self.replicas(i).into_iter())
                .map(|(_, inc, _)| format!("{d}@{inc}"))
                .collect();
            let seen = replicas.keys().filter(|k| k.starts_with(&format!("{d}@")));
            for k in seen {
                assert!(
                    expected.contains(k),
                    "{k}: events of a replica nobody answered for"
                );
            }
            let lines = read["completeness"][d]
                .as_array()
                .cloned()
                .unwrap_or_default();
            for (lane, inc, want) in self.replicas(i) {
                assert_eq!(
                    read["replicas"][format!("{d}@{inc}")],
                    serde_json::json!(want),
                    "{d} {lane} as the outside reader sees it"
                );
                let line = lines
                    .iter()
                    .find(|l| l["incarnation"].as_u64() == Some(inc));
                let top = line.and_then(|l| l["watermark"].as_u64());
                assert_eq!(
                    top,
                    want.last().copied(),
                    "{d} {lane}'s completeness: {lines:?}"
                );
            }
            for l in &lines {
                assert_eq!(l["missing"], serde_json::json!([]), "{d}: {l}");
                assert!(
                    l["wire_bytes"].as_u64() > Some(0),
                    "{d}: no bytes received? {l}"
                );
                assert_eq!(
                    (l["pending"].as_u64(), l["completeness"].as_f64()),
                    (Some(0), Some(1.0)),
                    "{d}: {l}"
                );
            }
        }
        for (key, value) in &self.reference() {
            assert_eq!(
                read["state"][key],
                serde_json::json!(*value as u64),
                "{key} as the outside reader sees it"
            );
        }
    }

    /// Diagnosis (`E2E_LOGS=dir`): every log in full, metrics, records per partition.
    fn dump(&mut self, k: &mut Kafka, dir: &str) {
        let _ = std::fs::create_dir_all(dir);
        for (name, svc) in [("bridge", &self.bridge), ("reconciler", &self.reconciler)] {
            let _ = std::fs::write(format!("{dir}/{name}.log"), svc.process.log_tail(100_000));
            if let Ok((_, text)) = svc.get("/metrics") {
                let _ = std::fs::write(format!("{dir}/{name}.metrics"), text);
            }
        }
        for (d, a) in self.devices.iter().zip(&self.agents) {
            let _ = std::fs::write(format!("{dir}/{d}.log"), a.process.log_tail(100_000));
        }
        for i in 0..k.len() {
            let log = k.node(i).log_tail(100_000);
            let _ = std::fs::write(format!("{dir}/kafka-{i}.log"), log);
        }
        for topic in [topics::DELTAS, topics::EVENTS, topics::ACKS] {
            let recs = k
                .read_topic(topic, Duration::from_secs(5), |_| false)
                .unwrap_or_default();
            let mut per: BTreeMap<i32, usize> = BTreeMap::new();
            for r in &recs {
                *per.entry(r.partition).or_default() += 1;
            }
            let _ = std::fs::write(format!("{dir}/{topic}.count"), format!("{per:?}\n"));
        }
        let log = self.mosquitto.process().log_tail(100_000);
        let _ = std::fs::write(format!("{dir}/mosquitto.log"), log);
    }
}

/// An agent for `device` whose uplink goes through `link` ([`agent_sets`]).
fn start_agent(device: &str, link: &FaultProxy) -> Service {
    Service::start(
        binary("edgesync-agent"),
        Some("run"),
        device,
        &agent_sets(device, link),
    )
    .unwrap()
}

/// The settings of a test's agent for `device` behind `link`: the shipped ones except the
/// addresses and fast reconnects (a test's links come back within seconds; the shipped
/// backoff is for fleets).
pub fn agent_sets(device: &str, link: &FaultProxy) -> Vec<String> {
    vec![
        format!("device.id={device}"),
        "spool.dir=\"{dir}/spool\"".into(),
        format!("uplink.port={}", link.addr().port()),
        "uplink.keep_alive_secs=5".into(),
        "uplink.backoff_min_ms=100".into(),
        "uplink.backoff_max_ms=1000".into(),
        "uplink.resend_timeout_ms=3000".into(),
    ]
}

/// The last counter value per key in state records.
pub fn latest_counters(codec: &Codec, records: &[Record]) -> BTreeMap<String, u128> {
    let mut last = BTreeMap::new();
    for Record {
        key, payload: b, ..
    } in records
    {
        if let Some(v) = g_counter(codec, b) {
            last.insert(key.clone(), v);
        }
    }
    last
}

/// The value of a converged-state record holding a G-counter (`None` for another kind or bytes
/// that do not decode).
pub fn g_counter(codec: &Codec, record: &[u8]) -> Option<u128> {
    match codec.decode_state_record(record).ok()?.state {
        Crdt::GCounter(c) => Some(c.value()),
        _ => None,
    }
}

//! Bad input at the edges of the running pipeline, fed while the steady load runs.
//!
//! Three edges, each fed every case of its table in [`ROUNDS`] rounds a few seconds apart:
//! - every agent's `POST /v1/events` ([`http_cases`]): malformed JSON, nulls, deep nesting,
//!   unknown members and ops, type and CRDT-kind clashes, numbers out of range, bytes that are
//!   not UTF-8, a bad line among good ones, too many events, a body over the limit. Each must
//!   get its 4xx with an `error` text, and be counted in `edgesync_agent_rejected_events_total`.
//! - the MQTT batch topics, straight to Mosquitto ([`mqtt_cases`]): garbage, a truncated
//!   frame, a truncated and an overlong datum, an unknown schema fingerprint, a zstd bomb, a
//!   batch over the payload limit, a batch for device A on device B's topic, a bad device id.
//!   Each must be dead-lettered by a bridge with its reason.
//! - the Kafka input topics, produced directly ([`kafka_cases`]): what a bridge would never
//!   forward (garbage, truncated, another device's batch under a device's key) on
//!   `edgesync.deltas`, and garbage on `edgesync.state-deltas`. Each must be dead-lettered by
//!   a reconciler with its reason.
//!
//! Then the run drains and checks the history as the nemesis does, with the dead letters
//! expected: nothing answered is lost or doubled, no bad input leaked into an output, and
//! every process is the one that started (the same pid: refusing input never costs a
//! restart). Good events inside a refused request carry payload indices no feeder uses, so
//! one that got stored anyway would be found *never appended*.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use edgesync_core::{
    DeltaBatch, DeviceId, DropReason, DroppedRange, EventLimits, Incarnation, ReplicaId, SeqRange,
};
use edgesync_schemas::topics::{self, kafka as ktopics};
use edgesync_schemas::{Codec, DeadLetterReason, Limits, DEAD_LETTER_MAX_PAYLOAD};
use edgesync_testkit::{unique, wait_until, Error};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rumqttc::{Client, Event, MqttOptions, Packet, QoS};

use super::history::{self, ExpectedDeadLetter};
use super::rig::Rig;
use super::{drained, feed, keep_logs, Options, Report};
use crate::nemesis::{processes, Shape};

/// How many times each table is fed, and the pause between rounds (the load goes on).
pub const ROUNDS: usize = 2;
const BETWEEN_ROUNDS: Duration = Duration::from_secs(3);
/// The pipeline: three agents (one per quota policy), two bridges, two reconcilers, one node.
pub const SHAPE: Shape = Shape {
    agents: 3,
    bridges: 2,
    reconcilers: 2,
    kafka: 1,
};
/// Payload indices of good events inside refused requests: never used by a feeder.
const NEVER_SENT: u64 = 1 << 40;

/// A request an agent must refuse: what it is, its body, and the answer it must get.
#[derive(Clone, Debug)]
pub struct HttpCase {
    /// What the case is.
    pub name: &'static str,
    /// `application/json` or `application/x-ndjson`.
    pub content_type: &'static str,
    /// The body.
    pub body: Vec<u8>,
    /// The status it must get.
    pub status: u16,
    /// The `reason` label it is counted under.
    pub counted_as: &'static str,
    /// How many events it counts as refused (one for a body that does not parse whole).
    pub events: u64,
}

fn case(name: &'static str, body: impl Into<Vec<u8>>) -> HttpCase {
    HttpCase {
        name,
        content_type: "application/json",
        body: body.into(),
        status: 400,
        counted_as: "invalid",
        events: 1,
    }
}

fn good_line(i: u64) -> String {
    format!(
        "{{\"stream\":\"pump.telemetry\",\"fields\":{{\"i\":{}}}}}\n",
        NEVER_SENT + i
    )
}

/// A number the shipped `deploy/<file>` sets as `key = N` (the limits the cases are sized
/// against, read where ops set them).
fn shipped(file: &str, key: &str) -> usize {
    let path = edgesync_testkit::deploy(file);
    let text = std::fs::read_to_string(&path).expect("the shipped config");
    text.lines()
        .find_map(|l| {
            l.strip_prefix(key)?
                .trim()
                .strip_prefix('=')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("{} sets no {key}", path.display()))
}

/// Every bad request, sized against the shipped limits.
pub fn http_cases() -> Vec<HttpCase> {
    let max_body: usize = shipped("edge-agent.toml", "max_body_bytes");
    let max_events: usize = shipped("edge-agent.toml", "max_request_events");
    let deep_array = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let deep_field = format!(
        "{{\"stream\":\"s\",\"fields\":{{\"x\":{}1{}}}}}",
        "{\"a\":".repeat(5_000),
        "}".repeat(5_000)
    );
    let ndjson_bad_last = format!("{}{}{{\"stream\":", good_line(0), good_line(1));
    let many = format!("[{}]", vec!["{\"stream\":\"s\"}"; max_events + 1].join(","));
    let big = format!(
        "{{\"stream\":\"s\",\"tags\":{{\"x\":\"{}\"}}}}",
        "a".repeat(max_body)
    );
    vec![
        case("truncated JSON", "{\"stream\":"),
        case("empty body", ""),
        case("null", "null"),
        case("an array of null", "[null]"),
        case("a null stream", "{\"stream\":null}"),
        case("a null field", "{\"stream\":\"s\",\"fields\":{\"x\":null}}"),
        case(
            "an array as a field",
            "{\"stream\":\"s\",\"fields\":{\"x\":[1]}}",
        ),
        case("deeply nested arrays", deep_array),
        case("a deeply nested field", deep_field),
        case("an unknown member", "{\"stream\":\"s\",\"feilds\":{}}"),
        case(
            "an unknown op",
            "{\"stream\":\"s\",\"ops\":[{\"op\":\"mul\",\"key\":\"k\",\"by\":2}]}",
        ),
        case(
            "a string where a count goes",
            "{\"stream\":\"s\",\"ops\":[{\"op\":\"inc\",\"key\":\"k\",\"by\":\"one\"}]}",
        ),
        case(
            "a negative G-counter increment",
            "{\"stream\":\"s\",\"ops\":[{\"op\":\"inc\",\"key\":\"k\",\"by\":-1}]}",
        ),
        case(
            "a max register op on a G-counter",
            "{\"stream\":\"s\",\"ops\":[{\"op\":\"max\",\"key\":\"fleet/readings\",\"value\":1}]}",
        ),
        case(
            "an integer over 64 bits",
            "{\"stream\":\"s\",\"fields\":{\"x\":18446744073709551616}}",
        ),
        case(
            "bytes that are not UTF-8",
            b"{\"stream\":\"\xff\xfe\"}".to_vec(),
        ),
        HttpCase {
            content_type: "application/x-ndjson",
            ..case("NDJSON with a bad last line", ndjson_bad_last)
        },
        HttpCase {
            status: 413,
            events: max_events as u64 + 1,
            ..case("one event over the request limit", many)
        },
        HttpCase {
            status: 413,
            counted_as: "too_large",
            ..case("a body over the limit", big)
        },
    ]
}

/// A record a bridge or a reconciler must dead-letter.
#[derive(Clone, Debug)]
pub struct BrokerCase {
    /// What the case is.
    pub name: &'static str,
    /// The MQTT topic, or the Kafka topic.
    pub topic: String,
    /// The Kafka key (`None` for MQTT).
    pub key: Option<String>,
    /// The bytes.
    pub payload: Vec<u8>,
    /// The reason its dead letter must give.
    pub reason: DeadLetterReason,
}

/// A well-formed batch of `device` (one dropped range, so it stands alone) and its datum
/// before compression.
fn batch(codec: &Codec, device: &str) -> (Vec<u8>, Vec<u8>) {
    let replica = ReplicaId::new(
        DeviceId::new(device).expect("a valid id"),
        Incarnation::new(42).expect("in range"),
    );
    let dropped = DroppedRange {
        range: SeqRange { start: 1, end: 3 },
        reason: DropReason::Quota,
    };
    let b = DeltaBatch::with_dropped(
        replica,
        1,
        vec![],
        vec![dropped],
        BTreeMap::new(),
        &EventLimits::default(),
    )
    .expect("a dense batch");
    let wire = codec.encode_batch(&b).expect("encodes");
    let plain = zstd::decode_all(&wire[..]).expect("the codec's own frame");
    (wire, plain)
}

fn zstd(plain: &[u8]) -> Vec<u8> {
    zstd::encode_all(plain, 3).expect("in memory")
}

/// Every bad MQTT publication; `a` and `b` are two of the rig's devices.
pub fn mqtt_cases(codec: &Codec, a: &str, b: &str) -> Vec<BrokerCase> {
    let (wire, plain) = batch(codec, a);
    let mut unknown_fp = plain.clone();
    unknown_fp[2..10].copy_from_slice(&0x0123_4567_89ab_cdef_u64.to_le_bytes());
    let overlong = [&plain[..], &[0]].concat();
    let max_payload = shipped("bridge.toml", "max_payload_bytes");
    let bomb = zstd(&vec![0u8; Limits::default().max_decoded_bytes + 1]);
    let on = |name, payload, reason| BrokerCase {
        name,
        topic: topics::batch(&DeviceId::new(a).expect("a valid id")),
        key: None,
        payload,
        reason,
    };
    use DeadLetterReason::*;
    vec![
        on("garbage", b"\x28\xb5\x2f\xfd garbage".to_vec(), Undecodable),
        on("an empty payload", Vec::new(), Undecodable),
        on(
            "a truncated frame",
            wire[..wire.len() / 2].to_vec(),
            Undecodable,
        ),
        on(
            "a truncated datum",
            zstd(&plain[..plain.len() - 2]),
            Undecodable,
        ),
        on("bytes after the datum", zstd(&overlong), Undecodable),
        on(
            "an unknown schema fingerprint",
            zstd(&unknown_fp),
            Undecodable,
        ),
        on("an uncompressed datum", plain.clone(), Undecodable),
        on("a zstd bomb", bomb, Oversize),
        on("over the payload limit", vec![7; max_payload + 1], Oversize),
        on(
            "device B's batch on A's topic",
            batch(codec, b).0,
            DeviceMismatch,
        ),
        BrokerCase {
            topic: "edgesync/v1/Not_An_Id/batch".into(),
            ..on("a bad device id", wire, BadDeviceId)
        },
    ]
}

/// Every bad record produced straight to the reconcilers' input topics, keyed by `a`.
pub fn kafka_cases(codec: &Codec, a: &str, b: &str) -> Vec<BrokerCase> {
    let (wire, _) = batch(codec, a);
    let to = |topic: &str, name, payload, reason| BrokerCase {
        name,
        topic: topic.into(),
        key: Some(a.into()),
        payload,
        reason,
    };
    use DeadLetterReason::*;
    vec![
        to(ktopics::DELTAS, "garbage", b"garbage".to_vec(), Undecodable),
        to(
            ktopics::DELTAS,
            "truncated",
            wire[..wire.len() / 2].to_vec(),
            Undecodable,
        ),
        to(
            ktopics::DELTAS,
            "device B's batch under A's key",
            batch(codec, b).0,
            DeviceMismatch,
        ),
        to(
            ktopics::STATE_DELTAS,
            "garbage state",
            b"\xc3\x01garbage".to_vec(),
            Undecodable,
        ),
    ]
}

/// Feeds every case in [`ROUNDS`] rounds to a fresh pipeline under load, then checks.
pub fn run(prefix: &str) -> Result<Report, Error> {
    let mut rig = Rig::start(SHAPE, prefix)?;
    let codec = Codec::new(Limits::default()).expect("the shipped schemas");
    let (a, b) = (rig.devices[0].clone(), rig.devices[1].clone());
    let (http, mqtt, kafka) = (
        http_cases(),
        mqtt_cases(&codec, &a, &b),
        kafka_cases(&codec, &a, &b),
    );
    let pids = pids(&mut rig);
    let mut incidents = Vec::new();
    let publisher = Publisher::connect(rig.mosquitto.addr());
    let producer = producer(&rig)?;
    std::thread::sleep(BETWEEN_ROUNDS);
    for _ in 0..ROUNDS {
        for agent in &rig.agents {
            incidents.extend(http.iter().filter_map(|c| refused(agent.http, c)));
        }
        for c in &mqtt {
            publisher.publish(&c.topic, &c.payload);
        }
        for c in &kafka {
            let r = BaseRecord::to(&c.topic)
                .key(c.key.as_deref().unwrap_or_default())
                .payload(&c.payload);
            if let Err((e, _)) = producer.send(r) {
                incidents.push(format!("producing {}: {e}", c.name));
            }
        }
        if let Err(e) = producer.flush(Duration::from_secs(30)) {
            incidents.push(format!("flushing the Kafka cases: {e}"));
        }
        std::thread::sleep(BETWEEN_ROUNDS);
    }
    let published = (ROUNDS * mqtt.len()) as u64;
    if !wait_until(Duration::from_secs(60), || publisher.acked() == published) {
        incidents.push(format!(
            "{} of {published} publications acknowledged",
            publisher.acked()
        ));
    }
    let tallies: Vec<_> = rig.feeders.iter_mut().map(feed::Feeder::stop).collect();
    incidents.extend(counted(&rig, &http, &mqtt, &kafka));
    incidents.extend(same_processes(&mut rig, &pids));
    let healed = Instant::now();
    let converged_after = drained(&rig, &tallies).then(|| healed.elapsed());
    let dead = expected(&mqtt, &kafka);
    let history = history::check(&mut rig, &tallies, &dead);
    let fed = [
        ("http", http.len() * rig.agents.len()),
        ("mqtt", mqtt.len()),
        ("kafka", kafka.len()),
    ];
    let mut report = Report {
        name: "bad input",
        options: Options {
            seed: 0,
            duration: Duration::ZERO,
            shape: SHAPE,
        },
        faults: fed.into_iter().map(|(k, n)| (k, n * ROUNDS)).collect(),
        converged_after,
        history,
        incidents,
        replay: "cargo test -p edgesync-tests --test bad_input".into(),
    };
    keep_logs(&mut rig, &mut report);
    Ok(report)
}

/// Posts `c` to the agent at `addr`; an incident unless it got its status with a reason and
/// the agent still answers its health check.
fn refused(addr: SocketAddr, c: &HttpCase) -> Option<String> {
    let answer = edgesync_testkit::http(addr, "POST", "/v1/events", c.content_type, &c.body);
    let why = match answer {
        Ok((status, _, body)) if status == c.status => {
            let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            let text = v["error"].as_str().unwrap_or_default();
            (text.is_empty()).then(|| format!("answered {status} without a reason: {body}"))
        }
        Ok((status, _, body)) => Some(format!("answered {status}, not {}: {body}", c.status)),
        Err(e) => Some(format!("no answer: {e}")),
    };
    let health = edgesync_testkit::http(addr, "GET", "/healthz", "", b"");
    let why = why.or_else(|| match health {
        Ok((200, _, _)) => None,
        other => Some(format!("not healthy after it: {other:?}")),
    });
    why.map(|w| format!("agent {addr}, {}: {w}", c.name))
}

/// The refusal and dead-letter counters against what was fed.
fn counted(rig: &Rig, http: &[HttpCase], mqtt: &[BrokerCase], kafka: &[BrokerCase]) -> Vec<String> {
    let mut wrong = Vec::new();
    let rounds = ROUNDS as f64;
    let mut want: BTreeMap<&str, f64> = BTreeMap::new();
    for c in http {
        *want.entry(c.counted_as).or_default() += c.events as f64 * rounds;
    }
    for a in &rig.agents {
        for (reason, n) in &want {
            let labels = format!("source=\"http\",reason=\"{reason}\"");
            let got = a.metric("edgesync_agent_rejected_events_total", &labels);
            if got != *n {
                wrong.push(format!(
                    "agent {}: {got} events refused as {reason}, fed {n}",
                    a.http
                ));
            }
        }
    }
    let sum = |svcs: &[edgesync_testkit::Service], name| -> f64 {
        svcs.iter().map(|s| s.metric(name, "")).sum()
    };
    let dead = [
        (
            "bridges",
            sum(&rig.bridges, "edgesync_bridge_dead_lettered_total"),
            mqtt.len(),
        ),
        (
            "reconcilers",
            sum(&rig.reconcilers, "edgesync_reconciler_dead_lettered_total"),
            kafka.len(),
        ),
    ];
    for (who, got, n) in dead {
        let n = (n * ROUNDS) as f64;
        if got != n {
            wrong.push(format!("the {who} counted {got} dead letters, fed {n}"));
        }
    }
    wrong
}

/// Every dead letter the cases must cause.
fn expected(mqtt: &[BrokerCase], kafka: &[BrokerCase]) -> Vec<ExpectedDeadLetter> {
    let mqtt = mqtt.iter().map(|c| (format!("mqtt:{}", c.topic), c));
    let kafka = kafka.iter().map(|c| (format!("kafka:{}/", c.topic), c));
    mqtt.chain(kafka)
        .flat_map(|(source, c)| {
            // A dead letter keeps the first bytes of a long input (`DEAD_LETTER_MAX_PAYLOAD`).
            let kept = c.payload.len().min(DEAD_LETTER_MAX_PAYLOAD);
            let x = ExpectedDeadLetter {
                source,
                reason: c.reason,
                payload: c.payload[..kept].to_vec(),
            };
            vec![x; ROUNDS]
        })
        .collect()
}

fn pids(rig: &mut Rig) -> Vec<Option<u32>> {
    processes(rig.shape)
        .into_iter()
        .map(|t| rig.process(t).and_then(|p| p.pid()))
        .collect()
}

fn same_processes(rig: &mut Rig, before: &[Option<u32>]) -> Vec<String> {
    let now = pids(rig);
    let mut out = rig.revive();
    for ((t, b), n) in processes(rig.shape).into_iter().zip(before).zip(now) {
        if *b != n {
            out.push(format!("{t:?} restarted during the run ({b:?} → {n:?})"));
        }
    }
    out
}

fn producer(rig: &Rig) -> Result<BaseProducer, Error> {
    let mut c = rig.kafka.client_config();
    c.set("acks", "all").set("enable.idempotence", "true");
    c.create().map_err(|e| Error::Io {
        what: "a Kafka producer for the bad records".into(),
        source: std::io::Error::other(e),
    })
}

/// An MQTT client publishing QoS 1 and counting the broker's acknowledgements.
struct Publisher {
    client: Client,
    acked: Arc<AtomicU64>,
}

impl Publisher {
    fn connect(addr: SocketAddr) -> Self {
        let mut o = MqttOptions::new(unique("bad-input"), addr.ip().to_string(), addr.port());
        o.set_keep_alive(Duration::from_secs(5));
        // Room for the oversize case: the broker's own limit is 4 MiB (deploy/mosquitto.conf).
        o.set_max_packet_size(4 << 20, 4 << 20);
        let (client, mut conn) = Client::new(o, 100);
        let acked = Arc::new(AtomicU64::new(0));
        let a = Arc::clone(&acked);
        std::thread::spawn(move || {
            for ev in conn.iter() {
                match ev {
                    Ok(Event::Incoming(Packet::PubAck(_))) => {
                        a.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(_) => {}
                    // Reconnects (and resends what was not acknowledged) on the next poll.
                    Err(_) => std::thread::sleep(Duration::from_millis(200)),
                }
            }
        });
        Self { client, acked }
    }

    fn publish(&self, topic: &str, payload: &[u8]) {
        // Queued for the connection thread; an error here is a closed channel (its thread
        // ended), which the acknowledgement count then shows.
        let _ = self
            .client
            .publish(topic, QoS::AtLeastOnce, false, payload.to_vec());
    }

    fn acked(&self) -> u64 {
        self.acked.load(Ordering::SeqCst)
    }
}

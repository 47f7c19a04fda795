//! Small synchronous Kafka and MQTT helpers shared by the harness tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::sync::mpsc;
use std::time::{Duration, Instant};

use edgesync_testkit::{unique, Kafka};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use rumqttc::{Client, Connection, Event, MqttOptions, Packet, QoS};

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Produces `keys` (value `value-of-<key>`) with acks=all and the idempotent producer; returns
/// (partition, offset) of each acknowledged record.
pub fn produce(k: &Kafka, topic: &str, keys: &[String]) -> Vec<(i32, i64)> {
    let records: Vec<(String, String)> = keys
        .iter()
        .map(|key| (key.clone(), format!("value-of-{key}")))
        .collect();
    produce_values(k, topic, &records)
}

/// Produces each (key, value) in order, one at a time, with acks=all, the idempotent producer
/// and header `origin: testkit`; returns (partition, offset) of each acknowledged record.
pub fn produce_values(k: &Kafka, topic: &str, records: &[(String, String)]) -> Vec<(i32, i64)> {
    let p: FutureProducer = k
        .client_config()
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .create()
        .unwrap();
    let rt = runtime();
    records
        .iter()
        .map(|(key, payload)| {
            let headers = OwnedHeaders::new().insert(Header {
                key: "origin",
                value: Some("testkit"),
            });
            let rec = FutureRecord::to(topic)
                .key(key)
                .payload(payload)
                .headers(headers);
            let d = rt
                .block_on(p.send(rec, Duration::from_secs(10)))
                .map_err(|(e, _)| e)
                .expect("acknowledged");
            (d.partition, d.offset)
        })
        .collect()
}

/// A consumer in `group`, manual commits, from the earliest offset.
pub fn consumer(k: &Kafka, group: &str, topic: &str) -> BaseConsumer {
    let c: BaseConsumer = k
        .client_config()
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "6000")
        .create()
        .unwrap();
    c.subscribe(&[topic]).unwrap();
    c
}

/// Consumed record: key, value, header `origin`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rec {
    pub key: String,
    pub value: String,
    pub origin: Option<String>,
    pub partition: i32,
}

/// Polls until `n` records arrived (or `timeout`), committing each one if `commit`.
pub fn consume(c: &BaseConsumer, n: usize, timeout: Duration, commit: bool) -> Vec<Rec> {
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    while out.len() < n && Instant::now() < deadline {
        let Some(m) = c.poll(Duration::from_millis(200)) else {
            continue;
        };
        let m = m.expect("no consumer error");
        let s = |b: Option<&[u8]>| b.map(|b| String::from_utf8_lossy(b).into_owned());
        let origin = m.headers().and_then(|h| {
            h.iter()
                .find(|h| h.key == "origin")
                .and_then(|h| s(h.value))
        });
        out.push(Rec {
            key: s(m.key()).unwrap_or_default(),
            value: s(m.payload()).unwrap_or_default(),
            origin,
            partition: m.partition(),
        });
        if commit {
            c.commit_message(&m, CommitMode::Sync).unwrap();
        }
    }
    out
}

pub fn keys(prefix: &str, range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("{prefix}-{i:04}")).collect()
}

pub fn topic(k: &Kafka, partitions: i32) -> String {
    let t = unique("t");
    k.create_topic(&t, partitions, &[]).unwrap();
    t
}

pub fn client_config(k: &Kafka) -> ClientConfig {
    k.client_config()
}

/// A synchronous MQTT client whose event loop runs on its own thread.
pub struct Mqtt {
    pub client: Client,
    pub events: mpsc::Receiver<Result<Event, String>>,
}

pub fn mqtt(addr: std::net::SocketAddr, id: &str) -> Mqtt {
    let mut o = MqttOptions::new(id, addr.ip().to_string(), addr.port());
    o.set_keep_alive(Duration::from_secs(5));
    o.set_clean_session(true);
    o.set_max_packet_size(1 << 20, 1 << 20);
    let (client, connection) = Client::new(o, 64);
    let (tx, events) = mpsc::channel();
    std::thread::spawn(move || drive(connection, tx));
    Mqtt { client, events }
}

fn drive(mut connection: Connection, tx: mpsc::Sender<Result<Event, String>>) {
    for ev in connection.iter() {
        let failed = ev.is_err();
        if tx.send(ev.map_err(|e| e.to_string())).is_err() {
            return;
        }
        if failed {
            std::thread::sleep(Duration::from_millis(100)); // rumqttc reconnects on the next poll
        }
    }
}

impl Mqtt {
    /// Waits for an event matching `f`; errors seen meanwhile are returned in the second field.
    pub fn wait_for(
        &self,
        timeout: Duration,
        f: impl Fn(&Event) -> bool,
    ) -> (Option<Event>, Vec<String>) {
        let deadline = Instant::now() + timeout;
        let mut errors = Vec::new();
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.events.recv_timeout(left) {
                Ok(Ok(ev)) if f(&ev) => return (Some(ev), errors),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => errors.push(e),
                Err(_) => break,
            }
        }
        (None, errors)
    }

    pub fn connected(&self, timeout: Duration) -> bool {
        self.wait_for(timeout, |e| {
            matches!(e, Event::Incoming(Packet::ConnAck(_)))
        })
        .0
        .is_some()
    }

    /// Waits for an incoming publish on `topic`; returns (payload, retain flag).
    pub fn message(&self, topic: &str, timeout: Duration) -> Option<(Vec<u8>, bool)> {
        match self
            .wait_for(
                timeout,
                |e| matches!(e, Event::Incoming(Packet::Publish(p)) if p.topic == topic),
            )
            .0
        {
            Some(Event::Incoming(Packet::Publish(p))) => Some((p.payload.to_vec(), p.retain)),
            _ => None,
        }
    }

    pub fn puback(&self, timeout: Duration) -> bool {
        self.wait_for(timeout, |e| matches!(e, Event::Incoming(Packet::PubAck(_))))
            .0
            .is_some()
    }

    pub fn subscribe(&self, topic: &str, timeout: Duration) {
        self.client.subscribe(topic, QoS::AtLeastOnce).unwrap();
        assert!(
            self.wait_for(timeout, |e| matches!(e, Event::Incoming(Packet::SubAck(_))))
                .0
                .is_some(),
            "no SUBACK"
        );
    }
}

/// Whether a process with this pid exists (and is not a zombie).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

pub fn gone_within(pid: u32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if !alive(pid) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    !alive(pid)
}

//! The raw hops the pipeline is built from, timed on the same brokers and disk in the same run,
//! so that the end-to-end latency can be read against what its parts cost on this machine:
//! an MQTT QoS 1 publish reaching a subscriber, a Kafka record (the bridge's producer settings:
//! idempotent, `acks=all`, `linger.ms=5`) reaching a consumer (the services' fetch settings:
//! `fetch.wait.max.ms=10`), and one fsync of a small write on the spools' disk.
//!
//! Each hop is timed 1,000 times, one sample every 5 ms, once the run is over: on brokers the
//! run has warmed up (a fresh JVM compiles its produce and fetch paths for minutes, and a hop
//! timed on it cold is slower than the same hop inside the warm pipeline) and with the pipeline
//! idle, so that a sample is a hop's own cost, not a queue. The targets' sums (`RawHops::sum`) add the
//! hops' p50s (or p99s): one fsync, one MQTT hop and one Kafka hop per topic the event
//! crosses.

use std::io::Write;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use edgesync_testkit::{unique, Kafka};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::Message;
use rumqttc::{Client, Event, MqttOptions, Packet, QoS};

/// Samples per hop; one every `GAP`, so that each is a latency, not a queue. A thousand, so
/// that the p99 is the tenth slowest sample and one stall of a shared machine does not make it.
const SAMPLES: usize = 1000;
const GAP: Duration = Duration::from_millis(5);

/// Latencies in microseconds, sorted.
pub type Micros = Vec<u64>;

/// The three raw hops of a run.
#[derive(Clone, Debug)]
pub struct RawHops {
    /// MQTT QoS 1 publish → subscriber.
    pub mqtt: Micros,
    /// Kafka produce → consumer.
    pub kafka: Micros,
    /// One fsync.
    pub fsync: Micros,
}

impl RawHops {
    /// Times all three on `m` and `k`.
    pub fn time(m: SocketAddr, k: &Kafka) -> Result<Self, String> {
        Ok(Self {
            mqtt: mqtt(m)?,
            kafka: kafka(k)?,
            fsync: fsync()?,
        })
    }

    /// fsync + MQTT + `kafka_hops` × Kafka: the sum of the p50s and the sum of the p99s, ms.
    pub fn sum(&self, kafka_hops: u32) -> (f64, f64) {
        let q = |v: &Micros, p| crate::report::percentile(v, p) as f64 / 1000.0;
        let at =
            |p| q(&self.fsync, p) + q(&self.mqtt, p) + f64::from(kafka_hops) * q(&self.kafka, p);
        (at(0.5), at(0.99))
    }

    /// Name and samples of each hop.
    pub fn rows(&self) -> [(&'static str, &Micros); 3] {
        [
            ("one fsync of 256 B", &self.fsync),
            ("MQTT QoS 1 publish → subscriber", &self.mqtt),
            (
                "Kafka produce (idempotent, acks=all, linger 5 ms) → consumer",
                &self.kafka,
            ),
        ]
    }
}

fn micros(d: Duration) -> u64 {
    d.as_micros().min(u128::from(u64::MAX)) as u64
}

/// MQTT: QoS 1 publish → the subscriber has it.
pub fn mqtt(broker: SocketAddr) -> Result<Micros, String> {
    let topic = format!("edgesync/hop/{}", unique("t"));
    let mut so = MqttOptions::new(unique("hop-sub"), broker.ip().to_string(), broker.port());
    so.set_keep_alive(Duration::from_secs(5));
    let (sub, mut sconn) = Client::new(so, 100);
    sub.subscribe(&topic, QoS::AtLeastOnce)
        .map_err(|e| e.to_string())?;
    for ev in sconn.iter() {
        match ev {
            Ok(Event::Incoming(Packet::SubAck(_))) => break,
            Err(e) => return Err(format!("hop subscriber: {e}")),
            _ => {}
        }
    }
    let mut po = MqttOptions::new(unique("hop-pub"), broker.ip().to_string(), broker.port());
    po.set_keep_alive(Duration::from_secs(5));
    let (publ, mut pconn) = Client::new(po, 100);
    std::thread::spawn(move || for _ in pconn.iter() {});
    let payload = vec![0u8; 500];
    let mut out = Vec::with_capacity(SAMPLES);
    for _ in 0..SAMPLES {
        let sent = Instant::now();
        publ.publish(&topic, QoS::AtLeastOnce, false, payload.clone())
            .map_err(|e| e.to_string())?;
        loop {
            match sconn.recv_timeout(Duration::from_secs(5)) {
                Ok(Ok(Event::Incoming(Packet::Publish(_)))) => break,
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(format!("hop subscriber: {e}")),
                Err(_) => return Err("MQTT hop: nothing received in 5 s".into()),
            }
        }
        out.push(micros(sent.elapsed()));
        std::thread::sleep(GAP);
    }
    let _ = publ.disconnect();
    let _ = sub.disconnect();
    out.sort_unstable();
    Ok(out)
}

/// Kafka: produce (idempotent, `acks=all`, `linger.ms=5`) → a consumer (`fetch.wait.max.ms=10`)
/// has it.
pub fn kafka(k: &Kafka) -> Result<Micros, String> {
    let topic = unique("edgesync.hop");
    k.create_topic(&topic, 1, &[]).map_err(|e| e.to_string())?;
    let c: BaseConsumer = k
        .client_config()
        .set("group.id", unique("hop"))
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", "10")
        .create()
        .map_err(|e| e.to_string())?;
    c.subscribe(&[&topic]).map_err(|e| e.to_string())?;
    let p: ThreadedProducer<DefaultProducerContext> = k
        .client_config()
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .create()
        .map_err(|e| e.to_string())?;
    // Warm up: metadata, producer id and the consumer's assignment.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let _ = p.send(BaseRecord::<(), [u8]>::to(&topic).payload(&b"warm"[..]));
        if let Some(Ok(_)) = c.poll(Duration::from_millis(500)) {
            break;
        }
        if Instant::now() > deadline {
            return Err("Kafka hop: consumer got nothing in 30 s".into());
        }
    }
    while c.poll(Duration::from_millis(200)).is_some() {}
    let mut out = Vec::with_capacity(SAMPLES);
    for i in 0..SAMPLES {
        let body = i.to_le_bytes();
        let sent = Instant::now();
        p.send(BaseRecord::<(), [u8]>::to(&topic).payload(&body[..]))
            .map_err(|(e, _)| e.to_string())?;
        let deadline = sent + Duration::from_secs(10);
        loop {
            if let Some(Ok(m)) = c.poll(Duration::from_millis(100)) {
                if m.payload() == Some(&body[..]) {
                    break;
                }
            }
            if Instant::now() > deadline {
                return Err("Kafka hop: record not consumed in 10 s".into());
            }
        }
        out.push(micros(sent.elapsed()));
        std::thread::sleep(GAP);
    }
    let _ = p.flush(Duration::from_secs(5));
    out.sort_unstable();
    Ok(out)
}

/// One 256-byte append and fsync, on the disk the spools use.
pub fn fsync() -> Result<Micros, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let mut f = std::fs::File::create(dir.path().join("hop")).map_err(|e| e.to_string())?;
    let rec = [7u8; 256];
    let mut out = Vec::with_capacity(SAMPLES);
    for _ in 0..SAMPLES {
        let t = Instant::now();
        f.write_all(&rec).map_err(|e| e.to_string())?;
        f.sync_data().map_err(|e| e.to_string())?;
        out.push(micros(t.elapsed()));
    }
    out.sort_unstable();
    Ok(out)
}

//! What the pipeline's topics say during a run, read live like an outside consumer would (by
//! their default names, from the start, with the services' fetch settings), so that every
//! latency ends where a reader has the record, not where a producer stamped it:
//!
//! - `edgesync.events`: every event by dot (once, or a duplicate), when it was read and its
//!   record's timestamp (the reconciler's produce). The dot is read from the record's first
//!   fields; the codec decodes every event in a single run, and every 64th in a stepped one,
//!   and must agree (a disagreement fails the run).
//! - `edgesync.state`: every converged record (the latest counter values; per device, when its
//!   own counter's record first included each seq: read and produced).
//! - `edgesync.deltas`: when the bridge produced each batch (record timestamp), by the batch's
//!   first seq (`Codec::check_batch`, no event decoding).
//! - optionally the MQTT batch topics themselves (a QoS 0 subscriber beside the bridge): when
//!   each batch reached the broker's subscribers, which splits the agent from the bridge.
//!
//! Times are kept in 10 µs ticks since the observer started (`u32`: 11 hours), so a run of
//! millions of events costs 8 bytes per event. Record timestamps have millisecond resolution.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use edgesync_core::Crdt;
use edgesync_schemas::topics::kafka as topics;
use edgesync_schemas::{Codec, Limits, MessageKind};
use edgesync_testkit::{unique, Kafka};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::BorrowedMessage;
use rdkafka::{Message, Offset, TopicPartitionList};
use rumqttc::{Client, Event, MqttOptions, Packet, QoS};

use crate::fleet::{Answers, Fleet, Request};
use crate::{err, now_us};

/// An event as read: when (ticks, 0 = not read) and its record's timestamp (ticks, 0 =
/// none).
#[derive(Clone, Copy, Debug, Default)]
struct Ev {
    read: u32,
    created: u32,
}

/// A converged record of a device's own counter: the device's seq it includes, produced and
/// read (ticks).
#[derive(Clone, Copy, Debug)]
struct Conv {
    seq: u64,
    created: u32,
    read: u32,
}

#[derive(Debug, Default)]
struct Device {
    incarnation: Option<u64>,
    /// Indexed by seq.
    events: Vec<Ev>,
    /// First seq of each batch → when the MQTT tap had it (first time).
    at_broker: BTreeMap<u64, u32>,
    /// First seq of each batch → its `edgesync.deltas` record's timestamp (first time).
    at_deltas: BTreeMap<u64, u32>,
    converged: Vec<Conv>,
    max_converged: u64,
}

/// Everything read so far.
#[derive(Debug, Default)]
pub struct Observed {
    devices: BTreeMap<String, Device>,
    /// Events read more than once.
    pub duplicates: u64,
    /// Event records read.
    pub events_read: u64,
    /// Bytes (key and value, as produced: before the topic's compression) of the event
    /// records read, and of the converged records read.
    pub record_bytes: (u64, u64),
    /// Event records the codec refused.
    pub undecodable: u64,
    /// Events decoded in full by the codec.
    pub decoded: u64,
    /// Events whose dot, read from the record's first fields, differs from the codec's.
    pub mismatched: u64,
    /// Events of another incarnation than the device's first.
    pub other_incarnation: u64,
    /// The highest value seen of every G-counter key.
    pub counters: BTreeMap<String, u128>,
    /// Every key with a converged record.
    pub keys: BTreeSet<String>,
}

/// The live readers.
pub struct Observer {
    t0_us: u64,
    stop: Arc<AtomicBool>,
    data: Arc<Mutex<Observed>>,
    unique: Arc<AtomicU64>,
    threads: Vec<JoinHandle<()>>,
}

impl Observer {
    /// Starts reading the output topics (and the deltas topic) of `k` from the start, and with
    /// `mqtt` the batch topics too. `full_every`: decode every this many events in full.
    pub fn start(k: &Kafka, mqtt: Option<SocketAddr>, full_every: u64) -> Result<Self, String> {
        let t0_us = now_us();
        let stop = Arc::new(AtomicBool::new(false));
        let data = Arc::new(Mutex::new(Observed::default()));
        let distinct = Arc::new(AtomicU64::new(0));
        let codec = Codec::new(Limits::default()).map_err(err)?;
        let c: BaseConsumer = k
            .client_config()
            .set("group.id", unique("observer"))
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false")
            // As the services read: an idle fetch returns after at most 10 ms.
            .set("fetch.wait.max.ms", "10")
            .create()
            .map_err(err)?;
        let mut tpl = TopicPartitionList::new();
        for topic in [topics::EVENTS, topics::STATE, topics::DELTAS] {
            for p in 0..partitions(&c, topic)? {
                tpl.add_partition_offset(topic, p, Offset::Beginning)
                    .map_err(err)?;
            }
        }
        c.assign(&tpl).map_err(err)?;
        let mut r = Reader {
            t0_us,
            codec,
            event_fp: 0,
            full_every: full_every.max(1),
            data: Arc::clone(&data),
            unique: Arc::clone(&distinct),
        };
        r.event_fp = r.codec.fingerprint(MessageKind::Event);
        let s = Arc::clone(&stop);
        let mut threads = vec![std::thread::Builder::new()
            .name("observer".into())
            .spawn(move || r.run(&c, &s))
            .map_err(err)?];
        if let Some(addr) = mqtt {
            threads.push(tap(addr, t0_us, Arc::clone(&data), Arc::clone(&stop))?);
        }
        Ok(Self {
            t0_us,
            stop,
            data,
            unique: distinct,
            threads,
        })
    }

    /// Distinct answered-or-not events read so far.
    pub fn unique_events(&self) -> u64 {
        self.unique.load(Ordering::SeqCst)
    }

    /// What has been read so far.
    pub fn lock(&self) -> MutexGuard<'_, Observed> {
        self.data.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Events answered by `fleet` whose device's counter has no converged record yet that
    /// includes them.
    pub fn not_converged(&self, fleet: &Fleet) -> u64 {
        let o = self.lock();
        fleet
            .agents
            .iter()
            .map(|a| {
                let have = o.devices.get(&a.device).map_or(0, |d| d.max_converged);
                a.last_answered().saturating_sub(have)
            })
            .sum()
    }

    /// µs since the epoch → ticks.
    pub fn ticks(&self, us: u64) -> u32 {
        to_ticks(self.t0_us, us)
    }

    /// Stops the readers.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn to_ticks(t0_us: u64, us: u64) -> u32 {
    (us.saturating_sub(t0_us) / 10 + 1).min(u64::from(u32::MAX)) as u32
}

fn partitions(c: &BaseConsumer, topic: &str) -> Result<i32, String> {
    for _ in 0..50 {
        let md = c
            .fetch_metadata(Some(topic), Duration::from_secs(5))
            .map_err(err)?;
        let n = md.topics().first().map_or(0, |t| t.partitions().len());
        if n > 0 {
            return Ok(n as i32);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Err(format!("topic {topic} has no partitions"))
}

struct Reader {
    t0_us: u64,
    codec: Codec,
    event_fp: u64,
    full_every: u64,
    data: Arc<Mutex<Observed>>,
    unique: Arc<AtomicU64>,
}

impl Reader {
    fn run(&mut self, c: &BaseConsumer, stop: &AtomicBool) {
        while !stop.load(Ordering::SeqCst) {
            let Some(Ok(m)) = c.poll(Duration::from_millis(100)) else {
                continue;
            };
            let now = to_ticks(self.t0_us, now_us());
            let created = m
                .timestamp()
                .to_millis()
                .map_or(0, |ms| to_ticks(self.t0_us, (ms.max(0) as u64) * 1000));
            match m.topic() {
                t if t == topics::EVENTS => self.event(&m, now, created),
                t if t == topics::STATE => self.state(&m, now, created),
                _ => self.batch(&m, created),
            }
        }
    }

    fn event(&self, m: &BorrowedMessage<'_>, now: u32, created: u32) {
        let payload = m.payload().unwrap_or_default();
        let mut o = self.data.lock().unwrap_or_else(|p| p.into_inner());
        o.events_read += 1;
        o.record_bytes.0 += record_len(m);
        let fast = event_dot(payload, self.event_fp);
        let full = (fast.is_none() || o.events_read.is_multiple_of(self.full_every)).then(|| {
            self.codec.decode_event(payload).map(|e| {
                let d = e.dot;
                (
                    d.replica.device.to_string(),
                    d.replica.incarnation.get(),
                    d.seq,
                )
            })
        });
        let dot = match (fast, full) {
            (Some(f), None) => (f.0.to_owned(), f.1, f.2),
            (f, Some(Ok(d))) => {
                o.decoded += 1;
                if f.is_some_and(|f| (f.0, f.1, f.2) != (d.0.as_str(), d.1, d.2)) {
                    o.mismatched += 1;
                }
                d
            }
            (_, Some(Err(_))) | (None, None) => {
                o.undecodable += 1;
                return;
            }
        };
        let (device, incarnation, seq) = dot;
        let o = &mut *o;
        let d = o.devices.entry(device).or_default();
        if *d.incarnation.get_or_insert(incarnation) != incarnation {
            o.other_incarnation += 1;
            return;
        }
        let i = seq as usize;
        if d.events.len() <= i {
            d.events
                .resize((i + 1).max(d.events.len() * 2), Ev::default());
        }
        let e = &mut d.events[i];
        if e.read != 0 {
            o.duplicates += 1;
        } else {
            *e = Ev { read: now, created };
            self.unique.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn state(&self, m: &BorrowedMessage<'_>, now: u32, created: u32) {
        let Ok(s) = self
            .codec
            .decode_state_record(m.payload().unwrap_or_default())
        else {
            return;
        };
        let mut o = self.data.lock().unwrap_or_else(|p| p.into_inner());
        o.record_bytes.1 += record_len(m);
        if let Crdt::GCounter(g) = &s.state {
            let v = o.counters.entry(s.key.clone()).or_default();
            *v = (*v).max(g.value());
        }
        if let Some(device) = s.key.strip_suffix("/readings") {
            let own = s
                .version_vector
                .iter()
                .find(|(r, _)| r.device.as_str() == device);
            if let Some((_, seq)) = own {
                let d = o.devices.entry(device.to_owned()).or_default();
                d.converged.push(Conv {
                    seq,
                    created,
                    read: now,
                });
                d.max_converged = d.max_converged.max(seq);
            }
        }
        if !o.keys.contains(&s.key) {
            o.keys.insert(s.key);
        }
    }

    fn batch(&self, m: &BorrowedMessage<'_>, created: u32) {
        let Ok((replica, first)) = self.codec.check_batch(m.payload().unwrap_or_default()) else {
            return;
        };
        let mut o = self.data.lock().unwrap_or_else(|p| p.into_inner());
        let d = o.devices.entry(replica.device.to_string()).or_default();
        d.at_deltas.entry(first).or_insert(created);
    }
}

/// The dot of an event record in single-object framing with fingerprint `fp`, read from its
/// first three fields (`device`, `incarnation`, `seq`: event.avsc) without decoding the rest.
/// A record's key and value bytes.
fn record_len(m: &BorrowedMessage<'_>) -> u64 {
    (m.key().map_or(0, <[u8]>::len) + m.payload().map_or(0, <[u8]>::len)) as u64
}

fn event_dot(b: &[u8], fp: u64) -> Option<(&str, u64, u64)> {
    let rest = b.strip_prefix(&[0xC3, 0x01])?;
    let (f, rest) = rest.split_first_chunk::<8>()?;
    if u64::from_le_bytes(*f) != fp {
        return None;
    }
    let (len, rest) = zigzag(rest)?;
    let (device, rest) = rest.split_at_checked(usize::try_from(len).ok()?)?;
    let (incarnation, rest) = zigzag(rest)?;
    let (seq, _) = zigzag(rest)?;
    Some((
        std::str::from_utf8(device).ok()?,
        u64::try_from(incarnation).ok()?,
        u64::try_from(seq).ok()?,
    ))
}

/// An Avro long (zig-zag varint) and the bytes after it.
fn zigzag(b: &[u8]) -> Option<(i64, &[u8])> {
    let mut v = 0u64;
    for (i, byte) in b.iter().enumerate().take(10) {
        v |= u64::from(byte & 0x7F) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((((v >> 1) as i64) ^ -((v & 1) as i64), &b[i + 1..]));
        }
    }
    None
}

/// A QoS 0 subscriber to every batch topic: when each batch reached the broker's subscribers.
fn tap(
    addr: SocketAddr,
    t0_us: u64,
    data: Arc<Mutex<Observed>>,
    stop: Arc<AtomicBool>,
) -> Result<JoinHandle<()>, String> {
    let mut opts = MqttOptions::new(unique("tap"), addr.ip().to_string(), addr.port());
    opts.set_keep_alive(Duration::from_secs(5));
    opts.set_max_packet_size(16 << 20, 1 << 20);
    let (client, mut conn) = Client::new(opts, 64);
    client
        .subscribe(edgesync_schemas::topics::BATCH_FILTER, QoS::AtMostOnce)
        .map_err(err)?;
    let codec = Codec::new(Limits::default()).map_err(err)?;
    std::thread::Builder::new()
        .name("mqtt-tap".into())
        .spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let Ok(ev) = conn.recv_timeout(Duration::from_millis(100)) else {
                    continue;
                };
                let Ok(Event::Incoming(Packet::Publish(p))) = ev else {
                    continue;
                };
                let now = to_ticks(t0_us, now_us());
                if let Ok((replica, first)) = codec.check_batch(&p.payload) {
                    let mut o = data.lock().unwrap_or_else(|p| p.into_inner());
                    let d = o.devices.entry(replica.device.to_string()).or_default();
                    d.at_broker.entry(first).or_insert(now);
                }
            }
            let _ = client.disconnect();
        })
        .map_err(err)
}

/// Latencies of a selection of answered events, µs, each list sorted.
#[derive(Debug, Default)]
pub struct Latencies {
    /// Append (request sent) → the event read from `edgesync.events`.
    pub to_event: Vec<u64>,
    /// Append (request sent) → the first converged record of the device's counter that
    /// includes the event, read from `edgesync.state`.
    pub to_converged: Vec<u64>,
    /// Where the time goes: each stage's name and its samples (events whose both ends are
    /// known).
    pub stages: Vec<(&'static str, Vec<u64>)>,
    /// Events selected.
    pub events: u64,
    /// Of which not read from the events topic.
    pub missing: u64,
}

/// The stages of an event's way, in order (see [`Observed::latencies`]).
pub const STAGES: [&str; 8] = [
    "append: request sent → durable answer (agent ingest, group commit, fsync)",
    "agent: durable answer → batch at the MQTT broker's subscribers (batching, send window, publish)",
    "bridge: batch at the broker → produced to edgesync.deltas (receive, validate)",
    "Kafka hop + device stage: produced to edgesync.deltas → event record produced",
    "Kafka hop: event record produced → read from edgesync.events",
    "Kafka hop + key stage: event record produced → converged record produced",
    "Kafka hop: converged record produced → read from edgesync.state",
    "agent + MQTT + bridge: durable answer → produced to edgesync.deltas (without the MQTT tap)",
];

/// The stages as components, for naming where the time goes.
pub const STAGE_OWNERS: [&str; 8] = [
    "the agents' ingest (append)",
    "the agents' uplink",
    "the bridge",
    "the reconciler's device stage (with its input's Kafka hop)",
    "the events topic's Kafka hop",
    "the reconciler's key stage (with its input's Kafka hop)",
    "the state topic's Kafka hop",
    "the agents' uplink, MQTT and the bridge",
];

impl Observed {
    /// Latencies of every answered event of `answers` whose request `select` takes (warm-up
    /// events left out), against the observer's clock `ticks` (µs since the epoch → ticks).
    pub fn latencies(
        &self,
        answers: &Answers,
        fleet: &Fleet,
        ticks: impl Fn(u64) -> u32,
        select: impl Fn(&Request) -> bool,
    ) -> Latencies {
        let mut l = Latencies {
            stages: STAGES.iter().map(|s| (*s, Vec::new())).collect(),
            ..Latencies::default()
        };
        let us = |from: u32, to: u32| -> Option<u64> {
            (from != 0 && to != 0).then(|| u64::from(to.saturating_sub(from)) * 10)
        };
        for (device, reqs) in answers {
            let Some(d) = self.devices.get(device) else {
                l.missing += reqs
                    .iter()
                    .filter(|r| select(r))
                    .map(Request::len)
                    .sum::<u64>();
                continue;
            };
            let conv = best_converged(&d.converged);
            for r in reqs.iter().filter(|r| select(r)) {
                let (sent, answered) = (ticks(r.sent_us), ticks(r.answered_us));
                for seq in r.first..=r.last {
                    if fleet.is_warm(device, seq) {
                        continue;
                    }
                    l.events += 1;
                    let e = d.events.get(seq as usize).copied().unwrap_or_default();
                    let Some(total) = us(sent, e.read) else {
                        l.missing += 1;
                        continue;
                    };
                    l.to_event.push(total);
                    let broker = before(&d.at_broker, seq);
                    let deltas = before(&d.at_deltas, seq);
                    let c = conv(seq);
                    let s = &mut l.stages;
                    let mut push = |i: usize, v: Option<u64>| {
                        if let Some(v) = v {
                            s[i].1.push(v);
                        }
                    };
                    push(0, us(sent, answered));
                    if broker == 0 {
                        push(7, us(answered, deltas));
                    }
                    push(1, us(answered, broker));
                    push(2, us(broker, deltas));
                    push(3, us(deltas, e.created));
                    push(4, us(e.created, e.read));
                    if let Some(c) = c {
                        push(5, us(e.created, c.created));
                        push(6, us(c.created, c.read));
                        if let Some(v) = us(sent, c.read) {
                            l.to_converged.push(v);
                        }
                    }
                }
            }
        }
        l.to_event.sort_unstable();
        l.to_converged.sort_unstable();
        for (_, v) in &mut l.stages {
            v.sort_unstable();
        }
        l
    }

    /// How many answered events were found, over `answers`.
    pub fn delivered(&self, answers: &Answers) -> u64 {
        answers
            .iter()
            .map(|(device, reqs)| {
                let Some(d) = self.devices.get(device) else {
                    return 0;
                };
                reqs.iter()
                    .flat_map(|r| r.first..=r.last)
                    .filter(|s| d.events.get(*s as usize).is_some_and(|e| e.read != 0))
                    .count() as u64
            })
            .sum()
    }

    /// Whether the converged counters equal what the answers add up to: each device's
    /// readings counter its number of answered events, the fleet's their total.
    pub fn counters_match(&self, answers: &Answers) -> bool {
        let count = |reqs: &Vec<Request>| reqs.iter().map(Request::len).sum::<u64>();
        let mut expect: BTreeMap<String, u128> = answers
            .iter()
            .map(|(d, reqs)| (format!("{d}/readings"), u128::from(count(reqs))))
            .collect();
        let total: u64 = answers.values().map(count).sum();
        expect.insert("fleet/readings".into(), u128::from(total));
        expect.iter().all(|(k, v)| self.counters.get(k) == Some(v))
    }

    /// Events read between ticks `from` and `to`.
    pub fn read_between(&self, from: u32, to: u32) -> u64 {
        self.devices
            .values()
            .flat_map(|d| d.events.iter())
            .filter(|e| e.read >= from && e.read < to)
            .count() as u64
    }
}

/// The value of the entry with the greatest key ≤ `seq` (the batch that holds it), 0 if none.
fn before(m: &BTreeMap<u64, u32>, seq: u64) -> u32 {
    m.range(..=seq).next_back().map_or(0, |(_, t)| *t)
}

/// For a device's converged records: seq → the record read first among those that include
/// it.
fn best_converged(recs: &[Conv]) -> impl Fn(u64) -> Option<Conv> + '_ {
    let mut sorted: Vec<Conv> = recs.to_vec();
    sorted.sort_unstable_by_key(|c| c.seq);
    let mut best: Vec<Conv> = sorted.clone();
    for i in (0..best.len().saturating_sub(1)).rev() {
        if best[i + 1].read < best[i].read {
            best[i] = Conv {
                seq: best[i].seq,
                ..best[i + 1]
            };
        }
    }
    move |seq| {
        let i = sorted.partition_point(|c| c.seq < seq);
        best.get(i).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dot_is_read_from_the_first_fields() {
        use edgesync_core::{DeviceId, Dot, Event, Hlc, Incarnation, ReplicaId};
        let codec = Codec::new(Limits::default()).unwrap();
        let replica = ReplicaId::new(
            DeviceId::new("pump-0007").unwrap(),
            Incarnation::new(1 << 40).unwrap(),
        );
        let e = Event {
            dot: Dot::new(replica, 123_456),
            hlc: Hlc::new(1_700_000_000_000, 3),
            stream: "pump.telemetry".into(),
            schema_version: 1,
            fields: BTreeMap::new(),
            tags: BTreeMap::new(),
        };
        let b = codec
            .encode_event(&e, edgesync_schemas::Framing::SingleObject)
            .unwrap();
        let fp = codec.fingerprint(MessageKind::Event);
        assert_eq!(event_dot(&b, fp), Some(("pump-0007", 1 << 40, 123_456)));
        assert_eq!(event_dot(&b, fp ^ 1), None);
        assert_eq!(event_dot(&b[..12], fp), None);
    }

    #[test]
    fn the_first_record_read_that_includes_a_seq_is_chosen() {
        let c = |seq, read| Conv {
            seq,
            created: read,
            read,
        };
        let recs = [c(10, 50), c(5, 40), c(20, 45), c(30, 60)];
        let f = best_converged(&recs);
        assert_eq!(f(3).map(|c| c.read), Some(40));
        assert_eq!(f(6).map(|c| c.read), Some(45));
        assert_eq!(f(21).map(|c| c.read), Some(60));
        assert!(f(31).is_none());
    }
}

//! What the output topics say about a run, read back like an outside consumer would (by
//! their default names): every event in `edgesync.events` (by dot: once, or a duplicate) with its latency from the agent's
//! answer to the record's timestamp, and every converged record in `edgesync.state` (the
//! latest counter values, and per device when its own counter first included each seq).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use edgesync_core::Crdt;
use edgesync_schemas::topics::kafka as topics;
use edgesync_schemas::Codec;
use edgesync_testkit::{unique, Kafka};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::BorrowedMessage;
use rdkafka::Message;

use crate::err;
use crate::fleet::{Answers, Fleet};

/// The output topics, as read.
#[derive(Debug, Default)]
pub struct Observed {
    /// Per device, the seqs found in the events topic.
    seen: BTreeMap<String, BTreeSet<u64>>,
    /// Events found more than once.
    pub duplicates: u64,
    /// Agent answer → event record, ms, sorted (warm-up events left out).
    pub to_event: Vec<u64>,
    /// The latest value of every G-counter key.
    pub counters: BTreeMap<String, u128>,
    /// Every key with a converged record.
    pub keys: BTreeSet<String>,
    /// Per device, its own counter's records: (the device's seq they include, when).
    converged: BTreeMap<String, Vec<(u64, u64)>>,
    events_read: usize,
}

/// Reads both output topics from the start until they are quiet (3 s without a record, up to
/// 30 s while fewer events than `fleet` answered have arrived).
pub fn read(
    k: &Kafka,
    codec: &Codec,
    fleet: &Fleet,
    answers: &Answers,
) -> Result<Observed, String> {
    let c: BaseConsumer = k
        .client_config()
        .set("group.id", unique("report"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .map_err(err)?;
    c.subscribe(&[topics::EVENTS, topics::STATE]).map_err(err)?;
    let total: usize = answers.values().map(BTreeMap::len).sum();
    let mut o = Observed::default();
    let mut idle = Instant::now();
    while idle.elapsed() < Duration::from_secs(3)
        || o.events_read < total && idle.elapsed() < Duration::from_secs(30)
    {
        let Some(Ok(msg)) = c.poll(Duration::from_millis(200)) else {
            continue;
        };
        idle = Instant::now();
        if msg.topic() == topics::EVENTS {
            o.event(codec, &msg, fleet, answers);
        } else {
            o.state(codec, &msg);
        }
    }
    o.to_event.sort_unstable();
    Ok(o)
}

impl Observed {
    fn event(
        &mut self,
        codec: &Codec,
        msg: &BorrowedMessage<'_>,
        fleet: &Fleet,
        answers: &Answers,
    ) {
        self.events_read += 1;
        let Ok(ev) = codec.decode_event(msg.payload().unwrap_or_default()) else {
            return;
        };
        let device = ev.dot.replica.device.to_string();
        if !self
            .seen
            .entry(device.clone())
            .or_default()
            .insert(ev.dot.seq)
        {
            self.duplicates += 1;
        }
        let at = answers.get(&device).and_then(|a| a.get(&ev.dot.seq));
        if let (Some(at), Some(ts)) = (at, msg.timestamp().to_millis()) {
            if !fleet.is_warm(&device, ev.dot.seq) {
                self.to_event.push((ts as u64).saturating_sub(*at));
            }
        }
    }

    fn state(&mut self, codec: &Codec, msg: &BorrowedMessage<'_>) {
        let Ok(s) = codec.decode_state_record(msg.payload().unwrap_or_default()) else {
            return;
        };
        self.keys.insert(s.key.clone());
        if let (Some(device), Some(ts)) =
            (s.key.strip_suffix("/readings"), msg.timestamp().to_millis())
        {
            let own = s
                .version_vector
                .iter()
                .find(|(r, _)| r.device.as_str() == device);
            if let Some((_, seq)) = own {
                self.converged
                    .entry(device.to_owned())
                    .or_default()
                    .push((seq, ts as u64));
            }
        }
        if let Crdt::GCounter(g) = &s.state {
            self.counters.insert(s.key.clone(), g.value());
        }
    }

    /// How many answered events were found.
    pub fn delivered(&self, answers: &Answers) -> usize {
        answers
            .iter()
            .map(|(d, a)| {
                let seen = self.seen.get(d);
                a.keys()
                    .filter(|s| seen.is_some_and(|x| x.contains(s)))
                    .count()
            })
            .sum()
    }

    /// Whether the converged counters equal what the answers add up to: each device's
    /// readings counter its number of answered events, the fleet's their total.
    pub fn counters_match(&self, answers: &Answers) -> bool {
        let mut expect: BTreeMap<String, u128> = answers
            .iter()
            .map(|(d, a)| (format!("{d}/readings"), a.len() as u128))
            .collect();
        let total: usize = answers.values().map(BTreeMap::len).sum();
        expect.insert("fleet/readings".into(), total as u128);
        expect.iter().all(|(k, v)| self.counters.get(k) == Some(v))
    }

    /// Agent answer → the first converged record of the device's counter that includes the
    /// event, ms, sorted (warm-up events left out).
    pub fn converged_latencies(&mut self, fleet: &Fleet, answers: &Answers) -> Vec<u64> {
        let mut out = Vec::new();
        for (device, recs) in &mut self.converged {
            recs.sort_unstable();
            for (seq, at) in answers.get(device).into_iter().flatten() {
                if fleet.is_warm(device, *seq) {
                    continue;
                }
                let i = recs.partition_point(|(s, _)| s < seq);
                if let Some((_, ts)) = recs.get(i) {
                    out.push(ts.saturating_sub(*at));
                }
            }
        }
        out.sort_unstable();
        out
    }
}

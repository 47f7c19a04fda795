//! The history check after a run: what the agents answered, what they hold, what the
//! reconcilers' ledgers account for and what the output topics contain, per device.
//!
//! For each device, with `L` its agent's last seq and `D` the events the server's ledger
//! counts as dropped at the edge (a quota or age policy):
//! - the events in `edgesync.events` have strictly increasing seqs within `1..=L` (a repeat is
//!   *doubled*, a step back *out of order*) and distinct payload indices that the feeder sent
//!   (any other is *never appended*);
//! - the seqs in `1..=L` absent from the events number exactly `D`: more is *lost* (nothing
//!   accounts for them), fewer means the ledger counts drops that did not happen;
//! - every answered seq absent from the events is one of those `D` (a drop-oldest policy
//!   dropped it after answering) — so an agent on another policy must have none;
//! - the ledger has no missing ranges; the agent is acknowledged up to `L` with an empty spool;
//! - the device's converged counter equals its events in the topic, and the fleet counter their
//!   sum, unless the device dropped events at the edge (its increments then live on in the
//!   agent's state, which the server converges to: the digests below still hold);
//! - the agent's state digest equals its converged record's (edge and server agree);
//! - the dead-letter topic holds exactly the bad input the run fed (none for the nemesis),
//!   each with its reason and a detail, and the outside reader (confluent-kafka,
//!   `read_committed`) sees the same events.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use edgesync_core::Value;
use edgesync_schemas::topics::kafka as topics;
use edgesync_schemas::{Codec, DeadLetterReason, Limits};
use edgesync_testkit::{read_outputs, Record};

use super::feed::Tally;
use super::rig::Rig;
use super::CONVERGE_TIMEOUT;
use crate::status;

/// One device's figures.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeviceHistory {
    /// Events answered 200.
    pub answered: u64,
    /// Events in `edgesync.events`.
    pub delivered: u64,
    /// Answered or appended seqs missing without a policy drop to account for them.
    pub lost: u64,
    /// Records of a seq or payload seen before.
    pub doubled: u64,
    /// Records whose payload the feeder never sent.
    pub never_appended: u64,
    /// Seqs the server's ledger counts as dropped at the edge.
    pub dropped_at_edge: u64,
    /// Events answered 202 (drop-newest) and 503 (block: refused, kept by the sender).
    pub dropped_newest: u64,
    /// See [`DeviceHistory::dropped_newest`].
    pub refused_full: u64,
    /// Events whose request got no answer.
    pub unknown: u64,
    /// The agent's own count of seqs dropped oldest-first over quota (in memory: since its
    /// last start), beside the server's durable count.
    pub agent_dropped_oldest: u64,
}

/// What the check found: per device, and every broken promise in words.
#[derive(Clone, Debug, Default)]
pub struct History {
    /// Per device id.
    pub devices: BTreeMap<String, DeviceHistory>,
    /// Broken promises.
    pub problems: Vec<String>,
    /// From the drain to converged state equal to the events and the agents' digests.
    pub state_after: Option<Duration>,
}

/// One device's records in the events topic: (seq, payload index) in topic order.
type Delivered = BTreeMap<String, Vec<(u64, u64)>>;

/// A dead letter a run expects because it fed the bad input: the record's source starts with
/// `source` (`mqtt:<topic>`, or `kafka:<topic>/` for any partition and offset), its reason is
/// `reason` and it carries `payload`, the bytes as fed.
#[derive(Clone, Debug)]
pub struct ExpectedDeadLetter {
    /// Prefix of the dead letter's source.
    pub source: String,
    /// Why.
    pub reason: DeadLetterReason,
    /// The bad input.
    pub payload: Vec<u8>,
}

/// Checks `rig` after its agents drained; `tallies` are the feeders' in device order, `dead`
/// the dead letters the run's bad input must have caused (and nothing else).
pub fn check(rig: &mut Rig, tallies: &[Tally], dead: &[ExpectedDeadLetter]) -> History {
    let codec = Codec::new(Limits::default()).unwrap();
    let mut h = History::default();
    let ledger = ledgers(rig);
    let statuses: Vec<serde_json::Value> = rig.agents.iter().map(status).collect();
    let expected: u64 = rig
        .devices
        .iter()
        .zip(&statuses)
        .map(|(d, s)| {
            let dropped = ledger.get(d).map_or(0, |l| l.dropped);
            s["last_seq"].as_u64().unwrap_or(0).saturating_sub(dropped)
        })
        .sum();
    let delivered = read_events(rig, &codec, expected, &mut h.problems);
    for (i, d) in rig.devices.iter().enumerate() {
        let dh = device(
            d,
            &statuses[i],
            &tallies[i],
            ledger.get(d),
            delivered.get(d),
            &mut h.problems,
        );
        h.devices.insert(d.clone(), dh);
    }
    let unknown: Vec<_> = delivered
        .keys()
        .filter(|d| !rig.devices.contains(d))
        .collect();
    if !unknown.is_empty() {
        h.problems
            .push(format!("events of unknown devices: {unknown:?}"));
    }
    h.state_after = check_state(rig, &codec, &statuses, &h.devices, &mut h.problems);
    check_dead_letters(rig, &codec, dead, &mut h.problems);
    check_outside_reader(rig, &delivered, &mut h.problems);
    h
}

/// A device's entry in a reconciler's ledger.
#[derive(Clone, Debug, Default)]
struct LedgerEntry {
    watermark: u64,
    missing: Vec<serde_json::Value>,
    dropped: u64,
}

/// Every device's ledger entry, from whichever reconciler is furthest along for it (after a
/// rebalance, the former owner keeps an older entry).
fn ledgers(rig: &Rig) -> BTreeMap<String, LedgerEntry> {
    let mut out: BTreeMap<String, LedgerEntry> = BTreeMap::new();
    for r in &rig.reconcilers {
        let Ok((200, body)) = r.get("/v1/status") else {
            continue;
        };
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        let devices = v["devices"].as_array().cloned().unwrap_or_default();
        for e in devices {
            let Some(d) = e["device"].as_str() else {
                continue;
            };
            let entry = LedgerEntry {
                watermark: e["watermark"].as_u64().unwrap_or(0),
                missing: e["missing"].as_array().cloned().unwrap_or_default(),
                dropped: e["dropped_at_edge"].as_u64().unwrap_or(0),
            };
            let cur = out.entry(d.to_owned()).or_default();
            if entry.watermark >= cur.watermark {
                *cur = entry;
            }
        }
    }
    out
}

fn read_events(rig: &Rig, codec: &Codec, expected: u64, problems: &mut Vec<String>) -> Delivered {
    let recs = rig
        .kafka
        .read_topic(topics::EVENTS, Duration::from_secs(120), |r| {
            r.len() as u64 >= expected
        })
        .unwrap_or_else(|e| {
            problems.push(format!("reading {}: {e}", topics::EVENTS));
            Vec::new()
        });
    let mut out = Delivered::new();
    for Record { payload, .. } in &recs {
        match codec.decode_event(payload) {
            Ok(e) => {
                let i = match e.fields.get("i") {
                    Some(Value::Long(i)) => u64::try_from(*i).unwrap_or(u64::MAX),
                    _ => u64::MAX,
                };
                out.entry(e.dot.replica.device.to_string())
                    .or_default()
                    .push((e.dot.seq, i));
            }
            Err(err) => problems.push(format!("undecodable event record: {err}")),
        }
    }
    out
}

fn device(
    d: &str,
    st: &serde_json::Value,
    tally: &Tally,
    ledger: Option<&LedgerEntry>,
    delivered: Option<&Vec<(u64, u64)>>,
    problems: &mut Vec<String>,
) -> DeviceHistory {
    let last = st["last_seq"].as_u64().unwrap_or(0);
    let empty = Vec::new();
    let recs = delivered.unwrap_or(&empty);
    let mut h = DeviceHistory {
        answered: tally.answered.len() as u64,
        delivered: recs.len() as u64,
        dropped_at_edge: ledger.map_or(0, |l| l.dropped),
        dropped_newest: tally.dropped_newest,
        refused_full: tally.refused_full,
        unknown: tally.unknown,
        agent_dropped_oldest: st["dropped"]["quota_oldest"].as_u64().unwrap_or(0),
        ..DeviceHistory::default()
    };
    let (mut seqs, mut payloads) = (BTreeSet::new(), BTreeSet::new());
    let mut prev = 0;
    for &(seq, i) in recs {
        if !seqs.insert(seq) || !payloads.insert(i) {
            h.doubled += 1;
        } else if seq <= prev {
            problems.push(format!("{d}: seq {seq} after {prev}: out of order"));
        }
        if i >= tally.sent || seq == 0 || seq > last {
            h.never_appended += 1;
        }
        prev = prev.max(seq);
    }
    let absent = last.saturating_sub(seqs.range(1..=last).count() as u64);
    h.lost = absent.saturating_sub(h.dropped_at_edge);
    if absent < h.dropped_at_edge {
        problems.push(format!(
            "{d}: the ledger counts {} dropped at the edge, {absent} seqs are absent",
            h.dropped_at_edge
        ));
    }
    let answered_absent = tally.answered.iter().filter(|s| !seqs.contains(s)).count() as u64;
    if answered_absent > h.dropped_at_edge {
        h.lost = h.lost.max(answered_absent - h.dropped_at_edge);
    }
    if tally.answered.last().is_some_and(|&a| a > last) {
        problems.push(format!(
            "{d}: answered seqs beyond the agent's last seq {last}"
        ));
    }
    if let Some(l) = ledger.filter(|l| !l.missing.is_empty()) {
        problems.push(format!("{d}: ledger missing ranges {:?}", l.missing));
    }
    if st["acked_watermark"].as_u64() != Some(last) || st["spool_events"] != 0 {
        problems.push(format!("{d}: not drained: {st}"));
    }
    if !tally.unexpected.is_empty() {
        problems.push(format!("{d}: unexpected answers: {:?}", tally.unexpected));
    }
    for (what, n) in [
        ("lost", h.lost),
        ("doubled", h.doubled),
        ("never appended", h.never_appended),
    ] {
        if n > 0 {
            problems.push(format!("{d}: {n} events {what}"));
        }
    }
    h
}

/// The latest state record per key, kept as records arrive (the state topic of a long run
/// holds hundreds of thousands of records: decoding them all again per record would never end).
#[derive(Default)]
struct Latest {
    seen: usize,
    by_key: BTreeMap<String, Vec<u8>>,
}

impl Latest {
    /// Takes the records after the ones seen; true if some were new.
    fn take(&mut self, records: &[Record]) -> bool {
        for r in &records[self.seen..] {
            self.by_key.insert(r.key.clone(), r.payload.clone());
        }
        let fresh = records.len() > self.seen;
        self.seen = records.len();
        fresh
    }

    fn counter(&self, codec: &Codec, key: &str) -> Option<u128> {
        crate::g_counter(codec, self.by_key.get(key)?)
    }

    fn digest(&self, codec: &Codec, key: &str) -> Option<String> {
        let rec = codec.decode_state_record(self.by_key.get(key)?).ok()?;
        Some(rec.digest().to_hex())
    }
}

/// Converged state against the events (devices without edge drops) and against every agent's
/// digest, waiting up to [`CONVERGE_TIMEOUT`] for the key stage; returns how long it took.
fn check_state(
    rig: &Rig,
    codec: &Codec,
    statuses: &[serde_json::Value],
    devices: &BTreeMap<String, DeviceHistory>,
    problems: &mut Vec<String>,
) -> Option<Duration> {
    let exact = |d: &str| devices[d].dropped_at_edge == 0;
    let mut expect: BTreeMap<String, u128> = devices
        .iter()
        .filter(|(d, _)| exact(d))
        .map(|(d, h)| (format!("{d}/readings"), u128::from(h.delivered)))
        .collect();
    if devices.keys().all(|d| exact(d)) {
        let total: u64 = devices.values().map(|h| h.delivered).sum();
        expect.insert("fleet/readings".into(), u128::from(total));
    }
    let digests: BTreeMap<String, Option<String>> = rig
        .devices
        .iter()
        .zip(statuses)
        .map(|(d, st)| {
            let key = format!("{d}/readings");
            let digest = st["state_digests"][&key].as_str().map(str::to_owned);
            (key, digest)
        })
        .collect();
    let holds = |l: &Latest| {
        expect.iter().all(|(k, v)| l.counter(codec, k) == Some(*v))
            && digests.iter().all(|(k, d)| l.digest(codec, k) == *d)
    };
    let latest = std::cell::RefCell::new(Latest::default());
    let started = Instant::now();
    let matched = std::cell::Cell::new(None);
    let done = |r: &[Record]| {
        let mut l = latest.borrow_mut();
        // Judged when a poll brought nothing new (caught up) or every 10,000 records.
        let fresh = l.take(r);
        let judge = !fresh || r.len().is_multiple_of(10_000);
        let ok = judge && holds(&l);
        if ok {
            matched.set(Some(started.elapsed()));
        }
        ok
    };
    if let Err(e) = rig.kafka.read_topic(topics::STATE, CONVERGE_TIMEOUT, done) {
        problems.push(format!("reading {}: {e}", topics::STATE));
    }
    let l = latest.into_inner();
    for (k, v) in &expect {
        let got = l.counter(codec, k);
        if got != Some(*v) {
            problems.push(format!("{k}: converged {got:?}, events say {v}"));
        }
    }
    for (k, d) in &digests {
        if l.digest(codec, k) != *d {
            problems.push(format!("{k}: edge and server digests differ"));
        }
    }
    matched.get()
}

/// Every dead letter matches one expected (source, reason, bytes) and every expected one is there.
fn check_dead_letters(
    rig: &Rig,
    codec: &Codec,
    expected: &[ExpectedDeadLetter],
    problems: &mut Vec<String>,
) {
    let records = match rig
        .kafka
        .read_topic(topics::DLQ, Duration::from_secs(10), |_| false)
    {
        Ok(r) => r,
        Err(e) => return problems.push(format!("reading {}: {e}", topics::DLQ)),
    };
    let mut left: Vec<&ExpectedDeadLetter> = expected.iter().collect();
    for r in &records {
        let d = match codec.decode_dead_letter(&r.payload) {
            Ok(d) => d,
            Err(e) => {
                problems.push(format!("an undecodable dead letter: {e}"));
                continue;
            }
        };
        let found = left.iter().position(|x| {
            d.source.starts_with(&x.source) && d.reason == x.reason && d.payload == x.payload
        });
        match found {
            Some(i) if !d.detail.is_empty() => {
                left.swap_remove(i);
            }
            Some(_) => problems.push(format!("dead letter from {} has no detail", d.source)),
            None => problems.push(format!(
                "unexpected dead letter from {}: {:?} ({})",
                d.source, d.reason, d.detail
            )),
        }
    }
    for x in left {
        problems.push(format!(
            "no {:?} dead letter from {} ({} bytes)",
            x.reason,
            x.source,
            x.payload.len()
        ));
    }
}

fn check_outside_reader(rig: &Rig, delivered: &Delivered, problems: &mut Vec<String>) {
    let total = delivered.values().map(Vec::len).sum();
    let read = match read_outputs(&rig.kafka.bootstrap(), total, "read_committed") {
        Ok(r) => r,
        Err(e) => return problems.push(format!("outside reader: {e}")),
    };
    for (d, recs) in delivered {
        let want: Vec<u64> = recs.iter().map(|&(s, _)| s).collect();
        if read["events"][d] != serde_json::json!(want) {
            problems.push(format!("{d}: the outside reader sees other events"));
        }
    }
}

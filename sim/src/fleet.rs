//! The trace: what each device generates, when its link is up, when it crashes, when the
//! server restarts. Each is drawn from its own random stream, so both approaches replay exactly
//! the same trace whatever they do with the network.

use std::collections::BTreeMap;

use edgesync_core::crdt::{
    GCounter, LwwRegister, MaxRegister, MvRegister, OrSet, PnCounter, RollupMap,
};
use edgesync_core::{Crdt, DeviceId, Dot, Event, Hlc, HlcClock, Incarnation, ReplicaId, Value};

use crate::config::SimConfig;
use crate::rng::Rng;

/// Random-stream purposes.
pub(crate) mod purpose {
    pub const GEN: u64 = 1;
    pub const LINK: u64 = 2;
    pub const CRASH: u64 = 3;
    pub const SERVER: u64 = 4;
    pub const NET_EDGESYNC: u64 = 5;
    pub const NET_BASELINE: u64 = 6;
    pub const BACKOFF: u64 = 7;
}

/// Milliseconds.
pub type Ms = u64;

pub(crate) fn ms(seconds: f64) -> Ms {
    (seconds * 1000.0).max(0.0) as Ms
}

/// One state update an event makes, on the key it names.
#[derive(Clone, Debug)]
pub enum Op<'a> {
    /// G-counter +1.
    Count(&'a str),
    /// Max register.
    Max(&'a str, f64),
    /// Rollup sample in a bucket.
    Rollup(&'a str, Ms, f64),
    /// LWW register write.
    Lww(&'a str, Value),
    /// MV register write.
    Mv(&'a str, Value),
    /// OR-set add.
    Add(&'a str, Value),
    /// OR-set remove.
    Remove(&'a str, Value),
    /// PN-counter change.
    Pn(&'a str, i64),
}

/// A generated event before it gets a seq (its keys borrowed from the generator).
#[derive(Clone, Debug)]
pub struct Reading<'a> {
    /// True (virtual) time of the event.
    pub at: Ms,
    /// Stream name.
    pub stream: &'static str,
    /// Fields.
    pub fields: BTreeMap<String, Value>,
    /// State updates.
    pub ops: Vec<Op<'a>>,
}

/// The state keys a device writes, named once (not formatted per event).
#[derive(Debug)]
struct Keys {
    alarms: String,
    firmware: String,
    mode: String,
    pressure_max: String,
    pressure_1h: String,
    alarm_elem: String,
    readings: String,
    active_alarms: String,
}

impl Keys {
    fn new(device: &str, site: usize) -> Self {
        let site = format!("site-{site:04}");
        Self {
            alarms: format!("{site}/alarms"),
            firmware: format!("{site}/firmware"),
            mode: format!("{device}/mode"),
            pressure_max: format!("{site}/pressure.max"),
            pressure_1h: format!("{site}/pressure.1h"),
            alarm_elem: format!("{device}:overpressure"),
            readings: "fleet/readings".to_owned(),
            active_alarms: "fleet/active_alarms".to_owned(),
        }
    }
}

/// A device's event generator.
#[derive(Debug)]
pub struct DeviceGen {
    rng: Rng,
    keys: Keys,
    interval_ms: f64,
    status_every: u64,
    alarm_p: f64,
    alarm_mean_ms: f64,
    ticks: u64,
    alarm: Option<(Ms, Value)>,
    /// Whether events carry their field values (not in protocol-only runs).
    fields: bool,
    /// When the next event is due.
    pub next_at: Ms,
}

impl DeviceGen {
    /// The generator of device `idx`.
    pub fn new(cfg: &SimConfig, idx: usize) -> Self {
        let mut rng = Rng::stream(cfg.seed, purpose::GEN, idx as u64);
        let interval_ms = cfg.fleet.event_interval_s * 1000.0;
        let first = (rng.unit() * interval_ms) as Ms;
        Self {
            rng,
            keys: Keys::new(&device_name(idx), idx / cfg.fleet.devices_per_site.max(1)),
            interval_ms,
            status_every: cfg.fleet.status_every.max(1),
            alarm_p: cfg.fleet.alarm_probability,
            alarm_mean_ms: cfg.fleet.alarm_mean_s * 1000.0,
            ticks: 0,
            alarm: None,
            fields: cfg.protocol_only.is_none(),
            next_at: first,
        }
    }

    /// Produces the event due at `next_at` and schedules the next one. `alive` is false while
    /// the device is crashed: the tick passes without an event (the same in every approach).
    pub fn tick(&mut self, alive: bool) -> Option<Reading<'_>> {
        let at = self.next_at;
        self.next_at = at + (self.interval_ms * self.rng.between(0.9, 1.1)) as Ms;
        self.ticks += 1;
        // Draw every random number whether or not the device is alive, so that a crash does not
        // shift the rest of the device's trace.
        let p = 100.0 + 20.0 * self.rng.unit() + if self.alarm.is_some() { 40.0 } else { 0.0 };
        let flow = 10.0 + 5.0 * self.rng.unit();
        let rpm = 1400 + self.rng.below(100) as i64;
        let raise = self.rng.chance(self.alarm_p);
        let alarm_len = self.rng.exp(self.alarm_mean_ms) as Ms;
        let mode = ["auto", "manual", "eco"][self.rng.below(3) as usize];
        let fw = ["1.4.2", "1.4.3", "1.5.0"][self.rng.below(3) as usize];
        if !alive {
            return None;
        }
        let k = &self.keys;
        let mut fields = BTreeMap::new();
        let with_fields = self.fields;
        let field = |fields: &mut BTreeMap<String, Value>, name: &str, v: Value| {
            if with_fields {
                fields.insert(name.to_owned(), v);
            }
        };
        let mut ops = Vec::new();
        let stream;
        if let Some((_, elem)) = self.alarm.clone().filter(|(clear_at, _)| at >= *clear_at) {
            stream = "pump.alarm";
            field(&mut fields, "code", Value::from("overpressure"));
            field(&mut fields, "active", Value::Bool(false));
            ops.push(Op::Remove(&k.alarms, elem));
            ops.push(Op::Pn(&k.active_alarms, -1));
            self.alarm = None;
        } else if self.ticks.is_multiple_of(self.status_every) {
            stream = "pump.status";
            field(&mut fields, "mode", Value::from(mode));
            field(&mut fields, "firmware", Value::from(fw));
            ops.push(Op::Lww(&k.mode, Value::from(mode)));
            ops.push(Op::Mv(&k.firmware, Value::from(fw)));
        } else if raise && self.alarm.is_none() {
            stream = "pump.alarm";
            let elem = Value::from(k.alarm_elem.as_str());
            field(&mut fields, "code", Value::from("overpressure"));
            field(&mut fields, "active", Value::Bool(true));
            ops.push(Op::Add(&k.alarms, elem.clone()));
            ops.push(Op::Pn(&k.active_alarms, 1));
            self.alarm = Some((at + alarm_len, elem));
        } else {
            stream = "pump.telemetry";
            field(&mut fields, "pressure_kpa", Value::Double(p));
            field(&mut fields, "flow_lpm", Value::Double(flow));
            field(&mut fields, "rpm", Value::Long(rpm));
            field(&mut fields, "running", Value::Bool(true));
            ops.push(Op::Count(&k.readings));
            ops.push(Op::Max(&k.pressure_max, p));
            ops.push(Op::Rollup(&k.pressure_1h, at / 3_600_000 * 3_600_000, p));
        }
        Some(Reading {
            at,
            stream,
            fields,
            ops,
        })
    }
}

/// Name of device `idx`.
pub fn device_name(idx: usize) -> String {
    format!("pump-{idx:05}")
}

/// The replica of device `idx` (one incarnation: crashes keep the spool).
pub fn replica_of(seed: u64, idx: usize) -> ReplicaId {
    let device = DeviceId::new(&device_name(idx)).unwrap_or_else(|_| unreachable!());
    let bits = Rng::stream(seed, 99, idx as u64).next_u64();
    ReplicaId::new(device, Incarnation::from_random_bits(bits))
}

/// A device's durable application state: its CRDTs, its clock and its next seq.
#[derive(Debug)]
pub struct DeviceState {
    /// The replica.
    pub replica: ReplicaId,
    clock: HlcClock,
    skew_ms: i64,
    crdts: BTreeMap<String, Crdt>,
    /// Last seq assigned.
    pub last_seq: u64,
}

impl DeviceState {
    /// State of device `idx` at first boot.
    pub fn new(cfg: &SimConfig, idx: usize) -> Self {
        let mut r = Rng::stream(cfg.seed, purpose::GEN, 1_000_000 + idx as u64);
        let max = cfg.fleet.clock_skew_ms as f64;
        Self {
            replica: replica_of(cfg.seed, idx),
            clock: HlcClock::new(u64::MAX),
            skew_ms: r.between(-max, max) as i64,
            crdts: BTreeMap::new(),
            last_seq: 0,
        }
    }

    /// Turns a reading into the next event and the deltas it produced.
    pub fn append(&mut self, r: Reading<'_>) -> (Event, Vec<(String, Crdt)>) {
        let physical = (r.at as i64 + self.skew_ms).max(0) as u64;
        let hlc: Hlc = self.clock.now(physical);
        self.last_seq += 1;
        let rep = self.replica.clone();
        let mut deltas = Vec::with_capacity(r.ops.len());
        for op in r.ops {
            let (key, delta) = match op {
                Op::Count(k) => (k, Crdt::GCounter(self.gcounter(k).inc(&rep, 1))),
                Op::Max(k, v) => (k, Crdt::MaxRegister(self.max(k).set(Value::Double(v)))),
                Op::Rollup(k, b, v) => {
                    let d = self.rollup(k).record(&rep, b, v).unwrap_or_default();
                    (k, Crdt::RollupMap(d))
                }
                Op::Lww(k, v) => (k, Crdt::LwwRegister(self.lww(k).set(hlc, &rep, v))),
                Op::Mv(k, v) => (k, Crdt::MvRegister(self.mv(k).write(&rep, v))),
                Op::Add(k, v) => (k, Crdt::OrSet(self.set(k).add(&rep, v))),
                Op::Remove(k, v) => (k, Crdt::OrSet(self.set(k).remove(&v))),
                Op::Pn(k, by) => (k, Crdt::PnCounter(self.pn(k).add(&rep, by))),
            };
            deltas.push((key.to_owned(), delta));
        }
        let event = Event {
            dot: Dot::new(rep, self.last_seq),
            hlc,
            stream: r.stream.to_owned(),
            schema_version: 1,
            fields: r.fields,
            tags: BTreeMap::new(),
        };
        (event, deltas)
    }

    /// The device's own view of every key it wrote.
    pub fn crdts(&self) -> &BTreeMap<String, Crdt> {
        &self.crdts
    }

    /// The device's physical clock at true time `at`.
    pub fn device_time(&self, at: Ms) -> u64 {
        (at as i64 + self.skew_ms).max(0) as u64
    }
}

macro_rules! accessor {
    ($name:ident, $variant:ident, $ty:ty) => {
        impl DeviceState {
            fn $name(&mut self, key: &str) -> &mut $ty {
                if !self.crdts.contains_key(key) {
                    self.crdts
                        .insert(key.to_owned(), Crdt::$variant(Default::default()));
                }
                let Some(slot) = self.crdts.get_mut(key) else {
                    unreachable!("inserted above")
                };
                match slot {
                    Crdt::$variant(x) => x,
                    // Each key is used with one kind only (the generator's key names say which).
                    _ => unreachable!("key {key} used with two CRDT kinds"),
                }
            }
        }
    };
}

accessor!(gcounter, GCounter, GCounter);
accessor!(max, MaxRegister, MaxRegister<Value>);
accessor!(rollup, RollupMap, RollupMap);
accessor!(lww, LwwRegister, LwwRegister<Value>);
accessor!(mv, MvRegister, MvRegister<Value>);
accessor!(set, OrSet, OrSet<Value>);
accessor!(pn, PnCounter, PnCounter);

/// A device's next crash after `from`, as (down at, up again at), from its fault stream.
/// Drawn whole in advance so that whether the device is alive at a given time does not depend
/// on the order in which simultaneous events are handled.
pub(crate) fn next_crash(cfg: &SimConfig, from: Ms, faults: &mut Rng) -> Option<(Ms, Ms)> {
    if cfg.faults.device_crash_mean_h <= 0.0 {
        return None;
    }
    let at = from + ms(faults.exp(cfg.faults.device_crash_mean_h * 3600.0)).max(1);
    let down = ms(faults.exp(cfg.faults.device_down_mean_s)).max(1);
    Some((at, at + down))
}

/// Whether a device with crash window `crash_at` is alive at `t`.
fn alive(crash_at: Option<(Ms, Ms)>, t: Ms) -> bool {
    crash_at.is_none_or(|(down, up)| t < down || t >= up)
}

/// Where an event's Avro size comes from: the real codec, or (protocol-only runs) the model.
#[derive(Clone, Copy)]
pub(crate) enum Sizes<'a> {
    /// Encode it.
    Codec(&'a edgesync_schemas::Codec),
    /// Look it up.
    Model(&'a crate::config::WireModel),
}

/// What one device tick produced, with the bookkeeping both approaches share done.
pub(crate) struct Produced {
    /// When the event happened.
    pub at: Ms,
    /// The event (its dot assigned).
    pub event: Event,
    /// The deltas it produced.
    pub deltas: Vec<(String, Crdt)>,
    /// Its Avro size.
    pub raw: usize,
}

/// Runs a device's generator for its tick due at `now`: appends the event to the device state,
/// counts it and its Avro size in `m`. `None` while
/// the device is down (inside its crash window `crash_at`).
pub(crate) fn produce(
    gen: &mut DeviceGen,
    state: &mut DeviceState,
    (now, crash_at): (Ms, Option<(Ms, Ms)>),
    sizes: Sizes<'_>,
    m: &mut crate::report::Metrics,
) -> Option<Produced> {
    let r = gen.tick(alive(crash_at, now))?;
    let at = r.at;
    let (event, deltas) = state.append(r);
    let raw = match sizes {
        Sizes::Codec(codec) => codec
            .encode_event(&event, edgesync_schemas::Framing::SingleObject)
            .map_or(0, |b| b.len() - edgesync_schemas::SINGLE_OBJECT_HEADER_LEN),
        Sizes::Model(model) => model.event_bytes(&event.stream) as usize,
    };
    m.generated += 1;
    m.raw_bytes += raw as u64;
    Some(Produced {
        at,
        event,
        deltas,
        raw,
    })
}

/// Joins `deltas` into `store`.
pub fn join_into(store: &mut BTreeMap<String, Crdt>, deltas: &[(String, Crdt)]) {
    for (k, d) in deltas {
        match store.get_mut(k) {
            Some(s) => {
                if s.join(d).is_err() {
                    unreachable!("key {k} used with two CRDT kinds")
                }
            }
            None => {
                store.insert(k.clone(), d.clone());
            }
        }
    }
}

/// Joins every state of `from` into `store`.
pub fn join_maps(store: &mut BTreeMap<String, Crdt>, from: BTreeMap<String, Crdt>) {
    for (k, d) in from {
        match store.get_mut(&k) {
            Some(s) => {
                if s.join(&d).is_err() {
                    unreachable!("key {k} used with two CRDT kinds")
                }
            }
            None => {
                store.insert(k, d);
            }
        }
    }
}

/// A CRDT's value as an application reads it (what the baseline stores per key).
#[derive(Clone, Debug, PartialEq)]
pub enum ReadValue {
    /// Counters.
    Counter(i128),
    /// Registers (MV: all concurrent values).
    Values(Vec<Value>),
    /// Rollups: bucket -> (count, sum, min, max).
    Rollup(Vec<(Ms, u64, f64, f64, f64)>),
}

impl ReadValue {
    /// Reads a state.
    pub fn of(c: &Crdt) -> Self {
        match c {
            Crdt::GCounter(g) => ReadValue::Counter(g.value() as i128),
            Crdt::PnCounter(p) => ReadValue::Counter(p.value()),
            Crdt::MaxRegister(r) => ReadValue::Values(r.get().cloned().into_iter().collect()),
            Crdt::MinRegister(r) => ReadValue::Values(r.get().cloned().into_iter().collect()),
            Crdt::LwwRegister(r) => ReadValue::Values(r.get().cloned().into_iter().collect()),
            Crdt::MvRegister(r) => ReadValue::Values(r.values().into_iter().cloned().collect()),
            Crdt::OrSet(s) => ReadValue::Values(s.elements().cloned().collect()),
            Crdt::RollupMap(m) => ReadValue::Rollup(
                m.buckets()
                    .into_iter()
                    .map(|(b, a)| (b, a.count, a.sum, a.min, a.max))
                    .collect(),
            ),
        }
    }

    /// Approximate size on the wire in a snapshot (value only).
    pub fn wire_size(&self) -> usize {
        match self {
            ReadValue::Counter(_) => 9,
            ReadValue::Values(v) => {
                v.iter()
                    .map(|x| match x {
                        Value::String(s) => s.len() + 2,
                        _ => 9,
                    })
                    .sum::<usize>()
                    + 1
            }
            ReadValue::Rollup(b) => b.len() * 40 + 1,
        }
    }
}

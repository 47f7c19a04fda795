//! Ingest: how events get into the spool, from the library API, HTTP and local MQTT alike.
//!
//! Every source calls [`Ingest::append`]. The request is validated first (stream and field
//! names, sizes, op keys); a bad request is refused whole with the index of the first bad
//! event and nothing of it is stored. Valid requests go to one ingest thread, which owns the
//! agent's CRDT states and its hybrid logical clock: it takes every request that arrived while
//! the previous write was being synced, stamps each event, applies its operations to the
//! states, encodes event and deltas as spool records, and appends them all, with the new
//! states, in one spool write (one fsync). Group commit therefore survives the extra step, and
//! after a crash the stored states are exactly those of the stored events.
//!
//! States and the clock are changed on a copy and kept only once the spool answers `Stored`:
//! a request refused by the quota (block) or dropped by it (drop-newest) leaves no trace.

pub mod json;
pub mod sparkplug;

use edgesync_servicekit::crash::crash_point;
use std::collections::{BTreeMap, HashMap};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Instant;

use edgesync_core::crdt::RollupMap;
use edgesync_core::{
    Crdt, CrdtKind, DeviceId, Dot, Event, EventLimits, Hlc, HlcClock, ReplicaId, SeqRange, Value,
};
use edgesync_schemas::Codec;
use tokio::sync::{oneshot, Notify};

use crate::metrics::AgentMetrics;
use crate::spool::{Appended, Clock, Spool, SpoolError};

/// An event as a producer hands it in: the agent adds the dot and the HLC stamp.
#[derive(Clone, Debug, PartialEq)]
pub struct IngestEvent {
    /// Stream name (`pump.telemetry`).
    pub stream: String,
    /// Version of the stream's schema.
    pub schema_version: u32,
    /// Typed fields.
    pub fields: BTreeMap<String, Value>,
    /// String tags.
    pub tags: BTreeMap<String, String>,
    /// State operations the event carries.
    pub ops: Vec<Op>,
}

/// One operation on the CRDT state under `key`. The first operation on a key fixes its type;
/// a later operation of another type is refused.
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    /// G-counter: add `by`.
    Inc {
        /// State key.
        key: String,
        /// Increment.
        by: u64,
    },
    /// PN-counter: add `by` (may be negative).
    Add {
        /// State key.
        key: String,
        /// Increment.
        by: i64,
    },
    /// Max register.
    Max {
        /// State key.
        key: String,
        /// Candidate.
        value: Value,
    },
    /// Min register.
    Min {
        /// State key.
        key: String,
        /// Candidate.
        value: Value,
    },
    /// Last-writer-wins register, ordered by the event's HLC (ties by replica).
    Lww {
        /// State key.
        key: String,
        /// New value.
        value: Value,
    },
    /// Multi-value register write.
    Mv {
        /// State key.
        key: String,
        /// New value.
        value: Value,
    },
    /// Add-wins set: add.
    SetAdd {
        /// State key.
        key: String,
        /// Element.
        value: Value,
    },
    /// Add-wins set: remove every add seen.
    SetRemove {
        /// State key.
        key: String,
        /// Element.
        value: Value,
    },
    /// Rollup: record a sample in the bucket of the event's time.
    Rollup {
        /// State key.
        key: String,
        /// Sample (finite).
        value: f64,
        /// Bucket width.
        bucket_ms: u64,
    },
}

impl Op {
    /// The state key.
    pub fn key(&self) -> &str {
        match self {
            Op::Inc { key, .. }
            | Op::Add { key, .. }
            | Op::Max { key, .. }
            | Op::Min { key, .. }
            | Op::Lww { key, .. }
            | Op::Mv { key, .. }
            | Op::SetAdd { key, .. }
            | Op::SetRemove { key, .. }
            | Op::Rollup { key, .. } => key,
        }
    }

    /// The CRDT type it applies to.
    pub fn kind(&self) -> CrdtKind {
        match self {
            Op::Inc { .. } => CrdtKind::GCounter,
            Op::Add { .. } => CrdtKind::PnCounter,
            Op::Max { .. } => CrdtKind::MaxRegister,
            Op::Min { .. } => CrdtKind::MinRegister,
            Op::Lww { .. } => CrdtKind::LwwRegister,
            Op::Mv { .. } => CrdtKind::MvRegister,
            Op::SetAdd { .. } | Op::SetRemove { .. } => CrdtKind::OrSet,
            Op::Rollup { .. } => CrdtKind::RollupMap,
        }
    }

    fn check(&self, limits: &EventLimits) -> Result<(), String> {
        edgesync_core::event::validate_state_key(self.key()).map_err(|e| e.to_string())?;
        match self {
            Op::Rollup { value, .. } if !value.is_finite() => {
                Err(format!("rollup sample {value} is not finite"))
            }
            Op::Rollup { bucket_ms: 0, .. } => Err("rollup bucket_ms must be > 0".into()),
            Op::Max { value, .. }
            | Op::Min { value, .. }
            | Op::Lww { value, .. }
            | Op::Mv { value, .. }
            | Op::SetAdd { value, .. }
            | Op::SetRemove { value, .. } => match value {
                Value::String(s) if s.len() > limits.max_string_bytes => Err(format!(
                    "value of {} bytes exceeds {}",
                    s.len(),
                    limits.max_string_bytes
                )),
                Value::Double(d) if !d.is_finite() => Err(format!("value {d} is not finite")),
                _ => Ok(()),
            },
            _ => Ok(()),
        }
    }

    /// Applies the op to `state` for `replica` at `hlc` and returns the delta.
    fn apply(&self, state: &mut Crdt, replica: &ReplicaId, hlc: Hlc) -> Crdt {
        // `check` and the kind test ran first: a mismatch here cannot happen, and the
        // fallback (an empty delta of the op's type) would only ever send nothing.
        match (self, state) {
            (Op::Inc { by, .. }, Crdt::GCounter(c)) => Crdt::GCounter(c.inc(replica, *by)),
            (Op::Add { by, .. }, Crdt::PnCounter(c)) => Crdt::PnCounter(c.add(replica, *by)),
            (Op::Max { value, .. }, Crdt::MaxRegister(r)) => {
                Crdt::MaxRegister(r.set(value.clone()))
            }
            (Op::Min { value, .. }, Crdt::MinRegister(r)) => {
                Crdt::MinRegister(r.set(value.clone()))
            }
            (Op::Lww { value, .. }, Crdt::LwwRegister(r)) => {
                Crdt::LwwRegister(r.set(hlc, replica, value.clone()))
            }
            (Op::Mv { value, .. }, Crdt::MvRegister(r)) => {
                Crdt::MvRegister(r.write(replica, value.clone()))
            }
            (Op::SetAdd { value, .. }, Crdt::OrSet(s)) => {
                Crdt::OrSet(s.add(replica, value.clone()))
            }
            (Op::SetRemove { value, .. }, Crdt::OrSet(s)) => Crdt::OrSet(s.remove(value)),
            (
                Op::Rollup {
                    value, bucket_ms, ..
                },
                Crdt::RollupMap(m),
            ) => {
                let bucket = hlc.wall_ms - hlc.wall_ms % bucket_ms;
                m.record(replica, bucket, *value)
                    .map(Crdt::RollupMap)
                    .unwrap_or_else(|_| Crdt::RollupMap(RollupMap::default()))
            }
            (op, _) => op.kind().bottom(),
        }
    }
}

/// What happened to an accepted request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accepted {
    /// Durable, with these seqs.
    Stored(SeqRange),
    /// Dropped by the drop-newest quota policy (counted and logged by the spool).
    Dropped {
        /// How many events.
        events: usize,
    },
    /// The request held no events.
    Empty,
}

/// Why ingest refused a request. Nothing of a refused request is stored.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// An event is malformed (the producer must fix it).
    #[error("event {index}: {reason}")]
    Invalid {
        /// Which event of the request (0-based).
        index: usize,
        /// Why.
        reason: String,
    },
    /// More events in one request than allowed.
    #[error("{count} events in one request, the limit is {limit}")]
    TooMany {
        /// Events sent.
        count: usize,
        /// The limit.
        limit: usize,
    },
    /// The spool is full and the policy is block: retry later.
    #[error("spool full: {bytes} of {limit} bytes used, oldest unacknowledged event {oldest_age_ms} ms old; retry after the uplink catches up")]
    Full {
        /// Bytes used.
        bytes: u64,
        /// The quota.
        limit: u64,
        /// Age of the oldest unacknowledged event.
        oldest_age_ms: u64,
    },
    /// The request alone is larger than the spool's quota.
    #[error("request of {len} spool bytes exceeds the spool's quota of {limit} bytes")]
    TooLarge {
        /// Its size.
        len: u64,
        /// The quota.
        limit: u64,
    },
    /// The spool failed or the agent is stopping.
    #[error("spool unavailable: {0}")]
    Unavailable(String),
}

impl IngestError {
    /// Short reason for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            IngestError::Invalid { .. } | IngestError::TooMany { .. } => "invalid",
            IngestError::Full { .. } => "full",
            IngestError::TooLarge { .. } => "too_large",
            IngestError::Unavailable(_) => "unavailable",
        }
    }
}

/// Ingest settings.
#[derive(Clone, Debug)]
pub struct IngestConfig {
    /// Per-event limits.
    pub limits: EventLimits,
    /// Most events in one request.
    pub max_request_events: usize,
    /// Most operations per event.
    pub max_ops: usize,
    /// Most events joined into one spool write.
    pub max_group_events: usize,
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            limits: EventLimits::default(),
            max_request_events: 10_000,
            max_ops: 64,
            max_group_events: 20_000,
        }
    }
}

/// Why ingest could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Reading the stored states failed.
    #[error(transparent)]
    Spool(#[from] SpoolError),
    /// A stored state does not decode.
    #[error("stored state {key:?} does not decode: {reason}")]
    State {
        /// Which key.
        key: String,
        /// Why.
        reason: String,
    },
    /// The ingest thread could not be started.
    #[error("start the ingest thread: {0}")]
    Thread(#[source] std::io::Error),
}

struct Job {
    source: &'static str,
    events: Vec<IngestEvent>,
    arrived: Instant,
    reply: oneshot::Sender<Result<Accepted, IngestError>>,
    /// The state keys whose types it reserved (see [`DeviceShared`]), settled with its answer.
    reserved: Vec<String>,
}

/// What the lanes of one device share at ingest (`lanes.rs`: each lane has its own spool and
/// ingest thread): one clock, so that an event answered on one lane is stamped before any
/// event taken afterwards on another (a device has one HLC, whatever lane an event takes), and
/// one CRDT type per state key, so that a key is never a counter in one lane and a register in
/// another. A request using a key reserves its type when it passes the check and until it is
/// answered; a type stays once a state of it is stored, and goes when nothing stored or
/// pending uses it (a request refused by a full spool leaves nothing behind).
#[derive(Debug, Default)]
pub struct DeviceShared {
    hlc: Mutex<Hlc>,
    kinds: Mutex<HashMap<String, KeyKind>>,
}

/// A state key's type, held while a state of it is stored or a request using it is pending.
#[derive(Debug, Clone, Copy)]
struct KeyKind {
    kind: CrdtKind,
    stored: bool,
    pending: u32,
}

impl DeviceShared {
    fn hlc(&self) -> MutexGuard<'_, Hlc> {
        self.hlc.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn kinds(&self) -> MutexGuard<'_, HashMap<String, KeyKind>> {
        self.kinds.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The device's clock has reached `h` (a lane stamped it, or stored it before a restart).
    fn reached(&self, h: Hlc) {
        let mut last = self.hlc();
        *last = (*last).max(h);
    }

    /// A lane's stored clock and states, at its start.
    fn resume(&self, last: Hlc, states: &BTreeMap<String, Crdt>) {
        self.reached(last);
        let mut kinds = self.kinds();
        for (key, c) in states {
            let e = kinds.entry(key.clone()).or_insert(KeyKind {
                kind: c.kind(),
                stored: true,
                pending: 0,
            });
            e.stored = true;
        }
    }

    /// A request reserving `keys` was answered: `stored` or not.
    fn settle(&self, keys: &[String], stored: bool) {
        let mut kinds = self.kinds();
        for k in keys {
            if let Some(e) = kinds.get_mut(k) {
                e.pending = e.pending.saturating_sub(1);
                e.stored |= stored;
                if !e.stored && e.pending == 0 {
                    kinds.remove(k);
                }
            }
        }
    }
}

/// The handle every source appends through. Cheap to clone; the ingest thread stops when the
/// last handle is dropped, after answering what is queued.
#[derive(Clone, Debug)]
pub struct Ingest {
    tx: mpsc::SyncSender<Job>,
    cfg: Arc<IngestConfig>,
    replica: ReplicaId,
    // Requests refused before they reach the worker are counted here, the rest by the worker.
    metrics: Arc<AgentMetrics>,
}

/// Spool state names: the clock, and one entry per CRDT key.
const HLC_STATE: &str = "hlc";
const CRDT_PREFIX: &str = "crdt/";

/// Every CRDT state a spool holds, by key. Unreadable states are left out (the agent refuses
/// to start on them anyway).
pub fn stored_states(spool: &Spool, codec: &Codec) -> BTreeMap<String, Crdt> {
    spool
        .state()
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(name, bytes)| {
            let key = name.strip_prefix(CRDT_PREFIX)?;
            Some((key.to_owned(), codec.decode_crdt_state(&bytes).ok()?))
        })
        .collect()
}

/// The digest (hex) of every CRDT state the agent holds over `spools` (its lanes: a key written
/// from two lanes is the join of their states), by key: what the converged record of the same
/// key carries once the server has every contribution.
pub fn state_digests<'a>(
    spools: impl IntoIterator<Item = &'a Spool>,
    codec: &Codec,
) -> BTreeMap<String, String> {
    let mut joined: BTreeMap<String, Crdt> = BTreeMap::new();
    for spool in spools {
        for (key, c) in stored_states(spool, codec) {
            // Kinds that differ: the first lane's stands.
            (joined.entry(key))
                .and_modify(|s| {
                    let _ = s.join(&c);
                })
                .or_insert(c);
        }
    }
    joined
        .iter()
        .map(|(key, c)| {
            (
                key.clone(),
                edgesync_core::StateDigest::of_state(key, c).to_hex(),
            )
        })
        .collect()
}

impl Ingest {
    /// Most events one request may carry.
    pub fn max_request_events(&self) -> usize {
        self.cfg.max_request_events
    }

    /// Starts the ingest thread for `device` on `spool` (one lane's: the lanes of the device
    /// share `shared`); `appended` is notified after every stored write (the uplink waits on
    /// it).
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        spool: Arc<Spool>,
        codec: Arc<Codec>,
        device: DeviceId,
        cfg: IngestConfig,
        clock: Clock,
        metrics: Arc<AgentMetrics>,
        appended: Arc<Notify>,
        shared: Arc<DeviceShared>,
    ) -> Result<(Self, JoinHandle<()>), StartError> {
        let mut states = BTreeMap::new();
        let mut last = Hlc::default();
        for (name, bytes) in spool.state()? {
            if name == HLC_STATE {
                last = decode_hlc(&bytes).ok_or_else(|| StartError::State {
                    key: name.clone(),
                    reason: "not 12 bytes".into(),
                })?;
            } else if let Some(key) = name.strip_prefix(CRDT_PREFIX) {
                let c = codec
                    .decode_crdt_state(&bytes)
                    .map_err(|e| StartError::State {
                        key: key.to_owned(),
                        reason: e.to_string(),
                    })?;
                states.insert(key.to_owned(), c);
            }
        }
        shared.resume(last, &states);
        let replica = ReplicaId::new(device, spool.meta().incarnation);
        let cfg = Arc::new(cfg);
        let (tx, rx) = mpsc::sync_channel(1024);
        let worker = Worker {
            spool,
            codec,
            replica: replica.clone(),
            states,
            // A local clock is never merged with remote stamps here: the bound is moot.
            hlc: HlcClock::resume(last, u64::MAX),
            clock,
            metrics: Arc::clone(&metrics),
            appended,
            max_group_events: cfg.max_group_events,
            shared,
        };
        let handle = std::thread::Builder::new()
            .name("ingest".into())
            .spawn(move || worker.run(rx))
            .map_err(StartError::Thread)?;
        let ingest = Self {
            tx,
            cfg,
            replica,
            metrics,
        };
        Ok((ingest, handle))
    }

    /// The limits requests are checked against.
    pub fn config(&self) -> &IngestConfig {
        &self.cfg
    }

    /// Validates and appends `events` from `source` (a metrics label: `api`, `http`, `mqtt`);
    /// returns once they are durable, dropped by policy, or refused.
    pub async fn append(
        &self,
        source: &'static str,
        events: Vec<IngestEvent>,
    ) -> Result<Accepted, IngestError> {
        let rx = self.submit(source, events)?;
        rx.await
            .map_err(|_| IngestError::Unavailable("ingest stopped".into()))?
    }

    /// [`Ingest::append`] for threads outside an async runtime.
    pub fn append_blocking(
        &self,
        source: &'static str,
        events: Vec<IngestEvent>,
    ) -> Result<Accepted, IngestError> {
        let rx = self.submit(source, events)?;
        rx.blocking_recv()
            .map_err(|_| IngestError::Unavailable("ingest stopped".into()))?
    }

    fn submit(
        &self,
        source: &'static str,
        events: Vec<IngestEvent>,
    ) -> Result<oneshot::Receiver<Result<Accepted, IngestError>>, IngestError> {
        if let Err(e) = self.validate(&events) {
            self.metrics
                .refused(source, e.reason(), events.len() as u64);
            return Err(e);
        }
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Job {
                source,
                events,
                arrived: Instant::now(),
                reply,
                reserved: Vec::new(),
            })
            .map_err(|_| IngestError::Unavailable("ingest stopped".into()))?;
        Ok(rx)
    }

    /// Everything that can be checked without the states.
    pub fn validate(&self, events: &[IngestEvent]) -> Result<(), IngestError> {
        if events.len() > self.cfg.max_request_events {
            return Err(IngestError::TooMany {
                count: events.len(),
                limit: self.cfg.max_request_events,
            });
        }
        for (index, e) in events.iter().enumerate() {
            let invalid = |reason: String| IngestError::Invalid { index, reason };
            if e.ops.len() > self.cfg.max_ops {
                return Err(invalid(format!(
                    "{} ops, the limit is {}",
                    e.ops.len(),
                    self.cfg.max_ops
                )));
            }
            for (i, op) in e.ops.iter().enumerate() {
                op.check(&self.cfg.limits)
                    .map_err(|why| invalid(format!("op {i}: {why}")))?;
            }
            let ev = Event {
                dot: Dot::new(self.replica.clone(), 0),
                hlc: Hlc::default(),
                stream: e.stream.clone(),
                schema_version: e.schema_version,
                fields: e.fields.clone(),
                tags: e.tags.clone(),
            };
            ev.validate(&self.cfg.limits)
                .map_err(|err| invalid(err.to_string()))?;
        }
        Ok(())
    }
}

fn encode_hlc(h: Hlc) -> Vec<u8> {
    let mut v = h.wall_ms.to_be_bytes().to_vec();
    v.extend_from_slice(&h.logical.to_be_bytes());
    v
}

fn decode_hlc(b: &[u8]) -> Option<Hlc> {
    let (wall, logical) = b.split_first_chunk::<8>()?;
    let logical: [u8; 4] = logical.try_into().ok()?;
    Some(Hlc::new(
        u64::from_be_bytes(*wall),
        u32::from_be_bytes(logical),
    ))
}

struct Worker {
    spool: Arc<Spool>,
    codec: Arc<Codec>,
    replica: ReplicaId,
    states: BTreeMap<String, Crdt>,
    hlc: HlcClock,
    clock: Clock,
    metrics: Arc<AgentMetrics>,
    appended: Arc<Notify>,
    max_group_events: usize,
    shared: Arc<DeviceShared>,
}

/// A group being prepared: changed states and the clock, on copies.
struct Draft {
    states: BTreeMap<String, Crdt>,
    hlc: HlcClock,
    bodies: Vec<Vec<u8>>,
}

impl Worker {
    fn run(mut self, rx: mpsc::Receiver<Job>) {
        while let Ok(first) = rx.recv() {
            let mut events = first.events.len();
            let mut group = vec![first];
            while events < self.max_group_events {
                match rx.try_recv() {
                    Ok(j) => {
                        events += j.events.len();
                        group.push(j);
                    }
                    Err(_) => break,
                }
            }
            self.write(group);
        }
    }

    fn write(&mut self, jobs: Vec<Job>) {
        let floor = *self.shared.hlc();
        if floor > self.hlc.last() {
            // Another lane stamped later: this one's next stamp comes after it.
            self.hlc = HlcClock::resume(floor, u64::MAX);
        }
        let mut draft = Draft {
            states: BTreeMap::new(),
            hlc: self.hlc.clone(),
            bodies: Vec::new(),
        };
        let mut ready = Vec::with_capacity(jobs.len());
        for mut job in jobs {
            match self.prepare(&job.events, &mut draft) {
                Ok(reserved) => {
                    job.reserved = reserved;
                    ready.push(job);
                }
                Err(e) => self.answer(job, Err(e)),
            }
        }
        if ready.is_empty() {
            return;
        }
        if draft.bodies.is_empty() {
            ready
                .into_iter()
                .for_each(|j| self.answer(j, Ok(Accepted::Empty)));
            return;
        }
        let state = match self.encoded_states(&draft) {
            Ok(state) => state,
            Err(why) => {
                for job in ready {
                    self.answer(job, Err(IngestError::Unavailable(why.clone())));
                }
                return;
            }
        };
        match self.spool.append_with_state(draft.bodies, state) {
            Ok(Appended::Stored(range)) => {
                crash_point("ingest.after_append");
                self.states.extend(draft.states);
                self.hlc = draft.hlc;
                self.shared.reached(self.hlc.last());
                self.stored(ready, range.start);
            }
            Ok(Appended::Dropped { .. }) | Ok(Appended::Empty) => {
                for job in ready {
                    let events = job.events.len();
                    self.answer(job, Ok(Accepted::Dropped { events }));
                }
            }
            Err(SpoolError::TooLarge { .. }) if ready.len() > 1 => {
                // The group as a whole is larger than the quota: each request on its own may fit
                // (and reserves its keys again).
                for mut job in ready {
                    self.shared
                        .settle(&std::mem::take(&mut job.reserved), false);
                    self.write(vec![job]);
                }
            }
            Err(e) => {
                for job in ready {
                    self.answer(job, Err(refused(&e)));
                }
            }
        }
    }

    /// The draft's states and clock as the spool stores them beside the events.
    fn encoded_states(&self, draft: &Draft) -> Result<Vec<(String, Vec<u8>)>, String> {
        let mut state = Vec::with_capacity(draft.states.len() + 1);
        for (k, c) in &draft.states {
            let b = (self.codec.encode_crdt_state(c))
                .map_err(|e| format!("encode state {k:?}: {e}"))?;
            state.push((format!("{CRDT_PREFIX}{k}"), b));
        }
        state.push((HLC_STATE.into(), encode_hlc(draft.hlc.last())));
        Ok(state)
    }

    /// Answers each job with its share of the stored seqs, which start at `first`, in job order.
    fn stored(&mut self, ready: Vec<Job>, first: u64) {
        let mut next = first;
        for job in ready {
            let n = job.events.len() as u64;
            let a = match n {
                0 => Accepted::Empty,
                _ => Accepted::Stored(SeqRange {
                    start: next,
                    end: next + n - 1,
                }),
            };
            next += n;
            self.metrics.stored(job.source, n);
            self.answer(job, Ok(a));
        }
        self.appended.notify_one();
    }

    /// Checks the job's state types, then stamps, applies and encodes its events into the
    /// draft; returns the keys whose types it reserved. On error the draft is unchanged and
    /// nothing stays reserved.
    fn prepare(
        &self,
        events: &[IngestEvent],
        draft: &mut Draft,
    ) -> Result<Vec<String>, IngestError> {
        // Types first, so that applying cannot fail half-way.
        let reserved = self.check_kinds(events, draft)?;
        let r = self.stamp_and_encode(events, draft);
        if r.is_err() {
            self.shared.settle(&reserved, false);
        }
        r.map(|()| reserved)
    }

    /// Stamps the job's events, applies their ops to the draft's states and encodes them; on
    /// error the draft is unchanged.
    fn stamp_and_encode(
        &self,
        events: &[IngestEvent],
        draft: &mut Draft,
    ) -> Result<(), IngestError> {
        let mut states: BTreeMap<String, Crdt> = BTreeMap::new();
        let mut hlc = draft.hlc.clone();
        let mut bodies = Vec::with_capacity(events.len());
        for (index, e) in events.iter().enumerate() {
            let stamp = hlc.now((self.clock)());
            let deltas = self.apply_ops(&e.ops, draft, &mut states, stamp);
            let event = Event {
                dot: Dot::new(self.replica.clone(), 0), // the spool assigns the seq
                hlc: stamp,
                stream: e.stream.clone(),
                schema_version: e.schema_version,
                fields: e.fields.clone(),
                tags: e.tags.clone(),
            };
            let body = self
                .codec
                .encode_spool_record(&event, &deltas)
                .map_err(|err| IngestError::Invalid {
                    index,
                    reason: err.to_string(),
                })?;
            bodies.push(body);
        }
        draft.states.extend(states);
        draft.hlc = hlc;
        draft.bodies.extend(bodies);
        Ok(())
    }

    /// Refuses the job when an op names a state of another CRDT type (stored, drafted by an
    /// earlier job of the group, named earlier in this job, or held by another lane of the
    /// device); when it passes, reserves the types of the keys it uses for the device and
    /// returns them (settled with its answer).
    fn check_kinds(
        &self,
        events: &[IngestEvent],
        draft: &Draft,
    ) -> Result<Vec<String>, IngestError> {
        let mut shared = self.shared.kinds();
        let mut kinds: BTreeMap<&str, CrdtKind> = BTreeMap::new();
        for (index, e) in events.iter().enumerate() {
            for op in &e.ops {
                let have = kinds
                    .get(op.key())
                    .copied()
                    .or_else(|| self.current(draft, op.key()).map(Crdt::kind))
                    .or_else(|| shared.get(op.key()).map(|k| k.kind));
                if let Some(k) = have.filter(|k| *k != op.kind()) {
                    let reason = format!(
                        "state {:?} is a {}, not a {}",
                        op.key(),
                        k.name(),
                        op.kind().name()
                    );
                    return Err(IngestError::Invalid { index, reason });
                }
                kinds.insert(op.key(), op.kind());
            }
        }
        let mut reserved = Vec::with_capacity(kinds.len());
        for (key, kind) in kinds {
            let e = shared.entry(key.to_owned()).or_insert(KeyKind {
                kind,
                stored: false,
                pending: 0,
            });
            e.pending += 1;
            reserved.push(key.to_owned());
        }
        Ok(reserved)
    }

    /// A state as the group sees it so far: drafted by an earlier job, else stored.
    fn current<'a>(&'a self, draft: &'a Draft, key: &str) -> Option<&'a Crdt> {
        draft.states.get(key).or_else(|| self.states.get(key))
    }

    /// Applies one event's ops to `states` (this job's working copies, taken from the draft or
    /// the stored states on first use) and returns the deltas, one entry per key.
    fn apply_ops(
        &self,
        ops: &[Op],
        draft: &Draft,
        states: &mut BTreeMap<String, Crdt>,
        stamp: Hlc,
    ) -> Vec<(String, Crdt)> {
        let mut deltas: Vec<(String, Crdt)> = Vec::with_capacity(ops.len());
        for op in ops {
            let key = op.key();
            let state = states.entry(key.to_owned()).or_insert_with(|| {
                self.current(draft, key)
                    .cloned()
                    .unwrap_or_else(|| op.kind().bottom())
            });
            let delta = op.apply(state, &self.replica, stamp);
            // Deltas of one event on one key are joined: one entry per key.
            match deltas.iter_mut().find(|(k, _)| k == key) {
                Some((_, d)) => {
                    let _ = d.join(&delta);
                }
                None => deltas.push((key.to_owned(), delta)),
            }
        }
        deltas
    }

    fn answer(&self, job: Job, result: Result<Accepted, IngestError>) {
        let stored = matches!(result, Ok(Accepted::Stored(_)));
        self.shared.settle(&job.reserved, stored);
        match &result {
            Ok(Accepted::Stored(_)) => self
                .metrics
                .append_latency
                .observe(job.arrived.elapsed().as_secs_f64()),
            Err(e) => self
                .metrics
                .refused(job.source, e.reason(), job.events.len() as u64),
            _ => {}
        }
        let _ = job.reply.send(result); // a producer that stopped waiting is not an error
    }
}

/// What a producer is told when the spool refused its events.
pub(crate) fn refused(e: &SpoolError) -> IngestError {
    match e {
        SpoolError::Full {
            bytes,
            limit,
            oldest_age_ms,
        } => IngestError::Full {
            bytes: *bytes,
            limit: *limit,
            oldest_age_ms: *oldest_age_ms,
        },
        SpoolError::TooLarge { len, limit } => IngestError::TooLarge {
            len: *len,
            limit: *limit,
        },
        other => IngestError::Unavailable(other.to_string()),
    }
}

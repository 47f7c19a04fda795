//! The durable spool: every event an agent accepts, until the server acknowledges it.
//!
//! Writes never wait for the network, only for the disk. Appends from any number of threads go
//! to one writer thread, which takes everything that arrived while the previous write was
//! being synced and writes it as one RocksDB `WriteBatch` with one fsync (group commit). An
//! append returns only after its batch is durable (or OS-buffered, if configured), with the
//! seqs it got. The batch also carries the next seq to assign, so a crash at any point neither
//! loses an answered event nor lets a seq be used twice.
//!
//! The spool is bounded by a quota (bytes and age). When it is full the configured policy
//! applies: refuse new events (back-pressure), drop the newest (the incoming ones), or drop
//! the oldest. Dropped-oldest events keep their seqs: a *dropped range* record replaces them,
//! so the seqs stay dense and the server learns exactly which events were dropped at the edge,
//! and why, instead of waiting forever on a gap. Every drop is counted.
//!
//! The on-disk layout is in [`keys`]. `trim(watermark)` deletes everything at or below an
//! acknowledged watermark and persists it. `verify` checks every record and the density of
//! seqs; `repair` replaces records that do not decode by dropped ranges (reason `Corrupt`),
//! so no valid record is lost and no seq is reused.

mod keys;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use edgesync_core::{Incarnation, SeqRange};
use rocksdb::{DBRecoveryMode, Direction, IteratorMode, Options, WriteBatch, WriteOptions, DB};

/// How durable an answered append is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// fsync'ed: survives power loss. The default.
    Fsync,
    /// In the OS page cache: survives a crash of the agent, not of the machine. Faster.
    OsBuffered,
}

/// What to do when the quota is reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuotaPolicy {
    /// Refuse new events with [`SpoolError::Full`] (the producer must back off).
    Block,
    /// Drop the oldest unacknowledged events (their seqs become a dropped range).
    DropOldest,
    /// Drop the incoming events.
    DropNewest,
}

/// Why seqs were dropped: the core's reason, stored in dropped-range records and sent to the
/// server in batches.
pub use edgesync_core::DropReason;

/// Milliseconds since the Unix epoch; replaceable for tests.
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// The wall clock (`edgesync_servicekit::now_ms`, the services' one clock).
pub fn system_clock() -> Clock {
    Arc::new(edgesync_servicekit::now_ms)
}

/// What one group write cost, reported to [`SpoolConfig::observer`] (for latency metrics).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GroupWrite {
    /// Requests (appends, trims, repairs) the write answered.
    pub requests: usize,
    /// Time spent in the RocksDB write, fsync included.
    pub write: Duration,
}

/// Called after every group write; must be cheap (it runs on the writer thread).
pub type Observer = Arc<dyn Fn(GroupWrite) + Send + Sync>;

/// Spool settings.
#[derive(Clone)]
pub struct SpoolConfig {
    /// Fsync or OS-buffered.
    pub durability: Durability,
    /// Most bytes of unacknowledged records.
    pub max_bytes: u64,
    /// Events older than this make the spool full.
    pub max_age: Option<Duration>,
    /// What happens when full.
    pub policy: QuotaPolicy,
    /// Most append requests joined into one write (bounds one group's latency).
    pub max_group: usize,
    /// Time source.
    pub clock: Clock,
    /// Told the cost of every group write.
    pub observer: Option<Observer>,
}

impl std::fmt::Debug for SpoolConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpoolConfig")
            .field("durability", &self.durability)
            .field("max_bytes", &self.max_bytes)
            .field("max_age", &self.max_age)
            .field("policy", &self.policy)
            .field("max_group", &self.max_group)
            .field("observer", &self.observer.is_some())
            .finish()
    }
}

impl Default for SpoolConfig {
    fn default() -> Self {
        Self {
            durability: Durability::Fsync,
            max_bytes: 1 << 30,
            max_age: None,
            policy: QuotaPolicy::Block,
            max_group: 4096,
            clock: system_clock(),
            observer: None,
        }
    }
}

/// Spool failures.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// RocksDB failed.
    #[error("spool storage: {0}")]
    Db(#[from] rocksdb::Error),
    /// The quota is reached and the policy is `Block`.
    #[error("spool full: {bytes} of {limit} bytes used, oldest unacknowledged event {oldest_age_ms} ms old; retry after the uplink catches up")]
    Full {
        /// Bytes used.
        bytes: u64,
        /// The byte limit.
        limit: u64,
        /// Age of the oldest unacknowledged event.
        oldest_age_ms: u64,
    },
    /// One append larger than the whole quota.
    #[error("append of {len} bytes exceeds the spool's quota of {limit} bytes")]
    TooLarge {
        /// Its size.
        len: u64,
        /// The quota.
        limit: u64,
    },
    /// The spool was created by another format version.
    #[error("spool format {found} is not supported (expected {expected})")]
    Format {
        /// What the directory holds.
        found: u8,
        /// What this build writes.
        expected: u8,
    },
    /// Metadata that does not decode.
    #[error("spool metadata {key} is corrupt")]
    CorruptMeta {
        /// Which key.
        key: &'static str,
    },
    /// The writer thread is gone (the spool is closing or a write failed before).
    #[error("spool writer stopped")]
    Closed,
    /// The writer thread could not be started.
    #[error("start the spool writer thread: {0}")]
    Thread(#[source] std::io::Error),
    /// The directory holds no spool (opening read-only never creates one).
    #[error("no spool in {0}")]
    NotASpool(std::path::PathBuf),
    /// Reading the system's randomness for a new incarnation failed.
    #[error("read random bits for a new incarnation: {0}")]
    Random(#[source] std::io::Error),
}

/// What an append did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Appended {
    /// Nothing was asked.
    Empty,
    /// Stored durably with these seqs.
    Stored(SeqRange),
    /// Dropped by the `DropNewest` policy (counted).
    Dropped {
        /// How many events.
        events: usize,
    },
}

/// One entry read from the spool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Entry {
    /// An event.
    Event {
        /// Its seq.
        seq: u64,
        /// When it was appended (ms since the epoch).
        appended_ms: u64,
        /// The event's bytes.
        body: Vec<u8>,
    },
    /// Seqs dropped at the edge.
    Dropped {
        /// First dropped seq.
        first: u64,
        /// Last dropped seq.
        last: u64,
        /// Why.
        reason: DropReason,
    },
}

/// A snapshot of the spool's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpoolMeta {
    /// This spool's incarnation.
    pub incarnation: Incarnation,
    /// Next seq to assign.
    pub next_seq: u64,
    /// Highest acknowledged seq.
    pub acked: u64,
    /// Event records held (unacknowledged).
    pub events: u64,
    /// Bytes of records held.
    pub bytes: u64,
    /// When the oldest held event was appended.
    pub oldest_ms: Option<u64>,
}

/// Counters of the writer, for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SpoolStats {
    /// Writes (each one fsync when durable).
    pub groups: u64,
    /// Append requests answered.
    pub appends: u64,
    /// Events stored.
    pub events: u64,
    /// Appends refused by `Block`.
    pub refused: u64,
    /// Events dropped, by reason: incoming (drop-newest), oldest by quota, oldest by age.
    pub dropped_newest: u64,
    /// See above.
    pub dropped_oldest_quota: u64,
    /// See above.
    pub dropped_oldest_age: u64,
}

struct State {
    incarnation: Incarnation,
    next: u64,
    acked: u64,
    events: u64,
    bytes: u64,
    oldest_ms: Option<u64>,
    stats: SpoolStats,
}

enum Request {
    Append {
        bodies: Vec<Vec<u8>>,
        state: Vec<(String, Vec<u8>)>,
        reply: mpsc::SyncSender<Result<Appended, SpoolError>>,
    },
    Trim {
        watermark: u64,
        reply: mpsc::SyncSender<Result<u64, SpoolError>>,
    },
    Repair {
        seqs: Vec<u64>,
        reply: mpsc::SyncSender<Result<u64, SpoolError>>,
    },
}

/// The spool. Cheap to share by reference across threads; all writes go through one writer.
pub struct Spool {
    db: Arc<DB>,
    state: Arc<Mutex<State>>,
    tx: Option<mpsc::Sender<Request>>,
    writer: Option<JoinHandle<()>>,
    cfg: SpoolConfig,
}

impl std::fmt::Debug for Spool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spool").field("meta", &self.meta()).finish()
    }
}

fn lock(s: &Mutex<State>) -> MutexGuard<'_, State> {
    // A panic while holding the lock leaves counters that are still individually valid.
    s.lock().unwrap_or_else(|e| e.into_inner())
}

/// Bytes a record counts against the quota: key (10) plus value.
fn record_size(value_len: usize) -> u64 {
    (value_len + 10) as u64
}

/// Quota bytes of one dropped-range record.
const DROPPED_RECORD_SIZE: u64 = (10 + keys::RECORD_HEADER + 9) as u64;

fn random_incarnation() -> Result<Incarnation, SpoolError> {
    let bits = edgesync_servicekit::random_u64().map_err(SpoolError::Random)?;
    Ok(Incarnation::from_random_bits(bits))
}

impl Spool {
    /// Opens (or creates) the spool in `dir`.
    pub fn open(dir: &Path, cfg: SpoolConfig) -> Result<Self, SpoolError> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        // After a crash, recover every write whose WAL record is complete and stop at a torn one.
        opts.set_wal_recovery_mode(DBRecoveryMode::PointInTime);
        opts.set_compression_type(rocksdb::DBCompressionType::Zstd);
        let db = DB::open(&opts, dir)?;
        Self::start(db, cfg, true)
    }

    /// Opens the spool in `dir` for reading only, beside a running agent (RocksDB's read-only
    /// mode takes no lock and sees what was flushed or in the WAL when it opened). Writes,
    /// trims and repairs fail with [`SpoolError::Closed`].
    pub fn open_read_only(dir: &Path) -> Result<Self, SpoolError> {
        if !dir.join("CURRENT").exists() {
            return Err(SpoolError::NotASpool(dir.to_owned()));
        }
        let opts = Options::default();
        let db = DB::open_for_read_only(&opts, dir, false)?;
        if db.get(keys::FORMAT)?.is_none() {
            return Err(SpoolError::NotASpool(dir.to_owned()));
        }
        Self::start(db, SpoolConfig::default(), false)
    }

    fn start(db: DB, cfg: SpoolConfig, writable: bool) -> Result<Self, SpoolError> {
        let meta_u64 =
            |key: &'static [u8], name: &'static str| -> Result<Option<u64>, SpoolError> {
                match db.get(key)? {
                    None => Ok(None),
                    Some(v) => keys::read_u64(&v)
                        .map(Some)
                        .ok_or(SpoolError::CorruptMeta { key: name }),
                }
            };
        let incarnation = match db.get(keys::FORMAT)? {
            None => {
                let inc = random_incarnation()?;
                let mut b = WriteBatch::default();
                b.put(keys::FORMAT, [keys::FORMAT_VERSION]);
                b.put(keys::INCARNATION, keys::u64_value(inc.get()));
                b.put(keys::NEXT, keys::u64_value(1));
                b.put(keys::ACKED, keys::u64_value(0));
                let mut w = WriteOptions::default();
                w.set_sync(true);
                db.write_opt(b, &w)?;
                inc
            }
            Some(v) if v.as_slice() == [keys::FORMAT_VERSION] => {
                let raw = meta_u64(keys::INCARNATION, "incarnation")?
                    .ok_or(SpoolError::CorruptMeta { key: "incarnation" })?;
                Incarnation::new(raw).map_err(|_| SpoolError::CorruptMeta { key: "incarnation" })?
            }
            Some(v) => {
                return Err(SpoolError::Format {
                    found: v.first().copied().unwrap_or(0),
                    expected: keys::FORMAT_VERSION,
                })
            }
        };
        let mut next = meta_u64(keys::NEXT, "next")?.unwrap_or(1).max(1);
        let acked = meta_u64(keys::ACKED, "acked")?.unwrap_or(0);
        // Count what is held, and make sure `next` is past every stored seq whatever happened.
        let (mut events, mut bytes, mut oldest_ms) = (0u64, 0u64, None);
        for item in db.iterator(IteratorMode::From(&keys::event_key(0), Direction::Forward)) {
            let (k, v) = item?;
            let Some(seq) = keys::seq_of(&k) else { break };
            bytes += record_size(v.len());
            match keys::decode(&v) {
                Some(keys::Record::Event { appended_ms, .. }) => {
                    events += 1;
                    oldest_ms.get_or_insert(appended_ms);
                    next = next.max(seq + 1);
                }
                Some(keys::Record::Dropped { last, .. }) => next = next.max(last.max(seq) + 1),
                None => next = next.max(seq + 1),
            }
        }
        let state = Arc::new(Mutex::new(State {
            incarnation,
            next,
            acked,
            events,
            bytes,
            oldest_ms,
            stats: SpoolStats::default(),
        }));
        let db = Arc::new(db);
        if !writable {
            return Ok(Self {
                db,
                state,
                tx: None,
                writer: None,
                cfg,
            });
        }
        let (tx, rx) = mpsc::channel();
        let writer = {
            let (db, state, cfg) = (Arc::clone(&db), Arc::clone(&state), cfg.clone());
            std::thread::Builder::new()
                .name("spool-writer".into())
                .spawn(move || Writer { db, state, cfg }.run(rx))
                .map_err(SpoolError::Thread)?
        };
        Ok(Self {
            db,
            state,
            tx: Some(tx),
            writer: Some(writer),
            cfg,
        })
    }

    /// Appends events; returns once they are durable (or dropped by policy).
    pub fn append(&self, bodies: Vec<Vec<u8>>) -> Result<Appended, SpoolError> {
        self.append_with_state(bodies, Vec::new())
    }

    /// Appends events together with the agent's new state for some keys (the CRDT states the
    /// events' deltas were joined into): both are written in the same batch, so after a crash
    /// the stored state is exactly the state of the stored events. When the events are refused
    /// or dropped, the state is not written either.
    pub fn append_with_state(
        &self,
        bodies: Vec<Vec<u8>>,
        state: Vec<(String, Vec<u8>)>,
    ) -> Result<Appended, SpoolError> {
        let (reply, rx) = mpsc::sync_channel(1);
        self.send(Request::Append {
            bodies,
            state,
            reply,
        })?;
        rx.recv().map_err(|_| SpoolError::Closed)?
    }

    /// The agent state stored by [`Spool::append_with_state`], by key.
    pub fn state(&self) -> Result<BTreeMap<String, Vec<u8>>, SpoolError> {
        let start = keys::state_key("");
        let mut out = BTreeMap::new();
        for item in self
            .db
            .iterator(IteratorMode::From(&start, Direction::Forward))
        {
            let (k, v) = item?;
            let Some(name) = keys::state_name(&k) else {
                break;
            };
            out.insert(name.to_owned(), v.to_vec());
        }
        Ok(out)
    }

    /// Forgets every seq at or below `watermark` (the server acknowledged them) and persists
    /// the watermark. Returns how many records were removed.
    pub fn trim(&self, watermark: u64) -> Result<u64, SpoolError> {
        let (reply, rx) = mpsc::sync_channel(1);
        self.send(Request::Trim { watermark, reply })?;
        rx.recv().map_err(|_| SpoolError::Closed)?
    }

    fn send(&self, r: Request) -> Result<(), SpoolError> {
        self.tx
            .as_ref()
            .ok_or(SpoolError::Closed)?
            .send(r)
            .map_err(|_| SpoolError::Closed)
    }

    /// Reads entries from seq `from` on: at most `max_events` seqs and about `max_bytes`
    /// (always at least one entry if there is one). A dropped range that starts before `from`
    /// is returned from `from`.
    pub fn read(
        &self,
        from: u64,
        max_events: usize,
        max_bytes: usize,
    ) -> Result<Vec<Entry>, SpoolError> {
        let mut out = Vec::new();
        let (mut seqs, mut size) = (0usize, 0usize);
        // A dropped range starting below `from` may cover it.
        let mut it = self.db.raw_iterator();
        it.seek_for_prev(keys::event_key(from));
        let mut start = from;
        if let (Some(k), Some(v)) = (it.key(), it.value()) {
            if let (Some(seq), Some(keys::Record::Dropped { last, reason, .. })) =
                (keys::seq_of(k), keys::decode(v))
            {
                if seq < from && last >= from {
                    out.push(Entry::Dropped {
                        first: from,
                        last,
                        reason: DropReason::from_byte(reason),
                    });
                    seqs += (last - from + 1) as usize;
                    start = last + 1;
                }
            }
        }
        for item in self.db.iterator(IteratorMode::From(
            &keys::event_key(start),
            Direction::Forward,
        )) {
            if seqs >= max_events || (size >= max_bytes && !out.is_empty()) {
                break;
            }
            let (k, v) = item?;
            let Some(seq) = keys::seq_of(&k) else { break };
            match keys::decode(&v) {
                Some(keys::Record::Event { appended_ms, body }) => {
                    size += body.len();
                    seqs += 1;
                    out.push(Entry::Event {
                        seq,
                        appended_ms,
                        body: body.to_vec(),
                    });
                }
                Some(keys::Record::Dropped { last, reason, .. }) => {
                    seqs += (last.saturating_sub(seq) + 1) as usize;
                    out.push(Entry::Dropped {
                        first: seq,
                        last,
                        reason: DropReason::from_byte(reason),
                    });
                }
                // A record that does not decode is reported as what it is: corrupt.
                None => {
                    seqs += 1;
                    out.push(Entry::Dropped {
                        first: seq,
                        last: seq,
                        reason: DropReason::Corrupt,
                    });
                }
            }
        }
        Ok(out)
    }

    /// The spool's state now.
    pub fn meta(&self) -> SpoolMeta {
        let s = lock(&self.state);
        SpoolMeta {
            incarnation: s.incarnation,
            next_seq: s.next,
            acked: s.acked,
            events: s.events,
            bytes: s.bytes,
            oldest_ms: s.oldest_ms,
        }
    }

    /// The writer's counters.
    pub fn stats(&self) -> SpoolStats {
        lock(&self.state).stats
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &SpoolConfig {
        &self.cfg
    }

    /// Checks every record: it decodes, `check` accepts its body, and seqs are dense from the
    /// first held seq to `next - 1`.
    pub fn verify(
        &self,
        check: impl Fn(&[u8]) -> Result<(), String>,
    ) -> Result<VerifyReport, SpoolError> {
        let meta = self.meta();
        let mut r = VerifyReport {
            records: 0,
            first: None,
            last: None,
            gaps: Vec::new(),
            bad: BTreeMap::new(),
            next_seq: meta.next_seq,
            acked: meta.acked,
        };
        let mut expect: Option<u64> = None;
        for item in self
            .db
            .iterator(IteratorMode::From(&keys::event_key(0), Direction::Forward))
        {
            let (k, v) = item?;
            let Some(seq) = keys::seq_of(&k) else { break };
            r.records += 1;
            r.first.get_or_insert(seq);
            if let Some(e) = expect {
                if seq > e {
                    r.gaps.extend(SeqRange::new(e, seq - 1));
                }
            }
            let end = match keys::decode(&v) {
                Some(keys::Record::Event { body, .. }) => {
                    if let Err(why) = check(body) {
                        r.bad.insert(seq, why);
                    }
                    seq
                }
                Some(keys::Record::Dropped { last, .. }) if last >= seq => last,
                Some(keys::Record::Dropped { .. }) => {
                    r.bad
                        .insert(seq, "dropped range ends before it starts".into());
                    seq
                }
                None => {
                    r.bad.insert(seq, "record does not decode".into());
                    seq
                }
            };
            r.last = Some(end);
            expect = Some(end + 1);
        }
        if let Some(last) = r.last {
            if last >= meta.next_seq {
                r.bad
                    .insert(last, format!("seq beyond next_seq {}", meta.next_seq));
            }
        }
        Ok(r)
    }

    /// Replaces every record `verify` found bad by a dropped range (reason `Corrupt`), so the
    /// server is told they are gone and no valid record or seq is touched. Returns how many.
    pub fn repair(&self, report: &VerifyReport) -> Result<usize, SpoolError> {
        let (reply, rx) = mpsc::sync_channel(1);
        self.send(Request::Repair {
            seqs: report.bad.keys().copied().collect(),
            reply,
        })?;
        Ok(rx.recv().map_err(|_| SpoolError::Closed)?? as usize)
    }
}

/// What `verify` found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifyReport {
    /// Records held.
    pub records: u64,
    /// First held seq.
    pub first: Option<u64>,
    /// Last held seq (end of a dropped range included).
    pub last: Option<u64>,
    /// Seqs missing between held records (never expected: each is a bug or damage).
    pub gaps: Vec<SeqRange>,
    /// Records that fail, by seq, with the reason.
    pub bad: BTreeMap<u64, String>,
    /// `next_seq` from the metadata.
    pub next_seq: u64,
    /// Acknowledged watermark from the metadata.
    pub acked: u64,
}

impl VerifyReport {
    /// Whether nothing is wrong.
    pub fn is_clean(&self) -> bool {
        self.gaps.is_empty() && self.bad.is_empty()
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        drop(self.tx.take()); // the writer finishes what is queued, then exits
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}

/// A computed answer waiting for its batch to be written.
enum Answer {
    Append(
        mpsc::SyncSender<Result<Appended, SpoolError>>,
        Result<Appended, SpoolError>,
    ),
    /// Trims and repairs answer with a count of records.
    Count(
        mpsc::SyncSender<Result<u64, SpoolError>>,
        Result<u64, SpoolError>,
    ),
}

impl Answer {
    // A caller that stopped waiting is not an error of the spool: send results are ignored.
    fn send(self) {
        match self {
            Answer::Append(r, o) => drop(r.send(o)),
            Answer::Count(r, o) => drop(r.send(o)),
        }
    }

    fn fail(self, e: &rocksdb::Error) {
        match self {
            Answer::Append(r, _) => drop(r.send(Err(SpoolError::Db(e.clone())))),
            Answer::Count(r, _) => drop(r.send(Err(SpoolError::Db(e.clone())))),
        }
    }
}

struct Writer {
    db: Arc<DB>,
    state: Arc<Mutex<State>>,
    cfg: SpoolConfig,
}

impl Writer {
    fn run(self, rx: mpsc::Receiver<Request>) {
        while let Ok(first) = rx.recv() {
            let mut group = vec![first];
            while group.len() < self.cfg.max_group {
                match rx.try_recv() {
                    Ok(r) => group.push(r),
                    Err(_) => break,
                }
            }
            self.write_group(group);
        }
    }

    /// Writes a group: appends share one batch (one fsync); a trim is written on its own
    /// batch, so that every decision reads a database that already holds what came before it.
    fn write_group(&self, group: Vec<Request>) {
        let mut pending = Vec::new();
        for r in group {
            match r {
                Request::Append { .. } => pending.push(r),
                Request::Trim { .. } | Request::Repair { .. } => {
                    self.commit(std::mem::take(&mut pending));
                    self.commit(vec![r]);
                }
            }
        }
        self.commit(pending);
    }

    fn commit(&self, requests: Vec<Request>) {
        if requests.is_empty() {
            return;
        }
        let now = (self.cfg.clock)();
        let mut b = WriteBatch::default();
        let mut s = lock(&self.state);
        let before = (s.next, s.events, s.bytes, s.oldest_ms, s.stats, s.acked);
        let answers: Vec<Answer> = requests
            .into_iter()
            .map(|r| match r {
                Request::Trim { watermark, reply } => {
                    Answer::Count(reply, self.trim(&mut s, &mut b, watermark))
                }
                Request::Repair { seqs, reply } => {
                    Answer::Count(reply, self.repair(&mut s, &mut b, &seqs, now))
                }
                Request::Append {
                    bodies,
                    state,
                    reply,
                } => Answer::Append(reply, self.append(&mut s, &mut b, bodies, state, now)),
            })
            .collect();
        b.put(keys::NEXT, keys::u64_value(s.next));
        let mut w = WriteOptions::default();
        w.set_sync(self.cfg.durability == Durability::Fsync);
        let started = std::time::Instant::now();
        let written = self.db.write_opt(b, &w);
        if let Some(observe) = &self.cfg.observer {
            observe(GroupWrite {
                requests: answers.len(),
                write: started.elapsed(),
            });
        }
        if let Err(e) = written {
            // Nothing of the batch is stored: undo the in-memory changes and tell everyone.
            (s.next, s.events, s.bytes, s.oldest_ms, s.stats, s.acked) = before;
            drop(s);
            answers.into_iter().for_each(|a| a.fail(&e));
            return;
        }
        s.stats.groups += 1;
        drop(s);
        answers.into_iter().for_each(Answer::send);
    }

    fn append(
        &self,
        s: &mut State,
        b: &mut WriteBatch,
        bodies: Vec<Vec<u8>>,
        state: Vec<(String, Vec<u8>)>,
        now: u64,
    ) -> Result<Appended, SpoolError> {
        s.stats.appends += 1;
        if bodies.is_empty() {
            return Ok(Appended::Empty);
        }
        let size: u64 = bodies
            .iter()
            .map(|x| record_size(x.len() + keys::RECORD_HEADER))
            .sum();
        if size > self.cfg.max_bytes {
            return Err(SpoolError::TooLarge {
                len: size,
                limit: self.cfg.max_bytes,
            });
        }
        let too_old = |s: &State| {
            self.cfg.max_age.is_some_and(|age| {
                s.oldest_ms
                    .is_some_and(|o| now.saturating_sub(o) > age.as_millis() as u64)
            })
        };
        if s.bytes + size > self.cfg.max_bytes || too_old(s) {
            match self.cfg.policy {
                QuotaPolicy::Block => {
                    s.stats.refused += 1;
                    return Err(SpoolError::Full {
                        bytes: s.bytes,
                        limit: self.cfg.max_bytes,
                        oldest_age_ms: s.oldest_ms.map_or(0, |o| now.saturating_sub(o)),
                    });
                }
                QuotaPolicy::DropNewest => {
                    s.stats.dropped_newest += bodies.len() as u64;
                    tracing::warn!(
                        events = bodies.len(),
                        used_bytes = s.bytes,
                        limit_bytes = self.cfg.max_bytes,
                        "spool full: incoming events dropped (policy drop-newest)"
                    );
                    return Ok(Appended::Dropped {
                        events: bodies.len(),
                    });
                }
                QuotaPolicy::DropOldest => self.drop_oldest(s, b, size, now)?,
            }
        }
        let first = s.next;
        for body in &bodies {
            let rec = keys::event_record(now, body);
            s.bytes += record_size(rec.len());
            b.put(keys::event_key(s.next), rec);
            s.next += 1;
        }
        for (k, v) in state {
            b.put(keys::state_key(&k), v);
        }
        s.events += bodies.len() as u64;
        s.stats.events += bodies.len() as u64;
        s.oldest_ms.get_or_insert(now);
        Ok(Appended::Stored(SeqRange {
            start: first,
            end: s.next - 1,
        }))
    }

    /// Replaces the oldest held events by one dropped range until `incoming` bytes fit and no
    /// held event is older than the age limit. Reads committed records only: events appended
    /// earlier in this same group are never dropped for it.
    fn drop_oldest(
        &self,
        s: &mut State,
        b: &mut WriteBatch,
        incoming: u64,
        now: u64,
    ) -> Result<(), SpoolError> {
        let age_cutoff = self
            .cfg
            .max_age
            .map(|a| now.saturating_sub(a.as_millis() as u64));
        let mut range: Option<(u64, u64)> = None; // first..=last replaced
        let mut freed = 0u64;
        let (mut quota_n, mut age_n, mut events_n) = (0u64, 0u64, 0u64);
        let mut next_oldest = None;
        for item in self.db.iterator(IteratorMode::From(
            &keys::event_key(s.acked + 1),
            Direction::Forward,
        )) {
            let (k, v) = item?;
            let Some(seq) = keys::seq_of(&k) else { break };
            // The dropped-range record that replaces them takes room too.
            let over_quota =
                s.bytes.saturating_sub(freed) + incoming + DROPPED_RECORD_SIZE > self.cfg.max_bytes;
            let (last, appended, is_event) = match keys::decode(&v) {
                Some(keys::Record::Event { appended_ms, .. }) => (seq, Some(appended_ms), true),
                Some(keys::Record::Dropped { last, .. }) => (last.max(seq), None, false),
                None => (seq, None, false),
            };
            let too_old = appended.zip(age_cutoff).is_some_and(|(a, c)| a < c);
            if !over_quota && !too_old && is_event {
                next_oldest = appended;
                break;
            }
            freed += record_size(v.len());
            if is_event {
                events_n += 1;
                if over_quota {
                    quota_n += 1;
                } else {
                    age_n += 1;
                }
            }
            range = Some((range.map_or(seq, |r| r.0), last));
        }
        if let Some((first, last)) = range {
            let reason = if quota_n > 0 {
                DropReason::Quota
            } else {
                DropReason::Age
            };
            b.delete_range(keys::event_key(first), keys::event_key(last + 1));
            let rec = keys::dropped_record(now, last, reason.byte());
            s.bytes = s.bytes.saturating_sub(freed) + record_size(rec.len());
            b.put(keys::event_key(first), rec);
            s.events = s.events.saturating_sub(events_n);
            s.stats.dropped_oldest_quota += quota_n;
            s.stats.dropped_oldest_age += age_n;
            tracing::warn!(
                first,
                last,
                by_quota = quota_n,
                by_age = age_n,
                "spool full: oldest unacknowledged events dropped (policy drop-oldest)"
            );
            s.oldest_ms = next_oldest;
        }
        Ok(())
    }

    /// Replaces the records at `seqs` by one-seq dropped ranges (reason `Corrupt`), keeping
    /// the counters true.
    fn repair(
        &self,
        s: &mut State,
        b: &mut WriteBatch,
        seqs: &[u64],
        now: u64,
    ) -> Result<u64, SpoolError> {
        let mut repaired = 0;
        for &seq in seqs {
            let Some(old) = self.db.get(keys::event_key(seq))? else {
                continue; // trimmed meanwhile
            };
            if matches!(keys::decode(&old), Some(keys::Record::Event { .. })) {
                s.events = s.events.saturating_sub(1);
            }
            let rec = keys::dropped_record(now, seq, DropReason::Corrupt.byte());
            s.bytes = s.bytes.saturating_sub(record_size(old.len())) + record_size(rec.len());
            b.put(keys::event_key(seq), rec);
            repaired += 1;
        }
        s.oldest_ms = self.oldest_event_after(s.acked, seqs)?;
        Ok(repaired)
    }

    /// Append time of the first held event after `acked`, ignoring `except`.
    fn oldest_event_after(&self, acked: u64, except: &[u64]) -> Result<Option<u64>, SpoolError> {
        for item in self.db.iterator(IteratorMode::From(
            &keys::event_key(acked + 1),
            Direction::Forward,
        )) {
            let (k, v) = item?;
            let Some(seq) = keys::seq_of(&k) else { break };
            if let (false, Some(keys::Record::Event { appended_ms, .. })) =
                (except.contains(&seq), keys::decode(&v))
            {
                return Ok(Some(appended_ms));
            }
        }
        Ok(None)
    }

    fn trim(&self, s: &mut State, b: &mut WriteBatch, watermark: u64) -> Result<u64, SpoolError> {
        let watermark = watermark.min(s.next.saturating_sub(1));
        if watermark <= s.acked {
            return Ok(0);
        }
        let (mut removed, mut freed, mut events) = (0u64, 0u64, 0u64);
        let mut oldest = None;
        let mut split: Option<(u64, Vec<u8>)> = None;
        for item in self.db.iterator(IteratorMode::From(
            &keys::event_key(s.acked + 1),
            Direction::Forward,
        )) {
            let (k, v) = item?;
            let Some(seq) = keys::seq_of(&k) else { break };
            if seq > watermark {
                if let Some(keys::Record::Event { appended_ms, .. }) = keys::decode(&v) {
                    oldest = Some(appended_ms);
                    break;
                }
                continue;
            }
            removed += 1;
            freed += record_size(v.len());
            match keys::decode(&v) {
                Some(keys::Record::Event { .. }) => events += 1,
                // A dropped range reaching past the watermark keeps its unacknowledged part.
                Some(keys::Record::Dropped {
                    last,
                    reason,
                    appended_ms,
                }) if last > watermark => {
                    split = Some((
                        watermark + 1,
                        keys::dropped_record(appended_ms, last, reason),
                    ));
                }
                _ => {}
            }
        }
        b.delete_range(keys::event_key(s.acked + 1), keys::event_key(watermark + 1));
        if let Some((seq, rec)) = split {
            s.bytes += record_size(rec.len());
            b.put(keys::event_key(seq), rec);
        }
        b.put(keys::ACKED, keys::u64_value(watermark));
        s.acked = watermark;
        s.bytes = s.bytes.saturating_sub(freed);
        s.events = s.events.saturating_sub(events);
        s.oldest_ms = oldest;
        Ok(removed)
    }
}

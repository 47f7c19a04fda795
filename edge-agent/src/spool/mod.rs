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

mod handle;
pub mod keys;
mod quota;
mod salvage;
mod verify;
mod writer;

use handle::Handle;
pub use salvage::Salvage;
pub use verify::VerifyReport;
use writer::Writer;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use edgesync_core::{Incarnation, SeqRange};
use rocksdb::{
    BlockBasedOptions, Cache, DBRecoveryMode, Direction, IteratorMode, Options, ReadOptions,
    WriteBatch, WriteOptions, DB,
};

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

/// What bounds the spool's RocksDB memory, so that the agent's memory does not grow with what
/// it holds: RocksDB keeps at most about `cache_bytes + 2 * write_buffer_bytes` (its defaults
/// are a 32 MiB cache, index and filter blocks beside it for every table file, and two 64 MiB
/// memtables: an agent offline with a million events held about 80 MiB more than one with a
/// hundred).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpoolMemory {
    /// One LRU cache for data, index and filter blocks.
    pub cache_bytes: usize,
    /// One memtable; there are at most two (the one written and the one being flushed).
    pub write_buffer_bytes: usize,
    /// Table files RocksDB keeps open (each holds a descriptor and its table reader).
    pub max_open_files: i32,
}

impl Default for SpoolMemory {
    /// 8 MiB of cache, two 8 MiB memtables, 256 open files.
    fn default() -> Self {
        Self {
            cache_bytes: 8 << 20,
            write_buffer_bytes: 8 << 20,
            max_open_files: 256,
        }
    }
}

impl SpoolMemory {
    /// The bytes RocksDB may hold: the cache and both memtables.
    pub fn budget(&self) -> usize {
        self.cache_bytes
            .saturating_add(self.write_buffer_bytes.saturating_mul(2))
    }

    /// These bounds applied to `opts`.
    fn apply(&self, opts: &mut Options) {
        let mut table = BlockBasedOptions::default();
        table.set_block_cache(&Cache::new_lru_cache(self.cache_bytes));
        // Index and filter blocks in the cache, not beside it for each table file (where they
        // grow with the data); L0's pinned, since every read looks at them.
        table.set_cache_index_and_filter_blocks(true);
        table.set_pin_l0_filter_and_index_blocks_in_cache(true);
        opts.set_block_based_table_factory(&table);
        opts.set_write_buffer_size(self.write_buffer_bytes);
        opts.set_max_write_buffer_number(2);
        // A spool within its quota has a few dozen table files; keep descriptors bounded too.
        opts.set_max_open_files(self.max_open_files);
    }
}

/// Options for reads that visit every record once (the open's count, `verify`): their blocks
/// are not kept in the cache, which holds what the uplink reads again.
fn scan_options() -> ReadOptions {
    let mut r = ReadOptions::default();
    r.fill_cache(false);
    r
}

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
    /// What bounds RocksDB's memory.
    pub memory: SpoolMemory,
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
            .field("memory", &self.memory)
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
            memory: SpoolMemory::default(),
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
    /// The database is being opened again after a failed write, or that failed (the disk is
    /// still full): the next write tries again.
    #[error("spool storage is being reopened after a write error")]
    Reopen,
    /// Mending a damaged spool failed on the file system (a rename or removal).
    #[error("salvage the damaged spool: {0}")]
    Salvage(String),
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

impl SpoolMeta {
    /// Seqs assigned that the server has not acknowledged.
    pub fn unacked(&self) -> u64 {
        (self.next_seq - 1).saturating_sub(self.acked)
    }

    /// Age of the oldest held event at `now_ms`, if any.
    pub fn oldest_age_ms(&self, now_ms: u64) -> Option<u64> {
        self.oldest_ms.map(|o| now_ms.saturating_sub(o))
    }
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
    db: Arc<Handle>,
    state: Arc<Mutex<State>>,
    tx: Option<mpsc::Sender<Request>>,
    writer: Option<JoinHandle<()>>,
    cfg: SpoolConfig,
    salvage: Salvage,
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

/// A u64 meta value; `None` when absent, an error when present but not 8 bytes.
/// The end and reason of the dropped range that starts below `from` and covers it, if any.
/// Looked for backwards only when a forward seek finds no record starting at `from`: a
/// backward seek steps over every trimmed seq below `from` (a trim's range deletion leaves
/// the keys in place until a compaction), and doing it on every read was two thirds of an
/// agent's CPU at 1,000 events/s (one batch per append).
fn dropped_over(db: &DB, from: u64) -> Option<(u64, u8)> {
    let key = keys::event_key(from);
    let mut it = db.raw_iterator();
    it.seek(key);
    if it.key().and_then(keys::seq_of) == Some(from) {
        return None;
    }
    it.seek_for_prev(key);
    match (keys::seq_of(it.key()?)?, keys::decode(it.value()?)?) {
        (seq, keys::Record::Dropped { last, reason, .. }) if seq < from && last >= from => {
            Some((last, reason))
        }
        _ => None,
    }
}

fn meta_u64(db: &DB, key: &'static [u8], name: &'static str) -> Result<Option<u64>, SpoolError> {
    match db.get(key)? {
        None => Ok(None),
        Some(v) => keys::read_u64(&v)
            .map(Some)
            .ok_or(SpoolError::CorruptMeta { key: name }),
    }
}

/// The spool's incarnation: read from a formatted spool, or drawn and written (with the format
/// version and empty counters, synced) into a new one.
fn incarnation(db: &DB) -> Result<Incarnation, SpoolError> {
    match db.get(keys::FORMAT)? {
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
            Ok(inc)
        }
        Some(v) if v.as_slice() == [keys::FORMAT_VERSION] => {
            let corrupt = SpoolError::CorruptMeta { key: "incarnation" };
            let raw = meta_u64(db, keys::INCARNATION, "incarnation")?.ok_or(corrupt)?;
            Incarnation::new(raw).map_err(|_| SpoolError::CorruptMeta { key: "incarnation" })
        }
        Some(v) => Err(SpoolError::Format {
            found: v.first().copied().unwrap_or(0),
            expected: keys::FORMAT_VERSION,
        }),
    }
}

/// What a scan of the stored records finds at open.
struct Held {
    /// Past every stored seq, whatever the stored `next` said (a crash may have left it behind).
    next: u64,
    events: u64,
    bytes: u64,
    oldest_ms: Option<u64>,
    /// Seqs above `acked` and below `next` that no record covers: lost to damage (the spool
    /// is dense otherwise, see [`salvage`]).
    gaps: Vec<SeqRange>,
}

/// What an open reads: the incarnation, the acknowledged watermark, what is held.
type Loaded = (Incarnation, u64, Held);

/// Counts what is held, moves `next` past every stored seq and finds the seqs above `acked`
/// that no record covers.
fn recover(db: &DB, stored_next: u64, acked: u64) -> Result<Held, SpoolError> {
    let mut held = Held {
        next: stored_next,
        events: 0,
        bytes: 0,
        oldest_ms: None,
        gaps: Vec::new(),
    };
    let mut expect = acked + 1;
    let first = keys::event_key(0);
    let from = IteratorMode::From(&first, Direction::Forward);
    for item in db.iterator_opt(from, scan_options()) {
        let (k, v) = item?;
        let Some(seq) = keys::seq_of(&k) else { break };
        if seq > expect {
            held.gaps.extend(SeqRange::new(expect, seq - 1));
        }
        held.bytes += record_size(v.len());
        let last = match keys::decode(&v) {
            Some(keys::Record::Event { appended_ms, .. }) => {
                held.events += 1;
                held.oldest_ms.get_or_insert(appended_ms);
                seq
            }
            Some(keys::Record::Dropped { last, .. }) => last.max(seq),
            None => seq,
        };
        held.next = held.next.max(last + 1);
        expect = expect.max(last + 1);
    }
    if held.next > expect {
        held.gaps.extend(SeqRange::new(expect, held.next - 1));
    }
    Ok(held)
}

impl Spool {
    /// Opens (or creates) the spool in `dir`, mending what damage it finds ([`salvage`]):
    /// what it did is [`Spool::salvage`].
    pub fn open(dir: &Path, cfg: SpoolConfig) -> Result<Self, SpoolError> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        // Replay every intact WAL record, skipping a torn or damaged one (see `salvage`).
        opts.set_wal_recovery_mode(DBRecoveryMode::SkipAnyCorruptedRecord);
        opts.set_compression_type(rocksdb::DBCompressionType::Zstd);
        cfg.memory.apply(&mut opts);
        let mut s = Salvage::default();
        salvage::finish_swap(dir, &opts)?;
        let db = match salvage::open_repairing(dir, &opts, &mut s)? {
            Some(db) => db,
            None => Self::fresh(dir, &opts, &mut s)?,
        };
        let (db, loaded) = match Self::load(&db) {
            Ok(loaded) => (db, loaded),
            Err(e) if salvage::is_corruption(&e) => Self::salvaged(db, dir, &opts, &mut s, &e)?,
            Err(e) => return Err(e),
        };
        Self::start(db, loaded, cfg, Some((s, dir.to_owned(), opts)))
    }

    /// Copies what `db` still holds into a new database in its place (or starts anew if even
    /// that is unreadable where it matters), and loads it.
    fn salvaged(
        db: DB,
        dir: &Path,
        opts: &Options,
        s: &mut Salvage,
        cause: &SpoolError,
    ) -> Result<(DB, Loaded), SpoolError> {
        tracing::error!(error = %cause, "spool unreadable in places: salvaging");
        let db = match salvage::rebuild(db, dir, opts, s) {
            Ok(()) => DB::open(opts, dir)?,
            Err(e) if salvage::is_corruption(&e) => Self::fresh(dir, opts, s)?,
            Err(e) => return Err(e),
        };
        match Self::load(&db) {
            Ok(loaded) => Ok((db, loaded)),
            // Still unreadable where it matters (its identity): start anew.
            Err(e) if salvage::is_corruption(&e) && !s.set_aside => {
                tracing::error!(error = %e, "salvaged spool still unreadable");
                drop(db);
                let db = Self::fresh(dir, opts, s)?;
                let loaded = Self::load(&db)?;
                Ok((db, loaded))
            }
            Err(e) => Err(e),
        }
    }

    /// Sets the spool in `dir` aside and opens a new one there.
    fn fresh(dir: &Path, opts: &Options, s: &mut Salvage) -> Result<DB, SpoolError> {
        salvage::finish_swap(dir, opts)?;
        salvage::set_aside(dir)?;
        s.set_aside = true;
        Ok(DB::open(opts, dir)?)
    }

    /// Reads everything `start` reads: identity, meta, and what is held.
    fn load(db: &DB) -> Result<Loaded, SpoolError> {
        let incarnation = incarnation(db)?;
        let next = meta_u64(db, keys::NEXT, "next")?.unwrap_or(1).max(1);
        let acked = meta_u64(db, keys::ACKED, "acked")?.unwrap_or(0);
        let held = recover(db, next, acked)?;
        Ok((incarnation, acked, held))
    }

    /// Opens the spool in `dir` for reading only, beside a running agent (RocksDB's read-only
    /// mode takes no lock and sees what was flushed or in the WAL when it opened). Writes,
    /// trims and repairs fail with [`SpoolError::Closed`].
    pub fn open_read_only(dir: &Path) -> Result<Self, SpoolError> {
        if !dir.join("CURRENT").exists() {
            return Err(SpoolError::NotASpool(dir.to_owned()));
        }
        let mut opts = Options::default();
        SpoolMemory::default().apply(&mut opts);
        let db = DB::open_for_read_only(&opts, dir, false)?;
        if db.get(keys::FORMAT)?.is_none() {
            return Err(SpoolError::NotASpool(dir.to_owned()));
        }
        let loaded = Self::load(&db)?;
        Self::start(db, loaded, SpoolConfig::default(), None)
    }

    /// Starts on `db`: writable with the writer thread when `writable` gives the salvage so
    /// far (completed here: uncovered seqs become `Corrupt` dropped ranges) and how to open
    /// the database again; read-only without.
    fn start(
        db: DB,
        (incarnation, acked, mut held): Loaded,
        cfg: SpoolConfig,
        writable: Option<(Salvage, PathBuf, Options)>,
    ) -> Result<Self, SpoolError> {
        let (mut salvage, reopen) = match writable {
            Some((s, dir, opts)) => (s, Some((dir, opts))),
            None => (Salvage::default(), None),
        };
        let writable = reopen.is_some();
        if writable && !held.gaps.is_empty() {
            salvage::mark_corrupt(&db, &held.gaps, (cfg.clock)())?;
            held.bytes += DROPPED_RECORD_SIZE * held.gaps.len() as u64;
            salvage.corrupt = std::mem::take(&mut held.gaps);
        }
        let state = Arc::new(Mutex::new(State {
            incarnation,
            next: held.next,
            acked,
            events: held.events,
            bytes: held.bytes,
            oldest_ms: held.oldest_ms,
            stats: SpoolStats::default(),
        }));
        let db = Arc::new(Handle::new(db, reopen));
        let (tx, writer) = if writable {
            let (tx, rx) = mpsc::channel();
            let (db, state, cfg) = (Arc::clone(&db), Arc::clone(&state), cfg.clone());
            let writer = std::thread::Builder::new()
                .name("spool-writer".into())
                .spawn(move || Writer { db, state, cfg }.run(rx))
                .map_err(SpoolError::Thread)?;
            (Some(tx), Some(writer))
        } else {
            (None, None)
        };
        Ok(Self {
            db,
            state,
            tx,
            writer,
            cfg,
            salvage,
        })
    }

    /// What the open found damaged and mended (nothing for a healthy spool).
    pub fn salvage(&self) -> &Salvage {
        &self.salvage
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
            .db()?
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
        let db = self.db.db()?;
        let mut start = from;
        if let Some((last, reason)) = dropped_over(&db, from) {
            out.push(Entry::Dropped {
                first: from,
                last,
                reason: DropReason::from_byte(reason),
            });
            seqs += (last - from + 1) as usize;
            start = last + 1;
        }
        for item in db.iterator(IteratorMode::From(
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

    /// The refusal an append would get now under the block policy because the spool is
    /// at its quota or holds an event older than its age limit (`None` otherwise, and under
    /// the drop policies). A look before appending, not a promise: a trim may make room
    /// meanwhile, and an append larger than what is left is refused by the append itself.
    pub fn refusal(&self) -> Option<SpoolError> {
        if self.cfg.policy != QuotaPolicy::Block {
            return None;
        }
        let now_ms = (self.cfg.clock)();
        let m = self.meta();
        let age = m.oldest_ms.map_or(0, |o| now_ms.saturating_sub(o));
        let too_old = self.cfg.max_age.is_some_and(|a| age > a.as_millis() as u64);
        (m.bytes >= self.cfg.max_bytes || too_old).then_some(SpoolError::Full {
            bytes: m.bytes,
            limit: self.cfg.max_bytes,
            oldest_age_ms: age,
        })
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

//! Salvage at open: a spool RocksDB cannot read whole (a flipped bit in a table or WAL file, a
//! truncated WAL, a damaged MANIFEST) is mended by the agent as it starts, never by a person.
//!
//! Each step runs only when the one before it found damage:
//! 1. The WAL is replayed with `SkipAnyCorruptedRecord`: a torn or flipped record is skipped and
//!    every later one kept. (Point-in-time recovery would stop at the first bad record and drop
//!    everything written after it, `m/next` included, and so hand out seqs again.)
//! 2. An open that fails with `Corruption` runs RocksDB's repairer, which rebuilds the MANIFEST
//!    from the files it can read, and opens again.
//! 3. A read that fails while the spool is loaded (a block whose checksum does not match) makes
//!    the spool be copied, every key that can still be read, into a new database beside it,
//!    which replaces it: a damaged table would fail every compaction that touches it, and the
//!    writer with them. Past a bad block the copy probes the following seqs one `get` at a
//!    time until it reads a record again. The damaged database is kept as `<dir>.corrupt`
//!    (one, replaced by the next salvage) for diagnosis.
//! 4. Every seq from the acknowledged watermark to `m/next` that no record covers becomes a
//!    dropped range with reason `Corrupt` (written synced before the spool serves): the server
//!    learns exactly which events are gone and the uplink's batches stay dense.
//!
//! When the spool's identity (`m/format`, `m/incarnation`) cannot be read, or it cannot be
//! opened even after repair, nothing of it can be sent under its replica: it is set aside as
//! `<dir>.corrupt` and the agent starts a new spool (a new incarnation). A state key (`s/…`)
//! in a bad block is lost with it; the agent then starts that state from empty (see
//! ARCHITECTURE.md, "Disk faults at the edge", for what that costs).
//!
//! The swap is two renames (`<dir>` → `<dir>.corrupt`, `<dir>.salvage` → `<dir>`); an open that
//! finds `<dir>.salvage` complete and `<dir>` missing finishes it.

use std::path::{Path, PathBuf};

use edgesync_core::SeqRange;
use rocksdb::{ErrorKind, Options, WriteBatch, WriteOptions, DB};

use super::{keys, SpoolError};

/// Seqs probed past a bad block when the spool's `m/next` cannot be read either.
const PROBE_WITHOUT_NEXT: u64 = 1 << 20;
/// Keys per write while copying.
const COPY_BATCH: usize = 1024;
/// Marks a copy as complete (written last, synced).
const COMPLETE: &[u8] = b"m/salvaged";

/// What salvage did at open; all zero for a healthy spool.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Salvage {
    /// RocksDB's repairer ran (the open failed with `Corruption`).
    pub repaired: bool,
    /// The readable keys were copied into a new database (reads failed).
    pub rebuilt: bool,
    /// Reads that failed.
    pub failed_reads: u64,
    /// Seqs no record covered, now dropped ranges with reason `Corrupt`.
    pub corrupt: Vec<SeqRange>,
    /// The state keys after a bad block could not be read.
    pub states_lost: bool,
    /// The spool was set aside and a new one started.
    pub set_aside: bool,
}

impl Salvage {
    /// Whether anything was found.
    pub fn found_damage(&self) -> bool {
        *self != Salvage::default()
    }

    /// Seqs turned into `Corrupt` dropped ranges.
    pub fn corrupt_seqs(&self) -> u64 {
        self.corrupt.iter().map(SeqRange::len).sum()
    }
}

/// Whether `e` is RocksDB reporting damaged data.
pub(super) fn is_corruption(e: &SpoolError) -> bool {
    matches!(e, SpoolError::Db(e) if e.kind() == ErrorKind::Corruption)
        || matches!(e, SpoolError::CorruptMeta { .. })
}

fn sibling(dir: &Path, suffix: &str) -> PathBuf {
    let mut s = dir.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

fn io(what: &str, path: &Path, e: std::io::Error) -> SpoolError {
    SpoolError::Salvage(format!("{what} {}: {e}", path.display()))
}

/// Finishes a swap a crash interrupted, and removes a copy that never completed.
pub(super) fn finish_swap(dir: &Path, opts: &Options) -> Result<(), SpoolError> {
    let copy = sibling(dir, ".salvage");
    if !copy.exists() {
        return Ok(());
    }
    let complete = DB::open(opts, &copy)
        .and_then(|db| db.get(COMPLETE))
        .is_ok_and(|v| v.is_some());
    if complete && !dir.exists() {
        std::fs::rename(&copy, dir).map_err(|e| io("rename", &copy, e))?;
    } else {
        std::fs::remove_dir_all(&copy).map_err(|e| io("remove", &copy, e))?;
    }
    Ok(())
}

/// Opens `dir`, running RocksDB's repairer if the open finds damage; `None` if even that fails.
pub(super) fn open_repairing(
    dir: &Path,
    opts: &Options,
    s: &mut Salvage,
) -> Result<Option<DB>, SpoolError> {
    match DB::open(opts, dir) {
        Ok(db) => return Ok(Some(db)),
        Err(e) if e.kind() == ErrorKind::Corruption => {
            tracing::error!(dir = %dir.display(), error = %e, "spool damaged: repairing");
        }
        Err(e) => return Err(e.into()),
    }
    s.repaired = true;
    if let Err(e) = DB::repair(opts, dir) {
        tracing::error!(error = %e, "spool repair failed");
        return Ok(None);
    }
    match DB::open(opts, dir) {
        Ok(db) => Ok(Some(db)),
        Err(e) => {
            tracing::error!(error = %e, "spool still unreadable after repair");
            Ok(None)
        }
    }
}

/// Moves `dir` aside as `<dir>.corrupt` (replacing an older one).
pub(super) fn set_aside(dir: &Path) -> Result<(), SpoolError> {
    let aside = sibling(dir, ".corrupt");
    if aside.exists() {
        std::fs::remove_dir_all(&aside).map_err(|e| io("remove", &aside, e))?;
    }
    std::fs::rename(dir, &aside).map_err(|e| io("rename", dir, e))?;
    tracing::error!(kept = %aside.display(), "spool set aside");
    Ok(())
}

/// Copies every readable key of `db` (at `dir`) into a new database that replaces it, noting
/// in `s` the failed reads and whether state keys were lost; `Err(CorruptMeta)` when the
/// spool's identity cannot be read.
pub(super) fn rebuild(
    db: DB,
    dir: &Path,
    opts: &Options,
    s: &mut Salvage,
) -> Result<(), SpoolError> {
    let copy = sibling(dir, ".salvage");
    if copy.exists() {
        std::fs::remove_dir_all(&copy).map_err(|e| io("remove", &copy, e))?;
    }
    let out = DB::open(opts, &copy)?;
    let mut w = Copier {
        out: &out,
        batch: WriteBatch::default(),
    };
    let next = copy_meta(&db, &mut w, s)?;
    copy_events(&db, &mut w, next, s)?;
    copy_states(&db, &mut w, s)?;
    w.put(COMPLETE, &[1])?;
    w.flush()?;
    drop(db);
    drop(out);
    set_aside(dir)?;
    std::fs::rename(&copy, dir).map_err(|e| io("rename", &copy, e))?;
    s.rebuilt = true;
    Ok(())
}

struct Copier<'a> {
    out: &'a DB,
    batch: WriteBatch,
}

impl Copier<'_> {
    fn put(&mut self, k: &[u8], v: &[u8]) -> Result<(), SpoolError> {
        self.batch.put(k, v);
        if self.batch.len() >= COPY_BATCH {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), SpoolError> {
        let mut o = WriteOptions::default();
        o.set_sync(true);
        self.out.write_opt(std::mem::take(&mut self.batch), &o)?;
        Ok(())
    }
}

/// The four meta keys, read one by one; returns `m/next` if readable.
fn copy_meta(db: &DB, w: &mut Copier, s: &mut Salvage) -> Result<Option<u64>, SpoolError> {
    let mut next = None;
    for key in [keys::FORMAT, keys::INCARNATION, keys::NEXT, keys::ACKED] {
        match db.get(key) {
            Ok(Some(v)) => {
                if key == keys::NEXT {
                    next = keys::read_u64(&v);
                }
                w.put(key, &v)?;
            }
            Ok(None) => {}
            Err(e) => {
                s.failed_reads += 1;
                if key == keys::FORMAT || key == keys::INCARNATION {
                    tracing::error!(error = %e, "spool identity unreadable");
                    return Err(SpoolError::CorruptMeta { key: "incarnation" });
                }
            }
        }
    }
    Ok(next)
}

/// Every readable event record; past a bad block, probes seq by seq up to `next`.
fn copy_events(
    db: &DB,
    w: &mut Copier,
    next: Option<u64>,
    s: &mut Salvage,
) -> Result<(), SpoolError> {
    let mut it = db.raw_iterator();
    let mut cursor = 0u64;
    it.seek(keys::event_key(0));
    loop {
        if it.valid() {
            let (Some(k), Some(v)) = (it.key(), it.value()) else {
                break;
            };
            let Some(seq) = keys::seq_of(k) else { break };
            w.put(k, v)?;
            cursor = covered_end(seq, v) + 1;
            it.next();
            continue;
        }
        if it.status().is_ok() {
            break;
        }
        s.failed_reads += 1;
        let bound = next.unwrap_or(cursor.saturating_add(PROBE_WITHOUT_NEXT));
        match probe(db, w, cursor, bound, s)? {
            Some(resume) => {
                cursor = resume;
                it.seek(keys::event_key(resume));
            }
            None => break,
        }
    }
    Ok(())
}

/// Gets seqs `from..bound` one at a time until one is readable; copies it and returns the seq
/// after what it covers.
fn probe(
    db: &DB,
    w: &mut Copier,
    from: u64,
    bound: u64,
    s: &mut Salvage,
) -> Result<Option<u64>, SpoolError> {
    for seq in from..bound {
        match db.get(keys::event_key(seq)) {
            Ok(Some(v)) => {
                w.put(&keys::event_key(seq), &v)?;
                return Ok(Some(covered_end(seq, &v) + 1));
            }
            Ok(None) => {}
            Err(_) => s.failed_reads += 1,
        }
    }
    Ok(None)
}

/// The last seq a record at `seq` covers.
fn covered_end(seq: u64, v: &[u8]) -> u64 {
    match keys::decode(v) {
        Some(keys::Record::Dropped { last, .. }) => last.max(seq),
        _ => seq,
    }
}

/// The state keys up to the first bad block.
fn copy_states(db: &DB, w: &mut Copier, s: &mut Salvage) -> Result<(), SpoolError> {
    let mut it = db.raw_iterator();
    it.seek(keys::state_key(""));
    while it.valid() {
        let (Some(k), Some(v)) = (it.key(), it.value()) else {
            break;
        };
        if keys::state_name(k).is_none() {
            break;
        }
        w.put(k, v)?;
        it.next();
    }
    if it.status().is_err() {
        s.failed_reads += 1;
        s.states_lost = true;
        tracing::error!("spool state keys after a bad block are lost");
    }
    Ok(())
}

/// Writes each gap as a dropped range with reason `Corrupt`, synced.
pub(super) fn mark_corrupt(db: &DB, gaps: &[SeqRange], now_ms: u64) -> Result<(), SpoolError> {
    let mut b = WriteBatch::default();
    for g in gaps {
        let rec = keys::dropped_record(now_ms, g.end, super::DropReason::Corrupt.byte());
        b.put(keys::event_key(g.start), rec);
        tracing::error!(
            first = g.start,
            last = g.end,
            "spool records unreadable: dropped as corrupt"
        );
    }
    let mut o = WriteOptions::default();
    o.set_sync(true);
    db.write_opt(b, &o)?;
    Ok(())
}

//! The reconciler's RocksDB store: per input partition the next offset to read and the
//! replicas' protocol state (device stage), per CRDT key the converged state (key stage),
//! written together in one synced batch so that progress and state never disagree.
//!
//! Keys: `o/<stage>/<partition>` next input offset; `c/<partition>` next offset of the events
//! partition after the last event this store knows was emitted; `r/<partition>/<device>\0
//! <incarnation>` a replica's state; `s/<key>` a key's converged state record; `i` this
//! store's group instance id (UTF-8), made once.
//!
//! Memory is bounded by [`StoreMemory`]: one LRU block cache holds data, index and filter
//! blocks alike (so neither the number of keys nor the number of table files grows memory
//! outside it), the memtables are bounded in size and number, and so are open table files.
//! Nothing here keeps a per-key map: a key's state is read from RocksDB when a delta for it
//! arrives.

use std::collections::BTreeMap;
use std::path::Path;

use edgesync_core::{DeviceId, DropReason, Incarnation, ReplicaContext, ReplicaId};
use edgesync_protocol::ReplicaState;
use edgesync_schemas::{Codec, Framing, StateRecord};
use rocksdb::{
    BlockBasedOptions, Cache, DBRecoveryMode, Direction, IteratorMode, Options, WriteBatch,
    WriteOptions, DB,
};

/// Store failures.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// RocksDB failed.
    #[error("state store: {0}")]
    Db(#[from] rocksdb::Error),
    /// A stored value does not decode (the store is damaged or from another version).
    #[error("state store: {what} does not decode: {why}")]
    Corrupt {
        /// Which value.
        what: String,
        /// Why.
        why: String,
    },
}

/// Which consumer stage an offset belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Deltas topic, partitioned by device.
    Device,
    /// State-deltas topic, partitioned by key.
    Key,
}

impl Stage {
    fn tag(self) -> u8 {
        match self {
            Stage::Device => b'd',
            Stage::Key => b'k',
        }
    }
}

/// What bounds the store's RocksDB memory (`[store]` in the configuration). RocksDB's own
/// memory is at most about [`StoreMemory::budget`]: the block cache plus the memtables; table
/// files open at once cost a file descriptor and a small reader each on top.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoreMemory {
    /// The LRU block cache: data blocks, and the index and filter blocks of every table file
    /// (charged to the cache rather than held beside it, so they cannot grow past it).
    pub block_cache_bytes: usize,
    /// One memtable (RocksDB's `write_buffer_size`): writes collect here before a flush.
    pub write_buffer_bytes: usize,
    /// Most memtables at once, the one being written and those being flushed
    /// (`max_write_buffer_number`, at least 2).
    pub max_write_buffers: usize,
    /// Most table files open at once (`max_open_files`; -1 keeps every file open).
    pub max_open_files: i32,
}

impl Default for StoreMemory {
    /// 256 MiB of block cache and two 64 MiB memtables (384 MiB in all), 512 open files.
    fn default() -> Self {
        Self {
            block_cache_bytes: 256 << 20,
            write_buffer_bytes: 64 << 20,
            max_write_buffers: 2,
            max_open_files: 512,
        }
    }
}

impl StoreMemory {
    /// The bytes RocksDB may hold in memory: the block cache plus every memtable.
    pub fn budget(&self) -> usize {
        self.block_cache_bytes.saturating_add(
            self.write_buffer_bytes
                .saturating_mul(self.max_write_buffers),
        )
    }

    /// These bounds applied to `opts`.
    fn apply(&self, opts: &mut Options) {
        let cache = Cache::new_lru_cache(self.block_cache_bytes);
        let mut table = BlockBasedOptions::default();
        table.set_block_cache(&cache);
        // Index and filter blocks live in the cache too (by default each open table file keeps
        // its own outside it, which grows with the data); L0's stay pinned, since every read
        // looks at them, and they go in at high priority so data blocks are evicted first.
        table.set_cache_index_and_filter_blocks(true);
        table.set_cache_index_and_filter_blocks_with_high_priority(true);
        table.set_pin_l0_filter_and_index_blocks_in_cache(true);
        // The key stage looks up every key it is sent, most of them new at first: a bloom
        // filter (10 bits a key, in the cache) answers "absent" without reading a data block.
        table.set_bloom_filter(10.0, false);
        opts.set_block_based_table_factory(&table);
        opts.set_write_buffer_size(self.write_buffer_bytes);
        opts.set_max_write_buffer_number(self.max_write_buffers.min(i32::MAX as usize) as i32);
        opts.set_max_open_files(self.max_open_files);
    }
}

/// RocksDB's own count of the memory it holds ([`Store::memory_usage`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryUsage {
    /// The block cache's capacity (the configured size).
    pub block_cache_capacity: u64,
    /// Bytes in the block cache (data, index and filter blocks).
    pub block_cache: u64,
    /// Bytes of every memtable, active and being flushed.
    pub memtables: u64,
    /// Table readers' memory outside the block cache.
    pub table_readers: u64,
}

/// The store.
#[derive(Debug)]
pub struct Store {
    db: DB,
}

fn offset_key(stage: Stage, p: i32) -> Vec<u8> {
    let mut k = vec![b'o', b'/', stage.tag(), b'/'];
    k.extend_from_slice(&p.to_be_bytes());
    k
}

fn checkpoint_key(p: i32) -> Vec<u8> {
    let mut k = b"c/".to_vec();
    k.extend_from_slice(&p.to_be_bytes());
    k
}

fn replica_prefix(p: i32) -> Vec<u8> {
    let mut k = b"r/".to_vec();
    k.extend_from_slice(&p.to_be_bytes());
    k.push(b'/');
    k
}

fn replica_key(p: i32, r: &ReplicaId) -> Vec<u8> {
    let mut k = replica_prefix(p);
    k.extend_from_slice(r.device.as_str().as_bytes());
    k.push(0);
    k.extend_from_slice(&r.incarnation.get().to_be_bytes());
    k
}

fn state_key(key: &str) -> Vec<u8> {
    let mut k = b"s/".to_vec();
    k.extend_from_slice(key.as_bytes());
    k
}

fn u64_of(v: &[u8]) -> Option<u64> {
    v.try_into().ok().map(u64::from_be_bytes)
}

/// Pending writes, committed together by [`Store::commit`].
#[derive(Default)]
pub struct Batch {
    wb: WriteBatch,
}

impl std::fmt::Debug for Batch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batch")
            .field("len", &self.wb.len())
            .finish()
    }
}

impl Batch {
    /// The next offset to read from `p` in `stage`.
    pub fn offset(&mut self, stage: Stage, p: i32, next: i64) {
        self.wb
            .put(offset_key(stage, p), (next as u64).to_be_bytes());
    }

    /// The events partition `p` holds everything this store released up to `next` (exclusive).
    pub fn checkpoint(&mut self, p: i32, next: i64) {
        self.wb.put(checkpoint_key(p), (next as u64).to_be_bytes());
    }

    /// A replica's protocol state.
    pub fn replica(
        &mut self,
        codec: &Codec,
        p: i32,
        r: &ReplicaId,
        s: &ReplicaState,
    ) -> Result<(), StoreError> {
        self.wb.put(replica_key(p, r), encode_replica(codec, s)?);
        Ok(())
    }

    /// A key's converged state, as `codec.encode_state_record(s, Framing::SingleObject)` gives
    /// it (encoded once: the key stage produces the same datum, in the output framing, to the
    /// state topic).
    pub fn state(&mut self, key: &str, single_object: &[u8]) {
        self.wb.put(state_key(key), single_object);
    }
}

impl Store {
    /// Opens (or creates) the store in `dir` with the default [`StoreMemory`].
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        Self::open_with(dir, &StoreMemory::default())
    }

    /// Opens (or creates) the store in `dir`, its memory bounded by `memory`.
    pub fn open_with(dir: &Path, memory: &StoreMemory) -> Result<Self, StoreError> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.set_wal_recovery_mode(DBRecoveryMode::PointInTime);
        opts.set_compression_type(rocksdb::DBCompressionType::Zstd);
        memory.apply(&mut opts);
        Ok(Self {
            db: DB::open(&opts, dir)?,
        })
    }

    /// This store's identity in the consumer groups (static membership, KIP-345): made from
    /// the random bits `fresh` and written durably on first use, the same on every later start, so a
    /// restarted process is the same member and takes its partitions back at once. A new state
    /// directory is a new member.
    pub fn instance_id(&self, fresh: u64) -> Result<String, StoreError> {
        const KEY: &[u8] = b"i";
        if let Some(v) = self.db.get(KEY)? {
            return String::from_utf8(v).map_err(|e| StoreError::Corrupt {
                what: "instance id".into(),
                why: e.to_string(),
            });
        }
        let id = format!("edgesync-reconciler-{fresh:016x}");
        let mut w = WriteOptions::default();
        w.set_sync(true);
        self.db.put_opt(KEY, id.as_bytes(), &w)?;
        Ok(id)
    }

    /// What RocksDB holds in memory now, by its own count.
    pub fn memory_usage(&self) -> MemoryUsage {
        let int = |name: &str| self.db.property_int_value(name).ok().flatten().unwrap_or(0);
        MemoryUsage {
            block_cache_capacity: int("rocksdb.block-cache-capacity"),
            block_cache: int("rocksdb.block-cache-usage"),
            memtables: int("rocksdb.cur-size-all-mem-tables"),
            table_readers: int("rocksdb.estimate-table-readers-mem"),
        }
    }

    /// Writes `b` durably (one fsync).
    pub fn commit(&self, b: Batch) -> Result<(), StoreError> {
        let mut w = WriteOptions::default();
        w.set_sync(true);
        self.db.write_opt(b.wb, &w)?;
        Ok(())
    }

    /// The next offset to read from `p`, if this store has processed it before.
    pub fn offset(&self, stage: Stage, p: i32) -> Result<Option<i64>, StoreError> {
        Ok(self
            .db
            .get(offset_key(stage, p))?
            .and_then(|v| u64_of(&v))
            .map(|o| o as i64))
    }

    /// The events checkpoint of partition `p`.
    pub fn checkpoint(&self, p: i32) -> Result<Option<i64>, StoreError> {
        Ok(self
            .db
            .get(checkpoint_key(p))?
            .and_then(|v| u64_of(&v))
            .map(|o| o as i64))
    }

    /// Every replica state stored for partition `p`.
    pub fn replicas(
        &self,
        codec: &Codec,
        p: i32,
    ) -> Result<Vec<(ReplicaId, ReplicaState)>, StoreError> {
        let prefix = replica_prefix(p);
        let mut out = Vec::new();
        for item in self
            .db
            .iterator(IteratorMode::From(&prefix, Direction::Forward))
        {
            let (k, v) = item?;
            let Some(rest) = k.strip_prefix(prefix.as_slice()) else {
                break;
            };
            let corrupt = |why: &str| StoreError::Corrupt {
                what: format!("replica key {:?}", String::from_utf8_lossy(&k)),
                why: why.into(),
            };
            let (dev, inc) = rest
                .split_last_chunk::<8>()
                .ok_or_else(|| corrupt("short key"))?;
            let dev = dev
                .strip_suffix(&[0])
                .ok_or_else(|| corrupt("no separator"))?;
            let device = std::str::from_utf8(dev)
                .ok()
                .and_then(|d| DeviceId::new(d).ok())
                .ok_or_else(|| corrupt("bad device id"))?;
            let inc =
                Incarnation::new(u64::from_be_bytes(*inc)).map_err(|e| corrupt(&e.to_string()))?;
            let r = ReplicaId::new(device, inc);
            let s = decode_replica(codec, &r, &v)?;
            out.push((r, s));
        }
        Ok(out)
    }

    /// The converged state of `key`.
    pub fn state(&self, codec: &Codec, key: &str) -> Result<Option<StateRecord>, StoreError> {
        match self.db.get(state_key(key))? {
            None => Ok(None),
            Some(v) => codec
                .decode_state_record(&v)
                .map(Some)
                .map_err(|e| StoreError::Corrupt {
                    what: format!("state {key}"),
                    why: e.to_string(),
                }),
        }
    }
}

/// A replica's stored state: format 2 appends `wire_bytes` to format 1, which is still read
/// (as 0 bytes received).
const REPLICA_FORMAT: u8 = 2;
const REPLICA_FORMAT_1: u8 = 1;

fn encode_replica(codec: &Codec, s: &ReplicaState) -> Result<Vec<u8>, StoreError> {
    let mut out = vec![REPLICA_FORMAT];
    out.extend_from_slice(&s.ctx.watermark().to_be_bytes());
    let ranges: Vec<_> = s.ctx.ranges().collect();
    out.extend_from_slice(&(ranges.len() as u32).to_be_bytes());
    for r in ranges {
        out.extend_from_slice(&r.start.to_be_bytes());
        out.extend_from_slice(&r.end.to_be_bytes());
    }
    out.extend_from_slice(&s.gap_since_ms.map_or(u64::MAX, |g| g).to_be_bytes());
    out.push(s.dropped.len() as u8);
    for (reason, n) in &s.dropped {
        out.push(reason.byte());
        out.extend_from_slice(&n.to_be_bytes());
    }
    out.extend_from_slice(&(s.pending.len() as u32).to_be_bytes());
    for e in s.pending.values() {
        let b = codec
            .encode_event(e, Framing::SingleObject)
            .map_err(|err| StoreError::Corrupt {
                what: format!("pending event {}", e.dot),
                why: err.to_string(),
            })?;
        out.extend_from_slice(&(b.len() as u32).to_be_bytes());
        out.extend_from_slice(&b);
    }
    out.extend_from_slice(&s.wire_bytes.to_be_bytes());
    Ok(out)
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (head, rest) = self.0.split_first_chunk::<N>()?;
        self.0 = rest;
        Some(*head)
    }
    fn u64(&mut self) -> Option<u64> {
        self.take::<8>().map(u64::from_be_bytes)
    }
    fn u32(&mut self) -> Option<u32> {
        self.take::<4>().map(u32::from_be_bytes)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take::<1>().map(|b| b[0])
    }
    fn bytes(&mut self, n: usize) -> Option<&[u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
}

fn decode_replica(codec: &Codec, r: &ReplicaId, v: &[u8]) -> Result<ReplicaState, StoreError> {
    let corrupt = |why: String| StoreError::Corrupt {
        what: format!("replica {r}"),
        why,
    };
    let short = || corrupt("truncated".into());
    let mut rd = Reader(v);
    let format = rd.u8().ok_or_else(short)?;
    if format != REPLICA_FORMAT && format != REPLICA_FORMAT_1 {
        return Err(corrupt("unknown format".into()));
    }
    let watermark = rd.u64().ok_or_else(short)?;
    let n = rd.u32().ok_or_else(short)?;
    let mut ranges = Vec::new();
    for _ in 0..n {
        ranges.push((rd.u64().ok_or_else(short)?, rd.u64().ok_or_else(short)?));
    }
    let ctx =
        ReplicaContext::from_parts(r, watermark, ranges).map_err(|e| corrupt(e.to_string()))?;
    let gap = rd.u64().ok_or_else(short)?;
    let mut dropped = BTreeMap::new();
    for _ in 0..rd.u8().ok_or_else(short)? {
        let reason = DropReason::from_byte(rd.u8().ok_or_else(short)?);
        dropped.insert(reason, rd.u64().ok_or_else(short)?);
    }
    let mut pending = BTreeMap::new();
    for _ in 0..rd.u32().ok_or_else(short)? {
        let len = rd.u32().ok_or_else(short)? as usize;
        let e = codec
            .decode_event(rd.bytes(len).ok_or_else(short)?)
            .map_err(|e| corrupt(e.to_string()))?;
        pending.insert(e.dot.seq, e);
    }
    let wire_bytes = match format {
        REPLICA_FORMAT_1 => 0,
        _ => rd.u64().ok_or_else(short)?,
    };
    Ok(ReplicaState {
        ctx,
        pending,
        gap_since_ms: (gap != u64::MAX).then_some(gap),
        dropped,
        wire_bytes,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use edgesync_core::{Dot, Event, Hlc};
    use edgesync_schemas::Limits;

    #[test]
    fn replica_states_and_offsets_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let codec = Codec::new(Limits::default()).unwrap();
        let r = ReplicaId::new(
            DeviceId::new("pump-1").unwrap(),
            Incarnation::new(77).unwrap(),
        );
        let mut s = ReplicaState {
            ctx: ReplicaContext::from_parts(&r, 5, [(8, 9)]).unwrap(),
            gap_since_ms: Some(1234),
            wire_bytes: 987_654,
            ..ReplicaState::default()
        };
        s.dropped.insert(DropReason::Quota, 3);
        for seq in [8, 9] {
            s.pending.insert(
                seq,
                Event {
                    dot: Dot::new(r.clone(), seq),
                    hlc: Hlc::new(1, 0),
                    stream: "s".into(),
                    schema_version: 1,
                    fields: BTreeMap::new(),
                    tags: BTreeMap::new(),
                },
            );
        }
        {
            let store = Store::open(dir.path()).unwrap();
            let mut b = Batch::default();
            b.replica(&codec, 3, &r, &s).unwrap();
            b.offset(Stage::Device, 3, 42);
            b.checkpoint(3, 17);
            store.commit(b).unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.replicas(&codec, 3).unwrap(), vec![(r, s)]);
        assert!(store.replicas(&codec, 4).unwrap().is_empty());
        assert_eq!(store.offset(Stage::Device, 3).unwrap(), Some(42));
        assert_eq!(store.offset(Stage::Key, 3).unwrap(), None);
        assert_eq!(store.checkpoint(3).unwrap(), Some(17));
    }

    #[test]
    fn a_replica_stored_before_wire_bytes_reads_as_none_received() {
        let codec = Codec::new(Limits::default()).unwrap();
        let r = ReplicaId::new(
            DeviceId::new("pump-1").unwrap(),
            Incarnation::new(77).unwrap(),
        );
        let s = ReplicaState {
            ctx: ReplicaContext::from_parts(&r, 5, [(8, 9)]).unwrap(),
            wire_bytes: 12,
            ..ReplicaState::default()
        };
        let mut v = encode_replica(&codec, &s).unwrap();
        v.truncate(v.len() - 8);
        v[0] = REPLICA_FORMAT_1;
        let old = decode_replica(&codec, &r, &v).unwrap();
        assert_eq!(old, ReplicaState { wire_bytes: 0, ..s });
        v[0] = REPLICA_FORMAT;
        assert!(
            decode_replica(&codec, &r, &v).is_err(),
            "format 2 without its bytes"
        );
    }

    #[test]
    fn memory_stays_within_the_configured_cache_and_write_buffers() {
        let dir = tempfile::tempdir().unwrap();
        let codec = Codec::new(Limits::default()).unwrap();
        let memory = StoreMemory {
            block_cache_bytes: 1 << 20,
            write_buffer_bytes: 256 << 10,
            max_write_buffers: 2,
            max_open_files: 64,
        };
        let store = Store::open_with(dir.path(), &memory).unwrap();
        let replica = |i: u32| {
            ReplicaId::new(
                DeviceId::new(&format!("pump-{i}")).unwrap(),
                Incarnation::new(u64::from(i) + 1).unwrap(),
            )
        };
        let state = ReplicaState {
            ctx: ReplicaContext::from_parts(&replica(0), 5, [(8, 9)]).unwrap(),
            ..ReplicaState::default()
        };
        // About 20 MB of replica states: many times the cache and the write buffers.
        for chunk in 0..40u32 {
            let mut b = Batch::default();
            for i in chunk * 5_000..(chunk + 1) * 5_000 {
                b.replica(&codec, (i % 4) as i32, &replica(i), &state)
                    .unwrap();
            }
            store.commit(b).unwrap();
        }
        for p in 0..4 {
            assert_eq!(store.replicas(&codec, p).unwrap().len(), 50_000);
        }
        let used = store.memory_usage();
        assert_eq!(used.block_cache_capacity, 1 << 20);
        assert!(used.block_cache <= 1 << 20, "{used:?}");
        assert!(used.memtables <= 2 * (256 << 10) + (64 << 10), "{used:?}");
        assert_eq!(memory.budget(), (1 << 20) + (512 << 10));
    }
}

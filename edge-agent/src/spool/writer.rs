//! The writer thread. Appends, trims and repairs from any number of threads arrive on one
//! channel; the writer takes everything that arrived while the previous write was being
//! synced and applies it as one RocksDB `WriteBatch` with one fsync (group commit), then
//! answers each request. Only this thread changes the spool, so the in-memory `State` and the
//! batch it writes can never disagree.

use super::*;
use edgesync_servicekit::crash::crash_point;

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

impl Request {
    /// Answers without writing: the storage is not open.
    fn refuse(self) {
        match self {
            Request::Append { reply, .. } => drop(reply.send(Err(SpoolError::Reopen))),
            Request::Trim { reply, .. } | Request::Repair { reply, .. } => {
                drop(reply.send(Err(SpoolError::Reopen)))
            }
        }
    }
}

/// The one thread that writes: it owns every change to the spool.
pub(super) struct Writer {
    pub(super) db: Arc<Handle>,
    pub(super) state: Arc<Mutex<State>>,
    pub(super) cfg: SpoolConfig,
}

impl Writer {
    pub(super) fn run(self, rx: mpsc::Receiver<Request>) {
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
        let db = match self.ready() {
            Ok(db) => db,
            Err(e) => {
                tracing::warn!(error = %e, "spool storage unavailable; refusing writes");
                requests.into_iter().for_each(Request::refuse);
                return;
            }
        };
        let now = (self.cfg.clock)();
        let mut b = WriteBatch::default();
        let mut s = lock(&self.state);
        let before = (s.next, s.events, s.bytes, s.oldest_ms, s.stats, s.acked);
        let trims = requests.iter().any(|r| matches!(r, Request::Trim { .. }));
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
        crash_point("spool.before_write");
        let written = db.write_opt(b, &w);
        drop(db);
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
            if e.kind() == rocksdb::ErrorKind::IOError {
                self.reopen(&e);
            }
            return;
        }
        s.stats.groups += 1;
        drop(s);
        crash_point(if trims {
            "spool.trim.after_fsync"
        } else {
            "spool.after_fsync"
        });
        answers.into_iter().for_each(Answer::send);
    }

    /// The database, opened again first if the last reopen failed.
    fn ready(&self) -> Result<Arc<DB>, SpoolError> {
        if self.db.is_closed() {
            let db = self.db.reopen()?;
            self.reload(&db)?;
            tracing::info!("spool storage open again: taking writes");
        }
        self.db.db()
    }

    /// After a failed write: RocksDB takes no more writes until it is opened again.
    fn reopen(&self, cause: &rocksdb::Error) {
        tracing::error!(error = %cause, "spool write failed; opening the storage again");
        match self.db.reopen().and_then(|db| self.reload(&db)) {
            Ok(()) => tracing::info!("spool storage open again: taking writes"),
            // The disk is still full: the next write tries again.
            Err(e) => tracing::error!(error = %e, "spool storage could not be opened again"),
        }
    }

    /// Takes the counters from the database as opened again: the failed write may have
    /// reached the WAL, and then its seqs are used.
    fn reload(&self, db: &DB) -> Result<(), SpoolError> {
        let (_, acked, held) = Spool::load(db)?;
        let mut s = lock(&self.state);
        (s.next, s.acked, s.events, s.bytes, s.oldest_ms) =
            (held.next, acked, held.events, held.bytes, held.oldest_ms);
        Ok(())
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

    /// Append time of the first held event after `acked`, ignoring `except`.
    pub(super) fn oldest_event_after(
        &self,
        acked: u64,
        except: &[u64],
    ) -> Result<Option<u64>, SpoolError> {
        for item in self.db.db()?.iterator(IteratorMode::From(
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
        for item in self.db.db()?.iterator(IteratorMode::From(
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

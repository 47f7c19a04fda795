//! The spool's RocksDB, shared by the writer and the readers, and opened again after a failed
//! write. RocksDB stops taking writes after an I/O error in its WAL (a full disk, for one) until
//! the database is opened again; the writer does that ([`Handle::reopen`]) after such a
//! failure and, while it cannot (the disk is still full), before each later write, so writes
//! are taken again as soon as space returns, with no restart and no person.
//!
//! Readers take the database for one call ([`Handle::db`]); a reopen waits for them to finish
//! (RocksDB's lock allows one open instance per directory) and makes them wait meanwhile.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use rocksdb::{Options, DB};

use super::SpoolError;

/// How long a reopen waits for readers to let go of the old database.
const DRAIN: Duration = Duration::from_secs(5);

/// The database, and how to open it again (`None` for a read-only spool).
pub(super) struct Handle {
    db: RwLock<Option<Arc<DB>>>,
    reopen: Option<(PathBuf, Options)>,
}

impl Handle {
    pub(super) fn new(db: DB, reopen: Option<(PathBuf, Options)>) -> Self {
        Self {
            db: RwLock::new(Some(Arc::new(db))),
            reopen,
        }
    }

    /// The database, unless a reopen failed and none is open.
    pub(super) fn db(&self) -> Result<Arc<DB>, SpoolError> {
        let slot = self.db.read().unwrap_or_else(|e| e.into_inner());
        slot.clone().ok_or(SpoolError::Reopen)
    }

    /// Whether the last reopen failed (no database is open).
    pub(super) fn is_closed(&self) -> bool {
        self.db.read().unwrap_or_else(|e| e.into_inner()).is_none()
    }

    /// Closes the database and opens it again; on failure none stays open until the next try.
    pub(super) fn reopen(&self) -> Result<Arc<DB>, SpoolError> {
        let Some((dir, opts)) = &self.reopen else {
            return Err(SpoolError::Closed);
        };
        let mut slot = self.db.write().unwrap_or_else(|e| e.into_inner());
        if let Some(old) = slot.take() {
            let deadline = Instant::now() + DRAIN;
            let mut old = old;
            loop {
                match Arc::try_unwrap(old) {
                    Ok(db) => {
                        drop(db);
                        break;
                    }
                    Err(again) if Instant::now() < deadline => {
                        old = again;
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    Err(again) => {
                        *slot = Some(again);
                        return Err(SpoolError::Reopen);
                    }
                }
            }
        }
        let db = Arc::new(DB::open(opts, dir)?);
        *slot = Some(Arc::clone(&db));
        Ok(db)
    }
}

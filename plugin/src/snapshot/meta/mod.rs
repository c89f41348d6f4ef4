//! [`MetaStore`]: snapshot metadata in one `redb` database, in containerd's
//! schema (`snapshots/storage/bolt.go`): per snapshot its kind, a numeric id
//! (the name of its directory), its parent's name, labels, created/updated
//! timestamps and, once committed, its disk usage; plus parent -> child
//! backlinks so a snapshot with children cannot be removed.
//!
//! Split by concern: [`record`] is the schema (tables, the JSON [`Record`]
//! and the lookups on the snapshots table), [`txn`] the transactions
//! (containerd's `storage` operations), this module the database handle:
//! re-opening after an I/O error and the full-disk reserve.

mod record;
#[cfg(test)]
mod tests;
mod txn;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{RwLock, RwLockReadGuard, TryLockError};
use std::time::{Duration, Instant};

use super::SnapshotError;
use record::{PARENTS, SEQUENCE, SNAPSHOTS};

pub use record::{clean_labels, Chain, Info, Kind, Record, Timestamp, Usage};
pub use txn::{ReadTxn, WriteTxn};

/// The metadata database (`<root>/metadata.redb`).
///
/// redb refuses every operation after one failed I/O ("Previous I/O error
/// occurred. Please close and re-open the database"), which a full disk
/// causes: the store then re-opens the database in place (redb repairs it
/// from its last committed state), at the start of the next transaction,
/// once every transaction on the failed handle is over. Until that
/// succeeds (the disk is still full), every operation fails cleanly.
pub struct MetaStore {
    path: PathBuf,
    /// The open database: `None` while it failed and could not be opened
    /// again yet. Every transaction holds a read guard for its lifetime, so
    /// a re-open (under the write guard) never runs beside one.
    db: RwLock<Option<redb::Database>>,
    /// Set when an operation failed with an I/O error: the next transaction
    /// re-opens the database first.
    broken: AtomicBool,
    /// `<db>.reserve`: room kept on the database's file system so that a
    /// Remove still commits on a full disk (see [`MetaStore::release_reserve`]).
    reserve: PathBuf,
}

/// How much room the reserve keeps: enough for a few commits (redb writes
/// every change to free pages, and re-opening after an I/O error may
/// repair the file first, so a delete needs space like any write).
const RESERVE_BYTES: u64 = 8 << 20;

/// How long a re-open waits for the transactions on the failed handle to
/// end (they are short; this only bounds a bug).
const REOPEN_WAIT: Duration = Duration::from_secs(30);

/// True for the store errors after which redb must be re-opened: an I/O
/// error (ENOSPC, EIO), or redb's refusal to go on after one.
pub(crate) fn needs_reopen(err: &SnapshotError) -> bool {
    matches!(err, SnapshotError::Store(e)
        if matches!(**e, redb::Error::Io(_) | redb::Error::PreviousIo))
}

fn open_db(path: &Path) -> Result<redb::Database, SnapshotError> {
    let db = redb::Database::create(path)?;
    // Create the tables so that read transactions find them.
    let txn = db.begin_write()?;
    txn.open_table(SNAPSHOTS)?;
    txn.open_table(PARENTS)?;
    txn.open_table(SEQUENCE)?;
    txn.commit()?;
    Ok(db)
}

impl MetaStore {
    pub fn open(path: &Path) -> Result<Self, SnapshotError> {
        let db = open_db(path)?;
        let mut reserve = path.as_os_str().to_owned();
        reserve.push(".reserve");
        let store = MetaStore {
            path: path.to_path_buf(),
            db: RwLock::new(Some(db)),
            broken: AtomicBool::new(false),
            reserve: reserve.into(),
        };
        store.keep_reserve();
        Ok(store)
    }

    /// Makes sure the reserve file is there (allocated, not sparse); best
    /// effort: on a full disk it is made again after the next removal.
    pub fn keep_reserve(&self) {
        if self.reserve.exists() {
            return;
        }
        let made = (|| {
            let f = std::fs::File::create(&self.reserve)?;
            rustix::fs::fallocate(&f, rustix::fs::FallocateFlags::empty(), 0, RESERVE_BYTES)?;
            f.sync_all()
        })();
        if let Err(err) = made {
            let _ = std::fs::remove_file(&self.reserve);
            tracing::warn!(path = %self.reserve.display(), error = %err,
                "cannot keep the metadata store's reserve (a full disk?): made again after the next removal");
        }
    }

    /// Deletes the reserve file, giving its room to the database: the
    /// caller retries a removal that failed on a full disk. Returns whether
    /// there was one.
    pub fn release_reserve(&self) -> bool {
        match std::fs::remove_file(&self.reserve) {
            Ok(()) => {
                tracing::warn!(path = %self.reserve.display(),
                    "the disk is full: the metadata store's reserve is released so that removing snapshots frees space");
                true
            }
            Err(_) => false,
        }
    }

    /// Passes `result` on, noting an error that needs a re-open.
    pub(super) fn note<T>(&self, result: Result<T, SnapshotError>) -> Result<T, SnapshotError> {
        if let Err(err) = &result {
            if needs_reopen(err) && !self.broken.swap(true, Ordering::AcqRel) {
                tracing::warn!(path = %self.path.display(), error = %err,
                    "metadata store I/O failed: re-opening it before the next operation");
            }
        }
        result
    }

    /// Closes the failed database and opens it again. Waits for the
    /// transactions still holding the old handle (never for long: they end
    /// with the call that began them).
    fn reopen(&self) -> Result<(), SnapshotError> {
        let deadline = Instant::now() + REOPEN_WAIT;
        let mut slot = loop {
            match self.db.try_write() {
                Ok(guard) => break guard,
                Err(TryLockError::Poisoned(p)) => break p.into_inner(),
                Err(TryLockError::WouldBlock) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err(TryLockError::WouldBlock) => {
                    return Err(SnapshotError::Store(Box::new(redb::Error::Io(
                        std::io::Error::other(
                            "re-opening after an I/O error: transactions still running",
                        ),
                    ))))
                }
            }
        };
        if !self.broken.load(Ordering::Acquire) {
            return Ok(()); // another thread did it meanwhile
        }
        // Close the failed handle first: redb locks the file while it is open.
        *slot = None;
        let db = open_db(&self.path).inspect_err(|err| {
            tracing::warn!(path = %self.path.display(), error = %err,
                "re-opening the metadata store failed; trying again at the next operation");
        })?;
        *slot = Some(db);
        self.broken.store(false, Ordering::Release);
        tracing::info!(path = %self.path.display(), "metadata store re-opened");
        Ok(())
    }

    /// Begins a transaction with `begin`, re-opening the database first if
    /// an earlier operation failed on I/O (or this one finds out it did).
    fn begin<T>(
        &self,
        begin: impl Fn(&redb::Database) -> Result<T, SnapshotError>,
    ) -> Result<(RwLockReadGuard<'_, Option<redb::Database>>, T), SnapshotError> {
        let mut tries = 0;
        loop {
            tries += 1;
            if self.broken.load(Ordering::Acquire) {
                self.reopen()?;
            }
            let guard = self.db.read().unwrap_or_else(|p| p.into_inner());
            let result = match guard.as_ref() {
                Some(db) => begin(db),
                None => Err(SnapshotError::Store(Box::new(redb::Error::PreviousIo))),
            };
            match self.note(result) {
                Ok(txn) => return Ok((guard, txn)),
                Err(err) if needs_reopen(&err) && tries < 2 => drop(guard),
                Err(err) => return Err(err),
            }
        }
    }

    pub fn read(&self) -> Result<ReadTxn<'_>, SnapshotError> {
        let (guard, txn) = self.begin(|db| Ok(db.begin_read()?))?;
        Ok(ReadTxn {
            txn,
            store: self,
            _db: guard,
        })
    }

    pub fn write(&self) -> Result<WriteTxn<'_>, SnapshotError> {
        let (guard, txn) = self.begin(|db| Ok(db.begin_write()?))?;
        Ok(WriteTxn {
            txn,
            store: self,
            _db: guard,
        })
    }
}

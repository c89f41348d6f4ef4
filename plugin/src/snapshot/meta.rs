//! [`MetaStore`]: snapshot metadata in one `redb` database, in containerd's
//! schema (`snapshots/storage/bolt.go`): per snapshot its kind, a numeric id
//! (the name of its directory), its parent's name, labels, created/updated
//! timestamps and, once committed, its disk usage; plus parent -> child
//! backlinks so a snapshot with children cannot be removed.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{RwLock, RwLockReadGuard, TryLockError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redb::{ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use super::SnapshotError;

/// name -> JSON [`Record`].
const SNAPSHOTS: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshots");
/// (parent id, child id) -> child name.
const PARENTS: TableDefinition<(u64, u64), &str> = TableDefinition::new("parents");
/// "id" -> last id handed out.
const SEQUENCE: TableDefinition<&str, u64> = TableDefinition::new("sequence");

/// Largest key + value of one label containerd accepts.
const MAX_LABEL_BYTES: usize = 4096;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    View,
    Active,
    Committed,
}

impl Kind {
    /// The name containerd's filters use (`kind==active`).
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::View => "view",
            Kind::Active => "active",
            Kind::Committed => "committed",
        }
    }
}

/// A point in time as containerd stores it (nanosecond precision, UTC).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timestamp {
    pub seconds: i64,
    pub nanos: u32,
}

impl Timestamp {
    pub fn now() -> Self {
        let d = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Timestamp {
            seconds: d.as_secs() as i64,
            nanos: d.subsec_nanos(),
        }
    }
}

/// Disk usage of a snapshot's own directory (not its parents).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub size: i64,
    pub inodes: i64,
}

/// One snapshot's stored metadata.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub id: u64,
    pub kind: Kind,
    /// Name of the parent snapshot, empty for none.
    #[serde(default)]
    pub parent: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub created: Timestamp,
    pub updated: Timestamp,
    /// Measured at commit; zero for active and view snapshots.
    #[serde(default)]
    pub usage: Usage,
    /// Committed by the importer without its data: the chain ID of the
    /// archived layer its directory is to be filled from before first use
    /// (`snapshot::remote::lazy`). Not a label, so no label update can lose it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<String>,
}

/// A snapshot as the API shows it: its name and record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Info {
    pub name: String,
    pub record: Record,
}

/// What a mount needs: the snapshot's id and kind, and the ids of its parents,
/// nearest first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chain {
    pub id: u64,
    pub kind: Kind,
    pub parent_ids: Vec<u64>,
}

impl super::filter::Fields for Info {
    fn field(&self, path: &[String]) -> Option<&str> {
        match path.first().map(String::as_str)? {
            "kind" => Some(self.record.kind.as_str()),
            "name" => Some(&self.name),
            "parent" => Some(&self.record.parent),
            "labels" => self
                .record
                .labels
                .get(&path[1..].join("."))
                .map(String::as_str),
            _ => None,
        }
    }
}

/// Checks labels the way containerd does, and drops empty values (containerd
/// never stores a label whose value is empty).
pub fn clean_labels(
    labels: impl IntoIterator<Item = (String, String)>,
) -> Result<BTreeMap<String, String>, SnapshotError> {
    let mut out = BTreeMap::new();
    for (k, v) in labels {
        if k.is_empty() {
            return Err(SnapshotError::InvalidArgument(
                "label key must not be empty".into(),
            ));
        }
        if k.len() + v.len() > MAX_LABEL_BYTES {
            return Err(SnapshotError::InvalidArgument(format!(
                "label key and value greater than maximum size ({MAX_LABEL_BYTES} bytes), key: {}",
                k.chars().take(64).collect::<String>()
            )));
        }
        if !v.is_empty() {
            out.insert(k, v);
        }
    }
    Ok(out)
}

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

/// A read-only view of the store.
pub struct ReadTxn<'a> {
    // Dropped before the guard: the transaction keeps the file open.
    txn: redb::ReadTransaction,
    store: &'a MetaStore,
    _db: RwLockReadGuard<'a, Option<redb::Database>>,
}

/// A write transaction: only one at a time. Nothing is stored before
/// [`WriteTxn::commit`]; dropping it rolls back.
pub struct WriteTxn<'a> {
    txn: redb::WriteTransaction,
    store: &'a MetaStore,
    _db: RwLockReadGuard<'a, Option<redb::Database>>,
}

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
    fn note<T>(&self, result: Result<T, SnapshotError>) -> Result<T, SnapshotError> {
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

fn decode(name: &str, bytes: &[u8]) -> Result<Record, SnapshotError> {
    serde_json::from_slice(bytes).map_err(|e| SnapshotError::Corrupt {
        key: name.to_string(),
        reason: e.to_string(),
    })
}

fn encode(record: &Record) -> Vec<u8> {
    serde_json::to_vec(record).expect("a Record always serializes")
}

fn get_in(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    name: &str,
) -> Result<Option<Record>, SnapshotError> {
    match table.get(name)? {
        Some(v) => Ok(Some(decode(name, v.value())?)),
        None => Ok(None),
    }
}

fn require(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    name: &str,
) -> Result<Record, SnapshotError> {
    get_in(table, name)?.ok_or_else(|| SnapshotError::NotFound(format!("snapshot {name:?}")))
}

fn chain_in(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    name: &str,
) -> Result<Chain, SnapshotError> {
    let record = require(table, name)?;
    let mut parent_ids = Vec::new();
    let mut parent = record.parent.clone();
    while !parent.is_empty() {
        let p = get_in(table, &parent)?.ok_or_else(|| {
            SnapshotError::NotFound(format!("parent {parent:?} of snapshot {name:?}"))
        })?;
        parent_ids.push(p.id);
        parent = p.parent;
    }
    Ok(Chain {
        id: record.id,
        kind: record.kind,
        parent_ids,
    })
}

fn list_in(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
) -> Result<Vec<Info>, SnapshotError> {
    let mut out = Vec::new();
    for entry in table.iter()? {
        let (k, v) = entry?;
        let name = k.value().to_string();
        let record = decode(&name, v.value())?;
        out.push(Info { name, record });
    }
    Ok(out)
}

impl ReadTxn<'_> {
    fn table(&self) -> Result<redb::ReadOnlyTable<&'static str, &'static [u8]>, SnapshotError> {
        Ok(self.txn.open_table(SNAPSHOTS)?)
    }

    /// The snapshot called `name` (NotFound if there is none).
    pub fn get(&self, name: &str) -> Result<Record, SnapshotError> {
        self.store
            .note(self.table().and_then(|t| require(&t, name)))
    }

    /// The snapshot's id, kind and parent ids (nearest first).
    pub fn chain(&self, name: &str) -> Result<Chain, SnapshotError> {
        self.store
            .note(self.table().and_then(|t| chain_in(&t, name)))
    }

    /// Every snapshot, in name order.
    pub fn list(&self) -> Result<Vec<Info>, SnapshotError> {
        self.store.note(self.table().and_then(|t| list_in(&t)))
    }
}

impl WriteTxn<'_> {
    pub fn commit(self) -> Result<(), SnapshotError> {
        let WriteTxn { txn, store, _db } = self;
        let result = txn.commit().map_err(SnapshotError::from);
        drop(_db);
        store.note(result)
    }

    pub fn get(&self, name: &str) -> Result<Option<Record>, SnapshotError> {
        self.store.note(
            self.txn
                .open_table(SNAPSHOTS)
                .map_err(SnapshotError::from)
                .and_then(|t| get_in(&t, name)),
        )
    }

    pub fn chain(&self, name: &str) -> Result<Chain, SnapshotError> {
        self.store.note(
            self.txn
                .open_table(SNAPSHOTS)
                .map_err(SnapshotError::from)
                .and_then(|t| chain_in(&t, name)),
        )
    }

    pub fn list(&self) -> Result<Vec<Info>, SnapshotError> {
        self.store.note(
            self.txn
                .open_table(SNAPSHOTS)
                .map_err(SnapshotError::from)
                .and_then(|t| list_in(&t)),
        )
    }

    /// Every id in use.
    pub fn ids(&self) -> Result<HashSet<u64>, SnapshotError> {
        Ok(self.list()?.into_iter().map(|i| i.record.id).collect())
    }

    /// Records a new snapshot of `kind` called `key` on `parent` (empty for
    /// none), containerd's `storage.CreateSnapshot` (active/view) extended with
    /// committed records for the remote path. Returns its chain.
    pub fn create(
        &self,
        kind: Kind,
        key: &str,
        parent: &str,
        labels: BTreeMap<String, String>,
        usage: Usage,
    ) -> Result<Chain, SnapshotError> {
        self.store
            .note(self.create_in(kind, key, parent, labels, usage))
    }

    /// containerd's `storage.CommitActive`: the active snapshot `key` becomes
    /// the committed snapshot `name` (same id, labels replaced). Returns the id.
    pub fn commit_active(
        &self,
        key: &str,
        name: &str,
        labels: BTreeMap<String, String>,
        usage: Usage,
    ) -> Result<u64, SnapshotError> {
        self.store
            .note(self.commit_active_in(key, name, labels, usage))
    }

    /// containerd's `storage.Remove`: forgets `key` unless it has children.
    pub fn remove(&self, key: &str) -> Result<Record, SnapshotError> {
        self.store.note(self.remove_in(key))
    }

    /// containerd's `storage.UpdateInfo` (see [`WriteTxn::update_in`]).
    pub fn update(
        &self,
        name: &str,
        labels: &BTreeMap<String, String>,
        paths: &[String],
    ) -> Result<Record, SnapshotError> {
        self.store.note(self.update_in(name, labels, paths))
    }

    fn next_id(&self) -> Result<u64, SnapshotError> {
        let mut seq = self.txn.open_table(SEQUENCE)?;
        let next = seq.get("id")?.map(|v| v.value()).unwrap_or(0) + 1;
        seq.insert("id", next)?;
        Ok(next)
    }

    /// Records a new snapshot of `kind` called `key` on `parent` (empty for
    /// none), containerd's `storage.CreateSnapshot` (active/view) extended with
    /// committed records for the remote path. Returns its chain.
    fn create_in(
        &self,
        kind: Kind,
        key: &str,
        parent: &str,
        labels: BTreeMap<String, String>,
        usage: Usage,
    ) -> Result<Chain, SnapshotError> {
        if key.is_empty() {
            return Err(SnapshotError::InvalidArgument(
                "snapshot key must not be empty".into(),
            ));
        }
        let mut table = self.txn.open_table(SNAPSHOTS)?;
        let mut parent_ids = Vec::new();
        if !parent.is_empty() {
            let p = get_in(&table, parent)?
                .ok_or_else(|| SnapshotError::NotFound(format!("parent snapshot {parent:?}")))?;
            if p.kind != Kind::Committed {
                return Err(SnapshotError::InvalidArgument(format!(
                    "parent {parent:?} is not a committed snapshot"
                )));
            }
            parent_ids = chain_in(&table, parent)?.parent_ids;
            parent_ids.insert(0, p.id);
        }
        if get_in(&table, key)?.is_some() {
            return Err(SnapshotError::AlreadyExists(format!("snapshot {key:?}")));
        }
        let id = self.next_id()?;
        let now = Timestamp::now();
        let record = Record {
            id,
            kind,
            parent: parent.to_string(),
            labels,
            created: now,
            updated: now,
            usage,
            pending: None,
        };
        table.insert(key, encode(&record).as_slice())?;
        if let Some(&pid) = parent_ids.first() {
            self.txn.open_table(PARENTS)?.insert((pid, id), key)?;
        }
        Ok(Chain {
            id,
            kind,
            parent_ids,
        })
    }

    /// containerd's `storage.CommitActive`: the active snapshot `key` becomes
    /// the committed snapshot `name` (same id, labels replaced). Returns the id.
    fn commit_active_in(
        &self,
        key: &str,
        name: &str,
        labels: BTreeMap<String, String>,
        usage: Usage,
    ) -> Result<u64, SnapshotError> {
        if name.is_empty() {
            return Err(SnapshotError::InvalidArgument(
                "snapshot name must not be empty".into(),
            ));
        }
        let mut table = self.txn.open_table(SNAPSHOTS)?;
        if get_in(&table, name)?.is_some() {
            return Err(SnapshotError::AlreadyExists(format!(
                "committed snapshot {name:?}"
            )));
        }
        let mut record = get_in(&table, key)?
            .ok_or_else(|| SnapshotError::NotFound(format!("active snapshot {key:?}")))?;
        if record.kind != Kind::Active {
            return Err(SnapshotError::FailedPrecondition(format!(
                "snapshot {key:?} is not active"
            )));
        }
        record.kind = Kind::Committed;
        record.created = Timestamp::now();
        record.updated = record.created;
        record.labels = labels;
        record.usage = usage;
        table.remove(key)?;
        table.insert(name, encode(&record).as_slice())?;
        if !record.parent.is_empty() {
            let parent = get_in(&table, &record.parent)?.ok_or_else(|| {
                SnapshotError::NotFound(format!("parent {:?} of snapshot {key:?}", record.parent))
            })?;
            self.txn
                .open_table(PARENTS)?
                .insert((parent.id, record.id), name)?;
        }
        Ok(record.id)
    }

    /// containerd's `storage.Remove`: forgets `key` unless it has children.
    fn remove_in(&self, key: &str) -> Result<Record, SnapshotError> {
        let mut table = self.txn.open_table(SNAPSHOTS)?;
        let record = require(&table, key)?;
        let mut parents = self.txn.open_table(PARENTS)?;
        if parents
            .range((record.id, 0)..=(record.id, u64::MAX))?
            .next()
            .is_some()
        {
            return Err(SnapshotError::FailedPrecondition(format!(
                "cannot remove snapshot {key:?} with child"
            )));
        }
        if !record.parent.is_empty() {
            if let Some(parent) = get_in(&table, &record.parent)? {
                parents.remove((parent.id, record.id))?;
            }
        }
        table.remove(key)?;
        Ok(record)
    }

    /// Marks the committed snapshot `name` as waiting for its data (`Some`
    /// chain ID), or as filled (`None`, with its measured usage).
    pub fn set_pending(
        &self,
        name: &str,
        pending: Option<String>,
        usage: Usage,
    ) -> Result<Record, SnapshotError> {
        let mut table = self.txn.open_table(SNAPSHOTS)?;
        let mut record = require(&table, name)?;
        record.pending = pending;
        record.usage = usage;
        table.insert(name, encode(&record).as_slice())?;
        Ok(record)
    }

    /// containerd's `storage.UpdateInfo`: only labels are mutable; `paths`
    /// empty replaces them all, `labels` too, `labels.<key>` sets one (an
    /// empty or missing value removes it).
    fn update_in(
        &self,
        name: &str,
        labels: &BTreeMap<String, String>,
        paths: &[String],
    ) -> Result<Record, SnapshotError> {
        let mut table = self.txn.open_table(SNAPSHOTS)?;
        let mut record = require(&table, name)?;
        if paths.is_empty() {
            record.labels = labels.clone();
        }
        for path in paths {
            if let Some(key) = path.strip_prefix("labels.") {
                match labels.get(key) {
                    Some(v) if !v.is_empty() => {
                        record.labels.insert(key.to_string(), v.clone());
                    }
                    _ => {
                        record.labels.remove(key);
                    }
                }
            } else if path == "labels" {
                record.labels = labels.clone();
            } else {
                return Err(SnapshotError::InvalidArgument(format!(
                    "cannot update {path:?} field on snapshot {name:?}"
                )));
            }
        }
        record.labels.retain(|_, v| !v.is_empty());
        record.updated = Timestamp::now();
        table.insert(name, encode(&record).as_slice())?;
        Ok(record)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, MetaStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = MetaStore::open(&dir.path().join("m.redb")).unwrap();
        (dir, store)
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn create_commit_chain_remove() {
        let (_d, s) = store();
        let w = s.write().unwrap();
        let a = w
            .create(Kind::Active, "a", "", labels(&[]), Usage::default())
            .unwrap();
        assert_eq!(a.parent_ids, Vec::<u64>::new());
        w.commit_active(
            "a",
            "c1",
            labels(&[("x", "1")]),
            Usage { size: 5, inodes: 1 },
        )
        .unwrap();
        let b = w
            .create(Kind::Active, "b", "c1", labels(&[]), Usage::default())
            .unwrap();
        assert_eq!(b.parent_ids, vec![a.id]);
        w.commit_active("b", "c2", labels(&[]), Usage::default())
            .unwrap();
        let v = w
            .create(Kind::View, "v", "c2", labels(&[]), Usage::default())
            .unwrap();
        assert_eq!(v.parent_ids, vec![b.id, a.id], "nearest parent first");
        w.commit().unwrap();

        let r = s.read().unwrap();
        assert_eq!(r.get("c1").unwrap().labels, labels(&[("x", "1")]));
        assert_eq!(r.get("c1").unwrap().usage.size, 5);
        assert!(r.get("a").unwrap_err().is_not_found());
        assert_eq!(r.chain("v").unwrap().parent_ids, vec![b.id, a.id]);
        drop(r);

        let w = s.write().unwrap();
        assert!(matches!(
            w.remove("c2"),
            Err(SnapshotError::FailedPrecondition(_))
        ));
        w.remove("v").unwrap();
        w.remove("c2").unwrap();
        w.remove("c1").unwrap();
        w.commit().unwrap();
        assert!(s.read().unwrap().list().unwrap().is_empty());
    }

    #[test]
    fn errors_follow_containerd() {
        let (_d, s) = store();
        let w = s.write().unwrap();
        assert!(w
            .create(Kind::Active, "a", "nope", labels(&[]), Usage::default())
            .unwrap_err()
            .is_not_found());
        w.create(Kind::Active, "a", "", labels(&[]), Usage::default())
            .unwrap();
        assert!(w
            .create(Kind::View, "a", "", labels(&[]), Usage::default())
            .unwrap_err()
            .is_already_exists());
        assert!(matches!(
            w.create(Kind::Active, "b", "a", labels(&[]), Usage::default()),
            Err(SnapshotError::InvalidArgument(_))
        ));
        w.create(Kind::View, "v", "", labels(&[]), Usage::default())
            .unwrap();
        assert!(matches!(
            w.commit_active("v", "c", labels(&[]), Usage::default()),
            Err(SnapshotError::FailedPrecondition(_))
        ));
        assert!(w
            .commit_active("zz", "c", labels(&[]), Usage::default())
            .unwrap_err()
            .is_not_found());
        assert!(w
            .commit_active("a", "v", labels(&[]), Usage::default())
            .unwrap_err()
            .is_already_exists());
        assert!(w.remove("zz").unwrap_err().is_not_found());
        assert!(matches!(
            w.update("a", &labels(&[]), &["parent".into()]),
            Err(SnapshotError::InvalidArgument(_))
        ));
    }

    #[test]
    fn update_labels_like_containerd() {
        let (_d, s) = store();
        let w = s.write().unwrap();
        w.create(
            Kind::Active,
            "a",
            "",
            labels(&[("keep", "k")]),
            Usage::default(),
        )
        .unwrap();
        let r = w
            .update("a", &labels(&[("l1", "v1"), ("l2", "v2")]), &[])
            .unwrap();
        assert_eq!(r.labels, labels(&[("l1", "v1"), ("l2", "v2")]));
        let r = w
            .update(
                "a",
                &labels(&[("l1", "updated"), ("l4", "v4")]),
                &["labels.l1".into(), "labels.l2".into()],
            )
            .unwrap();
        assert_eq!(r.labels, labels(&[("l1", "updated")]));
        let r = w
            .update("a", &labels(&[("l4", "v4")]), &["labels".into()])
            .unwrap();
        assert_eq!(r.labels, labels(&[("l4", "v4")]));
    }

    #[test]
    fn a_rolled_back_transaction_leaves_nothing() {
        let (_d, s) = store();
        {
            let w = s.write().unwrap();
            w.create(Kind::Active, "a", "", labels(&[]), Usage::default())
                .unwrap();
        }
        assert!(s.read().unwrap().list().unwrap().is_empty());
    }

    #[test]
    fn labels_are_validated() {
        assert!(clean_labels([("".to_string(), "x".to_string())]).is_err());
        assert!(clean_labels([("k".to_string(), "x".repeat(4096))]).is_err());
        let l = clean_labels([
            ("a".to_string(), "".to_string()),
            ("b".to_string(), "1".to_string()),
        ])
        .unwrap();
        assert_eq!(l, labels(&[("b", "1")]));
    }
}

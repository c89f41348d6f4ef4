//! Read and write transactions: containerd's `storage` operations
//! (`CreateSnapshot`, `CommitActive`, `Remove`, `UpdateInfo`) on the tables
//! of [`super::record`].

use std::collections::{BTreeMap, HashSet};
use std::sync::RwLockReadGuard;

use redb::ReadableTable;

use super::record::{
    chain_in, encode, get_in, list_in, require, Chain, Info, Kind, Record, Timestamp, Usage,
    PARENTS, SEQUENCE, SNAPSHOTS,
};
use super::MetaStore;
use crate::snapshot::SnapshotError;

/// A read-only view of the store.
pub struct ReadTxn<'a> {
    // Dropped before the guard: the transaction keeps the file open.
    pub(super) txn: redb::ReadTransaction,
    pub(super) store: &'a MetaStore,
    pub(super) _db: RwLockReadGuard<'a, Option<redb::Database>>,
}

/// A write transaction: only one at a time. Nothing is stored before
/// [`WriteTxn::commit`]; dropping it rolls back.
pub struct WriteTxn<'a> {
    pub(super) txn: redb::WriteTransaction,
    pub(super) store: &'a MetaStore,
    pub(super) _db: RwLockReadGuard<'a, Option<redb::Database>>,
}

impl ReadTxn<'_> {
    /// Runs `f` on the snapshots table, noting an error that needs a re-open.
    fn with<T>(
        &self,
        f: impl FnOnce(&redb::ReadOnlyTable<&'static str, &'static [u8]>) -> Result<T, SnapshotError>,
    ) -> Result<T, SnapshotError> {
        let table = self.txn.open_table(SNAPSHOTS).map_err(SnapshotError::from);
        self.store.note(table.and_then(|t| f(&t)))
    }

    /// The snapshot called `name` (NotFound if there is none).
    pub fn get(&self, name: &str) -> Result<Record, SnapshotError> {
        self.with(|t| require(t, name))
    }

    /// The snapshot's id, kind and parent ids (nearest first).
    pub fn chain(&self, name: &str) -> Result<Chain, SnapshotError> {
        self.with(|t| chain_in(t, name))
    }

    /// Every snapshot, in name order.
    pub fn list(&self) -> Result<Vec<Info>, SnapshotError> {
        self.with(list_in)
    }
}

impl WriteTxn<'_> {
    pub fn commit(self) -> Result<(), SnapshotError> {
        let WriteTxn { txn, store, _db } = self;
        let result = txn.commit().map_err(SnapshotError::from);
        drop(_db);
        store.note(result)
    }

    /// Runs `f` on the snapshots table, noting an error that needs a re-open.
    fn with<T>(
        &self,
        f: impl FnOnce(&mut redb::Table<'_, &'static str, &'static [u8]>) -> Result<T, SnapshotError>,
    ) -> Result<T, SnapshotError> {
        let table = self.txn.open_table(SNAPSHOTS).map_err(SnapshotError::from);
        self.store.note(table.and_then(|mut t| f(&mut t)))
    }

    /// The snapshot called `name`, if there is one.
    pub fn get(&self, name: &str) -> Result<Option<Record>, SnapshotError> {
        self.with(|t| get_in(t, name))
    }

    /// The snapshot's id, kind and parent ids (nearest first).
    pub fn chain(&self, name: &str) -> Result<Chain, SnapshotError> {
        self.with(|t| chain_in(t, name))
    }

    /// Every snapshot, in name order.
    pub fn list(&self) -> Result<Vec<Info>, SnapshotError> {
        self.with(|t| list_in(t))
    }

    /// Every id in use.
    pub fn ids(&self) -> Result<HashSet<u64>, SnapshotError> {
        Ok(self.list()?.into_iter().map(|i| i.record.id).collect())
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
    pub fn create(
        &self,
        kind: Kind,
        key: &str,
        parent: &str,
        labels: BTreeMap<String, String>,
        usage: Usage,
    ) -> Result<Chain, SnapshotError> {
        not_empty("key", key)?;
        self.with(|table| {
            let mut parent_ids = Vec::new();
            if !parent.is_empty() {
                let p = get_in(table, parent)?.ok_or_else(|| {
                    SnapshotError::NotFound(format!("parent snapshot {parent:?}"))
                })?;
                if p.kind != Kind::Committed {
                    return Err(SnapshotError::InvalidArgument(format!(
                        "parent {parent:?} is not a committed snapshot"
                    )));
                }
                parent_ids = chain_in(table, parent)?.parent_ids;
                parent_ids.insert(0, p.id);
            }
            if get_in(table, key)?.is_some() {
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
        })
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
        not_empty("name", name)?;
        self.with(|table| {
            if get_in(table, name)?.is_some() {
                return Err(SnapshotError::AlreadyExists(format!(
                    "committed snapshot {name:?}"
                )));
            }
            let mut record = get_in(table, key)?
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
                let parent = get_in(table, &record.parent)?.ok_or_else(|| {
                    SnapshotError::NotFound(format!(
                        "parent {:?} of snapshot {key:?}",
                        record.parent
                    ))
                })?;
                self.txn
                    .open_table(PARENTS)?
                    .insert((parent.id, record.id), name)?;
            }
            Ok(record.id)
        })
    }

    /// containerd's `storage.Remove`: forgets `key` unless it has children.
    pub fn remove(&self, key: &str) -> Result<Record, SnapshotError> {
        self.with(|table| {
            let record = require(table, key)?;
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
                if let Some(parent) = get_in(table, &record.parent)? {
                    parents.remove((parent.id, record.id))?;
                }
            }
            table.remove(key)?;
            Ok(record)
        })
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
    pub fn update(
        &self,
        name: &str,
        labels: &BTreeMap<String, String>,
        paths: &[String],
    ) -> Result<Record, SnapshotError> {
        self.with(|table| {
            let mut record = require(table, name)?;
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
        })
    }
}

/// containerd refuses a snapshot without a key or name.
fn not_empty(what: &str, value: &str) -> Result<(), SnapshotError> {
    if value.is_empty() {
        return Err(SnapshotError::InvalidArgument(format!(
            "snapshot {what} must not be empty"
        )));
    }
    Ok(())
}

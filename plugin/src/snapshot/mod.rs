//! The snapshotter: containerd's snapshotter API on overlayfs, with metadata
//! in a [`MetaStore`] and, when a [`LayerSource`] is configured, layers taken
//! straight from the archives (the remote path, module `remote`).
//!
//! On disk, under the root:
//! ```text
//! metadata.redb          the MetaStore
//! snapshots/<id>/fs      a snapshot's own layer (overlay upper dir), or the
//!                        EROFS mount of a layer mounted from its archive
//!                        (`layer.erofs`, `backing.json` beside it; see
//!                        `layer_mounts`)
//! snapshots/<id>/work    overlay work dir (active snapshots)
//! layers/                prepared layers (EROFS indexes, decompressed
//!                        tars) that mounted layers link to (`layer_store`)
//! snapshots/new-*        a snapshot being created (under the write lock)
//! staging/               layers being extracted from archives
//! trash/                 directories on their way out
//! ```
//! A directory is built under a temporary name and renamed to its id inside
//! the metadata transaction that records it; directories are deleted only
//! after the transaction that forgets them committed. A crash therefore leaves
//! at worst directories without a record, which [`SnapshotApi::cleanup`]
//! removes; never a record without its directory (directories are synced
//! before the record commits; layers extracted from archives are flushed
//! with `syncfs` first).
//!
//! The gRPC seam, shaped as containerd/rust-extensions' `snapshots` crate:
//! [`SnapshotApi`] is the snapshotter API in native types, [`convert`] turns
//! its answers into containerd's wire types, and [`service`] serves any
//! [`SnapshotApi`] over tonic. [`Snapshotter`] is the implementation.

pub mod convert;
pub mod error;
pub mod filter;
pub mod meta;
pub mod mounts;
pub mod observe;
pub(crate) mod remote;
pub mod service;

/// containerd's API (crate-level [`crate::proto`]), where the snapshot
/// modules have always found it.
pub use crate::proto;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::future::Future;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use crate::layer::LayerOptions;
pub use error::SnapshotError;
pub use meta::{Info, Kind, MetaStore, Usage};
pub use mounts::Mount;

use crate::catalog::LayerSource;
use crate::layer::LayerBacking;
use filter::Filter;
use meta::clean_labels;
use mounts::Layout;

/// Runs blocking filesystem or database work off the async runtime. The one
/// place the snapshotter crosses from async to blocking code.
pub async fn blocking<T, F>(f: F) -> Result<T, SnapshotError>
where
    F: FnOnce() -> Result<T, SnapshotError> + Send + 'static,
    T: Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result,
        Err(err) => Err(SnapshotError::Task(err)),
    }
}

/// containerd's snapshotter API (Prepare, View, Mounts, Commit, Remove, Stat,
/// Update, List, Usage, Cleanup) in native types, as the gRPC service in
/// [`service`] serves it. The calls block (files, database): the service
/// runs them on blocking threads. Snapshot keys and names arrive as
/// containerd sends them (namespaced); labels as containerd sends them too.
pub trait SnapshotApi: Send + Sync + 'static {
    /// A new snapshot `key` of `kind` (active for Prepare, view for View) on
    /// the committed snapshot `parent` (empty for none); its mounts.
    fn create(
        &self,
        kind: Kind,
        key: &str,
        parent: &str,
        labels: HashMap<String, String>,
    ) -> Result<Vec<Mount>, SnapshotError>;

    /// A new active snapshot `key` on the committed snapshot `parent` (empty
    /// for none); its mounts.
    fn prepare(
        &self,
        key: &str,
        parent: &str,
        labels: HashMap<String, String>,
    ) -> Result<Vec<Mount>, SnapshotError> {
        self.create(Kind::Active, key, parent, labels)
    }

    /// A new read-only view `key` of the committed snapshot `parent`.
    fn view(
        &self,
        key: &str,
        parent: &str,
        labels: HashMap<String, String>,
    ) -> Result<Vec<Mount>, SnapshotError> {
        self.create(Kind::View, key, parent, labels)
    }

    /// The mounts of an active snapshot or view.
    fn mounts(&self, key: &str) -> Result<Vec<Mount>, SnapshotError>;

    /// Commits the active snapshot `key` as `name`, with `labels`.
    fn commit(
        &self,
        name: &str,
        key: &str,
        labels: HashMap<String, String>,
    ) -> Result<(), SnapshotError>;

    /// Removes `key` (not if it has children).
    fn remove(&self, key: &str) -> Result<(), SnapshotError>;

    fn stat(&self, key: &str) -> Result<Info, SnapshotError>;

    /// Updates `name` as containerd's `storage.UpdateInfo` does: only labels
    /// are mutable; `paths` empty (or `labels`) replaces them all,
    /// `labels.<key>` sets one (an empty or missing value removes it).
    fn update(
        &self,
        name: &str,
        labels: HashMap<String, String>,
        paths: &[String],
    ) -> Result<Info, SnapshotError>;

    /// Every snapshot matching any of `filters` (containerd syntax).
    fn list(&self, filters: &[String]) -> Result<Vec<Info>, SnapshotError>;

    fn usage(&self, key: &str) -> Result<Usage, SnapshotError>;

    /// Removes what no snapshot refers to any more.
    fn cleanup(&self) -> Result<(), SnapshotError>;

    /// Work a Prepare may do on the async runtime before [`SnapshotApi::prepare`]:
    /// the remote path (module `remote`). `Some(error)` is the answer to send
    /// (`ALREADY_EXISTS` once the requested target is committed); `None` goes
    /// on with `prepare`. None by default.
    fn prepare_remote(
        self: &Arc<Self>,
        key: &str,
        parent: &str,
        labels: &HashMap<String, String>,
    ) -> impl Future<Output = Option<SnapshotError>> + Send {
        let _ = (key, parent, labels);
        async { None }
    }

    /// Work before a snapshot's data is used (a Prepare or View on `name`,
    /// the Mounts of a snapshot whose chain holds it): imported layers
    /// committed without data are filled first (`remote/lazy.rs`). Nothing
    /// by default.
    fn before_use(
        self: &Arc<Self>,
        name: &str,
    ) -> impl Future<Output = Result<(), SnapshotError>> + Send {
        let _ = name;
        async { Ok(()) }
    }
}

/// The snapshotter proper, on overlayfs: synchronous operations, each one
/// short metadata transaction plus the directory work around it. Call from
/// blocking threads.
pub struct Snapshotter {
    root: PathBuf,
    meta: MetaStore,
    layout: Layout,
    /// Layers extracted from archives, when a layer source is configured.
    remote: Option<remote::Remote>,
    /// Layers mounted from archives: checked (and mounted again) before use.
    layers: Arc<LayerBacking>,
}

pub(crate) fn mkdir(path: &Path, mode: u32) -> Result<(), SnapshotError> {
    Ok(crate::dirs::mkdir(path, mode)?)
}

pub(crate) fn sync_dir(path: &Path) -> Result<(), SnapshotError> {
    Ok(crate::dirs::sync_dir(path)?)
}

pub(crate) use crate::dirs::{empty_dir, remove_all};

/// Disk usage of a directory tree as containerd's `fs.DiskUsage` counts it:
/// every inode once (hard links too), size in allocated 512-byte blocks.
pub fn disk_usage(root: &Path) -> Result<Usage, SnapshotError> {
    let mut seen = HashSet::new();
    let mut usage = Usage::default();
    let mut stack = vec![root.to_path_buf()];
    while let Some(path) = stack.pop() {
        let meta = fs::symlink_metadata(&path).map_err(|e| SnapshotError::io("stat", &path, e))?;
        if seen.insert((meta.dev(), meta.ino())) {
            usage.inodes += 1;
            usage.size += (meta.blocks() * 512) as i64;
        }
        if meta.is_dir() {
            let entries =
                fs::read_dir(&path).map_err(|e| SnapshotError::io("read directory", &path, e))?;
            for entry in entries {
                let entry = entry.map_err(|e| SnapshotError::io("read directory", &path, e))?;
                stack.push(entry.path());
            }
        }
    }
    Ok(usage)
}

impl Snapshotter {
    /// Opens (or creates) the snapshotter state under `root`. With a layer
    /// source, Prepare requests naming an archived layer take the remote path.
    pub fn open(
        root: &Path,
        source: Option<Arc<dyn LayerSource>>,
    ) -> Result<Arc<Self>, SnapshotError> {
        Self::open_with(root, source, crate::config::LayerMode::Extract)
    }

    /// [`Snapshotter::open`], with archived layers mounted where `layers`
    /// says and the kernel can (see `layer_mounts`).
    pub fn open_with(
        root: &Path,
        source: Option<Arc<dyn LayerSource>>,
        layers: impl Into<LayerOptions>,
    ) -> Result<Arc<Self>, SnapshotError> {
        let layer_options = layers.into();
        fs::create_dir_all(root).map_err(|e| SnapshotError::io("create root", root, e))?;
        // Mount points are compared with /proc/self/mountinfo, which spells
        // them canonically: a root reached through a symlink must never
        // leave mounts behind on Remove, Cleanup or a failed staging.
        let root =
            &fs::canonicalize(root).map_err(|e| SnapshotError::io("resolve root", root, e))?;
        mkdir(root, 0o700)?;
        let snapshots = root.join("snapshots");
        mkdir(&snapshots, 0o700)?;
        for dir in ["staging", "trash"] {
            let path = root.join(dir);
            mkdir(&path, 0o700)?;
            // Nothing in progress survives a restart.
            empty_dir(&path);
        }
        let meta = MetaStore::open(&root.join("metadata.redb"))?;
        let layers = Arc::new(match &source {
            None => LayerBacking::disabled(),
            Some(_) => LayerBacking::new(
                layer_options,
                &root.join("staging"),
                &root.join("layers"),
                &snapshots,
            )
            .map_err(SnapshotError::LayerBacking)?,
        });
        // Layers mounted from archives, mounted again after a restart.
        let dirs = fs::read_dir(&snapshots)
            .map_err(|e| SnapshotError::io("read directory", &snapshots, e))?
            .flatten()
            .map(|e| e.path());
        layers.remount_all(dirs);
        let remote =
            source.map(|source| remote::Remote::new(source, root.join("staging"), layers.clone()));
        Ok(Arc::new(Snapshotter {
            root: root.to_path_buf(),
            meta,
            layout: Layout::new(snapshots),
            remote,
            layers,
        }))
    }

    /// Makes sure every layer mounted from an archive in the chain of
    /// `name` (itself and its parents) is mounted, before its `fs` is
    /// handed to overlay (see [`LayerBacking::ensure_mounted`]): mounted
    /// again, or rebuilt from an archive holding it, or the request fails
    /// (FAILED_PRECONDITION) naming the layer and its backing file. A
    /// missing mount would otherwise be an empty lower directory: a
    /// container without the layer's files.
    fn ensure_chain_mounted(&self, name: &str) -> Result<(), SnapshotError> {
        let mut lowers = Vec::new();
        {
            let txn = self.meta.read()?;
            let mut next = name.to_string();
            while !next.is_empty() {
                let record = match txn.get(&next) {
                    Ok(r) => r,
                    // The request itself reports a missing snapshot.
                    Err(e) if e.is_not_found() => break,
                    Err(e) => return Err(e),
                };
                let chain_id = record
                    .labels
                    .get(crate::labels::TARGET_SNAPSHOT_REF)
                    .and_then(|t| t.parse::<crate::digest::Digest>().ok());
                lowers.push((next.clone(), record.id, chain_id));
                next = record.parent;
            }
        }
        let source = self.remote.as_ref().map(|r| r.source().as_ref());
        for (name, id, chain_id) in lowers {
            self.layers
                .ensure_mounted(source, &self.layout.dir(id), chain_id.as_ref())
                .map_err(|err| {
                    SnapshotError::FailedPrecondition(format!("snapshot {name:?}: {err}"))
                })?;
        }
        Ok(())
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub(crate) fn remote(&self) -> Option<&remote::Remote> {
        self.remote.as_ref()
    }

    /// Prepares for mounting, before anyone pulls them, what the layer
    /// store keeps of `layers` (see `layer_store`): blocking, one layer
    /// after the other, until `stop` says so. Returns how many layers were
    /// prepared.
    pub fn prepare_ahead(
        &self,
        layers: &[crate::catalog::LayerRef],
        stop: &dyn Fn() -> bool,
    ) -> usize {
        match &self.remote {
            Some(r) => r.layers().prepare_ahead(r.source().as_ref(), layers, stop),
            None => 0,
        }
    }

    /// Renames a fully built directory to its id. Called with the write
    /// transaction open: a directory already there belongs to no record (an
    /// id handed out by a transaction that never committed), so it goes.
    pub(crate) fn install(&self, built: &Path, dir: &Path) -> Result<(), SnapshotError> {
        self.discard_orphan(dir)?;
        fs::rename(built, dir).map_err(|e| SnapshotError::io("rename into place", dir, e))
    }

    /// An empty snapshot directory (`fs/` only) at `dir`, for a layer
    /// committed before its data is there. Called with the write
    /// transaction open, as [`Snapshotter::install`].
    pub(crate) fn install_empty(&self, dir: &Path) -> Result<(), SnapshotError> {
        self.discard_orphan(dir)?;
        mkdir(dir, 0o700)?;
        mkdir(&dir.join("fs"), 0o755)?;
        sync_dir(dir)
    }

    /// Discards what is at `dir`, the directory of an id no record holds (see
    /// [`Snapshotter::install`]), if anything is.
    fn discard_orphan(&self, dir: &Path) -> Result<(), SnapshotError> {
        if fs::symlink_metadata(dir).is_ok() {
            tracing::warn!(path = %dir.display(), "replacing orphaned snapshot directory");
            self.discard(dir)?;
        }
        Ok(())
    }

    /// Moves `path` into the trash (instantly), then deletes it.
    fn discard(&self, path: &Path) -> Result<(), SnapshotError> {
        let trash = tempfile::Builder::new()
            .prefix("old-")
            .tempdir_in(self.root.join("trash"))
            .map_err(|e| SnapshotError::io("create directory in", self.root.join("trash"), e))?
            .keep();
        let dest = trash.join("d");
        fs::rename(path, &dest).map_err(|e| SnapshotError::io("move to trash", path, e))?;
        remove_all(&trash);
        Ok(())
    }
}

impl SnapshotApi for Snapshotter {
    /// Prepare (`Kind::Active`) or View (`Kind::View`): a new snapshot `key`
    /// on the committed snapshot `parent` (empty for none), once the chain
    /// of `parent` is mounted.
    fn create(
        &self,
        kind: Kind,
        key: &str,
        parent: &str,
        labels: HashMap<String, String>,
    ) -> Result<Vec<Mount>, SnapshotError> {
        self.ensure_chain_mounted(parent)?;
        let labels = clean_labels(labels)?;
        let snapshots = self.layout.snapshots_dir();
        let txn = self.meta.write()?;
        let temp = tempfile::Builder::new()
            .prefix("new-")
            .tempdir_in(snapshots)
            .map_err(|e| SnapshotError::io("create temporary directory in", snapshots, e))?;
        let fs_dir = temp.path().join("fs");
        mkdir(&fs_dir, 0o755)?;
        if kind == Kind::Active {
            mkdir(&temp.path().join("work"), 0o711)?;
        }
        let chain = txn.create(kind, key, parent, labels, Usage::default())?;
        if let Some(&parent_id) = chain.parent_ids.first() {
            // The new layer's root belongs to whoever owns the parent's.
            let parent_fs = self.layout.upper(parent_id);
            let st = fs::metadata(&parent_fs)
                .map_err(|e| SnapshotError::io("stat parent", &parent_fs, e))?;
            std::os::unix::fs::lchown(&fs_dir, Some(st.uid()), Some(st.gid()))
                .map_err(|e| SnapshotError::io("chown", &fs_dir, e))?;
        }
        sync_dir(temp.path())?;
        let dir = self.layout.dir(chain.id);
        self.install(temp.path(), &dir)?;
        let _ = temp.keep();
        if let Err(err) = sync_dir(snapshots).and_then(|()| txn.commit()) {
            remove_all(&dir);
            return Err(err);
        }
        Ok(self.layout.mounts(&chain))
    }

    /// The mounts of an active or view snapshot, every layer mounted from
    /// an archive below it checked first.
    fn mounts(&self, key: &str) -> Result<Vec<Mount>, SnapshotError> {
        let chain = self.meta.read()?.chain(key)?;
        if chain.kind == Kind::Committed {
            return Err(SnapshotError::FailedPrecondition(format!(
                "snapshot {key:?} is committed, not active or view"
            )));
        }
        self.ensure_chain_mounted(key)?;
        Ok(self.layout.mounts(&chain))
    }

    /// Commits the active snapshot `key` as `name`, with `labels` (replacing
    /// the active snapshot's). Measures its disk usage first, outside the
    /// transaction, so the transaction itself stays short.
    fn commit(
        &self,
        name: &str,
        key: &str,
        labels: HashMap<String, String>,
    ) -> Result<(), SnapshotError> {
        let labels = clean_labels(labels)?;
        let measured = match self.meta.read()?.get(key) {
            Ok(record) if record.kind == Kind::Active => {
                Some((record.id, disk_usage(&self.layout.upper(record.id))?))
            }
            _ => None,
        };
        let txn = self.meta.write()?;
        let before = txn.get(key)?;
        let usage = match (&measured, &before) {
            (Some((id, usage)), Some(r)) if r.id == *id => *usage,
            (_, Some(r)) if r.kind == Kind::Active => disk_usage(&self.layout.upper(r.id))?,
            _ => Usage::default(),
        };
        txn.commit_active(key, name, labels, usage)?;
        txn.commit()
    }

    /// Forgets `key` (not if it has children) and then deletes its
    /// directory. Deleting is how space is freed, so it must work on a full
    /// disk: a transaction that fails on I/O is retried once with the
    /// metadata store's reserve released (made again once the directory is
    /// gone).
    fn remove(&self, key: &str) -> Result<(), SnapshotError> {
        let forget = || -> Result<meta::Record, SnapshotError> {
            let txn = self.meta.write()?;
            let record = txn.remove(key)?;
            txn.commit()?;
            Ok(record)
        };
        let record = match forget() {
            Err(err) if meta::needs_reopen(&err) && self.meta.release_reserve() => {
                tracing::warn!(key, error = %err, "removing a snapshot failed on I/O: retrying with the reserve released");
                forget()?
            }
            other => other?,
        };
        remove_all(&self.layout.dir(record.id));
        self.meta.keep_reserve();
        Ok(())
    }

    fn stat(&self, key: &str) -> Result<Info, SnapshotError> {
        Ok(Info {
            name: key.to_string(),
            record: self.meta.read()?.get(key)?,
        })
    }

    /// Updates the labels of `name` (see [`meta::WriteTxn::update`], containerd's `storage.UpdateInfo`).
    fn update(
        &self,
        name: &str,
        labels: HashMap<String, String>,
        paths: &[String],
    ) -> Result<Info, SnapshotError> {
        // Empty values mean "remove" here, so validate without dropping them.
        let labels: BTreeMap<String, String> = labels.into_iter().collect();
        clean_labels(labels.clone())?;
        let txn = self.meta.write()?;
        let record = txn.update(name, &labels, paths)?;
        txn.commit()?;
        Ok(Info {
            name: name.to_string(),
            record,
        })
    }

    /// Every snapshot matching any of `filters` (containerd syntax).
    fn list(&self, filters: &[String]) -> Result<Vec<Info>, SnapshotError> {
        let filter = Filter::parse_all(filters)?;
        let mut all = self.meta.read()?.list()?;
        all.retain(|info| filter.matches(info));
        Ok(all)
    }

    /// Disk usage: measured now for an active snapshot, as recorded at
    /// commit otherwise.
    fn usage(&self, key: &str) -> Result<Usage, SnapshotError> {
        let record = self.meta.read()?.get(key)?;
        if record.kind == Kind::Active {
            return disk_usage(&self.layout.upper(record.id));
        }
        Ok(record.usage)
    }

    /// Removes every snapshot directory no record refers to (left by a crash
    /// or a failed removal), and staged layers nobody is waiting for.
    /// Orphans are moved to the trash under the write lock, so no concurrent
    /// Prepare can be handed one of them, and deleted after.
    fn cleanup(&self) -> Result<(), SnapshotError> {
        let snapshots = self.layout.snapshots_dir().to_path_buf();
        let trash = self.root.join("trash");
        {
            let txn = self.meta.write()?;
            let ids = txn.ids()?;
            let entries = fs::read_dir(&snapshots)
                .map_err(|e| SnapshotError::io("read directory", &snapshots, e))?;
            for entry in entries {
                let entry =
                    entry.map_err(|e| SnapshotError::io("read directory", &snapshots, e))?;
                let name = entry.file_name();
                let recorded = name
                    .to_str()
                    .and_then(|n| n.parse::<u64>().ok())
                    .is_some_and(|id| ids.contains(&id));
                if recorded {
                    continue;
                }
                tracing::info!(path = %entry.path().display(), "removing orphaned snapshot directory");
                let dest = trash.join(format!("orphan-{}", name.to_string_lossy()));
                if let Err(err) = fs::rename(entry.path(), &dest) {
                    tracing::warn!(path = %entry.path().display(), error = %err, "failed to move orphan to trash");
                }
            }
            // Dropping the transaction rolls it back: nothing was written.
        }
        empty_dir(&trash);
        if let Some(remote) = &self.remote {
            remote.cleanup();
        }
        Ok(())
    }

    fn prepare_remote(
        self: &Arc<Self>,
        key: &str,
        parent: &str,
        labels: &HashMap<String, String>,
    ) -> impl Future<Output = Option<SnapshotError>> + Send {
        remote::prepare(self, key, parent, labels)
    }

    fn before_use(
        self: &Arc<Self>,
        name: &str,
    ) -> impl Future<Output = Result<(), SnapshotError>> + Send {
        let (sn, name) = (self.clone(), name.to_string());
        async move { remote::materialize(&sn, &name).await }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_usage_counts_hard_links_once() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("fs");
        fs::create_dir_all(root.join("sub")).unwrap();
        fs::write(root.join("sub/a"), vec![7u8; 10000]).unwrap();
        fs::hard_link(root.join("sub/a"), root.join("b")).unwrap();
        std::os::unix::fs::symlink("sub/a", root.join("c")).unwrap();
        let u = disk_usage(&root).unwrap();
        // fs, sub, a (= b), c
        assert_eq!(u.inodes, 4);
        let blocks: i64 = ["", "sub", "sub/a", "c"]
            .iter()
            .map(|p| fs::symlink_metadata(root.join(p)).unwrap().blocks() as i64 * 512)
            .sum();
        assert_eq!(u.size, blocks);
        assert!(u.size >= 10000);
    }
    /// A tmpfs mounted for one test, unmounted (lazily, in case something
    /// still holds it) when dropped.
    struct Tmpfs {
        dir: tempfile::TempDir,
    }

    impl Tmpfs {
        fn mount(size: &str) -> Tmpfs {
            let dir = tempfile::tempdir().unwrap();
            let ok = std::process::Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
                .arg(dir.path())
                .status()
                .unwrap()
                .success();
            assert!(ok, "mount tmpfs on {}", dir.path().display());
            Tmpfs { dir }
        }

        fn resize(&self, size: &str) {
            let ok = std::process::Command::new("mount")
                .args(["-o", &format!("remount,size={size}")])
                .arg(self.dir.path())
                .status()
                .unwrap()
                .success();
            assert!(ok, "remount tmpfs");
        }
    }

    impl Drop for Tmpfs {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(self.dir.path())
                .status();
        }
    }

    /// Fills the file system holding `dir` with one file, up to ENOSPC.
    fn fill(dir: &Path) -> PathBuf {
        use std::io::Write;
        let path = dir.join("filler");
        let mut f = fs::File::create(&path).unwrap();
        let chunk = vec![0x5a; 64 * 1024];
        loop {
            match f.write(&chunk) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => panic!("filling {}: {e}", path.display()),
            }
        }
        path
    }

    /// A pull that failed on a full disk leaves its active snapshot behind;
    /// removing it (how an operator frees space) works on the still-full
    /// disk, and so does removing the layer below; the reserve is back once
    /// the removal freed room.
    #[test]
    fn remove_works_on_a_full_disk() {
        crate::testsupport::requires_root!();
        let tmpfs = Tmpfs::mount("48m");
        let root = tmpfs.dir.path().join("root");
        let sn = Snapshotter::open(&root, None).unwrap();
        let reserve = root.join("metadata.redb.reserve");
        assert!(reserve.exists(), "no reserve at open");
        sn.prepare("base", "", HashMap::new()).unwrap();
        sn.commit("base-c", "base", HashMap::new()).unwrap();
        let mounts = sn
            .prepare("ns/1/extract-x", "base-c", HashMap::new())
            .unwrap();
        let upper = mounts[0]
            .options
            .iter()
            .find_map(|o| o.strip_prefix("upperdir="))
            .unwrap()
            .to_string();
        // The pull's data, then the disk full, as a pull that failed on it.
        fs::write(Path::new(&upper).join("data"), vec![1u8; 16 << 20]).unwrap();
        let _filler = fill(tmpfs.dir.path());
        let big = HashMap::from([("l".to_string(), "v".repeat(4000))]);
        let mut failed = false;
        for i in 0..200 {
            if sn
                .prepare(&format!("more-{i}"), "base-c", big.clone())
                .is_err()
            {
                failed = true;
                break;
            }
        }
        assert!(failed, "the disk never filled up");
        sn.remove("ns/1/extract-x").unwrap();
        assert!(!Path::new(&upper).exists());
        assert!(reserve.exists(), "the reserve was not made again");
        let names: Vec<String> = sn.list(&[]).unwrap().into_iter().map(|i| i.name).collect();
        for name in names.iter().filter(|n| n.starts_with("more-")) {
            sn.remove(name).unwrap();
        }
        sn.remove("base-c").unwrap();
        assert!(sn.list(&[]).unwrap().is_empty());
        drop(sn);
    }

    /// A full disk makes redb refuse every later operation until the
    /// database is re-opened: once space is back, Prepare, Commit and Remove
    /// work again without a restart, and nothing half-written is left.
    #[test]
    fn full_disk_recovers_without_restart() {
        crate::testsupport::requires_root!();
        let tmpfs = Tmpfs::mount("3m");
        let root = tmpfs.dir.path().join("root");
        let sn = Snapshotter::open(&root, None).unwrap();
        sn.prepare("base", "", HashMap::new()).unwrap();
        sn.commit("base-c", "base", HashMap::new()).unwrap();

        let filler = fill(tmpfs.dir.path());
        // Big labels make every transaction write pages the disk has no
        // room for.
        let big = |i: usize| HashMap::from([(format!("l{i}"), "v".repeat(4000))]);
        let mut failed = None;
        for i in 0..200 {
            if let Err(err) = sn.prepare(&format!("full-{i}"), "base-c", big(i)) {
                failed = Some(err);
                break;
            }
        }
        let err = failed.expect("no Prepare failed on a full disk");
        assert!(
            !matches!(
                err,
                SnapshotError::NotFound(_) | SnapshotError::AlreadyExists(_)
            ),
            "{err}"
        );
        // Still full: failing cleanly, not panicking.
        assert!(sn.prepare("still-full", "base-c", big(999)).is_err());

        // Space is back (here: the file system grows, as a site would free
        // space); the same daemon goes on.
        tmpfs.resize("64m");
        fs::remove_file(&filler).unwrap();
        sn.prepare("after", "base-c", big(1000)).unwrap();
        sn.commit("after-c", "after", HashMap::new()).unwrap();
        sn.remove("after-c").unwrap();
        sn.prepare("after2", "", HashMap::new()).unwrap();
        sn.remove("after2").unwrap();
        let names: Vec<String> = sn.list(&[]).unwrap().into_iter().map(|i| i.name).collect();
        assert!(names.contains(&"base-c".to_string()), "{names:?}");

        // No directory without its record (a Prepare whose commit failed
        // took its directory away again), and Cleanup finds nothing to do.
        let ids: HashSet<u64> = sn
            .list(&[])
            .unwrap()
            .into_iter()
            .map(|i| i.record.id)
            .collect();
        let dirs: Vec<String> = fs::read_dir(root.join("snapshots"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        for d in &dirs {
            let id: u64 = d.parse().unwrap_or_else(|_| panic!("stray entry {d}"));
            assert!(ids.contains(&id), "orphaned snapshot directory {d}");
        }
        assert_eq!(dirs.len(), ids.len());
        drop(sn);
    }
}

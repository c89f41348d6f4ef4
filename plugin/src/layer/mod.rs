//! A layer backed by an archive: one home for everything that turns an
//! archived layer into a read-only mounted directory instead of extracting
//! it. The snapshotter calls only [`LayerBacking`].
//!
//! ```text
//! index/      the EROFS tar index builder: a layer tar in, a metadata-only
//!             EROFS image out whose files point at their data in the tar
//! store.rs    `<root>/layers/<digest>`: each layer's index (and copy), built
//!             once, kept within a budget, hard-linked into snapshots
//! record.rs   `backing.json`: the backing file, its identity, the digests
//! mount.rs    mount(2) of an index, the kernel probe, remount after restart
//! error.rs    `LayerError`
//! ```
//!
//! A layer staged this way is a directory like an extracted one, whose `fs`
//! is the mount point of its index:
//! ```text
//! <dir>/layer.erofs   the EROFS metadata image (a hard link to the store's:
//!                     the store's in-use mark)
//! <dir>/mount.erofs   the snapshot's own copy of it, with a UUID of its own
//!                     (the one mounted: overlay refuses two lowers with one
//!                     UUID, as the same layer twice in a chain would give)
//! <dir>/backing.json  the backing file: path, identity (dev, inode, size,
//!                     mtime, ctime), where the layer starts, digests
//! <dir>/layer.tar     for a layer not stored as a plain tar (compressed
//!                     layer or archive): its tar, decompressed once; the
//!                     backing file (named relatively)
//! <dir>/fs            the EROFS mount (read-only), overlay's lower dir
//! ```
//! The files are hard links to an entry of the [`store::LayerStore`], which
//! builds each layer's index (and copy) once, on pull or ahead of it, and
//! keeps the entries no snapshot uses within a budget. The snapshotter's
//! overlay layout gives children the same `lowerdir`s either way. The mount
//! exists from staging on: containerd mounts the overlay of a child right
//! after Prepare. Renaming the staged directory into `snapshots/` moves the
//! mount with it. The staged directory is synced before it counts.
//!
//! A mount can go away under the daemon (a reboot, an operator's `umount`),
//! and overlay would then take the empty `fs` as the layer: a container
//! without the layer's files. So every use checks it first
//! ([`LayerBacking::ensure_mounted`]: Prepare, View and Mounts for each
//! lower of the chain, and [`LayerBacking::remount_all`] at start): a
//! missing mount is mounted again from the record, or the layer is rebuilt
//! from any archive that holds it (the store entry built again, its files
//! linked into the snapshot again), or the call fails naming the layer and
//! its backing file. A copy inside the daemon's root (`layer.tar`) is known
//! by its content: when its identity changed (the root copied to another
//! file system, a `touch`), it is hashed once against the diffID and the
//! record updated; an archive is known by its identity (device, inode,
//! size, times). [`crate::dirs::remove_all`] unmounts before any directory
//! is deleted (Remove, cleanup, failed staging).
//!
//! The backing file is named to the kernel as `/proc/self/fd/<n>` of the
//! archive opened and checked here, so the mount gets exactly the file whose
//! identity was checked, and any path works (mount options cannot carry a
//! `,`).

pub(crate) mod copy;
mod error;
pub mod index;
pub mod mount;
pub(crate) mod record;
pub mod rewrites;
pub(crate) mod store;

pub use error::LayerError;

use std::fs;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use crate::catalog::{FileKey, LayerRef, LayerSource, PlainBlob};
use crate::config::{LayerBackingMode, LayerMode, PrepareLayers};
use crate::digest::Digest;

use record::{BackingRecord, COPY, IMAGE, RECORD};
use store::{plain_blob, LayerStore};

/// The snapshot's own copy of the index, the one mounted (see the module
/// documentation).
pub(crate) const OWN_IMAGE: &str = "mount.erofs";

/// Where the superblock's UUID lies in an EROFS image (superblock at 1024,
/// `uuid` at 48 in it; no superblock checksum is set).
const UUID_OFFSET: u64 = 1024 + 48;

/// What [`LayerBacking::ensure_mounted`] found or did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Ensured {
    /// Not a layer mounted from an archive (no `backing.json`).
    NotBacked,
    /// Mounted already.
    Mounted,
    /// Mounted again from its record.
    Remounted,
    /// Rebuilt from an archive holding it, and mounted.
    Rebuilt,
}

/// How layers taken from archives become snapshots (see
/// [`crate::config::Config::layer_mounts`]).
#[derive(Clone, Copy, Debug)]
pub struct LayerOptions {
    pub mode: LayerMode,
    pub prepare: PrepareLayers,
    /// What plain layers of uncompressed archives are read from.
    pub backing: LayerBackingMode,
    /// Budget of the layer store's entries no snapshot uses.
    pub store_bytes: u64,
    /// What one index build may hold in memory.
    pub index_limits: index::IndexLimits,
}

impl From<LayerMode> for LayerOptions {
    fn from(mode: LayerMode) -> Self {
        LayerOptions {
            mode,
            prepare: PrepareLayers::OnPull,
            backing: LayerBackingMode::Private,
            store_bytes: crate::config::DEFAULT_LAYER_STORE_BYTES,
            index_limits: index::IndexLimits {
                max_entries: crate::config::DEFAULT_INDEX_MAX_ENTRIES,
                max_name_bytes: crate::config::DEFAULT_INDEX_MAX_NAME_BYTES,
            },
        }
    }
}

impl LayerOptions {
    pub fn from_config(config: &crate::config::Config) -> Self {
        LayerOptions {
            mode: config.layer_mounts,
            prepare: config.prepare_layers,
            backing: config.layer_backing,
            store_bytes: config.layer_store_bytes,
            index_limits: index::IndexLimits {
                max_entries: config.index_max_entries,
                max_name_bytes: config.index_max_name_bytes,
            },
        }
    }
}

/// What a staged layer takes on disk (the snapshot's usage).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Staged {
    pub bytes: u64,
    pub inodes: u64,
}

/// Whether, and how, layers are mounted instead of extracted.
pub(crate) struct LayerBacking {
    /// `None`: extraction only (configured so, or the kernel cannot).
    store: Option<LayerStore>,
    /// Compressed layers are prepared as soon as their archive arrives.
    ahead: bool,
    /// A layer that could not be mounted was logged once.
    warned: AtomicBool,
    /// Held while a missing mount is made again: two requests for one
    /// chain never mount twice on one `fs`.
    remounts: Mutex<()>,
}

impl LayerBacking {
    /// Extraction only.
    pub(crate) fn disabled() -> Self {
        LayerBacking {
            store: None,
            ahead: false,
            warned: AtomicBool::new(false),
            remounts: Mutex::new(()),
        }
    }

    /// Decides from `opts` and what the kernel can do (probed with a tiny
    /// index mounted under `scratch`), and opens the layer store in
    /// `store_dir`. `erofs` on a kernel that cannot is an error; `auto`
    /// then logs once and extracts. With mounts off, prepared layers left
    /// by an earlier run are dropped once no snapshot uses them. The store
    /// must be on the file system of `snapshots` (snapshots hard-link its
    /// entries).
    pub(crate) fn new(
        opts: LayerOptions,
        scratch: &Path,
        store_dir: &Path,
        snapshots: &Path,
    ) -> Result<Self, LayerError> {
        let disabled = || -> Result<Self, LayerError> {
            if store_dir.exists() {
                LayerStore::open(store_dir, 0)?;
            }
            Ok(Self::disabled())
        };
        if opts.mode == LayerMode::Extract {
            return disabled();
        }
        match mount::probe(scratch) {
            Ok(()) => {
                let store = LayerStore::open(store_dir, opts.store_bytes)?
                    .with_limits(opts.index_limits)
                    .archive_backed(opts.backing == LayerBackingMode::Archive);
                same_file_system(store_dir, snapshots)?;
                let (entries, bytes) = store.usage();
                tracing::info!(
                    prepare = ?opts.prepare,
                    backing = ?opts.backing,
                    store_entries = entries,
                    store_bytes = bytes,
                    "archived layers are mounted (EROFS), not extracted"
                );
                Ok(LayerBacking {
                    store: Some(store),
                    ahead: opts.prepare == PrepareLayers::OnArrival,
                    warned: AtomicBool::new(false),
                    remounts: Mutex::new(()),
                })
            }
            Err(why) if opts.mode == LayerMode::Erofs => Err(why),
            Err(why) => {
                tracing::info!(reason = %why, "EROFS layer mounts unavailable: layers are extracted");
                disabled()
            }
        }
    }

    /// Mounts again, at start, the index of every mounted layer among
    /// `dirs` (snapshot directories) whose mount is gone (a reboot), with
    /// [`LayerBacking::ensure_mounted`] (no archive is asked: the catalog
    /// may not have scanned yet; a layer that needs rebuilding is rebuilt
    /// on its first use). A failure is logged at error level and counted
    /// (`airgap_layer_remount_failures_total`); a container using the
    /// layer then fails to start, naming it, until it is mounted again.
    pub(crate) fn remount_all(&self, dirs: impl IntoIterator<Item = PathBuf>) {
        for dir in dirs {
            let _ = self.ensure_mounted(None, &dir, None);
        }
    }

    /// Makes sure the layer staged in `dir` (a snapshot directory) is
    /// mounted on `dir/fs`, if it is a layer mounted from an archive: a
    /// cheap `statfs` when it is; else mounted again from `backing.json`;
    /// else, with `source` and the layer's `chain_id`, rebuilt from any
    /// archive holding it; else an error naming the layer and its backing
    /// file (logged at error level, counted). Blocking.
    pub(crate) fn ensure_mounted(
        &self,
        source: Option<&dyn LayerSource>,
        dir: &Path,
        chain_id: Option<&Digest>,
    ) -> Result<Ensured, LayerError> {
        let record_path = dir.join(RECORD);
        if fs::symlink_metadata(&record_path).is_err() {
            return Ok(Ensured::NotBacked);
        }
        let fs_dir = dir.join("fs");
        if mount::is_mounted(&fs_dir) {
            return Ok(Ensured::Mounted);
        }
        let _one = self.remounts.lock().unwrap_or_else(|e| e.into_inner());
        if mount::is_mounted(&fs_dir) {
            return Ok(Ensured::Mounted);
        }
        let result = self.mount_again(source, dir, chain_id);
        match &result {
            Ok(how) => tracing::info!(snapshot = %dir.display(), how = ?how, "layer mounted again"),
            Err(err) => {
                crate::metrics::global().layer_remount_failures.inc();
                tracing::error!(
                    snapshot = %dir.display(),
                    error = %err,
                    "a layer mounted from an archive is not mounted and cannot be mounted again: containers using it fail to start until it is"
                );
            }
        }
        result
    }

    fn mount_again(
        &self,
        source: Option<&dyn LayerSource>,
        dir: &Path,
        chain_id: Option<&Digest>,
    ) -> Result<Ensured, LayerError> {
        let record = BackingRecord::read(&dir.join(RECORD))?;
        let why = match remount(dir, &record) {
            Ok(()) => return Ok(Ensured::Remounted),
            Err(err) => err,
        };
        tracing::warn!(snapshot = %dir.display(), digest = %record.digest, error = %why, "mounting a layer again from its record failed: looking for an archive holding it");
        let archive = dir.join(&record.archive);
        let unavailable = |reason: String| LayerError::Unavailable {
            digest: record.digest,
            archive: archive.clone(),
            reason,
        };
        let (Some(store), Some(source), Some(chain_id)) = (&self.store, source, chain_id) else {
            return Err(unavailable(why.to_string()));
        };
        let layer = source
            .layer(chain_id)
            .filter(|l| l.diff_id == record.diff_id)
            // A layer taken by its diffID from another parent's image
            // (containerd 2.3+'s labels): its chain ID is in no archive.
            .or_else(|| {
                source
                    .layer_with_diff_id(&record.diff_id)
                    .map(|l| LayerRef {
                        chain_id: *chain_id,
                        ..l
                    })
            })
            .ok_or_else(|| unavailable(format!("{why}; and no archive holds the layer")))?;
        rebuild(store, source, &layer, dir)
            .map(|()| Ensured::Rebuilt)
            .map_err(|err| unavailable(format!("{why}; rebuilding it from the archive: {err}")))
    }

    /// Prepares, ahead of any pull, what the store keeps of `layers` (see
    /// [`LayerStore::prepare_ahead`]); blocking. Returns how many layers
    /// were prepared.
    pub(crate) fn prepare_ahead(
        &self,
        source: &dyn LayerSource,
        layers: &[LayerRef],
        stop: &dyn Fn() -> bool,
    ) -> usize {
        match &self.store {
            Some(store) => store.prepare_ahead(source, layers, self.ahead, stop),
            None => 0,
        }
    }

    /// Stages `layer` in `dir` (which must not exist) as a mounted index:
    /// in place when it is an uncompressed layer of an uncompressed archive,
    /// else over a decompressed copy; returns its usage. `None`: extract it
    /// instead (mounts off, or indexing failed: logged, `dir` removed).
    pub(crate) fn stage(
        &self,
        source: &dyn LayerSource,
        layer: &LayerRef,
        dir: &Path,
    ) -> Option<Staged> {
        let store = self.store.as_ref()?;
        let plain = plain_blob(source, layer);
        let backing = match &plain {
            Some(p) if store.in_place() => p.path.display().to_string(),
            Some(p) => format!("a private copy ({COPY}) of {}", p.path.display()),
            None => format!("a decompressed copy ({COPY})"),
        };
        let started = Instant::now();
        match stage(store, source, layer, plain.as_ref(), dir) {
            Ok((usage, built)) => {
                tracing::info!(
                    chain_id = %layer.chain_id,
                    backing = %backing,
                    prepared_now = built.is_some(),
                    entries = built.map(|s| s.tree.entries),
                    metadata_bytes = built.map(|s| s.image.bytes),
                    tar_bytes = built.map(|s| s.tar_bytes),
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "layer mounted from archive (EROFS)"
                );
                crate::metrics::global().layers_mounted.inc();
                Some(usage)
            }
            Err(err) => {
                crate::metrics::global().layer_mount_failures.inc();
                crate::dirs::remove_all(dir);
                let first = !self.warned.swap(true, Ordering::Relaxed);
                tracing::warn!(
                    chain_id = %layer.chain_id,
                    digest = %layer.digest,
                    backing = %backing,
                    error = %err,
                    first,
                    "mounting the layer from the archive failed: extracting it"
                );
                None
            }
        }
    }
}

/// Fails unless `store_dir` and `snapshots` are on one file system (the
/// layer store's entries are hard-linked into snapshots).
fn same_file_system(store_dir: &Path, snapshots: &Path) -> Result<(), LayerError> {
    let dev = |p: &Path| {
        fs::metadata(p)
            .map(|m| m.dev())
            .map_err(LayerError::io("stat", p))
    };
    if dev(store_dir)? == dev(snapshots)? {
        Ok(())
    } else {
        Err(LayerError::OtherFileSystem {
            store: store_dir.to_owned(),
            snapshots: snapshots.to_owned(),
        })
    }
}

/// Links the layer's prepared entry into `dir` and mounts it on `dir/fs`.
fn stage(
    store: &LayerStore,
    source: &dyn LayerSource,
    layer: &LayerRef,
    plain: Option<&PlainBlob>,
    dir: &Path,
) -> Result<(Staged, Option<index::IndexStats>), LayerError> {
    let linked = store.link_into(source, layer, plain, dir)?;
    // The backing file the mount gets: the archive as opened when indexed
    // (checked again now), or the copy linked here.
    let copy;
    let file = match plain.filter(|_| !linked.record.archive.is_relative()) {
        Some(p) => {
            check_unchanged(p, &linked.record)?;
            &*p.file
        }
        None => {
            copy = fs::File::open(dir.join(COPY)).map_err(LayerError::io("open", dir))?;
            &copy
        }
    };
    let image = own_image(dir, &layer.diff_id)?;
    // The staged directory counts once its entries are durable.
    crate::dirs::sync_dir(dir)?;
    mount::mount(&image, &mount::fd_path(file), &dir.join("fs"))?;
    let size = [IMAGE, OWN_IMAGE, COPY]
        .iter()
        .filter_map(|n| fs::metadata(dir.join(n)).ok())
        .map(|m| m.blocks() * 512)
        .sum::<u64>();
    Ok((
        Staged {
            bytes: size,
            inodes: linked.record.inodes,
        },
        linked.built,
    ))
}

/// The snapshot's own copy of its index (`mount.erofs`), made from the
/// store's (`layer.erofs`) with a UUID of its own if it is not there yet
/// (a snapshot staged before there were copies gets one when mounted
/// again). Written beside, synced, renamed into place.
fn own_image(dir: &Path, diff_id: &Digest) -> Result<PathBuf, LayerError> {
    let own = dir.join(OWN_IMAGE);
    if own.is_file() {
        return Ok(own);
    }
    let shared = dir.join(IMAGE);
    let tmp = dir.join(format!(".{OWN_IMAGE}.new"));
    let _ = fs::remove_file(&tmp);
    fs::copy(&shared, &tmp).map_err(LayerError::io("copy", &shared))?;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let seed = format!("{diff_id} {} {nanos} {}", dir.display(), std::process::id());
    let seed = Digest::of(seed.as_bytes());
    let uuid = &seed.as_bytes()[..16];
    fs::OpenOptions::new()
        .write(true)
        .open(&tmp)
        .and_then(|f| {
            f.write_all_at(uuid, UUID_OFFSET)?;
            f.sync_all()
        })
        .map_err(LayerError::io("write the UUID of", &tmp))?;
    fs::rename(&tmp, &own).map_err(LayerError::io("rename into place", &own))?;
    Ok(own)
}

/// Mounts the index staged in `dir` again from its record. An archive must
/// still be the file indexed (device, inode, size, times); a copy inside
/// the root whose identity changed is hashed against the diffID once and
/// its record updated.
fn remount(dir: &Path, record: &BackingRecord) -> Result<(), LayerError> {
    let backing = dir.join(&record.archive);
    let file = fs::File::open(&backing).map_err(LayerError::io("open", &backing))?;
    let key = file
        .metadata()
        .map(|m| FileKey::of(&m))
        .map_err(LayerError::io("stat", &backing))?;
    if !record.matches(&key) {
        if record.archive.is_absolute() {
            return Err(LayerError::Changed);
        }
        verify_copy(&file, &backing, record)?;
        let updated = BackingRecord {
            key,
            ..record.clone()
        };
        updated.replace(dir)?;
        tracing::info!(
            snapshot = %dir.display(),
            diff_id = %record.diff_id,
            "a layer's copy changed identity (moved, touched): its content matches the layer, its record is updated"
        );
    }
    let image = own_image(dir, &record.diff_id)?;
    mount::mount(&image, &mount::fd_path(&file), &dir.join("fs"))?;
    Ok(())
}

/// Hashes the layer's bytes in a copy (from where the layer starts to the
/// end) against its diffID.
fn verify_copy(file: &fs::File, path: &Path, record: &BackingRecord) -> Result<(), LayerError> {
    let mut hasher = crate::digest::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut pos = record.data_base;
    loop {
        let n = file
            .read_at(&mut buf, pos)
            .map_err(LayerError::io("read", path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        pos += n as u64;
    }
    if hasher.finish() == record.diff_id {
        Ok(())
    } else {
        Err(LayerError::NotTheLayer {
            path: path.to_owned(),
            diff_id: record.diff_id,
        })
    }
}

/// Rebuilds the layer staged in `dir` from an archive holding it: the
/// store's entry made for the archive as it is now, its files linked into
/// `dir` again (replacing the old links; a copy left over from an earlier
/// backing is removed), the snapshot's own image and record rewritten, the
/// directory synced, mounted.
fn rebuild(
    store: &LayerStore,
    source: &dyn LayerSource,
    layer: &LayerRef,
    dir: &Path,
) -> Result<(), LayerError> {
    let plain = plain_blob(source, layer);
    let lock = store.build_lock(&layer.digest);
    let _building = lock.lock().unwrap_or_else(|e| e.into_inner());
    let entry = store.entry_dir(&layer.digest);
    if !entry_copy_is_good(&entry) {
        // The snapshot's copy is a hard link to the entry's: a copy that
        // changed is changed in both, and is built again.
        store.forget(&layer.digest);
    }
    let (record, _) = store.ensure(source, layer, plain.as_ref(), true)?;
    let mut names = vec![IMAGE];
    if record.archive.is_relative() {
        names.push(COPY);
    } else {
        let old = dir.join(COPY);
        if old.exists() {
            fs::remove_file(&old).map_err(LayerError::io("remove", &old))?;
        }
    }
    for name in names {
        let tmp = dir.join(format!(".{name}.new"));
        let _ = fs::remove_file(&tmp);
        fs::hard_link(entry.join(name), &tmp).map_err(LayerError::io("link", &entry.join(name)))?;
        fs::rename(&tmp, dir.join(name)).map_err(LayerError::io("rename into place", &tmp))?;
    }
    let own = dir.join(OWN_IMAGE);
    if own.exists() {
        fs::remove_file(&own).map_err(LayerError::io("remove", &own))?;
    }
    let image = own_image(dir, &layer.diff_id)?;
    record.replace(dir)?;
    let copy;
    let file = match plain.as_ref().filter(|_| !record.archive.is_relative()) {
        Some(p) => {
            check_unchanged(p, &record)?;
            &*p.file
        }
        None => {
            copy = fs::File::open(dir.join(COPY)).map_err(LayerError::io("open", dir))?;
            &copy
        }
    };
    mount::mount(&image, &mount::fd_path(file), &dir.join("fs"))?;
    tracing::info!(snapshot = %dir.display(), digest = %layer.digest, backing = %record.archive.display(), "layer rebuilt from an archive holding it");
    Ok(())
}

/// Whether a store entry's copy (if it has one) is still what its record
/// says: the same file, or else the same content (hashed).
fn entry_copy_is_good(entry: &Path) -> bool {
    let Ok(record) = BackingRecord::read(&entry.join(RECORD)) else {
        return true; // no entry: the store builds one
    };
    if record.archive.is_absolute() {
        return true; // the store checks the archive itself
    }
    let path = entry.join(COPY);
    let Ok(file) = fs::File::open(&path) else {
        return false;
    };
    let same = file
        .metadata()
        .is_ok_and(|m| record.matches(&FileKey::of(&m)));
    same || verify_copy(&file, &path, &record).is_ok()
}

/// The archive `plain` is still the version `record` indexed.
fn check_unchanged(plain: &PlainBlob, record: &BackingRecord) -> Result<(), LayerError> {
    let now = plain
        .file
        .metadata()
        .map(|m| FileKey::of(&m))
        .map_err(LayerError::io("stat", &plain.path))?;
    if record.matches(&now) {
        Ok(())
    } else {
        Err(LayerError::Changed)
    }
}

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
//! <dir>/layer.erofs   the EROFS metadata image
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
//! mount with it. After a daemon restart [`LayerBacking::remount_all`]
//! mounts every index again, if its archive is still the file that was
//! indexed; [`crate::dirs::remove_all`] unmounts before any directory is
//! deleted (Remove, cleanup, failed staging).
//!
//! The backing file is named to the kernel as `/proc/self/fd/<n>` of the
//! archive opened and checked here, so the mount gets exactly the file whose
//! identity was checked, and any path works (mount options cannot carry a
//! `,`).

mod error;
pub mod index;
pub mod mount;
pub(crate) mod record;
pub(crate) mod store;

pub use error::LayerError;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use crate::catalog::{FileKey, LayerRef, LayerSource};
use crate::config::{LayerMode, PrepareLayers};

use record::{COPY, IMAGE};
use store::{plain_blob, LayerStore};

/// How layers taken from archives become snapshots (see
/// [`crate::config::Config::layer_mounts`]).
#[derive(Clone, Copy, Debug)]
pub struct LayerOptions {
    pub mode: LayerMode,
    pub prepare: PrepareLayers,
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
}

impl LayerBacking {
    /// Extraction only.
    pub(crate) fn disabled() -> Self {
        LayerBacking {
            store: None,
            ahead: false,
            warned: AtomicBool::new(false),
        }
    }

    /// Decides from `opts` and what the kernel can do (probed with a tiny
    /// index mounted under `scratch`), and opens the layer store in
    /// `store_dir`. `erofs` on a kernel that cannot is an error; `auto`
    /// then logs once and extracts. With mounts off, prepared layers left
    /// by an earlier run are dropped once no snapshot uses them.
    pub(crate) fn new(
        opts: LayerOptions,
        scratch: &Path,
        store_dir: &Path,
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
                let store =
                    LayerStore::open(store_dir, opts.store_bytes)?.with_limits(opts.index_limits);
                let (entries, bytes) = store.usage();
                tracing::info!(
                    prepare = ?opts.prepare,
                    store_entries = entries,
                    store_bytes = bytes,
                    "archived layers are mounted (EROFS), not extracted"
                );
                Ok(LayerBacking {
                    store: Some(store),
                    ahead: opts.prepare == PrepareLayers::OnArrival,
                    warned: AtomicBool::new(false),
                })
            }
            Err(why) if opts.mode == LayerMode::Erofs => Err(why),
            Err(why) => {
                tracing::info!(reason = %why, "EROFS layer mounts unavailable: layers are extracted");
                disabled()
            }
        }
    }

    /// Mounts again, after a restart, the index of every mounted layer in
    /// `snapshots` whose mount is gone (see [`mount::remount_all`]).
    pub(crate) fn remount_all(snapshots: &Path) {
        mount::remount_all(snapshots)
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
            Some(p) => p.path.display().to_string(),
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

/// Links the layer's prepared entry into `dir` and mounts it on `dir/fs`.
fn stage(
    store: &LayerStore,
    source: &dyn LayerSource,
    layer: &LayerRef,
    plain: Option<&crate::catalog::PlainBlob>,
    dir: &Path,
) -> Result<(Staged, Option<index::IndexStats>), LayerError> {
    let linked = store.link_into(source, layer, plain, dir)?;
    // The backing file the mount gets: the archive as opened when indexed
    // (checked again now), or the copy linked here.
    let copy;
    let file = match plain {
        Some(p) => {
            let now = p
                .file
                .metadata()
                .map(|m| FileKey::of(&m))
                .map_err(LayerError::io("stat", &p.path))?;
            if !linked.record.matches(&now) {
                return Err(LayerError::Changed);
            }
            &*p.file
        }
        None => {
            copy = fs::File::open(dir.join(COPY)).map_err(LayerError::io("open", dir))?;
            &copy
        }
    };
    mount::mount(&dir.join(IMAGE), &mount::fd_path(file), &dir.join("fs"))?;
    let size = [IMAGE, COPY]
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

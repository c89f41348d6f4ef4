//! The catalog proper: the set of indexed archives and the state every
//! other part of the catalog works on. Scanning the directories is in
//! `scan.rs`, persisted indexes in `persist.rs`, lookups in `lookup.rs`,
//! blob access in `blobs.rs`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::{Duration, Instant};

use super::error::CatalogError;
use super::index::{ArchiveIndex, FileKey, ImageEntry};
use crate::blob::pass::{ArchivePasses, Permits};
use crate::blob::Stats;
use crate::cache::LayerCache;
use crate::digest::Digest;

/// Longest a lookup waits for the first scan of the archives.
const FIRST_SCAN_WAIT: Duration = Duration::from_secs(300);

/// How the catalog is set up.
#[derive(Clone, Debug)]
pub struct CatalogOptions {
    /// Directories whose files are archives (an archive file may also be
    /// named directly).
    pub dirs: Vec<PathBuf>,
    /// Where indexes are persisted (`None`: not persisted).
    pub state_dir: Option<PathBuf>,
    /// Where decompressed blobs are cached (`None`: a private temp dir).
    pub cache_dir: Option<PathBuf>,
    /// Byte budget of that cache.
    pub cache_bytes: u64,
    /// A file modified less than this long ago is still being written: it is
    /// indexed once it has been left alone that long.
    pub settle: Duration,
    /// How long an archive's file must stay absent from a readable
    /// directory before the archive counts as gone (the daemon's
    /// `archive_removal_grace`). Until then the archive stays in the view,
    /// and the persisted indexes of archives known before a restart are
    /// put back in it at the first scan. Zero (one-shot commands): what is
    /// there now, absence is final at once and nothing is put back.
    pub removal_grace: Duration,
    /// Told when a scan finds an archive's file rewritten in place (same
    /// path, a new identity): `(path, indexed, now)`. `serve` hands the
    /// layer store's report (`layer::rewrites::seen`), which knows what
    /// is mounted from the file; the catalog itself only notices.
    pub on_rewrite: Option<fn(&Path, &FileKey, &FileKey)>,
}

impl Default for CatalogOptions {
    fn default() -> Self {
        CatalogOptions {
            dirs: Vec::new(),
            state_dir: None,
            cache_dir: None,
            cache_bytes: 4 << 30,
            settle: Duration::from_secs(2),
            removal_grace: Duration::ZERO,
            on_rewrite: None,
        }
    }
}

/// An indexed archive and an open handle on the file it indexed.
pub struct Archive {
    pub index: ArchiveIndex,
    /// The file indexed, open; `None` for an archive put back from its
    /// persisted index whose file is not there (yet): listed, but its blobs
    /// cannot be read until the file is back.
    pub(super) file: Option<Arc<File>>,
    pub(super) seek_table: Option<Arc<super::seekable::SeekTable>>,
    /// Bytes decompressed from this archive (shared by every version of
    /// the file at this path; a metric).
    pub(super) decompressed: Arc<AtomicU64>,
    /// Sequential passes filling the cache from this archive (compressed
    /// containers without random access).
    pub(super) passes: ArchivePasses,
}

impl Archive {
    pub fn path(&self) -> &Path {
        &self.index.path
    }

    /// False while the archive is in the view only by its persisted index.
    pub fn is_open(&self) -> bool {
        self.file.is_some()
    }
}

/// Copies of blobs found bad, by archive version and digest: never read
/// again while the archive is that version (a rescan that indexes a new
/// version of the file gives it a new key, and a fresh chance).
#[derive(Default)]
pub(crate) struct BadCopies {
    set: Mutex<HashSet<(FileKey, Digest)>>,
    /// Copies marked bad so far (a metric).
    pub marked: AtomicU64,
}

impl BadCopies {
    pub(super) fn contains(&self, archive: &Archive, digest: &Digest) -> bool {
        self.set
            .lock()
            .unwrap()
            .contains(&(archive.index.key, *digest))
    }

    /// Marks a copy bad and logs it, once.
    pub(super) fn mark(&self, key: FileKey, path: &Path, digest: &Digest, error: &std::io::Error) {
        if self.set.lock().unwrap().insert((key, *digest)) {
            self.marked.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(archive = %path.display(), %digest, %error,
                "bad copy of a blob: not read from this archive again; using another archive holding it");
        }
    }
}

/// Identifies what a catalog holds: which catalog (unique in the process)
/// and how many times what its archives hold changed (the number
/// [`Catalog::subscribe`] follows). What is derived from a catalog is kept
/// under it and derived again once it differs (see `trust`'s layer index).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Generation {
    catalog: u64,
    changes: u64,
}

/// The next catalog's number, for [`Generation`].
static NEXT_CATALOG: AtomicU64 = AtomicU64::new(0);

/// One image name as listed: the entry and the archive it comes from.
#[derive(Clone, Debug)]
pub struct ImageInfo {
    pub entry: ImageEntry,
    pub archive: PathBuf,
}

#[derive(Default)]
pub(super) struct State {
    pub archives: BTreeMap<PathBuf, Arc<Archive>>,
    pub broken: BTreeMap<PathBuf, (FileKey, String)>,
    /// Archives of the view whose file a readable directory lacked, since
    /// when (they count as gone [`CatalogOptions::removal_grace`] later).
    pub missing: BTreeMap<PathBuf, Instant>,
    /// Derived from `archives`: the winner for each name and chain ID, and
    /// every archive holding each blob, newest first.
    pub names: HashMap<String, (Arc<Archive>, usize)>,
    pub chains: HashMap<Digest, (Arc<Archive>, usize)>,
    pub blobs: HashMap<Digest, Vec<Arc<Archive>>>,
}

pub struct Catalog {
    pub(super) opts: CatalogOptions,
    pub(super) state: RwLock<State>,
    pub(super) cache: LayerCache,
    pub(super) stats: Arc<Stats>,
    /// Blobs whose every byte was checked (keyed by archive version).
    pub(super) verified: Mutex<HashSet<(FileKey, Digest)>>,
    /// Copies found bad: the next archive holding the digest is used.
    pub(super) bad: Arc<BadCopies>,
    /// Bytes decompressed, per archive path.
    pub(super) decompressed: Mutex<BTreeMap<PathBuf, Arc<AtomicU64>>>,
    /// Directories that could not be read at the last scan, with the error
    /// (logged when it starts, and when it ends).
    pub(super) unreadable: Mutex<BTreeMap<PathBuf, String>>,
    /// Set once the first scan has finished: lookups wait for it, so a pull
    /// that starts while the archives are first indexed finds them.
    pub(super) scanned: (Mutex<bool>, Condvar),
    /// Bumped whenever a scan changes what the archives hold (the
    /// importer follows it).
    pub(super) changes: tokio::sync::watch::Sender<u64>,
    /// Set by [`Catalog::shutdown`]: indexing gives up, lookups stop waiting.
    pub(super) stopping: Arc<AtomicBool>,
    /// This catalog's number in the process ([`Generation`]).
    number: u64,
    /// Bounds the sequential passes over compressed archives running at
    /// once, over all archives.
    pub(super) permits: Permits,
    _cache_tmp: Option<tempfile::TempDir>,
}

impl Catalog {
    /// Opens the catalog and indexes (or loads the persisted index of) every
    /// archive now in the directories. Broken archives are logged and kept
    /// out; they never fail the whole catalog.
    pub fn open(opts: CatalogOptions) -> Result<Arc<Catalog>, CatalogError> {
        let catalog = Catalog::empty(opts)?;
        catalog.rescan();
        Ok(catalog)
    }

    /// Sets the catalog up without looking at any archive yet: the daemon
    /// serves at once and lets [`Catalog::watch`] do the first scan, so a
    /// large archive indexed for the first time never delays start-up.
    pub fn empty(opts: CatalogOptions) -> Result<Arc<Catalog>, CatalogError> {
        let (cache_dir, tmp) = match &opts.cache_dir {
            Some(d) => (d.clone(), None),
            None => {
                let t = tempfile::Builder::new()
                    .prefix("airgap-cache-")
                    .tempdir()
                    .map_err(|e| CatalogError::Io {
                        what: "creating a cache dir in",
                        path: std::env::temp_dir(),
                        source: e,
                    })?;
                (t.path().to_path_buf(), Some(t))
            }
        };
        let cache =
            LayerCache::open(&cache_dir, opts.cache_bytes).map_err(|e| CatalogError::Io {
                what: "opening the layer cache",
                path: cache_dir.clone(),
                source: e,
            })?;
        if let Some(state) = &opts.state_dir {
            fs::create_dir_all(state.join("index")).map_err(|e| CatalogError::Io {
                what: "creating",
                path: state.join("index"),
                source: e,
            })?;
        }
        let catalog = Arc::new(Catalog {
            opts,
            state: RwLock::new(State::default()),
            cache,
            stats: Arc::new(Stats::default()),
            verified: Mutex::new(HashSet::new()),
            bad: Arc::default(),
            decompressed: Mutex::default(),
            unreadable: Mutex::default(),
            scanned: (Mutex::new(false), Condvar::new()),
            changes: tokio::sync::watch::Sender::new(0),
            stopping: Arc::default(),
            number: NEXT_CATALOG.fetch_add(1, Ordering::Relaxed),
            permits: Permits::per_core(),
            _cache_tmp: tmp,
        });
        Ok(catalog)
    }

    pub fn options(&self) -> &CatalogOptions {
        &self.opts
    }

    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }

    pub fn cache(&self) -> &LayerCache {
        &self.cache
    }

    /// The daemon is stopping: an archive being indexed is given up (and
    /// indexed again at the next start), and lookups waiting for the first
    /// scan go on at once with what is indexed so far, so no thread is left
    /// waiting on the catalog.
    pub fn shutdown(&self) {
        self.stopping.store(true, Ordering::Release);
        let _done = self.scanned.0.lock().unwrap();
        self.scanned.1.notify_all();
    }

    /// True once [`Catalog::shutdown`] was called.
    pub fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// The permits bounding sequential passes over compressed archives
    /// (tests hold them to line requests up).
    pub fn pass_permits(&self) -> &Permits {
        &self.permits
    }

    /// Requests waiting for a pass over `archive` (tests).
    pub fn pass_pending(&self, archive: &Path) -> usize {
        let state = self.state.read().unwrap();
        state
            .archives
            .get(archive)
            .map_or(0, |a| a.passes.pending())
    }

    /// Whether the first scan of the directories has finished: until then
    /// the catalog holds only part of what the archives hold.
    pub fn first_scan_done(&self) -> bool {
        *self.scanned.0.lock().unwrap()
    }

    /// Follows changes to what the archives hold: the value is bumped after
    /// each scan that indexed or forgot an archive, or found one's file
    /// again (and after the first).
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// What the catalog holds now, as a [`Generation`]. It is bumped after
    /// the state changed: something derived from the state read after
    /// this call is at least as new as the generation it is kept under.
    pub fn generation(&self) -> Generation {
        Generation {
            catalog: self.number,
            changes: *self.changes.borrow(),
        }
    }

    /// The state, once the first scan is done (waiting at most
    /// [`FIRST_SCAN_WAIT`], or until [`Catalog::shutdown`]; after that,
    /// whatever is indexed so far).
    pub(super) fn ready_state(&self) -> std::sync::RwLockReadGuard<'_, State> {
        let (lock, cond) = &self.scanned;
        let done = lock.lock().unwrap();
        if !*done {
            let _ = cond
                .wait_timeout_while(done, FIRST_SCAN_WAIT, |d| !*d && !self.stopping())
                .unwrap();
        }
        self.state.read().unwrap()
    }

    /// The byte counter of the archive at `path` (one per path, kept
    /// across versions of the file).
    pub(super) fn decompressed_counter(&self, path: &Path) -> Arc<AtomicU64> {
        self.decompressed
            .lock()
            .unwrap()
            .entry(path.to_path_buf())
            .or_default()
            .clone()
    }
}

/// Recomputes the lookup maps. Archives are visited oldest first, so for a
/// name carried by several archives the most recently modified one wins;
/// every archive holding a blob is kept, newest first.
pub(super) fn derive(state: &mut State) {
    let mut archives: Vec<&Arc<Archive>> = state.archives.values().collect();
    archives.sort_by_key(|a| (a.index.key.mtime_ns, a.index.path.clone()));
    let mut names: HashMap<String, (Arc<Archive>, usize)> = HashMap::new();
    let mut chains = HashMap::new();
    let mut blobs: HashMap<Digest, Vec<Arc<Archive>>> = HashMap::new();
    for a in &archives {
        for (i, img) in a.index.images.iter().enumerate() {
            if let Some((old, _)) = names.get(&img.name) {
                tracing::info!(image = %img.name, winner = %a.index.path.display(), shadowed = %old.index.path.display(), "image in several archives: the most recently modified wins");
            }
            names.insert(img.name.clone(), ((*a).clone(), i));
        }
        for (i, l) in a.index.layers.iter().enumerate() {
            if l.present {
                chains.insert(l.chain_id, ((*a).clone(), i));
            }
        }
        for d in a.index.blobs.keys() {
            blobs.entry(*d).or_default().insert(0, (*a).clone());
        }
    }
    // A layer an archive names but leaves out (a delta's, whose base holds
    // it) is served from any archive holding its blob.
    for a in &archives {
        for (i, l) in a.index.layers.iter().enumerate() {
            if !l.present && blobs.contains_key(&l.digest) {
                chains
                    .entry(l.chain_id)
                    .or_insert_with(|| ((*a).clone(), i));
            }
        }
    }
    state.names = names;
    state.chains = chains;
    state.blobs = blobs;
}

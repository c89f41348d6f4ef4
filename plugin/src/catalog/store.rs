//! The catalog proper: the set of indexed archives, the lookups consumers
//! make, and blob access through the right reader.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use bytes::Bytes;

use super::container::{self, Container};
use super::index::{
    index_archive_until, ArchiveIndex, FileKey, ImageEntry, LayerEntry, ManifestEntry, INDEX_FORMAT,
};
use super::{LayerRef, LayerSource};
use crate::blob::pass::{ArchivePasses, PassRequest, Permits};
use crate::blob::{BlobReader, FileRange, SeekableRange, SequentialReader, Stats, VerifyingReader};
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
}

impl Default for CatalogOptions {
    fn default() -> Self {
        CatalogOptions {
            dirs: Vec::new(),
            state_dir: None,
            cache_dir: None,
            cache_bytes: 4 << 30,
            settle: Duration::from_secs(2),
        }
    }
}

/// Why a blob cannot be read. Kept apart from I/O errors on purpose: a
/// reader that fails (a missing cache directory, bad bytes) is never "not
/// here".
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// No archive holds it (any more).
    #[error("blob {0} is in no archive")]
    Unknown(Digest),
    /// An archive holds it, and reading it failed.
    #[error("blob {digest} of {archive}: {source}")]
    Read {
        digest: Digest,
        archive: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl BlobError {
    fn read(digest: &Digest, archive: &Archive, source: io::Error) -> BlobError {
        BlobError::Read {
            digest: *digest,
            archive: archive.index.path.clone(),
            source,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("{path}: {source}")]
    Index {
        path: PathBuf,
        source: super::index::IndexError,
    },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
}

/// An indexed archive and an open handle on the file it indexed.
pub struct Archive {
    pub index: ArchiveIndex,
    file: Arc<File>,
    seek_table: Option<Arc<super::seekable::SeekTable>>,
    /// Bytes decompressed from this archive (shared by every version of
    /// the file at this path; a metric).
    decompressed: Arc<AtomicU64>,
    /// Sequential passes filling the cache from this archive (compressed
    /// containers without random access).
    passes: ArchivePasses,
}

impl Archive {
    pub fn path(&self) -> &Path {
        &self.index.path
    }
}

/// One image name as listed: the entry and the archive it comes from.
#[derive(Clone, Debug)]
pub struct ImageInfo {
    pub entry: ImageEntry,
    pub archive: PathBuf,
}

/// What a rescan changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ScanReport {
    pub indexed: Vec<PathBuf>,
    pub removed: Vec<PathBuf>,
    pub failed: Vec<(PathBuf, String)>,
    /// Files still being written, to look at again after the settle delay.
    pub unsettled: Vec<PathBuf>,
}

#[derive(Default)]
struct State {
    archives: BTreeMap<PathBuf, Arc<Archive>>,
    broken: BTreeMap<PathBuf, (FileKey, String)>,
    /// Derived from `archives`: the winner for each name and chain ID, and
    /// every archive holding each blob, newest first.
    names: HashMap<String, (Arc<Archive>, usize)>,
    chains: HashMap<Digest, (Arc<Archive>, usize)>,
    blobs: HashMap<Digest, Vec<Arc<Archive>>>,
}

/// Copies of blobs found bad, by archive version and digest: never read
/// again while the archive is that version (a rescan that indexes a new
/// version of the file gives it a new key, and a fresh chance).
#[derive(Default)]
pub(crate) struct BadCopies {
    set: Mutex<HashSet<(FileKey, Digest)>>,
    /// Copies marked bad so far (a metric).
    pub marked: std::sync::atomic::AtomicU64,
}

impl BadCopies {
    fn contains(&self, archive: &Archive, digest: &Digest) -> bool {
        self.set
            .lock()
            .unwrap()
            .contains(&(archive.index.key, *digest))
    }

    /// Marks a copy bad and logs it, once.
    fn mark(&self, key: FileKey, path: &Path, digest: &Digest, error: &io::Error) {
        if self.set.lock().unwrap().insert((key, *digest)) {
            self.marked.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(archive = %path.display(), %digest, %error,
                "bad copy of a blob: not read from this archive again; using another archive holding it");
        }
    }
}

/// k3s keeps image lists (`*.txt`) beside its archives: they are read as
/// lists ([`Catalog::image_lists`]), never indexed as archives.
fn is_image_list(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "txt")
}

/// True for the errors that say a copy's bytes are wrong (a digest or
/// length mismatch, a corrupt compressed stream, an archive changed since it
/// was indexed), as opposed to a failure to read them at all.
fn is_bad_copy(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::InvalidData | io::ErrorKind::UnexpectedEof
    )
}

pub struct Catalog {
    opts: CatalogOptions,
    state: RwLock<State>,
    cache: LayerCache,
    stats: Arc<Stats>,
    /// Blobs whose every byte was checked (keyed by archive version).
    verified: Mutex<HashSet<(FileKey, Digest)>>,
    /// Copies found bad: the next archive holding the digest is used.
    bad: Arc<BadCopies>,
    /// Bytes decompressed, per archive path.
    decompressed: Mutex<BTreeMap<PathBuf, Arc<AtomicU64>>>,
    /// Set once the first scan has finished: lookups wait for it, so a pull
    /// that starts while the archives are first indexed finds them.
    scanned: (Mutex<bool>, Condvar),
    /// Bumped whenever a scan changes what the archives hold (the
    /// importer follows it).
    changes: tokio::sync::watch::Sender<u64>,
    /// Set by [`Catalog::shutdown`]: indexing gives up, lookups stop waiting.
    stopping: Arc<AtomicBool>,
    /// Bounds the sequential passes over compressed archives running at
    /// once, over all archives.
    permits: Permits,
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
            scanned: (Mutex::new(false), Condvar::new()),
            changes: tokio::sync::watch::Sender::new(0),
            stopping: Arc::default(),
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

    /// True once [`Catalog::shutdown`] was called.
    pub fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// Looks at every file in the directories: indexes new and changed ones,
    /// forgets deleted ones.
    pub fn rescan(&self) -> ScanReport {
        let mut report = ScanReport::default();
        let now = SystemTime::now();
        let mut seen = HashSet::new();
        let mut todo = Vec::new();
        for dir in &self.opts.dirs {
            let paths: Vec<(PathBuf, bool)> = if dir.is_file() {
                // An archive named directly (one-shot commands).
                vec![(dir.clone(), false)]
            } else {
                match fs::read_dir(dir) {
                    Ok(entries) => entries
                        .flatten()
                        .map(|e| (e.path(), e.file_name().to_string_lossy().starts_with('.')))
                        .collect(),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {
                        tracing::debug!(dir = %dir.display(), "archives directory does not exist (yet)");
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!(dir = %dir.display(), error = %e, "cannot list archives directory");
                        continue;
                    }
                }
            };
            for (path, hidden) in paths {
                let Ok(meta) = fs::metadata(&path) else {
                    continue;
                };
                if hidden || !meta.is_file() || is_image_list(&path) {
                    continue;
                }
                seen.insert(path.clone());
                let key = FileKey::of(&meta);
                let state = self.state.read().unwrap();
                let before = state.archives.get(&path).map(|a| a.index.key);
                let known =
                    before == Some(key) || state.broken.get(&path).is_some_and(|(k, _)| *k == key);
                drop(state);
                if known {
                    continue;
                }
                if let Some(before) = before {
                    crate::layer::rewrites::seen(&path, &before, &key);
                }
                let age = meta
                    .modified()
                    .ok()
                    .and_then(|m| now.duration_since(m).ok())
                    .unwrap_or_default();
                todo.push((path, key, age));
            }
        }
        let mut loaded = Vec::new();
        for (path, key, age) in todo {
            if self.stopping() {
                report.unsettled.push(path);
                continue;
            }
            let result = self.load(&path, key);
            if self.stopping() {
                // Given up half-way: neither indexed nor broken.
                report.unsettled.push(path);
                continue;
            }
            // Still being written: the file changed while it was read, or it
            // fails to read and was modified within the settle delay. Looked
            // at again later; never reported broken for that.
            let changed = fs::metadata(&path).map(|m| FileKey::of(&m)).ok() != Some(key);
            match result {
                Ok(archive) if !changed => loaded.push((path, Ok(archive))),
                Err(e) if !changed && age >= self.opts.settle => {
                    loaded.push((path, Err((key, e.to_string()))))
                }
                _ => {
                    tracing::debug!(archive = %path.display(), "archive still being written; looking again later");
                    report.unsettled.push(path);
                }
            }
        }
        let mut state = self.state.write().unwrap();
        for (path, result) in loaded {
            match result {
                Ok(archive) => {
                    for p in &archive.index.problems {
                        tracing::warn!(archive = %path.display(), problem = %p, "archive partly unusable");
                    }
                    tracing::info!(archive = %path.display(), images = archive.index.images.len(), "archive indexed");
                    state.broken.remove(&path);
                    state.archives.insert(path.clone(), Arc::new(archive));
                    report.indexed.push(path);
                }
                Err((key, msg)) => {
                    tracing::warn!(archive = %path.display(), error = %msg, "archive unusable");
                    state.archives.remove(&path);
                    state.broken.insert(path.clone(), (key, msg.clone()));
                    report.failed.push((path, msg));
                }
            }
        }
        let gone: Vec<PathBuf> = state
            .archives
            .keys()
            .filter(|p| !seen.contains(*p))
            .cloned()
            .collect();
        for p in gone {
            tracing::info!(archive = %p.display(), "archive removed");
            state.archives.remove(&p);
            self.decompressed.lock().unwrap().remove(&p);
            if let Some(persisted) = self.persisted_path(&p) {
                let _ = fs::remove_file(persisted);
            }
            report.removed.push(p);
        }
        state.broken.retain(|p, _| seen.contains(p));
        if !report.indexed.is_empty() || !report.removed.is_empty() {
            derive(&mut state);
        }
        let (archives, images) = (state.archives.len(), state.names.len());
        drop(state);
        let mut scanned = self.scanned.0.lock().unwrap();
        let first = !*scanned;
        if first {
            *scanned = true;
            self.scanned.1.notify_all();
            tracing::info!(archives, images, "archives scanned");
        }
        drop(scanned);
        if first || !report.indexed.is_empty() || !report.removed.is_empty() {
            self.changes.send_modify(|generation| *generation += 1);
        }
        report
    }

    /// Whether the first scan of the directories has finished: until then
    /// the catalog holds only part of what the archives hold.
    pub fn first_scan_done(&self) -> bool {
        *self.scanned.0.lock().unwrap()
    }

    /// The state, once the first scan is done (waiting at most
    /// [`FIRST_SCAN_WAIT`], or until [`Catalog::shutdown`]; after that,
    /// whatever is indexed so far).
    fn ready_state(&self) -> std::sync::RwLockReadGuard<'_, State> {
        let (lock, cond) = &self.scanned;
        let done = lock.lock().unwrap();
        if !*done {
            let _ = cond
                .wait_timeout_while(done, FIRST_SCAN_WAIT, |d| !*d && !self.stopping())
                .unwrap();
        }
        self.state.read().unwrap()
    }

    /// Indexes one archive, or loads its persisted index if the file is the
    /// same version.
    fn load(&self, path: &Path, key: FileKey) -> Result<Archive, CatalogError> {
        let file = File::open(path).map_err(|e| CatalogError::Io {
            what: "opening",
            path: path.into(),
            source: e,
        })?;
        // The key of the file we opened, not of the path we listed.
        let meta = file.metadata().map_err(|e| CatalogError::Io {
            what: "reading",
            path: path.into(),
            source: e,
        })?;
        let key = if FileKey::of(&meta) == key {
            key
        } else {
            FileKey::of(&meta)
        };
        let persisted = self.persisted_path(path);
        let index = match persisted
            .as_deref()
            .and_then(|p| read_persisted(p, path, key))
        {
            Some(index) => index,
            None => {
                let started = std::time::Instant::now();
                let stop = Some(self.stopping.clone());
                let index = index_archive_until(path, &file, key, stop).map_err(|e| {
                    CatalogError::Index {
                        path: path.into(),
                        source: e,
                    }
                })?;
                tracing::debug!(archive = %path.display(), elapsed = ?started.elapsed(), "indexed");
                if let Some(p) = &persisted {
                    if let Err(e) = write_persisted(p, &index) {
                        tracing::warn!(path = %p.display(), error = %e, "cannot persist index");
                    }
                }
                index
            }
        };
        let seek_table = index.seek_table.clone().map(Arc::new);
        let decompressed = self
            .decompressed
            .lock()
            .unwrap()
            .entry(path.to_path_buf())
            .or_default()
            .clone();
        Ok(Archive {
            index,
            file: Arc::new(file),
            seek_table,
            decompressed,
            passes: ArchivePasses::default(),
        })
    }

    fn persisted_path(&self, archive: &Path) -> Option<PathBuf> {
        let dir = self.opts.state_dir.as_ref()?.join("index");
        let name = Digest::of(archive.as_os_str().as_encoded_bytes()).hex();
        Some(dir.join(format!("{}.json", &name[..32])))
    }

    /// Every listed image name (the winning archive's, when several carry it).
    pub fn images(&self) -> Vec<ImageInfo> {
        let state = self.ready_state();
        let mut out: Vec<ImageInfo> = state
            .names
            .values()
            .map(|(a, i)| ImageInfo {
                entry: a.index.images[*i].clone(),
                archive: a.index.path.clone(),
            })
            .collect();
        out.sort_by(|a, b| a.entry.name.cmp(&b.entry.name));
        out
    }

    /// Follows changes to what the archives hold: the value is bumped after
    /// each scan that indexed or forgot an archive (and after the first).
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// The platform manifest `digest` of an archived image.
    pub fn manifest(&self, digest: &Digest) -> Option<ManifestEntry> {
        let state = self.ready_state();
        state
            .archives
            .values()
            .find_map(|a| a.index.manifests.iter().find(|m| m.digest == *digest))
            .cloned()
    }

    /// The manifest of `entry` that a node of `platform` (`linux/amd64`)
    /// runs: containerd's matcher prefers the exact platform to a variant
    /// of it. The error says which platforms the archive has.
    pub fn platform_manifest(
        &self,
        entry: &ImageEntry,
        platform: &str,
    ) -> Result<ManifestEntry, String> {
        let manifests: Vec<_> = entry
            .manifests
            .iter()
            .filter_map(|d| self.manifest(d))
            .collect();
        manifests
            .iter()
            .find(|m| m.platform == platform)
            .or_else(|| {
                manifests
                    .iter()
                    .find(|m| crate::setup::platform_matches(&m.platform, platform))
            })
            .cloned()
            .ok_or_else(|| {
                format!(
                    "no manifest for {platform} (archived: {})",
                    entry.platforms.join(", ")
                )
            })
    }

    /// Every archived layer a node of `platform` can run, bottom first per
    /// image, each once: what is worth preparing before anyone pulls.
    pub fn layers_for(&self, platform: &str) -> Vec<LayerRef> {
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for image in self.images() {
            let Ok(manifest) = self.platform_manifest(&image.entry, platform) else {
                continue;
            };
            for chain_id in &manifest.chain {
                if let Some(layer) = self.layer(chain_id) {
                    if seen.insert(layer.digest) {
                        out.push(layer);
                    }
                }
            }
        }
        out
    }

    /// The references listed in the image lists (`*.txt`, k3s's habit) of
    /// the archive directories, each once, with the file naming it. Lines
    /// are references; blank lines and `#` comments are skipped.
    pub fn image_lists(&self) -> Vec<(String, PathBuf)> {
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for dir in &self.opts.dirs {
            let Ok(entries) = fs::read_dir(dir) else {
                continue;
            };
            let mut lists: Vec<PathBuf> = entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| is_image_list(p) && p.is_file())
                .collect();
            lists.sort();
            for list in lists {
                let text = match fs::read_to_string(&list) {
                    Ok(t) => t,
                    Err(e) => {
                        tracing::warn!(list = %list.display(), error = %e, "cannot read image list");
                        continue;
                    }
                };
                for line in text.lines() {
                    let line = line.split('#').next().unwrap_or("").trim();
                    if !line.is_empty() && seen.insert(line.to_string()) {
                        out.push((line.to_string(), list.clone()));
                    }
                }
            }
        }
        out
    }

    /// Archives that could not be read, with the reason.
    pub fn broken(&self) -> Vec<(PathBuf, String)> {
        let state = self.ready_state();
        state
            .broken
            .iter()
            .map(|(p, (_, m))| (p.clone(), m.clone()))
            .collect()
    }

    pub fn archives(&self) -> Vec<Arc<Archive>> {
        self.state
            .read()
            .unwrap()
            .archives
            .values()
            .cloned()
            .collect()
    }

    /// The image a normalized name points to.
    pub fn resolve(&self, name: &str) -> Option<ImageInfo> {
        let state = self.ready_state();
        state.names.get(name).map(|(a, i)| ImageInfo {
            entry: a.index.images[*i].clone(),
            archive: a.index.path.clone(),
        })
    }

    /// A JSON document (index, manifest, config) by digest, byte for byte.
    pub fn document(&self, digest: &Digest) -> Option<Bytes> {
        let state = self.ready_state();
        state
            .archives
            .values()
            .find_map(|a| a.index.documents.get(digest).cloned())
    }

    /// Size of a blob the catalog can serve.
    pub fn blob_size(&self, digest: &Digest) -> Option<u64> {
        if let Some(d) = self.document(digest) {
            return Some(d.len() as u64);
        }
        // Any archive's, even a copy found bad: a blob the archives hold
        // but cannot serve is an error, never "unknown".
        let state = self.ready_state();
        state
            .blobs
            .get(digest)
            .and_then(|all| all.first())
            .and_then(|a| a.index.blobs.get(digest))
            .map(|l| l.size)
    }

    /// How many archives are indexed, and how many are broken.
    pub fn archive_counts(&self) -> (usize, usize) {
        let state = self.state.read().unwrap();
        (state.archives.len(), state.broken.len())
    }

    /// Bytes decompressed so far from each archive.
    pub fn decompressed_by_archive(&self) -> Vec<(PathBuf, u64)> {
        self.decompressed
            .lock()
            .unwrap()
            .iter()
            .map(|(p, n)| (p.clone(), n.load(Ordering::Relaxed)))
            .collect()
    }

    /// True when some archive holds `digest` in a copy not found bad (or
    /// it is a document).
    pub fn has_good_copy(&self, digest: &Digest) -> bool {
        self.document(digest).is_some() || self.archives_with(digest).is_ok()
    }

    /// How many copies of blobs were found bad and set aside.
    pub fn bad_copies(&self) -> u64 {
        self.bad.marked.load(Ordering::Relaxed)
    }

    /// True when the copy of `digest` in `archive` was found bad.
    pub fn copy_is_bad(&self, archive: &Path, digest: &Digest) -> bool {
        let state = self.state.read().unwrap();
        state
            .archives
            .get(archive)
            .is_some_and(|a| self.bad.contains(a, digest))
    }

    /// A random-access reader over a blob, every byte of which was checked
    /// against its digest before it is returned.
    pub fn blob_reader(&self, digest: &Digest) -> Result<Arc<dyn BlobReader>, BlobError> {
        if let Some(doc) = self.document(digest) {
            return Ok(Arc::new(doc.to_vec()));
        }
        let mut first_error = None;
        for archive in self.archives_with(digest)? {
            match self.verified_reader(&archive, digest) {
                Ok(reader) => return Ok(reader),
                Err(e) => {
                    if is_bad_copy(&e) {
                        self.bad.mark(archive.index.key, archive.path(), digest, &e);
                    }
                    first_error.get_or_insert_with(|| BlobError::read(digest, &archive, e));
                }
            }
        }
        Err(first_error.unwrap_or(BlobError::Unknown(*digest)))
    }

    fn verified_reader(
        &self,
        archive: &Archive,
        digest: &Digest,
    ) -> io::Result<Arc<dyn BlobReader>> {
        // Ranges are read in place after one check of the whole blob: only
        // while the file is the one that was indexed and checked.
        let key = (archive.index.key, *digest);
        self.check_unchanged(archive, digest)?;
        let reader = self.raw_reader(archive, digest)?;
        if !self.verified.lock().unwrap().contains(&key) {
            let size = reader.size();
            let what = archive.index.path.display().to_string();
            io::copy(
                &mut VerifyingReader::new(
                    SequentialReader::new(reader.clone()),
                    *digest,
                    size,
                    what,
                ),
                &mut io::sink(),
            )?;
            self.verified.lock().unwrap().insert(key);
        }
        Ok(reader)
    }

    /// A sequential reader over a blob, checked against its digest as it is
    /// read: it ends in an error instead of EOF if the bytes are wrong.
    pub fn open_blob(&self, digest: &Digest) -> Result<Box<dyn Read + Send>, BlobError> {
        if let Some(doc) = self.document(digest) {
            return Ok(Box::new(io::Cursor::new(doc)));
        }
        let mut first_error = None;
        for archive in self.archives_with(digest)? {
            match self.open_archived(&archive, digest) {
                Ok(inner) => {
                    // A failure while it streams marks this copy bad, so
                    // the next open reads another archive's.
                    return Ok(Box::new(MarkOnFailure {
                        inner,
                        bad: self.bad.clone(),
                        key: archive.index.key,
                        path: archive.index.path.clone(),
                        digest: *digest,
                    }));
                }
                Err(e) => {
                    if is_bad_copy(&e) {
                        self.bad.mark(archive.index.key, archive.path(), digest, &e);
                    }
                    first_error.get_or_insert_with(|| BlobError::read(digest, &archive, e));
                }
            }
        }
        Err(first_error.unwrap_or(BlobError::Unknown(*digest)))
    }

    /// Fails when `archive`'s file is no longer the version indexed.
    fn check_unchanged(&self, archive: &Archive, digest: &Digest) -> io::Result<()> {
        if FileKey::of(&archive.file.metadata()?) != archive.index.key {
            self.verified
                .lock()
                .unwrap()
                .remove(&(archive.index.key, *digest));
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the archive changed since it was indexed",
            ));
        }
        Ok(())
    }

    fn open_archived(
        &self,
        archive: &Archive,
        digest: &Digest,
    ) -> io::Result<Box<dyn Read + Send>> {
        self.check_unchanged(archive, digest)?;
        let what = archive.index.path.display().to_string();
        let container = archive.index.container;
        let streamed = !matches!(container, Container::Tar | Container::SeekableZstd);
        if streamed && self.cache.get(digest).is_none() {
            // Read once, in order (a layer being extracted): decompress
            // straight through, with no copy in the cache, which is for
            // random access.
            let loc = archive.index.blobs[digest];
            let stream = Counted {
                inner: container::decode_file(archive.file.clone(), container)?,
                stats: self.stats.clone(),
                archive: archive.decompressed.clone(),
            };
            let mut stream = stream;
            let skipped = io::copy(&mut (&mut stream).take(loc.offset), &mut io::sink())?;
            if skipped != loc.offset {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("{what} ends before blob {digest}"),
                ));
            }
            return Ok(Box::new(VerifyingReader::new(
                stream.take(loc.size),
                *digest,
                loc.size,
                what,
            )));
        }
        let reader = self.raw_reader(archive, digest)?;
        let size = reader.size();
        Ok(Box::new(VerifyingReader::new(
            SequentialReader::new(reader),
            *digest,
            size,
            what,
        )))
    }

    /// The archives holding `digest`, newest first, without those whose
    /// copy was found bad. `Unknown` only when no archive holds it at all;
    /// when every copy is bad, an error saying so.
    fn archives_with(&self, digest: &Digest) -> Result<Vec<Arc<Archive>>, BlobError> {
        let state = self.ready_state();
        let all = state.blobs.get(digest).ok_or(BlobError::Unknown(*digest))?;
        let good: Vec<Arc<Archive>> = all
            .iter()
            .filter(|a| !self.bad.contains(a, digest))
            .cloned()
            .collect();
        if good.is_empty() {
            return Err(BlobError::read(
                digest,
                &all[0],
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    "every archive's copy of the blob was found bad",
                ),
            ));
        }
        Ok(good)
    }

    /// The unverified reader for `digest` in `archive`, by container.
    fn raw_reader(&self, archive: &Archive, digest: &Digest) -> io::Result<Arc<dyn BlobReader>> {
        let loc = archive.index.blobs[digest];
        match (archive.index.container, &archive.seek_table) {
            (Container::Tar, _) => Ok(Arc::new(
                FileRange::new(archive.file.clone(), loc.offset, loc.size)
                    .counted(self.stats.clone()),
            )),
            (Container::SeekableZstd, Some(table)) => Ok(Arc::new(SeekableRange::new(
                archive.file.clone(),
                table.clone(),
                loc.offset,
                loc.size,
                self.stats.clone(),
                archive.decompressed.clone(),
            ))),
            (container, _) => {
                // Filled by one pass over the archive shared with every other
                // blob of it requested meanwhile (see `blob::pass`).
                let open = || -> io::Result<Box<dyn Read + Send>> {
                    Ok(Box::new(Counted {
                        inner: container::decode_file(archive.file.clone(), container)?,
                        stats: self.stats.clone(),
                        archive: archive.decompressed.clone(),
                    }))
                };
                let request = PassRequest {
                    digest: *digest,
                    offset: loc.offset,
                    size: loc.size,
                    what: archive.index.path.display().to_string(),
                };
                let (entry, hit) = self.cache.get_or_fill(digest, |out| {
                    archive.passes.fill(request, out, &open, &self.permits)
                })?;
                let counter = if hit {
                    &self.stats.cache_hits
                } else {
                    &self.stats.cache_misses
                };
                counter.fetch_add(1, Ordering::Relaxed);
                if !hit {
                    self.verified
                        .lock()
                        .unwrap()
                        .insert((archive.index.key, *digest));
                }
                let reader = FileRange::new(entry.file().clone(), 0, entry.size());
                Ok(Arc::new(Pinned {
                    reader,
                    _entry: entry,
                }))
            }
        }
    }

    fn layer_ref(&self, archive: &Archive, i: usize) -> LayerRef {
        let l: &LayerEntry = &archive.index.layers[i];
        LayerRef {
            chain_id: l.chain_id,
            parent: l.parent,
            digest: l.digest,
            diff_id: l.diff_id,
            size: l.size,
            compression: l.compression,
        }
    }
}

/// Keeps a cache entry alive (so it is not deleted) while its reader lives.
struct Pinned {
    reader: FileRange,
    _entry: Arc<crate::cache::CacheEntry>,
}

impl BlobReader for Pinned {
    fn size(&self) -> u64 {
        self.reader.size()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.reader.read_at(buf, offset)
    }
}

/// Marks the copy it reads bad when reading it fails as a bad copy does.
struct MarkOnFailure {
    inner: Box<dyn Read + Send>,
    bad: Arc<BadCopies>,
    key: FileKey,
    path: PathBuf,
    digest: Digest,
}

impl Read for MarkOnFailure {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf).inspect_err(|e| {
            if is_bad_copy(e) {
                self.bad.mark(self.key, &self.path, &self.digest, e);
            }
        })
    }
}

/// Counts what a decoder produces into [`Stats::decompressed`].
struct Counted {
    inner: Box<dyn Read + Send>,
    stats: Arc<Stats>,
    archive: Arc<AtomicU64>,
}

impl Read for Counted {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.stats
            .decompressed
            .fetch_add(n as u64, Ordering::Relaxed);
        self.archive.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

impl LayerSource for Catalog {
    fn layer(&self, chain_id: &Digest) -> Option<LayerRef> {
        let state = self.ready_state();
        state
            .chains
            .get(chain_id)
            .map(|(a, i)| self.layer_ref(a, *i))
    }

    fn image_layers(&self, chain_id: &Digest, manifest: Option<&Digest>) -> Vec<LayerRef> {
        let state = self.ready_state();
        let candidates: Vec<&Vec<Digest>> = state
            .archives
            .values()
            .flat_map(|a| a.index.manifests.iter())
            .filter(|m| m.chain.contains(chain_id))
            .filter(|m| manifest.is_none_or(|d| m.digest == *d))
            .map(|m| &m.chain)
            .collect();
        // Several images share this layer and nothing says which is pulled.
        let Some(chain) = candidates.first() else {
            return Vec::new();
        };
        if candidates.iter().any(|c| c != chain) {
            return Vec::new();
        }
        chain
            .iter()
            .filter_map(|c| state.chains.get(c).map(|(a, i)| self.layer_ref(a, *i)))
            .collect()
    }

    fn open_blob(&self, digest: &Digest) -> io::Result<Box<dyn Read + Send>> {
        Catalog::open_blob(self, digest).map_err(io::Error::other)
    }

    fn plain_blob(&self, digest: &Digest) -> Option<super::PlainBlob> {
        let archives = self.archives_with(digest).ok()?;
        archives.into_iter().find_map(|archive| {
            if archive.index.container != Container::Tar {
                return None;
            }
            // Only uncompressed layers: a blob's own bytes must be the tar.
            let layer = archive.index.layers.iter().find(|l| l.digest == *digest)?;
            if layer.compression != super::Compression::None {
                return None;
            }
            self.check_unchanged(&archive, digest).ok()?;
            let loc = archive.index.blobs[digest];
            Some(super::PlainBlob {
                path: archive.index.path.clone(),
                file: archive.file.clone(),
                key: archive.index.key,
                offset: loc.offset,
                size: loc.size,
            })
        })
    }
}

/// Recomputes the lookup maps. Archives are visited oldest first, so for a
/// name carried by several archives the most recently modified one wins;
/// every archive holding a blob is kept, newest first.
fn derive(state: &mut State) {
    let mut archives: Vec<&Arc<Archive>> = state.archives.values().collect();
    archives.sort_by_key(|a| (a.index.key.mtime_ns, a.index.path.clone()));
    let mut names: HashMap<String, (Arc<Archive>, usize)> = HashMap::new();
    let mut chains = HashMap::new();
    let mut blobs: HashMap<Digest, Vec<Arc<Archive>>> = HashMap::new();
    for a in archives {
        for (i, img) in a.index.images.iter().enumerate() {
            if let Some((old, _)) = names.get(&img.name) {
                tracing::info!(image = %img.name, winner = %a.index.path.display(), shadowed = %old.index.path.display(), "image in several archives: the most recently modified wins");
            }
            names.insert(img.name.clone(), (a.clone(), i));
        }
        for (i, l) in a.index.layers.iter().enumerate() {
            if l.present {
                chains.insert(l.chain_id, (a.clone(), i));
            }
        }
        for d in a.index.blobs.keys() {
            blobs.entry(*d).or_default().insert(0, a.clone());
        }
    }
    state.names = names;
    state.chains = chains;
    state.blobs = blobs;
}

fn read_persisted(p: &Path, archive: &Path, key: FileKey) -> Option<ArchiveIndex> {
    let bytes = fs::read(p).ok()?;
    let index: ArchiveIndex = serde_json::from_slice(&bytes).ok()?;
    (index.format == INDEX_FORMAT && index.key == key && index.path == archive).then_some(index)
}

fn write_persisted(p: &Path, index: &ArchiveIndex) -> io::Result<()> {
    let dir = p.parent().expect("persisted index has a parent");
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    serde_json::to_writer(&mut tmp, index)?;
    tmp.persist(p).map_err(|e| e.error)?;
    Ok(())
}

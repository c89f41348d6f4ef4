//! Prepared layers, kept under `<root>/layers/` within a byte budget: the
//! EROFS index of each archived layer and its backing file, a private copy
//! of the layer (`layer.tar`): decompressed once for a compressed layer,
//! cloned (reflink) or copied from an uncompressed archive (see
//! [`super::copy`]). With `layer_backing = "archive"` a plain tar inside an
//! uncompressed archive is indexed in place instead: the archive itself is
//! the backing file, and must then only ever be replaced by rename.
//!
//! ```text
//! layers/<digest hex>/layer.erofs    the index (metadata only)
//! layers/<digest hex>/layer.tar      the private copy (none in place)
//! layers/<digest hex>/backing.json   what the index points into
//! layers/.new-*, .old-*              an entry being built (renamed into
//!                                    place once complete) or evicted;
//!                                    removed at open
//! ```
//!
//! An entry is built the first time a pull needs its layer, or ahead of
//! time ([`LayerStore::prepare_ahead`], when the archive arrives): always
//! when that costs no data written (an index in place, or a clone: a few
//! MB of metadata), and for the others when `prepare_layers =
//! "on-arrival"`. Either way the layer is
//! read once, through the same decompress-and-hash pipeline as extraction,
//! and its diffID checked before the entry exists.
//!
//! Building an index holds the layer's tree in memory: builds run at most
//! [`INDEX_BUILDS`] at a time (their own permits, not extraction's), each
//! within [`IndexLimits`]; a layer past them is remembered and extracted
//! instead. Ahead of a pull a compressed layer is built only if its
//! estimated size (its tar's length when the source knows it, else its
//! blob's times [`COMPRESSION_RATIO`]) fits in what is left of the budget;
//! a building ahead never evicts anything, and what did not fit is
//! remembered, not tried again, until the layers asked for or the room left
//! change.
//!
//! A snapshot staged from an entry gets hard links to the entry's files
//! ([`LayerStore::link_into`]). So an entry is in use while its index has
//! more than one link, and is then never evicted; evicting an entry removes
//! only the store's names, never data that a mount reads; and removing the
//! snapshot is all it takes to release the entry. Entries not in use are
//! evicted least recently used first while the store holds more than its
//! budget. A pull is never refused for lack of budget: it would extract the
//! same bytes instead.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use crate::blob::pass::Permits;
use crate::catalog::{Compression, FileKey, LayerRef, LayerSource, PlainBlob};
use crate::digest::Digest;
use crate::dirs::{mkdir, remove_all, sync_dir};

use super::index::{self, Backing, ErofsError, IndexLimits, IndexStats};
use super::record::{BackingRecord, COPY, IMAGE, RECORD};
use super::LayerError;

/// Index builds running at once (each holds a layer's tree in memory).
pub(crate) const INDEX_BUILDS: usize = 2;

/// What a compressed layer's tar is estimated to weigh, per byte of its
/// blob, when the source does not know (gzip and zstd layers of usual
/// images decompress to 2-4 times their size).
pub(crate) const COMPRESSION_RATIO: u64 = 3;

/// One entry, as the store accounts for it.
struct EntryInfo {
    bytes: u64,
    /// Larger is more recent.
    used: u64,
}

#[derive(Default)]
struct State {
    entries: HashMap<Digest, EntryInfo>,
    bytes: u64,
    tick: u64,
}

/// The compressed layers a pass ahead left out for lack of room, and what
/// that decision depended on.
#[derive(Default)]
struct Skipped {
    /// The layers that pass was asked for (their digests, hashed in order).
    asked: Option<Digest>,
    /// Room left in the budget then.
    room: u64,
    digests: HashSet<Digest>,
}

/// The store of prepared layers (see the module documentation).
pub(crate) struct LayerStore {
    dir: PathBuf,
    budget: u64,
    state: Mutex<State>,
    /// One build per digest at a time; held by whoever builds or links an
    /// entry, so eviction passes over it.
    builds: Mutex<HashMap<Digest, Arc<Mutex<()>>>>,
    /// Index builds running at once ([`INDEX_BUILDS`]).
    build_permits: Permits,
    limits: IndexLimits,
    /// Layers found past `limits`: extracted, never indexed again.
    too_large: Mutex<HashSet<Digest>>,
    skipped: Mutex<Skipped>,
    /// Times a pass ahead said the store was full (tests).
    full_logged: std::sync::atomic::AtomicU64,
    /// `layer_backing = "archive"`: plain layers indexed in place.
    in_place: bool,
    /// Devices of archives that cannot be cloned into the store: ahead of
    /// a pull their layers are copied only when copies are prepared ahead.
    no_reflink: Mutex<HashSet<u64>>,
}

/// A layer prepared and linked into a snapshot directory.
pub(crate) struct Linked {
    pub(crate) record: BackingRecord,
    /// What building the entry did, when this call built it.
    pub(crate) built: Option<IndexStats>,
}

impl LayerStore {
    /// The store in `dir` (created, mode 0700), with what an earlier run
    /// completed; anything half-built or unreadable is removed. Entries not
    /// in use beyond `budget` are evicted at once.
    pub(crate) fn open(dir: &Path, budget: u64) -> Result<Self, LayerError> {
        mkdir(dir, 0o700)?;
        let mut found = Vec::new();
        let listing = fs::read_dir(dir).map_err(LayerError::io("read directory", dir))?;
        for entry in listing.flatten() {
            let path = entry.path();
            let loaded = entry
                .file_name()
                .to_str()
                .and_then(|name| format!("sha256:{name}").parse::<Digest>().ok())
                .and_then(|digest| {
                    let record = BackingRecord::read(&path.join(RECORD)).ok()?;
                    let used = fs::metadata(path.join(RECORD)).ok()?.modified().ok()?;
                    (record.digest == digest && path.join(IMAGE).is_file())
                        .then(|| (digest, entry_bytes(&path, record.copy_counts()), used))
                });
            match loaded {
                Some((digest, Ok(bytes), used)) => found.push((used, digest, bytes)),
                _ => remove_all(&path),
            }
        }
        found.sort();
        let mut state = State::default();
        for (tick, (_, digest, bytes)) in found.into_iter().enumerate() {
            state.bytes += bytes;
            state.entries.insert(
                digest,
                EntryInfo {
                    bytes,
                    used: tick as u64,
                },
            );
        }
        state.tick = state.entries.len() as u64;
        let store = LayerStore {
            dir: dir.to_owned(),
            budget,
            state: Mutex::new(state),
            builds: Mutex::new(HashMap::new()),
            build_permits: Permits::new(INDEX_BUILDS),
            limits: IndexLimits::NONE,
            too_large: Mutex::default(),
            skipped: Mutex::default(),
            full_logged: Default::default(),
            in_place: false,
            no_reflink: Mutex::new(HashSet::new()),
        };
        store.make_room();
        store.report();
        Ok(store)
    }

    /// Builds indexes within `limits` (default: none).
    pub(crate) fn with_limits(mut self, limits: IndexLimits) -> Self {
        self.limits = limits;
        self
    }

    /// `layer_backing = "archive"`: plain layers of uncompressed archives
    /// are indexed in place, with no copy (the default makes a private one).
    pub(crate) fn archive_backed(mut self, in_place: bool) -> Self {
        self.in_place = in_place;
        self
    }

    /// Whether plain layers are indexed in place (see [`Self::archive_backed`]).
    pub(crate) fn in_place(&self) -> bool {
        self.in_place
    }

    /// Entries and bytes held.
    pub(crate) fn usage(&self) -> (usize, u64) {
        let state = self.state.lock().unwrap();
        (state.entries.len(), state.bytes)
    }

    /// Stages `layer` in `dir` (which must not exist): the entry's files
    /// hard-linked there, its record beside them, and an empty `fs` for the
    /// mount; builds the entry first if there is none, or if the one there
    /// indexes another version of the archive. `plain`: the layer as it
    /// lies in an uncompressed archive, if it does. On error `dir` may be
    /// left half-made: the caller removes it.
    pub(crate) fn link_into(
        &self,
        source: &dyn LayerSource,
        layer: &LayerRef,
        plain: Option<&PlainBlob>,
        dir: &Path,
    ) -> Result<Linked, LayerError> {
        let lock = self.build_lock(&layer.digest);
        let _building = lock.lock().unwrap();
        let (record, built) = self.ensure(source, layer, plain, true)?;
        let entry = self.entry_dir(&layer.digest);
        mkdir(dir, 0o700)?;
        let fs_dir = dir.join("fs");
        fs::create_dir(&fs_dir).map_err(LayerError::io("create", &fs_dir))?;
        let mut names = vec![IMAGE];
        if record.archive.is_relative() {
            names.push(COPY);
        }
        for name in names {
            fs::hard_link(entry.join(name), dir.join(name))
                .map_err(LayerError::io("link", &entry.join(name)))?;
        }
        record.write(dir)?;
        self.touch(&layer.digest);
        if built.is_some() {
            self.make_room();
        }
        Ok(Linked { record, built })
    }

    /// Builds, one after the other, the entries of `layers` (every layer
    /// archived for this node) that are missing: those of uncompressed
    /// layers in uncompressed archives always when that writes no data
    /// (indexed in place, or cloned), the others when `compressed` and if
    /// their estimated size fits in the room the budget has left; never
    /// evicting anything for them. What did not fit is remembered (logged
    /// once) and not tried again while `layers` and the room left stay the
    /// same. Then drops the entries no snapshot uses of layers not in
    /// `layers`. Stops early when `stop` says so. Returns how many were
    /// built; failures are logged (a pull retries them, or extracts).
    pub(crate) fn prepare_ahead(
        &self,
        source: &dyn LayerSource,
        layers: &[LayerRef],
        compressed: bool,
        stop: &dyn Fn() -> bool,
    ) -> usize {
        let metrics = crate::metrics::global();
        let todo: Vec<(&LayerRef, Option<PlainBlob>)> = layers
            .iter()
            .map(|l| (l, plain_blob(source, l)))
            .filter(|(_, plain)| plain.is_some() || compressed)
            .collect();
        let asked = {
            let mut all = Vec::with_capacity(layers.len() * 32);
            for l in layers {
                all.extend_from_slice(l.digest.as_bytes());
            }
            Digest::of(&all)
        };
        let mut skipped = std::mem::take(&mut *self.skipped.lock().unwrap());
        if skipped.asked != Some(asked) || self.room() > skipped.room {
            // Other layers, or room freed since: everything gets a chance.
            skipped = Skipped {
                asked: Some(asked),
                room: 0,
                digests: HashSet::new(),
            };
        }
        let known = skipped.digests.len();
        // Compressed layers are read one after the other: a source that
        // decompresses whole archives serves them all in one pass.
        let wanted: Vec<Digest> = todo
            .iter()
            .filter(|(l, plain)| {
                plain.is_none() && !skipped.digests.contains(&l.digest) && !self.holds(&l.digest)
            })
            .map(|(l, _)| l.digest)
            .collect();
        if !wanted.is_empty() {
            source.expect_blobs(&wanted);
        }
        metrics.layer_prepare_pending.set(todo.len() as i64);
        let mut built = 0;
        for (layer, plain) in todo {
            if stop() {
                break;
            }
            let fits = plain.is_some()
                || self.holds(&layer.digest)
                || (!skipped.digests.contains(&layer.digest)
                    && self.usage().1.saturating_add(estimate(source, layer)) <= self.budget);
            if fits {
                let lock = self.build_lock(&layer.digest);
                let _building = lock.lock().unwrap();
                // A private copy of a plain layer is made ahead only when
                // it costs nothing (a clone), or as compressed layers are.
                let copies = compressed && self.usage().1 < self.budget;
                match self.ensure(source, layer, plain.as_ref(), copies) {
                    Ok((_, Some(_))) => built += 1,
                    Ok((_, None)) | Err(LayerError::NoReflink) => {}
                    Err(err) => tracing::warn!(
                        digest = %layer.digest,
                        error = %err,
                        "preparing a layer ahead failed: it is prepared or extracted on pull"
                    ),
                }
            } else {
                skipped.digests.insert(layer.digest);
            }
            metrics.layer_prepare_pending.dec();
        }
        metrics.layer_prepare_pending.set(0);
        if skipped.digests.len() > known {
            self.full_logged
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::info!(
                budget = self.budget,
                left_out = skipped.digests.len(),
                "layer store full: compressed layers left to prepare on pull"
            );
        }
        skipped.room = self.room();
        *self.skipped.lock().unwrap() = skipped;
        if !stop() {
            self.drop_unarchived(&layers.iter().map(|l| l.digest).collect());
        }
        built
    }

    /// What the budget has left.
    fn room(&self) -> u64 {
        self.budget.saturating_sub(self.usage().1)
    }

    /// Whether the store has an entry for `digest`.
    fn holds(&self, digest: &Digest) -> bool {
        self.state.lock().unwrap().entries.contains_key(digest)
    }

    pub(super) fn entry_dir(&self, digest: &Digest) -> PathBuf {
        self.dir.join(digest.hex())
    }

    pub(super) fn build_lock(&self, digest: &Digest) -> Arc<Mutex<()>> {
        let mut builds = self.builds.lock().unwrap();
        builds.retain(|_, l| Arc::strong_count(l) > 1);
        builds.entry(*digest).or_default().clone()
    }

    /// Makes sure the entry of `layer` exists and indexes the layer as it
    /// is found today; returns its record, and what building it did when it
    /// was built now. `copies`: a plain layer that cannot be cloned may be
    /// copied (else [`LayerError::NoReflink`]). The caller holds the
    /// digest's build lock.
    pub(super) fn ensure(
        &self,
        source: &dyn LayerSource,
        layer: &LayerRef,
        plain: Option<&PlainBlob>,
        copies: bool,
    ) -> Result<(BackingRecord, Option<IndexStats>), LayerError> {
        let entry = self.entry_dir(&layer.digest);
        if self
            .state
            .lock()
            .unwrap()
            .entries
            .contains_key(&layer.digest)
        {
            match BackingRecord::read(&entry.join(RECORD)) {
                Ok(r) if r.serves(layer, plain, self.in_place) => return Ok((r, None)),
                // Another version of the archive, or the layer now found
                // in place where a copy was made (or the reverse): built
                // again.
                _ => self.forget(&layer.digest),
            }
        }
        if self.too_large.lock().unwrap().contains(&layer.digest) {
            return Err(LayerError::TooLarge(layer.digest));
        }
        // The tree of a large layer takes memory: few builds at once.
        let _permit = self.build_permits.acquire();
        if let Some(p) = plain.filter(|_| !self.in_place && !copies) {
            if self.no_reflink.lock().unwrap().contains(&p.key.dev) {
                return Err(LayerError::NoReflink);
            }
        }
        let tmp = tempfile::Builder::new()
            .prefix(".new-")
            .tempdir_in(&self.dir)
            .map_err(LayerError::io("create a directory in", &self.dir))?;
        let built = match plain {
            Some(p) if self.in_place => build_in_place(p, layer, self.limits, tmp.path()),
            Some(p) => match build_private(p, layer, self.limits, tmp.path(), copies) {
                Err(LayerError::NoReflink) => {
                    self.no_reflink.lock().unwrap().insert(p.key.dev);
                    return Err(LayerError::NoReflink);
                }
                built => built,
            },
            None => build_copy(source, layer, self.limits, tmp.path()),
        };
        let (record, stats) = match built {
            Err(LayerError::Index(ErofsError::TooLarge(why))) => {
                tracing::warn!(
                    digest = %layer.digest,
                    diff_id = %layer.diff_id,
                    reason = %why,
                    "layer too large to index: it is extracted instead"
                );
                self.too_large.lock().unwrap().insert(layer.digest);
                return Err(LayerError::Index(ErofsError::TooLarge(why)));
            }
            other => other?,
        };
        record.write(tmp.path())?;
        let bytes = entry_bytes(tmp.path(), record.copy_counts())
            .map_err(LayerError::io("stat", tmp.path()))?;
        sync_dir(tmp.path())?;
        fs::rename(tmp.path(), &entry).map_err(LayerError::io("rename into", &entry))?;
        let _ = tmp.keep();
        sync_dir(&self.dir)?;
        {
            let mut state = self.state.lock().unwrap();
            state.tick += 1;
            let used = state.tick;
            state.bytes += bytes;
            state
                .entries
                .insert(layer.digest, EntryInfo { bytes, used });
        }
        crate::metrics::global().layers_prepared.inc();
        self.report();
        Ok((record, Some(stats)))
    }

    fn touch(&self, digest: &Digest) {
        let mut state = self.state.lock().unwrap();
        state.tick += 1;
        let tick = state.tick;
        if let Some(e) = state.entries.get_mut(digest) {
            e.used = tick;
        }
        drop(state);
        // The order survives a restart through the record's mtime.
        let record = self.entry_dir(digest).join(RECORD);
        if let Ok(f) = fs::File::options().write(true).open(&record) {
            let _ = f.set_modified(SystemTime::now());
        }
    }

    /// Drops an entry from the store (its files stay wherever a snapshot
    /// links them).
    pub(super) fn forget(&self, digest: &Digest) {
        let mut state = self.state.lock().unwrap();
        let gone = self.unlink_locked(&mut state, digest);
        drop(state);
        if let Some(gone) = gone {
            remove_all(&gone);
        }
        self.report();
    }

    /// Takes `digest` out of the accounts and renames its directory out of
    /// the way (quick, under the state lock); returns where it went.
    fn unlink_locked(&self, state: &mut State, digest: &Digest) -> Option<PathBuf> {
        let info = state.entries.remove(digest)?;
        state.bytes -= info.bytes;
        state.tick += 1;
        let gone = self
            .dir
            .join(format!(".old-{}-{}", digest.hex(), state.tick));
        match fs::rename(self.entry_dir(digest), &gone) {
            Ok(()) => Some(gone),
            Err(e) => {
                tracing::warn!(digest = %digest, error = %e, "removing a prepared layer");
                None
            }
        }
    }

    /// Evicts entries no snapshot uses, least recently used first, until
    /// the store is within its budget (or nothing more can go).
    fn make_room(&self) {
        self.evict("over budget", |state, _| state.bytes > self.budget);
    }

    /// Drops the entries no snapshot uses whose layer is not in `archived`
    /// (its archive was deleted or replaced): the disk is the site's.
    fn drop_unarchived(&self, archived: &HashSet<Digest>) {
        self.evict("no longer archived", |_, digest| !archived.contains(digest));
    }

    /// Removes, least recently used first, entries that no snapshot uses,
    /// that nobody is building or linking, and that `wanted` picks (it is
    /// asked again before each one).
    fn evict(&self, why: &'static str, wanted: impl Fn(&State, &Digest) -> bool) {
        loop {
            let mut state = self.state.lock().unwrap();
            let victim = {
                // Holding the build locks' map: nobody starts linking an
                // entry while it is chosen and renamed away.
                let builds = self.builds.lock().unwrap();
                let victim = state
                    .entries
                    .iter()
                    .filter(|(d, _)| wanted(&state, d))
                    .filter(|(d, _)| builds.get(*d).is_none_or(|l| Arc::strong_count(l) <= 1))
                    .filter(|(d, _)| {
                        fs::metadata(self.entry_dir(d).join(IMAGE)).is_ok_and(|m| m.nlink() == 1)
                    })
                    .min_by_key(|(_, e)| e.used)
                    .map(|(d, _)| *d);
                victim.and_then(|d| self.unlink_locked(&mut state, &d).map(|gone| (d, gone)))
            };
            drop(state);
            let Some((digest, gone)) = victim else {
                break;
            };
            remove_all(&gone);
            crate::metrics::global().layer_store_evictions.inc();
            tracing::debug!(digest = %digest, why, "prepared layer removed from the layer store");
        }
        self.report();
    }

    fn report(&self) {
        let (entries, bytes) = self.usage();
        let m = crate::metrics::global();
        m.layer_store_entries.set(entries as i64);
        m.layer_store_bytes.set(bytes as i64);
    }
}

/// Where `layer` lies as a plain tar in an uncompressed archive, if it does.
pub(crate) fn plain_blob(source: &dyn LayerSource, layer: &LayerRef) -> Option<PlainBlob> {
    match layer.compression {
        Compression::None => source.plain_blob(&layer.digest),
        _ => None,
    }
}

/// What the entry of a compressed `layer` will take: its tar (its length
/// when the source knows it, else estimated from the blob's), and the index
/// and record beside it.
fn estimate(source: &dyn LayerSource, layer: &LayerRef) -> u64 {
    let tar = source
        .layer_tar_size(layer)
        .unwrap_or_else(|| layer.size.saturating_mul(COMPRESSION_RATIO));
    tar.next_multiple_of(4096)
        .saturating_add(tar / 128)
        .saturating_add(16 << 10)
}

/// Bytes an entry takes on disk.
/// Bytes an entry takes on disk (`copy`: counting its copy).
fn entry_bytes(dir: &Path, copy: bool) -> io::Result<u64> {
    let mut names = vec![IMAGE, RECORD];
    if copy {
        names.push(COPY);
    }
    names
        .iter()
        .map(|n| fs::metadata(dir.join(n)).map(|m| m.blocks() * 512))
        .sum()
}

/// Indexes a plain layer where it lies in its archive (no copy); the
/// archive must be the version that was indexed before and after.
fn build_in_place(
    plain: &PlainBlob,
    layer: &LayerRef,
    limits: IndexLimits,
    dir: &Path,
) -> Result<(BackingRecord, IndexStats), LayerError> {
    let unchanged = || -> Result<(), LayerError> {
        let now = plain
            .file
            .metadata()
            .map(|m| FileKey::of(&m))
            .map_err(LayerError::io("stat", &plain.path))?;
        if now == plain.key {
            Ok(())
        } else {
            Err(LayerError::Changed)
        }
    };
    unchanged()?;
    let reader = FileRange {
        file: plain.file.clone(),
        pos: plain.offset,
        end: plain.offset + plain.size,
    };
    // The digest of an uncompressed layer is its diffID, checked here.
    let stats = index::build_index_within(
        reader,
        Compression::None,
        &layer.diff_id,
        Backing {
            data_base: plain.offset,
            backing_len: plain.key.size,
        },
        limits,
        &dir.join(IMAGE),
    )?;
    unchanged()?;
    let record = BackingRecord {
        archive: plain.path.clone(),
        key: plain.key,
        data_base: plain.offset,
        digest: layer.digest,
        diff_id: layer.diff_id,
        inodes: stats.image.inodes,
        reflinked: false,
    };
    Ok((record, stats))
}

/// Makes a private copy of a plain layer in `<dir>/layer.tar` (a clone
/// where the filesystem can, else, when `copies`, a copy: see
/// [`super::copy`]), then indexes the copy, checking its diffID: a rewrite
/// of the archive during the copy fails the check.
fn build_private(
    plain: &PlainBlob,
    layer: &LayerRef,
    limits: IndexLimits,
    dir: &Path,
    copies: bool,
) -> Result<(BackingRecord, IndexStats), LayerError> {
    let now = plain
        .file
        .metadata()
        .map(|m| FileKey::of(&m))
        .map_err(LayerError::io("stat", &plain.path))?;
    if now != plain.key {
        return Err(LayerError::Changed);
    }
    let tar = dir.join(COPY);
    let copy = fs::File::options()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&tar)
        .map_err(LayerError::io("create", &tar))?;
    let private = super::copy::private_copy(&plain.file, plain.offset, plain.size, &copy, copies)
        .map_err(|source| LayerError::Copy {
            archive: plain.path.clone(),
            digest: layer.digest,
            source,
        })?
        .ok_or(LayerError::NoReflink)?;
    copy.sync_all().map_err(LayerError::io("sync", &tar))?;
    let key = copy
        .metadata()
        .map(|m| FileKey::of(&m))
        .map_err(LayerError::io("stat", &tar))?;
    let reader = FileRange {
        file: Arc::new(copy),
        pos: private.data_base,
        end: private.data_base + plain.size,
    };
    // The digest of an uncompressed layer is its diffID, checked here over
    // the copy the mount will read.
    let stats = index::build_index_within(
        reader,
        Compression::None,
        &layer.diff_id,
        Backing {
            data_base: private.data_base,
            backing_len: key.size,
        },
        limits,
        &dir.join(IMAGE),
    )?;
    let record = BackingRecord {
        archive: PathBuf::from(COPY),
        key,
        data_base: private.data_base,
        digest: layer.digest,
        diff_id: layer.diff_id,
        inodes: stats.image.inodes,
        reflinked: private.made == super::copy::Made::Reflink,
    };
    Ok((record, stats))
}

/// Decompresses a layer once into `<dir>/layer.tar` while indexing it.
fn build_copy(
    source: &dyn LayerSource,
    layer: &LayerRef,
    limits: IndexLimits,
    dir: &Path,
) -> Result<(BackingRecord, IndexStats), LayerError> {
    let blob = source
        .open_blob(&layer.digest)
        .map_err(|source| LayerError::OpenBlob {
            digest: layer.digest,
            source,
        })?;
    let tar = dir.join(COPY);
    let stats = index::build_index_with_copy(
        blob,
        layer.compression,
        &layer.diff_id,
        limits,
        &dir.join(IMAGE),
        &tar,
    )?;
    let key = fs::metadata(&tar)
        .map(|m| FileKey::of(&m))
        .map_err(LayerError::io("stat", &tar))?;
    let record = BackingRecord {
        archive: PathBuf::from(COPY),
        key,
        data_base: 0,
        digest: layer.digest,
        diff_id: layer.diff_id,
        inodes: stats.image.inodes,
        reflinked: false,
    };
    Ok((record, stats))
}

/// Reads `file` from `pos` to `end` with pread (the file is shared).
struct FileRange {
    file: Arc<fs::File>,
    pos: u64,
    end: u64,
}

impl Read for FileRange {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = buf
            .len()
            .min(usize::try_from(self.end - self.pos).unwrap_or(usize::MAX));
        if want == 0 {
            return Ok(0);
        }
        let n = self.file.read_at(&mut buf[..want], self.pos)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the archive ends inside the layer",
            ));
        }
        self.pos += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testsupport::snapshot::{dir_names, layer_tar, Entry, FakeSource};

    fn tars(n: usize, tag: &str) -> Vec<Vec<u8>> {
        (0..n)
            .map(|i| {
                let body = format!("{tag}-{i}").repeat(300);
                layer_tar(&[
                    Entry::Dir("d"),
                    Entry::File(&format!("d/{tag}{i}"), body.as_bytes()),
                ])
            })
            .collect()
    }

    /// Links `layer` into a fresh directory under `work`, as staging does.
    fn link(
        store: &LayerStore,
        fake: &FakeSource,
        layer: &LayerRef,
        work: &Path,
        name: &str,
    ) -> Linked {
        let plain = plain_blob(fake, layer);
        store
            .link_into(fake, layer, plain.as_ref(), &work.join(name))
            .unwrap()
    }

    fn entries(store: &LayerStore) -> Vec<String> {
        dir_names(&store.dir)
    }

    /// Budget 1 byte: whatever no snapshot links is evicted as soon as
    /// something is built; what a snapshot links stays, across a reopen,
    /// until the snapshot is gone.
    #[test]
    fn entries_in_use_are_never_evicted() {
        let work = tempfile::tempdir().unwrap();
        let mut fake = FakeSource::default();
        let layers = fake.add_image(&tars(3, "a"), &[]);
        let dir = work.path().join("layers");
        let store = LayerStore::open(&dir, 1).unwrap();
        let a = link(&store, &fake, &layers[0], work.path(), "snap-a");
        assert!(a.built.is_some());
        link(&store, &fake, &layers[1], work.path(), "snap-b");
        assert_eq!(entries(&store).len(), 2, "both in use");
        std::fs::remove_dir_all(work.path().join("snap-b")).unwrap();
        link(&store, &fake, &layers[2], work.path(), "snap-c");
        let left = entries(&store);
        assert_eq!(
            left,
            {
                let mut v = vec![layers[0].digest.hex(), layers[2].digest.hex()];
                v.sort();
                v
            },
            "the released entry went, those in use stayed"
        );
        // The snapshot's links are the layer: its tar reads back whole.
        assert_eq!(
            std::fs::read(work.path().join("snap-a").join(COPY)).unwrap(),
            tars(3, "a")[0]
        );
        drop(store);

        // A half-built entry left by a crash, and a released entry: both
        // gone at open; the one in use stays.
        std::fs::create_dir(dir.join(".new-crash")).unwrap();
        std::fs::remove_dir_all(work.path().join("snap-c")).unwrap();
        let store = LayerStore::open(&dir, 1).unwrap();
        assert_eq!(entries(&store), vec![layers[0].digest.hex()]);
        assert_eq!(store.usage().0, 1);
        // Linked again: found, not built again.
        let again = link(&store, &fake, &layers[0], work.path(), "snap-a2");
        assert!(again.built.is_none());
        assert_eq!(fake.opened(&layers[0].digest), 1);
    }

    /// Entries nobody uses go least recently used first (when a pull
    /// builds one over the budget).
    #[test]
    fn the_least_recently_used_entry_goes_first() {
        let work = tempfile::tempdir().unwrap();
        let mut fake = FakeSource::default();
        let layers = fake.add_image(&tars(4, "b"), &[]);
        let dir = work.path().join("layers");
        // Measure three entries, then keep a budget just short of them.
        let sizing = LayerStore::open(&work.path().join("sizing"), u64::MAX).unwrap();
        sizing.prepare_ahead(&fake, &layers[..3], true, &|| false);
        let three = sizing.usage().1;
        let store = LayerStore::open(&dir, three - 1).unwrap();
        let use_once = |i: usize| {
            let name = format!("use-{i}");
            link(&store, &fake, &layers[i], work.path(), &name);
            std::fs::remove_dir_all(work.path().join(name)).unwrap();
        };
        for i in 0..3 {
            use_once(i);
        }
        let mut expect = vec![layers[1].digest.hex(), layers[2].digest.hex()];
        expect.sort();
        assert_eq!(entries(&store), expect, "the oldest went");
        // Using layer 1 makes layer 2 the oldest.
        use_once(1);
        use_once(3);
        let mut expect = vec![layers[1].digest.hex(), layers[3].digest.hex()];
        expect.sort();
        assert_eq!(entries(&store), expect);
    }

    /// Ahead of a pull: plain layers always (metadata only), compressed
    /// ones only when asked; a pull then only links.
    #[test]
    fn prepared_ahead_then_linked_without_reading_the_layer() {
        let work = tempfile::tempdir().unwrap();
        let mut fake = FakeSource::default();
        let plain = fake.add_plain_image(&tars(2, "p"), &work.path().join("image.tar"));
        let gz = fake.add_image(&tars(2, "g"), &[]);
        let all: Vec<LayerRef> = plain.iter().chain(&gz).cloned().collect();
        let store = LayerStore::open(&work.path().join("layers"), u64::MAX)
            .unwrap()
            .archive_backed(true);
        assert_eq!(store.prepare_ahead(&fake, &all, false, &|| false), 2);
        assert_eq!(fake.total_opens(), 0, "plain layers are read in place");
        assert_eq!(store.prepare_ahead(&fake, &all, true, &|| false), 2);
        assert_eq!(store.prepare_ahead(&fake, &all, true, &|| false), 0);
        assert_eq!(fake.total_opens(), 2);
        for (i, layer) in all.iter().enumerate() {
            let linked = link(&store, &fake, layer, work.path(), &format!("s{i}"));
            assert!(linked.built.is_none(), "layer {i} built again");
            assert_eq!(linked.record.digest, layer.digest);
            assert_eq!(linked.record.archive.is_relative(), i >= 2);
        }
        assert_eq!(fake.total_opens(), 2);
        // A plain entry holds no copy: metadata only.
        let plain_entry = store.entry_dir(&plain[0].digest);
        assert!(!plain_entry.join(COPY).exists());
        assert!(entry_bytes(&plain_entry, false).unwrap() < 64 * 1024);
        // Asked to stop: nothing more is built.
        let more = fake.add_image(&tars(1, "late"), &[]);
        assert_eq!(store.prepare_ahead(&fake, &more, true, &|| true), 0);
        // The compressed image's archive deleted: its entries go once no
        // snapshot uses them, the plain image's stay.
        std::fs::remove_dir_all(work.path().join("s2")).unwrap();
        store.prepare_ahead(&fake, &plain, true, &|| false);
        let mut left = vec![
            plain[0].digest.hex(),
            plain[1].digest.hex(),
            gz[1].digest.hex(),
        ];
        left.sort();
        assert_eq!(entries(&store), left, "s3 still uses the second gzip layer");
    }

    /// A budget that fits two of three compressed layers: every pass ahead
    /// builds those two and no more, evicts nothing, opens the third
    /// never, and says the store is full once.
    #[test]
    fn ahead_over_budget_builds_what_fits_once_and_evicts_nothing() {
        let work = tempfile::tempdir().unwrap();
        let mut fake = FakeSource::default();
        let big: Vec<Vec<u8>> = (0..3u8)
            .map(|i| layer_tar(&[Entry::File(&format!("f{i}"), &vec![i + 1; 1 << 20])]))
            .collect();
        let layers = fake.add_image(&big, &[]);
        let sizing = LayerStore::open(&work.path().join("sizing"), u64::MAX).unwrap();
        assert_eq!(sizing.prepare_ahead(&fake, &layers, true, &|| false), 3);
        let one = sizing.usage().1 / 3;
        let store = LayerStore::open(&work.path().join("layers"), one * 5 / 2).unwrap();
        let opens = fake.total_opens();
        assert_eq!(store.prepare_ahead(&fake, &layers, true, &|| false), 2);
        let kept = entries(&store);
        for _ in 0..3 {
            assert_eq!(store.prepare_ahead(&fake, &layers, true, &|| false), 0);
            assert_eq!(entries(&store), kept, "an entry was evicted or added");
        }
        assert_eq!(fake.total_opens() - opens, 2, "the third layer was read");
        assert_eq!(
            fake.opened(&layers[2].digest),
            1,
            "only by the sizing store"
        );
        assert_eq!(
            store.full_logged.load(std::sync::atomic::Ordering::Relaxed),
            1
        );
        // The first layer's archive gone: its entry is dropped, and with
        // the room that frees, the third gets its chance.
        assert_eq!(store.prepare_ahead(&fake, &layers[1..], true, &|| false), 0);
        assert!(!store.holds(&layers[0].digest));
        assert_eq!(store.prepare_ahead(&fake, &layers[1..], true, &|| false), 1);
        assert!(store.holds(&layers[2].digest));
    }

    /// Every layer of a compressed archive (single-frame `.tar.zst` of
    /// uncompressed layers, as k3s ships; `.tar.gz` of gzip layers)
    /// prepared ahead: one sequential pass over the archive feeds every
    /// build, so the archive is decompressed about once, not once per layer.
    #[test]
    fn compressed_archives_prepared_ahead_are_decompressed_once() {
        use crate::catalog::{Catalog, CatalogOptions};
        use crate::testsupport::{self as ts, ImageSpec, LayerCompression, OciLayout, Wrap};
        for (wrap, compression) in [
            (Wrap::Zstd, LayerCompression::None),
            (Wrap::Gzip, LayerCompression::Gzip),
        ] {
            let work = tempfile::tempdir().unwrap();
            let archives = work.path().join("archives");
            std::fs::create_dir(&archives).unwrap();
            let tars: Vec<Vec<u8>> = (0..6u64)
                .map(|i| {
                    let (name, data) = (format!("f{i}"), ts::noise(i, (1 + i as usize) << 19));
                    ts::layer_tar(&[(name.as_str(), data.as_slice())])
                })
                .collect();
            let spec = ImageSpec {
                compression,
                ..ImageSpec::new(tars)
            };
            let (oci, _) = OciLayout::single("busybox:1.36", &spec);
            let name = format!("bundle.{}", wrap.extension());
            ts::write(&archives, &name, &ts::wrap(&oci.to_tar(), wrap));
            let catalog = Catalog::open(CatalogOptions {
                dirs: vec![archives.clone()],
                settle: std::time::Duration::ZERO,
                cache_dir: Some(work.path().join("cache")),
                ..Default::default()
            })
            .unwrap();
            let layers = catalog.layers_for(&crate::setup::platform());
            assert_eq!(layers.len(), 6);
            let store = LayerStore::open(&work.path().join("layers"), u64::MAX).unwrap();
            assert_eq!(
                store.prepare_ahead(catalog.as_ref(), &layers, true, &|| false),
                6
            );
            let stream = catalog.archives()[0].index.stream_len;
            let decompressed: u64 = catalog
                .decompressed_by_archive()
                .iter()
                .map(|(_, n)| n)
                .sum();
            println!("{name}: decompressed {decompressed} bytes of a {stream}-byte stream");
            assert!(
                decompressed * 10 <= stream * 12,
                "{name}: decompressed {decompressed} bytes of a {stream}-byte stream"
            );
        }
    }

    /// A layer past the index limits is remembered: the next pull goes
    /// straight to extraction without reading it again.
    #[test]
    fn a_layer_past_the_limits_is_not_read_again() {
        let work = tempfile::tempdir().unwrap();
        let mut fake = FakeSource::default();
        let layers = fake.add_image(&tars(1, "t"), &[]);
        let store = LayerStore::open(&work.path().join("layers"), u64::MAX)
            .unwrap()
            .with_limits(IndexLimits {
                max_entries: 1,
                max_name_bytes: u64::MAX,
            });
        for i in 0..2 {
            let err = match store.link_into(
                &fake,
                &layers[0],
                None,
                &work.path().join(format!("s{i}")),
            ) {
                Err(e) => e.to_string(),
                Ok(_) => panic!("a layer past the limits was linked"),
            };
            assert!(
                err.contains("index_max_entries") || err.contains("too large"),
                "{err}"
            );
        }
        assert_eq!(fake.opened(&layers[0].digest), 1);
        assert!(entries(&store).is_empty());
    }

    /// With `layer_backing = "archive"`, the same layer found in another
    /// archive (a replaced or moved one): the entry indexing the old file
    /// is built again.
    #[test]
    fn a_layer_found_in_another_archive_is_indexed_again() {
        let work = tempfile::tempdir().unwrap();
        let layer_tars = tars(1, "r");
        let mut first = FakeSource::default();
        let old = first.add_plain_image(&layer_tars, &work.path().join("old.tar"));
        let store = LayerStore::open(&work.path().join("layers"), u64::MAX)
            .unwrap()
            .archive_backed(true);
        assert!(link(&store, &first, &old[0], work.path(), "s1")
            .built
            .is_some());
        let mut second = FakeSource::default();
        let new = second.add_plain_image(&layer_tars, &work.path().join("new.tar"));
        let linked = link(&store, &second, &new[0], work.path(), "s2");
        assert!(linked.built.is_some());
        assert_eq!(linked.record.archive, work.path().join("new.tar"));
        // The first snapshot's links still name the old archive.
        let record = BackingRecord::read(&work.path().join("s1").join(RECORD)).unwrap();
        assert_eq!(record.archive, work.path().join("old.tar"));
        assert_eq!(store.usage().0, 1);
    }

    /// The default (private): a plain layer's entry holds its own copy (a
    /// clone where the filesystem can), which keeps the layer's bytes when
    /// the archive is rewritten in place, and serves the layer found in
    /// any archive; ahead of a pull a copy that is not a clone is made
    /// only when copies are prepared ahead.
    #[test]
    fn private_copies_outlive_a_rewrite_in_place() {
        let work = tempfile::tempdir().unwrap();
        let layer_tars = tars(2, "q");
        let archive = work.path().join("image.tar");
        let mut fake = FakeSource::default();
        let layers = fake.add_plain_image(&layer_tars, &archive);
        let store = LayerStore::open(&work.path().join("layers"), u64::MAX).unwrap();
        assert!(!store.in_place());
        let ahead = store.prepare_ahead(&fake, &layers, false, &|| false);
        let linked = link(&store, &fake, &layers[0], work.path(), "s0");
        let reflinks = linked.record.reflinked;
        assert_eq!(ahead, if reflinks { 2 } else { 0 }, "ahead: clones only");
        assert_eq!(linked.built.is_some(), !reflinks);
        assert!(linked.record.archive.is_relative());
        if !reflinks {
            // Copies prepared ahead when asked.
            assert_eq!(store.prepare_ahead(&fake, &layers, true, &|| false), 1);
        }
        assert_eq!(
            fake.total_opens(),
            0,
            "copied from the archive, not read as a blob"
        );
        let copy_of = |snap: &str, i: usize| {
            let bytes = std::fs::read(work.path().join(snap).join(COPY)).unwrap();
            let r = BackingRecord::read(&work.path().join(snap).join(RECORD)).unwrap();
            bytes[r.data_base as usize..][..layer_tars[i].len()].to_vec()
        };
        assert_eq!(copy_of("s0", 0), layer_tars[0]);
        // Rewritten in place, same size, other bytes.
        let size = std::fs::metadata(&archive).unwrap().len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&archive)
            .unwrap()
            .write_all_at(&vec![0x5a; size as usize], 0)
            .unwrap();
        assert_eq!(copy_of("s0", 0), layer_tars[0]);
        let again = link(&store, &fake, &layers[1], work.path(), "s1");
        assert!(again.built.is_none(), "prepared before the rewrite");
        assert_eq!(copy_of("s1", 1), layer_tars[1]);
        // The same layer in another archive: the copy serves it.
        let mut other = FakeSource::default();
        let moved = other.add_plain_image(&layer_tars, &work.path().join("moved.tar"));
        assert!(link(&store, &other, &moved[0], work.path(), "s2")
            .built
            .is_none());
        // A layer copied from an archive rewritten before the copy: its
        // diffID check fails, nothing is left.
        let mut late = FakeSource::default();
        let late_layers = late.add_plain_image(&tars(1, "late"), &work.path().join("late.tar"));
        std::fs::write(work.path().join("late.tar"), vec![7u8; 4096]).unwrap();
        assert!(store
            .link_into(
                &late,
                &late_layers[0],
                plain_blob(&late, &late_layers[0]).as_ref(),
                &work.path().join("s3")
            )
            .is_err());
        assert!(!store.entry_dir(&late_layers[0].digest).exists());
    }

    /// The cost of each `layer_backing` at a layer's first pull: the time
    /// to prepare and link a layer of `AIRGAP_BENCH_LAYER_MB` MB (default
    /// 1024, 256 files) lying in a docker-save-like archive in
    /// `AIRGAP_BENCH_DIR` (its filesystem is what is measured), page cache
    /// dropped first, and the disk the entry takes. Run by hand:
    /// `AIRGAP_BENCH_DIR=/mnt/xfs cargo test -p airgap-snapshotter --lib
    /// --release -- --ignored --nocapture measure_layer_backing`.
    #[test]
    #[ignore]
    fn measure_layer_backing() {
        let Some(dir) = std::env::var_os("AIRGAP_BENCH_DIR") else {
            crate::testsupport::skip("measure_layer_backing", "AIRGAP_BENCH_DIR is not set");
            return;
        };
        let mb: usize = std::env::var("AIRGAP_BENCH_LAYER_MB")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1024);
        let work = tempfile::tempdir_in(dir).unwrap();
        let files = 256;
        let body: Vec<Vec<u8>> = (0..files)
            .map(|i| {
                (0..mb * 1024 * 1024 / files)
                    .map(|j| (j * 31 + i * 7 + j / 4093) as u8)
                    .collect()
            })
            .collect();
        let names: Vec<String> = (0..files).map(|i| format!("d/f{i}")).collect();
        let mut entries = vec![Entry::Dir("d")];
        entries.extend(names.iter().zip(&body).map(|(n, b)| Entry::File(n, b)));
        let tar = layer_tar(&entries);
        drop(body);
        let mut fake = FakeSource::default();
        let layers = fake.add_plain_image(&[tar], &work.path().join("image.tar"));
        for (mode, in_place) in [("archive", true), ("private", false)] {
            let store = LayerStore::open(&work.path().join(format!("layers-{mode}")), u64::MAX)
                .unwrap()
                .archive_backed(in_place);
            let _ = std::fs::write("/proc/sys/vm/drop_caches", "3");
            let started = std::time::Instant::now();
            let linked = link(&store, &fake, &layers[0], work.path(), mode);
            let elapsed = started.elapsed();
            let entry = store.entry_dir(&layers[0].digest);
            let on_disk = entry_bytes(&entry, !in_place).unwrap();
            eprintln!(
                "layer_backing={mode}: {mb} MB layer prepared in {:.2} s; reflinked={}; entry {} MB \
                 (st_blocks; a clone's blocks are shared with the archive)",
                elapsed.as_secs_f64(),
                linked.record.reflinked,
                on_disk >> 20,
            );
        }
    }

    /// A layer whose bytes do not match its diffID leaves no entry and no
    /// half-built directory, and the error names the mismatch.
    #[test]
    fn a_bad_layer_leaves_nothing() {
        let work = tempfile::tempdir().unwrap();
        let mut fake = FakeSource::default();
        let layers = fake.add_image(&tars(1, "x"), &[]);
        fake.corrupt(
            &layers[0].digest,
            crate::testsupport::snapshot::gzip(&tars(1, "y")[0]),
        );
        let store = LayerStore::open(&work.path().join("layers"), u64::MAX).unwrap();
        let err = match store.link_into(&fake, &layers[0], None, &work.path().join("s")) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("a bad layer was linked"),
        };
        assert!(err.contains(&layers[0].diff_id.to_string()), "{err}");
        assert!(entries(&store).is_empty(), "{:?}", entries(&store));
        assert_eq!(store.usage(), (0, 0));
    }
}

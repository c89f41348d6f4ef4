//! Scanning the archive directories: new and changed files indexed (or
//! their persisted index loaded), replaced files indexed again at once, and
//! absent files forgotten only on positive, lasting evidence.
//!
//! Absence is not evidence by itself. A directory that cannot be read
//! keeps its archives as they are. An archive whose file a readable
//! directory lacks is *missing*: it stays in the view (images listed,
//! layers served from the layer store, blobs readable through the handle
//! while the file is open) until it has been missing for
//! [`CatalogOptions::removal_grace`]; it is gone only after a scan past
//! that point still finds it absent. That covers a directory that is an
//! empty mount point until its disk is mounted (readable, and empty). At
//! the first scan after a restart, the archives known before (their
//! persisted indexes) are put back into the view first, so that scan finds
//! them missing at worst, never gone.
//!
//! [`CatalogOptions::removal_grace`]: super::CatalogOptions::removal_grace

use std::collections::HashSet;
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use super::error::CatalogError;
use super::index::{index_archive_until, ArchiveIndex, FileKey};
use super::persist::{read_persisted, write_persisted};
use super::store::{derive, Archive, State};
use super::Catalog;
use crate::blob::pass::ArchivePasses;

/// What a rescan changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ScanReport {
    pub indexed: Vec<PathBuf>,
    pub removed: Vec<PathBuf>,
    pub failed: Vec<(PathBuf, String)>,
    /// Files still being written, to look at again after the settle delay.
    pub unsettled: Vec<PathBuf>,
    /// Archives of the view whose file is absent, not gone yet.
    pub missing: Vec<PathBuf>,
    /// Archives whose file is there again after being missing (or absent
    /// at start), with the same content: the view did not change.
    pub returned: Vec<PathBuf>,
    /// Directories that could not be read: their archives were kept.
    pub unreadable: Vec<PathBuf>,
    /// When the first missing archive counts as gone, from the scan: the
    /// watcher looks again then.
    pub next_removal: Option<Duration>,
}

/// k3s keeps image lists (`*.txt`) beside its archives: they are read as
/// lists ([`Catalog::image_lists`]), never indexed as archives.
pub(super) fn is_image_list(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "txt")
}

/// What one scan saw in the directories.
#[derive(Default)]
struct Seen {
    /// Archive files present.
    present: HashSet<PathBuf>,
    /// Files listed that could not be looked at (not a sign they are gone).
    unknown: HashSet<PathBuf>,
    /// Directories that could not be read.
    unreadable: Vec<PathBuf>,
}

impl Seen {
    /// True when this scan says nothing about whether `archive` is there.
    fn no_evidence(&self, archive: &Path) -> bool {
        self.unknown.contains(archive)
            || self
                .unreadable
                .iter()
                .any(|d| d == archive || archive.parent() == Some(d.as_path()))
    }
}

impl Catalog {
    /// Looks at every file in the directories: indexes new and changed
    /// ones, forgets those absent for longer than the removal grace.
    pub fn rescan(&self) -> ScanReport {
        self.rescan_at(Instant::now())
    }

    /// [`Catalog::rescan`] as if it ran at `now` (tests move the clock).
    pub(crate) fn rescan_at(&self, now: Instant) -> ScanReport {
        let mut report = ScanReport::default();
        if !self.first_scan_done() {
            self.restore_persisted();
        }
        let wall = SystemTime::now();
        let mut seen = Seen::default();
        let mut todo = Vec::new();
        for dir in &self.opts.dirs {
            let Some(paths) = self.list(dir, &mut seen) else {
                continue;
            };
            for (path, hidden) in paths {
                let meta = match fs::metadata(&path) {
                    Ok(meta) => meta,
                    // Deleted between the listing and now.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => {
                        tracing::debug!(file = %path.display(), error = %e, "cannot look at a file in the archives directory");
                        seen.unknown.insert(path);
                        continue;
                    }
                };
                if hidden || !meta.is_file() || is_image_list(&path) {
                    continue;
                }
                seen.present.insert(path.clone());
                let key = FileKey::of(&meta);
                let state = self.state.read().unwrap();
                let before = state.archives.get(&path).map(|a| a.index.key);
                let known = state
                    .archives
                    .get(&path)
                    .is_some_and(|a| a.index.key == key && a.file.is_some())
                    || state.broken.get(&path).is_some_and(|(k, _)| *k == key);
                drop(state);
                if known {
                    continue;
                }
                if let (Some(before), Some(report)) = (before, self.opts.on_rewrite) {
                    report(&path, &before, &key);
                }
                let age = meta
                    .modified()
                    .ok()
                    .and_then(|m| wall.duration_since(m).ok())
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
                Ok(archive) if !changed => loaded.push((path, key, Ok(archive))),
                Err(e) if !changed && age >= self.opts.settle => loaded.push((path, key, Err(e))),
                _ => {
                    tracing::debug!(archive = %path.display(), "archive still being written; looking again later");
                    report.unsettled.push(path);
                }
            }
        }
        let mut state = self.state.write().unwrap();
        for (path, key, result) in loaded {
            self.apply(&mut state, path, key, result, &mut report);
        }
        self.forget_absent(&mut state, &seen, now, &mut report);
        let changed =
            !report.indexed.is_empty() || !report.removed.is_empty() || !report.returned.is_empty();
        if changed {
            derive(&mut state);
        }
        let (archives, images) = (state.archives.len(), state.names.len());
        drop(state);
        report.unreadable = seen.unreadable;
        let mut scanned = self.scanned.0.lock().unwrap();
        let first = !*scanned;
        if first {
            *scanned = true;
            self.scanned.1.notify_all();
            tracing::info!(
                archives,
                images,
                missing = report.missing.len(),
                "archives scanned"
            );
        }
        drop(scanned);
        if first || changed {
            self.changes.send_modify(|generation| *generation += 1);
        }
        report
    }

    /// The files of `dir` (with whether each is hidden), or `None` when it
    /// cannot be read: then it is noted in `seen` and its archives are
    /// kept. A directory that does not exist is read as empty (the grace
    /// covers a disk mounted late there too).
    fn list(&self, dir: &Path, seen: &mut Seen) -> Option<Vec<(PathBuf, bool)>> {
        if dir.is_file() {
            // An archive named directly (one-shot commands).
            return Some(vec![(dir.to_path_buf(), false)]);
        }
        let listing = fs::read_dir(dir).and_then(|entries| {
            entries
                .map(|e| {
                    let e = e?;
                    let hidden = e.file_name().to_string_lossy().starts_with('.');
                    Ok((e.path(), hidden))
                })
                .collect::<io::Result<Vec<_>>>()
        });
        let mut unreadable = self.unreadable.lock().unwrap();
        match listing {
            Ok(paths) => {
                if unreadable.remove(dir).is_some() {
                    tracing::info!(dir = %dir.display(), "archives directory readable again");
                }
                Some(paths)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                unreadable.remove(dir);
                tracing::debug!(dir = %dir.display(), "archives directory does not exist (yet)");
                Some(Vec::new())
            }
            Err(e) => {
                let error = e.to_string();
                if unreadable.get(dir) != Some(&error) {
                    tracing::warn!(dir = %dir.display(), %error,
                        "cannot read the archives directory: its archives are kept as they were until it can be read");
                }
                unreadable.insert(dir.to_path_buf(), error);
                seen.unreadable.push(dir.to_path_buf());
                None
            }
        }
    }

    /// Puts one loaded (or failed) archive into the view.
    fn apply(
        &self,
        state: &mut State,
        path: PathBuf,
        key: FileKey,
        result: Result<Archive, CatalogError>,
        report: &mut ScanReport,
    ) {
        state.missing.remove(&path);
        match result {
            Ok(archive) => {
                let previous = state.archives.get(&path);
                if previous.is_some_and(|p| p.file.is_none() && p.index.key == archive.index.key) {
                    tracing::info!(archive = %path.display(), "archive file there again, unchanged");
                    report.returned.push(path.clone());
                } else {
                    for p in &archive.index.problems {
                        tracing::warn!(archive = %path.display(), problem = %p, "archive partly unusable");
                    }
                    tracing::info!(archive = %path.display(), images = archive.index.images.len(), "archive indexed");
                    report.indexed.push(path.clone());
                }
                state.broken.remove(&path);
                state.archives.insert(path, Arc::new(archive));
            }
            // A file that cannot be opened or read now, where an archive
            // was: the archive stays (its handle, if open, still reads the
            // version indexed), the file is reported.
            Err(e @ CatalogError::Io { .. }) if state.archives.contains_key(&path) => {
                let msg = e.to_string();
                tracing::warn!(archive = %path.display(), error = %msg, "cannot read the archive file: the archive indexed before is kept");
                state.broken.insert(path.clone(), (key, msg.clone()));
                report.failed.push((path, msg));
            }
            Err(e) => {
                let msg = e.to_string();
                tracing::warn!(archive = %path.display(), error = %msg, "archive unusable");
                if state.archives.remove(&path).is_some() {
                    report.removed.push(path.clone());
                }
                state.broken.insert(path.clone(), (key, msg.clone()));
                report.failed.push((path, msg));
            }
        }
    }

    /// Archives whose file this scan did not see: missing from a readable
    /// directory, gone once that has lasted the grace; kept as they are
    /// where the scan cannot tell.
    fn forget_absent(&self, state: &mut State, seen: &Seen, now: Instant, report: &mut ScanReport) {
        let grace = self.opts.removal_grace;
        let absent: Vec<PathBuf> = state
            .archives
            .keys()
            .filter(|p| !seen.present.contains(*p) && !seen.no_evidence(p))
            .cloned()
            .collect();
        for p in absent {
            let since = *state.missing.entry(p.clone()).or_insert_with(|| {
                if !grace.is_zero() {
                    let gone_at = SystemTime::now() + grace;
                    tracing::info!(archive = %p.display(), grace = %humantime::format_duration(grace),
                        gone_at = %humantime::format_rfc3339_seconds(gone_at),
                        "archive file missing: the archive stays until it counts as gone");
                }
                now
            });
            let left = grace.saturating_sub(now.saturating_duration_since(since));
            if !left.is_zero() {
                report.missing.push(p);
                report.next_removal = Some(report.next_removal.map_or(left, |n| n.min(left)));
                continue;
            }
            tracing::info!(archive = %p.display(), "archive removed");
            state.archives.remove(&p);
            state.missing.remove(&p);
            self.decompressed.lock().unwrap().remove(&p);
            if let Some(persisted) = self.persisted_path(&p) {
                let _ = fs::remove_file(persisted);
            }
            report.removed.push(p);
        }
        // Missing archives found again with the same file (still open).
        let back: Vec<PathBuf> = state
            .missing
            .keys()
            .filter(|p| seen.present.contains(*p))
            .cloned()
            .collect();
        for p in back {
            state.missing.remove(&p);
            tracing::info!(archive = %p.display(), "archive file there again");
        }
        state.missing.retain(|p, _| state.archives.contains_key(p));
        // Broken files serve nothing: absent is enough to drop them.
        state
            .broken
            .retain(|p, _| seen.present.contains(p) || seen.no_evidence(p));
    }

    /// At the first scan: the archives known before the restart whose file
    /// is not there (or cannot be looked at), from their persisted indexes,
    /// back into the view without their files. The scan finds them missing,
    /// never gone; their files, when they come back, are opened then.
    fn restore_persisted(&self) {
        if self.opts.removal_grace.is_zero() {
            return;
        }
        let mut restored = Vec::new();
        for index in self.persisted_indexes() {
            if !self.in_scope(&index.path) {
                continue;
            }
            // A file there is looked at by the scan: the same version is
            // loaded as usual, another one is a replacement.
            if fs::metadata(&index.path).is_ok() {
                continue;
            }
            restored.push(index);
        }
        if restored.is_empty() {
            return;
        }
        let mut state = self.state.write().unwrap();
        for index in restored {
            let path = index.path.clone();
            if state.archives.contains_key(&path) {
                continue;
            }
            tracing::debug!(archive = %path.display(), "archive known before the restart, back in the view");
            let archive = self.restored(index);
            state.archives.insert(path, Arc::new(archive));
        }
        derive(&mut state);
    }

    /// An archive in the view by its index alone.
    fn restored(&self, index: ArchiveIndex) -> Archive {
        Archive {
            seek_table: index.seek_table.clone().map(Arc::new),
            decompressed: self.decompressed_counter(&index.path),
            file: None,
            passes: ArchivePasses::default(),
            index,
        }
    }

    /// True when `path` is one of the watched directories' files (or a
    /// file named directly).
    fn in_scope(&self, path: &Path) -> bool {
        self.opts
            .dirs
            .iter()
            .any(|d| d == path || path.parent() == Some(d.as_path()))
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
        Ok(Archive {
            file: Some(Arc::new(file)),
            ..self.restored(index)
        })
    }

    /// How many archives of the view have no file now: missing from their
    /// directory (not gone yet), or known before a restart and not found
    /// again yet.
    pub fn missing_count(&self) -> usize {
        let state = self.state.read().unwrap();
        state
            .archives
            .iter()
            .filter(|(p, a)| a.file.is_none() || state.missing.contains_key(*p))
            .count()
    }
}

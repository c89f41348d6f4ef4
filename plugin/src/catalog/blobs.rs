//! Blob access: the right reader for each archive's container, every byte
//! checked against its digest, bad copies set aside for the next archive
//! holding the blob.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::container::{self, Container};
use super::error::BlobError;
use super::index::FileKey;
use super::store::{Archive, BadCopies};
use super::Catalog;
use crate::blob::pass::PassRequest;
use crate::blob::{BlobReader, FileRange, SeekableRange, SequentialReader, Stats, VerifyingReader};
use crate::digest::Digest;

/// True for the errors that say a copy's bytes are wrong (a digest or
/// length mismatch, a corrupt compressed stream, an archive changed since it
/// was indexed), as opposed to a failure to read them at all.
fn is_bad_copy(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::InvalidData | io::ErrorKind::UnexpectedEof
    )
}

impl Archive {
    /// The file indexed, open; an error (not a bad copy) while the archive
    /// is in the view without its file.
    pub(super) fn open_file(&self) -> io::Result<&Arc<File>> {
        self.file.as_ref().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                "the archive file is missing (the archive stays listed for archive_removal_grace)",
            )
        })
    }
}

impl Catalog {
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
                    first_error.get_or_insert_with(|| BlobError::read(digest, archive.path(), e));
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
                    first_error.get_or_insert_with(|| BlobError::read(digest, archive.path(), e));
                }
            }
        }
        Err(first_error.unwrap_or(BlobError::Unknown(*digest)))
    }

    /// Announces that `digests` are about to be read (the layers of an
    /// image being pulled or prepared): those that only a sequential pass
    /// over a compressed archive reaches, and not cached, are kept in the
    /// layer cache by the next pass over their archive that goes by them
    /// (see `blob::pass`).
    pub fn expect_blobs(&self, digests: &[Digest]) {
        for digest in digests {
            if self.cache.contains(digest) {
                continue;
            }
            let Ok(archives) = self.archives_with(digest) else {
                continue;
            };
            // The archive `open_blob` reads first.
            let archive = &archives[0];
            if matches!(
                archive.index.container,
                Container::Tar | Container::SeekableZstd
            ) {
                continue;
            }
            let loc = archive.index.blobs[digest];
            archive.passes.expect([PassRequest {
                digest: *digest,
                offset: loc.offset,
                size: loc.size,
                what: archive.index.path.display().to_string(),
            }]);
        }
    }

    /// Fails when `archive`'s file is no longer the version indexed (or is
    /// not open).
    pub(super) fn check_unchanged(&self, archive: &Archive, digest: &Digest) -> io::Result<()> {
        if FileKey::of(&archive.open_file()?.metadata()?) != archive.index.key {
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
        // A compressed archive without random access is read through the
        // layer cache too, even for a blob read once in order (a layer
        // being extracted or indexed): the pass filling it serves every
        // other blob of the archive asked for or expected meanwhile, where
        // decompressing straight through would start from the archive's
        // first byte for each layer.
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
    pub(super) fn archives_with(&self, digest: &Digest) -> Result<Vec<Arc<Archive>>, BlobError> {
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
                all[0].path(),
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
        let file = archive.open_file()?;
        match (archive.index.container, &archive.seek_table) {
            (Container::Tar, _) => Ok(Arc::new(
                FileRange::new(file.clone(), loc.offset, loc.size).counted(self.stats.clone()),
            )),
            (Container::SeekableZstd, Some(table)) => Ok(Arc::new(SeekableRange::new(
                file.clone(),
                table.clone(),
                loc.offset,
                loc.size,
                self.stats.clone(),
                archive.decompressed.clone(),
            ))),
            (container, _) => {
                // Filled by one pass over the archive shared with every other
                // blob of it requested meanwhile, and keeping those expected
                // (see `blob::pass`).
                let keep = |r: &PassRequest, blob: &mut dyn Read| -> io::Result<bool> {
                    let kept = self.cache.try_fill(&r.digest, |out| {
                        io::copy(blob, out)?;
                        Ok(())
                    })?;
                    if kept {
                        self.verified
                            .lock()
                            .unwrap()
                            .insert((archive.index.key, r.digest));
                    }
                    Ok(kept)
                };
                let open = || -> io::Result<Box<dyn Read + Send>> {
                    Ok(Box::new(Counted {
                        inner: container::decode_file(file.clone(), container)?,
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
                    archive
                        .passes
                        .fill(request, out, &open, &keep, &self.permits)
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

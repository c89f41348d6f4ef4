//! Random-access readers over the blobs inside an archive.
//!
//! The backend under a [`BlobReader`] depends on the archive's container:
//! a plain tar is read with `pread`; seekable zstd decompresses only the
//! frames covering the requested range; anything else (one zstd frame, gzip,
//! lz4, bzip2) is decompressed once into the [`crate::cache::LayerCache`] and
//! read from there, one sequential pass serving every blob of that archive
//! asked for meanwhile ([`pass`]).

use std::fs::File;
use std::io::{self, Read};
use std::num::NonZeroUsize;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use lru::LruCache;

pub mod pass;
pub mod seekable;

use self::seekable::SeekTable;
use crate::digest::{Digest, HashingReader};

/// `read_at` over one blob.
pub trait BlobReader: Send + Sync {
    /// Length of the blob.
    fn size(&self) -> u64;
    /// Reads up to `buf.len()` bytes at `offset`; 0 only at or past the end.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;
}

/// Counters that tests and metrics read.
#[derive(Debug, Default)]
pub struct Stats {
    /// Bytes produced by decompressing archives (including bytes skipped to
    /// reach a blob).
    pub decompressed: AtomicU64,
    /// Bytes read in place from plain tar archive files (as read, not per
    /// reader opened).
    pub read: AtomicU64,
    pub cache_hits: AtomicU64,
    pub cache_misses: AtomicU64,
}

impl Stats {
    pub fn decompressed(&self) -> u64 {
        self.decompressed.load(Ordering::Relaxed)
    }
}

/// A byte range of a file: a blob of a plain tar archive, or a cached blob.
pub struct FileRange {
    file: Arc<File>,
    base: u64,
    size: u64,
    /// Where the bytes actually read are counted ([`Stats::read`]): set for
    /// archives, not for cache files.
    counted: Option<Arc<Stats>>,
}

impl FileRange {
    pub fn new(file: Arc<File>, base: u64, size: u64) -> Self {
        FileRange {
            file,
            base,
            size,
            counted: None,
        }
    }

    /// Counts every byte read into `stats.read`.
    pub fn counted(mut self, stats: Arc<Stats>) -> Self {
        self.counted = Some(stats);
        self
    }
}

impl BlobReader for FileRange {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        if offset >= self.size {
            return Ok(0);
        }
        let want = buf.len().min((self.size - offset) as usize);
        let n = self.file.read_at(&mut buf[..want], self.base + offset)?;
        if let Some(stats) = &self.counted {
            stats.read.fetch_add(n as u64, Ordering::Relaxed);
        }
        if n == 0 && want > 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "archive is shorter than its index says",
            ));
        }
        Ok(n)
    }
}

/// A blob inside a seekable zstd archive. Decompressed frames are kept in a
/// small per-reader LRU so sequential reads decompress each frame once.
pub struct SeekableRange {
    file: Arc<File>,
    table: Arc<SeekTable>,
    base: u64,
    size: u64,
    frames: Mutex<LruCache<usize, Arc<Vec<u8>>>>,
    stats: Arc<Stats>,
    /// The archive's own count of decompressed bytes.
    archive_decompressed: Arc<AtomicU64>,
}

/// Largest frame accepted from a seek table (a hostile table could claim 4 GiB).
const MAX_FRAME: u32 = 256 << 20;

impl SeekableRange {
    pub fn new(
        file: Arc<File>,
        table: Arc<SeekTable>,
        base: u64,
        size: u64,
        stats: Arc<Stats>,
        archive_decompressed: Arc<AtomicU64>,
    ) -> Self {
        SeekableRange {
            file,
            table,
            base,
            size,
            frames: Mutex::new(LruCache::new(NonZeroUsize::new(4).unwrap())),
            stats,
            archive_decompressed,
        }
    }

    fn frame(&self, index: usize) -> io::Result<Arc<Vec<u8>>> {
        if let Some(f) = self.frames.lock().unwrap().get(&index) {
            return Ok(f.clone());
        }
        let fr = self.table.frames[index];
        if fr.decompressed_size > MAX_FRAME {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "seek table frame {index} claims {} bytes",
                    fr.decompressed_size
                ),
            ));
        }
        let mut compressed = vec![0u8; fr.compressed_size as usize];
        self.file
            .read_exact_at(&mut compressed, fr.compressed_offset)?;
        let data =
            zstd::bulk::decompress(&compressed, fr.decompressed_size as usize).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("seekable zstd frame {index}: {e}"),
                )
            })?;
        if data.len() != fr.decompressed_size as usize {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("seekable zstd frame {index} is shorter than its table entry"),
            ));
        }
        self.stats
            .decompressed
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        self.archive_decompressed
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        let data = Arc::new(data);
        self.frames.lock().unwrap().put(index, data.clone());
        Ok(data)
    }
}

impl BlobReader for SeekableRange {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        if offset >= self.size || buf.is_empty() {
            return Ok(0);
        }
        let pos = self.base + offset;
        let index = self.table.frame_at(pos).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "seek table ends before the blob",
            )
        })?;
        let frame = self.frame(index)?;
        let start = (pos - self.table.frames[index].decompressed_offset) as usize;
        let n = buf
            .len()
            .min(frame.len() - start)
            .min((self.size - offset) as usize);
        buf[..n].copy_from_slice(&frame[start..start + n]);
        Ok(n)
    }
}

/// A blob held in memory (a document, or a synthesized manifest).
impl BlobReader for Vec<u8> {
    fn size(&self) -> u64 {
        self.len() as u64
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let Some(rest) = self.get(offset as usize..) else {
            return Ok(0);
        };
        let n = buf.len().min(rest.len());
        buf[..n].copy_from_slice(&rest[..n]);
        Ok(n)
    }
}

/// Sequential `Read` over a [`BlobReader`].
pub struct SequentialReader {
    inner: Arc<dyn BlobReader>,
    pos: u64,
}

impl SequentialReader {
    pub fn new(inner: Arc<dyn BlobReader>) -> Self {
        SequentialReader { inner, pos: 0 }
    }
}

impl Read for SequentialReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// Passes a blob through, checking its length and digest, and holds back
/// its last byte until both hold: a mismatch is an error in place of that
/// byte, so no reader ever gets a whole blob of bad bytes, not even one that
/// stops after `size` bytes without reading to EOF (an HTTP body with a
/// `Content-Length`). After an error every read repeats it.
pub struct VerifyingReader<R> {
    inner: Option<HashingReader<R>>,
    digest: Digest,
    size: u64,
    what: String,
    failed: Option<(io::ErrorKind, String)>,
}

impl<R: Read> VerifyingReader<R> {
    /// `what` names the blob's source in the error (e.g. the archive path).
    pub fn new(inner: R, digest: Digest, size: u64, what: String) -> Self {
        VerifyingReader {
            inner: Some(HashingReader::new(inner)),
            digest,
            size,
            what,
            failed: None,
        }
    }

    fn fail(&mut self, kind: io::ErrorKind, message: String) -> io::Error {
        self.inner = None;
        self.failed = Some((kind, message.clone()));
        io::Error::new(kind, message)
    }

    fn short(&mut self, count: u64) -> io::Error {
        let message = format!(
            "blob {} in {} ends after {count} of {} bytes",
            self.digest, self.what, self.size
        );
        self.fail(io::ErrorKind::UnexpectedEof, message)
    }

    /// Reads the last byte (if the blob has one), makes sure nothing
    /// follows, and checks the digest; returns that byte.
    fn finish(&mut self, remaining: u64) -> io::Result<Option<u8>> {
        let inner = self.inner.as_mut().expect("not finished");
        let mut last = [0u8; 1];
        if remaining == 1 && read_some(inner, &mut last)? == 0 {
            return Err(self.short(self.size - 1));
        }
        let mut probe = [0u8; 1];
        if read_some(inner, &mut probe)? != 0 {
            let message = format!(
                "blob {} in {} is longer than {} bytes",
                self.digest, self.what, self.size
            );
            return Err(self.fail(io::ErrorKind::InvalidData, message));
        }
        let (actual, _, _) = self.inner.take().expect("not finished").finish();
        if actual != self.digest {
            let message = format!(
                "blob {} in {} does not match its digest (got {actual})",
                self.digest, self.what
            );
            return Err(self.fail(io::ErrorKind::InvalidData, message));
        }
        Ok((remaining == 1).then_some(last[0]))
    }
}

/// One `read`, retried when interrupted.
fn read_some(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match r.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

impl<R: Read> Read for VerifyingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some((kind, message)) = &self.failed {
            return Err(io::Error::new(*kind, message.clone()));
        }
        let Some(inner) = self.inner.as_mut() else {
            return Ok(0); // verified and handed out whole
        };
        if buf.is_empty() {
            return Ok(0);
        }
        let remaining = self.size - inner.count();
        if remaining > 1 {
            // Everything but the last byte passes straight through.
            let cap = buf.len().min((remaining - 1) as usize);
            let n = inner.read(&mut buf[..cap])?;
            if n == 0 {
                let count = inner.count();
                return Err(self.short(count));
            }
            return Ok(n);
        }
        Ok(match self.finish(remaining)? {
            Some(byte) => {
                buf[0] = byte;
                1
            }
            None => 0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifying_reader_refuses_bad_bytes() {
        let good = b"hello".to_vec();
        let d = Digest::of(&good);
        let mut out = Vec::new();
        VerifyingReader::new(&good[..], d, 5, "t".into())
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, good);
        let err = VerifyingReader::new(&b"hellx"[..], d, 5, "t.tar".into())
            .read_to_end(&mut Vec::new())
            .unwrap_err();
        assert!(
            err.to_string().contains(&d.to_string()) && err.to_string().contains("t.tar"),
            "{err}"
        );
        assert!(VerifyingReader::new(&b"hell"[..], d, 5, "t".into())
            .read_to_end(&mut Vec::new())
            .is_err());
        assert!(VerifyingReader::new(&b"hello!"[..], d, 5, "t".into())
            .read_to_end(&mut Vec::new())
            .is_err());
        // A reader that stops after `size` bytes never gets all of a bad
        // blob: the last byte is held back until the digest holds.
        let mut r = VerifyingReader::new(&b"hellx"[..], d, 5, "t".into());
        let mut got = vec![0u8; 5];
        let mut n = 0;
        while n < 5 {
            match r.read(&mut got[n..]) {
                Ok(0) | Err(_) => break,
                Ok(k) => n += k,
            }
        }
        assert_eq!(n, 4, "the bad blob's last byte was handed out");
        // Errors repeat; they never turn into EOF.
        assert!(r.read(&mut got).is_err());
        assert!(r.read(&mut got).is_err());
        // Empty blobs and one-byte reads.
        let empty = Digest::of(b"");
        let mut out = Vec::new();
        VerifyingReader::new(&b""[..], empty, 0, "t".into())
            .read_to_end(&mut out)
            .unwrap();
        assert!(out.is_empty());
        let mut r = VerifyingReader::new(&good[..], d, 5, "t".into());
        let mut byte = [0u8; 1];
        let mut out = Vec::new();
        while r.read(&mut byte).unwrap() == 1 {
            out.push(byte[0]);
        }
        assert_eq!(out, good);
    }

    #[test]
    fn seekable_range_decompresses_only_covering_frames() {
        use std::io::Write;
        let data: Vec<u8> = (0..1_000_000u32).map(|i| (i * 7 % 256) as u8).collect();
        let enc = seekable::encode(&data, 64 * 1024, &[], 1).unwrap();
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&enc).unwrap();
        let table = SeekTable::read(f.as_file(), enc.len() as u64).unwrap();
        let stats = Arc::new(Stats::default());
        let r = SeekableRange::new(
            Arc::new(f.reopen().unwrap()),
            Arc::new(table),
            500_000,
            1000,
            stats.clone(),
            Arc::default(),
        );
        let mut out = Vec::new();
        SequentialReader::new(Arc::new(r))
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, &data[500_000..501_000]);
        assert!(
            stats.decompressed() <= 2 * 64 * 1024,
            "decompressed {}",
            stats.decompressed()
        );
    }
}

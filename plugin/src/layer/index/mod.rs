//! Layers mounted from the archive instead of extracted: EROFS "tar
//! indexes".
//!
//! An uncompressed layer tar already lays every file's data out in 512-byte
//! blocks. [`build_index`] walks the layer once (the same tar parser and the
//! same decompress/hash pipeline as extraction, so the diffID is verified on
//! the way) and writes an EROFS image holding only metadata: directories,
//! inodes, xattrs, symlinks, hard links, devices, OCI whiteouts as overlayfs
//! whiteouts and opaque directories as `trusted.overlay.opaque=y`, exactly as
//! extraction would leave them on disk (`tree.rs`). Each regular file is a
//! chunk-based inode whose chunk index points at the file's data in the
//! backing file (device 1 of the image's device table), in 512-byte blocks
//! (`image.rs`, on-disk structures in `format.rs`). [`super::mount`] mounts the
//! image read-only with the backing file as its extra device (a file-backed
//! mount, Linux 6.12+), and the mount is an overlayfs lower directory like
//! an extracted layer.
//!
//! The backing file is the archive itself when the layer is an uncompressed
//! tar inside an uncompressed archive (`data_base` is then where the layer
//! starts in the archive): nothing is copied.
//!
//! Trust: the kernel reads file data from the backing file on every access
//! and checks nothing. The diffID is verified once, here, while the index is
//! built; whoever can rewrite the backing file afterwards can change what
//! containers read (see the README).

mod format;
mod image;
#[cfg(test)]
mod tests;
mod tree;

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use crate::catalog::Compression;
use crate::digest::Digest;
use crate::extract::tar::TarStream;
use crate::extract::{walk_entries, walk_layer, ExtractError};

pub(crate) use format::MAGIC;
pub use image::{ImageError, ImageStats};
pub use tree::{IndexLimits, TooLarge, TreeStats};

/// Why a layer could not be indexed.
#[derive(Debug, thiserror::Error)]
pub enum ErofsError {
    /// The tar stream: unreadable, malformed, hostile, an entry the index
    /// does not model (extraction may still take it), or a diffID mismatch.
    #[error(transparent)]
    Layer(#[from] ExtractError),
    /// Past the build's [`IndexLimits`]: the layer is extracted instead.
    #[error(transparent)]
    TooLarge(#[from] TooLarge),
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error("writing the EROFS image {}: {source}", path.display())]
    Write { path: PathBuf, source: io::Error },
}

/// What one index build did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IndexStats {
    pub tree: TreeStats,
    pub image: ImageStats,
    /// Length of the layer's tar stream.
    pub tar_bytes: u64,
}

/// Where the layer's data lies: in `backing_len` bytes of backing file,
/// starting at `data_base` (a multiple of 512).
#[derive(Clone, Copy, Debug)]
pub struct Backing {
    pub data_base: u64,
    pub backing_len: u64,
}

/// Reads the layer `blob` (compressed as `compression`; the offsets recorded
/// are those of the decompressed stream), checks it against `diff_id`, and
/// writes its EROFS index to `out` (created, must not exist). On error
/// nothing is left at `out`.
///
/// Blocking: run it on a blocking thread (two more threads of its own, as
/// extraction).
pub fn build_index(
    blob: impl Read + Send,
    compression: Compression,
    diff_id: &Digest,
    backing: Backing,
    out: &Path,
) -> Result<IndexStats, ErofsError> {
    build_index_within(blob, compression, diff_id, backing, IndexLimits::NONE, out)
}

/// [`build_index`] within `limits`: the tree is held in memory until the
/// image is written, and past `limits` the build stops with
/// [`ErofsError::TooLarge`].
pub fn build_index_within(
    blob: impl Read + Send,
    compression: Compression,
    diff_id: &Digest,
    backing: Backing,
    limits: IndexLimits,
    out: &Path,
) -> Result<IndexStats, ErofsError> {
    let walked = walk_layer(blob, compression, |s| build_tree(s, limits))?;
    if walked.diff_id != *diff_id {
        return Err(ExtractError::DiffIdMismatch {
            expected: *diff_id,
            actual: walked.diff_id,
        }
        .into());
    }
    write_index(walked, diff_id, backing, out)
}

/// Lays out and writes the index of a walked layer.
fn write_index(
    walked: crate::extract::Walked<tree::LayerTree>,
    diff_id: &Digest,
    backing: Backing,
    out: &Path,
) -> Result<IndexStats, ErofsError> {
    let tree = walked.value;
    let mut uuid = [0u8; 16];
    uuid.copy_from_slice(&diff_id.as_bytes()[..16]);
    let (bytes, image) = image::write_image(&tree, backing.data_base, backing.backing_len, uuid)?;
    let written = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(out)?;
        f.write_all(&bytes)?;
        f.sync_all()
    })();
    if let Err(source) = written {
        let _ = std::fs::remove_file(out);
        return Err(ErofsError::Write {
            path: out.to_owned(),
            source,
        });
    }
    Ok(IndexStats {
        tree: tree.stats,
        image,
        tar_bytes: walked.decompressed_bytes,
    })
}

/// [`build_index`] of a layer that is not stored as a plain tar: `blob` is
/// decompressed once, the tar stream written to `tar_out` (created, must not
/// exist) on the way, and the index written to `out` points into that file
/// (its backing file). Both files are synced; on error neither is left.
/// Within `limits`, as [`build_index_within`].
pub fn build_index_with_copy(
    blob: impl Read + Send,
    compression: Compression,
    diff_id: &Digest,
    limits: IndexLimits,
    out: &Path,
    tar_out: &Path,
) -> Result<IndexStats, ErofsError> {
    let result = (|| {
        let write_err = |source| ErofsError::Write {
            path: tar_out.to_owned(),
            source,
        };
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(tar_out)
            .map_err(write_err)?;
        let tee = Tee {
            inner: decoder(blob, compression).map_err(write_err)?,
            out: io::BufWriter::with_capacity(1 << 20, file),
        };
        let walked = walk_layer(tee, Compression::None, |s| build_tree(s, limits))?;
        if walked.diff_id != *diff_id {
            return Err(ExtractError::DiffIdMismatch {
                expected: *diff_id,
                actual: walked.diff_id,
            }
            .into());
        }
        std::fs::File::open(tar_out)
            .and_then(|f| f.sync_all())
            .map_err(write_err)?;
        let backing = Backing {
            data_base: 0,
            backing_len: walked.decompressed_bytes,
        };
        write_index(walked, diff_id, backing, out)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(tar_out);
    }
    result
}

/// The decompressed stream of `blob`.
fn decoder<'a>(
    blob: impl Read + Send + 'a,
    compression: Compression,
) -> io::Result<Box<dyn Read + Send + 'a>> {
    const IN_BUF: usize = 256 * 1024;
    Ok(match compression {
        Compression::None => Box::new(blob),
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(
            io::BufReader::with_capacity(IN_BUF, blob),
        )),
        Compression::Zstd => {
            let mut d = zstd::stream::read::Decoder::with_buffer(io::BufReader::with_capacity(
                IN_BUF, blob,
            ))?;
            d.window_log_max(31)?;
            Box::new(d)
        }
    })
}

/// Reads `inner`, writing what it reads to `out` (flushed at the end of
/// the stream).
struct Tee<R, W: Write> {
    inner: R,
    out: W,
}

impl<R: Read, W: Write> Read for Tee<R, W> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 {
            self.out.flush()?;
        } else {
            self.out.write_all(&buf[..n])?;
        }
        Ok(n)
    }
}

/// Applies every entry of the stream, then reads it to its end; stops as
/// soon as the tree is past `limits`.
fn build_tree(stream: TarStream, limits: IndexLimits) -> Result<tree::LayerTree, ErofsError> {
    let mut tree = tree::LayerTree::new(limits);
    // The walk stops on an extraction error: the limit's own error is kept
    // aside and given back instead.
    let mut too_large = None;
    let walked = walk_entries(stream, |stream, entry, shown| {
        tree.apply(entry, stream.position(), shown)?;
        tree.check_limits().map_err(|e| {
            let what = e.to_string();
            too_large = Some(e);
            ExtractError::Unsupported {
                entry: shown.to_owned(),
                what,
            }
        })
    });
    match (walked, too_large) {
        (Err(_), Some(e)) => return Err(e.into()),
        (walked, _) => walked?,
    }
    Ok(tree)
}

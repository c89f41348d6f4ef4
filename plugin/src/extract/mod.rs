//! Layer extraction: a compressed layer blob in, an overlayfs layer directory out.
//!
//! [`unpack_layer`] decompresses the blob, verifies the tar stream against the
//! layer's diffID while it extracts it, and writes the entries into the
//! snapshot's `fs` directory, converting OCI whiteouts into overlayfs ones
//! (`.wh.<name>` becomes a 0/0 character device, `.wh..wh..opq` the
//! `trusted.overlay.opaque=y` xattr on its directory).
//!
//! Safety: every path is resolved inside the destination by the kernel
//! (`openat2` with `RESOLVE_BENEATH`, see `root.rs`); entries with `..` or
//! absolute paths, links leading out and whiteouts naming anything but a
//! plain name are errors. What exists at an entry's path is removed (never
//! followed) before the entry is created, a directory with everything in it,
//! unless both are directories (then they merge): containerd's applier
//! (`pkg/archive/tar.go`) does the same.
//!
//! Speed: decompression, hashing and extraction run on three threads that
//! pass the same 1 MiB buffers along, and file data is written to disk
//! straight from those buffers; each regular file costs an `openat`
//! relative to a cached parent directory fd, its writes, `fchown`, `fchmod`,
//! `futimens` and `close`.

mod paths;
mod pipeline;
mod root;
pub(crate) mod tar;

pub(crate) use paths::{normalize, split, symlink_escapes, xattr_refused};
pub(crate) use pipeline::{walk_entries, walk_layer, Walked};

use std::ffi::CString;
use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags, XattrFlags};
use rustix::io::Errno;

use crate::catalog::Compression;
use crate::digest::Digest;

use self::root::{FsError, Root};
use self::tar::{display_bytes, Entry, Kind, StreamError, TarStream, Time};

/// Counts of what one layer extraction did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnpackStats {
    /// Tar entries processed (extension headers not counted).
    pub entries: u64,
    /// Regular files written.
    pub files: u64,
    pub directories: u64,
    pub symlinks: u64,
    pub hardlinks: u64,
    /// Character and block devices and fifos.
    pub devices: u64,
    /// Whiteouts converted (file whiteouts and opaque directories).
    pub whiteouts: u64,
    /// File data written.
    pub bytes_written: u64,
    /// Bytes read from the blob (compressed).
    pub compressed_bytes: u64,
    /// Length of the decompressed tar stream (what the diffID covers).
    pub decompressed_bytes: u64,
}

/// Why a layer could not be extracted. `entry` is the tar entry's path as the
/// archive names it (lossy UTF-8), empty before the first entry.
#[derive(Debug, thiserror::Error)]
pub enum ExtractError {
    #[error("opening the destination {}: {source}", path.display())]
    Destination { path: PathBuf, source: io::Error },
    #[error("reading the layer stream (at tar entry {entry:?}): {source}")]
    Stream { entry: String, source: io::Error },
    #[error("layer stream truncated (at tar entry {entry:?})")]
    Truncated { entry: String },
    #[error("malformed tar (at tar entry {entry:?}): {reason}")]
    Malformed { entry: String, reason: String },
    #[error("tar entry {entry:?}: unsupported: {what}")]
    Unsupported { entry: String, what: String },
    /// The entry's own path (or link target, or whiteout name) is not a plain
    /// relative path inside the layer.
    #[error("tar entry {entry:?}: unsafe path: {reason}")]
    UnsafePath { entry: String, reason: &'static str },
    /// Resolving the entry would leave the layer root (through a symlink).
    #[error("tar entry {entry:?}: escapes the layer root: {reason}")]
    Escape { entry: String, reason: &'static str },
    #[error("tar entry {entry:?}: {op}: {source}")]
    Io {
        entry: String,
        op: &'static str,
        source: io::Error,
    },
    #[error("layer diffID mismatch: the tar stream is {actual}, expected {expected}")]
    DiffIdMismatch { expected: Digest, actual: Digest },
}

impl ExtractError {
    /// True if the archive tried to write outside the layer: worth a warning
    /// of its own, not only a fallback.
    pub fn is_hostile(&self) -> bool {
        matches!(
            self,
            ExtractError::UnsafePath { .. } | ExtractError::Escape { .. }
        )
    }

    fn fs(entry: &str, e: FsError) -> Self {
        match e {
            FsError::Io(op, source) => ExtractError::Io {
                entry: entry.to_owned(),
                op,
                source,
            },
            FsError::Escape(reason) => ExtractError::Escape {
                entry: entry.to_owned(),
                reason,
            },
        }
    }

    fn io(entry: &str, op: &'static str, source: impl Into<io::Error>) -> Self {
        ExtractError::Io {
            entry: entry.to_owned(),
            op,
            source: source.into(),
        }
    }

    fn unsafe_path(entry: &str, reason: &'static str) -> Self {
        ExtractError::UnsafePath {
            entry: entry.to_owned(),
            reason,
        }
    }

    pub(crate) fn stream(entry: &str, e: StreamError) -> Self {
        let entry = entry.to_owned();
        match e {
            StreamError::Read(source) => ExtractError::Stream { entry, source },
            StreamError::Truncated => ExtractError::Truncated { entry },
            StreamError::Malformed(reason) => ExtractError::Malformed { entry, reason },
            StreamError::Unsupported(what) => ExtractError::Unsupported { entry, what },
        }
    }
}

/// Extracts one layer blob into `dest`, an existing empty directory, and
/// checks the decompressed stream against `diff_id` (read to its end,
/// trailing padding included). On error `dest` holds a partial layer: the
/// caller deletes it.
///
/// Blocking: run it on a blocking thread. It uses two more threads of its own
/// (decompression and hashing) for the duration of the call, and at most
/// about 10 MiB of buffers.
pub fn unpack_layer(
    blob: impl Read + Send,
    compression: Compression,
    diff_id: &Digest,
    dest: &Path,
) -> Result<UnpackStats, ExtractError> {
    let root = Root::open(dest).map_err(|source| ExtractError::Destination {
        path: dest.to_owned(),
        source,
    })?;
    let mut ex = Extractor {
        root,
        stats: UnpackStats::default(),
        dir_times: Vec::new(),
    };
    let walked = walk_layer(blob, compression, |stream| ex.run(stream))?;
    let Extractor {
        mut root,
        mut stats,
        dir_times,
    } = ex;
    stats.decompressed_bytes = walked.decompressed_bytes;
    stats.compressed_bytes = walked.compressed_bytes;
    if walked.diff_id != *diff_id {
        return Err(ExtractError::DiffIdMismatch {
            expected: *diff_id,
            actual: walked.diff_id,
        });
    }
    // Directory times last: creating entries inside a directory changes its mtime.
    set_dir_times(&mut root, &dir_times);
    Ok(stats)
}

struct Extractor {
    root: Root,
    stats: UnpackStats,
    /// Directories whose times are set after everything else.
    dir_times: Vec<(Vec<u8>, Time, Option<Time>)>,
}

impl Extractor {
    /// Extracts every entry, then reads the stream to its end.
    fn run(&mut self, stream: TarStream) -> Result<(), ExtractError> {
        walk_entries(stream, |stream, entry, shown| {
            self.stats.entries += 1;
            self.entry(stream, entry, shown)
        })
    }

    fn entry(
        &mut self,
        stream: &mut TarStream,
        e: &Entry,
        shown: &str,
    ) -> Result<(), ExtractError> {
        let path = normalize(&e.path).map_err(|r| ExtractError::unsafe_path(shown, r.reason()))?;
        check_lengths(e, &path, shown)?;
        if path.is_empty() {
            // The layer root itself ("./"): containerd ignores it too.
            return if e.kind == Kind::Dir {
                Ok(())
            } else {
                Err(ExtractError::unsafe_path(
                    shown,
                    "a non-directory names the layer root",
                ))
            };
        }
        let (dir, name) = split(&path);

        if let Some(wh) = name.strip_prefix(b".wh.") {
            return self.whiteout(e, shown, dir, wh);
        }

        let fs = |err| ExtractError::fs(shown, err);
        let parent = self.root.dir(dir, true).map_err(fs)?;
        match e.kind {
            Kind::Regular => {
                let fd = self.root.create_file(&parent, dir, name).map_err(fs)?;
                let mut written = 0u64;
                stream
                    .copy_data(|chunk| {
                        write_all(&fd, chunk)?;
                        written += chunk.len() as u64;
                        Ok::<(), Errno>(())
                    })
                    .map_err(|err| ExtractError::stream(shown, err))?
                    .map_err(|err| ExtractError::io(shown, "writing the file", err))?;
                self.stats.bytes_written += written;
                rfs::fchown(&fd, Some(root::uid(e.uid)), Some(root::gid(e.gid)))
                    .map_err(|err| ExtractError::io(shown, "setting the owner", err))?;
                rfs::fchmod(&fd, Mode::from_raw_mode(e.mode))
                    .map_err(|err| ExtractError::io(shown, "setting the mode", err))?;
                set_xattrs_fd(&fd, e, shown)?;
                rfs::futimens(&fd, &root::timestamps(e.mtime, e.atime))
                    .map_err(|err| ExtractError::io(shown, "setting the times", err))?;
                self.stats.files += 1;
            }
            Kind::Dir => {
                let fd = self.root.create_dir(&parent, dir, name).map_err(fs)?;
                rfs::fchown(&fd, Some(root::uid(e.uid)), Some(root::gid(e.gid)))
                    .map_err(|err| ExtractError::io(shown, "setting the owner", err))?;
                rfs::fchmod(&fd, Mode::from_raw_mode(e.mode))
                    .map_err(|err| ExtractError::io(shown, "setting the mode", err))?;
                set_xattrs_fd(&fd, e, shown)?;
                self.dir_times.push((path.clone(), e.mtime, e.atime));
                // Its entries most likely come next.
                self.root.set_cached(&path, Rc::new(fd));
                self.stats.directories += 1;
            }
            Kind::Symlink => {
                self.root.symlink(&parent, dir, name, &e.link).map_err(fs)?;
                chown_at(&parent, name, e, shown)?;
                set_xattrs_opath(&parent, name, e, shown)?;
                set_times_at(&parent, name, e, shown)?;
                self.stats.symlinks += 1;
            }
            Kind::HardLink => self.hardlink(e, shown, &parent, dir, name, &path)?,
            Kind::Char | Kind::Block | Kind::Fifo => {
                let kind = match e.kind {
                    Kind::Char => FileType::CharacterDevice,
                    Kind::Block => FileType::BlockDevice,
                    _ => FileType::Fifo,
                };
                self.root
                    .mknod(
                        &parent,
                        dir,
                        name,
                        kind,
                        e.mode,
                        rfs::makedev(e.dev_major, e.dev_minor),
                        false,
                    )
                    .map_err(fs)?;
                chown_at(&parent, name, e, shown)?;
                // mknod applied the umask, and chown cleared setuid/setgid.
                rfs::chmodat(
                    &*parent,
                    name,
                    Mode::from_raw_mode(e.mode),
                    AtFlags::empty(),
                )
                .map_err(|err| ExtractError::io(shown, "setting the mode", err))?;
                set_xattrs_opath(&parent, name, e, shown)?;
                set_times_at(&parent, name, e, shown)?;
                self.stats.devices += 1;
            }
        }
        Ok(())
    }

    fn hardlink(
        &mut self,
        e: &Entry,
        shown: &str,
        parent: &OwnedFd,
        dir: &[u8],
        name: &[u8],
        path: &[u8],
    ) -> Result<(), ExtractError> {
        let target =
            normalize(&e.link).map_err(|r| ExtractError::unsafe_path(shown, r.link_reason()))?;
        if target.is_empty() {
            return Err(ExtractError::unsafe_path(
                shown,
                "hard link to the layer root",
            ));
        }
        if target == path {
            return Ok(()); // a link to itself: already there
        }
        let (tdir, tname) = split(&target);
        let fs = |err| ExtractError::fs(shown, err);
        // Not cached: the entry's own parent stays the cached one.
        let tparent = if tdir == dir {
            None
        } else {
            Some(self.root.dir(tdir, false).map_err(fs)?)
        };
        let tparent_fd: &OwnedFd = tparent.as_deref().unwrap_or(parent);
        let st = rfs::statat(tparent_fd, tname, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|err| ExtractError::io(shown, "looking up the hard link target", err))?;
        match FileType::from_raw_mode(st.st_mode) {
            FileType::Directory => {
                return Err(ExtractError::unsafe_path(shown, "hard link to a directory"))
            }
            FileType::Symlink => {
                let link = rfs::readlinkat(tparent_fd, tname, Vec::new())
                    .map_err(|err| ExtractError::io(shown, "reading the hard link target", err))?;
                if symlink_escapes(tdir, link.as_bytes()) {
                    return Err(ExtractError::Escape {
                        entry: shown.to_owned(),
                        reason: "hard link to a symlink that points outside the layer",
                    });
                }
            }
            _ => {}
        }
        // The link's own parent may have been evicted from the cache by the
        // target lookup; `parent` still holds it open.
        self.root
            .hardlink(tparent_fd, tname, parent, dir, name)
            .map_err(fs)?;
        self.stats.hardlinks += 1;
        Ok(())
    }

    fn whiteout(
        &mut self,
        e: &Entry,
        shown: &str,
        dir: &[u8],
        wh: &[u8],
    ) -> Result<(), ExtractError> {
        let fs = |err| ExtractError::fs(shown, err);
        if wh == b".wh..opq" {
            let parent = self.root.dir(dir, true).map_err(fs)?;
            // The cached fd is O_PATH; xattrs need a real open.
            let fd = rfs::openat(
                &*parent,
                ".",
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(|err| ExtractError::io(shown, "opening the opaque directory", err))?;
            rfs::fsetxattr(&fd, "trusted.overlay.opaque", b"y", XattrFlags::empty())
                .map_err(|err| ExtractError::io(shown, "marking the directory opaque", err))?;
            self.stats.whiteouts += 1;
            return Ok(());
        }
        if wh.starts_with(b".wh.") {
            // Other `.wh..wh.` names are aufs metadata (hard link dirs): skipped, as moby does.
            return Ok(());
        }
        if wh.is_empty() || wh == b"." || wh == b".." {
            return Err(ExtractError::unsafe_path(
                shown,
                "whiteout of an invalid name",
            ));
        }
        let parent = self.root.dir(dir, true).map_err(fs)?;
        self.root
            .mknod(
                &parent,
                dir,
                wh,
                FileType::CharacterDevice,
                0,
                rfs::makedev(0, 0),
                true,
            )
            .map_err(fs)?;
        rfs::chownat(
            &*parent,
            wh,
            Some(root::uid(e.uid)),
            Some(root::gid(e.gid)),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(|err| ExtractError::io(shown, "setting the whiteout's owner", err))?;
        self.stats.whiteouts += 1;
        Ok(())
    }
}

/// Writes all of `data` to `fd`.
fn write_all(fd: &OwnedFd, mut data: &[u8]) -> Result<(), Errno> {
    while !data.is_empty() {
        match rustix::io::write(fd, data) {
            Ok(0) => return Err(Errno::IO),
            Ok(n) => data = &data[n..],
            Err(Errno::INTR) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The kernel's `PATH_MAX`, terminating NUL included.
pub(crate) const PATH_MAX: usize = 4096;

/// Refuses what no file system call can take, whatever the root: a path of
/// `PATH_MAX` bytes or more, a symlink target or hard link name of
/// `PATH_MAX` bytes or more (the kernel answers `ENAMETOOLONG`, and
/// containerd's own extraction fails on them). Extraction and the EROFS
/// index builder both check it here, so they agree (the index builder
/// took them, and extraction's walk one component at a time would create
/// such a path).
pub(crate) fn check_lengths(e: &Entry, path: &[u8], shown: &str) -> Result<(), ExtractError> {
    let unsupported = |what: &str| ExtractError::Unsupported {
        entry: shown.to_owned(),
        what: what.to_owned(),
    };
    if path.len() >= PATH_MAX {
        return Err(unsupported("a path of 4096 bytes or more (PATH_MAX)"));
    }
    if matches!(e.kind, Kind::Symlink | Kind::HardLink) && e.link.len() >= PATH_MAX {
        return Err(unsupported(
            "a link target of 4096 bytes or more (PATH_MAX)",
        ));
    }
    Ok(())
}

/// Applies the entry's xattrs with `set`; decides which failures matter.
fn apply_xattrs(
    e: &Entry,
    shown: &str,
    mut set: impl FnMut(&CString, &[u8]) -> io::Result<()>,
) -> Result<(), ExtractError> {
    for (name, value) in &e.xattrs {
        if xattr_refused(name) {
            tracing::warn!(entry = %shown, xattr = %display_bytes(name), "overlayfs xattr in layer ignored");
            continue;
        }
        let cname = CString::new(name.as_slice())
            .map_err(|_| ExtractError::unsafe_path(shown, "NUL byte in xattr name"))?;
        if let Err(err) = set(&cname, value) {
            let errno = err.raw_os_error();
            let unsupported = errno == Some(libc::ENOTSUP) || errno == Some(libc::EOPNOTSUPP);
            let denied_security = errno == Some(libc::EPERM) && name.starts_with(b"security.");
            if unsupported || denied_security {
                tracing::warn!(entry = %shown, xattr = %display_bytes(name), error = %err, "xattr not set");
                continue;
            }
            return Err(ExtractError::io(shown, "setting an xattr", err));
        }
    }
    Ok(())
}

fn set_xattrs_fd(fd: &OwnedFd, e: &Entry, shown: &str) -> Result<(), ExtractError> {
    if e.xattrs.is_empty() {
        return Ok(());
    }
    apply_xattrs(e, shown, |name, value| {
        rfs::fsetxattr(fd, name.as_c_str(), value, XattrFlags::empty()).map_err(Into::into)
    })
}

/// Sets the owner of `parent/name` without following it (a symlink or a
/// device node, which cannot be opened for `fchown`).
fn chown_at(parent: &OwnedFd, name: &[u8], e: &Entry, shown: &str) -> Result<(), ExtractError> {
    rfs::chownat(
        parent,
        name,
        Some(root::uid(e.uid)),
        Some(root::gid(e.gid)),
        AtFlags::SYMLINK_NOFOLLOW,
    )
    .map_err(|err| ExtractError::io(shown, "setting the owner", err))
}

/// Sets the times of `parent/name` without following it.
fn set_times_at(parent: &OwnedFd, name: &[u8], e: &Entry, shown: &str) -> Result<(), ExtractError> {
    rfs::utimensat(
        parent,
        name,
        &root::timestamps(e.mtime, e.atime),
        AtFlags::SYMLINK_NOFOLLOW,
    )
    .map_err(|err| ExtractError::io(shown, "setting the times", err))
}

fn set_xattrs_opath(
    parent: &OwnedFd,
    name: &[u8],
    e: &Entry,
    shown: &str,
) -> Result<(), ExtractError> {
    if e.xattrs.is_empty() {
        return Ok(());
    }
    let fd = root::open_path(parent, name)
        .map_err(|err| ExtractError::io(shown, "opening the entry for its xattrs", err))?;
    apply_xattrs(e, shown, |xname, value| {
        root::set_xattr_opath(fd.as_fd(), xname, value)
    })
}

/// Sets the recorded directory times (best effort: a directory replaced by a
/// later entry is skipped).
fn set_dir_times(root: &mut Root, dirs: &[(Vec<u8>, Time, Option<Time>)]) {
    for (path, mtime, atime) in dirs {
        let (dir, name) = split(path);
        let Ok(parent) = root.dir(dir, false) else {
            continue;
        };
        let Ok(fd) = rfs::openat(
            &*parent,
            name,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        ) else {
            continue;
        };
        if let Err(err) = rfs::futimens(&fd, &root::timestamps(*mtime, *atime)) {
            tracing::warn!(dir = %display_bytes(path), error = %err, "setting directory times failed");
        }
    }
}

#[cfg(test)]
mod tests;

//! Mounting an index: mount(2) straight, never util-linux `mount` (which
//! sets up a loop device for a file and then refuses `device=`). The image
//! file is the source of a file-backed EROFS mount (Linux 6.12+), the tar it
//! points into its one extra device, read-only, `nosuid,nodev`.

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::mount::MountFlags;

use crate::catalog::Compression;
use crate::digest::Digest;

use super::index::{self, Backing, MAGIC};
use super::record::{COPY, IMAGE};
use super::LayerError;

/// Why a mount or unmount failed.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("the backing file path {} cannot be a mount option (',' or NUL in it)", path.display())]
    BadPath { path: std::path::PathBuf },
    #[error("mounting {} (backed by {}) on {}: {source}", image.display(), backing.display(), target.display())]
    Mount {
        image: std::path::PathBuf,
        backing: std::path::PathBuf,
        target: std::path::PathBuf,
        source: io::Error,
    },
}

/// Mounts the EROFS `image` on `target` (an existing directory), read-only,
/// `nosuid,nodev` (the host never needs either from a layer: a container's
/// overlay has its own mount flags), with `backing` (an absolute path) as
/// its extra device.
pub fn mount(image: &Path, backing: &Path, target: &Path) -> Result<(), MountError> {
    #[cfg(test)]
    if let Some(source) = fault::check(target) {
        return Err(MountError::Mount {
            image: image.to_owned(),
            backing: backing.to_owned(),
            target: target.to_owned(),
            source,
        });
    }
    let raw = backing.as_os_str().as_bytes();
    if raw.contains(&b',') || raw.contains(&0) || !backing.is_absolute() {
        return Err(MountError::BadPath {
            path: backing.to_owned(),
        });
    }
    let mut opt = b"device=".to_vec();
    opt.extend_from_slice(raw);
    let data = CString::new(opt).map_err(|_| MountError::BadPath {
        path: backing.to_owned(),
    })?;
    let flags = MountFlags::RDONLY | MountFlags::NOSUID | MountFlags::NODEV;
    rustix::mount::mount(image, target, "erofs", flags, data.as_c_str()).map_err(|e| {
        MountError::Mount {
            image: image.to_owned(),
            backing: backing.to_owned(),
            target: target.to_owned(),
            source: e.into(),
        }
    })
}

/// Whether an EROFS file system is mounted on `target` (the file system
/// holding the directory itself is never EROFS here).
pub fn is_mounted(target: &Path) -> bool {
    rustix::fs::statfs(target).is_ok_and(|s| s.f_type as u64 == u64::from(MAGIC))
}

/// The open file as a path the kernel resolves to exactly it.
pub(crate) fn fd_path(file: &fs::File) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()))
}

/// Builds a tiny index and mounts it: EROFS, file-backed mounts, chunked
/// files and a device table, all at once; then reads it through an overlay
/// over a plain lower directory, the way containers use it: a whiteout
/// hides a file below, an opaque directory hides a directory's contents
/// below, and a file reads back right.
pub(crate) fn probe(scratch: &Path) -> Result<(), LayerError> {
    let unsupported =
        |what: &str, e: &dyn std::fmt::Display| LayerError::Unsupported(format!("{what}: {e}"));
    let dir = tempfile::Builder::new()
        .prefix("erofs-probe-")
        .tempdir_in(scratch)
        .map_err(LayerError::io("create a directory in", scratch))?;
    let tar = probe_layer().map_err(|e| unsupported("building the probe layer", &e))?;
    let backing = dir.path().join(COPY);
    fs::write(&backing, &tar).map_err(LayerError::io("write", &backing))?;
    let image = dir.path().join(IMAGE);
    index::build_index(
        &tar[..],
        Compression::None,
        &Digest::of(&tar),
        Backing {
            data_base: 0,
            backing_len: tar.len() as u64,
        },
        &image,
    )?;
    // The layer below: what the whiteout and the opaque directory hide.
    let below = dir.path().join("below");
    for (path, data) in [("gone", "x"), ("opq/old", "x"), ("kept/file", "x")] {
        let p = below.join(path);
        fs::create_dir_all(p.parent().unwrap_or(&below))
            .and_then(|()| fs::write(&p, data))
            .map_err(LayerError::io("write", &p))?;
    }
    let mnt = dir.path().join("fs");
    let merged = dir.path().join("merged");
    for d in [&mnt, &merged] {
        fs::create_dir(d).map_err(LayerError::io("create", d))?;
    }
    let file = fs::File::open(&backing).map_err(LayerError::io("open", &backing))?;
    mount(&image, &fd_path(&file), &mnt).map_err(|e| unsupported("mounting", &e))?;
    let checked = check_through_overlay(&mnt, &below, &merged);
    crate::dirs::unmount(&merged);
    crate::dirs::unmount(&mnt);
    checked
}

/// The probe layer: a file, a whiteout of `gone`, an opaque `opq` holding
/// `new`, and `kept` (a directory merged with the one below).
fn probe_layer() -> io::Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    let entry = |b: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8], dir: bool| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(if dir {
            tar::EntryType::Directory
        } else {
            tar::EntryType::Regular
        });
        h.set_size(data.len() as u64);
        h.set_mode(if dir { 0o755 } else { 0o644 });
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        b.append_data(&mut h, path, data)
    };
    entry(&mut b, "probe", b"probe", false)?;
    entry(&mut b, ".wh.gone", b"", false)?;
    entry(&mut b, "opq", b"", true)?;
    entry(&mut b, "opq/.wh..wh..opq", b"", false)?;
    entry(&mut b, "opq/new", b"new", false)?;
    entry(&mut b, "kept", b"", true)?;
    b.into_inner()
}

/// Mounts a read-only overlay of `mnt` over `below` on `merged` and checks
/// what a container would see.
fn check_through_overlay(mnt: &Path, below: &Path, merged: &Path) -> Result<(), LayerError> {
    let unsupported = |what: String| LayerError::Unsupported(what);
    match fs::read(mnt.join("probe")) {
        Ok(data) if data == b"probe" => {}
        Ok(_) => return Err(unsupported("the probe file read back wrong".into())),
        Err(e) => return Err(unsupported(format!("reading the probe file: {e}"))),
    }
    let opts = format!("lowerdir={}:{}", mnt.display(), below.display());
    let data = CString::new(opts).map_err(|e| unsupported(format!("overlay options: {e}")))?;
    rustix::mount::mount(
        "overlay",
        merged,
        "overlay",
        MountFlags::RDONLY,
        data.as_c_str(),
    )
    .map_err(|e| unsupported(format!("an overlay over the probe index: {e}")))?;
    let seen = |p: &str| merged.join(p).symlink_metadata().is_ok();
    let wrong = [
        (
            !seen("gone"),
            "a whiteout in the index does not hide the file below",
        ),
        (
            !seen("opq/old"),
            "an opaque directory in the index does not hide the directory below",
        ),
        (seen("opq/new"), "a file in an opaque directory is missing"),
        (
            seen("kept/file"),
            "a directory is not merged with the one below",
        ),
        (
            fs::read(merged.join("probe")).is_ok_and(|d| d == b"probe"),
            "the probe file reads back wrong through overlay",
        ),
    ];
    match wrong.iter().find(|(ok, _)| !ok) {
        Some((_, what)) => Err(unsupported((*what).to_string())),
        None => Ok(()),
    }
}

/// A fault hook for tests: a kernel that can no longer mount EROFS,
/// simulated for the mounts under one directory (tests run in parallel).
#[cfg(test)]
pub(crate) mod fault {
    use std::path::{Path, PathBuf};
    use std::sync::Mutex;

    static FAILING: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

    /// Every mount under `dir` fails (ENODEV, as without the file system)
    /// until the guard drops.
    pub(crate) fn fail_under(dir: &Path) -> Guard {
        FAILING.lock().unwrap().push(dir.to_owned());
        Guard(dir.to_owned())
    }

    pub(crate) struct Guard(PathBuf);

    impl Drop for Guard {
        fn drop(&mut self) {
            FAILING.lock().unwrap().retain(|d| *d != self.0);
        }
    }

    pub(super) fn check(target: &Path) -> Option<std::io::Error> {
        let failing = FAILING.lock().unwrap();
        failing
            .iter()
            .any(|d| target.starts_with(d))
            .then(|| std::io::Error::from_raw_os_error(libc::ENODEV))
    }
}

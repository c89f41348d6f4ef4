//! Mounting an index: mount(2) straight, never util-linux `mount` (which
//! sets up a loop device for a file and then refuses `device=`). The image
//! file is the source of a file-backed EROFS mount (Linux 6.12+), the tar it
//! points into its one extra device, read-only.

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::mount::MountFlags;

use crate::catalog::{Compression, FileKey};
use crate::digest::Digest;

use super::index::{self, Backing, MAGIC};
use super::record::{BackingRecord, COPY, IMAGE, RECORD};
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
/// with `backing` (an absolute path) as its extra device.
pub fn mount(image: &Path, backing: &Path, target: &Path) -> Result<(), MountError> {
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
    rustix::mount::mount(image, target, "erofs", MountFlags::RDONLY, data.as_c_str()).map_err(|e| {
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

/// Mounts the index of every mounted-layer directory in `snapshots` whose
/// `fs` is not mounted (after a restart), if its archive is still the file
/// indexed; logs the ones that cannot be.
pub(crate) fn remount_all(snapshots: &Path) {
    let Ok(entries) = fs::read_dir(snapshots) else {
        return;
    };
    for entry in entries.flatten() {
        let dir = entry.path();
        let record_path = dir.join(RECORD);
        if !record_path.exists() {
            continue;
        }
        let fs_dir = dir.join("fs");
        if is_mounted(&fs_dir) {
            continue;
        }
        if let Err(err) = remount(&dir, &record_path, &fs_dir) {
            tracing::error!(
                snapshot = %dir.display(),
                error = %err,
                "cannot mount a layer from its archive again: containers using it will fail until it is removed and pulled again"
            );
        }
    }
}

fn remount(dir: &Path, record_path: &Path, fs_dir: &Path) -> Result<(), LayerError> {
    let record = BackingRecord::read(record_path)?;
    // A relative path names a decompressed copy inside the snapshot.
    let backing = dir.join(&record.archive);
    let file = fs::File::open(&backing).map_err(LayerError::io("open", &backing))?;
    let key = file
        .metadata()
        .map(|m| FileKey::of(&m))
        .map_err(LayerError::io("stat", &backing))?;
    if !record.matches(&key) {
        return Err(LayerError::Changed);
    }
    mount(&dir.join(IMAGE), &fd_path(&file), fs_dir)?;
    tracing::info!(snapshot = %dir.display(), archive = %record.archive.display(), "layer mounted from archive again");
    Ok(())
}

/// Builds a tiny index and mounts it: EROFS, file-backed mounts, chunked
/// files and a device table, all at once.
pub(crate) fn probe(scratch: &Path) -> Result<(), LayerError> {
    let unsupported =
        |what: &str, e: &dyn std::fmt::Display| LayerError::Unsupported(format!("{what}: {e}"));
    let dir = tempfile::Builder::new()
        .prefix("erofs-probe-")
        .tempdir_in(scratch)
        .map_err(LayerError::io("create a directory in", scratch))?;
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(5);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    b.append_data(&mut h, "probe", &b"probe"[..])
        .map_err(|e| unsupported("building the probe layer", &e))?;
    let tar = b
        .into_inner()
        .map_err(|e| unsupported("building the probe layer", &e))?;
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
    let mnt = dir.path().join("fs");
    fs::create_dir(&mnt).map_err(LayerError::io("create", &mnt))?;
    let file = fs::File::open(&backing).map_err(LayerError::io("open", &backing))?;
    mount(&image, &fd_path(&file), &mnt).map_err(|e| unsupported("mounting", &e))?;
    let read = fs::read(mnt.join("probe"));
    crate::dirs::unmount(&mnt);
    match read {
        Ok(data) if data == b"probe" => Ok(()),
        Ok(_) => Err(LayerError::Unsupported(
            "the probe file read back wrong".into(),
        )),
        Err(e) => Err(unsupported("reading the probe file", &e)),
    }
}

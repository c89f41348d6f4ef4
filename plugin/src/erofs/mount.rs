//! Mounting an index: mount(2) straight, never util-linux `mount` (which
//! sets up a loop device for a file and then refuses `device=`). The image
//! file is the source of a file-backed EROFS mount (Linux 6.12+), the tar it
//! points into its one extra device, read-only.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use rustix::mount::{MountFlags, UnmountFlags};

use super::format::MAGIC;

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
    #[error("unmounting {}: {source}", target.display())]
    Unmount {
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

/// Unmounts `target`. A mount still in use (an overlay over it, a container
/// running) is detached instead: the kernel drops it when the last user goes.
pub fn unmount(target: &Path) -> Result<(), MountError> {
    let err = |source: rustix::io::Errno| MountError::Unmount {
        target: target.to_owned(),
        source: source.into(),
    };
    match rustix::mount::unmount(target, UnmountFlags::NOFOLLOW) {
        Ok(()) => Ok(()),
        Err(rustix::io::Errno::BUSY) => {
            tracing::warn!(target = %target.display(), "EROFS mount busy: detached");
            rustix::mount::unmount(target, UnmountFlags::NOFOLLOW | UnmountFlags::DETACH)
                .map_err(err)
        }
        Err(e) => Err(err(e)),
    }
}

/// Whether an EROFS file system is mounted on `target` (the file system
/// holding the directory itself is never EROFS here).
pub fn is_mounted(target: &Path) -> bool {
    rustix::fs::statfs(target).is_ok_and(|s| s.f_type as u64 == u64::from(MAGIC))
}

//! The daemon's own directories: created with an exact mode, made durable,
//! and removed, with whatever the daemon mounted under them unmounted first.
//! A leaf module: the snapshotter and the layer store both build on it.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rustix::mount::UnmountFlags;

/// A directory operation that failed, with what was being done and where.
#[derive(Debug, thiserror::Error)]
#[error("{what} {}: {source}", path.display())]
pub struct DirError {
    pub what: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

impl DirError {
    fn new(what: &'static str, path: &Path, source: io::Error) -> Self {
        DirError {
            what,
            path: path.to_owned(),
            source,
        }
    }
}

/// Creates `path` (its parent must exist) with exactly `mode`, whatever the
/// umask; an existing directory gets the mode too.
pub fn mkdir(path: &Path, mode: u32) -> Result<(), DirError> {
    match fs::DirBuilder::new().mode(mode).create(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && path.is_dir() => {}
        Err(e) => return Err(DirError::new("create directory", path, e)),
    }
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(|e| DirError::new("set mode of", path, e))
}

/// Makes a directory's entries durable (after creating or renaming in it),
/// so that a record committed afterwards never outlives them in a crash.
pub fn sync_dir(path: &Path) -> Result<(), DirError> {
    fs::File::open(path)
        .and_then(|d| d.sync_all())
        .map_err(|e| DirError::new("sync directory", path, e))
}

/// Deletes everything inside `dir` (not `dir` itself), logging failures.
pub fn empty_dir(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        remove_all(&entry.path());
    }
}

/// `rm -rf`, logging instead of failing: used only once nothing refers to
/// the path any more. Every mount at or below `path` is unmounted first:
/// the one the daemon knows it makes (`<path>/fs`, a layer mounted from an
/// archive) directly, whatever `path`'s spelling, then any other found in
/// mountinfo.
pub fn remove_all(path: &Path) {
    let fs_dir = path.join("fs");
    if is_mount_point(&fs_dir) {
        unmount(&fs_dir);
    }
    unmount_under(path);
    let result = match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    };
    if let Err(err) = result {
        tracing::warn!(path = %path.display(), error = %err, "failed to remove directory");
    }
}

/// Whether `path` is a directory on another file system than its parent
/// (a mount point; a bind mount of the same file system is not seen, which
/// the mountinfo sweep covers).
fn is_mount_point(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let (Ok(m), Some(Ok(parent))) = (
        fs::symlink_metadata(path),
        path.parent().map(fs::symlink_metadata),
    ) else {
        return false;
    };
    m.is_dir() && m.dev() != parent.dev()
}

/// Unmounts every mount at or below `path` (deepest first), so the
/// directory can be deleted. mountinfo spells mount points canonically:
/// `path` is resolved first (the daemon also canonicalizes its root at
/// start). A mount still in use is detached: the kernel drops it with its
/// last user.
pub fn unmount_under(path: &Path) {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let resolved = fs::canonicalize(path);
    let path = resolved.as_deref().unwrap_or(path);
    let mut points: Vec<PathBuf> = info
        .lines()
        // "<id> <parent> <dev> <root> <mount point> <opts> ..."
        .filter_map(|line| line.split(' ').nth(4))
        .map(|point| PathBuf::from(unescape(point)))
        .filter(|p| p.starts_with(path))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    points.dedup();
    for p in points {
        unmount(&p);
    }
}

/// Unmounts `target`, detaching it when busy; logs a failure.
pub fn unmount(target: &Path) {
    let result = match rustix::mount::unmount(target, UnmountFlags::NOFOLLOW) {
        Err(rustix::io::Errno::BUSY) => {
            tracing::warn!(target = %target.display(), "mount busy: detached");
            rustix::mount::unmount(target, UnmountFlags::NOFOLLOW | UnmountFlags::DETACH)
        }
        other => other,
    };
    match result {
        Ok(()) | Err(rustix::io::Errno::INVAL) | Err(rustix::io::Errno::NOENT) => {}
        Err(e) => {
            tracing::warn!(target = %target.display(), error = %e, "unmounting failed")
        }
    }
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> std::ffi::OsString {
    use std::os::unix::ffi::OsStringExt;
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    std::ffi::OsString::from_vec(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unescape_mountinfo() {
        assert_eq!(unescape(r"/a\040b\134c"), "/a b\\c");
        assert_eq!(unescape(r"/plain"), "/plain");
        assert_eq!(unescape(r"/short\04"), r"/short\04");
    }

    /// A path spelled through a symlink: the mount under it is unmounted
    /// and the directory removed all the same.
    #[test]
    fn remove_all_unmounts_through_a_symlinked_path() {
        crate::testsupport::requires_root!();
        let tmp = tempfile::tempdir().unwrap();
        let real = tmp.path().join("real");
        for sub in ["a/fs", "b/deep/mnt"] {
            fs::create_dir_all(real.join(sub)).unwrap();
        }
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        for sub in ["a/fs", "b/deep/mnt"] {
            rustix::mount::mount(
                "tmpfs",
                real.join(sub),
                "tmpfs",
                rustix::mount::MountFlags::empty(),
                c"size=1m",
            )
            .unwrap();
        }
        remove_all(&link.join("a"));
        remove_all(&link.join("b"));
        let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
        let left: Vec<&str> = info
            .lines()
            .filter(|l| l.contains(&*real.to_string_lossy()))
            .collect();
        // Whatever failed, nothing stays mounted under the temp dir.
        unmount_under(&real);
        assert!(left.is_empty(), "{left:?}");
        assert!(!real.join("a").exists() && !real.join("b").exists());
    }

    #[test]
    fn mkdir_sets_mode_despite_existing() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().join("d");
        mkdir(&d, 0o700).unwrap();
        mkdir(&d, 0o750).unwrap();
        assert_eq!(
            fs::metadata(&d).unwrap().permissions().mode() & 0o777,
            0o750
        );
        let err = mkdir(&tmp.path().join("x/y"), 0o700).unwrap_err();
        assert!(err.to_string().contains("x/y"), "{err}");
    }
}

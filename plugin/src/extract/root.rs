//! The destination directory, and every file system operation extraction does
//! in it.
//!
//! Nothing here takes a path relative to the process: every operation is an
//! `*at` call on a directory fd that was resolved inside the root with
//! `openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)`, and acts on a single
//! final component without following it. The kernel refuses any resolution
//! that would leave the root (through `..` or a symlink, absolute or relative),
//! so no archive can make extraction touch anything outside it.
//!
//! `RESOLVE_BENEATH` rather than `RESOLVE_IN_ROOT`: a parent component that is
//! a symlink pointing out of the layer (`a -> /etc`, then `a/passwd`) is an
//! error, not a silent redirection into the root. containerd's own differ
//! would follow such a link inside the root; a layer that does this falls back
//! to it.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::fs::{
    self as rfs, AtFlags, FileType, Mode, OFlags, ResolveFlags, Timespec, Timestamps, XattrFlags,
};
use rustix::io::Errno;

use super::tar::Time;

/// A failed file system operation, before the entry path is attached.
#[derive(Debug)]
pub(super) enum FsError {
    /// A syscall failed: what was being done, and the error.
    Io(&'static str, io::Error),
    /// Resolution would have left the root.
    Escape(&'static str),
}

impl FsError {
    fn io(op: &'static str, e: Errno) -> Self {
        FsError::Io(op, e.into())
    }
}

pub(super) type FsResult<T> = Result<T, FsError>;

const RESOLVE: ResolveFlags = ResolveFlags::BENEATH.union(ResolveFlags::NO_MAGICLINKS);

/// An open destination root with a one-entry cache of the last parent
/// directory used (tar streams list a directory's entries together).
pub(super) struct Root {
    root: Rc<OwnedFd>,
    /// Normalized path of the cached directory and its `O_PATH` fd.
    cache: Option<(Vec<u8>, Rc<OwnedFd>)>,
}

impl Root {
    pub fn open(dest: &Path) -> io::Result<Root> {
        let fd = rfs::open(
            dest,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(Root {
            root: Rc::new(fd),
            cache: None,
        })
    }

    /// The directory `dir` (a normalized relative path, empty for the root),
    /// resolved inside the root. With `create`, missing directories are made
    /// (mode 0755, owned by the extracting user), as tar does for entries
    /// listed before their parents.
    pub fn dir(&mut self, dir: &[u8], create: bool) -> FsResult<Rc<OwnedFd>> {
        if dir.is_empty() {
            return Ok(self.root.clone());
        }
        if let Some((p, fd)) = &self.cache {
            if p == dir {
                return Ok(fd.clone());
            }
        }
        let fd = Rc::new(self.resolve_dir(dir, create)?);
        self.cache = Some((dir.to_vec(), fd.clone()));
        Ok(fd)
    }

    /// Makes `fd` (a directory just created or opened at `dir`) the cached one.
    pub fn set_cached(&mut self, dir: &[u8], fd: Rc<OwnedFd>) {
        self.cache = Some((dir.to_vec(), fd));
    }

    /// Forgets the cached directory if `removed` is it or one of its ancestors.
    fn invalidate(&mut self, parent: &[u8], name: &[u8]) {
        if let Some((p, _)) = &self.cache {
            let mut removed = parent.to_vec();
            if !removed.is_empty() {
                removed.push(b'/');
            }
            removed.extend_from_slice(name);
            if p == &removed || (p.starts_with(&removed) && p.get(removed.len()) == Some(&b'/')) {
                self.cache = None;
            }
        }
    }

    fn resolve_dir(&self, dir: &[u8], create: bool) -> FsResult<OwnedFd> {
        let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
        match openat2(&self.root, dir, flags) {
            Ok(fd) => return Ok(fd),
            Err(Errno::NOENT) if create => {}
            Err(e) => return Err(resolve_error(e)),
        }
        // Walk down from the root, making each missing component.
        let mut parent: Option<OwnedFd> = None;
        let mut end = 0;
        while end < dir.len() {
            let start = end;
            end = dir[start..]
                .iter()
                .position(|&b| b == b'/')
                .map_or(dir.len(), |i| start + i);
            let prefix = &dir[..end];
            let name = &dir[start..end];
            let fd = match openat2(&self.root, prefix, flags) {
                Ok(fd) => fd,
                Err(Errno::NOENT) => {
                    let at = match &parent {
                        Some(fd) => fd.as_fd(),
                        None => self.root.as_fd(),
                    };
                    match rfs::mkdirat(at, name, Mode::from_raw_mode(0o755)) {
                        Ok(()) | Err(Errno::EXIST) => {}
                        Err(e) => return Err(FsError::io("creating a parent directory", e)),
                    }
                    openat2(&self.root, prefix, flags).map_err(resolve_error)?
                }
                Err(e) => return Err(resolve_error(e)),
            };
            parent = Some(fd);
            end += 1;
        }
        parent.ok_or(FsError::Io(
            "resolving a directory",
            io::Error::from(io::ErrorKind::NotFound),
        ))
    }

    /// Makes room for a new `name` in `parent`: removes what is there without
    /// following it. A directory goes with everything in it, as containerd's
    /// applier does (`os.RemoveAll` of whatever is at the path of an entry
    /// that is not a directory merging into a directory, `pkg/archive/tar.go`),
    /// except for whiteouts (`recursive` false), where containerd's `mknod`
    /// fails on anything there and this removes only an empty directory.
    fn remove_existing(
        &mut self,
        parent: BorrowedFd<'_>,
        dir: &[u8],
        name: &[u8],
        recursive: bool,
    ) -> FsResult<()> {
        let st = rfs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| FsError::io("inspecting the entry being replaced", e))?;
        let is_dir = FileType::from_raw_mode(st.st_mode) == FileType::Directory;
        let removed = if is_dir && recursive {
            remove_tree(parent, name)
        } else {
            let flags = if is_dir {
                AtFlags::REMOVEDIR
            } else {
                AtFlags::empty()
            };
            rfs::unlinkat(parent, name, flags)
        };
        removed.map_err(|e| {
            FsError::io(
                if e == Errno::NOTEMPTY {
                    "replacing a non-empty directory with a whiteout"
                } else {
                    "removing the entry being replaced"
                },
                e,
            )
        })?;
        self.invalidate(dir, name);
        Ok(())
    }

    /// Creates a regular file for writing; replaces what is there.
    pub fn create_file(&mut self, parent: &OwnedFd, dir: &[u8], name: &[u8]) -> FsResult<OwnedFd> {
        let flags =
            OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let mode = Mode::from_raw_mode(0o600);
        match rfs::openat(parent, name, flags, mode) {
            Err(Errno::EXIST) => {
                self.remove_existing(parent.as_fd(), dir, name, true)?;
                rfs::openat(parent, name, flags, mode)
            }
            r => r,
        }
        .map_err(|e| FsError::io("creating the file", e))
    }

    /// Creates (or keeps, if one is there) the directory `name` and opens it.
    pub fn create_dir(&mut self, parent: &OwnedFd, dir: &[u8], name: &[u8]) -> FsResult<OwnedFd> {
        let mode = Mode::from_raw_mode(0o700);
        match rfs::mkdirat(parent, name, mode) {
            Ok(()) => {}
            Err(Errno::EXIST) => {
                let st = rfs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(|e| FsError::io("inspecting the existing entry", e))?;
                if FileType::from_raw_mode(st.st_mode) != FileType::Directory {
                    self.remove_existing(parent.as_fd(), dir, name, true)?;
                    rfs::mkdirat(parent, name, mode)
                        .map_err(|e| FsError::io("creating the directory", e))?;
                }
            }
            Err(e) => return Err(FsError::io("creating the directory", e)),
        }
        rfs::openat(
            parent,
            name,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| FsError::io("opening the new directory", e))
    }

    pub fn symlink(
        &mut self,
        parent: &OwnedFd,
        dir: &[u8],
        name: &[u8],
        target: &[u8],
    ) -> FsResult<()> {
        match rfs::symlinkat(target, parent, name) {
            Err(Errno::EXIST) => {
                self.remove_existing(parent.as_fd(), dir, name, true)?;
                rfs::symlinkat(target, parent, name)
            }
            r => r,
        }
        .map_err(|e| FsError::io("creating the symlink", e))
    }

    /// Creates a device node or fifo (`FileType::CharacterDevice`, ...);
    /// `whiteout`: an overlayfs whiteout, which replaces no non-empty
    /// directory.
    #[allow(clippy::too_many_arguments)]
    pub fn mknod(
        &mut self,
        parent: &OwnedFd,
        dir: &[u8],
        name: &[u8],
        kind: FileType,
        mode: u32,
        dev: rfs::Dev,
        whiteout: bool,
    ) -> FsResult<()> {
        let perm = Mode::from_raw_mode(mode & 0o777);
        match rfs::mknodat(parent, name, kind, perm, dev) {
            Err(Errno::EXIST) => {
                self.remove_existing(parent.as_fd(), dir, name, !whiteout)?;
                rfs::mknodat(parent, name, kind, perm, dev)
            }
            r => r,
        }
        .map_err(|e| FsError::io("creating the node", e))
    }

    /// Hard link `name` in `parent` to `target_name` in `target_parent`; the
    /// target is not followed if it is a symlink.
    pub fn hardlink(
        &mut self,
        target_parent: &OwnedFd,
        target_name: &[u8],
        parent: &OwnedFd,
        dir: &[u8],
        name: &[u8],
    ) -> FsResult<()> {
        match rfs::linkat(target_parent, target_name, parent, name, AtFlags::empty()) {
            Err(Errno::EXIST) => {
                self.remove_existing(parent.as_fd(), dir, name, true)?;
                rfs::linkat(target_parent, target_name, parent, name, AtFlags::empty())
            }
            r => r,
        }
        .map_err(|e| FsError::io("creating the hard link", e))
    }
}

/// `rm -rf` of the directory `name` in `parent`, never following a symlink:
/// every directory is opened `O_NOFOLLOW` relative to its parent's fd and
/// every entry unlinked relative to its directory's, so nothing outside the
/// tree can be reached. Iterative (a hostile layer may nest deeply); holds
/// one fd per level.
fn remove_tree(parent: BorrowedFd<'_>, name: &[u8]) -> Result<(), Errno> {
    fn open_dir(at: BorrowedFd<'_>, name: &[u8]) -> Result<OwnedFd, Errno> {
        rfs::openat(
            at,
            name,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
    }
    /// The entries of a directory, each with whether it is a directory.
    fn entries(fd: &OwnedFd) -> Result<Vec<(Vec<u8>, bool)>, Errno> {
        let mut out = Vec::new();
        let mut dir = rfs::Dir::read_from(fd)?;
        while let Some(entry) = dir.read() {
            let entry = entry?;
            let name = entry.file_name().to_bytes();
            if name == b"." || name == b".." {
                continue;
            }
            let is_dir = match entry.file_type() {
                FileType::Directory => true,
                FileType::Unknown => rfs::statat(fd, name, AtFlags::SYMLINK_NOFOLLOW)
                    .is_ok_and(|st| FileType::from_raw_mode(st.st_mode) == FileType::Directory),
                _ => false,
            };
            out.push((name.to_vec(), is_dir));
        }
        Ok(out)
    }
    let top = open_dir(parent, name)?;
    let listed = entries(&top)?;
    // (directory fd, its name in the level above, entries left to remove)
    let mut stack = vec![(top, name.to_vec(), listed)];
    while let Some((fd, _, left)) = stack.last_mut() {
        match left.pop() {
            Some((child, true)) => {
                let child_fd = open_dir(fd.as_fd(), &child)?;
                let listed = entries(&child_fd)?;
                stack.push((child_fd, child, listed));
            }
            Some((child, false)) => rfs::unlinkat(&*fd, child.as_slice(), AtFlags::empty())?,
            None => {
                let (done, done_name, _) = stack.pop().expect("a level");
                drop(done);
                let at = stack.last().map_or(parent, |(fd, _, _)| fd.as_fd());
                rfs::unlinkat(at, done_name.as_slice(), AtFlags::REMOVEDIR)?;
            }
        }
    }
    Ok(())
}

/// Set once `openat2` answered `ENOSYS`: kernels before 5.6, and older
/// qemu-user such as Debian 12's 7.2 (where the arm64 build is tested).
static NO_OPENAT2: AtomicBool = AtomicBool::new(false);

/// `openat2` confined to the root. The kernel answers `EAGAIN` when a rename
/// anywhere on the system raced with a `..` step of the resolution: retried.
/// Without `openat2`, [`walk_beneath`].
fn openat2(root: &OwnedFd, path: &[u8], flags: OFlags) -> Result<OwnedFd, Errno> {
    if !NO_OPENAT2.load(Ordering::Relaxed) {
        let mut tries = 0;
        loop {
            match rfs::openat2(root, path, flags, Mode::empty(), RESOLVE) {
                Err(Errno::AGAIN) if tries < 64 => tries += 1,
                Err(Errno::NOSYS) => {
                    NO_OPENAT2.store(true, Ordering::Relaxed);
                    break;
                }
                r => return r,
            }
        }
    }
    walk_beneath(root, path, flags)
}

/// What `openat2(RESOLVE_BENEATH)` does, one component at a time with
/// `O_NOFOLLOW`, and stricter: any symlink among the components and any `..`
/// is refused (`EXDEV`, an escape), where `openat2` would follow what stays
/// inside the root. A layer that needs that falls back to containerd's
/// differ on such systems.
fn walk_beneath(root: &OwnedFd, path: &[u8], flags: OFlags) -> Result<OwnedFd, Errno> {
    let components: Vec<&[u8]> = path
        .split(|&b| b == b'/')
        .filter(|c| !c.is_empty() && *c != b".")
        .collect();
    if components.is_empty() {
        return rfs::openat(root, c".", flags | OFlags::NOFOLLOW, Mode::empty());
    }
    let mut dir: Option<OwnedFd> = None;
    for (i, name) in components.iter().enumerate() {
        if *name == b".." {
            return Err(Errno::XDEV);
        }
        let last = i + 1 == components.len();
        let at = dir.as_ref().map_or(root.as_fd(), |fd| fd.as_fd());
        let step_flags = if last {
            flags | OFlags::NOFOLLOW
        } else {
            OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC
        };
        let fd = match rfs::openat(at, *name, step_flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(e) => {
                let symlink = rfs::statat(at, *name, AtFlags::SYMLINK_NOFOLLOW)
                    .is_ok_and(|st| FileType::from_raw_mode(st.st_mode) == FileType::Symlink);
                return Err(if symlink { Errno::XDEV } else { e });
            }
        };
        // `O_PATH | O_NOFOLLOW` opens a symlink itself when O_DIRECTORY is
        // not asked for: refuse it too.
        if last && !flags.contains(OFlags::DIRECTORY) {
            let st = rfs::fstat(&fd)?;
            if FileType::from_raw_mode(st.st_mode) == FileType::Symlink {
                return Err(Errno::XDEV);
            }
        }
        dir = Some(fd);
    }
    dir.ok_or(Errno::NOENT)
}

pub(super) fn resolve_error(e: Errno) -> FsError {
    match e {
        Errno::XDEV => FsError::Escape("a path component leads outside the layer root"),
        Errno::LOOP => FsError::io("resolving the path (symlink loop)", e),
        Errno::NOTDIR => FsError::io("resolving the path (a parent is not a directory)", e),
        _ => FsError::io("resolving the path", e),
    }
}

pub(super) fn timestamps(mtime: Time, atime: Option<Time>) -> Timestamps {
    let ts = |t: Time| Timespec {
        tv_sec: t.sec,
        tv_nsec: i64::from(t.nsec.min(999_999_999)),
    };
    Timestamps {
        last_access: ts(atime.unwrap_or(mtime)),
        last_modification: ts(mtime),
    }
}

pub(super) fn uid(id: u32) -> rfs::Uid {
    rfs::Uid::from_raw_unchecked(id)
}

pub(super) fn gid(id: u32) -> rfs::Gid {
    rfs::Gid::from_raw_unchecked(id)
}

/// Sets one xattr on a file that can only be reached by an `O_PATH` fd
/// (symlinks, device nodes, fifos): through its `/proc/self/fd` magic link,
/// which resolves to exactly that inode.
pub(super) fn set_xattr_opath(fd: BorrowedFd<'_>, name: &CStr, value: &[u8]) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let path = format!("/proc/self/fd/{}", fd.as_raw_fd());
    rfs::setxattr(path.as_str(), name, value, XattrFlags::empty()).map_err(Into::into)
}

/// Opens `name` in `parent` as `O_PATH`, never following it.
pub(super) fn open_path(parent: &OwnedFd, name: &[u8]) -> io::Result<OwnedFd> {
    rfs::openat(
        parent,
        name,
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(Into::into)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The walk used without `openat2` (kernels before 5.6, old qemu-user)
    /// resolves plain directories and refuses every symlink and `..`.
    #[test]
    fn walk_beneath_refuses_symlinks_and_dotdot() {
        let tmp = tempfile::tempdir().unwrap();
        let dest = tmp.path().join("root");
        std::fs::create_dir_all(dest.join("a/b")).unwrap();
        std::fs::write(dest.join("a/file"), b"x").unwrap();
        std::os::unix::fs::symlink("/etc", dest.join("out")).unwrap();
        std::os::unix::fs::symlink("a", dest.join("in")).unwrap();
        let root = rfs::open(&dest, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty()).unwrap();
        let dir = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;

        for ok in [&b"a"[..], b"a/b", b"./a//b/"] {
            assert!(walk_beneath(&root, ok, dir).is_ok(), "{ok:?}");
        }
        assert!(walk_beneath(&root, b"a/file", OFlags::PATH).is_ok());
        for (path, flags) in [
            (&b"out"[..], dir),
            (b"out/passwd", OFlags::PATH),
            (b"in/b", dir),
            (b"in", OFlags::PATH),
            (b"a/../a", dir),
            (b"..", dir),
        ] {
            assert_eq!(
                walk_beneath(&root, path, flags).err(),
                Some(Errno::XDEV),
                "{path:?}"
            );
        }
        assert_eq!(
            walk_beneath(&root, b"a/none", dir).err(),
            Some(Errno::NOENT)
        );
        assert_eq!(
            walk_beneath(&root, b"a/file/x", dir).err(),
            Some(Errno::NOTDIR)
        );
    }
}

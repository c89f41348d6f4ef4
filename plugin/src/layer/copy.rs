//! A private copy of a layer lying in an uncompressed archive, so that a
//! mounted layer never reads the operator's file (which `cp new.tar
//! old.tar` truncates and rewrites in place).
//!
//! Where the filesystem shares blocks between files (xfs with reflinks,
//! btrfs), the layer's range is cloned (`FICLONE_RANGE`): no data moves and
//! no disk is used until the archive is rewritten or deleted, when the
//! clone keeps the old blocks. Elsewhere (ext4, tmpfs, another filesystem
//! than the daemon root's) its bytes are copied (`copy_file_range`).

use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};

/// How the private copy was made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Made {
    /// Blocks shared with the archive (`FICLONE_RANGE`).
    Reflink,
    /// Bytes copied.
    Copy,
}

/// A private copy of a range of an archive: the layer starts at
/// `data_base` in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Private {
    pub(crate) made: Made,
    pub(crate) data_base: u64,
}

/// Copies `len` bytes of `src` from `off` into `dst` (empty, opened for
/// writing): cloned where the filesystem can, else, when `allow_copy`,
/// copied. `None`: no clone is possible here and copies were not allowed.
/// A clone covers the filesystem blocks enclosing the range (a tar's 512
/// byte alignment is not the filesystem's), so the layer starts at
/// `data_base` in `dst`; a copy holds the layer's bytes only.
pub(crate) fn private_copy(
    src: &File,
    off: u64,
    len: u64,
    dst: &File,
    allow_copy: bool,
) -> io::Result<Option<Private>> {
    if let Some(data_base) = clone_range(src, off, len, dst)? {
        return Ok(Some(Private {
            made: Made::Reflink,
            data_base,
        }));
    }
    if !allow_copy {
        return Ok(None);
    }
    copy_range(src, off, len, dst)?;
    Ok(Some(Private {
        made: Made::Copy,
        data_base: 0,
    }))
}

/// `struct file_clone_range` of `<linux/fs.h>` (neither libc nor rustix
/// has `FICLONERANGE`).
#[repr(C)]
struct FileCloneRange {
    src_fd: i64,
    src_offset: u64,
    src_length: u64,
    dest_offset: u64,
}

/// `FICLONERANGE = _IOW(0x94, 13, struct file_clone_range)`.
const FICLONERANGE: rustix::ioctl::Opcode =
    rustix::ioctl::opcode::write::<FileCloneRange>(0x94, 13);

/// Clones the filesystem blocks of `src` enclosing `[off, off+len)` to the
/// start of `dst`; returns where `off` lands in `dst`. `None`: this
/// filesystem (or this pair of filesystems) cannot clone.
pub(crate) fn clone_range(src: &File, off: u64, len: u64, dst: &File) -> io::Result<Option<u64>> {
    use std::os::fd::AsRawFd;
    let meta = src.metadata()?;
    // The clone unit: offsets and length must be multiples of the
    // filesystem block, except a length that ends at the source's end.
    let block = meta.blksize().max(512);
    let start = off - off % block;
    let end = (off + len).div_ceil(block) * block;
    let end = end.min(meta.size());
    if off + len > end {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the archive ends inside the layer",
        ));
    }
    let arg = FileCloneRange {
        src_fd: i64::from(src.as_raw_fd()),
        src_offset: start,
        src_length: end - start,
        dest_offset: 0,
    };
    // SAFETY: FICLONERANGE takes a pointer to a `struct file_clone_range`,
    // which `FileCloneRange` lays out (repr(C), four 64-bit fields), and
    // reads it only during the call.
    let ctl = unsafe { rustix::ioctl::Setter::<FICLONERANGE, FileCloneRange>::new(arg) };
    // SAFETY: as above; `dst` is an open file.
    match unsafe { rustix::ioctl::ioctl(dst, ctl) } {
        Ok(()) => {
            // The copy ends where the layer does (its last block, shared
            // up to there, is copied on truncation): a copy's content is
            // then exactly `data_base` bytes of padding and the layer.
            dst.set_len(off - start + len)?;
            Ok(Some(off - start))
        }
        // Another filesystem; one without reflinks (ext4, tmpfs: EOPNOTSUPP
        // or EINVAL, also for a block size the filesystem does not take);
        // a kernel without the ioctl.
        Err(e)
            if [
                rustix::io::Errno::XDEV,
                rustix::io::Errno::OPNOTSUPP,
                rustix::io::Errno::INVAL,
                rustix::io::Errno::NOTTY,
                rustix::io::Errno::NOSYS,
            ]
            .contains(&e) =>
        {
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

/// Copies `len` bytes of `src` from `off` to the start of `dst`: in the
/// kernel (`copy_file_range`), or through a buffer where it refuses.
pub(crate) fn copy_range(src: &File, off: u64, len: u64, dst: &File) -> io::Result<()> {
    let mut done = 0u64;
    while done < len {
        let mut src_off = off + done;
        let mut dst_off = done;
        let want = usize::try_from(len - done)
            .unwrap_or(usize::MAX)
            .min(1 << 30);
        match rustix::fs::copy_file_range(src, Some(&mut src_off), dst, Some(&mut dst_off), want) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the archive ends inside the layer",
                ))
            }
            Ok(n) => done += n as u64,
            Err(rustix::io::Errno::INTR) => {}
            // Filesystems and kernels that refuse it (cross-device before
            // 5.19, some FUSE and network filesystems).
            Err(
                rustix::io::Errno::XDEV
                | rustix::io::Errno::OPNOTSUPP
                | rustix::io::Errno::INVAL
                | rustix::io::Errno::NOSYS,
            ) => return buffered_copy(src, off + done, len - done, dst, done),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Copies with pread/pwrite (the files are shared: no seeking).
fn buffered_copy(src: &File, off: u64, len: u64, dst: &File, dst_off: u64) -> io::Result<()> {
    let mut buf = vec![0u8; 1 << 20];
    let mut done = 0u64;
    while done < len {
        let want = buf
            .len()
            .min(usize::try_from(len - done).unwrap_or(usize::MAX));
        let n = src.read_at(&mut buf[..want], off + done)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the archive ends inside the layer",
            ));
        }
        dst.write_all_at(&buf[..n], dst_off + done)?;
        done += n as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::path::Path;
    use std::process::Command;

    /// A file of `len` bytes that differ from offset to offset.
    fn pattern(path: &Path, len: usize) -> Vec<u8> {
        let data: Vec<u8> = (0..len).map(|i| (i * 7 + i / 4096) as u8).collect();
        std::fs::File::create(path)
            .unwrap()
            .write_all(&data)
            .unwrap();
        data
    }

    fn new_file(path: &Path) -> File {
        File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)
            .unwrap()
    }

    /// A copy holds exactly the range's bytes, at 512-aligned and odd
    /// offsets, up to the end of the source and across the buffer size.
    #[test]
    fn a_copy_is_byte_identical() {
        let dir = tempfile::tempdir().unwrap();
        let data = pattern(&dir.path().join("src"), 3 << 20);
        let src = File::open(dir.path().join("src")).unwrap();
        for (i, (off, len)) in [(0, 0), (512, 10_000), (1537, 1 << 21), (1 << 20, 2 << 20)]
            .into_iter()
            .enumerate()
        {
            let dst = new_file(&dir.path().join(format!("dst{i}")));
            copy_range(&src, off, len, &dst).unwrap();
            let got = std::fs::read(dir.path().join(format!("dst{i}"))).unwrap();
            assert_eq!(
                got,
                &data[off as usize..(off + len) as usize],
                "range {off}+{len}"
            );
            // Through the buffer (what a refusing filesystem gets).
            let dst = new_file(&dir.path().join(format!("buf{i}")));
            buffered_copy(&src, off, len, &dst, 0).unwrap();
            let got = std::fs::read(dir.path().join(format!("buf{i}"))).unwrap();
            assert_eq!(got, &data[off as usize..(off + len) as usize]);
        }
        // A range past the end is an error, not a short copy.
        let dst = new_file(&dir.path().join("past"));
        let err = copy_range(&src, 3 << 20, 1, &dst).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }

    /// `private_copy` on whatever the temp dir is: cloned or copied, the
    /// layer's bytes are at `data_base`; with copies refused, a filesystem
    /// without reflinks gives `None`.
    #[test]
    fn private_copy_puts_the_layer_at_data_base() {
        let dir = tempfile::tempdir().unwrap();
        let data = pattern(&dir.path().join("src"), 100_000);
        let src = File::open(dir.path().join("src")).unwrap();
        let (off, len) = (1536, 50_000);
        let dst = new_file(&dir.path().join("dst"));
        let p = private_copy(&src, off, len, &dst, true).unwrap().unwrap();
        let got = std::fs::read(dir.path().join("dst")).unwrap();
        let base = p.data_base as usize;
        assert_eq!(
            &got[base..base + len as usize],
            &data[off as usize..][..len as usize]
        );
        let dst = new_file(&dir.path().join("dst2"));
        let only_clone = private_copy(&src, off, len, &dst, false).unwrap();
        assert_eq!(only_clone.is_some(), p.made == Made::Reflink);
    }

    /// The clone on a filesystem with reflinks: an xfs image loop-mounted
    /// (needs root and mkfs.xfs; skipped, saying why, otherwise). The
    /// clone keeps the old bytes after the source is rewritten in place.
    #[test]
    fn a_clone_on_xfs_survives_a_rewrite_in_place() {
        let Some(xfs) = LoopXfs::new() else { return };
        let dir = xfs.mnt.path();
        let data = pattern(&dir.join("src"), 300_000);
        let src = File::open(dir.join("src")).unwrap();
        // A tar-like offset (512-aligned, not block-aligned), to the end.
        let (off, len) = (4096 * 3 + 512, 300_000 - (4096 * 3 + 512));
        let dst = new_file(&dir.join("dst"));
        let p = private_copy(&src, off, len, &dst, false)
            .unwrap()
            .expect("xfs with reflink=1 clones");
        assert_eq!(p.made, Made::Reflink);
        assert_eq!(p.data_base, 512);
        // Inside the file too (length rounded up to a block).
        let dst2 = new_file(&dir.join("dst2"));
        let mid = clone_range(&src, 512, 5000, &dst2).unwrap().unwrap();
        assert_eq!(mid, 512);
        // The source truncated and rewritten, as `cp` does.
        std::fs::write(dir.join("src"), vec![0xAAu8; 200_000]).unwrap();
        let got = std::fs::read(dir.join("dst")).unwrap();
        assert_eq!(&got[512..512 + len as usize], &data[off as usize..]);
        let got = std::fs::read(dir.join("dst2")).unwrap();
        assert_eq!(&got[512..5512], &data[512..5512]);
    }

    /// A loop-mounted xfs image with reflinks, gone on drop.
    struct LoopXfs {
        _img: tempfile::TempDir,
        mnt: tempfile::TempDir,
    }

    impl LoopXfs {
        fn new() -> Option<Self> {
            if !crate::testsupport::has_root() {
                return None;
            }
            let skip = |why: &str| {
                let thread = std::thread::current();
                crate::testsupport::skip(thread.name().unwrap_or("test"), why);
            };
            let img = tempfile::tempdir().unwrap();
            let file = img.path().join("xfs.img");
            File::create(&file).unwrap().set_len(320 << 20).unwrap();
            match Command::new("mkfs.xfs")
                .args(["-q", "-m", "reflink=1"])
                .arg(&file)
                .status()
            {
                Ok(s) if s.success() => {}
                other => {
                    skip(&format!(
                        "mkfs.xfs -m reflink=1 unavailable or failed ({other:?}; Debian: xfsprogs)"
                    ));
                    return None;
                }
            }
            let mnt = tempfile::tempdir().unwrap();
            let ok = Command::new("mount")
                .args(["-o", "loop"])
                .arg(&file)
                .arg(mnt.path())
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                skip("cannot loop-mount an xfs image (no loop devices, or no xfs in the kernel)");
                return None;
            }
            Some(LoopXfs { _img: img, mnt })
        }
    }

    impl Drop for LoopXfs {
        fn drop(&mut self) {
            // mount -o loop sets autoclear: the loop device goes with it.
            let _ = Command::new("umount").arg(self.mnt.path()).status();
        }
    }
}

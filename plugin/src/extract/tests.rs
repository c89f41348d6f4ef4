//! Extraction tests. Layers are built in memory with the `tar` crate; hostile
//! entries are written into raw header fields, since the `tar` crate's
//! builder refuses to name `..` or absolute paths. These tests need root
//! (device nodes, `trusted.*` xattrs, ownership).

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use ::tar::{EntryType, Header};

use super::*;
use crate::testsupport::requires_root;

const MTIME: u64 = 1_600_000_000;

/// An in-memory layer tar.
struct Layer {
    b: ::tar::Builder<Vec<u8>>,
}

fn header(kind: EntryType, mode: u32) -> Header {
    let mut h = Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(MTIME);
    h.set_size(0);
    h
}

impl Layer {
    fn new() -> Self {
        Layer {
            b: ::tar::Builder::new(Vec::new()),
        }
    }

    fn append(&mut self, path: &str, mut h: Header, data: &[u8]) -> &mut Self {
        h.set_size(data.len() as u64);
        self.b.append_data(&mut h, path, data).unwrap();
        self
    }

    fn file(&mut self, path: &str, data: &[u8]) -> &mut Self {
        self.append(path, header(EntryType::Regular, 0o644), data)
    }

    fn dir(&mut self, path: &str) -> &mut Self {
        self.append(path, header(EntryType::Directory, 0o755), b"")
    }

    fn symlink(&mut self, path: &str, target: &str) -> &mut Self {
        self.raw(EntryType::Symlink, path.as_bytes(), target.as_bytes(), b"")
    }

    fn hardlink(&mut self, path: &str, target: &str) -> &mut Self {
        self.raw(EntryType::Link, path.as_bytes(), target.as_bytes(), b"")
    }

    /// An entry with name and link name written verbatim (up to 100 bytes each).
    fn raw(&mut self, kind: EntryType, name: &[u8], link: &[u8], data: &[u8]) -> &mut Self {
        let mut h = Header::new_ustar();
        h.set_entry_type(kind);
        h.set_mode(if kind == EntryType::Directory {
            0o755
        } else {
            0o644
        });
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(MTIME);
        h.set_size(data.len() as u64);
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        h.as_old_mut().linkname[..link.len()].copy_from_slice(link);
        h.set_cksum();
        self.b.append(&h, data).unwrap();
        self
    }

    /// An entry whose path comes from a PAX record (any length, any bytes).
    fn pax(&mut self, records: &[(&str, &[u8])], kind: EntryType, data: &[u8]) -> &mut Self {
        self.b
            .append_pax_extensions(records.iter().map(|(k, v)| (*k, *v)))
            .unwrap();
        self.raw(kind, b"placeholder", b"", data)
    }

    fn tar(&mut self) -> Vec<u8> {
        let b = std::mem::replace(&mut self.b, ::tar::Builder::new(Vec::new()));
        b.into_inner().unwrap()
    }
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn zstd(data: &[u8]) -> Vec<u8> {
    zstd::encode_all(data, 3).unwrap()
}

fn compress(data: &[u8], c: Compression) -> Vec<u8> {
    match c {
        Compression::None => data.to_vec(),
        Compression::Gzip => gzip(data),
        Compression::Zstd => zstd(data),
    }
}

/// A temp dir holding `layer/fs` (the destination) and `outside/` (what an
/// archive must never touch).
struct Fixture {
    tmp: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        fs::create_dir_all(tmp.path().join("layer/fs")).unwrap();
        fs::create_dir_all(tmp.path().join("outside/sub")).unwrap();
        fs::write(tmp.path().join("outside/secret"), b"secret").unwrap();
        Fixture { tmp }
    }

    fn dest(&self) -> PathBuf {
        self.tmp.path().join("layer/fs")
    }

    fn outside(&self) -> String {
        self.tmp.path().join("outside").to_str().unwrap().to_owned()
    }

    fn unpack(&self, tar: &[u8], c: Compression) -> Result<UnpackStats, ExtractError> {
        unpack_layer(&compress(tar, c)[..], c, &Digest::of(tar), &self.dest())
    }

    /// Everything under the temp dir except the destination: type, mode,
    /// owner, mtime, content or link target, and xattrs.
    fn host_state(&self) -> BTreeMap<PathBuf, String> {
        let mut out = BTreeMap::new();
        walk(self.tmp.path(), &self.dest(), &mut out);
        out
    }
}

fn walk(dir: &Path, skip: &Path, out: &mut BTreeMap<PathBuf, String>) {
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p == skip {
            continue;
        }
        let m = fs::symlink_metadata(&p).unwrap();
        let mut xattrs: Vec<String> = xattr::list(&p)
            .unwrap()
            .map(|n| format!("{n:?}={:?}", xattr::get(&p, &n).unwrap()))
            .collect();
        xattrs.sort();
        let content = if m.is_file() {
            format!("{:?}", fs::read(&p).unwrap())
        } else if m.file_type().is_symlink() {
            format!("{:?}", fs::read_link(&p).unwrap())
        } else {
            String::new()
        };
        out.insert(
            p.clone(),
            format!(
                "{:o} {}:{} {} {} {content} {xattrs:?}",
                m.mode(),
                m.uid(),
                m.gid(),
                m.mtime(),
                m.nlink()
            ),
        );
        if m.is_dir() {
            walk(&p, skip, out);
        }
    }
}

/// Runs a hostile layer: it must fail with an error and leave everything
/// outside the destination exactly as it was.
fn assert_hostile(build: impl FnOnce(&str, &mut Layer)) -> ExtractError {
    let fx = Fixture::new();
    let before = fx.host_state();
    let mut layer = Layer::new();
    build(&fx.outside(), &mut layer);
    let tar = layer.tar();
    let err = fx
        .unpack(&tar, Compression::None)
        .expect_err("hostile layer was accepted");
    assert_eq!(fx.host_state(), before, "host changed; error was {err}");
    err
}

fn lstat(p: impl AsRef<Path>) -> fs::Metadata {
    fs::symlink_metadata(p).unwrap()
}

#[test]
fn files_dirs_modes_owners_times() {
    requires_root!();
    let fx = Fixture::new();
    let mut l = Layer::new();
    let mut h = header(EntryType::Directory, 0o1777);
    h.set_mtime(1000);
    l.append("tmp/", h, b"");
    let mut h = header(EntryType::Directory, 0o2750);
    h.set_uid(1000);
    h.set_gid(2000);
    h.set_mtime(2000);
    l.append("srv/", h, b"");
    let mut h = header(EntryType::Regular, 0o4755);
    h.set_uid(1000);
    h.set_gid(2000);
    h.set_mtime(3000);
    l.append("srv/suid", h, b"#!/bin/sh\n");
    let mut h = header(EntryType::Regular, 0o2711);
    h.set_gid(50);
    l.append("srv/sgid", h, b"x");
    l.file("./tmp/./nested//file", b"hello");
    l.append("empty", header(EntryType::Regular, 0o600), b"");
    let tar = l.tar();
    let stats = fx.unpack(&tar, Compression::None).unwrap();
    let d = fx.dest();

    let m = lstat(d.join("tmp"));
    assert!(m.is_dir());
    assert_eq!(m.mode() & 0o7777, 0o1777);
    // Set after "tmp/nested" was created inside it.
    assert_eq!(m.mtime(), 1000);
    let m = lstat(d.join("srv"));
    assert_eq!(
        (m.mode() & 0o7777, m.uid(), m.gid(), m.mtime()),
        (0o2750, 1000, 2000, 2000)
    );
    let m = lstat(d.join("srv/suid"));
    assert_eq!(
        (m.mode() & 0o7777, m.uid(), m.gid(), m.mtime()),
        (0o4755, 1000, 2000, 3000)
    );
    assert_eq!(fs::read(d.join("srv/suid")).unwrap(), b"#!/bin/sh\n");
    let m = lstat(d.join("srv/sgid"));
    assert_eq!((m.mode() & 0o7777, m.gid()), (0o2711, 50));
    // Implicit parent of a file listed without its directory.
    let m = lstat(d.join("tmp/nested"));
    assert!(m.is_dir());
    assert_eq!(m.mode() & 0o777, 0o755);
    assert_eq!(fs::read(d.join("tmp/nested/file")).unwrap(), b"hello");
    assert_eq!(lstat(d.join("empty")).len(), 0);

    assert_eq!(stats.entries, 6);
    assert_eq!(stats.files, 4);
    assert_eq!(stats.directories, 2);
    assert_eq!(stats.bytes_written, 10 + 1 + 5);
    assert_eq!(stats.decompressed_bytes, tar.len() as u64);
    assert_eq!(stats.compressed_bytes, tar.len() as u64);
}

#[test]
fn directory_times_survive_later_entries() {
    requires_root!();
    let fx = Fixture::new();
    let mut l = Layer::new();
    let mut h = header(EntryType::Directory, 0o755);
    h.set_mtime(1234);
    l.append("a/", h, b"");
    l.dir("a/b/");
    l.file("a/b/f", b"1");
    l.file("a/g", b"2");
    l.symlink("a/s", "g");
    l.hardlink("a/h", "a/g");
    l.raw(EntryType::Regular, b"a/.wh.gone", b"", b"");
    let tar = l.tar();
    fx.unpack(&tar, Compression::None).unwrap();
    assert_eq!(lstat(fx.dest().join("a")).mtime(), 1234);
    assert_eq!(lstat(fx.dest().join("a/b")).mtime(), MTIME as i64);
}

#[test]
fn pax_mtime_keeps_nanoseconds() {
    requires_root!();
    let fx = Fixture::new();
    let mut l = Layer::new();
    l.pax(
        &[("path", b"f"), ("mtime", b"1700000000.123456789")],
        EntryType::Regular,
        b"x",
    );
    fx.unpack(&l.tar(), Compression::None).unwrap();
    let m = lstat(fx.dest().join("f"));
    assert_eq!((m.mtime(), m.mtime_nsec()), (1_700_000_000, 123_456_789));
}

#[test]
fn symlinks_hardlinks_devices_fifos() {
    requires_root!();
    let fx = Fixture::new();
    let mut l = Layer::new();
    l.file("bin/busybox", b"binary");
    l.hardlink("bin/sh", "bin/busybox");
    l.hardlink("ls", "./bin/busybox");
    l.symlink("bin/rel", "busybox");
    l.symlink("abs", "/etc/passwd");
    l.symlink("dangling", "../../nowhere");
    let mut h = header(EntryType::Char, 0o666);
    h.set_device_major(1).unwrap();
    h.set_device_minor(3).unwrap();
    l.append("dev/null", h, b"");
    let mut h = header(EntryType::Block, 0o660);
    h.set_device_major(7).unwrap();
    h.set_device_minor(2).unwrap();
    h.set_gid(6);
    l.append("dev/loop2", h, b"");
    l.append("run/fifo", header(EntryType::Fifo, 0o620), b"");
    let mut h = header(EntryType::Symlink, 0o777);
    h.set_uid(7);
    h.set_gid(8);
    h.set_mtime(4242);
    l.b.append_link(&mut h, "owned-link", "bin/busybox")
        .unwrap();
    let tar = l.tar();
    let stats = fx.unpack(&tar, Compression::None).unwrap();
    let d = fx.dest();

    let a = lstat(d.join("bin/busybox"));
    assert_eq!(a.nlink(), 3);
    assert_eq!(lstat(d.join("bin/sh")).ino(), a.ino());
    assert_eq!(lstat(d.join("ls")).ino(), a.ino());
    assert_eq!(
        fs::read_link(d.join("bin/rel")).unwrap(),
        Path::new("busybox")
    );
    assert_eq!(
        fs::read_link(d.join("abs")).unwrap(),
        Path::new("/etc/passwd")
    );
    assert_eq!(
        fs::read_link(d.join("dangling")).unwrap(),
        Path::new("../../nowhere")
    );
    let m = lstat(d.join("owned-link"));
    assert!(m.file_type().is_symlink());
    assert_eq!((m.uid(), m.gid(), m.mtime()), (7, 8, 4242));

    let m = lstat(d.join("dev/null"));
    assert!(m.file_type().is_char_device());
    assert_eq!(
        (m.rdev(), m.mode() & 0o7777),
        (rustix::fs::makedev(1, 3), 0o666)
    );
    let m = lstat(d.join("dev/loop2"));
    assert!(m.file_type().is_block_device());
    assert_eq!(
        (m.rdev(), m.mode() & 0o7777, m.gid()),
        (rustix::fs::makedev(7, 2), 0o660, 6)
    );
    let m = lstat(d.join("run/fifo"));
    assert!(m.file_type().is_fifo());
    assert_eq!(m.mode() & 0o7777, 0o620);

    assert_eq!(stats.hardlinks, 2);
    assert_eq!(stats.symlinks, 4);
    assert_eq!(stats.devices, 3);
}

#[test]
fn xattrs_from_pax_records() {
    requires_root!();
    let fx = Fixture::new();
    let mut l = Layer::new();
    // A capability blob with a newline byte in it: PAX records are
    // length-delimited, not line-delimited.
    let cap: &[u8] = &[
        1, 0, 0, 2, 0x0a, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];
    l.pax(
        &[
            ("path", b"usr/bin/ping"),
            ("SCHILY.xattr.security.capability", cap),
            ("SCHILY.xattr.user.comment", b"a=b\nc"),
            ("SCHILY.xattr.trusted.overlay.redirect", b"/etc"),
        ],
        EntryType::Regular,
        b"ping",
    );
    l.pax(
        &[("path", b"d/"), ("SCHILY.xattr.trusted.dir", b"1")],
        EntryType::Directory,
        b"",
    );
    l.pax(
        &[
            ("path", b"d/link"),
            ("linkpath", b"../usr/bin/ping"),
            ("SCHILY.xattr.trusted.link", b"2"),
        ],
        EntryType::Symlink,
        b"",
    );
    fx.unpack(&l.tar(), Compression::None).unwrap();
    let d = fx.dest();
    let ping = d.join("usr/bin/ping");
    assert_eq!(
        xattr::get(&ping, "security.capability").unwrap().as_deref(),
        Some(cap)
    );
    assert_eq!(
        xattr::get(&ping, "user.comment").unwrap().as_deref(),
        Some(&b"a=b\nc"[..])
    );
    assert_eq!(xattr::get(&ping, "trusted.overlay.redirect").unwrap(), None);
    assert_eq!(
        xattr::get(d.join("d"), "trusted.dir").unwrap().as_deref(),
        Some(&b"1"[..])
    );
    let link = d.join("d/link");
    assert_eq!(fs::read_link(&link).unwrap(), Path::new("../usr/bin/ping"));
    assert_eq!(
        xattr::get(&link, "trusted.link").unwrap().as_deref(),
        Some(&b"2"[..])
    );
    // The xattr went on the link, not on what it points to.
    assert_eq!(xattr::get(&ping, "trusted.link").unwrap(), None);
}

#[test]
fn long_names_gnu_and_pax() {
    requires_root!();
    let fx = Fixture::new();
    let long_dir = "d".repeat(150);
    let long_file = format!("{long_dir}/{}", "f".repeat(200));
    let long_target = format!("{}/{}", "t".repeat(120), "u".repeat(120));
    let mut l = Layer::new();
    // GNU headers: the tar crate writes ././@LongLink entries.
    l.file(&long_file, b"gnu");
    let mut h = header(EntryType::Symlink, 0o777);
    l.b.append_link(&mut h, format!("{long_dir}/gnulink"), &long_target)
        .unwrap();
    // PAX path and linkpath.
    let pax_path = format!("{long_dir}/{}", "p".repeat(240));
    l.pax(&[("path", pax_path.as_bytes())], EntryType::Regular, b"pax");
    l.pax(
        &[("path", b"paxlink"), ("linkpath", long_target.as_bytes())],
        EntryType::Symlink,
        b"",
    );
    fx.unpack(&l.tar(), Compression::None).unwrap();
    let d = fx.dest();
    assert_eq!(fs::read(d.join(&long_file)).unwrap(), b"gnu");
    assert_eq!(fs::read(d.join(&pax_path)).unwrap(), b"pax");
    assert_eq!(
        fs::read_link(d.join(format!("{long_dir}/gnulink"))).unwrap(),
        Path::new(&long_target)
    );
    assert_eq!(
        fs::read_link(d.join("paxlink")).unwrap(),
        Path::new(&long_target)
    );
}

fn assert_whiteout(p: &Path) {
    let m = lstat(p);
    assert!(
        m.file_type().is_char_device(),
        "{} is not a whiteout",
        p.display()
    );
    assert_eq!(m.rdev(), 0);
}

fn opaque(p: &Path) -> Option<Vec<u8>> {
    xattr::get(p, "trusted.overlay.opaque").unwrap()
}

#[test]
fn whiteouts_become_overlayfs_whiteouts() {
    requires_root!();
    let fx = Fixture::new();
    let mut l = Layer::new();
    l.file(".wh.gone", b"");
    // Opaque marker before the directory's own entry...
    l.file("early/.wh..wh..opq", b"");
    l.dir("early/");
    l.file("early/kept", b"k");
    // ...and after its other entries.
    l.dir("late/");
    l.file("late/kept", b"k");
    l.file("late/.wh..wh..opq", b"");
    l.file("late/sub/.wh.old", b"");
    // aufs metadata: skipped.
    l.file(".wh..wh.plnk", b"");
    let mut h = header(EntryType::Regular, 0o644);
    h.set_uid(33);
    h.set_gid(44);
    l.append("owned/.wh.x", h, b"");
    let tar = l.tar();
    for c in [Compression::None, Compression::Gzip, Compression::Zstd] {
        let fx2 = Fixture::new();
        let stats = fx2.unpack(&tar, c).unwrap();
        assert_eq!(stats.whiteouts, 5);
    }
    fx.unpack(&tar, Compression::None).unwrap();
    let d = fx.dest();
    assert_whiteout(&d.join("gone"));
    assert!(!d.join(".wh.gone").exists());
    assert_eq!(opaque(&d.join("early")).as_deref(), Some(&b"y"[..]));
    assert_eq!(opaque(&d.join("late")).as_deref(), Some(&b"y"[..]));
    assert!(d.join("early/kept").exists() && d.join("late/kept").exists());
    assert!(!d.join("late/.wh..wh..opq").exists());
    assert_whiteout(&d.join("late/sub/old"));
    assert_eq!(opaque(&d.join("late/sub")), None);
    assert!(!d.join(".wh.plnk").exists() && !d.join(".wh..wh.plnk").exists());
    let m = lstat(d.join("owned/x"));
    assert_eq!((m.uid(), m.gid()), (33, 44));
}

#[test]
fn every_compression_round_trips() {
    requires_root!();
    let mut l = Layer::new();
    let big: Vec<u8> = (0..3 * 1024 * 1024 + 777)
        .map(|i| (i * 7 % 251) as u8)
        .collect();
    l.file("big", &big);
    for i in 0..3000 {
        l.file(&format!("many/{}/f{i}", i % 17), format!("{i}").as_bytes());
    }
    let tar = l.tar();
    for c in [Compression::None, Compression::Gzip, Compression::Zstd] {
        let fx = Fixture::new();
        let blob = compress(&tar, c);
        let stats = unpack_layer(&blob[..], c, &Digest::of(&tar), &fx.dest()).unwrap();
        assert_eq!(fs::read(fx.dest().join("big")).unwrap(), big, "{c:?}");
        assert_eq!(fs::read(fx.dest().join("many/5/f2997")).unwrap(), b"2997");
        assert_eq!(stats.files, 3001);
        assert_eq!(stats.compressed_bytes, blob.len() as u64, "{c:?}");
        assert_eq!(stats.decompressed_bytes, tar.len() as u64, "{c:?}");
    }
}

#[test]
fn concatenated_gzip_members_and_zstd_frames() {
    requires_root!();
    let mut l = Layer::new();
    l.file("a", &[b'a'; 100_000]);
    l.file("b", b"b");
    let tar = l.tar();
    let (head, tail) = tar.split_at(40_000);
    let fx = Fixture::new();
    let blob = [gzip(head), gzip(tail)].concat();
    unpack_layer(&blob[..], Compression::Gzip, &Digest::of(&tar), &fx.dest()).unwrap();
    assert_eq!(fs::read(fx.dest().join("b")).unwrap(), b"b");
    let fx = Fixture::new();
    // Frames plus a skippable frame, as the seekable format writes them.
    let skippable = [
        &0x184D2A5Eu32.to_le_bytes()[..],
        &4u32.to_le_bytes(),
        b"seek",
    ]
    .concat();
    let blob = [zstd(head), skippable, zstd(tail)].concat();
    unpack_layer(&blob[..], Compression::Zstd, &Digest::of(&tar), &fx.dest()).unwrap();
    assert_eq!(fs::read(fx.dest().join("a")).unwrap().len(), 100_000);
}

#[test]
fn trailing_padding_counts_for_the_diff_id() {
    requires_root!();
    let mut l = Layer::new();
    l.file("f", b"data");
    let mut tar = l.tar();
    // Writers pad the end-of-archive to a record size (10 KiB for GNU tar).
    tar.extend_from_slice(&[0u8; 8192]);
    let fx = Fixture::new();
    let stats = fx.unpack(&tar, Compression::Gzip).unwrap();
    assert_eq!(stats.decompressed_bytes, tar.len() as u64);

    let fx = Fixture::new();
    let short = &tar[..tar.len() - 8192];
    let err = unpack_layer(
        &gzip(&tar)[..],
        Compression::Gzip,
        &Digest::of(short),
        &fx.dest(),
    )
    .unwrap_err();
    assert!(matches!(err, ExtractError::DiffIdMismatch { .. }), "{err}");
}

#[test]
fn diff_id_mismatch_names_both_digests() {
    requires_root!();
    let mut l = Layer::new();
    l.file("f", b"data");
    let tar = l.tar();
    let wrong = Digest::of(b"something else");
    let fx = Fixture::new();
    let err = unpack_layer(&tar[..], Compression::None, &wrong, &fx.dest()).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains(&wrong.to_string()), "{msg}");
    assert!(msg.contains(&Digest::of(&tar).to_string()), "{msg}");
    match err {
        ExtractError::DiffIdMismatch { expected, actual } => {
            assert_eq!(expected, wrong);
            assert_eq!(actual, Digest::of(&tar));
        }
        other => panic!("unexpected {other}"),
    }
}

#[test]
fn stream_without_end_blocks_is_accepted() {
    requires_root!();
    let mut l = Layer::new();
    l.file("f", b"data");
    let tar = l.tar();
    let cut = &tar[..tar.len() - 1024];
    let fx = Fixture::new();
    fx.unpack(cut, Compression::None).unwrap();
    assert_eq!(fs::read(fx.dest().join("f")).unwrap(), b"data");
}

#[test]
fn truncated_and_corrupt_streams_fail_cleanly() {
    let mut l = Layer::new();
    l.file("a", &[7u8; 5000]);
    l.pax(
        &[("path", b"b"), ("SCHILY.xattr.user.x", b"1")],
        EntryType::Regular,
        b"bb",
    );
    l.dir("d/");
    l.symlink("d/s", "../a");
    let tar = l.tar();
    for c in [Compression::None, Compression::Gzip, Compression::Zstd] {
        let blob = compress(&tar, c);
        let step = (blob.len() / 40).max(1);
        for cut in (0..blob.len()).step_by(step) {
            let fx = Fixture::new();
            let r = unpack_layer(&blob[..cut], c, &Digest::of(&tar), &fx.dest());
            assert!(r.is_err(), "{c:?} truncated at {cut} accepted");
        }
        // Flipped bytes: never a panic, and an error unless the flip did not
        // change the decompressed stream (gzip header fields, unused Huffman
        // code lengths): the diffID decides.
        for pos in (0..blob.len()).step_by(step) {
            let mut bad = blob.clone();
            bad[pos] ^= 0x5a;
            let fx = Fixture::new();
            if unpack_layer(&bad[..], c, &Digest::of(&tar), &fx.dest()).is_ok() {
                assert_eq!(fs::read(fx.dest().join("a")).unwrap(), [7u8; 5000]);
                assert_ne!(c, Compression::None, "corruption at {pos} accepted");
            }
        }
    }
    // Not compressed at all, or not what the media type says.
    let fx = Fixture::new();
    assert!(matches!(
        unpack_layer(&tar[..], Compression::Gzip, &Digest::of(&tar), &fx.dest()),
        Err(ExtractError::Stream { .. })
    ));
    let fx = Fixture::new();
    assert!(unpack_layer(
        &b"garbage"[..],
        Compression::Zstd,
        &Digest::of(&tar),
        &fx.dest()
    )
    .is_err());
}

#[test]
fn absurd_sizes_and_ids_are_errors() {
    for records in [
        &[("path", &b"f"[..]), ("size", b"18446744073709551615")][..],
        &[("path", b"f"), ("size", b"99999999999999999999999")],
        &[("path", b"f"), ("uid", b"4294967296")],
        &[("path", b"f"), ("mtime", b"1e9")],
    ] {
        let fx = Fixture::new();
        let mut l = Layer::new();
        l.pax(records, EntryType::Regular, b"x");
        let err = fx.unpack(&l.tar(), Compression::None).unwrap_err();
        assert!(
            matches!(
                err,
                ExtractError::Truncated { .. } | ExtractError::Malformed { .. }
            ),
            "{err}"
        );
    }
    // An extension header larger than any path or xattr set needs.
    let fx = Fixture::new();
    let mut l = Layer::new();
    let big = vec![b'a'; 2 << 20];
    l.pax(&[("comment", &big)], EntryType::Regular, b"x");
    assert!(matches!(
        fx.unpack(&l.tar(), Compression::None),
        Err(ExtractError::Malformed { .. })
    ));
}

#[test]
fn mutated_archives_never_panic_or_escape() {
    // A small deterministic fuzzer: random byte edits of a layer full of
    // links, whiteouts and PAX records.
    let fx0 = Fixture::new();
    let outside = fx0.outside();
    let mut l = Layer::new();
    l.dir("d/");
    l.file("d/f", b"0123456789");
    l.symlink("d/s", "../d/f");
    l.hardlink("d/h", "d/f");
    l.file("d/.wh.x", b"");
    l.file("d/.wh..wh..opq", b"");
    l.pax(
        &[("path", b"p"), ("SCHILY.xattr.user.a", b"v")],
        EntryType::Regular,
        b"pp",
    );
    l.symlink("out", &outside);
    let tar = l.tar();
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for _ in 0..300 {
        let fx = Fixture::new();
        let before = fx.host_state();
        let mut bad = tar.clone();
        for _ in 0..(1 + next() % 4) {
            let pos = (next() % bad.len() as u64) as usize;
            bad[pos] = next() as u8;
        }
        // Re-seal header checksums now and then so the parser gets further.
        if next() % 2 == 0 {
            for block in bad.chunks_mut(512) {
                if block.len() == 512 && block[257..262] == *b"ustar" {
                    let mut h = Header::new_old();
                    h.as_mut_bytes().copy_from_slice(block);
                    h.set_cksum();
                    block.copy_from_slice(h.as_bytes());
                }
            }
        }
        let digest = Digest::of(&bad);
        let _ = unpack_layer(&bad[..], Compression::None, &digest, &fx.dest());
        assert_eq!(fx.host_state(), before);
    }
}

#[test]
fn replacing_entries_never_follows_them() {
    requires_root!();
    let fx = Fixture::new();
    let before = fx.host_state();
    let out = fx.outside();
    let mut l = Layer::new();
    // A symlink to a host file, then a regular file of the same name.
    l.symlink("x", &format!("{out}/secret"));
    l.file("x", b"new");
    // A symlink to a host directory, then a directory of the same name.
    l.symlink("y", &out);
    l.append("y/", header(EntryType::Directory, 0o700), b"");
    l.file("y/inside", b"i");
    // A hard link replaced by a file leaves the other name alone.
    l.file("f", b"original");
    l.hardlink("g", "f");
    l.file("g", b"replacement");
    // A file replaced by a directory, an empty directory by a file.
    l.file("z", b"z");
    l.dir("z/");
    l.dir("e/");
    l.file("e", b"e");
    // A whiteout over a symlink to the host.
    l.symlink("w", &format!("{out}/secret"));
    l.file(".wh.w", b"");
    fx.unpack(&l.tar(), Compression::None).unwrap();
    assert_eq!(fx.host_state(), before);
    let d = fx.dest();
    assert!(lstat(d.join("x")).is_file());
    assert_eq!(fs::read(d.join("x")).unwrap(), b"new");
    assert!(lstat(d.join("y")).is_dir());
    assert_eq!(lstat(d.join("y")).mode() & 0o777, 0o700);
    assert!(d.join("y/inside").exists());
    assert_eq!(fs::read(d.join("f")).unwrap(), b"original");
    assert_eq!(fs::read(d.join("g")).unwrap(), b"replacement");
    assert!(lstat(d.join("z")).is_dir());
    assert!(lstat(d.join("e")).is_file());
    assert_whiteout(&d.join("w"));
}

#[test]
fn hostile_dotdot_paths() {
    let err = assert_hostile(|_, l| {
        l.raw(EntryType::Regular, b"../pwned", b"", b"x");
    });
    assert!(err.is_hostile(), "{err}");
    let err = assert_hostile(|_, l| {
        l.raw(EntryType::Regular, b"a/../../pwned", b"", b"x");
    });
    assert!(err.is_hostile(), "{err}");
    assert_hostile(|_, l| {
        l.pax(
            &[("path", b"../../outside/secret")],
            EntryType::Regular,
            b"x",
        );
    });
    assert_hostile(|_, l| {
        l.raw(EntryType::Directory, b"../newdir/", b"", b"");
    });
}

#[test]
fn hostile_absolute_paths() {
    let err = assert_hostile(|out, l| {
        l.raw(
            EntryType::Regular,
            format!("{out}/secret").as_bytes(),
            b"",
            b"pwned",
        );
    });
    assert!(matches!(err, ExtractError::UnsafePath { .. }), "{err}");
    assert_hostile(|out, l| {
        l.raw(
            EntryType::Symlink,
            format!("{out}/newlink").as_bytes(),
            b"/",
            b"",
        );
    });
}

#[test]
fn hostile_symlink_parents() {
    requires_root!();
    // Absolute symlink, then a file through it.
    let err = assert_hostile(|out, l| {
        l.symlink("a", out);
        l.file("a/secret", b"pwned");
    });
    assert!(matches!(err, ExtractError::Escape { .. }), "{err}");
    // Relative symlink climbing out.
    assert_hostile(|_, l| {
        l.symlink("a", "../../outside");
        l.file("a/secret", b"pwned");
    });
    assert_hostile(|_, l| {
        l.symlink("a", "..");
        l.file("a/pwned", b"pwned");
    });
    // A chain of symlinks, the last one leading out; and a directory through it.
    assert_hostile(|_, l| {
        l.symlink("a", "b");
        l.symlink("b", "/");
        l.dir("a/pwned/");
    });
    // A symlink to "/" would land inside with RESOLVE_IN_ROOT; refused anyway.
    assert_hostile(|_, l| {
        l.symlink("root", "/");
        l.file("root/etc/passwd", b"x");
    });
    // Device nodes and links through such a parent.
    assert_hostile(|out, l| {
        l.symlink("a", out);
        l.raw(EntryType::Fifo, b"a/fifo", b"", b"");
    });
    assert_hostile(|out, l| {
        l.file("f", b"f");
        l.symlink("a", out);
        l.hardlink("a/newlink", "f");
    });
    assert_hostile(|out, l| {
        l.symlink("a", out);
        l.symlink("a/newsym", "/etc");
    });
}

#[test]
fn hostile_hardlinks() {
    requires_root!();
    let err = assert_hostile(|out, l| {
        l.hardlink("h", &format!("{out}/secret"));
    });
    assert!(matches!(err, ExtractError::UnsafePath { .. }), "{err}");
    assert_hostile(|_, l| {
        l.hardlink("h", "../../outside/secret");
    });
    // Through a symlinked parent.
    assert_hostile(|out, l| {
        l.symlink("a", out);
        l.hardlink("h", "a/secret");
    });
    // To a symlink that points out (absolute and relative).
    let err = assert_hostile(|out, l| {
        l.symlink("s", &format!("{out}/secret"));
        l.hardlink("h", "s");
    });
    assert!(matches!(err, ExtractError::Escape { .. }), "{err}");
    assert_hostile(|_, l| {
        l.dir("d/");
        l.symlink("d/s", "../../../outside/secret");
        l.hardlink("h", "d/s");
    });
    // To something not extracted (yet), to a directory, to the root.
    assert_hostile(|_, l| {
        l.hardlink("h", "later");
        l.file("later", b"x");
    });
    assert_hostile(|_, l| {
        l.dir("d/");
        l.hardlink("h", "d");
    });
    assert_hostile(|_, l| {
        l.hardlink("h", "./");
    });
}

#[test]
fn hardlink_to_symlink_inside_is_fine() {
    requires_root!();
    let fx = Fixture::new();
    let mut l = Layer::new();
    l.dir("d/");
    l.symlink("d/s", "../f");
    l.hardlink("h", "d/s");
    fx.unpack(&l.tar(), Compression::None).unwrap();
    assert_eq!(
        fs::read_link(fx.dest().join("h")).unwrap(),
        Path::new("../f")
    );
}

#[test]
fn hostile_whiteouts() {
    requires_root!();
    for name in [&b".wh..."[..], b".wh..", b".wh.", b"d/.wh.../"] {
        let err = assert_hostile(|_, l| {
            l.raw(EntryType::Regular, name, b"", b"");
        });
        assert!(err.is_hostile(), "{err}");
    }
    // Whiteout and opaque marker through a symlinked parent.
    let err = assert_hostile(|out, l| {
        l.symlink("a", out);
        l.file("a/.wh.secret", b"");
    });
    assert!(matches!(err, ExtractError::Escape { .. }), "{err}");
    assert_hostile(|out, l| {
        l.symlink("a", out);
        l.file("a/.wh..wh..opq", b"");
    });
    assert_hostile(|_, l| {
        l.raw(EntryType::Regular, b"../.wh.secret", b"", b"");
    });
}

#[test]
fn hostile_directory_replaced_by_symlink() {
    requires_root!();
    // Empty directory replaced by a symlink out, then written through.
    let err = assert_hostile(|out, l| {
        l.dir("d/");
        l.file("d/.wh..wh..opq", b"");
        l.symlink("d", out);
        l.file("d/secret", b"pwned");
    });
    assert!(matches!(err, ExtractError::Escape { .. }), "{err}");
    // Non-empty directory: removed with its contents (as containerd
    // does), and the symlink replacing it is still never followed out.
    assert_hostile(|out, l| {
        l.dir("d/");
        l.file("d/x", b"x");
        l.symlink("d", out);
        l.file("d/secret", b"pwned");
    });
}

#[test]
fn root_entries() {
    requires_root!();
    let fx = Fixture::new();
    let mut l = Layer::new();
    l.dir("./");
    l.dir(".");
    l.file("./f", b"f");
    fx.unpack(&l.tar(), Compression::None).unwrap();
    assert!(fx.dest().join("f").exists());
    assert_hostile(|_, l| {
        l.raw(EntryType::Regular, b".", b"", b"x");
    });
}

#[test]
fn unsupported_entries_are_errors() {
    let fx = Fixture::new();
    let mut l = Layer::new();
    l.raw(EntryType::new(b'S'), b"sparse", b"", b"");
    assert!(matches!(
        fx.unpack(&l.tar(), Compression::None),
        Err(ExtractError::Unsupported { .. })
    ));
    let fx = Fixture::new();
    let mut l = Layer::new();
    l.raw(EntryType::new(b'Q'), b"vendor", b"", b"");
    assert!(matches!(
        fx.unpack(&l.tar(), Compression::None),
        Err(ExtractError::Unsupported { .. })
    ));
}

#[test]
fn missing_destination_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let mut l = Layer::new();
    l.file("f", b"f");
    let tar = l.tar();
    let err = unpack_layer(
        &tar[..],
        Compression::None,
        &Digest::of(&tar),
        &tmp.path().join("missing"),
    )
    .unwrap_err();
    assert!(matches!(err, ExtractError::Destination { .. }), "{err}");
}

/// Ad-hoc speed check, not a timed test. Run as root with
/// `EXTRACT_BENCH=<blob>,<none|gzip|zstd>,<diffID>,<empty dest dir>
/// cargo test --release -p airgap-snapshotter --lib extract::tests::bench -- --ignored --nocapture`.
#[test]
#[ignore]
fn bench() {
    let Ok(spec) = std::env::var("EXTRACT_BENCH") else {
        return;
    };
    let parts: Vec<&str> = spec.split(',').collect();
    let [blob, c, diff, dest] = parts[..] else {
        panic!("EXTRACT_BENCH=<blob>,<compression>,<diffID>,<dest>");
    };
    let c = match c {
        "gzip" => Compression::Gzip,
        "zstd" => Compression::Zstd,
        _ => Compression::None,
    };
    let start = std::time::Instant::now();
    let stats = unpack_layer(
        fs::File::open(blob).unwrap(),
        c,
        &diff.parse().unwrap(),
        Path::new(dest),
    )
    .unwrap();
    let secs = start.elapsed().as_secs_f64();
    eprintln!(
        "{secs:.2} s, {:.0} MB/s of tar, {stats:?}",
        stats.decompressed_bytes as f64 / secs / 1e6
    );
}

#[test]
fn path_rules() {
    assert_eq!(normalize(b"./a//b/./c/").unwrap(), b"a/b/c");
    assert_eq!(normalize(b"./").unwrap(), b"");
    assert!(normalize(b"/a").is_err());
    assert!(normalize(b"a/../b").is_err());
    assert!(normalize(b"a/..").is_err());
    assert!(normalize(b"a\0b").is_err());
    assert_eq!(normalize(b"a/..b/c..").unwrap(), b"a/..b/c..");
    assert_eq!(split(b"a/b/c"), (&b"a/b"[..], &b"c"[..]));
    assert_eq!(split(b"c"), (&b""[..], &b"c"[..]));
    assert!(symlink_escapes(b"", b"/etc"));
    assert!(symlink_escapes(b"", b".."));
    assert!(symlink_escapes(b"a/b", b"../../../x"));
    assert!(symlink_escapes(b"a", b"b/../../../x"));
    assert!(!symlink_escapes(b"a/b", b"../../x"));
    assert!(!symlink_escapes(b"a", b"./b/../c"));
}

#[test]
fn cached_directory_replaced_by_a_file() {
    requires_root!();
    // The parent fd cache must not outlive the directory it names.
    let fx = Fixture::new();
    let mut l = Layer::new();
    l.dir("a/");
    l.file("a/.wh..wh..opq", b"");
    l.file("a", b"now a file");
    l.file("a/x", b"x");
    let err = fx.unpack(&l.tar(), Compression::None).unwrap_err();
    assert!(matches!(err, ExtractError::Io { .. }), "{err}");
    assert_eq!(fs::read(fx.dest().join("a")).unwrap(), b"now a file");

    let fx = Fixture::new();
    let mut l = Layer::new();
    l.dir("a/");
    l.file("a/.wh..wh..opq", b"");
    l.file("a", b"now a file");
    l.dir("a/");
    l.file("a/x", b"x");
    fx.unpack(&l.tar(), Compression::None).unwrap();
    assert_eq!(fs::read(fx.dest().join("a/x")).unwrap(), b"x");
}

/// A layer that replaces a non-empty directory with a file (or a symlink, a
/// hard link, a device) gives what containerd's applier gives
/// (`pkg/archive/tar.go`, `applyNaive`: an entry at an existing path that is
/// not a directory merging into a directory first `os.RemoveAll`s it; a
/// directory merges into a directory): the tree is gone, the new entry is
/// there, nothing outside the layer is touched.
#[test]
fn non_empty_directory_replaced_as_containerd_does() {
    requires_root!();
    let fx = Fixture::new();
    let before = fx.host_state();
    let out = fx.outside();
    let mut l = Layer::new();
    // A deep tree with every kind of entry, a symlink out of the layer
    // among them (removing it must not follow it), then a file.
    l.dir("a/");
    l.dir("a/b/");
    l.dir("a/b/c/");
    l.file("a/b/c/deep", b"deep");
    l.file("a/f", b"f");
    l.symlink("a/out", &out);
    l.symlink("a/b/secret", &format!("{out}/secret"));
    l.hardlink("a/b/hl", "a/f");
    let mut fifo = header(EntryType::Fifo, 0o644);
    fifo.set_device_major(0).unwrap();
    fifo.set_device_minor(0).unwrap();
    l.append("a/b/fifo", fifo, b"");
    l.append("a/b/c/ro/", header(EntryType::Directory, 0o500), b"");
    l.file("a/b/c/ro/x", b"x");
    l.file("a", b"now a file");
    // A non-empty directory replaced by a symlink, a hard link, a device.
    l.dir("s/");
    l.file("s/x", b"x");
    l.symlink("s", "a");
    l.dir("h/");
    l.file("h/x", b"x");
    l.hardlink("h", "a");
    l.dir("n/");
    l.dir("n/sub/");
    l.file("n/sub/x", b"x");
    let mut dev = header(EntryType::Char, 0o600);
    dev.set_device_major(1).unwrap();
    dev.set_device_minor(3).unwrap();
    l.append("n", dev, b"");
    // A directory merges into a directory: what it held stays.
    l.dir("m/");
    l.file("m/keep", b"keep");
    l.append("m/", header(EntryType::Directory, 0o711), b"");
    // A directory replaced by a file, then a directory again at that path.
    l.dir("r/");
    l.file("r/old", b"old");
    l.file("r", b"r");
    l.dir("r/");
    l.file("r/new", b"new");
    fx.unpack(&l.tar(), Compression::None).unwrap();

    assert_eq!(fx.host_state(), before, "the host changed");
    let d = fx.dest();
    let mut names: Vec<String> = fs::read_dir(&d)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["a", "h", "m", "n", "r", "s"]);
    assert!(lstat(d.join("a")).is_file());
    assert_eq!(fs::read(d.join("a")).unwrap(), b"now a file");
    assert_eq!(fs::read_link(d.join("s")).unwrap(), Path::new("a"));
    assert!(lstat(d.join("h")).is_file());
    assert_eq!(lstat(d.join("h")).ino(), lstat(d.join("a")).ino());
    assert_eq!(lstat(d.join("a")).nlink(), 2);
    assert!(lstat(d.join("n")).file_type().is_char_device());
    assert_eq!(fs::read(d.join("m/keep")).unwrap(), b"keep");
    assert_eq!(lstat(d.join("m")).mode() & 0o777, 0o711);
    let r: Vec<_> = fs::read_dir(d.join("r"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(r, ["new"]);
}

/// A whiteout over a non-empty directory of the same layer is still an
/// error (containerd's `mknod` fails on any existing path): never a silent
/// removal of what the layer itself just wrote.
#[test]
fn whiteout_over_non_empty_directory_is_an_error() {
    requires_root!();
    let fx = Fixture::new();
    let mut l = Layer::new();
    l.dir("d/");
    l.file("d/x", b"x");
    l.file(".wh.d", b"");
    let err = fx.unpack(&l.tar(), Compression::None).unwrap_err();
    assert!(matches!(err, ExtractError::Io { .. }), "{err}");
    assert_eq!(fs::read(fx.dest().join("d/x")).unwrap(), b"x");
}

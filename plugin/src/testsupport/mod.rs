//! Test fixtures: builds small image archives of every kind the catalog
//! reads (OCI layouts, docker-save, every container and layer compression),
//! from files on the machine (`/bin/busybox` when present), so tests never
//! depend on hand-edited binary blobs. The unit tests use them, and so do the
//! end-to-end tests (`integration/`, through the `testsupport` feature): one
//! way to build an archive.

use std::collections::BTreeMap;
use std::io::Write;

use serde_json::json;

#[cfg(test)]
pub mod containerd;
#[cfg(test)]
pub mod snapshot;
pub mod tree;

use crate::catalog::seekable;
use crate::digest::Digest;

/// Records that the running test was skipped, and why: printed, and, when
/// `AIRGAP_TEST_SKIP_LOG` names a file (scripts/test.sh sets it), appended
/// there as one line, so the suite's summary counts and names every skip.
pub fn skip(test: &str, reason: &str) {
    eprintln!("SKIPPED {test}: {reason}");
    if let Some(log) = std::env::var_os("AIRGAP_TEST_SKIP_LOG") {
        let line = format!("{test}: {reason}\n");
        let appended = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .and_then(|mut f| f.write_all(line.as_bytes()));
        if let Err(e) = appended {
            eprintln!("recording the skip in {}: {e}", log.to_string_lossy());
        }
    }
}

/// The running test's name (libtest and nextest name each test's thread
/// after the test).
fn current_test() -> String {
    std::thread::current().name().unwrap_or("test").to_owned()
}

/// Whether the kernel can mount EROFS tar indexes as the daemon builds them:
/// root, EROFS, file-backed mounts, chunked files and a device table. When
/// it cannot, the test is recorded as skipped with the missing feature.
#[must_use]
pub fn has_erofs_indexes() -> bool {
    if !has_root() {
        return false;
    }
    let filesystems = std::fs::read_to_string("/proc/filesystems").unwrap_or_default();
    let features = std::path::Path::new("/sys/fs/erofs/features");
    let missing: Vec<&str> = ["chunked_file", "device_table"]
        .into_iter()
        .filter(|f| !features.join(f).exists())
        .collect();
    let reason = if !filesystems.split_whitespace().any(|f| f == "erofs") {
        "the kernel has no EROFS".to_owned()
    } else if !missing.is_empty() {
        format!("the kernel's EROFS lacks {}", missing.join(", "))
    } else {
        return true;
    };
    skip(&current_test(), &reason);
    false
}

/// Whether a root-only test (ownership, device nodes, `trusted.*` xattrs,
/// mounts) can run; when it cannot, says so and the test returns early, as
/// containerd's `testutil.RequiresRoot` does. `cargo test` works without root
/// for a contributor; CI runs everything as root.
#[must_use]
pub fn has_root() -> bool {
    if rustix::process::geteuid().is_root() {
        return true;
    }
    skip(&current_test(), "needs root");
    false
}

/// Returns from the calling test unless it runs as root (see [`has_root`]).
#[cfg(test)]
macro_rules! requires_root {
    () => {
        if !$crate::testsupport::has_root() {
            return;
        }
    };
}
#[cfg(test)]
pub(crate) use requires_root;

/// Returns from the calling test unless the kernel can mount EROFS tar
/// indexes (see [`has_erofs_indexes`]).
#[cfg(test)]
macro_rules! requires_erofs {
    () => {
        if !$crate::testsupport::has_erofs_indexes() {
            return;
        }
    };
}
#[cfg(test)]
pub(crate) use requires_erofs;

/// How a layer's blob is compressed inside the archive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerCompression {
    None,
    Gzip,
    Zstd,
}

/// The outer container of a whole archive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wrap {
    Tar,
    Gzip,
    Zstd,
    /// Several zstd frames, no seek table (`zstd` on concatenated input).
    ZstdMultiFrame,
    /// zstd with a long window (`zstd --long=31`).
    ZstdLong,
    Seekable,
    Lz4,
    Bzip2,
}

pub const ALL_WRAPS: [Wrap; 8] = [
    Wrap::Tar,
    Wrap::Gzip,
    Wrap::Zstd,
    Wrap::ZstdMultiFrame,
    Wrap::ZstdLong,
    Wrap::Seekable,
    Wrap::Lz4,
    Wrap::Bzip2,
];

/// Writes an archive file into `dir`, its mtime set a minute back so the
/// catalog takes it as settled (not still being copied).
pub fn write(dir: &std::path::Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    let old = std::time::SystemTime::now() - std::time::Duration::from_secs(60);
    std::fs::File::options()
        .write(true)
        .open(&p)
        .unwrap()
        .set_modified(old)
        .unwrap();
    p
}

/// A tar of `files` (path, contents), each a regular file with mode 0644,
/// owned by root (a layer extraction and the EROFS index accept).
pub fn layer_tar(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, data) in files {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        b.append_data(&mut h, path, *data).unwrap();
    }
    b.into_inner().unwrap()
}

/// The contents of `/bin/busybox` (a real static binary) when the machine
/// has it, else a generated stand-in of similar size.
pub fn busybox_bytes() -> Vec<u8> {
    std::fs::read("/bin/busybox").unwrap_or_else(|_| {
        (0..1_000_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect()
    })
}

pub fn compress_layer(tar: &[u8], c: LayerCompression) -> Vec<u8> {
    match c {
        LayerCompression::None => tar.to_vec(),
        LayerCompression::Gzip => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(tar).unwrap();
            e.finish().unwrap()
        }
        LayerCompression::Zstd => zstd::encode_all(tar, 3).unwrap(),
    }
}

fn layer_media_type(c: LayerCompression) -> &'static str {
    match c {
        LayerCompression::None => "application/vnd.oci.image.layer.v1.tar",
        LayerCompression::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
        LayerCompression::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
    }
}

/// `len` bytes that do not compress (a fixed pseudo-random sequence per
/// `seed`).
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// One platform image: its layers (uncompressed tars) and platform.
#[derive(Clone)]
pub struct ImageSpec {
    pub os: &'static str,
    pub arch: &'static str,
    pub variant: Option<&'static str>,
    pub layers: Vec<Vec<u8>>,
    pub compression: LayerCompression,
    /// The config's `Cmd`; `None`: `["/bin/sh"]`.
    pub cmd: Option<Vec<String>>,
}

impl ImageSpec {
    pub fn new(layers: Vec<Vec<u8>>) -> Self {
        ImageSpec {
            os: "linux",
            arch: "amd64",
            variant: None,
            layers,
            compression: LayerCompression::Gzip,
            cmd: None,
        }
    }

    pub fn diff_ids(&self) -> Vec<Digest> {
        self.layers.iter().map(|l| Digest::of(l)).collect()
    }

    pub fn chain_ids(&self) -> Vec<Digest> {
        Digest::chain_ids(&self.diff_ids())
    }
}

/// What was written for one platform image.
#[derive(Clone, Debug)]
pub struct BuiltImage {
    pub manifest: Digest,
    pub manifest_size: u64,
    pub config: Digest,
    pub layers: Vec<Digest>,
}

/// An OCI image layout under construction.
#[derive(Clone, Default)]
pub struct OciLayout {
    pub blobs: BTreeMap<Digest, Vec<u8>>,
    pub index: Vec<serde_json::Value>,
    /// Files written as they are, e.g. a hostile extra entry.
    pub extra: Vec<(String, Vec<u8>)>,
}

impl OciLayout {
    pub fn add_blob(&mut self, data: Vec<u8>) -> (Digest, u64) {
        let d = Digest::of(&data);
        let n = data.len() as u64;
        self.blobs.insert(d, data);
        (d, n)
    }

    fn config_json(spec: &ImageSpec) -> Vec<u8> {
        let diff_ids: Vec<String> = spec.diff_ids().iter().map(|d| d.to_string()).collect();
        let cmd = spec
            .cmd
            .clone()
            .unwrap_or_else(|| vec!["/bin/sh".to_string()]);
        let mut cfg = json!({
            "architecture": spec.arch, "os": spec.os,
            "config": {"Env": ["PATH=/bin"], "Cmd": cmd, "WorkingDir": "/"},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        });
        if let Some(v) = spec.variant {
            cfg["variant"] = json!(v);
        }
        serde_json::to_vec(&cfg).unwrap()
    }

    /// Adds a platform image's blobs; returns its manifest digest.
    pub fn add_image(&mut self, spec: &ImageSpec) -> BuiltImage {
        let (config, config_size) = self.add_blob(Self::config_json(spec));
        let mut layers = Vec::new();
        let mut descs = Vec::new();
        for l in &spec.layers {
            let (d, n) = self.add_blob(compress_layer(l, spec.compression));
            layers.push(d);
            descs.push(json!({"mediaType": layer_media_type(spec.compression), "digest": d.to_string(), "size": n}));
        }
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config.to_string(), "size": config_size},
            "layers": descs,
        });
        let (m, n) = self.add_blob(serde_json::to_vec(&manifest).unwrap());
        BuiltImage {
            manifest: m,
            manifest_size: n,
            config,
            layers,
        }
    }

    /// An index of `images` (with their platforms); returns its digest and size.
    pub fn add_index(&mut self, images: &[(&ImageSpec, &BuiltImage)]) -> (Digest, u64) {
        let manifests: Vec<_> = images
            .iter()
            .map(|(s, b)| {
                let mut p = json!({"os": s.os, "architecture": s.arch});
                if let Some(v) = s.variant {
                    p["variant"] = json!(v);
                }
                json!({"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": b.manifest.to_string(), "size": b.manifest_size, "platform": p})
            })
            .collect();
        let index = json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": manifests});
        self.add_blob(serde_json::to_vec(&index).unwrap())
    }

    /// Names a manifest or index in `index.json` the way `ctr export` does
    /// (both annotations).
    pub fn tag(&mut self, name: &str, digest: Digest, size: u64, index: bool) {
        let tag = name.rsplit(':').next().unwrap();
        self.tag_as(name, tag, digest, size, index);
    }

    /// Names a manifest or index `name` (`io.containerd.image.name`) and
    /// `ref_name` (`org.opencontainers.image.ref.name`, what skopeo's
    /// `oci-archive:FILE:TAG` picks).
    pub fn tag_as(&mut self, name: &str, ref_name: &str, digest: Digest, size: u64, index: bool) {
        let media_type = if index {
            "application/vnd.oci.image.index.v1+json"
        } else {
            "application/vnd.oci.image.manifest.v1+json"
        };
        self.index.push(json!({
            "mediaType": media_type, "digest": digest.to_string(), "size": size,
            "annotations": {"io.containerd.image.name": name, "org.opencontainers.image.ref.name": ref_name},
        }));
    }

    /// One image, tagged: the common case.
    pub fn single(name: &str, spec: &ImageSpec) -> (OciLayout, BuiltImage) {
        let mut l = OciLayout::default();
        let b = l.add_image(spec);
        l.tag(name, b.manifest, b.manifest_size, false);
        (l, b)
    }

    /// The layout as an uncompressed tar (what `ctr export` writes).
    pub fn to_tar(&self) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut add = |path: &str, data: &[u8]| {
            let mut h = tar::Header::new_ustar();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            b.append_data(&mut h, path, data).unwrap();
        };
        add("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#);
        for (d, data) in &self.blobs {
            add(&format!("blobs/sha256/{}", d.hex()), data);
        }
        for (p, data) in &self.extra {
            add(p, data);
        }
        let index = json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": self.index});
        add("index.json", &serde_json::to_vec(&index).unwrap());
        b.into_inner().unwrap()
    }
}

/// A `docker save` archive (legacy layout: `<id>/layer.tar`, `<id>.json`,
/// `manifest.json`, `repositories`) of one image with `tags`.
pub fn docker_save(spec: &ImageSpec, tags: &[&str]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut add = |path: &str, data: &[u8]| {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, path, data).unwrap();
    };
    let config = OciLayout::config_json(spec);
    let config_name = format!("{}.json", Digest::of(&config).hex());
    let mut layer_paths = Vec::new();
    for (i, l) in spec.layers.iter().enumerate() {
        let dir = Digest::of(format!("layer{i}").as_bytes()).hex();
        let path = format!("{dir}/layer.tar");
        add(&format!("{dir}/VERSION"), b"1.0");
        add(&path, l);
        layer_paths.push(path);
    }
    add(&config_name, &config);
    let manifest = json!([{"Config": config_name, "RepoTags": tags, "Layers": layer_paths}]);
    add("manifest.json", &serde_json::to_vec(&manifest).unwrap());
    add("repositories", b"{}");
    b.into_inner().unwrap()
}

impl Wrap {
    /// The file name extension a site would give an archive wrapped so.
    pub fn extension(self) -> &'static str {
        match self {
            Wrap::Tar => "tar",
            Wrap::Gzip => "tar.gz",
            Wrap::Zstd | Wrap::ZstdMultiFrame | Wrap::ZstdLong | Wrap::Seekable => "tar.zst",
            Wrap::Lz4 => "tar.lz4",
            Wrap::Bzip2 => "tar.bz2",
        }
    }
}

/// Wraps a tar in `w`.
pub fn wrap(tar: &[u8], w: Wrap) -> Vec<u8> {
    match w {
        Wrap::Tar => tar.to_vec(),
        Wrap::Gzip => compress_layer(tar, LayerCompression::Gzip),
        Wrap::Zstd => zstd::encode_all(tar, 3).unwrap(),
        Wrap::ZstdMultiFrame => {
            let mut out = Vec::new();
            for chunk in tar.chunks(64 * 1024) {
                out.extend(zstd::encode_all(chunk, 1).unwrap());
            }
            out
        }
        Wrap::ZstdLong => {
            let mut e = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
            e.long_distance_matching(true).unwrap();
            e.window_log(31).unwrap();
            e.write_all(tar).unwrap();
            e.finish().unwrap()
        }
        Wrap::Seekable => seekable::encode(tar, 256 * 1024, &[], 3).unwrap(),
        Wrap::Lz4 => {
            let mut e = lz4_flex::frame::FrameEncoder::new(Vec::new());
            e.write_all(tar).unwrap();
            e.finish().unwrap()
        }
        Wrap::Bzip2 => {
            let mut e = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::fast());
            e.write_all(tar).unwrap();
            e.finish().unwrap()
        }
    }
}

/// Writes a `.tar.zst` archive that is small on disk (a few MB) but takes
/// long to index: `entries` tar entries of 7 GiB of zeros each (not under
/// `blobs/`, so indexing hashes every byte), each entry's data a run of
/// identical 64 MiB zstd frames. For tests that stop the daemon during its
/// first scan. Returns the decompressed length.
pub fn write_slow_to_index_archive(path: &std::path::Path, entries: usize) -> u64 {
    const FRAME: usize = 64 << 20;
    const ENTRY: u64 = 7 << 30;
    let zero_frame = {
        let mut e = zstd::stream::Encoder::new(Vec::new(), 1).unwrap();
        let chunk = vec![0u8; 1 << 20];
        for _ in 0..FRAME >> 20 {
            e.write_all(&chunk).unwrap();
        }
        e.finish().unwrap()
    };
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    for i in 0..entries {
        let mut h = tar::Header::new_gnu();
        h.set_path(format!("zeros-{i}")).unwrap();
        h.set_size(ENTRY);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_cksum();
        out.write_all(&zstd::encode_all(h.as_bytes().as_slice(), 1).unwrap())
            .unwrap();
        for _ in 0..ENTRY / FRAME as u64 {
            out.write_all(&zero_frame).unwrap();
        }
    }
    out.write_all(&zstd::encode_all(&[0u8; 1024][..], 1).unwrap())
        .unwrap();
    out.flush().unwrap();
    entries as u64 * (512 + ENTRY) + 1024
}

//! Test images built from files on the machine: layers as gzip tars, an OCI
//! image config and manifest, an `index.json` naming the image, all written
//! as an OCI image layout tar. That tar is both an airgap archive for the
//! daemon and what skopeo pushes to the registry (`oci-archive:`).

use std::path::{Path, PathBuf};

use airgap_snapshotter::digest::Digest;
use airgap_snapshotter::testsupport as fixtures;
use anyhow::{bail, Context, Result};
use tar::{EntryType, Header};

/// The statically linked busybox that the test images run.
pub const BUSYBOX: &str = "/bin/busybox";

/// Applets linked to busybox in `/bin` of [`busybox_layer`].
pub const APPLETS: &[&str] = &[
    "sh", "ls", "cat", "stat", "readlink", "test", "echo", "true", "sleep", "find", "wc",
];

const MTIME: u64 = 1_700_000_000;

pub const MEDIA_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MEDIA_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MEDIA_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const MEDIA_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const MEDIA_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
pub const MEDIA_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";

/// One tar entry of a layer.
#[derive(Clone, Debug)]
pub enum Entry {
    Dir {
        path: String,
        mode: u32,
    },
    File {
        path: String,
        mode: u32,
        data: Vec<u8>,
    },
    Symlink {
        path: String,
        target: String,
    },
    Hardlink {
        path: String,
        target: String,
    },
    /// Any entry type with its ownership and device numbers (for devices,
    /// FIFOs, files owned by another user).
    Node {
        path: String,
        kind: EntryType,
        mode: u32,
        uid: u64,
        gid: u64,
        major: u32,
        minor: u32,
        data: Vec<u8>,
    },
    /// Written byte for byte, bypassing the tar crate's path checks: for
    /// hostile layers (`..`, absolute names and link targets). Names and
    /// link targets must fit the 100-byte header fields.
    Raw {
        name: String,
        kind: EntryType,
        link: String,
        mode: u32,
        data: Vec<u8>,
    },
}

impl Entry {
    pub fn dir(path: &str) -> Self {
        Entry::Dir {
            path: path.to_string(),
            mode: 0o755,
        }
    }

    pub fn file(path: &str, data: impl Into<Vec<u8>>) -> Self {
        Entry::File {
            path: path.to_string(),
            mode: 0o644,
            data: data.into(),
        }
    }

    pub fn file_mode(path: &str, mode: u32, data: impl Into<Vec<u8>>) -> Self {
        Entry::File {
            path: path.to_string(),
            mode,
            data: data.into(),
        }
    }

    pub fn symlink(path: &str, target: &str) -> Self {
        Entry::Symlink {
            path: path.to_string(),
            target: target.to_string(),
        }
    }

    pub fn hardlink(path: &str, target: &str) -> Self {
        Entry::Hardlink {
            path: path.to_string(),
            target: target.to_string(),
        }
    }

    /// A regular file owned by `uid:gid`.
    pub fn owned(path: &str, uid: u64, gid: u64, mode: u32, data: impl Into<Vec<u8>>) -> Self {
        Entry::Node {
            path: path.to_string(),
            kind: EntryType::Regular,
            mode,
            uid,
            gid,
            major: 0,
            minor: 0,
            data: data.into(),
        }
    }

    /// A character device node.
    pub fn char_device(path: &str, major: u32, minor: u32) -> Self {
        Entry::Node {
            path: path.to_string(),
            kind: EntryType::Char,
            mode: 0o666,
            uid: 0,
            gid: 0,
            major,
            minor,
            data: Vec::new(),
        }
    }

    /// A PAX extended header applying to the entry that follows it, e.g.
    /// `("SCHILY.xattr.user.k", b"v")` for an extended attribute.
    pub fn pax(records: &[(&str, &[u8])]) -> Self {
        let mut data = Vec::new();
        for (key, value) in records {
            data.extend(pax_record(key, value));
        }
        Entry::Raw {
            name: "PaxHeader".to_string(),
            kind: EntryType::XHeader,
            link: String::new(),
            mode: 0o644,
            data,
        }
    }

    /// An OCI whiteout for `path` (`dir/.wh.name`).
    pub fn whiteout(path: &str) -> Self {
        let (dir, name) = match path.rsplit_once('/') {
            Some((dir, name)) => (format!("{dir}/"), name),
            None => (String::new(), path),
        };
        Entry::file(&format!("{dir}.wh.{name}"), Vec::new())
    }

    /// An OCI opaque-directory marker for `dir`.
    pub fn opaque(dir: &str) -> Self {
        Entry::file(&format!("{dir}/.wh..wh..opq"), Vec::new())
    }

    pub fn raw(name: &str, kind: EntryType, link: &str, data: impl Into<Vec<u8>>) -> Self {
        Entry::Raw {
            name: name.to_string(),
            kind,
            link: link.to_string(),
            mode: 0o644,
            data: data.into(),
        }
    }
}

/// A layer: its entries in order.
#[derive(Clone, Debug, Default)]
pub struct Layer {
    pub entries: Vec<Entry>,
}

impl Layer {
    pub fn new(entries: Vec<Entry>) -> Self {
        Self { entries }
    }

    /// The uncompressed tar stream.
    pub fn tar(&self) -> Result<Vec<u8>> {
        let mut builder = tar::Builder::new(Vec::new());
        builder.mode(tar::HeaderMode::Deterministic);
        for entry in &self.entries {
            let mut header = Header::new_gnu();
            header.set_mtime(MTIME);
            header.set_uid(0);
            header.set_gid(0);
            match entry {
                Entry::Dir { path, mode } => {
                    header.set_entry_type(EntryType::Directory);
                    header.set_mode(*mode);
                    header.set_size(0);
                    builder.append_data(&mut header, path, std::io::empty())?;
                }
                Entry::File { path, mode, data } => {
                    header.set_entry_type(EntryType::Regular);
                    header.set_mode(*mode);
                    header.set_size(data.len() as u64);
                    builder.append_data(&mut header, path, data.as_slice())?;
                }
                Entry::Symlink { path, target } => {
                    header.set_entry_type(EntryType::Symlink);
                    header.set_mode(0o777);
                    header.set_size(0);
                    builder.append_link(&mut header, path, target)?;
                }
                Entry::Hardlink { path, target } => {
                    header.set_entry_type(EntryType::Link);
                    header.set_mode(0o644);
                    header.set_size(0);
                    builder.append_link(&mut header, path, target)?;
                }
                Entry::Node {
                    path,
                    kind,
                    mode,
                    uid,
                    gid,
                    major,
                    minor,
                    data,
                } => {
                    header.set_entry_type(*kind);
                    header.set_mode(*mode);
                    header.set_uid(*uid);
                    header.set_gid(*gid);
                    header.set_device_major(*major)?;
                    header.set_device_minor(*minor)?;
                    header.set_size(data.len() as u64);
                    builder.append_data(&mut header, path, data.as_slice())?;
                }
                Entry::Raw {
                    name,
                    kind,
                    link,
                    mode,
                    data,
                } => {
                    header.set_entry_type(*kind);
                    header.set_mode(*mode);
                    header.set_size(data.len() as u64);
                    let old = header.as_old_mut();
                    copy_field(&mut old.name, name)?;
                    copy_field(&mut old.linkname, link)?;
                    header.set_cksum();
                    builder.append(&header, data.as_slice())?;
                }
            }
        }
        Ok(builder.into_inner()?)
    }
}

/// One PAX record: `"<len> <key>=<value>\n"`, the length counting itself.
fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    let rest = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut len = rest + 1;
    while len != rest + len.to_string().len() {
        len = rest + len.to_string().len();
    }
    let mut record = format!("{len} {key}=").into_bytes();
    record.extend_from_slice(value);
    record.push(b'\n');
    record
}

fn copy_field(field: &mut [u8; 100], value: &str) -> Result<()> {
    let bytes = value.as_bytes();
    if bytes.len() > field.len() {
        bail!("raw tar field longer than 100 bytes: {value}");
    }
    field.fill(0);
    field[..bytes.len()].copy_from_slice(bytes);
    Ok(())
}

/// What to build.
#[derive(Clone, Debug)]
pub struct ImageSpec {
    /// Full reference, `io.containerd.image.name` (e.g. `127.0.0.1:5000/library/x:v1`).
    pub name: String,
    /// `org.opencontainers.image.ref.name` (what `oci-archive:FILE:TAG` picks).
    pub tag: String,
    pub layers: Vec<Layer>,
}

/// What was built.
#[derive(Clone, Debug)]
pub struct BuiltImage {
    pub archive: PathBuf,
    pub name: String,
    pub tag: String,
    pub manifest_digest: String,
    pub config_digest: String,
    /// Digests of the compressed layer blobs, base first.
    pub layer_digests: Vec<String>,
    pub diff_ids: Vec<String>,
    pub chain_ids: Vec<String>,
}

fn oci_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" => "arm",
        "powerpc64" => "ppc64le",
        "s390x" => "s390x",
        "riscv64" => "riscv64",
        other => other,
    }
}

/// How the layer blobs and the whole archive are compressed: the fixtures
/// the unit tests use too.
pub use airgap_snapshotter::testsupport::{LayerCompression, Wrap as ArchiveContainer};

/// Writes `spec` as an OCI image layout tar at `archive`, gzip layers.
pub fn write_oci_archive(spec: &ImageSpec, archive: &Path) -> Result<BuiltImage> {
    write_oci_archive_with(spec, archive, LayerCompression::Gzip)
}

/// Writes `spec` as an OCI image layout tar at `archive` (the layout `ctr
/// export` writes), for this machine's architecture.
pub fn write_oci_archive_with(
    spec: &ImageSpec,
    archive: &Path,
    compression: LayerCompression,
) -> Result<BuiltImage> {
    write_oci_archive_with_cmd(spec, archive, compression, None)
}

/// [`write_oci_archive_with`] with the image config's `Cmd` set to `cmd`
/// (`None`: `["/bin/sh"]`, what the other test images have).
pub fn write_oci_archive_with_cmd(
    spec: &ImageSpec,
    archive: &Path,
    compression: LayerCompression,
    cmd: Option<&[&str]>,
) -> Result<BuiltImage> {
    let layers = spec.layers.iter().map(Layer::tar).collect::<Result<_>>()?;
    let image = fixtures::ImageSpec {
        arch: oci_arch(),
        compression,
        cmd: cmd.map(|c| c.iter().map(|s| s.to_string()).collect()),
        ..fixtures::ImageSpec::new(layers)
    };
    let mut layout = fixtures::OciLayout::default();
    let built = layout.add_image(&image);
    layout.tag_as(
        &spec.name,
        &spec.tag,
        built.manifest,
        built.manifest_size,
        false,
    );
    std::fs::write(archive, layout.to_tar())
        .with_context(|| format!("writing {}", archive.display()))?;
    let strings = |ds: &[Digest]| ds.iter().map(Digest::to_string).collect();
    Ok(BuiltImage {
        archive: archive.to_path_buf(),
        name: spec.name.clone(),
        tag: spec.tag.clone(),
        manifest_digest: built.manifest.to_string(),
        config_digest: built.config.to_string(),
        layer_digests: strings(&built.layers),
        diff_ids: strings(&image.diff_ids()),
        chain_ids: strings(&image.chain_ids()),
    })
}

/// Writes `spec` as an OCI image layout tar at `archive` for another
/// platform only (`linux/<arch>[/<variant>]`): an image index naming one
/// manifest, as `ctr export --platform linux/arm64` of a multi-arch image
/// on a node of that platform holds. Returns the index digest and the
/// manifest's.
pub fn write_foreign_platform_archive(
    spec: &ImageSpec,
    archive: &Path,
    arch: &'static str,
    variant: Option<&'static str>,
) -> Result<(String, String)> {
    let layers = spec.layers.iter().map(Layer::tar).collect::<Result<_>>()?;
    let image = fixtures::ImageSpec {
        arch,
        variant,
        ..fixtures::ImageSpec::new(layers)
    };
    let mut layout = fixtures::OciLayout::default();
    let built = layout.add_image(&image);
    let (index, size) = layout.add_index(&[(&image, &built)]);
    layout.tag_as(&spec.name, &spec.tag, index, size, true);
    std::fs::write(archive, layout.to_tar())
        .with_context(|| format!("writing {}", archive.display()))?;
    Ok((index.to_string(), built.manifest.to_string()))
}

/// Writes a copy of the archive `tar` wrapped in `container` next to it
/// (`.tar.gz`, `.tar.zst`, ...) and returns its path; `Tar` returns `tar`
/// itself.
pub fn compress_archive(tar: &Path, container: ArchiveContainer) -> Result<PathBuf> {
    if container == ArchiveContainer::Tar {
        return Ok(tar.to_path_buf());
    }
    let out = tar.with_extension(container.extension());
    let bytes = std::fs::read(tar).with_context(|| format!("reading {}", tar.display()))?;
    std::fs::write(&out, fixtures::wrap(&bytes, container))
        .with_context(|| format!("writing {}", out.display()))?;
    Ok(out)
}

/// A base layer: `/bin/busybox` (static) with applet symlinks, `/etc`,
/// `/tmp`, plus `extra` entries.
pub fn busybox_layer(extra: Vec<Entry>) -> Result<Layer> {
    let busybox =
        std::fs::read(BUSYBOX).with_context(|| format!("reading {BUSYBOX} (busybox-static)"))?;
    let mut entries = vec![
        Entry::dir("bin"),
        Entry::file_mode("bin/busybox", 0o755, busybox),
        Entry::dir("etc"),
        Entry::file("etc/passwd", "root:x:0:0:root:/:/bin/sh\n"),
        Entry::file("etc/group", "root:x:0:\n"),
        Entry::Dir {
            path: "tmp".to_string(),
            mode: 0o1777,
        },
    ];
    for applet in APPLETS {
        entries.push(Entry::symlink(&format!("bin/{applet}"), "busybox"));
    }
    entries.extend(extra);
    Ok(Layer::new(entries))
}

/// The command of [`write_pause_archive`] images: what the sandbox
/// ("pause") container of every CRI pod runs. It sleeps until a signal
/// and exits 0 on SIGTERM, as `registry.k8s.io/pause` does (containerd
/// stops a sandbox with SIGKILL anyway).
pub const PAUSE_CMD: &[&str] = &[
    "/bin/sh",
    "-c",
    "trap 'exit 0' TERM INT; sleep 2147483647 & wait",
];

/// The layer of a pause-like image: [`busybox_layer`] plus `marker` in
/// `/pause-marker`, so that it shares no layer with other test images.
/// Archive it with `Cmd` [`PAUSE_CMD`] ([`write_pause_archive`], or
/// [`write_oci_archive_with_cmd`]) and set it as containerd's sandbox image
/// with [`crate::containerd::ContainerdOptions::sandbox_image`].
pub fn pause_layers(marker: &str) -> Result<Vec<Layer>> {
    Ok(vec![busybox_layer(vec![Entry::file(
        "pause-marker",
        format!("{marker}\n"),
    )])?])
}

/// Writes a pause-like image ([`pause_layers`], `Cmd` [`PAUSE_CMD`])
/// named `name` (`org.opencontainers.image.ref.name` `tag`) at `archive`.
pub fn write_pause_archive(
    name: &str,
    tag: &str,
    marker: &str,
    archive: &Path,
) -> Result<BuiltImage> {
    let spec = ImageSpec {
        name: name.to_string(),
        tag: tag.to_string(),
        layers: pause_layers(marker)?,
    };
    write_oci_archive_with_cmd(&spec, archive, LayerCompression::Gzip, Some(PAUSE_CMD))
}

/// An image of [`sample_layers`] named `<host>/library/<name>:<tag>`.
pub fn sample_spec(host: &str, name: &str, tag: &str) -> Result<ImageSpec> {
    Ok(ImageSpec {
        name: format!("{host}/library/{name}:{tag}"),
        tag: tag.to_string(),
        layers: sample_layers(&format!("{name}:{tag}"))?,
    })
}

/// The two-layer image the tests run: hardlinks, symlinks, a setuid file
/// in the base; a whiteout, an opaque directory and a new file on top.
/// `marker` goes into a file of the base layer, so that images with
/// different markers share no layer.
pub fn sample_layers(marker: &str) -> Result<Vec<Layer>> {
    let base = busybox_layer(vec![
        Entry::dir("data"),
        Entry::file("data/marker", format!("{marker}\n")),
        Entry::file("data/file", "hello airgap\n"),
        Entry::hardlink("data/hardlink", "data/file"),
        Entry::symlink("data/symlink", "file"),
        Entry::symlink("data/abs-symlink", "/data/file"),
        Entry::file("data/gone", "removed by the next layer\n"),
        Entry::dir("data/opq"),
        Entry::file("data/opq/old", "hidden by the opaque marker\n"),
        Entry::file_mode("data/setuid", 0o4755, "#!/bin/sh\n"),
        Entry::owned("data/owned", 1000, 2000, 0o640, "owned\n"),
        Entry::pax(&[(XATTR_PAX_KEY, XATTR_VALUE)]),
        Entry::file("data/xattr", "with an extended attribute\n"),
        Entry::char_device("data/null", 1, 3),
        Entry::Dir {
            path: "data/sticky".to_string(),
            mode: 0o1777,
        },
    ])?;
    let top = Layer::new(vec![
        Entry::dir("data"),
        Entry::whiteout("data/gone"),
        Entry::dir("data/opq"),
        Entry::opaque("data/opq"),
        Entry::file("data/opq/new", "new\n"),
        Entry::file("data/added", "layer two\n"),
    ]);
    Ok(vec![base, top])
}

/// `len` bytes that no compressor shrinks, the same for the same `seed`
/// (xorshift64*): the content of a large layer whose transfer takes a
/// while, whatever the layer's compression.
pub fn incompressible(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// The extended attribute `data/xattr` of [`sample_layers`] carries.
pub const XATTR_NAME: &str = "user.airgap";
pub const XATTR_VALUE: &[u8] = b"kept";
const XATTR_PAX_KEY: &str = "SCHILY.xattr.user.airgap";

/// The shell script run in containers of [`sample_layers`] images, and the
/// output it must print when the layers were applied right.
pub const SAMPLE_CHECK: &str = "cat /data/file /data/hardlink /data/symlink /data/abs-symlink; \
     readlink /data/symlink; \
     if test -e /data/gone; then echo gone-present; else echo gone-ok; fi; \
     ls /data/opq; \
     cat /data/added; \
     stat -c '%h %a' /data/file /data/setuid; \
     test \"$(stat -c %i /data/file)\" = \"$(stat -c %i /data/hardlink)\" && echo same-inode; \
     stat -c '%u:%g %a' /data/owned; \
     stat -c '%F %t,%T' /data/null; \
     stat -c %a /data/sticky; \
     stat -c %Y /data/file /data/owned /bin/busybox";

pub const SAMPLE_EXPECTED: &str = "hello airgap\nhello airgap\nhello airgap\nhello airgap\n\
     file\n\
     gone-ok\n\
     new\n\
     layer two\n\
     2 644\n1 4755\n\
     same-inode\n\
     1000:2000 640\n\
     character special file 1,3\n\
     1777\n\
     1700000000\n1700000000\n1700000000\n";

/// True when `out` is a strict beginning of [`SAMPLE_EXPECTED`] cut at a
/// line end: what `ctr run` printed when it lost the end of the output,
/// never what a wrong layer produces (a missing or different line).
pub fn is_truncated_sample_output(out: &str) -> bool {
    out.len() < SAMPLE_EXPECTED.len()
        && SAMPLE_EXPECTED.starts_with(out)
        && (out.is_empty() || out.ends_with('\n'))
}

/// Runs [`SAMPLE_CHECK`] through `run` (given the attempt number, from 0)
/// until its output is not a truncated [`SAMPLE_EXPECTED`], at most three
/// times: `ctr run` now and then loses the end of a short-lived container's
/// output (more often on a loaded machine), and the whole output must come.
/// A wrong output (a line missing or different) is returned at once.
pub fn run_sample_check(
    image: &str,
    mut run: impl FnMut(usize) -> anyhow::Result<String>,
) -> anyhow::Result<String> {
    let mut out = run(0)?;
    for attempt in 1..3 {
        if !is_truncated_sample_output(&out) {
            break;
        }
        eprintln!("warning: `ctr run` output of {image} cut short ({out:?}); running it again");
        out = run(attempt)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncated_output_is_a_prefix_at_a_line_end() {
        assert!(is_truncated_sample_output("hello airgap\n"));
        assert!(is_truncated_sample_output(""));
        assert!(!is_truncated_sample_output(SAMPLE_EXPECTED));
        assert!(!is_truncated_sample_output("hello air"));
        assert!(!is_truncated_sample_output("hello airgap\nfile\n"));
    }

    #[test]
    fn incompressible_bytes_are_seeded() {
        let a = incompressible(1001, 7);
        assert_eq!(a.len(), 1001);
        assert_eq!(a, incompressible(1001, 7));
        assert_ne!(a, incompressible(1001, 8));
        // Every byte value, none much more often than the others.
        let mut counts = [0usize; 256];
        for b in incompressible(256 * 1024, 7) {
            counts[b as usize] += 1;
        }
        assert!(
            counts.iter().all(|&n| (768..1280).contains(&n)),
            "{counts:?}"
        );
    }

    #[test]
    fn pax_records_count_their_own_length() {
        assert_eq!(pax_record("a", b"b"), b"6 a=b\n");
        let long = pax_record("k", &[b'v'; 100]);
        assert_eq!(long.len(), 107);
        assert!(long.starts_with(b"107 k="));
    }

    #[test]
    fn writes_an_oci_layout_tar() {
        let dir = tempfile::tempdir().unwrap();
        let spec = ImageSpec {
            name: "127.0.0.1:1/library/t:v1".into(),
            tag: "v1".into(),
            layers: vec![Layer::new(vec![
                Entry::dir("a"),
                Entry::file("a/f", "x"),
                Entry::whiteout("a/g"),
                Entry::raw("../escape", EntryType::Regular, "", "y"),
            ])],
        };
        let built = write_oci_archive(&spec, &dir.path().join("t.tar")).unwrap();
        let mut names = Vec::new();
        let mut archive = tar::Archive::new(std::fs::File::open(&built.archive).unwrap());
        for entry in archive.entries().unwrap() {
            names.push(entry.unwrap().path().unwrap().display().to_string());
        }
        // As `ctr export` writes it: the layout marker, the blobs (config,
        // manifest, one layer), the index last.
        assert_eq!(names[0], "oci-layout");
        assert_eq!(names.last().unwrap(), "index.json");
        assert_eq!(names.len(), 2 + 3);
        let layer = spec.layers[0].tar().unwrap();
        let mut layer = tar::Archive::new(layer.as_slice());
        let names: Vec<String> = layer
            .entries()
            .unwrap()
            .map(|e| String::from_utf8_lossy(&e.unwrap().path_bytes()).into_owned())
            .collect();
        assert_eq!(names, ["a", "a/f", "a/.wh.g", "../escape"]);
    }
}

//! `pack`: writes an airgap archive built for random access: an OCI image
//! layout tar in zstd's seekable format, with frame boundaries at blob
//! boundaries, so the daemon decompresses any blob on its own. The output is
//! still an ordinary `.tar.zst` for `zstd -d`, `tar`, `ctr images import` and
//! k3s's images directory.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use crate::catalog::reference::Reference;
use crate::catalog::seekable::SeekableWriter;
use crate::catalog::{Catalog, CatalogOptions};
use crate::digest::Digest;
use crate::labels;

pub mod delta;
mod fetch;

/// What to pack.
#[derive(Clone, Debug, Default)]
pub struct PackOptions {
    pub output: PathBuf,
    /// `os/arch[/variant]`; empty keeps every platform.
    pub platforms: Vec<String>,
    /// Image references.
    pub refs: Vec<String>,
    /// Where the images are: archives of any kind, directories of archives,
    /// OCI image layout directories.
    pub sources: Vec<PathBuf>,
    /// zstd level.
    pub level: i32,
    /// Largest frame, in decompressed bytes.
    pub frame_size: usize,
    /// Compression threads.
    pub threads: usize,
    /// Registries asked, in order, for the images the sources lack (the
    /// daemon's `[[upstream]]` tables, or anonymous endpoints).
    pub registries: Vec<crate::config::UpstreamConfig>,
    /// Signs every image packed (`--sign`): a cosign signature image per
    /// image, under its repository's `sha256-<hex>.sig` tag (see `trust`).
    pub sign: Option<crate::trust::Signer>,
    /// Pack a delta: leave out the layers these archives hold ...
    pub bases: Vec<PathBuf>,
    /// ... or the bundles of these inventories (`images --inventory`).
    pub base_inventories: Vec<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum PackError {
    #[error("not found in the sources:\n  {}", .0.join("\n  "))]
    Missing(Vec<String>),
    #[error("{0}")]
    BadReference(#[from] crate::catalog::reference::ReferenceError),
    #[error("nothing to pack: give image references or an image list")]
    Nothing,
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("reading blob {digest}: {source}")]
    Blob { digest: Digest, source: io::Error },
    #[error(transparent)]
    Open(#[from] crate::catalog::BlobError),
    #[error(transparent)]
    Catalog(#[from] crate::catalog::CatalogError),
    #[error("registry: {0}")]
    Registry(#[from] crate::registry::UpstreamError),
    #[error("registry: manifest {digest} is not JSON: {source}")]
    RegistryManifest {
        digest: Digest,
        source: serde_json::Error,
    },
    #[error("registry: blob {digest}: {source}")]
    RegistryBlob { digest: Digest, source: io::Error },
    #[error("base {path}: {reason}")]
    Base { path: PathBuf, reason: String },
    #[error(transparent)]
    Inventory(#[from] crate::catalog::bundle::InventoryError),
}

/// What went into the archive.
#[derive(Debug, Default, Clone)]
pub struct PackSummary {
    pub images: Vec<(String, Vec<String>)>,
    pub blobs: usize,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Signature images written (`--sign`).
    pub signatures: usize,
    /// The archive's bundle ID.
    pub bundle: Option<Digest>,
    /// What a delta left out to its bases.
    pub left_out: delta::LeftOut,
}

/// Reads an image list: one reference per line, `#` comments, and optional
/// `[group]` sections; `groups` selects sections (empty: all). Lines before
/// any section belong to every selection.
pub fn parse_image_list(text: &str, groups: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    let mut in_selected = true;
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            in_selected = groups.is_empty() || groups.iter().any(|g| g == name.trim());
            continue;
        }
        if in_selected {
            out.push(line.to_string());
        }
    }
    out
}

/// `os/arch[/variant]` of an index entry's `platform`.
fn descriptor_platform(desc: &Value) -> String {
    let p = &desc["platform"];
    let os_arch = format!(
        "{}/{}",
        p["os"].as_str().unwrap_or(""),
        p["architecture"].as_str().unwrap_or("")
    );
    match p["variant"].as_str() {
        Some(v) => format!("{os_arch}/{v}"),
        None => os_arch,
    }
}

/// `os/arch[/variant]` of a manifest matches a requested platform: exactly,
/// or on os/arch when the request names no variant.
fn platform_matches(have: &str, want: &[String]) -> bool {
    want.is_empty()
        || want.iter().any(|w| {
            have == w || (w.matches('/').count() == 1 && have.starts_with(&format!("{w}/")))
        })
}

/// A source: archives are used as they are; an OCI image layout directory is
/// tarred into `scratch` first, so the catalog reads it like any archive.
fn source_path(src: &Path, scratch: &Path, n: usize) -> Result<PathBuf, PackError> {
    if !src.join("oci-layout").is_file() {
        return Ok(src.to_path_buf());
    }
    let out = scratch.join(format!("layout-{n}.tar"));
    let io_err = |source| PackError::Io {
        what: "tarring OCI layout",
        path: src.to_path_buf(),
        source,
    };
    let file = File::create(&out).map_err(io_err)?;
    let mut b = tar::Builder::new(BufWriter::new(file));
    b.follow_symlinks(false);
    b.append_dir_all(".", src).map_err(io_err)?;
    b.into_inner().and_then(|mut w| w.flush()).map_err(io_err)?;
    Ok(out)
}

/// Every blob an image needs (documents first, then layers), filtered by
/// platform; problems are pushed to `missing`.
fn image_blobs(
    catalog: &Catalog,
    name: &str,
    top: Digest,
    platforms: &[String],
    missing: &mut Vec<String>,
) -> (Vec<Digest>, Vec<String>) {
    let mut blobs = vec![top];
    let mut found_platforms = Vec::new();
    let Some(doc) = catalog.document(&top) else {
        missing.push(format!("{name}: manifest {top}"));
        return (blobs, found_platforms);
    };
    let doc: Value = serde_json::from_slice(&doc).unwrap_or(Value::Null);
    let manifests: Vec<(Digest, Value)> = match doc["manifests"].as_array() {
        Some(children) => children
            .iter()
            .filter_map(|c| {
                let d: Digest = c["digest"].as_str()?.parse().ok()?;
                let plat = descriptor_platform(c);
                if !platform_matches(&plat, platforms) {
                    return None;
                }
                let m = catalog.document(&d)?;
                blobs.push(d);
                found_platforms.push(plat);
                Some((d, serde_json::from_slice(&m).unwrap_or(Value::Null)))
            })
            .collect(),
        None => {
            let plat = catalog
                .resolve(name)
                .and_then(|i| i.entry.platforms.first().cloned())
                .unwrap_or_default();
            if platform_matches(&plat, platforms) {
                found_platforms.push(plat);
                vec![(top, doc.clone())]
            } else {
                Vec::new()
            }
        }
    };
    if manifests.is_empty() {
        missing.push(format!("{name}: no manifest for {}", platforms.join(", ")));
    }
    for (md, m) in &manifests {
        let refs =
            std::iter::once(&m["config"]).chain(m["layers"].as_array().into_iter().flatten());
        for desc in refs {
            match desc["digest"]
                .as_str()
                .and_then(|d| d.parse::<Digest>().ok())
            {
                Some(d) if catalog.blob_size(&d).is_some() => blobs.push(d),
                Some(d) => missing.push(format!("{name}: blob {d} of manifest {md}")),
                None => missing.push(format!("{name}: manifest {md} has a bad descriptor")),
            }
        }
    }
    (blobs, found_platforms)
}

/// A tar header for a regular file.
fn tar_header(path: &str, size: u64) -> io::Result<tar::Header> {
    let mut h = tar::Header::new_ustar();
    h.set_path(path)?;
    h.set_size(size);
    h.set_mode(0o644);
    h.set_mtime(0);
    h.set_cksum();
    Ok(h)
}

fn pad(w: &mut impl Write, size: u64) -> io::Result<()> {
    let rem = (512 - size % 512) % 512;
    w.write_all(&[0u8; 512][..rem as usize])
}

/// Packs the images; the output appears only when complete.
pub fn pack(opts: &PackOptions, progress: &dyn Fn(u64, u64)) -> Result<PackSummary, PackError> {
    if opts.refs.is_empty() {
        return Err(PackError::Nothing);
    }
    let bases = delta::Bases::load(&opts.bases, &opts.base_inventories)?;
    let scratch = tempfile::tempdir().map_err(|source| PackError::Io {
        what: "creating a scratch dir in",
        path: std::env::temp_dir(),
        source,
    })?;
    let mut sources = opts
        .sources
        .iter()
        .enumerate()
        .map(|(i, s)| source_path(s, scratch.path(), i))
        .collect::<Result<Vec<_>, _>>()?;
    let open = |dirs: Vec<PathBuf>| -> Result<Arc<Catalog>, PackError> {
        let catalog = Catalog::open(CatalogOptions {
            dirs,
            settle: Duration::ZERO,
            cache_bytes: 1 << 30,
            ..Default::default()
        })?;
        for (path, reason) in catalog.broken() {
            tracing::warn!(source = %path.display(), %reason, "source unusable");
        }
        Ok(catalog)
    };
    let mut catalog = open(sources.clone())?;
    // What the archives lack comes from the registries, through an OCI
    // layout directory packed like any other source.
    let lacking: Vec<Reference> = opts
        .refs
        .iter()
        .map(|r| Reference::parse(r))
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .filter(|r| catalog.resolve(&r.to_string()).is_none())
        .collect();
    if !lacking.is_empty() && !opts.registries.is_empty() {
        let layout = scratch.path().join("from-registries");
        fetch::fetch_layout(&opts.registries, &lacking, &opts.platforms, &layout)?;
        sources.push(source_path(&layout, scratch.path(), sources.len())?);
        catalog = open(sources)?;
    }

    let mut missing = Vec::new();
    let mut images = Vec::new();
    let mut order: Vec<Digest> = Vec::new();
    let mut seen = BTreeSet::new();
    for r in &opts.refs {
        let name = Reference::parse(r)?.to_string();
        let Some(info) = catalog.resolve(&name) else {
            missing.push(r.clone());
            continue;
        };
        let (blobs, platforms) = image_blobs(
            &catalog,
            &name,
            info.entry.digest,
            &opts.platforms,
            &mut missing,
        );
        for d in blobs {
            if seen.insert(d) {
                order.push(d);
            }
        }
        images.push((name, info.entry.digest, platforms));
    }
    if !missing.is_empty() {
        return Err(PackError::Missing(missing));
    }
    let (order, left_out) = bases.split(
        order,
        |d| catalog.document(d).is_some(),
        |d| catalog.blob_size(d).unwrap_or(0),
    );

    let sizes: Vec<u64> = order
        .iter()
        .map(|d| catalog.blob_size(d).unwrap_or(0))
        .collect();
    let total: u64 = sizes.iter().sum();
    let out_dir = opts
        .output
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let io_out = |source| PackError::Io {
        what: "writing",
        path: opts.output.clone(),
        source,
    };
    let tmp = tempfile::NamedTempFile::new_in(out_dir).map_err(io_out)?;
    let mut w = SeekableWriter::new(
        BufWriter::new(tmp.reopen().map_err(io_out)?),
        opts.level,
        opts.frame_size,
        opts.threads,
    );
    let layout = br#"{"imageLayoutVersion":"1.0.0"}"#;
    let write_file = |w: &mut SeekableWriter<_>, path: &str, data: &[u8]| -> io::Result<()> {
        w.write_all(tar_header(path, data.len() as u64)?.as_bytes())?;
        w.write_all(data)?;
        pad(w, data.len() as u64)
    };
    write_file(&mut w, "oci-layout", layout).map_err(io_out)?;
    let mut done = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    for (d, size) in order.iter().zip(&sizes) {
        let header = tar_header(&format!("blobs/sha256/{}", d.hex()), *size).map_err(io_out)?;
        w.write_all(header.as_bytes()).map_err(io_out)?;
        w.cut().map_err(io_out)?;
        let mut r = catalog.open_blob(d)?;
        let mut copied = 0u64;
        loop {
            let n = r
                .read(&mut buf)
                .map_err(|source| PackError::Blob { digest: *d, source })?;
            if n == 0 {
                break;
            }
            w.write_all(&buf[..n]).map_err(io_out)?;
            copied += n as u64;
            progress(done + copied, total);
        }
        w.cut().map_err(io_out)?;
        pad(&mut w, *size).map_err(io_out)?;
        done += size;
    }
    // The bundle ID covers every blob written, signatures included: the
    // node recomputes it from what the archive holds.
    let mut written = order.clone();
    let signatures = signature_images(opts.sign.as_ref(), &images);
    for (d, bytes) in signatures.iter().flat_map(|s| &s.blobs) {
        if seen.insert(*d) {
            written.push(*d);
            let header = tar_header(&format!("blobs/sha256/{}", d.hex()), bytes.len() as u64)
                .map_err(io_out)?;
            w.write_all(header.as_bytes()).map_err(io_out)?;
            w.cut().map_err(io_out)?;
            w.write_all(bytes).map_err(io_out)?;
            w.cut().map_err(io_out)?;
            pad(&mut w, bytes.len() as u64).map_err(io_out)?;
        }
    }
    let mut manifests: Vec<Value> = images
        .iter()
        .map(|(name, digest, _)| {
            let doc = catalog.document(digest).unwrap_or_default();
            let v: Value = serde_json::from_slice(&doc).unwrap_or(Value::Null);
            let media_type = v["mediaType"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| {
                    if v["manifests"].is_array() {
                        crate::catalog::index::MEDIA_OCI_INDEX.into()
                    } else {
                        crate::catalog::index::MEDIA_OCI_MANIFEST.into()
                    }
                });
            let tag = name.rsplit_once(':').map(|(_, t)| t).unwrap_or("latest");
            json!({
                "mediaType": media_type,
                "digest": digest.to_string(),
                "size": doc.len(),
                "annotations": {
                    labels::CONTAINERD_IMAGE_NAME: name,
                    labels::OCI_REF_NAME: tag,
                },
            })
        })
        .collect();
    manifests.extend(signatures.iter().map(|s| {
        json!({
            "mediaType": crate::catalog::index::MEDIA_OCI_MANIFEST,
            "digest": s.manifest_digest().to_string(),
            "size": s.manifest.len(),
            "annotations": {
                labels::CONTAINERD_IMAGE_NAME: s.name,
                labels::OCI_REF_NAME: s.name.rsplit_once(':').map_or("", |(_, t)| t),
            },
        })
    }));
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": crate::catalog::index::MEDIA_OCI_INDEX,
        "manifests": manifests,
        "annotations": delta::annotations(&written, &opts.output, &left_out.bases),
    }))
    .expect("JSON values serialize");
    write_file(&mut w, "index.json", &index).map_err(io_out)?;
    w.write_all(&[0u8; 1024]).map_err(io_out)?;
    let bytes_out = {
        let inner = w.finish().map_err(io_out)?;
        inner
            .into_inner()
            .map_err(|e| io_out(e.into_error()))?
            .sync_all()
            .map_err(io_out)?;
        std::fs::metadata(tmp.path()).map_err(io_out)?.len()
    };
    tmp.persist(&opts.output).map_err(|e| io_out(e.error))?;
    Ok(PackSummary {
        images: images.into_iter().map(|(n, _, p)| (n, p)).collect(),
        blobs: order.len(),
        bytes_in: total,
        bytes_out,
        signatures: signatures.len(),
        bundle: Some(crate::catalog::bundle::bundle_id(&written)),
        left_out,
    })
}

/// The signature images of `images` (one per repository and digest), when
/// signing.
fn signature_images(
    signer: Option<&crate::trust::Signer>,
    images: &[(String, Digest, Vec<String>)],
) -> Vec<crate::trust::cosign::SignatureImage> {
    let Some(signer) = signer else {
        return Vec::new();
    };
    let mut names = BTreeSet::new();
    images
        .iter()
        .map(|(name, digest, _)| signer.sign(name, digest))
        .filter(|s| names.insert(s.name.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::verify::verify_archive;
    use crate::catalog::LayerSource;
    use crate::testsupport::*;

    fn fixture_dir() -> (tempfile::TempDir, ImageSpec, ImageSpec, Digest) {
        let dir = tempfile::tempdir().unwrap();
        let amd = ImageSpec::new(vec![
            layer_tar(&[("bin/busybox", &busybox_bytes())]),
            layer_tar(&[("etc/hello", b"hi")]),
        ]);
        let arm = ImageSpec {
            arch: "arm64",
            variant: Some("v8"),
            ..ImageSpec::new(vec![layer_tar(&[("a", b"arm")])])
        };
        let mut l = OciLayout::default();
        let ba = l.add_image(&amd);
        let bb = l.add_image(&arm);
        let (idx, n) = l.add_index(&[(&amd, &ba), (&arm, &bb)]);
        l.tag("example.com/app:1", idx, n, true);
        std::fs::write(dir.path().join("oci.tar.gz"), wrap(&l.to_tar(), Wrap::Gzip)).unwrap();
        let saved = ImageSpec::new(vec![layer_tar(&[("s", b"saved")])]);
        std::fs::write(
            dir.path().join("save.tar"),
            docker_save(&saved, &["tool:2"]),
        )
        .unwrap();
        (dir, amd, arm, idx)
    }

    fn opts(dir: &Path, out: &Path, refs: &[&str], platforms: &[&str]) -> PackOptions {
        PackOptions {
            output: out.to_path_buf(),
            platforms: platforms.iter().map(|s| s.to_string()).collect(),
            refs: refs.iter().map(|s| s.to_string()).collect(),
            sources: vec![dir.to_path_buf()],
            level: 3,
            frame_size: 64 * 1024,
            threads: 2,
            registries: Vec::new(),
            sign: None,
            bases: Vec::new(),
            base_inventories: Vec::new(),
        }
    }

    #[test]
    fn round_trip_keeps_digests_and_is_seekable() {
        let (src, amd, arm, idx) = fixture_dir();
        let out_dir = tempfile::tempdir().unwrap();
        let out = out_dir.path().join("bundle.tar.zst");
        let summary = pack(
            &opts(src.path(), &out, &["example.com/app:1", "tool:2"], &[]),
            &|_, _| {},
        )
        .unwrap();
        assert_eq!(summary.images.len(), 2);

        let c = Catalog::open(CatalogOptions {
            dirs: vec![out_dir.path().into()],
            settle: Duration::ZERO,
            ..Default::default()
        })
        .unwrap();
        assert!(c.broken().is_empty(), "{:?}", c.broken());
        let a = &c.archives()[0];
        assert_eq!(
            a.index.container,
            crate::catalog::container::Container::SeekableZstd
        );
        let app = c.resolve("example.com/app:1").unwrap();
        assert_eq!(app.entry.digest, idx, "index digest kept");
        assert_eq!(app.entry.platforms, vec!["linux/amd64", "linux/arm64/v8"]);
        assert!(c.resolve("docker.io/library/tool:2").is_some());
        assert!(c.layer(&amd.chain_ids()[1]).is_some() && c.layer(&arm.chain_ids()[0]).is_some());
        let failures = verify_archive(&a.index, &File::open(&out).unwrap(), &mut |_| {});
        assert!(failures.is_empty(), "{failures:?}");
        // Every blob starts a frame: each decompresses on its own.
        let table = a.index.seek_table.as_ref().unwrap();
        for loc in a.index.blobs.values() {
            let f = table.frame_at(loc.offset).unwrap();
            assert_eq!(table.frames[f].decompressed_offset, loc.offset);
        }
        // And it is still a plain .tar.zst.
        let tar = zstd::decode_all(File::open(&out).unwrap()).unwrap();
        let names: Vec<String> = tar::Archive::new(&tar[..])
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        assert!(
            names.contains(&"index.json".to_string()) && names.contains(&"oci-layout".to_string())
        );
    }

    #[test]
    fn platform_filter_keeps_the_index_and_drops_other_platforms() {
        let (src, amd, arm, idx) = fixture_dir();
        let out_dir = tempfile::tempdir().unwrap();
        let out = out_dir.path().join("amd.tar.zst");
        pack(
            &opts(src.path(), &out, &["example.com/app:1"], &["linux/amd64"]),
            &|_, _| {},
        )
        .unwrap();
        let c = Catalog::open(CatalogOptions {
            dirs: vec![out],
            settle: Duration::ZERO,
            ..Default::default()
        })
        .unwrap();
        let app = c.resolve("example.com/app:1").unwrap();
        assert_eq!(app.entry.digest, idx);
        assert_eq!(app.entry.platforms, vec!["linux/amd64"]);
        assert!(c.layer(&amd.chain_ids()[0]).is_some());
        assert!(c.layer(&arm.chain_ids()[0]).is_none());
        // "linux/arm64" matches the v8 variant.
        assert!(platform_matches("linux/arm64/v8", &["linux/arm64".into()]));
        assert!(!platform_matches(
            "linux/arm64/v8",
            &["linux/arm64/v7".into()]
        ));
    }

    #[test]
    fn every_missing_reference_is_named_and_nothing_is_written() {
        let (src, _, _, _) = fixture_dir();
        let out_dir = tempfile::tempdir().unwrap();
        let out = out_dir.path().join("x.tar.zst");
        let err = pack(
            &opts(
                src.path(),
                &out,
                &["example.com/app:1", "nope:1", "quay.io/also/missing:2"],
                &[],
            ),
            &|_, _| {},
        )
        .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("nope:1") && msg.contains("quay.io/also/missing:2"),
            "{msg}"
        );
        let err = pack(
            &opts(src.path(), &out, &["tool:2"], &["linux/s390x"]),
            &|_, _| {},
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("no manifest for linux/s390x"),
            "{err}"
        );
        assert_eq!(
            std::fs::read_dir(out_dir.path()).unwrap().count(),
            0,
            "no partial output"
        );
    }

    #[test]
    fn image_lists_have_comments_and_groups() {
        let text = "# k3s images\nbusybox:1.36\n\n[core]\nrancher/pause:3.6  # the pause image\n[addons]\ntraefik:2.10\n";
        assert_eq!(
            parse_image_list(text, &[]),
            vec!["busybox:1.36", "rancher/pause:3.6", "traefik:2.10"]
        );
        assert_eq!(
            parse_image_list(text, &["core".into()]),
            vec!["busybox:1.36", "rancher/pause:3.6"]
        );
    }
}

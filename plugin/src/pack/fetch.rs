//! `pack --from https://registry`: the images the archives lack, fetched
//! into an OCI image layout directory (digest-checked by the upstream
//! client), which `pack` then reads like any other source.

use std::io::Write;
use std::path::Path;

use futures::StreamExt;
use serde_json::{json, Value};

use super::{descriptor_platform, platform_matches, PackError};
use crate::catalog::reference::Reference;
use crate::config::UpstreamConfig;
use crate::digest::Digest;
use crate::labels;
use crate::registry::{FetchedManifest, Upstream, Upstreams};

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> PackError + '_ {
    move |source| PackError::Io {
        what: "writing",
        path: path.to_path_buf(),
        source,
    }
}

/// Fetches every reference of `refs` that one of `registries` has (tried in
/// order) into the layout at `dir`. References no registry has are left out:
/// `pack` then names them.
pub fn fetch_layout(
    registries: &[UpstreamConfig],
    refs: &[Reference],
    platforms: &[String],
    dir: &Path,
) -> Result<(), PackError> {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).map_err(io_err(&blobs))?;
    let clients: Vec<Upstreams> = registries
        .iter()
        .map(|c| Upstreams::new(std::slice::from_ref(c)))
        .collect::<Result<_, _>>()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(io_err(dir))?;
    let mut index = Vec::new();
    runtime.block_on(async {
        for r in refs {
            for upstreams in &clients {
                let Some(up) = upstreams.for_registry(&r.domain) else {
                    continue;
                };
                if let Some(entry) = fetch_image(up, r, platforms, &blobs).await? {
                    index.push(entry);
                    break;
                }
            }
        }
        Ok::<(), PackError>(())
    })?;
    let index = json!({
        "schemaVersion": 2,
        "mediaType": crate::catalog::index::MEDIA_OCI_INDEX,
        "manifests": index,
    });
    std::fs::write(
        dir.join("index.json"),
        serde_json::to_vec(&index).expect("JSON"),
    )
    .map_err(io_err(dir))?;
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)
        .map_err(io_err(dir))?;
    Ok(())
}

/// One image: its manifest (and the chosen platforms' manifests when it is
/// an index), configs and layers. Returns its `index.json` entry, or `None`
/// if this registry does not have it.
async fn fetch_image(
    up: &Upstream,
    r: &Reference,
    platforms: &[String],
    blobs: &Path,
) -> Result<Option<Value>, PackError> {
    let Some(top) = up.manifest(r, None).await? else {
        return Ok(None);
    };
    write_blob(blobs, &top.digest, &top.bytes)?;
    let doc = manifest_json(&top)?;
    let mut manifests = Vec::new();
    match doc["manifests"].as_array() {
        Some(children) => {
            for c in children {
                let plat = descriptor_platform(c);
                let Some(d) = c["digest"].as_str().and_then(|d| d.parse::<Digest>().ok()) else {
                    continue;
                };
                if !platform_matches(&plat, platforms) {
                    continue;
                }
                let child = Reference {
                    digest: Some(d),
                    tag: None,
                    ..r.clone()
                };
                if let Some(m) = up.manifest(&child, None).await? {
                    write_blob(blobs, &m.digest, &m.bytes)?;
                    manifests.push(manifest_json(&m)?);
                }
            }
        }
        None => manifests.push(doc.clone()),
    }
    for m in &manifests {
        let descs =
            std::iter::once(&m["config"]).chain(m["layers"].as_array().into_iter().flatten());
        for desc in descs {
            let Some(d) = desc["digest"]
                .as_str()
                .and_then(|d| d.parse::<Digest>().ok())
            else {
                continue;
            };
            let path = blobs.join(d.hex());
            if path.exists() {
                continue;
            }
            let Some(blob) = up.blob(r, &d, None).await? else {
                continue; // pack names what is missing
            };
            let mut tmp = tempfile::NamedTempFile::new_in(blobs).map_err(io_err(blobs))?;
            let mut body = blob.body;
            while let Some(chunk) = body.next().await {
                let chunk =
                    chunk.map_err(|source| PackError::RegistryBlob { digest: d, source })?;
                tmp.write_all(&chunk).map_err(io_err(&path))?;
            }
            tmp.persist(&path).map_err(|e| io_err(&path)(e.error))?;
        }
    }
    let tag = r.tag.clone().unwrap_or_else(|| "latest".into());
    Ok(Some(json!({
        "mediaType": top.media_type,
        "digest": top.digest.to_string(),
        "size": top.bytes.len(),
        "annotations": {
            labels::CONTAINERD_IMAGE_NAME: r.to_string(),
            labels::OCI_REF_NAME: tag,
        },
    })))
}

fn manifest_json(m: &FetchedManifest) -> Result<Value, PackError> {
    serde_json::from_slice(&m.bytes).map_err(|source| PackError::RegistryManifest {
        digest: m.digest,
        source,
    })
}

fn write_blob(blobs: &Path, digest: &Digest, bytes: &[u8]) -> Result<(), PackError> {
    let path = blobs.join(digest.hex());
    std::fs::write(&path, bytes).map_err(io_err(&path))
}

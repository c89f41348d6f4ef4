//! OCI image layouts: index.json, followed through nested indexes to the
//! platform manifests.

use std::collections::BTreeMap;

use bytes::Bytes;

use super::model::{parse_json, Descriptor, Document, Platform};
use super::resolve::{json_text, Resolver, Summary};
use super::{ImageError, ImageResult, IndexError, MAX_DEPTH, MEDIA_OCI_INDEX, MEDIA_OCI_MANIFEST};
use crate::catalog::reference::Reference;
use crate::digest::Digest;
use crate::labels;

impl Resolver<'_> {
    pub(super) fn oci(&mut self) -> Result<(), IndexError> {
        let index: Document = parse_json("index.json", &self.pass.json_files["index.json"])?;
        self.bundle(&index.annotations);
        let tops = index.manifests.unwrap_or_default();
        for (i, desc) in tops.iter().enumerate() {
            let names = image_names(desc);
            let label = names
                .first()
                .cloned()
                .unwrap_or_else(|| format!("index.json manifests[{i}]"));
            let digest = match desc.digest.parse::<Digest>() {
                Ok(d) => d,
                Err(e) => {
                    self.out.problems.push(format!("{label}: {e}"));
                    continue;
                }
            };
            let mut stack = Vec::new();
            match self.visit(desc, digest, None, &mut stack) {
                Ok(summary) => {
                    if names.is_empty() {
                        tracing::debug!(%digest, "index.json entry without an image name: layers indexed, no name listed");
                    }
                    for name in names {
                        self.push_image(
                            name,
                            digest,
                            media_type_of(desc, self.pass.json_blobs.get(&digest)),
                            &summary,
                            false,
                        );
                    }
                }
                Err(e) => self.out.problems.push(format!("{label}: {e}")),
            }
        }
        Ok(())
    }

    /// What index.json's annotations say of the archive as a bundle (`pack`
    /// writes them): its name and, for a delta, the bases it extends.
    fn bundle(&mut self, annotations: &BTreeMap<String, String>) {
        let bundle = &mut self.out.bundle;
        bundle.name = annotations.get(labels::BUNDLE_NAME).cloned();
        if let Some(value) = annotations.get(labels::BUNDLE_BASES) {
            match crate::catalog::bundle::parse_bases(value) {
                Ok(bases) => bundle.bases = bases,
                Err(e) => self.out.problems.push(format!(
                    "index.json: annotation {}: {e}: the bases this delta needs are unknown",
                    labels::BUNDLE_BASES
                )),
            }
        }
    }

    /// Follows a manifest or index; `platform` is what the parent index said.
    fn visit(
        &mut self,
        desc: &Descriptor,
        digest: Digest,
        platform: Option<&Platform>,
        stack: &mut Vec<Digest>,
    ) -> ImageResult<Summary> {
        if stack.len() >= MAX_DEPTH {
            return Err(ImageError::TooDeep { digest });
        }
        if stack.contains(&digest) {
            return Err(ImageError::Cycle { digest });
        }
        let bytes = self
            .pass
            .json_blobs
            .get(&digest)
            .ok_or(ImageError::ManifestMissing { digest })?;
        if desc.size != 0 && desc.size != bytes.len() as u64 {
            return Err(ImageError::SizeMismatch {
                digest,
                declared: desc.size,
                actual: bytes.len() as u64,
            });
        }
        json_text(digest, bytes)?;
        let doc: Document = serde_json::from_slice(bytes)
            .map_err(|source| ImageError::BadManifest { digest, source })?;
        self.out.documents.insert(digest, bytes.clone());
        let mut summary = Summary {
            platforms: Vec::new(),
            manifests: Vec::new(),
            blobs: BTreeMap::from([(digest, bytes.len() as u64)]),
        };
        if let Some(children) = doc.manifests {
            stack.push(digest);
            let mut present = 0;
            for child in &children {
                let child_digest = match child.digest.parse::<Digest>() {
                    Ok(d) => d,
                    Err(source) => {
                        stack.pop();
                        return Err(ImageError::BadDigest {
                            document: digest,
                            field: "manifests[].digest",
                            source,
                        });
                    }
                };
                let p = child.platform.as_ref();
                if p.is_some_and(|p| p.os == "unknown") {
                    continue; // buildx attestation manifests
                }
                if !self.pass.json_blobs.contains_key(&child_digest) {
                    // `ctr export` keeps the whole index but only the local
                    // platform's manifests: not an error.
                    tracing::debug!(index = %digest, manifest = %child_digest, "platform manifest not in the archive");
                    continue;
                }
                let s = match self.visit(child, child_digest, p, stack) {
                    Ok(s) => s,
                    Err(e) => {
                        stack.pop();
                        return Err(e);
                    }
                };
                present += 1;
                summary.platforms.extend(s.platforms);
                summary.manifests.extend(s.manifests);
                summary.blobs.extend(s.blobs);
            }
            stack.pop();
            if present == 0 {
                return Err(ImageError::NoManifestPresent {
                    digest,
                    count: children.len(),
                });
            }
            summary.platforms.sort();
            summary.platforms.dedup();
            return Ok(summary);
        }
        let (config, layers) = match (doc.config, doc.layers) {
            (Some(c), Some(l)) => (c, l),
            _ => {
                return Err(ImageError::NotAManifest {
                    digest,
                    media_type: doc.media_type,
                })
            }
        };
        let config_digest: Digest =
            config
                .digest
                .parse()
                .map_err(|source| ImageError::BadDigest {
                    document: digest,
                    field: "config.digest",
                    source,
                })?;
        let config_bytes =
            self.pass
                .json_blobs
                .get(&config_digest)
                .ok_or(ImageError::ConfigMissing {
                    config: config_digest,
                    manifest: digest,
                })?;
        json_text(config_digest, config_bytes)?;
        self.out
            .documents
            .insert(config_digest, config_bytes.clone());
        summary
            .blobs
            .insert(config_digest, config_bytes.len() as u64);
        let descs: Vec<(Digest, String, u64)> = layers
            .iter()
            .map(|l| {
                Ok((
                    l.digest
                        .parse::<Digest>()
                        .map_err(|source| ImageError::BadDigest {
                            document: digest,
                            field: "layers[].digest",
                            source,
                        })?,
                    l.media_type.clone(),
                    l.size,
                ))
            })
            .collect::<ImageResult<_>>()?;
        let s = self.add_manifest(digest, config_digest, config_bytes, &descs, platform)?;
        summary.platforms = s.platforms;
        summary.manifests = s.manifests;
        summary.blobs.extend(s.blobs);
        Ok(summary)
    }
}

/// The media type of a top-level descriptor, from the document when the
/// descriptor is silent.
fn media_type_of(desc: &Descriptor, doc: Option<&Bytes>) -> String {
    if !desc.media_type.is_empty() {
        return desc.media_type.clone();
    }
    doc.and_then(|b| serde_json::from_slice::<Document>(b).ok())
        .map(|d| {
            if !d.media_type.is_empty() {
                d.media_type
            } else if d.manifests.is_some() {
                MEDIA_OCI_INDEX.to_string()
            } else {
                MEDIA_OCI_MANIFEST.to_string()
            }
        })
        .unwrap_or_default()
}

/// The normalized names an `index.json` entry carries: containerd's full
/// name annotation first, then the OCI ref name when it is a full reference
/// (a bare tag such as `1.36` names nothing on its own).
fn image_names(desc: &Descriptor) -> Vec<String> {
    let mut names = Vec::new();
    for key in [labels::CONTAINERD_IMAGE_NAME, labels::OCI_REF_NAME] {
        let Some(value) = desc.annotations.get(key) else {
            continue;
        };
        if key == labels::OCI_REF_NAME && !value.contains('/') && !value.contains(':') {
            continue;
        }
        match Reference::parse(value) {
            Ok(r) if r.tag.is_some() || r.digest.is_none() => {
                let name = r.to_string();
                if !names.contains(&name) {
                    names.push(name);
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "ignoring an unusable image name"),
        }
    }
    names
}

/// The bundle ID index.json's annotations claim (checked against the
/// contents by the caller).
pub(super) fn recorded_bundle_id(pass: &super::walk::Pass) -> Option<String> {
    let index: Document = serde_json::from_slice(pass.json_files.get("index.json")?).ok()?;
    index.annotations.get(labels::BUNDLE_ID).cloned()
}

//! What both layouts share: the record of images, platform manifests and
//! layers being built.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::model::{ImageConfig, Platform};
use super::walk::{Entry, Pass};
use super::{ArchiveIndex, ImageEntry, ImageError, ImageResult, LayerEntry, ManifestEntry};
use crate::catalog::container::{sniff_compression, Container};
use crate::catalog::Compression;
use crate::digest::Digest;

/// The compression of a layer: its bytes when the archive has them (media
/// types lie, e.g. a gzip layer labelled `tar`), else its media type.
fn layer_compression(media_type: &str, head: Option<&[u8]>) -> Compression {
    match head.and_then(sniff_compression) {
        Some(Container::Gzip) => return Compression::Gzip,
        Some(Container::Zstd) => return Compression::Zstd,
        _ if head.is_some() => return Compression::None,
        _ => {}
    }
    if media_type.contains("gzip") {
        Compression::Gzip
    } else if media_type.contains("zstd") {
        Compression::Zstd
    } else {
        Compression::None
    }
}

pub(super) struct Summary {
    pub(super) platforms: Vec<String>,
    /// Platform manifests, in the order found.
    pub(super) manifests: Vec<Digest>,
    pub(super) blobs: BTreeMap<Digest, u64>,
}

/// Checks that a document the images use is JSON's UTF-8 (RFC 8259): bytes
/// that are not are no JSON document, and are never altered to fit.
pub(super) fn json_text(digest: Digest, bytes: &[u8]) -> ImageResult<&str> {
    std::str::from_utf8(bytes).map_err(|source| ImageError::NotUtf8 { digest, source })
}

/// Turns what the pass collected into the index, one layout's documents at
/// a time (`oci.rs`, `docker_save.rs`).
pub(super) struct Resolver<'a> {
    pub(super) pass: &'a Pass,
    pub(super) out: &'a mut ArchiveIndex,
    pub(super) layer_seen: BTreeSet<Digest>,
    /// docker-save layers, which are files named by path, by digest.
    pub(super) saved_layers: HashMap<Digest, Entry>,
}

impl Resolver<'_> {
    pub(super) fn push_image(
        &mut self,
        name: String,
        digest: Digest,
        media_type: String,
        s: &Summary,
        synthesized: bool,
    ) {
        if self.out.images.iter().any(|i| i.name == name) {
            self.out.problems.push(format!(
                "{name}: named twice in this archive, the first one is used"
            ));
            return;
        }
        self.out.images.push(ImageEntry {
            name,
            digest,
            media_type,
            size: s.blobs.values().sum(),
            platforms: s.platforms.clone(),
            manifests: s.manifests.clone(),
            synthesized,
        });
    }

    /// Records a platform manifest and its layers.
    pub(super) fn add_manifest(
        &mut self,
        digest: Digest,
        config_digest: Digest,
        config_bytes: &[u8],
        layers: &[(Digest, String, u64)],
        platform: Option<&Platform>,
    ) -> ImageResult<Summary> {
        let config: ImageConfig =
            serde_json::from_slice(config_bytes).map_err(|source| ImageError::BadConfig {
                digest: config_digest,
                source,
            })?;
        let diff_ids: Vec<Digest> = config
            .rootfs
            .diff_ids
            .iter()
            .map(|d| {
                d.parse().map_err(|source| ImageError::BadDigest {
                    document: config_digest,
                    field: "rootfs.diff_ids",
                    source,
                })
            })
            .collect::<ImageResult<_>>()?;
        if diff_ids.len() != layers.len() {
            return Err(ImageError::LayerCountMismatch {
                manifest: digest,
                layers: layers.len(),
                config: config_digest,
                diff_ids: diff_ids.len(),
            });
        }
        let platform = match platform {
            Some(p) if !p.os.is_empty() => p.render(),
            _ => Platform {
                os: config.os,
                architecture: config.architecture,
                variant: config.variant,
            }
            .render(),
        };
        let chain = Digest::chain_ids(&diff_ids);
        let mut blobs = BTreeMap::new();
        for (i, (layer_digest, media_type, size)) in layers.iter().enumerate() {
            let stored = self
                .pass
                .blobs
                .get(layer_digest)
                .or_else(|| self.saved_layers.get(layer_digest));
            blobs.insert(*layer_digest, stored.map_or(*size, |e| e.loc.size));
            if self.layer_seen.insert(chain[i]) {
                self.out.layers.push(LayerEntry {
                    chain_id: chain[i],
                    parent: i.checked_sub(1).map(|p| chain[p]),
                    digest: *layer_digest,
                    diff_id: diff_ids[i],
                    size: stored.map_or(*size, |e| e.loc.size),
                    media_type: media_type.clone(),
                    compression: layer_compression(media_type, stored.map(|e| e.head.as_slice())),
                    present: stored.is_some(),
                });
                // A delta leaves out the layers its bases hold: whether
                // they are on the node is the catalog's question.
                if stored.is_none() && self.out.bundle.bases.is_empty() {
                    self.out.problems.push(format!(
                        "layer {layer_digest} of manifest {digest} is not in the archive"
                    ));
                }
            }
        }
        self.out.manifests.push(ManifestEntry {
            digest,
            platform: platform.clone(),
            config: config_digest,
            chain,
        });
        Ok(Summary {
            platforms: vec![platform],
            manifests: vec![digest],
            blobs,
        })
    }
}

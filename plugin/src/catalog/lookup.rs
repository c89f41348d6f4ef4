//! The lookups consumers make: images by name, manifests, documents,
//! layers by chain ID (the snapshotter's [`LayerSource`]), image lists,
//! and the figures metrics and commands report.

use std::collections::HashSet;
use std::fs;
use std::io::{self, Read};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;

use super::container::Container;
use super::error::NoPlatformManifest;
use super::index::{ImageEntry, LayerEntry, ManifestEntry};
use super::scan::is_image_list;
use super::store::{Archive, ImageInfo};
use super::{Catalog, Compression, LayerRef, LayerSource, PlainBlob};
use crate::digest::Digest;

impl Catalog {
    /// Every listed image name (the winning archive's, when several carry
    /// it). Cosign signatures (`repo:sha256-<hex>.sig`, see `trust`) are
    /// not images: they are left out here and found by [`Catalog::resolve`].
    pub fn images(&self) -> Vec<ImageInfo> {
        let state = self.ready_state();
        let mut out: Vec<ImageInfo> = state
            .names
            .iter()
            .filter(|(name, _)| !crate::trust::cosign::is_signature_name(name))
            .map(|(_, v)| v)
            .map(|(a, i)| ImageInfo {
                entry: a.index.images[*i].clone(),
                archive: a.index.path.clone(),
            })
            .collect();
        out.sort_by(|a, b| a.entry.name.cmp(&b.entry.name));
        out
    }

    /// The image a normalized name points to.
    pub fn resolve(&self, name: &str) -> Option<ImageInfo> {
        let state = self.ready_state();
        state.names.get(name).map(|(a, i)| ImageInfo {
            entry: a.index.images[*i].clone(),
            archive: a.index.path.clone(),
        })
    }

    /// The platform manifest `digest` of an archived image.
    pub fn manifest(&self, digest: &Digest) -> Option<ManifestEntry> {
        let state = self.ready_state();
        state
            .archives
            .values()
            .find_map(|a| a.index.manifests.iter().find(|m| m.digest == *digest))
            .cloned()
    }

    /// The manifest of `entry` that a node of `platform` (`linux/amd64`)
    /// runs: containerd's matcher prefers the exact platform to a variant
    /// of it. The error says which platforms the archive has.
    pub fn platform_manifest(
        &self,
        entry: &ImageEntry,
        platform: &str,
    ) -> Result<ManifestEntry, NoPlatformManifest> {
        let manifests: Vec<_> = entry
            .manifests
            .iter()
            .filter_map(|d| self.manifest(d))
            .collect();
        manifests
            .iter()
            .find(|m| m.platform == platform)
            .or_else(|| {
                manifests
                    .iter()
                    .find(|m| crate::setup::platform_matches(&m.platform, platform))
            })
            .cloned()
            .ok_or_else(|| NoPlatformManifest {
                platform: platform.to_string(),
                archived: entry.platforms.clone(),
            })
    }

    /// Every archived layer a node of `platform` can run, bottom first per
    /// image, each once: what is worth preparing before anyone pulls.
    pub fn layers_for(&self, platform: &str) -> Vec<LayerRef> {
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for image in self.images() {
            let Ok(manifest) = self.platform_manifest(&image.entry, platform) else {
                continue;
            };
            let completeness = self.completeness_for(&image, platform);
            if !completeness.is_complete() {
                tracing::info!(image = %image.entry.name, archive = %image.archive.display(),
                    reason = %completeness.reason(), "not prepared ahead");
                continue;
            }
            for chain_id in &manifest.chain {
                if let Some(layer) = self.layer(chain_id) {
                    if seen.insert(layer.digest) {
                        out.push(layer);
                    }
                }
            }
        }
        out
    }

    /// The references listed in the image lists (`*.txt`, k3s's habit) of
    /// the archive directories, each once, with the file naming it. Lines
    /// are references; blank lines and `#` comments are skipped.
    pub fn image_lists(&self) -> Vec<(String, PathBuf)> {
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for dir in &self.opts.dirs {
            let Ok(entries) = fs::read_dir(dir) else {
                continue;
            };
            let mut lists: Vec<PathBuf> = entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| is_image_list(p) && p.is_file())
                .collect();
            lists.sort();
            for list in lists {
                let text = match fs::read_to_string(&list) {
                    Ok(t) => t,
                    Err(e) => {
                        tracing::warn!(list = %list.display(), error = %e, "cannot read image list");
                        continue;
                    }
                };
                for line in text.lines() {
                    let line = line.split('#').next().unwrap_or("").trim();
                    if !line.is_empty() && seen.insert(line.to_string()) {
                        out.push((line.to_string(), list.clone()));
                    }
                }
            }
        }
        out
    }

    /// Archives that could not be read, with the reason.
    pub fn broken(&self) -> Vec<(PathBuf, String)> {
        let state = self.ready_state();
        state
            .broken
            .iter()
            .map(|(p, (_, m))| (p.clone(), m.clone()))
            .collect()
    }

    pub fn archives(&self) -> Vec<Arc<Archive>> {
        self.state
            .read()
            .unwrap()
            .archives
            .values()
            .cloned()
            .collect()
    }

    /// A JSON document (index, manifest, config) by digest, byte for byte.
    pub fn document(&self, digest: &Digest) -> Option<Bytes> {
        let state = self.ready_state();
        state
            .archives
            .values()
            .find_map(|a| a.index.documents.get(digest).cloned())
    }

    /// Size of a blob the catalog can serve.
    pub fn blob_size(&self, digest: &Digest) -> Option<u64> {
        if let Some(d) = self.document(digest) {
            return Some(d.len() as u64);
        }
        // Any archive's, even a copy found bad: a blob the archives hold
        // but cannot serve is an error, never "unknown".
        let state = self.ready_state();
        state
            .blobs
            .get(digest)
            .and_then(|all| all.first())
            .and_then(|a| a.index.blobs.get(digest))
            .map(|l| l.size)
    }

    /// How many archives are indexed, and how many are broken.
    pub fn archive_counts(&self) -> (usize, usize) {
        let state = self.state.read().unwrap();
        (state.archives.len(), state.broken.len())
    }

    /// Bytes decompressed so far from each archive.
    pub fn decompressed_by_archive(&self) -> Vec<(PathBuf, u64)> {
        self.decompressed
            .lock()
            .unwrap()
            .iter()
            .map(|(p, n)| (p.clone(), n.load(Ordering::Relaxed)))
            .collect()
    }

    fn layer_ref(&self, archive: &Archive, i: usize) -> LayerRef {
        let l: &LayerEntry = &archive.index.layers[i];
        LayerRef {
            chain_id: l.chain_id,
            parent: l.parent,
            digest: l.digest,
            diff_id: l.diff_id,
            size: l.size,
            compression: l.compression,
        }
    }
}

impl LayerSource for Catalog {
    fn layer(&self, chain_id: &Digest) -> Option<LayerRef> {
        let state = self.ready_state();
        state
            .chains
            .get(chain_id)
            .map(|(a, i)| self.layer_ref(a, *i))
    }

    fn layer_with_diff_id(&self, diff_id: &Digest) -> Option<LayerRef> {
        let state = self.ready_state();
        // A scan of every archived layer: asked only when a Prepare's chain
        // ID is not archived. An uncompressed blob first (usable in place),
        // then the lowest digest, so the answer does not depend on hashing.
        state
            .chains
            .values()
            .map(|(a, i)| self.layer_ref(a, *i))
            .filter(|l| l.diff_id == *diff_id)
            .min_by_key(|l| (l.compression != crate::catalog::Compression::None, l.digest))
    }

    fn image_layers(&self, chain_id: &Digest, manifest: Option<&Digest>) -> Vec<LayerRef> {
        let state = self.ready_state();
        let candidates: Vec<&Vec<Digest>> = state
            .archives
            .values()
            .flat_map(|a| a.index.manifests.iter())
            .filter(|m| m.chain.contains(chain_id))
            .filter(|m| manifest.is_none_or(|d| m.digest == *d))
            .map(|m| &m.chain)
            .collect();
        // Several images share this layer and nothing says which is pulled.
        let Some(chain) = candidates.first() else {
            return Vec::new();
        };
        if candidates.iter().any(|c| c != chain) {
            return Vec::new();
        }
        chain
            .iter()
            .filter_map(|c| state.chains.get(c).map(|(a, i)| self.layer_ref(a, *i)))
            .collect()
    }

    fn open_blob(&self, digest: &Digest) -> io::Result<Box<dyn Read + Send>> {
        Catalog::open_blob(self, digest).map_err(io::Error::other)
    }

    fn expect_blobs(&self, digests: &[Digest]) {
        Catalog::expect_blobs(self, digests)
    }

    fn plain_blob(&self, digest: &Digest) -> Option<PlainBlob> {
        let archives = self.archives_with(digest).ok()?;
        archives.into_iter().find_map(|archive| {
            if archive.index.container != Container::Tar {
                return None;
            }
            // Only uncompressed layers: a blob's own bytes must be the tar.
            let layer = archive.index.layers.iter().find(|l| l.digest == *digest)?;
            if layer.compression != Compression::None {
                return None;
            }
            self.check_unchanged(&archive, digest).ok()?;
            let loc = archive.index.blobs[digest];
            Some(PlainBlob {
                path: archive.index.path.clone(),
                file: archive.open_file().ok()?.clone(),
                key: archive.index.key,
                offset: loc.offset,
                size: loc.size,
            })
        })
    }
}

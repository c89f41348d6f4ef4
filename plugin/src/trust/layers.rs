//! The snapshotter's view of the archives under a signature policy: a
//! [`LayerSource`] that answers only with layers [`Trust::admit_layer`]
//! admits. A refused layer is, to the snapshotter, a layer the archives do
//! not hold: containerd gets it the ordinary way (through the mirror, which
//! refuses the unsigned image's manifest too).
//!
//! [`LayerIndex`] is what `admit_layer` looks layers up in: every Prepare
//! of a node with many archived images would otherwise read every image's
//! manifests.

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::sync::Arc;

use serde_json::Value;

use super::{Trust, Use, Verdict};
use crate::catalog::{Catalog, Generation, ImageInfo, LayerRef, LayerSource, PlainBlob};
use crate::digest::Digest;

/// The catalog's images, their signature states and which of them hold
/// each layer, for one [`Generation`] of the catalog: what the archives
/// hold, and so the images' signatures, change only with it. Built again
/// for the next one.
pub(super) struct LayerIndex {
    pub(super) generation: Generation,
    /// The catalog's images (signature images left out), in its order.
    pub(super) images: Vec<ImageInfo>,
    /// Their signature states, image for image; `None` when a signature
    /// could not be read (checked again at each use).
    pub(super) verdicts: Vec<Option<Verdict>>,
    /// (chain ID, blob digest as the manifest spells it) -> the images
    /// (indexes into `images`, ascending) one platform manifest of which
    /// has that blob at that chain ID.
    holders: HashMap<(Digest, String), Vec<usize>>,
}

impl LayerIndex {
    /// Reads the catalog's images and their platform manifests; `check`
    /// gives an image's verdict, and whether it is final.
    pub(super) fn build(
        catalog: &Catalog,
        generation: Generation,
        check: impl Fn(&Digest) -> (Verdict, bool),
    ) -> LayerIndex {
        let images = catalog.images();
        let verdicts = images
            .iter()
            .map(|i| match check(&i.entry.digest) {
                (v, true) => Some(v),
                (_, false) => None,
            })
            .collect();
        // Platform manifests are shared by tags and indexes: read once.
        let mut layers_of: HashMap<Digest, Vec<(Digest, String)>> = HashMap::new();
        let mut holders: HashMap<(Digest, String), Vec<usize>> = HashMap::new();
        for (n, image) in images.iter().enumerate() {
            for m in &image.entry.manifests {
                let layers = layers_of
                    .entry(*m)
                    .or_insert_with(|| manifest_layers(catalog, m));
                for layer in layers.iter() {
                    let h = holders.entry(layer.clone()).or_default();
                    // Once per image, however many of its manifests have it.
                    if h.last() != Some(&n) {
                        h.push(n);
                    }
                }
            }
        }
        LayerIndex {
            generation,
            images,
            verdicts,
            holders,
        }
    }

    /// The images (indexes into `images`, in the catalog's order) a
    /// platform manifest of which has blob `layer.digest` at chain ID
    /// `layer.chain_id`.
    pub(super) fn holders(&self, layer: &LayerRef) -> &[usize] {
        self.holders
            .get(&(layer.chain_id, layer.digest.to_string()))
            .map_or(&[], Vec::as_slice)
    }
}

/// The (chain ID, blob digest) of each layer of platform manifest `m`:
/// the blob its document names at the position of the chain ID in the
/// catalog's entry (the first, should a chain ID repeat). None when the
/// entry or the document is missing or not JSON.
fn manifest_layers(catalog: &Catalog, m: &Digest) -> Vec<(Digest, String)> {
    let Some(entry) = catalog.manifest(m) else {
        return Vec::new();
    };
    let Some(doc) = catalog
        .document(m)
        .and_then(|doc| serde_json::from_slice::<Value>(&doc).ok())
    else {
        return Vec::new();
    };
    let mut seen = HashSet::new();
    entry
        .chain
        .iter()
        .enumerate()
        .filter(|(_, chain_id)| seen.insert(**chain_id))
        .filter_map(|(pos, chain_id)| {
            let digest = doc["layers"][pos]["digest"].as_str()?;
            Some((*chain_id, digest.to_string()))
        })
        .collect()
}

pub struct TrustedLayers {
    catalog: Arc<Catalog>,
    trust: Arc<Trust>,
}

impl TrustedLayers {
    pub fn new(catalog: Arc<Catalog>, trust: Arc<Trust>) -> TrustedLayers {
        TrustedLayers { catalog, trust }
    }

    fn admitted(&self, layer: Option<LayerRef>) -> Option<LayerRef> {
        let layer = layer?;
        self.trust
            .admit_layer(&self.catalog, &layer, Use::Mount)
            .ok()
            .map(|()| layer)
    }
}

impl LayerSource for TrustedLayers {
    fn layer(&self, chain_id: &Digest) -> Option<LayerRef> {
        self.admitted(self.catalog.layer(chain_id))
    }

    fn layer_with_diff_id(&self, diff_id: &Digest) -> Option<LayerRef> {
        self.admitted(self.catalog.layer_with_diff_id(diff_id))
    }

    fn image_layers(&self, chain_id: &Digest, manifest: Option<&Digest>) -> Vec<LayerRef> {
        // The admitted prefix: layers are taken bottom up.
        self.catalog
            .image_layers(chain_id, manifest)
            .into_iter()
            .map_while(|l| self.admitted(Some(l)))
            .collect()
    }

    fn open_blob(&self, digest: &Digest) -> std::io::Result<Box<dyn Read + Send>> {
        LayerSource::open_blob(&*self.catalog, digest)
    }

    fn plain_blob(&self, digest: &Digest) -> Option<PlainBlob> {
        self.catalog.plain_blob(digest)
    }

    fn layer_tar_size(&self, layer: &LayerRef) -> Option<u64> {
        self.catalog.layer_tar_size(layer)
    }

    fn expect_blobs(&self, digests: &[Digest]) {
        LayerSource::expect_blobs(&*self.catalog, digests)
    }
}

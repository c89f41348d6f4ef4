//! The snapshotter's view of the archives under a signature policy: a
//! [`LayerSource`] that answers only with layers [`Trust::admit_layer`]
//! admits. A refused layer is, to the snapshotter, a layer the archives do
//! not hold: containerd gets it the ordinary way (through the mirror, which
//! refuses the unsigned image's manifest too).

use std::io::Read;
use std::sync::Arc;

use super::{Trust, Use};
use crate::catalog::{Catalog, LayerRef, LayerSource, PlainBlob};
use crate::digest::Digest;

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

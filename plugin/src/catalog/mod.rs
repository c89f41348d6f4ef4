//! The catalog: every airgap archive in the watched directories, indexed once.
//!
//! Consumers (the snapshotter, the mirror, the CLI) see it through
//! [`LayerSource`] and the lookup methods of [`Catalog`].

use std::io::Read;

use serde::{Deserialize, Serialize};

use crate::digest::Digest;

/// How a blob's own bytes are compressed (a layer's media type says this;
/// sniffed from magic bytes when the media type is silent or lies).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

/// One layer as the snapshotter needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerRef {
    /// Chain ID of the snapshot this layer becomes (what containerd's
    /// `containerd.io/snapshot.ref` label names).
    pub chain_id: Digest,
    /// Chain ID of the layer below, `None` for the bottom layer.
    pub parent: Option<Digest>,
    /// Digest of the blob as stored (compressed).
    pub digest: Digest,
    /// Digest of the uncompressed tar stream.
    pub diff_id: Digest,
    /// Size of the blob as stored.
    pub size: u64,
    pub compression: Compression,
}

/// What the snapshotter reads layers from. The catalog implements it; tests
/// use an in-memory fake.
pub trait LayerSource: Send + Sync + 'static {
    /// The archived layer whose chain ID is `chain_id`.
    fn layer(&self, chain_id: &Digest) -> Option<LayerRef>;
    /// An archived layer whose diffID (its uncompressed tar's digest) is
    /// `diff_id`, whatever the layers below it: containerd 2.3+ names the
    /// diffID on Prepare (`containerd.io/snapshot/diff-id`), so a layer
    /// archived in one image can serve the same layer on another parent.
    /// Its `chain_id` and `parent` are those of the archive it was found in.
    fn layer_with_diff_id(&self, diff_id: &Digest) -> Option<LayerRef> {
        let _ = diff_id;
        None
    }
    /// The archived layers of the image being pulled, bottom first, each once
    /// (used to start extracting its other layers early). `manifest` is the
    /// platform manifest containerd is unpacking, when it says (CRI's
    /// `cri.manifest-digest` label). Without it, the layers of the one
    /// manifest containing `chain_id`; none when several images share the
    /// layer, so a pull never extracts other images' layers.
    fn image_layers(&self, chain_id: &Digest, manifest: Option<&Digest>) -> Vec<LayerRef>;
    /// Opens a blob's bytes as stored. The reader is verified against `digest`:
    /// it returns an error instead of EOF if the bytes do not match.
    fn open_blob(&self, digest: &Digest) -> std::io::Result<Box<dyn Read + Send>>;
    /// Where a blob lies as it is in a plain file (an uncompressed blob in an
    /// uncompressed archive), so its bytes can be used in place (EROFS layer
    /// mounts); `None` when it is compressed, or only in compressed archives.
    /// Unverified: the caller checks the digest.
    fn plain_blob(&self, digest: &Digest) -> Option<PlainBlob> {
        let _ = digest;
        None
    }
    /// Length of a layer's tar (its blob decompressed) when known without
    /// reading it (an uncompressed blob is its tar): sizes the layer
    /// store's copies before they are made.
    fn layer_tar_size(&self, layer: &LayerRef) -> Option<u64> {
        (layer.compression == Compression::None).then_some(layer.size)
    }
    /// Says that the blobs `digests` are about to be opened one after the
    /// other (the layers of an image being pulled, or prepared ahead): a
    /// source that must decompress an archive from its start to reach a
    /// blob keeps those it goes by for their turn, so one pass over the
    /// archive serves them all. A hint: nothing breaks without it.
    fn expect_blobs(&self, digests: &[Digest]) {
        let _ = digests;
    }
}

/// A blob stored as it is at `offset` of an open file (see
/// [`LayerSource::plain_blob`]).
#[derive(Clone, Debug)]
pub struct PlainBlob {
    /// The archive's path, for messages and to find the file again.
    pub path: std::path::PathBuf,
    /// The archive, open: the version that was indexed.
    pub file: std::sync::Arc<std::fs::File>,
    /// The archive's identity when indexed.
    pub key: FileKey,
    pub offset: u64,
    pub size: u64,
}

mod blobs;
pub mod bundle;
pub mod container;
mod error;
pub mod index;
mod lookup;
mod persist;
pub mod reference;
mod scan;
/// zstd's seekable format lives with the readers that use it.
pub use crate::blob::seekable;
mod store;
pub mod verify;
pub mod watch;

pub use bundle::{Bundle, BundleRef, Completeness, Inventory};
pub use error::{BlobError, CatalogError, NoPlatformManifest};
pub use index::{ArchiveIndex, FileKey, ImageEntry, IndexError, ManifestEntry};
pub use scan::ScanReport;
pub use store::{Archive, Catalog, CatalogOptions, Generation, ImageInfo};

#[cfg(test)]
mod scan_tests;
#[cfg(test)]
mod tests;

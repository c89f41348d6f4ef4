//! Why a layer could not be prepared, mounted, or mounted again.

use std::io;
use std::path::{Path, PathBuf};

use crate::digest::Digest;

use super::{index, mount};

#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Dir(#[from] crate::dirs::DirError),
    #[error("the archive changed since it was indexed")]
    Changed,
    /// Ahead of a pull, a plain layer that cannot be cloned and was not to
    /// be copied (not an error: it is copied on pull).
    #[error("the layer cannot be cloned from its archive (no reflinks here)")]
    NoReflink,
    #[error("copy layer {digest} out of {}: {source}", archive.display())]
    Copy {
        archive: PathBuf,
        digest: Digest,
        #[source]
        source: io::Error,
    },
    #[error("open blob {digest}: {source}")]
    OpenBlob {
        digest: Digest,
        #[source]
        source: io::Error,
    },
    #[error("backing record {}: {reason}", path.display())]
    BadRecord { path: PathBuf, reason: String },
    #[error(transparent)]
    Index(#[from] index::ErofsError),
    #[error(transparent)]
    Mount(#[from] mount::MountError),
    /// A staged layer whose mount is gone and cannot be made again: not
    /// mounted again from its backing file, and no archive to rebuild it
    /// from.
    #[error(
        "layer {digest} cannot be mounted (backing file {}): {reason}; \
         put an archive holding the layer back, or remove the image and pull it again",
        archive.display()
    )]
    Unavailable {
        digest: Digest,
        archive: PathBuf,
        reason: String,
    },
    /// The layer's backing file is not the file indexed, and its content
    /// does not match the layer's diffID either.
    #[error("{} does not hold the layer {diff_id} any more", path.display())]
    NotTheLayer { path: PathBuf, diff_id: Digest },
    #[error(
        "the layer store {} and the snapshots {} are on different file systems: \
         snapshots hard-link the store's files, so both must be on one (move {} back under the root's file system, or set layer_mounts = \"extract\")",
        store.display(), snapshots.display(), store.display()
    )]
    OtherFileSystem { store: PathBuf, snapshots: PathBuf },
    #[error("layer {0} was found too large to index: it is extracted")]
    TooLarge(Digest),
    #[error("this kernel cannot mount EROFS tar indexes: {0}")]
    Unsupported(String),
}

impl LayerError {
    /// Maps an io error on `path` while doing `what`.
    pub(crate) fn io<'a>(
        what: &'static str,
        path: &'a Path,
    ) -> impl FnOnce(io::Error) -> LayerError + 'a {
        move |source| LayerError::Io {
            what,
            path: path.to_owned(),
            source,
        }
    }
}

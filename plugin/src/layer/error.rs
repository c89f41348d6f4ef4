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

//! The catalog's errors.

use std::io;
use std::path::{Path, PathBuf};

use crate::digest::Digest;

/// Why the catalog cannot be set up, or one archive cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("{path}: {source}")]
    Index {
        path: PathBuf,
        source: super::index::IndexError,
    },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
}

/// Why a blob cannot be read. Kept apart from I/O errors on purpose: a
/// reader that fails (a missing cache directory, bad bytes) is never "not
/// here".
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// No archive holds it (any more).
    #[error("blob {0} is in no archive")]
    Unknown(Digest),
    /// An archive holds it, and reading it failed.
    #[error("blob {digest} of {archive}: {source}")]
    Read {
        digest: Digest,
        archive: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl BlobError {
    pub(super) fn read(digest: &Digest, archive: &Path, source: io::Error) -> BlobError {
        BlobError::Read {
            digest: *digest,
            archive: archive.to_path_buf(),
            source,
        }
    }
}

/// An archived image has no manifest a node of `platform` runs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no manifest for {platform} (archived: {})", archived.join(", "))]
pub struct NoPlatformManifest {
    /// The node's platform (`linux/amd64`).
    pub platform: String,
    /// The platforms the archive has for the image.
    pub archived: Vec<String>,
}

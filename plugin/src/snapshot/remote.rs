//! The remote path: layers extracted straight from the archives.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use crate::catalog::LayerSource;

use super::{SnapshotError, Snapshotter};

/// Layer extraction state shared by all requests.
pub struct Remote {
    source: Arc<dyn LayerSource>,
    staging: PathBuf,
}

impl Remote {
    pub fn new(source: Arc<dyn LayerSource>, staging: PathBuf) -> Self {
        Remote { source, staging }
    }

    pub fn source(&self) -> &Arc<dyn LayerSource> {
        &self.source
    }

    pub fn staging(&self) -> &PathBuf {
        &self.staging
    }

    /// Drops staged layers nobody waits for.
    pub fn cleanup(&self) {}
}

/// Tries the remote path for a Prepare. `Some(error)` is the answer to send
/// (ALREADY_EXISTS when the target now exists); `None` means: go on with the
/// ordinary path.
pub async fn prepare(
    _sn: &Arc<Snapshotter>,
    _key: &str,
    _parent: &str,
    _labels: &HashMap<String, String>,
) -> Option<SnapshotError> {
    None
}

//! Prefetch: the first Prepare of an image starts extracting the image's
//! other archived layers, so their own Prepares find them staged.

use std::collections::HashSet;

use crate::catalog::LayerRef;
use crate::digest::Digest;
use crate::labels::TARGET_SNAPSHOT_REF;

use super::Remote;
use crate::snapshot::meta::Kind;
use crate::snapshot::{SnapshotError, Snapshotter};

impl Remote {
    /// Starts extracting the other archived layers of `layer`'s images (once
    /// per requested layer; layers already committed, staged, or being
    /// committed are skipped). Only layers whose whole parent chain is
    /// archived are worth it: containerd downloads everything above the
    /// first missing layer.
    pub(super) fn prefetch(&self, sn: &Snapshotter, layer: &LayerRef, manifest: Option<Digest>) {
        if !self.prefetched.lock().unwrap().insert(layer.chain_id) {
            return;
        }
        self.expire();
        let layers = self.source.image_layers(&layer.chain_id, manifest.as_ref());
        let mut usable: HashSet<Digest> = HashSet::new();
        let mut wanted = Vec::new();
        for l in &layers {
            let parent_ok = l.parent.is_none_or(|p| usable.contains(&p));
            if parent_ok {
                usable.insert(l.chain_id);
                if l.chain_id != layer.chain_id {
                    wanted.push(l.clone());
                }
            }
        }
        let committed = sn.committed_targets().unwrap_or_default();
        wanted.retain(|l| !committed.contains(&l.chain_id.to_string()));
        // Read one after the other: one pass over a compressed archive
        // serves them all.
        let digests: Vec<Digest> = wanted.iter().map(|l| l.digest).collect();
        self.source.expect_blobs(&digests);
        for l in wanted {
            let busy = self.taken.lock().unwrap().contains(&l.chain_id);
            if !busy {
                tracing::debug!(chain_id = %l.chain_id, "prefetching layer");
                drop(self.extraction(&l));
            }
        }
    }
}

impl Snapshotter {
    /// Targets of every committed snapshot.
    pub(super) fn committed_targets(&self) -> Result<HashSet<String>, SnapshotError> {
        let all = self.meta.read()?.list()?;
        Ok(all
            .into_iter()
            .filter(|i| i.record.kind == Kind::Committed)
            .filter_map(|i| i.record.labels.get(TARGET_SNAPSHOT_REF).cloned())
            .collect())
    }
}

//! Imported layers: committed at once without their data, filled from the
//! archive when something first needs them.
//!
//! The importer (`crate::import`) registers each layer with a Prepare that
//! names its target and carries `containerd.io/snapshot/airgap.import`. The
//! layer is then committed here with an empty directory and the record's
//! `pending` field set to its chain ID, and containerd records it as
//! unpacked. Before a Prepare or View on top of it, or the Mounts of a
//! snapshot above it, every pending layer of the chain is extracted (in
//! parallel, bounded like every extraction, one extraction per chain ID) and
//! swapped into place. `eager` starts that fill right after the commit.
//!
//! A failed fill leaves the snapshot pending and fails the request with the
//! layer and the reason, so the next attempt tries again.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::digest::Digest;
use crate::snapshot::{blocking, remove_all, sync_dir, SnapshotError, Snapshotter};

use super::{remote_of, StagedLayer};

/// Commits the layer `target` on `parent` without its data; the answer for
/// the importer's Prepare (`ALREADY_EXISTS` once committed).
pub(super) async fn register(
    sn: &Arc<Snapshotter>,
    target: &str,
    parent: &str,
    labels: BTreeMap<String, String>,
    layer: &crate::catalog::LayerRef,
    mode: &str,
) -> SnapshotError {
    let (s, t, p) = (sn.clone(), target.to_string(), parent.to_string());
    match blocking(move || s.commit_staged(&t, &p, labels, None)).await {
        Ok(name) => {
            tracing::info!(snapshot = %name, digest = %layer.digest, mode, "layer registered from archive; data on first use");
            if mode == "eager" {
                let sn = sn.clone();
                tokio::spawn(async move {
                    if let Err(err) = materialize(&sn, &name).await {
                        tracing::warn!(snapshot = %name, error = %err, "eager extraction failed; retried on first use");
                    }
                });
            }
            SnapshotError::AlreadyExists(format!("target snapshot {target:?}"))
        }
        Err(err) => {
            if !err.is_already_exists() {
                tracing::warn!(error = %err, "registering the imported layer failed");
            }
            err
        }
    }
}

/// Fills every pending snapshot of the chain of `name` (itself and its
/// parents), in parallel. Returns once all are filled; the first failure
/// otherwise.
pub(crate) async fn materialize(sn: &Arc<Snapshotter>, name: &str) -> Result<(), SnapshotError> {
    if name.is_empty() {
        return Ok(());
    }
    let (s, n) = (sn.clone(), name.to_string());
    let pending = blocking(move || s.pending_in_chain(&n)).await?;
    if pending.is_empty() {
        return Ok(());
    }
    if sn.remote().is_none() {
        return Err(SnapshotError::FailedPrecondition(format!(
            "snapshot {name:?} waits for its data from an archive, but no archives are configured"
        )));
    }
    let fills = pending
        .into_iter()
        .map(|(snapshot, chain)| fill(sn, snapshot, chain));
    futures::future::join_all(fills).await.into_iter().collect()
}

/// Extracts the layer of the pending snapshot `name` and swaps it in.
async fn fill(sn: &Arc<Snapshotter>, name: String, chain: String) -> Result<(), SnapshotError> {
    let chain_id: Digest = chain.parse().map_err(|_| SnapshotError::Corrupt {
        key: name.clone(),
        reason: format!("pending chain ID {chain:?}"),
    })?;
    let remote = remote_of(sn);
    // One fill per layer: later requests wait here and find it done.
    let lock = remote.prepare_lock(&chain_id);
    let _serialized = lock.lock().await;
    let (s, n) = (sn.clone(), name.clone());
    if !blocking(move || s.is_pending(&n)).await? {
        return Ok(());
    }
    let source = remote.source().clone();
    let layer = blocking(move || Ok(source.layer(&chain_id)))
        .await?
        .ok_or_else(|| {
            SnapshotError::FailedPrecondition(format!(
                "snapshot {name:?}: layer {chain_id} (chain ID) is in no archive any more; \
                 put its archive back, or remove the image and pull it"
            ))
        })?;
    let started = std::time::Instant::now();
    let staged = match remote.take(&layer).await {
        Ok(staged) => staged,
        Err(err) => {
            remote.settled(&chain_id);
            return Err(SnapshotError::FailedPrecondition(format!(
                "snapshot {name:?}: extracting layer {} (chain ID {chain_id}) from its archive failed: {err}",
                layer.digest
            )));
        }
    };
    let (s, n) = (sn.clone(), name.clone());
    let filled = blocking(move || s.fill_pending(&n, staged)).await;
    remote.settled(&chain_id);
    if filled.is_ok() {
        tracing::info!(snapshot = %name, digest = %layer.digest, elapsed = ?started.elapsed(), "imported layer extracted");
        crate::metrics::global().layers_from_archive.inc();
    }
    filled
}

impl Snapshotter {
    /// The pending snapshots among `name` and its parents, with the chain
    /// ID each waits for.
    fn pending_in_chain(&self, name: &str) -> Result<Vec<(String, String)>, SnapshotError> {
        let txn = self.meta.read()?;
        let mut out = Vec::new();
        let mut next = name.to_string();
        while !next.is_empty() {
            let record = match txn.get(&next) {
                Ok(r) => r,
                // The request itself reports a missing snapshot.
                Err(e) if e.is_not_found() => break,
                Err(e) => return Err(e),
            };
            if let Some(chain) = record.pending {
                out.push((next.clone(), chain));
            }
            next = record.parent;
        }
        Ok(out)
    }

    fn is_pending(&self, name: &str) -> Result<bool, SnapshotError> {
        match self.meta.read()?.get(name) {
            Ok(record) => Ok(record.pending.is_some()),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Swaps the staged layer's directory (extracted, or mounted with its
    /// index beside it) in for the empty directory of the pending snapshot
    /// `name`, in one atomic exchange, and records it filled, in one
    /// transaction. A crash in between leaves it pending: the next fill
    /// exchanges the directory again. (A mounted `fs` cannot be renamed by
    /// itself, but the directory holding it can.)
    fn fill_pending(&self, name: &str, staged: StagedLayer) -> Result<(), SnapshotError> {
        let result = (|| {
            let txn = self.meta.write()?;
            let record = match txn.get(name)? {
                Some(r) if r.pending.is_some() => r,
                // Removed or filled meanwhile.
                _ => return Ok(()),
            };
            let dir = self.layout.dir(record.id);
            rustix::fs::renameat_with(
                rustix::fs::CWD,
                &staged.dir,
                rustix::fs::CWD,
                &dir,
                rustix::fs::RenameFlags::EXCHANGE,
            )
            .map_err(|e| SnapshotError::io("exchange into place", &dir, e.into()))?;
            txn.set_pending(name, None, staged.usage)?;
            sync_dir(self.layout.snapshots_dir())?;
            txn.commit()
        })();
        remove_all(&staged.dir);
        result
    }
}

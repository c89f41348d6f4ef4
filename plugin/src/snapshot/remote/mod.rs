//! The remote path: layers taken straight from the archives.
//!
//! containerd unpacking an image calls Prepare with the label
//! `containerd.io/snapshot.ref=<chainID>` (the "target"). When the
//! [`LayerSource`] holds that layer and the requested parent is the layer
//! below it, the layer is extracted into a staging directory, committed here
//! under the target name with exactly the requested parent and the request's
//! labels, and Prepare answers `ALREADY_EXISTS`: containerd then finds the
//! snapshot with `List` and downloads nothing.
//!
//! Anything going wrong (layer not archived, parent not the layer below,
//! digest mismatch, archive gone) is logged and Prepare goes on as an
//! ordinary overlay snapshotter, so containerd downloads the layer itself: a
//! pull never fails because of this path. `ALREADY_EXISTS` is never answered
//! without a target label.
//!
//! Speed: the first Prepare of an image starts extracting the image's other
//! archived layers in parallel (bounded by the number of cores, one
//! extraction per chain ID), so later Prepares find them staged.
//!
//! Files: this one holds the Prepare path ([`prepare`]) and the shared
//! [`Remote`] state; `staging.rs` extracts layers into the staging directory
//! (one extraction per chain ID) and cleans it up; `prefetch.rs` picks the
//! other layers of an image to extract ahead of their Prepare.

mod lazy;
#[cfg(test)]
mod mounted_tests;
mod prefetch;
mod staging;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use tokio::sync::Semaphore;
use tracing::Instrument;

use crate::catalog::{LayerRef, LayerSource};
use crate::digest::Digest;
use crate::labels::{
    AIRGAP_IMPORT, CRI_MANIFEST_DIGEST, SNAPSHOT_DIFF_ID, SNAPSHOT_PARENT_CHAIN_ID,
    TARGET_SNAPSHOT_REF,
};

use super::meta::{clean_labels, Kind};
use super::{blocking, remove_all, sync_dir, SnapshotError, Snapshotter};
use crate::layer::LayerBacking;
pub(crate) use lazy::materialize;
use staging::{Job, StagedLayer};

/// Layer extraction state shared by all requests.
pub(crate) struct Remote {
    source: Arc<dyn LayerSource>,
    staging: PathBuf,
    /// Bounds parallel extractions to the number of cores.
    permits: Arc<Semaphore>,
    /// One extraction per chain ID (single-flight), until a Prepare takes it.
    jobs: Mutex<HashMap<Digest, Job>>,
    /// Serializes remote Prepares of one chain ID, so a second one sees what
    /// the first committed.
    prepares: Mutex<HashMap<Digest, Arc<tokio::sync::Mutex<()>>>>,
    /// Chain IDs whose Prepare is sending, or sent, their images' layers
    /// to prefetch; each is forgotten when that Prepare is over.
    prefetched: Mutex<HashSet<Digest>>,
    /// Chain IDs taken out of staging and not committed yet: not to be
    /// prefetched again meanwhile.
    taken: Mutex<HashSet<Digest>>,
    seq: AtomicU64,
    /// Layers mounted in place (EROFS) instead of extracted, where possible.
    layers: Arc<LayerBacking>,
}

impl Remote {
    pub(crate) fn new(
        source: Arc<dyn LayerSource>,
        staging: PathBuf,
        layers: Arc<LayerBacking>,
    ) -> Self {
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2);
        Remote {
            source,
            staging,
            permits: Arc::new(Semaphore::new(cores)),
            jobs: Mutex::new(HashMap::new()),
            prepares: Mutex::new(HashMap::new()),
            prefetched: Mutex::new(HashSet::new()),
            taken: Mutex::new(HashSet::new()),
            seq: AtomicU64::new(0),
            layers,
        }
    }

    pub(crate) fn source(&self) -> &Arc<dyn LayerSource> {
        &self.source
    }

    pub(crate) fn layers(&self) -> &LayerBacking {
        &self.layers
    }

    fn prepare_lock(&self, chain_id: &Digest) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.prepares.lock().unwrap();
        locks.retain(|_, l| Arc::strong_count(l) > 1);
        locks.entry(*chain_id).or_default().clone()
    }
}

/// Tries the remote path for a Prepare. `Some(error)` is the answer to send
/// (`ALREADY_EXISTS` once the target exists); `None` means: go on with the
/// ordinary path.
pub(crate) async fn prepare(
    sn: &Arc<Snapshotter>,
    key: &str,
    parent: &str,
    labels: &HashMap<String, String>,
) -> Option<SnapshotError> {
    let remote = sn.remote()?;
    let target = labels.get(TARGET_SNAPSHOT_REF)?.clone();
    let span = tracing::info_span!("remote", %target, %key, %parent);
    let metrics = crate::metrics::global();
    let fallback = |reason: &'static str| {
        metrics.layer_fallback(reason);
        None
    };
    async move {
        let chain_id: Digest = match target.parse() {
            Ok(d) => d,
            Err(_) => {
                tracing::debug!("target is not a chain ID: ordinary path");
                return fallback("target_not_a_chain_id");
            }
        };
        let started = std::time::Instant::now();
        let lock = remote.prepare_lock(&chain_id);
        let _serialized = lock.lock().await;

        // The same layer on the same parent may be here already (another
        // namespace pulled the image): nothing to do.
        let (s, t, p) = (sn.clone(), target.clone(), parent.to_string());
        match blocking(move || s.find_target(&t, &p)).await {
            Ok(Some(name)) => {
                tracing::info!(snapshot = %name, "target exists");
                return Some(SnapshotError::AlreadyExists(format!("target snapshot {target:?}")));
            }
            Ok(None) => {}
            Err(err) => {
                tracing::warn!(error = %err, "looking up the target failed: ordinary path");
                return fallback("lookup_failed");
            }
        }

        let source = remote.source().clone();
        let named = same_layer_named(labels, &chain_id);
        let found = blocking(move || {
            Ok(source.layer(&chain_id).map(|l| (l, None)).or_else(|| {
                // containerd 2.3+: the same layer archived on another parent.
                let (diff_id, parent) = named?;
                let archived = source.layer_with_diff_id(&diff_id)?;
                let archived_chain = archived.chain_id;
                let layer = LayerRef {
                    chain_id,
                    parent,
                    ..archived
                };
                Some((layer, Some(archived_chain)))
            }))
        })
        .await;
        let layer = match found {
            Ok(Some((layer, by_diff_id))) => {
                if let Some(archived_chain) = by_diff_id {
                    tracing::info!(diff_id = %layer.diff_id, %archived_chain, "layer taken by its diffID from an archived image on another parent");
                }
                layer
            }
            _ => {
                tracing::debug!("layer not in the archives: ordinary path");
                return fallback("not_archived");
            }
        };
        if let Some(why) = disagreement(labels, &layer) {
            tracing::warn!(%why, "containerd's layer labels disagree with the archive: ordinary path");
            return fallback("labels_disagree");
        }
        let (s, p, want) = (sn.clone(), parent.to_string(), layer.parent);
        match blocking(move || s.parent_is(&p, want)).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::info!(expected = ?layer.parent, "parent is not the layer below: ordinary path");
                return fallback("parent_mismatch");
            }
            Err(err) => {
                tracing::warn!(error = %err, "checking the parent failed: ordinary path");
                return fallback("lookup_failed");
            }
        }
        let mut labels = match clean_labels(labels.clone()) {
            Ok(l) => l,
            Err(_) => return fallback("bad_labels"), // the ordinary path reports it
        };
        if let Some(mode) = labels.remove(AIRGAP_IMPORT) {
            return Some(lazy::register(sn, &target, parent, labels, &layer, &mode).await);
        }

        // This layer first: the semaphore is fair, so prefetches queue
        // behind the layer containerd is waiting for.
        drop(remote.extraction(&layer));
        let s = sn.clone();
        let l = layer.clone();
        // CRI names the manifest being unpacked: prefetch that image only.
        let manifest = labels
            .get(CRI_MANIFEST_DIGEST)
            .and_then(|d| d.parse::<Digest>().ok());
        let _ = blocking(move || {
            remote_of(&s).prefetch(&s, &l, manifest);
            Ok(())
        })
        .await;

        let staged = match remote.take(&layer).await {
            Ok(staged) => staged,
            Err(err) => {
                remote.settled(&chain_id);
                tracing::warn!(error = %err, "extraction from the archive failed: ordinary path (containerd downloads the layer)");
                return fallback("extraction_failed");
            }
        };
        let (s, t, p) = (sn.clone(), target.clone(), parent.to_string());
        let committed = blocking(move || s.commit_staged(&t, &p, labels, Some(staged))).await;
        remote.settled(&chain_id);
        match committed {
            Ok(name) => {
                tracing::info!(snapshot = %name, "layer committed from archive");
                metrics.layers_from_archive.inc();
                metrics
                    .layer_pull_seconds
                    .observe(started.elapsed().as_secs_f64());
                Some(SnapshotError::AlreadyExists(format!("target snapshot {target:?}")))
            }
            Err(err) if err.is_already_exists() => Some(err),
            Err(err) => {
                tracing::warn!(error = %err, "committing the extracted layer failed: ordinary path");
                fallback("commit_failed")
            }
        }
    }
    .instrument(span)
    .await
}

/// The layer containerd 2.3+ names on Prepare (its diffID, and the chain ID
/// of its parent; neither label before 2.3), when they add up to the
/// target's chain ID (OCI "Layer ChainID": the diffID for the bottom layer,
/// else `sha256(parent + " " + diffID)`): a layer is its diffID, so one
/// archived on any other parent is this layer's content (overlay stacks it
/// on whatever is below, as containerd's applier would write it). Labels
/// that do not add up name nothing.
fn same_layer_named(
    labels: &HashMap<String, String>,
    chain_id: &Digest,
) -> Option<(Digest, Option<Digest>)> {
    let diff_id: Digest = labels.get(SNAPSHOT_DIFF_ID)?.parse().ok()?;
    let parent: Option<Digest> = match labels.get(SNAPSHOT_PARENT_CHAIN_ID) {
        None => None,
        Some(p) if p.is_empty() => None,
        Some(p) => Some(p.parse().ok()?),
    };
    let computed = match parent {
        None => diff_id,
        Some(p) => Digest::of(format!("{p} {diff_id}").as_bytes()),
    };
    (computed == *chain_id).then_some((diff_id, parent))
}

/// What containerd 2.3+ says of the layer (its diffID and its parent's chain
/// ID, when it sends them) against the archived layer found by chain ID;
/// `None` when nothing disagrees. A chain ID already covers both, so a
/// disagreement means a broken index or a broken client: neither is trusted.
fn disagreement(labels: &HashMap<String, String>, layer: &LayerRef) -> Option<String> {
    if let Some(diff_id) = labels.get(SNAPSHOT_DIFF_ID) {
        if *diff_id != layer.diff_id.to_string() {
            return Some(format!("diff-id {diff_id}, archived {}", layer.diff_id));
        }
    }
    if let Some(parent) = labels.get(SNAPSHOT_PARENT_CHAIN_ID) {
        let archived = layer.parent.map(|p| p.to_string()).unwrap_or_default();
        if *parent != archived {
            return Some(format!("parent-chain-id {parent}, archived {archived:?}"));
        }
    }
    None
}

fn remote_of(sn: &Snapshotter) -> &Remote {
    sn.remote().expect("remote path without a layer source")
}

impl Snapshotter {
    /// Name of a committed snapshot carrying `target` on `parent`, if any.
    pub(crate) fn find_target(
        &self,
        target: &str,
        parent: &str,
    ) -> Result<Option<String>, SnapshotError> {
        let all = self.meta.read()?.list()?;
        Ok(all
            .into_iter()
            .find(|i| {
                i.record.kind == Kind::Committed
                    && i.record.parent == parent
                    && i.record.labels.get(TARGET_SNAPSHOT_REF).map(String::as_str) == Some(target)
            })
            .map(|i| i.name))
    }

    /// Whether the committed snapshot `parent` is the layer whose chain ID is
    /// `want` (`None`: no parent). A chain ID covers every layer below, so
    /// the parent's own chain ID decides: from its target label, or from its
    /// name (containerd commits unpacked layers as `<ns>/<n>/<chainID>`).
    fn parent_is(&self, parent: &str, want: Option<Digest>) -> Result<bool, SnapshotError> {
        let Some(want) = want else {
            return Ok(parent.is_empty());
        };
        if parent.is_empty() {
            return Ok(false);
        }
        let record = match self.meta.read()?.get(parent) {
            Ok(r) => r,
            Err(e) if e.is_not_found() => return Ok(false),
            Err(e) => return Err(e),
        };
        if record.kind != Kind::Committed {
            return Ok(false);
        }
        let want = want.to_string();
        Ok(match record.labels.get(TARGET_SNAPSHOT_REF) {
            Some(t) => *t == want,
            None => parent.ends_with(&want),
        })
    }

    /// Records the staged layer as the committed snapshot for `target` on
    /// `parent` and moves its directory into place, in one transaction.
    /// Without a staged layer (an import), the snapshot is committed empty
    /// and pending (see `lazy.rs`). Returns the snapshot's name: `target`
    /// itself, unless that name is taken (same layer on a different parent
    /// name).
    fn commit_staged(
        &self,
        target: &str,
        parent: &str,
        labels: std::collections::BTreeMap<String, String>,
        staged: Option<StagedLayer>,
    ) -> Result<String, SnapshotError> {
        let result = (|| {
            let txn = self.meta.write()?;
            if let Some(existing) = txn.list()?.into_iter().find(|i| {
                i.record.kind == Kind::Committed
                    && i.record.parent == parent
                    && i.record.labels.get(TARGET_SNAPSHOT_REF).map(String::as_str) == Some(target)
            }) {
                return Err(SnapshotError::AlreadyExists(format!(
                    "target snapshot {target:?} (as {:?})",
                    existing.name
                )));
            }
            let mut name = target.to_string();
            let mut n = 1;
            while txn.get(&name)?.is_some() {
                name = format!("{target}@{n}");
                n += 1;
            }
            let usage = staged.as_ref().map(|s| s.usage).unwrap_or_default();
            let chain = txn.create(Kind::Committed, &name, parent, labels, usage)?;
            let dir = self.layout.dir(chain.id);
            match &staged {
                Some(staged) => self.install(&staged.dir, &dir)?,
                None => {
                    self.install_empty(&dir)?;
                    txn.set_pending(&name, Some(target.to_string()), usage)?;
                }
            }
            if let Err(err) = sync_dir(self.layout.snapshots_dir()).and_then(|()| txn.commit()) {
                remove_all(&dir);
                return Err(err);
            }
            Ok(name)
        })();
        if let (Err(_), Some(staged)) = (&result, &staged) {
            remove_all(&staged.dir);
        }
        result
    }
}

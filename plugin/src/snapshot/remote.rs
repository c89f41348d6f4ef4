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

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::{BoxFuture, FutureExt, Shared};
use tokio::sync::Semaphore;
use tracing::Instrument;

use crate::catalog::{LayerRef, LayerSource};
use crate::digest::Digest;
use crate::labels::{CRI_MANIFEST_DIGEST, TARGET_SNAPSHOT_REF};

use super::meta::{clean_labels, Kind, Usage};
use super::{blocking, disk_usage, mkdir, remove_all, sync_dir, SnapshotError, Snapshotter};

/// Staged layers nobody claimed are dropped by Cleanup after this long.
const STAGED_TTL: Duration = Duration::from_secs(600);

/// A layer extracted into the staging area, waiting to be committed.
#[derive(Clone, Debug)]
pub struct StagedLayer {
    /// `staging/<chain hex>-<n>`, holding `fs/`.
    pub dir: PathBuf,
    pub usage: Usage,
}

type Extraction = Shared<BoxFuture<'static, Result<StagedLayer, String>>>;

struct Job {
    /// Tells this job from a later one for the same chain ID.
    seq: u64,
    extraction: Extraction,
    started: Instant,
}

/// Layer extraction state shared by all requests.
pub struct Remote {
    source: Arc<dyn LayerSource>,
    staging: PathBuf,
    /// Bounds parallel extractions to the number of cores.
    permits: Arc<Semaphore>,
    /// One extraction per chain ID (single-flight), until a Prepare takes it.
    jobs: Mutex<HashMap<Digest, Job>>,
    /// Serializes remote Prepares of one chain ID, so a second one sees what
    /// the first committed.
    prepares: Mutex<HashMap<Digest, Arc<tokio::sync::Mutex<()>>>>,
    /// Chain IDs whose Prepare already sent their images' layers to
    /// prefetch.
    prefetched: Mutex<HashSet<Digest>>,
    /// Chain IDs taken out of staging and not committed yet: not to be
    /// prefetched again meanwhile.
    taken: Mutex<HashSet<Digest>>,
    seq: AtomicU64,
}

impl Remote {
    pub fn new(source: Arc<dyn LayerSource>, staging: PathBuf) -> Self {
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
        }
    }

    pub fn source(&self) -> &Arc<dyn LayerSource> {
        &self.source
    }

    /// The running or finished extraction of `layer`, started if there is
    /// none. Needs a tokio runtime.
    fn extraction(&self, layer: &LayerRef) -> (u64, Extraction) {
        let mut jobs = self.jobs.lock().unwrap();
        if let Some(job) = jobs.get(&layer.chain_id) {
            return (job.seq, job.extraction.clone());
        }
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let dir = self.staging.join(format!("{}-{seq}", layer.chain_id.hex()));
        let source = self.source.clone();
        let permits = self.permits.clone();
        let chain_id = layer.chain_id;
        let layer = layer.clone();
        let span =
            tracing::info_span!("extract", chain_id = %layer.chain_id, digest = %layer.digest);
        let task = tokio::spawn(
            async move {
                let _permit = permits.acquire_owned().await.map_err(|e| e.to_string())?;
                blocking(move || Ok(extract(source.as_ref(), &layer, &dir)))
                    .await
                    .map_err(|e| e.to_string())?
            }
            .instrument(span),
        );
        let extraction = async move {
            match task.await {
                Ok(result) => result,
                Err(err) => Err(format!("extraction task failed: {err}")),
            }
        }
        .boxed()
        .shared();
        jobs.insert(
            chain_id,
            Job {
                seq,
                extraction: extraction.clone(),
                started: Instant::now(),
            },
        );
        (seq, extraction)
    }

    /// Waits for `layer`'s extraction (starting it if needed) and takes the
    /// staged directory out of the shared state: the caller owns it now.
    async fn take(&self, layer: &LayerRef) -> Result<StagedLayer, String> {
        let (seq, extraction) = self.extraction(layer);
        let result = extraction.await;
        let mine = {
            let mut jobs = self.jobs.lock().unwrap();
            match jobs.get(&layer.chain_id) {
                Some(job) if job.seq == seq => {
                    jobs.remove(&layer.chain_id);
                    self.taken.lock().unwrap().insert(layer.chain_id);
                    true
                }
                _ => false,
            }
        };
        match result {
            Ok(staged) if mine => Ok(staged),
            Ok(_) => Err("the staged layer was taken by another request".into()),
            Err(err) => Err(err),
        }
    }

    /// The staged layer of `chain_id` was committed or dropped.
    fn settled(&self, chain_id: &Digest) {
        self.taken.lock().unwrap().remove(chain_id);
    }

    /// Starts extracting the other archived layers of `layer`'s images (once
    /// per requested layer; layers already committed, staged, or being
    /// committed are skipped). Only layers whose whole parent chain is
    /// archived are worth it: containerd downloads everything above the
    /// first missing layer.
    fn prefetch(&self, sn: &Snapshotter, layer: &LayerRef, manifest: Option<Digest>) {
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
        for l in wanted {
            let busy = self.taken.lock().unwrap().contains(&l.chain_id);
            if !busy && !committed.contains(&l.chain_id.to_string()) {
                tracing::debug!(chain_id = %l.chain_id, "prefetching layer");
                drop(self.extraction(&l));
            }
        }
    }

    /// Deletes staged layers nobody claimed for a while, and forgets failed
    /// extractions. Returns the sequence numbers of the jobs left. Blocking.
    fn expire(&self) -> HashSet<u64> {
        let mut known = HashSet::new();
        let mut stale = Vec::new();
        {
            let mut jobs = self.jobs.lock().unwrap();
            jobs.retain(|_, job| {
                let finished = job.extraction.peek().map(|r| r.as_ref().ok().cloned());
                match finished {
                    Some(Some(staged)) if job.started.elapsed() > STAGED_TTL => {
                        stale.push(staged.dir);
                        false
                    }
                    Some(None) => false,
                    _ => true,
                }
            });
            for job in jobs.values() {
                known.insert(job.seq);
            }
        }
        for dir in stale {
            tracing::info!(path = %dir.display(), "dropping unclaimed staged layer");
            remove_all(&dir);
        }
        known
    }

    /// [`Remote::expire`], plus anything in the staging directory no job
    /// knows. Blocking.
    pub fn cleanup(&self) {
        let known = self.expire();
        let Ok(entries) = fs::read_dir(&self.staging) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let seq = name
                .to_str()
                .and_then(|n| n.rsplit_once('-'))
                .and_then(|(_, s)| s.parse::<u64>().ok());
            if !seq.is_some_and(|s| known.contains(&s)) {
                remove_all(&entry.path());
            }
        }
    }

    fn prepare_lock(&self, chain_id: &Digest) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.prepares.lock().unwrap();
        locks.retain(|_, l| Arc::strong_count(l) > 1);
        locks.entry(*chain_id).or_default().clone()
    }
}

/// Extracts `layer` into `dir/fs` (blocking). On failure nothing is left.
fn extract(source: &dyn LayerSource, layer: &LayerRef, dir: &Path) -> Result<StagedLayer, String> {
    let result = (|| {
        mkdir(dir, 0o700).map_err(|e| e.to_string())?;
        let fs_dir = dir.join("fs");
        mkdir(&fs_dir, 0o755).map_err(|e| e.to_string())?;
        let blob = source
            .open_blob(&layer.digest)
            .map_err(|e| format!("open blob {}: {e}", layer.digest))?;
        let started = Instant::now();
        let stats = crate::extract::unpack_layer(blob, layer.compression, &layer.diff_id, &fs_dir)
            .map_err(|e| {
                if e.is_hostile() {
                    tracing::warn!(chain_id = %layer.chain_id, error = %e, "hostile layer refused");
                }
                e.to_string()
            })?;
        let usage = disk_usage(&fs_dir).map_err(|e| e.to_string())?;
        // The layer's data must be on disk before a record says it is there.
        let root =
            fs::File::open(&fs_dir).map_err(|e| format!("open {}: {e}", fs_dir.display()))?;
        rustix::fs::syncfs(&root).map_err(|e| format!("syncfs {}: {e}", fs_dir.display()))?;
        sync_dir(dir).map_err(|e| e.to_string())?;
        tracing::info!(
            chain_id = %layer.chain_id,
            entries = stats.entries,
            bytes = stats.decompressed_bytes,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "layer extracted from archive"
        );
        Ok(StagedLayer {
            dir: dir.to_path_buf(),
            usage,
        })
    })();
    if result.is_err() {
        remove_all(dir);
    }
    result
}

/// Tries the remote path for a Prepare. `Some(error)` is the answer to send
/// (`ALREADY_EXISTS` once the target exists); `None` means: go on with the
/// ordinary path.
pub async fn prepare(
    sn: &Arc<Snapshotter>,
    key: &str,
    parent: &str,
    labels: &HashMap<String, String>,
) -> Option<SnapshotError> {
    let remote = sn.remote()?;
    let target = labels.get(TARGET_SNAPSHOT_REF)?.clone();
    let span = tracing::info_span!("remote", %target, %key, %parent);
    async move {
        let chain_id: Digest = match target.parse() {
            Ok(d) => d,
            Err(_) => {
                tracing::debug!("target is not a chain ID: ordinary path");
                return None;
            }
        };
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
                return None;
            }
        }

        let source = remote.source().clone();
        let layer = match blocking(move || Ok(source.layer(&chain_id))).await {
            Ok(Some(layer)) => layer,
            _ => {
                tracing::debug!("layer not in the archives: ordinary path");
                return None;
            }
        };
        let (s, p, want) = (sn.clone(), parent.to_string(), layer.parent);
        match blocking(move || s.parent_is(&p, want)).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::info!(expected = ?layer.parent, "parent is not the layer below: ordinary path");
                return None;
            }
            Err(err) => {
                tracing::warn!(error = %err, "checking the parent failed: ordinary path");
                return None;
            }
        }
        let labels = match clean_labels(labels.clone()) {
            Ok(l) => l,
            Err(_) => return None, // the ordinary path reports it
        };

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
                tracing::warn!(error = %err, "extraction from the archive failed: ordinary path (containerd downloads the layer)");
                return None;
            }
        };
        let (s, t, p) = (sn.clone(), target.clone(), parent.to_string());
        let committed = blocking(move || s.commit_staged(&t, &p, labels, staged)).await;
        remote.settled(&chain_id);
        match committed {
            Ok(name) => {
                tracing::info!(snapshot = %name, "layer committed from archive");
                Some(SnapshotError::AlreadyExists(format!("target snapshot {target:?}")))
            }
            Err(err) if err.is_already_exists() => Some(err),
            Err(err) => {
                tracing::warn!(error = %err, "committing the extracted layer failed: ordinary path");
                None
            }
        }
    }
    .instrument(span)
    .await
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

    /// Targets of every committed snapshot.
    fn committed_targets(&self) -> Result<HashSet<String>, SnapshotError> {
        let all = self.meta.read()?.list()?;
        Ok(all
            .into_iter()
            .filter(|i| i.record.kind == Kind::Committed)
            .filter_map(|i| i.record.labels.get(TARGET_SNAPSHOT_REF).cloned())
            .collect())
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
    /// Returns the snapshot's name: `target` itself, unless that name is
    /// taken (same layer on a different parent name).
    fn commit_staged(
        &self,
        target: &str,
        parent: &str,
        labels: std::collections::BTreeMap<String, String>,
        staged: StagedLayer,
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
            let chain = txn.create(Kind::Committed, &name, parent, labels, staged.usage)?;
            let dir = self.layout.dir(chain.id);
            self.install(&staged.dir, &dir)?;
            if let Err(err) = sync_dir(self.layout.snapshots_dir()).and_then(|()| txn.commit()) {
                remove_all(&dir);
                return Err(err);
            }
            Ok(name)
        })();
        if result.is_err() {
            remove_all(&staged.dir);
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::super::proto::containerd::services::snapshots::v1 as api;
    use super::super::test_support::{dir_names, layer_tar, Entry, FakeSource, TestServer};
    use super::*;
    use tonic::Code;

    fn target_labels(chain: &Digest) -> HashMap<String, String> {
        HashMap::from([
            (TARGET_SNAPSHOT_REF.to_string(), chain.to_string()),
            (
                "containerd.io/snapshot/cri.layer-digest".into(),
                "hint".into(),
            ),
        ])
    }

    fn prepare(
        key: &str,
        parent: &str,
        labels: HashMap<String, String>,
    ) -> api::PrepareSnapshotRequest {
        api::PrepareSnapshotRequest {
            snapshotter: "airgap".into(),
            key: key.into(),
            parent: parent.into(),
            labels,
        }
    }

    /// containerd's lookup after ALREADY_EXISTS (metadata/snapshot.go):
    /// committed snapshots carrying the target on the parent.
    async fn lookup(server: &mut TestServer, target: &Digest, parent: &str) -> Vec<api::Info> {
        let filter = format!(r#"labels."containerd.io/snapshot.ref"=={target},parent=={parent:?}"#);
        let mut stream = server
            .client
            .list(api::ListSnapshotsRequest {
                snapshotter: "airgap".into(),
                filters: vec![filter],
            })
            .await
            .unwrap()
            .into_inner();
        let mut out = Vec::new();
        while let Some(msg) = stream.message().await.unwrap() {
            out.extend(msg.info);
        }
        // containerd takes the first committed one.
        out.retain(|i| i.kind == api::Kind::Committed as i32);
        out
    }

    fn image(n: usize) -> Vec<Vec<u8>> {
        (0..n)
            .map(|i| {
                let name = format!("layer{i}");
                let body = format!("content of layer {i}\n");
                layer_tar(&[
                    Entry::Dir("etc"),
                    Entry::File(&format!("etc/{name}"), body.as_bytes()),
                    Entry::File("etc/top", body.as_bytes()),
                    Entry::Symlink("link", "etc/top"),
                ])
            })
            .collect()
    }

    fn staging_is_empty(server: &TestServer) -> bool {
        dir_names(&server.root().join("staging")).is_empty()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn archived_layers_are_committed_and_answer_already_exists() {
        let mut fake = FakeSource::default();
        let layers = fake.add_image(&image(2), &[]);
        let fake = Arc::new(fake);
        let mut server = TestServer::start(Some(fake.clone())).await;

        let key0 = "k8s.io/1/extract-1 sha256:x";
        let err = server
            .client
            .prepare(prepare(key0, "", target_labels(&layers[0].chain_id)))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");
        let found = lookup(&mut server, &layers[0].chain_id, "").await;
        assert_eq!(found.len(), 1);
        let bottom = found[0].clone();
        assert_eq!(bottom.kind, api::Kind::Committed as i32);
        assert_eq!(bottom.name, layers[0].chain_id.to_string());
        assert_eq!(
            bottom.labels["containerd.io/snapshot/cri.layer-digest"],
            "hint"
        );
        // The active key was never created.
        let err = server
            .client
            .stat(api::StatSnapshotRequest {
                snapshotter: "airgap".into(),
                key: key0.into(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::NotFound);

        // The second layer on top of it, with the parent containerd names.
        let err = server
            .client
            .prepare(prepare(
                "k8s.io/2/extract-2",
                &bottom.name,
                target_labels(&layers[1].chain_id),
            ))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::AlreadyExists);
        let found = lookup(&mut server, &layers[1].chain_id, &bottom.name).await;
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].parent, bottom.name);

        // A container on top sees both layers through the mounts.
        let view = server
            .client
            .view(api::ViewSnapshotRequest {
                snapshotter: "airgap".into(),
                key: "view".into(),
                parent: found[0].name.clone(),
                labels: HashMap::new(),
            })
            .await
            .unwrap()
            .into_inner();
        let lower = view.mounts[0]
            .options
            .iter()
            .find_map(|o| o.strip_prefix("lowerdir="))
            .unwrap()
            .to_string();
        let dirs: Vec<&str> = lower.split(':').collect();
        assert_eq!(dirs.len(), 2);
        assert_eq!(
            std::fs::read_to_string(Path::new(dirs[0]).join("etc/top")).unwrap(),
            "content of layer 1\n",
            "nearest layer first"
        );
        assert_eq!(
            std::fs::read_to_string(Path::new(dirs[1]).join("etc/layer0")).unwrap(),
            "content of layer 0\n"
        );
        assert_eq!(
            std::fs::read_link(Path::new(dirs[1]).join("link")).unwrap(),
            Path::new("etc/top")
        );

        // Usage is real.
        let usage = server
            .client
            .usage(api::UsageRequest {
                snapshotter: "airgap".into(),
                key: bottom.name.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(usage.size > 0 && usage.inodes >= 4, "{usage:?}");

        // Each blob was read once: the second layer was prefetched.
        assert_eq!(fake.opened(&layers[0].digest), 1);
        assert_eq!(fake.opened(&layers[1].digest), 1);
        assert!(staging_is_empty(&server));

        // Another namespace pulling the same image: ALREADY_EXISTS at once.
        let err = server
            .client
            .prepare(prepare(
                "other/1/extract-3",
                "",
                target_labels(&layers[0].chain_id),
            ))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::AlreadyExists);
        assert_eq!(fake.total_opens(), 2);

        // containerd's GC removes them, directories included.
        let snapshots = server.root().join("snapshots");
        for key in ["view", found[0].name.as_str(), bottom.name.as_str()] {
            server
                .client
                .remove(api::RemoveSnapshotRequest {
                    snapshotter: "airgap".into(),
                    key: key.into(),
                })
                .await
                .unwrap();
        }
        assert!(dir_names(&snapshots).is_empty());
        server.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn without_a_target_label_prepare_is_ordinary() {
        let mut fake = FakeSource::default();
        fake.add_image(&image(1), &[]);
        let fake = Arc::new(fake);
        let mut server = TestServer::start(Some(fake.clone())).await;
        let resp = server
            .client
            .prepare(prepare("plain", "", HashMap::new()))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(resp.mounts[0].r#type, "bind");
        assert_eq!(fake.total_opens(), 0);
        server.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn anything_wrong_falls_back_to_the_ordinary_path() {
        let mut fake = FakeSource::default();
        // Layer 1 is not archived.
        let layers = fake.add_image(&image(3), &[1]);
        let fake = Arc::new(fake);
        let mut server = TestServer::start(Some(fake.clone())).await;

        // Not archived: an active snapshot, containerd downloads.
        let resp = server
            .client
            .prepare(prepare("a1", "", target_labels(&layers[1].chain_id)))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(resp.mounts[0].r#type, "bind");

        // Archived, but on the wrong parent: ordinary path.
        let resp = server
            .client
            .prepare(prepare("a2", "", target_labels(&layers[2].chain_id)))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(resp.mounts[0].r#type, "bind");

        // Not a chain ID at all.
        let mut labels = HashMap::new();
        labels.insert(TARGET_SNAPSHOT_REF.to_string(), "whatever".to_string());
        server
            .client
            .prepare(prepare("a3", "", labels))
            .await
            .unwrap();

        // Archived but corrupt: the diffID check fails, nothing is left.
        fake.corrupt(
            &layers[0].digest,
            super::super::test_support::gzip(b"not a tar"),
        );
        let resp = server
            .client
            .prepare(prepare("a4", "", target_labels(&layers[0].chain_id)))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(resp.mounts[0].r#type, "bind");
        assert!(lookup(&mut server, &layers[0].chain_id, "")
            .await
            .is_empty());
        assert!(staging_is_empty(&server));
        let all = server.sn.list(&[]).unwrap();
        let names: Vec<&str> = all.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, ["a1", "a2", "a3", "a4"]);
        assert!(all.iter().all(|i| i.record.kind == Kind::Active));
        server.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn parents_downloaded_by_containerd_count_by_their_name() {
        let mut fake = FakeSource::default();
        let layers = fake.add_image(&image(2), &[0]);
        let fake = Arc::new(fake);
        let mut server = TestServer::start(Some(fake.clone())).await;
        // containerd downloaded layer 0 and committed it as <ns>/<n>/<chainID>.
        server
            .client
            .prepare(prepare("k8s.io/1/extract", "", HashMap::new()))
            .await
            .unwrap();
        let parent = format!("k8s.io/2/{}", layers[0].chain_id);
        server
            .client
            .commit(api::CommitSnapshotRequest {
                snapshotter: "airgap".into(),
                name: parent.clone(),
                key: "k8s.io/1/extract".into(),
                labels: HashMap::new(),
            })
            .await
            .unwrap();
        let err = server
            .client
            .prepare(prepare(
                "k8s.io/3/extract",
                &parent,
                target_labels(&layers[1].chain_id),
            ))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::AlreadyExists);
        assert_eq!(
            lookup(&mut server, &layers[1].chain_id, &parent)
                .await
                .len(),
            1
        );
        server.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_same_layer_on_another_parent_name_gets_its_own_snapshot() {
        let mut fake = FakeSource::default();
        let layers = fake.add_image(&image(2), &[]);
        let fake = Arc::new(fake);
        let mut server = TestServer::start(Some(fake.clone())).await;
        // Namespace a: both layers from the archive.
        let err = server
            .client
            .prepare(prepare("a/1", "", target_labels(&layers[0].chain_id)))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::AlreadyExists);
        let bottom = layers[0].chain_id.to_string();
        server
            .client
            .prepare(prepare("a/2", &bottom, target_labels(&layers[1].chain_id)))
            .await
            .unwrap_err();
        // Namespace b downloaded layer 0 itself, then asks for layer 1.
        server
            .client
            .prepare(prepare("b/1", "", HashMap::new()))
            .await
            .unwrap();
        let parent = format!("b/2/{}", layers[0].chain_id);
        server
            .client
            .commit(api::CommitSnapshotRequest {
                snapshotter: "airgap".into(),
                name: parent.clone(),
                key: "b/1".into(),
                labels: HashMap::new(),
            })
            .await
            .unwrap();
        let err = server
            .client
            .prepare(prepare("b/3", &parent, target_labels(&layers[1].chain_id)))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::AlreadyExists);
        let found = lookup(&mut server, &layers[1].chain_id, &parent).await;
        assert_eq!(found.len(), 1);
        assert_ne!(found[0].name, layers[1].chain_id.to_string());
        server.stop().await;
    }
}

#[cfg(test)]
mod concurrency_tests {
    use super::super::proto::containerd::services::snapshots::v1 as api;
    use super::super::test_support::{dir_names, layer_tar, Entry, FakeSource, TestServer};
    use super::*;
    use tonic::Code;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_prepares_of_one_layer_extract_it_once() {
        let mut fake = FakeSource::default();
        let tars: Vec<Vec<u8>> = (0..3)
            .map(|i| layer_tar(&[Entry::File(&format!("f{i}"), b"x")]))
            .collect();
        let layers = fake.add_image(&tars, &[]);
        let fake = Arc::new(fake);
        let server = TestServer::start(Some(fake.clone())).await;
        let mut calls = Vec::new();
        for ns in 0..6 {
            let mut c = server.client.clone();
            let labels = HashMap::from([(
                TARGET_SNAPSHOT_REF.to_string(),
                layers[0].chain_id.to_string(),
            )]);
            calls.push(tokio::spawn(async move {
                c.prepare(api::PrepareSnapshotRequest {
                    snapshotter: "airgap".into(),
                    key: format!("ns{ns}/1/extract"),
                    parent: String::new(),
                    labels,
                })
                .await
            }));
        }
        for call in calls {
            let err = call.await.unwrap().unwrap_err();
            assert_eq!(err.code(), Code::AlreadyExists);
        }
        assert_eq!(fake.opened(&layers[0].digest), 1);
        let committed: Vec<_> = server
            .sn
            .list(&[])
            .unwrap()
            .into_iter()
            .filter(|i| i.record.kind == Kind::Committed)
            .collect();
        assert_eq!(committed.len(), 1);

        // The other layers were prefetched into staging, once each.
        for _ in 0..100 {
            if fake.total_opens() == 3 && dir_names(&server.root().join("staging")).len() == 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(fake.opened(&layers[1].digest), 1);
        assert_eq!(fake.opened(&layers[2].digest), 1);
        // Cleanup keeps fresh staged layers, drops what no job knows.
        let staging = server.root().join("staging");
        std::fs::create_dir_all(staging.join("leftover/fs")).unwrap();
        server.sn.cleanup().unwrap();
        assert_eq!(dir_names(&staging).len(), 2);
        server.stop().await;
    }
}

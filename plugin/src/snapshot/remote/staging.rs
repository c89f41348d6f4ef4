//! Layers extracted from the archives into the staging directory, one
//! extraction per chain ID (single-flight), bounded by the number of cores,
//! until a Prepare takes them; and the cleanup of what nobody took.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::{BoxFuture, FutureExt, Shared};
use tracing::Instrument;

use crate::catalog::{LayerRef, LayerSource};
use crate::digest::Digest;

use super::Remote;
use crate::layer::LayerBacking;
use crate::snapshot::meta::Usage;
use crate::snapshot::{blocking, disk_usage, mkdir, remove_all, sync_dir, SnapshotError};

/// Staged layers nobody claimed are dropped by Cleanup after this long.
const STAGED_TTL: Duration = Duration::from_secs(600);

/// A layer extracted into the staging area, waiting to be committed.
#[derive(Clone, Debug)]
pub(crate) struct StagedLayer {
    /// `staging/<chain hex>-<n>`, holding `fs/`.
    pub(crate) dir: PathBuf,
    pub(crate) usage: Usage,
}

/// Why a layer could not be staged, or taken out of staging. Logged by the
/// Prepare path, which then goes on as an ordinary snapshotter.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StagingError {
    #[error("open blob {digest}: {source}")]
    OpenBlob {
        digest: Digest,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Extract(#[from] crate::extract::ExtractError),
    /// Staging directories, disk usage, syncing; or the blocking task.
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error("no extraction slot: {0}")]
    Permit(#[from] tokio::sync::AcquireError),
    #[error("extraction task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error("the staged layer was taken by another request")]
    TakenByAnother,
    /// The failure of an extraction shared by several requests.
    #[error(transparent)]
    Shared(#[from] Arc<StagingError>),
}

/// One extraction, awaited by every request for its chain ID (so its error
/// is shared too).
type Extraction = Shared<BoxFuture<'static, Result<StagedLayer, Arc<StagingError>>>>;

pub(super) struct Job {
    /// Tells this job from a later one for the same chain ID.
    seq: u64,
    /// The layer's diffID when no archive holds its chain ID (found by
    /// diffID on another parent, see `same_layer_named`): it is withdrawn
    /// when no archive holds that diffID any more.
    by_diff_id: Option<Digest>,
    extraction: Extraction,
    started: Instant,
}

impl Job {
    /// The extraction's result once it is over. Polls it: a prefetch
    /// nobody awaits yet would otherwise never look finished (`peek` only
    /// sees a result some awaiting request already took out).
    fn finished(&self) -> Option<Result<StagedLayer, Arc<StagingError>>> {
        self.extraction.clone().now_or_never()
    }
}

impl Remote {
    /// The running or finished extraction of `layer`, started if there is
    /// none. Needs a tokio runtime.
    pub(super) fn extraction(&self, layer: &LayerRef) -> (u64, Extraction) {
        // Asked before taking the jobs lock (see `expire`).
        let by_diff_id = self
            .source
            .layer(&layer.chain_id)
            .is_none()
            .then_some(layer.diff_id);
        let mut jobs = self.jobs.lock().unwrap();
        if let Some(job) = jobs.get(&layer.chain_id) {
            return (job.seq, job.extraction.clone());
        }
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let dir = self.staging.join(format!("{}-{seq}", layer.chain_id.hex()));
        let source = self.source.clone();
        let permits = self.permits.clone();
        let layers = self.layers.clone();
        let chain_id = layer.chain_id;
        let layer = layer.clone();
        let span =
            tracing::info_span!("extract", chain_id = %layer.chain_id, digest = %layer.digest);
        let task = tokio::spawn(
            async move {
                let _permit = permits.acquire_owned().await?;
                let _timed = crate::metrics::global().extraction();
                blocking(move || Ok(stage_layer(source.as_ref(), &layer, &dir, &layers))).await?
            }
            .instrument(span),
        );
        let extraction = async move {
            match task.await {
                Ok(result) => result,
                Err(err) => Err(StagingError::Task(err)),
            }
            .map_err(Arc::new)
        }
        .boxed()
        .shared();
        jobs.insert(
            chain_id,
            Job {
                seq,
                by_diff_id,
                extraction: extraction.clone(),
                started: Instant::now(),
            },
        );
        (seq, extraction)
    }

    /// Waits for `layer`'s extraction (starting it if needed) and takes the
    /// staged directory out of the shared state: the caller owns it now.
    pub(super) async fn take(&self, layer: &LayerRef) -> Result<StagedLayer, StagingError> {
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
            Ok(_) => Err(StagingError::TakenByAnother),
            Err(err) => Err(err.into()),
        }
    }

    /// The Prepare of `chain_id` is over: its staged layer was committed or
    /// dropped, or its extraction failed. A later Prepare of the same layer
    /// (the image pulled again after containerd's GC removed it) prefetches
    /// the image's other layers again.
    pub(super) fn settled(&self, chain_id: &Digest) {
        self.taken.lock().unwrap().remove(chain_id);
        self.prefetched.lock().unwrap().remove(chain_id);
    }

    /// Deletes staged layers nobody claimed for a while, and those no
    /// archive holds any more (the archive was deleted or replaced while the
    /// image was pulled: the layer's Prepare takes the ordinary path and
    /// never claims them), and forgets failed extractions. Returns the
    /// sequence numbers of the jobs left. Blocking.
    pub(super) fn expire(&self) -> HashSet<u64> {
        let finished: Vec<(Digest, Option<Digest>)> = self
            .jobs
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, job)| matches!(job.finished(), Some(Ok(_))))
            .map(|(chain_id, job)| (*chain_id, job.by_diff_id))
            .collect();
        // Asked without holding the jobs lock: the source may wait for
        // its own.
        let withdrawn: HashSet<Digest> = finished
            .into_iter()
            .filter(|(chain_id, by_diff_id)| match by_diff_id {
                Some(diff_id) => self.source.layer_with_diff_id(diff_id).is_none(),
                None => self.source.layer(chain_id).is_none(),
            })
            .map(|(chain_id, _)| chain_id)
            .collect();
        let mut known = HashSet::new();
        let mut stale = Vec::new();
        {
            let mut jobs = self.jobs.lock().unwrap();
            jobs.retain(|chain_id, job| {
                let finished = job.finished().map(|r| r.ok());
                match finished {
                    Some(Some(staged))
                        if job.started.elapsed() > STAGED_TTL || withdrawn.contains(chain_id) =>
                    {
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
    pub(crate) fn cleanup(&self) {
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
}

/// Stages `layer` in `dir` (blocking): its index mounted on `dir/fs` when
/// `layers` can, else extracted into `dir/fs`. On failure nothing is left.
fn stage_layer(
    source: &dyn LayerSource,
    layer: &LayerRef,
    dir: &Path,
    layers: &LayerBacking,
) -> Result<StagedLayer, StagingError> {
    if let Some(staged) = layers.stage(source, layer, dir) {
        let usage = Usage {
            size: staged.bytes as i64,
            inodes: staged.inodes as i64,
        };
        return Ok(StagedLayer {
            dir: dir.to_path_buf(),
            usage,
        });
    }
    let result = (|| {
        mkdir(dir, 0o700)?;
        let fs_dir = dir.join("fs");
        mkdir(&fs_dir, 0o755)?;
        let blob = source
            .open_blob(&layer.digest)
            .map_err(|source| StagingError::OpenBlob {
                digest: layer.digest,
                source,
            })?;
        let started = Instant::now();
        let stats = crate::extract::unpack_layer(blob, layer.compression, &layer.diff_id, &fs_dir)
            .inspect_err(|e| {
                if e.is_hostile() {
                    tracing::warn!(chain_id = %layer.chain_id, error = %e, "hostile layer refused");
                }
            })?;
        let usage = disk_usage(&fs_dir)?;
        // The layer's data must be on disk before a record says it is there.
        let root = fs::File::open(&fs_dir).map_err(|e| SnapshotError::io("open", &fs_dir, e))?;
        rustix::fs::syncfs(&root).map_err(|e| SnapshotError::io("syncfs", &fs_dir, e.into()))?;
        sync_dir(dir)?;
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

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use tonic::Code;

    use super::*;
    use crate::labels::TARGET_SNAPSHOT_REF;
    use crate::snapshot::proto::containerd::services::snapshots::v1 as api;
    use crate::snapshot::{Kind, SnapshotApi};
    use crate::testsupport::snapshot::{dir_names, layer_tar, Entry, FakeSource, TestServer};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_prepares_of_one_layer_extract_it_once() {
        crate::testsupport::requires_root!();
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

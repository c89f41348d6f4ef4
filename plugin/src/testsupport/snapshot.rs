//! Test helpers for the snapshotter: an in-memory [`LayerSource`], layer
//! blobs built on the fly, an in-memory [`SnapshotApi`], and the gRPC
//! service on a temporary unix socket.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::catalog::{Compression, LayerRef, LayerSource};
use crate::digest::Digest;

use crate::snapshot::filter::Filter;
use crate::snapshot::meta::{Record, Timestamp};
use crate::snapshot::proto::containerd::services::snapshots::v1::snapshots_client::SnapshotsClient;
use crate::snapshot::service::SnapshotService;
use crate::snapshot::{Info, Kind, Mount, SnapshotApi, SnapshotError, Snapshotter, Usage};

/// Unmounts whatever a test left mounted under its directory (a `merged`
/// overlay, then the EROFS mounts of layers).
pub struct Unmount(pub PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        for _ in 0..3 {
            let _ =
                rustix::mount::unmount(self.0.join("merged"), rustix::mount::UnmountFlags::DETACH);
        }
        crate::dirs::unmount_under(&self.0);
    }
}

/// One file of a test layer.
pub enum Entry<'a> {
    File(&'a str, &'a [u8]),
    Dir(&'a str),
    Symlink(&'a str, &'a str),
}

/// An uncompressed layer tar holding `entries`.
pub fn layer_tar(entries: &[Entry<'_>]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_ustar();
        h.set_mtime(1_700_000_000);
        h.set_uid(0);
        h.set_gid(0);
        match e {
            Entry::File(path, data) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(0o644);
                h.set_size(data.len() as u64);
                b.append_data(&mut h, path, *data).unwrap();
            }
            Entry::Dir(path) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                h.set_size(0);
                b.append_data(&mut h, path, std::io::empty()).unwrap();
            }
            Entry::Symlink(path, target) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_mode(0o777);
                h.set_size(0);
                b.append_link(&mut h, path, target).unwrap();
            }
        }
    }
    b.into_inner().unwrap()
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// An in-memory [`LayerSource`]: images as lists of layer tars, blobs kept
/// gzip-compressed, every `open_blob` counted.
#[derive(Default)]
pub struct FakeSource {
    layers: HashMap<Digest, LayerRef>,
    images: Vec<Vec<Digest>>,
    blobs: Mutex<HashMap<Digest, Vec<u8>>>,
    opened: Mutex<HashMap<Digest, usize>>,
    opens: AtomicUsize,
    /// Chain IDs of layers whose archive was deleted.
    withdrawn: Mutex<std::collections::HashSet<Digest>>,
    /// Uncompressed blobs also lying in a plain "archive" file.
    plain: HashMap<Digest, crate::catalog::PlainBlob>,
    /// Each blob's tar length.
    tar_sizes: HashMap<Digest, u64>,
}

impl FakeSource {
    /// Adds an image made of `tars` (bottom first); returns its layers.
    /// `skip` leaves those layer indexes out of the "archive".
    pub fn add_image(&mut self, tars: &[Vec<u8>], skip: &[usize]) -> Vec<LayerRef> {
        let diff_ids: Vec<Digest> = tars.iter().map(|t| Digest::of(t)).collect();
        let chain = Digest::chain_ids(&diff_ids);
        let mut out = Vec::new();
        for (i, tar) in tars.iter().enumerate() {
            let blob = gzip(tar);
            let layer = LayerRef {
                chain_id: chain[i],
                parent: i.checked_sub(1).map(|p| chain[p]),
                digest: Digest::of(&blob),
                diff_id: diff_ids[i],
                size: blob.len() as u64,
                compression: Compression::Gzip,
            };
            if !skip.contains(&i) {
                self.tar_sizes.insert(layer.digest, tar.len() as u64);
                self.blobs.get_mut().unwrap().insert(layer.digest, blob);
                self.layers.insert(layer.chain_id, layer.clone());
            }
            out.push(layer);
        }
        self.images.push(chain);
        out
    }

    /// Adds an image of uncompressed layers, also written one after the
    /// other (512-aligned, after a block of padding) into the file
    /// `archive`, as in a docker-save archive: [`LayerSource::plain_blob`]
    /// finds them there.
    pub fn add_plain_image(&mut self, tars: &[Vec<u8>], archive: &Path) -> Vec<LayerRef> {
        let diff_ids: Vec<Digest> = tars.iter().map(|t| Digest::of(t)).collect();
        let chain = Digest::chain_ids(&diff_ids);
        let mut file = vec![0u8; 512];
        let mut offsets = Vec::new();
        for tar in tars {
            offsets.push(file.len() as u64);
            file.extend_from_slice(tar);
            file.resize(file.len().next_multiple_of(512), 0);
        }
        std::fs::write(archive, &file).unwrap();
        let handle = Arc::new(std::fs::File::open(archive).unwrap());
        let key = crate::catalog::FileKey::of(&handle.metadata().unwrap());
        let mut out = Vec::new();
        for (i, tar) in tars.iter().enumerate() {
            let layer = LayerRef {
                chain_id: chain[i],
                parent: i.checked_sub(1).map(|p| chain[p]),
                digest: diff_ids[i],
                diff_id: diff_ids[i],
                size: tar.len() as u64,
                compression: Compression::None,
            };
            self.blobs
                .get_mut()
                .unwrap()
                .insert(layer.digest, tar.clone());
            self.layers.insert(layer.chain_id, layer.clone());
            self.plain.insert(
                layer.digest,
                crate::catalog::PlainBlob {
                    path: archive.to_owned(),
                    file: handle.clone(),
                    key,
                    offset: offsets[i],
                    size: tar.len() as u64,
                },
            );
            out.push(layer);
        }
        self.images.push(chain);
        out
    }

    /// Replaces a blob's bytes (to make its diffID check fail).
    pub fn corrupt(&self, digest: &Digest, bytes: Vec<u8>) {
        self.blobs.lock().unwrap().insert(*digest, bytes);
    }

    /// How many times the blob was opened.
    pub fn opened(&self, digest: &Digest) -> usize {
        self.opened
            .lock()
            .unwrap()
            .get(digest)
            .copied()
            .unwrap_or(0)
    }

    /// Takes layers out, as deleting their archive does: unknown from now
    /// on, their blobs unreadable.
    pub fn withdraw(&self, layers: &[LayerRef]) {
        let mut withdrawn = self.withdrawn.lock().unwrap();
        let mut blobs = self.blobs.lock().unwrap();
        for l in layers {
            withdrawn.insert(l.chain_id);
            blobs.remove(&l.digest);
        }
    }

    pub fn total_opens(&self) -> usize {
        self.opens.load(Ordering::SeqCst)
    }
}

impl LayerSource for FakeSource {
    fn layer(&self, chain_id: &Digest) -> Option<LayerRef> {
        if self.withdrawn.lock().unwrap().contains(chain_id) {
            return None;
        }
        self.layers.get(chain_id).cloned()
    }

    fn layer_with_diff_id(&self, diff_id: &Digest) -> Option<LayerRef> {
        let withdrawn = self.withdrawn.lock().unwrap();
        self.layers
            .values()
            .filter(|l| l.diff_id == *diff_id && !withdrawn.contains(&l.chain_id))
            .min_by_key(|l| l.chain_id)
            .cloned()
    }

    fn image_layers(&self, chain_id: &Digest, _manifest: Option<&Digest>) -> Vec<LayerRef> {
        let mut out: Vec<LayerRef> = Vec::new();
        for image in self.images.iter().filter(|i| i.contains(chain_id)) {
            for c in image {
                if let Some(l) = self.layer(c) {
                    if !out.iter().any(|o| o.chain_id == *c) {
                        out.push(l);
                    }
                }
            }
        }
        out
    }

    fn open_blob(&self, digest: &Digest) -> std::io::Result<Box<dyn Read + Send>> {
        self.opens.fetch_add(1, Ordering::SeqCst);
        *self.opened.lock().unwrap().entry(*digest).or_default() += 1;
        let bytes = self
            .blobs
            .lock()
            .unwrap()
            .get(digest)
            .cloned()
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no such blob"))?;
        Ok(Box::new(std::io::Cursor::new(bytes)))
    }

    fn plain_blob(&self, digest: &Digest) -> Option<crate::catalog::PlainBlob> {
        self.plain.get(digest).cloned()
    }

    fn layer_tar_size(&self, layer: &LayerRef) -> Option<u64> {
        self.tar_sizes.get(&layer.digest).copied()
    }
}

/// Makes the error a failing call answers, from the call's key.
pub type Failure = fn(&str) -> SnapshotError;

/// An in-memory [`SnapshotApi`]: records in a map, no files, bind mounts of
/// made-up paths. [`FakeSnapshotter::fail_with`] makes every call fail.
#[derive(Default)]
pub struct FakeSnapshotter {
    snapshots: Mutex<BTreeMap<String, Record>>,
    ids: AtomicU64,
    fail: Mutex<Option<Failure>>,
}

impl FakeSnapshotter {
    /// From now on every call fails with what `fail` makes of its key.
    pub fn fail_with(&self, fail: Failure) {
        *self.fail.lock().unwrap() = Some(fail);
    }

    fn check(&self, key: &str) -> Result<(), SnapshotError> {
        let fail = *self.fail.lock().unwrap();
        match fail {
            Some(fail) => Err(fail(key)),
            None => Ok(()),
        }
    }

    fn get(&self, key: &str) -> Result<Record, SnapshotError> {
        self.check(key)?;
        let snapshots = self.snapshots.lock().unwrap();
        snapshots
            .get(key)
            .cloned()
            .ok_or_else(|| SnapshotError::NotFound(format!("snapshot {key:?}")))
    }
}

impl SnapshotApi for FakeSnapshotter {
    fn create(
        &self,
        kind: Kind,
        key: &str,
        parent: &str,
        labels: HashMap<String, String>,
    ) -> Result<Vec<Mount>, SnapshotError> {
        self.check(key)?;
        let mut snapshots = self.snapshots.lock().unwrap();
        if snapshots.contains_key(key) {
            return Err(SnapshotError::AlreadyExists(format!("snapshot {key:?}")));
        }
        if !parent.is_empty() && !snapshots.contains_key(parent) {
            return Err(SnapshotError::NotFound(format!("parent {parent:?}")));
        }
        let id = self.ids.fetch_add(1, Ordering::SeqCst) + 1;
        let now = Timestamp::now();
        let record = Record {
            id,
            kind,
            parent: parent.to_string(),
            labels: labels.into_iter().collect(),
            created: now,
            updated: now,
            usage: Usage::default(),
            pending: None,
        };
        snapshots.insert(key.to_string(), record);
        Ok(vec![Mount {
            kind: "bind".into(),
            source: format!("/fake/{id}"),
            options: vec!["rbind".into(), "rw".into()],
        }])
    }

    fn mounts(&self, key: &str) -> Result<Vec<Mount>, SnapshotError> {
        let record = self.get(key)?;
        Ok(vec![Mount {
            kind: "bind".into(),
            source: format!("/fake/{}", record.id),
            options: vec!["rbind".into(), "rw".into()],
        }])
    }

    fn commit(
        &self,
        name: &str,
        key: &str,
        labels: HashMap<String, String>,
    ) -> Result<(), SnapshotError> {
        let mut record = self.get(key)?;
        let mut snapshots = self.snapshots.lock().unwrap();
        if snapshots.contains_key(name) {
            return Err(SnapshotError::AlreadyExists(format!("snapshot {name:?}")));
        }
        snapshots.remove(key);
        record.kind = Kind::Committed;
        record.labels = labels.into_iter().collect();
        snapshots.insert(name.to_string(), record);
        Ok(())
    }

    fn remove(&self, key: &str) -> Result<(), SnapshotError> {
        self.get(key)?;
        self.snapshots.lock().unwrap().remove(key);
        Ok(())
    }

    fn stat(&self, key: &str) -> Result<Info, SnapshotError> {
        let record = self.get(key)?;
        Ok(Info {
            name: key.to_string(),
            record,
        })
    }

    fn update(
        &self,
        name: &str,
        labels: HashMap<String, String>,
        _paths: &[String],
    ) -> Result<Info, SnapshotError> {
        let mut record = self.get(name)?;
        record.labels = labels.into_iter().collect();
        record.updated = Timestamp::now();
        self.snapshots
            .lock()
            .unwrap()
            .insert(name.to_string(), record.clone());
        Ok(Info {
            name: name.to_string(),
            record,
        })
    }

    fn list(&self, filters: &[String]) -> Result<Vec<Info>, SnapshotError> {
        self.check("")?;
        let filter = Filter::parse_all(filters)?;
        let snapshots = self.snapshots.lock().unwrap();
        Ok(snapshots
            .iter()
            .map(|(name, record)| Info {
                name: name.clone(),
                record: record.clone(),
            })
            .filter(|info| filter.matches(info))
            .collect())
    }

    fn usage(&self, key: &str) -> Result<Usage, SnapshotError> {
        Ok(self.get(key)?.usage)
    }

    fn cleanup(&self) -> Result<(), SnapshotError> {
        self.check("")
    }
}

/// The snapshots service on a unix socket in a temporary directory, and a
/// client connected to it. Serves the real [`Snapshotter`] unless told
/// otherwise.
pub struct TestServer<S = Snapshotter> {
    pub dir: tempfile::TempDir,
    pub sn: Arc<S>,
    pub client: SnapshotsClient<Channel>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TestServer {
    /// containerd's unpack of `layers` through the remote path: a Prepare
    /// naming each layer's chain ID as its target (`labels` added), which
    /// must be answered `ALREADY_EXISTS`. Returns the top layer's snapshot
    /// name (its chain ID: the name the remote path commits it under).
    pub async fn commit_layers(
        &self,
        layers: &[LayerRef],
        labels: &HashMap<String, String>,
    ) -> String {
        let mut parent = String::new();
        for (i, layer) in layers.iter().enumerate() {
            let mut labels = labels.clone();
            labels.insert(
                crate::labels::TARGET_SNAPSHOT_REF.to_string(),
                layer.chain_id.to_string(),
            );
            let err = self
                .client
                .clone()
                .prepare(
                    crate::snapshot::proto::containerd::services::snapshots::v1::PrepareSnapshotRequest {
                        snapshotter: "airgap".into(),
                        key: format!("ns/{i}/extract {}", layer.chain_id),
                        parent: parent.clone(),
                        labels,
                    },
                )
                .await
                .unwrap_err();
            assert_eq!(err.code(), tonic::Code::AlreadyExists, "{err:?}");
            parent = layer.chain_id.to_string();
        }
        parent
    }

    /// A [`Snapshotter`] rooted in a fresh temporary directory, served.
    pub async fn start(source: Option<Arc<dyn LayerSource>>) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let sn = Snapshotter::open(&dir.path().join("root"), source).unwrap();
        TestServer::serve_in(dir, sn).await
    }

    /// [`TestServer::start`] with archived layers mounted as `mode` says.
    pub async fn start_with(
        source: Option<Arc<dyn LayerSource>>,
        mode: impl Into<crate::layer::LayerOptions>,
    ) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let sn = Snapshotter::open_with(&dir.path().join("root"), source, mode).unwrap();
        TestServer::serve_in(dir, sn).await
    }

    /// The snapshotter's root directory.
    pub fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }
}

impl<S: SnapshotApi> TestServer<S> {
    /// Serves `sn` (a fake, say).
    pub async fn serve(sn: Arc<S>) -> TestServer<S> {
        TestServer::serve_in(tempfile::tempdir().unwrap(), sn).await
    }

    async fn serve_in(dir: tempfile::TempDir, sn: Arc<S>) -> TestServer<S> {
        let socket = dir.path().join("s.sock");
        let listener = tokio::net::UnixListener::bind(&socket).unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let service = SnapshotService::new(sn.clone()).into_server();
        let task = tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(UnixListenerStream::new(listener), async {
                    let _ = rx.await;
                })
                .await
                .unwrap();
        });
        let client = SnapshotsClient::new(connect(socket).await);
        TestServer {
            dir,
            sn,
            client,
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    /// Stops the server and removes its state, EROFS mounts of layers
    /// first.
    pub async fn stop(self) {
        let dir = self.stop_keeping_state().await;
        crate::dirs::unmount_under(dir.path());
        drop(dir);
    }

    /// Stops the server and closes the snapshotter; the state directory
    /// stays until the returned guard drops.
    pub async fn stop_keeping_state(mut self) -> tempfile::TempDir {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        drop(self.client);
        if let Some(task) = self.task.take() {
            task.await.unwrap();
        }
        drop(self.sn);
        self.dir
    }
}

/// A tonic channel over the unix socket at `path`.
pub async fn connect(path: PathBuf) -> Channel {
    Endpoint::try_from("http://[::]:50051")
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
        }))
        .await
        .unwrap()
}

/// Names of the entries of a directory, sorted.
pub fn dir_names(path: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(path)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

//! Test helpers for the snapshotter: an in-memory [`LayerSource`], layer
//! blobs built on the fly, and the gRPC service on a temporary unix socket.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::catalog::{Compression, LayerRef, LayerSource};
use crate::digest::Digest;

use super::proto::containerd::services::snapshots::v1::snapshots_client::SnapshotsClient;
use super::service::SnapshotService;
use super::Snapshotter;

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
                self.blobs.get_mut().unwrap().insert(layer.digest, blob);
                self.layers.insert(layer.chain_id, layer.clone());
            }
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

    pub fn total_opens(&self) -> usize {
        self.opens.load(Ordering::SeqCst)
    }
}

impl LayerSource for FakeSource {
    fn layer(&self, chain_id: &Digest) -> Option<LayerRef> {
        self.layers.get(chain_id).cloned()
    }

    fn image_layers(&self, chain_id: &Digest, _manifest: Option<&Digest>) -> Vec<LayerRef> {
        let mut out: Vec<LayerRef> = Vec::new();
        for image in self.images.iter().filter(|i| i.contains(chain_id)) {
            for c in image {
                if let Some(l) = self.layers.get(c) {
                    if !out.iter().any(|o| o.chain_id == *c) {
                        out.push(l.clone());
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
}

/// The snapshots service on a unix socket in a temporary directory, and a
/// client connected to it.
pub struct TestServer {
    pub dir: tempfile::TempDir,
    pub sn: Arc<Snapshotter>,
    pub client: SnapshotsClient<Channel>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TestServer {
    pub async fn start(source: Option<Arc<dyn LayerSource>>) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let sn = Snapshotter::open(&dir.path().join("root"), source).unwrap();
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

    /// The snapshotter's root directory.
    pub fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    pub async fn stop(self) {
        drop(self.stop_keeping_state().await);
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

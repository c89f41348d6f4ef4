//! The calls the importer makes into containerd (content, images, leases,
//! snapshots, one CRI pull), as a small trait, [`ContainerdApi`], so that a
//! registration pass can be tested against an in-memory fake
//! (`testsupport::containerd`); [`Containerd`] makes them over containerd's
//! gRPC socket.
//!
//! Every request carries the namespace (`containerd-namespace`) and, while a
//! registration is in progress, the lease that keeps what it wrote from
//! containerd's garbage collector (`containerd-lease`), as containerd's own
//! Go client sends them: both are a [`Scope`].

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status};

use crate::digest::Digest;
use crate::proto::containerd::services::content::v1 as content;
use crate::proto::containerd::services::images::v1 as images;
use crate::proto::containerd::services::leases::v1 as leases;
use crate::proto::containerd::services::snapshots::v1 as snapshots;
use crate::proto::containerd::types::Descriptor;

use super::ImportError;

/// containerd's label that tells its garbage collector when a lease expires.
const GC_EXPIRE: &str = "containerd.io/gc.expire";
/// A registration lease outlives a crashed importer by this long at most.
const LEASE_TTL: Duration = Duration::from_secs(3600);
/// Any one call but a pull.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// A pull of a large image from a slow registry.
const CRI_PULL_TIMEOUT: Duration = Duration::from_secs(1800);

/// One image record as containerd stores it.
#[derive(Clone, Debug, PartialEq)]
pub struct ImageRecord {
    pub name: String,
    pub target: Descriptor,
    pub labels: HashMap<String, String>,
}

/// What a layer registration (a Prepare with a target) came to.
#[derive(Debug, PartialEq, Eq)]
pub enum Prepared {
    /// The snapshotter committed the target: the layer is registered.
    Committed,
    /// The snapshotter made an ordinary active snapshot instead (it does not
    /// hold the layer); it has been removed again.
    Declined,
}

/// Where a call is made: a containerd namespace and, while a registration
/// is in progress, its lease.
#[derive(Clone, Copy, Debug)]
pub struct Scope<'a> {
    pub namespace: &'a str,
    pub lease: Option<&'a str>,
}

impl<'a> Scope<'a> {
    pub fn new(namespace: &'a str) -> Self {
        Scope {
            namespace,
            lease: None,
        }
    }

    /// The same namespace, under `lease`.
    pub fn with_lease(self, lease: &'a str) -> Self {
        Scope {
            lease: Some(lease),
            ..self
        }
    }
}

/// The calls the importer makes into containerd. Each one answers what
/// containerd's service answered, with the codes the importer acts on
/// (NotFound, AlreadyExists) turned into values.
pub trait ContainerdApi: Sync {
    /// CRI `PullImage` of `reference` (containerd's `k8s.io` namespace,
    /// its hosts.toml, so the mirror and its upstreams), as kubelet sends it
    /// for a pod without a sandbox config. Returns the image id.
    fn cri_pull(&self, reference: &str)
        -> impl Future<Output = Result<String, ImportError>> + Send;

    /// A lease that expires by itself after a while, so a crash
    /// mid-registration leaves nothing pinned for good. Returns its id.
    fn create_lease(
        &self,
        ns: Scope<'_>,
    ) -> impl Future<Output = Result<String, ImportError>> + Send;

    /// Deletes lease `id` (gone already is fine).
    fn delete_lease(
        &self,
        ns: Scope<'_>,
        id: &str,
    ) -> impl Future<Output = Result<(), ImportError>> + Send;

    /// Adds something that exists already to `ns`'s lease (none: nothing to
    /// do), so that the garbage collector keeps it until the image records
    /// refer to it (`kind`: `content`, or `snapshots/<snapshotter>`).
    fn lease_resource(
        &self,
        ns: Scope<'_>,
        kind: &str,
        id: &str,
    ) -> impl Future<Output = Result<(), ImportError>> + Send;

    /// The labels of a blob in the content store, `None` when it is not there.
    fn content_labels(
        &self,
        ns: Scope<'_>,
        digest: &Digest,
    ) -> impl Future<Output = Result<Option<HashMap<String, String>>, ImportError>> + Send;

    /// Writes a small blob with `labels` under the ingest ref `ingest` (one
    /// writer at a time per ref: see `import::ingest_ref`); a blob already
    /// there is fine (containerd checked the digest either way).
    fn write_content(
        &self,
        ns: Scope<'_>,
        ingest: &str,
        digest: &Digest,
        data: Bytes,
        labels: HashMap<String, String>,
    ) -> impl Future<Output = Result<(), ImportError>> + Send;

    /// Sets `labels` on a blob, leaving its other labels alone.
    fn label_content(
        &self,
        ns: Scope<'_>,
        digest: &Digest,
        labels: HashMap<String, String>,
    ) -> impl Future<Output = Result<(), ImportError>> + Send;

    /// Every image record of the namespace.
    fn list_images(
        &self,
        ns: Scope<'_>,
    ) -> impl Future<Output = Result<Vec<ImageRecord>, ImportError>> + Send;

    /// The record `name` as containerd has it now, `None` when there is none.
    fn get_image(
        &self,
        ns: Scope<'_>,
        name: &str,
    ) -> impl Future<Output = Result<Option<ImageRecord>, ImportError>> + Send;

    /// Creates the record `image`; `false` when the name exists already.
    fn create_image(
        &self,
        ns: Scope<'_>,
        image: &ImageRecord,
    ) -> impl Future<Output = Result<bool, ImportError>> + Send;

    /// Points the record at `image`'s target and sets its labels
    /// (`labels.<key>` each, so labels others put there stay).
    fn update_image(
        &self,
        ns: Scope<'_>,
        image: &ImageRecord,
    ) -> impl Future<Output = Result<(), ImportError>> + Send;

    /// Deletes the record `name` if it still points at `target`; `false`
    /// when there is no such record. containerd 2.x compares the target
    /// itself; 1.6 and 1.7 ignore it (the caller read the record just
    /// before).
    fn delete_image(
        &self,
        ns: Scope<'_>,
        name: &str,
        target: &Descriptor,
    ) -> impl Future<Output = Result<bool, ImportError>> + Send;

    /// Whether containerd records the snapshot `key` of `snapshotter`.
    fn snapshot_exists(
        &self,
        ns: Scope<'_>,
        snapshotter: &str,
        key: &str,
    ) -> impl Future<Output = Result<bool, ImportError>> + Send;

    /// containerd's unpack step for one layer: a Prepare naming the wanted
    /// committed snapshot in `containerd.io/snapshot.ref`. containerd records
    /// the target as committed when the snapshotter answers that it exists.
    fn prepare_target(
        &self,
        ns: Scope<'_>,
        snapshotter: &str,
        key: &str,
        parent: &str,
        labels: HashMap<String, String>,
    ) -> impl Future<Output = Result<Prepared, ImportError>> + Send;
}

/// A connection to containerd's gRPC socket.
#[derive(Clone)]
pub struct Containerd {
    channel: Channel,
    address: PathBuf,
}

impl Containerd {
    /// Connects to containerd's socket (fails at once if nobody listens).
    pub async fn connect(address: &Path) -> Result<Self, ImportError> {
        let uri = format!("unix://{}", address.display());
        let unreachable = |e: tonic::transport::Error| ImportError::Connect {
            address: address.to_path_buf(),
            reason: e.to_string(),
        };
        let channel = Endpoint::from_shared(uri)
            .map_err(unreachable)?
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .map_err(unreachable)?;
        Ok(Containerd {
            channel,
            address: address.to_path_buf(),
        })
    }

    pub fn address(&self) -> &Path {
        &self.address
    }

    fn content(&self) -> content::content_client::ContentClient<Channel> {
        content::content_client::ContentClient::new(self.channel.clone())
    }

    fn images(&self) -> images::images_client::ImagesClient<Channel> {
        images::images_client::ImagesClient::new(self.channel.clone())
            .max_decoding_message_size(64 << 20)
    }

    fn leases(&self) -> leases::leases_client::LeasesClient<Channel> {
        leases::leases_client::LeasesClient::new(self.channel.clone())
    }

    fn snapshots(&self) -> snapshots::snapshots_client::SnapshotsClient<Channel> {
        snapshots::snapshots_client::SnapshotsClient::new(self.channel.clone())
    }
}

/// The error of a call, naming it.
fn failed(call: &'static str) -> impl FnOnce(Status) -> ImportError {
    move |status| ImportError::Call {
        call,
        code: status.code(),
        message: status.message().to_string(),
    }
}

/// `message` as a request in `ns`, with the call timeout.
fn request<T>(ns: Scope<'_>, message: T) -> Request<T> {
    let mut request = Request::new(message);
    request.set_timeout(CALL_TIMEOUT);
    let meta = request.metadata_mut();
    // Namespaces and lease ids are checked to be ASCII by containerd's
    // own rules (and ours: see `Config::validate`).
    if let Ok(namespace) = MetadataValue::try_from(ns.namespace) {
        meta.insert("containerd-namespace", namespace);
    }
    if let Some(lease) = ns.lease.and_then(|l| MetadataValue::try_from(l).ok()) {
        meta.insert("containerd-lease", lease);
    }
    request
}

impl ContainerdApi for Containerd {
    async fn cri_pull(&self, reference: &str) -> Result<String, ImportError> {
        use crate::proto::runtime::v1 as cri;
        let mut request = Request::new(cri::PullImageRequest {
            image: Some(cri::ImageSpec {
                image: reference.to_string(),
                ..Default::default()
            }),
            ..Default::default()
        });
        request.set_timeout(CRI_PULL_TIMEOUT);
        let mut client = cri::image_service_client::ImageServiceClient::new(self.channel.clone());
        let response = client
            .pull_image(request)
            .await
            .map_err(failed("CRI PullImage"))?;
        Ok(response.into_inner().image_ref)
    }

    async fn create_lease(&self, ns: Scope<'_>) -> Result<String, ImportError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let id = format!("airgap-import-{}-{}", now.as_nanos(), std::process::id());
        let expire = crate::import::rfc3339(now + LEASE_TTL);
        let request = request(
            ns,
            leases::CreateRequest {
                id,
                labels: HashMap::from([(GC_EXPIRE.to_string(), expire)]),
            },
        );
        let lease = self
            .leases()
            .create(request)
            .await
            .map_err(failed("leases.Create"))?
            .into_inner()
            .lease
            .ok_or(ImportError::Protocol("leases.Create answered no lease"))?;
        Ok(lease.id)
    }

    async fn delete_lease(&self, ns: Scope<'_>, id: &str) -> Result<(), ImportError> {
        let request = request(
            ns,
            leases::DeleteRequest {
                id: id.to_string(),
                sync: false,
            },
        );
        match self.leases().delete(request).await {
            Ok(_) => Ok(()),
            Err(s) if s.code() == Code::NotFound => Ok(()),
            Err(s) => Err(failed("leases.Delete")(s)),
        }
    }

    async fn lease_resource(&self, ns: Scope<'_>, kind: &str, id: &str) -> Result<(), ImportError> {
        let Some(lease) = ns.lease else {
            return Ok(());
        };
        let request = request(
            ns,
            leases::AddResourceRequest {
                id: lease.to_string(),
                resource: Some(leases::Resource {
                    id: id.to_string(),
                    r#type: kind.to_string(),
                }),
            },
        );
        self.leases()
            .add_resource(request)
            .await
            .map_err(failed("leases.AddResource"))?;
        Ok(())
    }

    async fn content_labels(
        &self,
        ns: Scope<'_>,
        digest: &Digest,
    ) -> Result<Option<HashMap<String, String>>, ImportError> {
        let request = request(
            ns,
            content::InfoRequest {
                digest: digest.to_string(),
            },
        );
        match self.content().info(request).await {
            Ok(r) => Ok(Some(
                r.into_inner().info.map(|i| i.labels).unwrap_or_default(),
            )),
            Err(s) if s.code() == Code::NotFound => Ok(None),
            Err(s) => Err(failed("content.Info")(s)),
        }
    }

    async fn write_content(
        &self,
        ns: Scope<'_>,
        ingest: &str,
        digest: &Digest,
        data: Bytes,
        labels: HashMap<String, String>,
    ) -> Result<(), ImportError> {
        let message = content::WriteContentRequest {
            action: content::WriteAction::Commit as i32,
            r#ref: ingest.to_string(),
            total: data.len() as i64,
            expected: digest.to_string(),
            offset: 0,
            data: data.to_vec(),
            labels,
        };
        let request = request(ns, futures::stream::iter([message]));
        let mut responses = match self.content().write(request).await {
            Ok(r) => r.into_inner(),
            Err(s) if s.code() == Code::AlreadyExists => return Ok(()),
            Err(s) => return Err(failed("content.Write")(s)),
        };
        loop {
            match responses.message().await {
                Ok(Some(_)) => {}
                Ok(None) => return Ok(()),
                Err(s) if s.code() == Code::AlreadyExists => return Ok(()),
                Err(s) => return Err(failed("content.Write")(s)),
            }
        }
    }

    async fn label_content(
        &self,
        ns: Scope<'_>,
        digest: &Digest,
        labels: HashMap<String, String>,
    ) -> Result<(), ImportError> {
        let paths = labels.keys().map(|k| format!("labels.{k}")).collect();
        let request = request(
            ns,
            content::UpdateRequest {
                info: Some(content::Info {
                    digest: digest.to_string(),
                    labels,
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask { paths }),
            },
        );
        self.content()
            .update(request)
            .await
            .map_err(failed("content.Update"))?;
        Ok(())
    }

    async fn list_images(&self, ns: Scope<'_>) -> Result<Vec<ImageRecord>, ImportError> {
        let request = request(ns, images::ListImagesRequest { filters: vec![] });
        let list = self
            .images()
            .list(request)
            .await
            .map_err(failed("images.List"))?
            .into_inner();
        Ok(list.images.into_iter().filter_map(record).collect())
    }

    async fn get_image(
        &self,
        ns: Scope<'_>,
        name: &str,
    ) -> Result<Option<ImageRecord>, ImportError> {
        let request = request(
            ns,
            images::GetImageRequest {
                name: name.to_string(),
            },
        );
        match self.images().get(request).await {
            Ok(r) => Ok(r.into_inner().image.and_then(record)),
            Err(s) if s.code() == Code::NotFound => Ok(None),
            Err(s) => Err(failed("images.Get")(s)),
        }
    }

    async fn create_image(&self, ns: Scope<'_>, image: &ImageRecord) -> Result<bool, ImportError> {
        let request = request(
            ns,
            images::CreateImageRequest {
                image: Some(to_proto(image)),
                source_date_epoch: None,
            },
        );
        match self.images().create(request).await {
            Ok(_) => Ok(true),
            Err(s) if s.code() == Code::AlreadyExists => Ok(false),
            Err(s) => Err(failed("images.Create")(s)),
        }
    }

    async fn update_image(&self, ns: Scope<'_>, image: &ImageRecord) -> Result<(), ImportError> {
        let mut paths = vec!["target".to_string()];
        paths.extend(image.labels.keys().map(|k| format!("labels.{k}")));
        let request = request(
            ns,
            images::UpdateImageRequest {
                image: Some(to_proto(image)),
                update_mask: Some(prost_types::FieldMask { paths }),
                source_date_epoch: None,
            },
        );
        self.images()
            .update(request)
            .await
            .map_err(failed("images.Update"))?;
        Ok(())
    }

    async fn delete_image(
        &self,
        ns: Scope<'_>,
        name: &str,
        target: &Descriptor,
    ) -> Result<bool, ImportError> {
        let request = request(
            ns,
            images::DeleteImageRequest {
                name: name.to_string(),
                sync: false,
                target: Some(target.clone()),
            },
        );
        match self.images().delete(request).await {
            Ok(_) => Ok(true),
            Err(s) if s.code() == Code::NotFound => Ok(false),
            Err(s) => Err(failed("images.Delete")(s)),
        }
    }

    async fn snapshot_exists(
        &self,
        ns: Scope<'_>,
        snapshotter: &str,
        key: &str,
    ) -> Result<bool, ImportError> {
        let request = request(
            ns,
            snapshots::StatSnapshotRequest {
                snapshotter: snapshotter.to_string(),
                key: key.to_string(),
            },
        );
        match self.snapshots().stat(request).await {
            Ok(_) => Ok(true),
            Err(s) if s.code() == Code::NotFound => Ok(false),
            Err(s) => Err(failed("snapshots.Stat")(s)),
        }
    }

    async fn prepare_target(
        &self,
        ns: Scope<'_>,
        snapshotter: &str,
        key: &str,
        parent: &str,
        labels: HashMap<String, String>,
    ) -> Result<Prepared, ImportError> {
        let prepare = request(
            ns,
            snapshots::PrepareSnapshotRequest {
                snapshotter: snapshotter.to_string(),
                key: key.to_string(),
                parent: parent.to_string(),
                labels,
            },
        );
        match self.snapshots().prepare(prepare).await {
            Err(s) if s.code() == Code::AlreadyExists => Ok(Prepared::Committed),
            Err(s) => Err(failed("snapshots.Prepare")(s)),
            Ok(_) => {
                let remove = request(
                    ns,
                    snapshots::RemoveSnapshotRequest {
                        snapshotter: snapshotter.to_string(),
                        key: key.to_string(),
                    },
                );
                self.snapshots()
                    .remove(remove)
                    .await
                    .map_err(failed("snapshots.Remove"))?;
                Ok(Prepared::Declined)
            }
        }
    }
}

fn record(image: images::Image) -> Option<ImageRecord> {
    Some(ImageRecord {
        name: image.name,
        target: image.target?,
        labels: image.labels,
    })
}

fn to_proto(image: &ImageRecord) -> images::Image {
    images::Image {
        name: image.name.clone(),
        labels: image.labels.clone(),
        target: Some(image.target.clone()),
        created_at: None,
        updated_at: None,
    }
}

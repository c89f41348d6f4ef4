//! The calls the importer makes into containerd (content, images, leases,
//! snapshots), over containerd's gRPC socket.
//!
//! Every request carries the namespace (`containerd-namespace`) and, while a
//! registration is in progress, the lease that keeps what it wrote from
//! containerd's garbage collector (`containerd-lease`), as containerd's own
//! Go client sends them.

use std::collections::HashMap;
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

/// A connection to containerd's gRPC socket.
#[derive(Clone)]
pub struct Containerd {
    channel: Channel,
    address: PathBuf,
}

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

    /// CRI `PullImage` of `reference` (containerd's `k8s.io` namespace,
    /// its hosts.toml, so the mirror and its upstreams), as kubelet sends it
    /// for a pod without a sandbox config. Returns the image id.
    pub async fn cri_pull(&self, reference: &str) -> Result<String, ImportError> {
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

    /// The calls of one namespace, under an optional lease.
    pub fn namespace<'a>(&'a self, namespace: &'a str) -> Namespaced<'a> {
        Namespaced {
            client: self,
            namespace,
            lease: None,
        }
    }
}

/// containerd's API in one namespace (and lease).
#[derive(Clone, Copy)]
pub struct Namespaced<'a> {
    client: &'a Containerd,
    namespace: &'a str,
    lease: Option<&'a str>,
}

/// The error of a call, naming it.
fn failed(call: &'static str) -> impl FnOnce(Status) -> ImportError {
    move |status| ImportError::Call {
        call,
        code: status.code(),
        message: status.message().to_string(),
    }
}

impl<'a> Namespaced<'a> {
    pub fn namespace(&self) -> &str {
        self.namespace
    }

    /// The same calls, made under `lease`.
    pub fn with_lease(self, lease: &'a str) -> Namespaced<'a> {
        Namespaced {
            lease: Some(lease),
            ..self
        }
    }

    fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        request.set_timeout(CALL_TIMEOUT);
        let meta = request.metadata_mut();
        // Namespaces and lease ids are checked to be ASCII by containerd's
        // own rules (and ours: see `ImportOptions::validate`).
        if let Ok(ns) = MetadataValue::try_from(self.namespace) {
            meta.insert("containerd-namespace", ns);
        }
        if let Some(lease) = self.lease.and_then(|l| MetadataValue::try_from(l).ok()) {
            meta.insert("containerd-lease", lease);
        }
        request
    }

    fn content(&self) -> content::content_client::ContentClient<Channel> {
        content::content_client::ContentClient::new(self.client.channel.clone())
    }

    fn images(&self) -> images::images_client::ImagesClient<Channel> {
        images::images_client::ImagesClient::new(self.client.channel.clone())
            .max_decoding_message_size(64 << 20)
    }

    fn leases(&self) -> leases::leases_client::LeasesClient<Channel> {
        leases::leases_client::LeasesClient::new(self.client.channel.clone())
    }

    fn snapshots(&self) -> snapshots::snapshots_client::SnapshotsClient<Channel> {
        snapshots::snapshots_client::SnapshotsClient::new(self.client.channel.clone())
    }

    /// A lease that expires by itself after [`LEASE_TTL`], so a crash
    /// mid-registration leaves nothing pinned for good.
    pub async fn create_lease(&self) -> Result<String, ImportError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let id = format!("airgap-import-{}-{}", now.as_nanos(), std::process::id());
        let expire = crate::import::rfc3339(now + LEASE_TTL);
        let request = self.request(leases::CreateRequest {
            id,
            labels: HashMap::from([(GC_EXPIRE.to_string(), expire)]),
        });
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

    pub async fn delete_lease(&self, id: &str) -> Result<(), ImportError> {
        let request = self.request(leases::DeleteRequest {
            id: id.to_string(),
            sync: false,
        });
        match self.leases().delete(request).await {
            Ok(_) => Ok(()),
            Err(s) if s.code() == Code::NotFound => Ok(()),
            Err(s) => Err(failed("leases.Delete")(s)),
        }
    }

    /// Adds something that exists already to the current lease, so that
    /// the garbage collector keeps it until the image records refer to it
    /// (`kind`: `content`, or `snapshots/<snapshotter>`).
    pub async fn lease_resource(&self, kind: &str, id: &str) -> Result<(), ImportError> {
        let Some(lease) = self.lease else {
            return Ok(());
        };
        let request = self.request(leases::AddResourceRequest {
            id: lease.to_string(),
            resource: Some(leases::Resource {
                id: id.to_string(),
                r#type: kind.to_string(),
            }),
        });
        self.leases()
            .add_resource(request)
            .await
            .map_err(failed("leases.AddResource"))?;
        Ok(())
    }

    /// The labels of a blob in the content store, `None` when it is not there.
    pub async fn content_labels(
        &self,
        digest: &Digest,
    ) -> Result<Option<HashMap<String, String>>, ImportError> {
        let request = self.request(content::InfoRequest {
            digest: digest.to_string(),
        });
        match self.content().info(request).await {
            Ok(r) => Ok(Some(
                r.into_inner().info.map(|i| i.labels).unwrap_or_default(),
            )),
            Err(s) if s.code() == Code::NotFound => Ok(None),
            Err(s) => Err(failed("content.Info")(s)),
        }
    }

    /// Writes a small blob with `labels`, in one commit message; a blob
    /// already there is fine (containerd checked the digest either way).
    pub async fn write_content(
        &self,
        digest: &Digest,
        data: Bytes,
        labels: HashMap<String, String>,
    ) -> Result<(), ImportError> {
        let message = content::WriteContentRequest {
            action: content::WriteAction::Commit as i32,
            r#ref: format!("airgap-import-{}", digest.hex()),
            total: data.len() as i64,
            expected: digest.to_string(),
            offset: 0,
            data: data.to_vec(),
            labels,
        };
        let request = self.request(futures::stream::iter([message]));
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

    /// Sets `labels` on a blob, leaving its other labels alone.
    pub async fn label_content(
        &self,
        digest: &Digest,
        labels: HashMap<String, String>,
    ) -> Result<(), ImportError> {
        let paths = labels.keys().map(|k| format!("labels.{k}")).collect();
        let request = self.request(content::UpdateRequest {
            info: Some(content::Info {
                digest: digest.to_string(),
                labels,
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask { paths }),
        });
        self.content()
            .update(request)
            .await
            .map_err(failed("content.Update"))?;
        Ok(())
    }

    /// Every image record of the namespace.
    pub async fn list_images(&self) -> Result<Vec<ImageRecord>, ImportError> {
        let request = self.request(images::ListImagesRequest { filters: vec![] });
        let list = self
            .images()
            .list(request)
            .await
            .map_err(failed("images.List"))?
            .into_inner();
        Ok(list.images.into_iter().filter_map(record).collect())
    }

    /// Creates the record `image`; `false` when the name exists already.
    pub async fn create_image(&self, image: &ImageRecord) -> Result<bool, ImportError> {
        let request = self.request(images::CreateImageRequest {
            image: Some(to_proto(image)),
            source_date_epoch: None,
        });
        match self.images().create(request).await {
            Ok(_) => Ok(true),
            Err(s) if s.code() == Code::AlreadyExists => Ok(false),
            Err(s) => Err(failed("images.Create")(s)),
        }
    }

    /// Points the record at `image`'s target and sets its labels
    /// (`labels.<key>` each, so labels others put there stay).
    pub async fn update_image(&self, image: &ImageRecord) -> Result<(), ImportError> {
        let mut paths = vec!["target".to_string()];
        paths.extend(image.labels.keys().map(|k| format!("labels.{k}")));
        let request = self.request(images::UpdateImageRequest {
            image: Some(to_proto(image)),
            update_mask: Some(prost_types::FieldMask { paths }),
            source_date_epoch: None,
        });
        self.images()
            .update(request)
            .await
            .map_err(failed("images.Update"))?;
        Ok(())
    }

    pub async fn delete_image(&self, name: &str) -> Result<(), ImportError> {
        let request = self.request(images::DeleteImageRequest {
            name: name.to_string(),
            sync: false,
            target: None,
        });
        match self.images().delete(request).await {
            Ok(_) => Ok(()),
            Err(s) if s.code() == Code::NotFound => Ok(()),
            Err(s) => Err(failed("images.Delete")(s)),
        }
    }

    /// Whether containerd records the snapshot `key` of `snapshotter`.
    pub async fn snapshot_exists(&self, snapshotter: &str, key: &str) -> Result<bool, ImportError> {
        let request = self.request(snapshots::StatSnapshotRequest {
            snapshotter: snapshotter.to_string(),
            key: key.to_string(),
        });
        match self.snapshots().stat(request).await {
            Ok(_) => Ok(true),
            Err(s) if s.code() == Code::NotFound => Ok(false),
            Err(s) => Err(failed("snapshots.Stat")(s)),
        }
    }

    /// containerd's unpack step for one layer: a Prepare naming the wanted
    /// committed snapshot in `containerd.io/snapshot.ref`. containerd records
    /// the target as committed when the snapshotter answers that it exists.
    pub async fn prepare_target(
        &self,
        snapshotter: &str,
        key: &str,
        parent: &str,
        labels: HashMap<String, String>,
    ) -> Result<Prepared, ImportError> {
        let request = self.request(snapshots::PrepareSnapshotRequest {
            snapshotter: snapshotter.to_string(),
            key: key.to_string(),
            parent: parent.to_string(),
            labels,
        });
        match self.snapshots().prepare(request).await {
            Err(s) if s.code() == Code::AlreadyExists => Ok(Prepared::Committed),
            Err(s) => Err(failed("snapshots.Prepare")(s)),
            Ok(_) => {
                let request = self.request(snapshots::RemoveSnapshotRequest {
                    snapshotter: snapshotter.to_string(),
                    key: key.to_string(),
                });
                self.snapshots()
                    .remove(request)
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

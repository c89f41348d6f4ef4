//! The tonic service: containerd's `Snapshots` gRPC API over a
//! [`Snapshotter`]. Every call runs its blocking work through [`blocking`];
//! every error becomes a status through `From<SnapshotError> for Status`.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use super::proto::containerd::services::snapshots::v1 as api;
use super::proto::containerd::types as types_api;
use super::{blocking, Info, Kind, Mount, SnapshotError, Snapshotter};

pub use api::snapshots_server::SnapshotsServer;

/// How many snapshots one `List` response message carries (as containerd).
const LIST_BATCH: usize = 100;

/// The gRPC face of a [`Snapshotter`].
#[derive(Clone)]
pub struct SnapshotService {
    sn: Arc<Snapshotter>,
}

impl SnapshotService {
    pub fn new(sn: Arc<Snapshotter>) -> Self {
        SnapshotService { sn }
    }

    /// The service, ready for `tonic::transport::Server::add_service`.
    pub fn into_server(self) -> SnapshotsServer<Self> {
        SnapshotsServer::new(self)
    }
}

/// Logs what the client will not see in detail, then converts.
fn status(op: &'static str, err: SnapshotError) -> Status {
    match &err {
        SnapshotError::NotFound(_)
        | SnapshotError::AlreadyExists(_)
        | SnapshotError::InvalidArgument(_)
        | SnapshotError::FailedPrecondition(_) => {
            tracing::debug!(op, error = %err, "request refused")
        }
        _ => tracing::error!(op, error = %err, "request failed"),
    }
    Status::from(err)
}

fn to_api_mounts(mounts: Vec<Mount>) -> Vec<types_api::Mount> {
    mounts
        .into_iter()
        .map(|m| types_api::Mount {
            r#type: m.kind,
            source: m.source,
            target: String::new(),
            options: m.options,
        })
        .collect()
}

fn to_api_kind(kind: Kind) -> api::Kind {
    match kind {
        Kind::View => api::Kind::View,
        Kind::Active => api::Kind::Active,
        Kind::Committed => api::Kind::Committed,
    }
}

fn to_api_time(t: super::meta::Timestamp) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.seconds,
        nanos: t.nanos as i32,
    }
}

pub(crate) fn to_api_info(info: Info) -> api::Info {
    api::Info {
        name: info.name,
        parent: info.record.parent,
        kind: to_api_kind(info.record.kind) as i32,
        created_at: Some(to_api_time(info.record.created)),
        updated_at: Some(to_api_time(info.record.updated)),
        labels: info.record.labels.into_iter().collect(),
    }
}

type ListStream = Pin<Box<dyn Stream<Item = Result<api::ListSnapshotsResponse, Status>> + Send>>;

impl SnapshotService {
    async fn create(
        &self,
        kind: Kind,
        key: String,
        parent: String,
        labels: HashMap<String, String>,
    ) -> Result<Vec<types_api::Mount>, Status> {
        let op = if kind == Kind::View {
            "view"
        } else {
            "prepare"
        };
        if kind == Kind::Active && self.sn.remote().is_some() {
            if let Some(done) = super::remote::prepare(&self.sn, &key, &parent, &labels).await {
                return Err(status(op, done));
            }
        }
        let sn = self.sn.clone();
        let mounts = blocking(move || sn.create(kind, &key, &parent, labels))
            .await
            .map_err(|e| status(op, e))?;
        Ok(to_api_mounts(mounts))
    }
}

#[tonic::async_trait]
impl api::snapshots_server::Snapshots for SnapshotService {
    async fn prepare(
        &self,
        request: Request<api::PrepareSnapshotRequest>,
    ) -> Result<Response<api::PrepareSnapshotResponse>, Status> {
        let r = request.into_inner();
        let span = tracing::info_span!("prepare", key = %r.key, parent = %r.parent);
        let mounts = self
            .create(Kind::Active, r.key, r.parent, r.labels)
            .instrument(span)
            .await?;
        Ok(Response::new(api::PrepareSnapshotResponse { mounts }))
    }

    async fn view(
        &self,
        request: Request<api::ViewSnapshotRequest>,
    ) -> Result<Response<api::ViewSnapshotResponse>, Status> {
        let r = request.into_inner();
        let span = tracing::info_span!("view", key = %r.key, parent = %r.parent);
        let mounts = self
            .create(Kind::View, r.key, r.parent, r.labels)
            .instrument(span)
            .await?;
        Ok(Response::new(api::ViewSnapshotResponse { mounts }))
    }

    async fn mounts(
        &self,
        request: Request<api::MountsRequest>,
    ) -> Result<Response<api::MountsResponse>, Status> {
        let r = request.into_inner();
        let sn = self.sn.clone();
        let mounts = blocking(move || sn.mounts(&r.key))
            .await
            .map_err(|e| status("mounts", e))?;
        Ok(Response::new(api::MountsResponse {
            mounts: to_api_mounts(mounts),
        }))
    }

    async fn commit(
        &self,
        request: Request<api::CommitSnapshotRequest>,
    ) -> Result<Response<()>, Status> {
        let r = request.into_inner();
        let span = tracing::info_span!("commit", name = %r.name, key = %r.key);
        let sn = self.sn.clone();
        blocking(move || sn.commit(&r.name, &r.key, r.labels))
            .instrument(span)
            .await
            .map_err(|e| status("commit", e))?;
        Ok(Response::new(()))
    }

    async fn remove(
        &self,
        request: Request<api::RemoveSnapshotRequest>,
    ) -> Result<Response<()>, Status> {
        let r = request.into_inner();
        let span = tracing::info_span!("remove", key = %r.key);
        let sn = self.sn.clone();
        blocking(move || sn.remove(&r.key))
            .instrument(span)
            .await
            .map_err(|e| status("remove", e))?;
        Ok(Response::new(()))
    }

    async fn stat(
        &self,
        request: Request<api::StatSnapshotRequest>,
    ) -> Result<Response<api::StatSnapshotResponse>, Status> {
        let r = request.into_inner();
        let sn = self.sn.clone();
        let info = blocking(move || sn.stat(&r.key))
            .await
            .map_err(|e| status("stat", e))?;
        Ok(Response::new(api::StatSnapshotResponse {
            info: Some(to_api_info(info)),
        }))
    }

    async fn update(
        &self,
        request: Request<api::UpdateSnapshotRequest>,
    ) -> Result<Response<api::UpdateSnapshotResponse>, Status> {
        let r = request.into_inner();
        let Some(info) = r.info else {
            return Err(status(
                "update",
                SnapshotError::InvalidArgument("update request without info".into()),
            ));
        };
        let paths = r.update_mask.map(|m| m.paths).unwrap_or_default();
        let span = tracing::info_span!("update", name = %info.name);
        let sn = self.sn.clone();
        let updated = blocking(move || sn.update(&info.name, info.labels, &paths))
            .instrument(span)
            .await
            .map_err(|e| status("update", e))?;
        Ok(Response::new(api::UpdateSnapshotResponse {
            info: Some(to_api_info(updated)),
        }))
    }

    type ListStream = ListStream;

    async fn list(
        &self,
        request: Request<api::ListSnapshotsRequest>,
    ) -> Result<Response<Self::ListStream>, Status> {
        let r = request.into_inner();
        let sn = self.sn.clone();
        // Collected first: no transaction stays open while the client reads
        // (containerd calls Stat from inside its Walk callback).
        let infos = blocking(move || sn.list(&r.filters))
            .await
            .map_err(|e| status("list", e))?;
        let mut batches = Vec::new();
        let mut infos = infos.into_iter().map(to_api_info).peekable();
        while infos.peek().is_some() {
            let info: Vec<api::Info> = infos.by_ref().take(LIST_BATCH).collect();
            batches.push(Ok(api::ListSnapshotsResponse { info }));
        }
        Ok(Response::new(Box::pin(futures::stream::iter(batches))))
    }

    async fn usage(
        &self,
        request: Request<api::UsageRequest>,
    ) -> Result<Response<api::UsageResponse>, Status> {
        let r = request.into_inner();
        let sn = self.sn.clone();
        let usage = blocking(move || sn.usage(&r.key))
            .await
            .map_err(|e| status("usage", e))?;
        Ok(Response::new(api::UsageResponse {
            size: usage.size,
            inodes: usage.inodes,
        }))
    }

    async fn cleanup(
        &self,
        _request: Request<api::CleanupRequest>,
    ) -> Result<Response<()>, Status> {
        let span = tracing::info_span!("cleanup");
        let sn = self.sn.clone();
        blocking(move || sn.cleanup())
            .instrument(span)
            .await
            .map_err(|e| status("cleanup", e))?;
        Ok(Response::new(()))
    }
}

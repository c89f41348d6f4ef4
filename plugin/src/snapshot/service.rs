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
        let span = tracing::debug_span!("mounts", key = %r.key);
        let mounts = blocking(move || sn.mounts(&r.key))
            .instrument(span)
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
        let span = tracing::debug_span!("stat", key = %r.key);
        let info = blocking(move || sn.stat(&r.key))
            .instrument(span)
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
        let span = tracing::debug_span!("list", filters = ?r.filters);
        let infos = blocking(move || sn.list(&r.filters))
            .instrument(span)
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
        let span = tracing::debug_span!("usage", key = %r.key);
        let usage = blocking(move || sn.usage(&r.key))
            .instrument(span)
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

#[cfg(test)]
mod tests {
    use super::super::test_support::{dir_names, TestServer};
    use super::*;
    use tonic::Code;

    fn prepare(key: &str, parent: &str) -> api::PrepareSnapshotRequest {
        api::PrepareSnapshotRequest {
            snapshotter: "airgap".into(),
            key: key.into(),
            parent: parent.into(),
            labels: HashMap::new(),
        }
    }

    fn commit(name: &str, key: &str) -> api::CommitSnapshotRequest {
        api::CommitSnapshotRequest {
            snapshotter: "airgap".into(),
            name: name.into(),
            key: key.into(),
            labels: HashMap::from([("containerd.io/gc.root".into(), "x".into())]),
        }
    }

    fn key(k: &str) -> String {
        k.to_string()
    }

    fn code<T: std::fmt::Debug>(r: Result<T, Status>) -> Code {
        r.unwrap_err().code()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn error_codes_follow_containerd() {
        let server = TestServer::start(None).await;
        let mut c = server.client.clone();
        c.prepare(prepare("a", "")).await.unwrap();

        assert_eq!(code(c.prepare(prepare("a", "")).await), Code::AlreadyExists);
        assert_eq!(code(c.prepare(prepare("b", "nope")).await), Code::NotFound);
        assert_eq!(
            code(c.prepare(prepare("b", "a")).await),
            Code::InvalidArgument
        );
        assert_eq!(
            code(c.prepare(prepare("", "")).await),
            Code::InvalidArgument
        );
        assert_eq!(code(c.commit(commit("c", "nope")).await), Code::NotFound);
        c.commit(commit("c", "a")).await.unwrap();
        assert_eq!(code(c.commit(commit("c", "a")).await), Code::AlreadyExists);
        let mounts = api::MountsRequest {
            snapshotter: "airgap".into(),
            key: key("c"),
        };
        assert_eq!(code(c.mounts(mounts).await), Code::FailedPrecondition);
        c.prepare(prepare("child", "c")).await.unwrap();
        let remove = |k: &str| api::RemoveSnapshotRequest {
            snapshotter: "airgap".into(),
            key: key(k),
        };
        let err = c.remove(remove("c")).await.unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition);
        assert!(err.message().contains("remove"), "{}", err.message());
        assert_eq!(code(c.remove(remove("nope")).await), Code::NotFound);
        let stat = api::StatSnapshotRequest {
            snapshotter: "airgap".into(),
            key: key("nope"),
        };
        assert_eq!(code(c.stat(stat).await), Code::NotFound);
        let update = api::UpdateSnapshotRequest {
            snapshotter: "airgap".into(),
            info: Some(api::Info {
                name: "c".into(),
                parent: "x".into(),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["parent".into()],
            }),
        };
        assert_eq!(code(c.update(update).await), Code::InvalidArgument);
        let update = api::UpdateSnapshotRequest {
            snapshotter: "airgap".into(),
            info: None,
            update_mask: None,
        };
        assert_eq!(code(c.update(update).await), Code::InvalidArgument);
        let list = api::ListSnapshotsRequest {
            snapshotter: "airgap".into(),
            filters: vec!["kind==".into()],
        };
        assert_eq!(code(c.list(list).await), Code::InvalidArgument);
        server.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn internal_file_errors_are_internal() {
        let server = TestServer::start(None).await;
        let mut c = server.client.clone();
        c.prepare(prepare("a", "")).await.unwrap();
        // The snapshot's directory vanished behind our back: that is our
        // failure, not a missing snapshot.
        let dir = server.root().join("snapshots");
        for d in dir_names(&dir) {
            std::fs::remove_dir_all(dir.join(d)).unwrap();
        }
        let usage = api::UsageRequest {
            snapshotter: "airgap".into(),
            key: key("a"),
        };
        let err = c.usage(usage).await.unwrap_err();
        assert_eq!(err.code(), Code::Internal, "{err:?}");
        let err = c.commit(commit("c", "a")).await.unwrap_err();
        assert_eq!(err.code(), Code::Internal, "{err:?}");
        server.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn list_streams_in_batches_and_stat_times_round_trip() {
        let server = TestServer::start(None).await;
        let mut c = server.client.clone();
        for i in 0..250 {
            c.prepare(prepare(&format!("s{i:03}"), "")).await.unwrap();
        }
        let list = api::ListSnapshotsRequest {
            snapshotter: "airgap".into(),
            filters: vec![],
        };
        let mut stream = c.list(list).await.unwrap().into_inner();
        let mut sizes = Vec::new();
        while let Some(msg) = stream.message().await.unwrap() {
            sizes.push(msg.info.len());
        }
        assert_eq!(sizes, [100, 100, 50]);
        let stat = api::StatSnapshotRequest {
            snapshotter: "airgap".into(),
            key: key("s007"),
        };
        let info = c.stat(stat).await.unwrap().into_inner().info.unwrap();
        assert_eq!(info.kind, api::Kind::Active as i32);
        assert_eq!(info.created_at, info.updated_at);
        assert!(info.created_at.unwrap().seconds > 1_600_000_000);
        server.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn state_survives_a_restart() {
        let server = TestServer::start(None).await;
        let mut c = server.client.clone();
        c.prepare(prepare("a", "")).await.unwrap();
        let fs_dir = server.root().join("snapshots/1/fs");
        std::fs::write(fs_dir.join("file"), b"data").unwrap();
        c.commit(commit("base", "a")).await.unwrap();
        c.prepare(prepare("top", "base")).await.unwrap();
        let root = server.root();
        drop(c);
        let dir = server.stop_keeping_state().await;

        let sn = Snapshotter::open(&root, None).unwrap();
        assert_eq!(sn.stat("base").unwrap().record.kind, Kind::Committed);
        let mounts = sn.mounts("top").unwrap();
        assert_eq!(mounts[0].kind, "overlay");
        assert!(mounts[0]
            .options
            .iter()
            .any(|o| o == &format!("lowerdir={}", fs_dir.display())));
        assert_eq!(std::fs::read(fs_dir.join("file")).unwrap(), b"data");
        drop(dir);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn cleanup_removes_orphans_and_new_snapshots_replace_them() {
        let server = TestServer::start(None).await;
        let mut c = server.client.clone();
        let snapshots = server.root().join("snapshots");
        // Left by a crash between rename and commit: an id the store will
        // hand out again, with stale content.
        std::fs::create_dir_all(snapshots.join("1/fs/stale")).unwrap();
        c.prepare(prepare("a", "")).await.unwrap();
        assert!(dir_names(&snapshots.join("1/fs")).is_empty());
        // Orphans of all kinds.
        std::fs::create_dir_all(snapshots.join("999/fs")).unwrap();
        std::fs::create_dir_all(snapshots.join("new-123/fs")).unwrap();
        std::fs::write(snapshots.join("junk"), b"x").unwrap();
        let cleanup = api::CleanupRequest {
            snapshotter: "airgap".into(),
        };
        c.cleanup(cleanup).await.unwrap();
        assert_eq!(dir_names(&snapshots), ["1"]);
        assert!(dir_names(&server.root().join("trash")).is_empty());
        server.stop().await;
    }
}

//! The tonic service: containerd's `Snapshots` gRPC API over any
//! [`SnapshotApi`] (as rust-extensions' generic `Wrapper`). Every call runs
//! the native API on a blocking thread through [`blocking`], inside its RPC's
//! span; every error becomes a status through `From<SnapshotError> for
//! Status`, and responses are built by [`super::convert`].

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use tonic::{Request, Response, Status};
use tracing::{Instrument, Span};

use super::convert;
use super::proto::containerd::services::snapshots::v1 as api;
use super::{blocking, Info, SnapshotApi, SnapshotError};

pub use api::snapshots_server::SnapshotsServer;

/// How many snapshots one `List` response message carries (as containerd).
const LIST_BATCH: usize = 100;

/// The gRPC face of a [`SnapshotApi`].
pub struct SnapshotService<S> {
    sn: Arc<S>,
}

impl<S> Clone for SnapshotService<S> {
    fn clone(&self) -> Self {
        SnapshotService {
            sn: self.sn.clone(),
        }
    }
}

impl<S: SnapshotApi> SnapshotService<S> {
    pub fn new(sn: Arc<S>) -> Self {
        SnapshotService { sn }
    }

    /// The service, ready for `tonic::transport::Server::add_service`,
    /// its calls counted by [`super::observe::Observed`].
    pub fn into_server(self) -> super::observe::Observed<SnapshotsServer<Self>> {
        super::observe::Observed::new(SnapshotsServer::new(self))
    }

    /// Runs one call of the native API on a blocking thread, inside the
    /// RPC's `span`; a failure is logged and becomes the status for `op`.
    async fn call<T, F>(&self, op: &'static str, span: Span, f: F) -> Result<T, Status>
    where
        T: Send + 'static,
        F: FnOnce(&S) -> Result<T, SnapshotError> + Send + 'static,
    {
        let sn = self.sn.clone();
        let inner = span.clone();
        blocking(move || inner.in_scope(|| f(&sn)))
            .instrument(span)
            .await
            .map_err(|e| status(op, e))
    }
}

impl<S: SnapshotApi> SnapshotService<S> {
    /// [`SnapshotApi::before_use`] of `name`, inside the RPC's span.
    async fn before_use(&self, op: &'static str, span: &Span, name: &str) -> Result<(), Status> {
        self.sn
            .before_use(name)
            .instrument(span.clone())
            .await
            .map_err(|e| status(op, e))
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

type ListStream = Pin<Box<dyn Stream<Item = Result<api::ListSnapshotsResponse, Status>> + Send>>;

/// `infos` as List answers them: [`LIST_BATCH`] to a message.
fn list_stream(infos: Vec<Info>) -> ListStream {
    let mut batches = Vec::new();
    let mut infos = infos.into_iter().map(api::Info::from).peekable();
    while infos.peek().is_some() {
        let info: Vec<api::Info> = infos.by_ref().take(LIST_BATCH).collect();
        batches.push(Ok(api::ListSnapshotsResponse { info }));
    }
    Box::pin(futures::stream::iter(batches))
}

#[tonic::async_trait]
impl<S: SnapshotApi> api::snapshots_server::Snapshots for SnapshotService<S> {
    async fn prepare(
        &self,
        request: Request<api::PrepareSnapshotRequest>,
    ) -> Result<Response<api::PrepareSnapshotResponse>, Status> {
        let r = request.into_inner();
        let span = tracing::info_span!("prepare", key = %r.key, parent = %r.parent);
        let remote = self.sn.prepare_remote(&r.key, &r.parent, &r.labels);
        if let Some(answer) = remote.instrument(span.clone()).await {
            return Err(status("prepare", answer));
        }
        self.before_use("prepare", &span, &r.parent).await?;
        let mounts = self
            .call("prepare", span, move |sn| {
                sn.prepare(&r.key, &r.parent, r.labels)
            })
            .await?;
        let mounts = convert::mounts(mounts);
        Ok(Response::new(api::PrepareSnapshotResponse { mounts }))
    }

    async fn view(
        &self,
        request: Request<api::ViewSnapshotRequest>,
    ) -> Result<Response<api::ViewSnapshotResponse>, Status> {
        let r = request.into_inner();
        let span = tracing::info_span!("view", key = %r.key, parent = %r.parent);
        self.before_use("view", &span, &r.parent).await?;
        let mounts = self
            .call("view", span, move |sn| sn.view(&r.key, &r.parent, r.labels))
            .await?;
        let mounts = convert::mounts(mounts);
        Ok(Response::new(api::ViewSnapshotResponse { mounts }))
    }

    async fn mounts(
        &self,
        request: Request<api::MountsRequest>,
    ) -> Result<Response<api::MountsResponse>, Status> {
        let r = request.into_inner();
        let span = tracing::debug_span!("mounts", key = %r.key);
        self.before_use("mounts", &span, &r.key).await?;
        let mounts = self
            .call("mounts", span, move |sn| sn.mounts(&r.key))
            .await?;
        let mounts = convert::mounts(mounts);
        Ok(Response::new(api::MountsResponse { mounts }))
    }

    async fn commit(
        &self,
        request: Request<api::CommitSnapshotRequest>,
    ) -> Result<Response<()>, Status> {
        let r = request.into_inner();
        let span = tracing::info_span!("commit", name = %r.name, key = %r.key);
        self.call("commit", span, move |sn| {
            sn.commit(&r.name, &r.key, r.labels)
        })
        .await?;
        Ok(Response::new(()))
    }

    async fn remove(
        &self,
        request: Request<api::RemoveSnapshotRequest>,
    ) -> Result<Response<()>, Status> {
        let r = request.into_inner();
        let span = tracing::info_span!("remove", key = %r.key);
        self.call("remove", span, move |sn| sn.remove(&r.key))
            .await?;
        Ok(Response::new(()))
    }

    async fn stat(
        &self,
        request: Request<api::StatSnapshotRequest>,
    ) -> Result<Response<api::StatSnapshotResponse>, Status> {
        let r = request.into_inner();
        let span = tracing::debug_span!("stat", key = %r.key);
        let info = self.call("stat", span, move |sn| sn.stat(&r.key)).await?;
        let info = Some(info.into());
        Ok(Response::new(api::StatSnapshotResponse { info }))
    }

    async fn update(
        &self,
        request: Request<api::UpdateSnapshotRequest>,
    ) -> Result<Response<api::UpdateSnapshotResponse>, Status> {
        let r = request.into_inner();
        let Some(info) = r.info else {
            let err = SnapshotError::InvalidArgument("update request without info".into());
            return Err(status("update", err));
        };
        let paths = r.update_mask.map(|m| m.paths).unwrap_or_default();
        let span = tracing::info_span!("update", name = %info.name);
        let updated = self
            .call("update", span, move |sn| {
                sn.update(&info.name, info.labels, &paths)
            })
            .await?;
        let info = Some(updated.into());
        Ok(Response::new(api::UpdateSnapshotResponse { info }))
    }

    type ListStream = ListStream;

    async fn list(
        &self,
        request: Request<api::ListSnapshotsRequest>,
    ) -> Result<Response<Self::ListStream>, Status> {
        let r = request.into_inner();
        // Collected first: no transaction stays open while the client reads
        // (containerd calls Stat from inside its Walk callback).
        let span = tracing::debug_span!("list", filters = ?r.filters);
        let infos = self
            .call("list", span, move |sn| sn.list(&r.filters))
            .await?;
        Ok(Response::new(list_stream(infos)))
    }

    async fn usage(
        &self,
        request: Request<api::UsageRequest>,
    ) -> Result<Response<api::UsageResponse>, Status> {
        let r = request.into_inner();
        let span = tracing::debug_span!("usage", key = %r.key);
        let usage = self.call("usage", span, move |sn| sn.usage(&r.key)).await?;
        Ok(Response::new(usage.into()))
    }

    async fn cleanup(
        &self,
        _request: Request<api::CleanupRequest>,
    ) -> Result<Response<()>, Status> {
        let span = tracing::info_span!("cleanup");
        self.call("cleanup", span, |sn| sn.cleanup()).await?;
        Ok(Response::new(()))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::io;

    use tonic::Code;

    use super::*;
    use crate::snapshot::{Kind, Snapshotter};
    use crate::testsupport::snapshot::{dir_names, FakeSnapshotter, TestServer};

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

    fn stat(k: &str) -> api::StatSnapshotRequest {
        api::StatSnapshotRequest {
            snapshotter: "airgap".into(),
            key: key(k),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn internal_errors_never_reach_the_client_as_api_errors() {
        let fake = Arc::new(FakeSnapshotter::default());
        let server = TestServer::serve(fake.clone()).await;
        let mut c = server.client.clone();
        c.prepare(prepare("a", "")).await.unwrap();
        c.commit(commit("c", "a")).await.unwrap();
        c.prepare(prepare("b", "c")).await.unwrap();
        // A file the snapshotter needs is gone: tonic would make NotFound of
        // the io::Error; the snapshot itself is there.
        fake.fail_with(|key| {
            SnapshotError::io(
                "open",
                format!("/fake/{key}"),
                io::ErrorKind::NotFound.into(),
            )
        });
        assert_eq!(code(c.prepare(prepare("x", "c")).await), Code::Internal);
        let view = api::ViewSnapshotRequest {
            snapshotter: "airgap".into(),
            key: key("v"),
            parent: key("c"),
            labels: HashMap::new(),
        };
        assert_eq!(code(c.view(view).await), Code::Internal);
        let mounts = api::MountsRequest {
            snapshotter: "airgap".into(),
            key: key("b"),
        };
        assert_eq!(code(c.mounts(mounts).await), Code::Internal);
        assert_eq!(code(c.commit(commit("d", "b")).await), Code::Internal);
        let remove = api::RemoveSnapshotRequest {
            snapshotter: "airgap".into(),
            key: key("b"),
        };
        assert_eq!(code(c.remove(remove).await), Code::Internal);
        assert_eq!(code(c.stat(stat("c")).await), Code::Internal);
        let update = api::UpdateSnapshotRequest {
            snapshotter: "airgap".into(),
            info: Some(api::Info {
                name: "c".into(),
                ..Default::default()
            }),
            update_mask: None,
        };
        assert_eq!(code(c.update(update).await), Code::Internal);
        let list = api::ListSnapshotsRequest {
            snapshotter: "airgap".into(),
            filters: vec![],
        };
        assert_eq!(code(c.list(list).await), Code::Internal);
        let usage = api::UsageRequest {
            snapshotter: "airgap".into(),
            key: key("c"),
        };
        assert_eq!(code(c.usage(usage).await), Code::Internal);
        let cleanup = api::CleanupRequest {
            snapshotter: "airgap".into(),
        };
        assert_eq!(code(c.cleanup(cleanup).await), Code::Internal);

        // Nor does an io AlreadyExists become ALREADY_EXISTS.
        fake.fail_with(|key| {
            SnapshotError::io(
                "create",
                format!("/fake/{key}"),
                io::ErrorKind::AlreadyExists.into(),
            )
        });
        assert_eq!(code(c.prepare(prepare("y", "")).await), Code::Internal);
        // A call that panics is a failed task, INTERNAL too; the service
        // goes on serving.
        fake.fail_with(|_| panic!("the fake snapshotter panics"));
        assert_eq!(code(c.stat(stat("c")).await), Code::Internal);
        assert_eq!(code(c.stat(stat("c")).await), Code::Internal);
        server.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn list_sends_batches_of_100_in_order() {
        for (n, want) in [(0, vec![]), (100, vec![100]), (250, vec![100, 100, 50])] {
            let fake = Arc::new(FakeSnapshotter::default());
            for i in 0..n {
                fake.prepare(&format!("s{i:03}"), "", HashMap::new())
                    .unwrap();
            }
            let server = TestServer::serve(fake).await;
            let mut c = server.client.clone();
            let list = api::ListSnapshotsRequest {
                snapshotter: "airgap".into(),
                filters: vec![],
            };
            let mut stream = c.list(list).await.unwrap().into_inner();
            let mut sizes = Vec::new();
            let mut names = Vec::new();
            while let Some(msg) = stream.message().await.unwrap() {
                sizes.push(msg.info.len());
                names.extend(msg.info.into_iter().map(|i| i.name));
            }
            assert_eq!(sizes, want, "{n} snapshots");
            let expected: Vec<String> = (0..n).map(|i| format!("s{i:03}")).collect();
            assert_eq!(names, expected);
            server.stop().await;
        }
    }
}

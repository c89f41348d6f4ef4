//! Metrics of the Snapshots API, in one place: [`Observed`] wraps the
//! generated server and counts every call by method, its failures by gRPC
//! code, and its latency (see [`crate::metrics::Metrics::grpc_call`]).
//!
//! A call's code is read from the response headers: tonic answers a handler's
//! error as a trailers-only response (`grpc-status` in the headers), and a
//! success carries no `grpc-status` header (its `0` comes in the trailers).
//! The one streaming call, List, builds its whole answer before it
//! streams, so it cannot fail midway. Latency is to the response headers:
//! for these calls the answer is complete by then.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use tonic::codegen::http;
use tonic::codegen::Service;
use tonic::server::NamedService;

/// The methods of containerd's Snapshots service: the only values of the
/// `method` label (anything else is `other`), so that a client cannot grow
/// the series.
pub const METHODS: [&str; 10] = [
    "Prepare", "View", "Mounts", "Commit", "Remove", "Stat", "Update", "List", "Usage", "Cleanup",
];

/// The method a request path (`/containerd.services.snapshots.v1.Snapshots/Prepare`)
/// names, from [`METHODS`].
fn method(path: &str) -> &'static str {
    let name = path.rsplit('/').next().unwrap_or("");
    METHODS
        .iter()
        .find(|m| **m == name)
        .copied()
        .unwrap_or("other")
}

/// The gRPC code of a response: `grpc-status` in its headers, or OK.
fn code<B>(response: &http::Response<B>) -> tonic::Code {
    response
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .map(tonic::Code::from)
        .unwrap_or(tonic::Code::Ok)
}

/// A gRPC service counted by [`crate::metrics`].
#[derive(Clone, Debug)]
pub struct Observed<S> {
    inner: S,
}

impl<S> Observed<S> {
    pub fn new(inner: S) -> Self {
        Observed { inner }
    }
}

impl<S: NamedService> NamedService for Observed<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B, R> Service<http::Request<B>> for Observed<S>
where
    S: Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let method = method(request.uri().path());
        let started = Instant::now();
        let call = self.inner.call(request);
        Box::pin(async move {
            let result = call.await;
            let code = match &result {
                Ok(response) => code(response),
                // The transport failed the call.
                Err(_) => tonic::Code::Internal,
            };
            crate::metrics::global().grpc_call(method, code, started.elapsed().as_secs_f64());
            result
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::proto::containerd::services::snapshots::v1 as api;
    use crate::testsupport::snapshot::TestServer;

    fn calls(method: &str) -> u64 {
        crate::metrics::global()
            .grpc_requests
            .get_or_create(&vec![("method", method.to_string())])
            .get()
    }

    fn errors(method: &str, code: &str) -> u64 {
        crate::metrics::global()
            .grpc_errors
            .get_or_create(&vec![
                ("method", method.to_string()),
                ("code", code.to_string()),
            ])
            .get()
    }

    /// Through the served API: a call that succeeds is counted and timed,
    /// one that fails is also counted as an error with its code. The
    /// counters are process-wide: deltas.
    #[tokio::test]
    async fn calls_and_failures_are_counted_by_method_and_code() {
        let server = TestServer::start(None).await;
        let (stats, not_found, lists) = (calls("Stat"), errors("Stat", "NotFound"), calls("List"));
        let (list_errors, timed) = (
            errors("List", "Unknown") + errors("List", "Internal"),
            crate::metrics::global()
                .grpc_seconds
                .get_or_create(&vec![("method", "List".to_string())])
                .clone(),
        );
        let err = server
            .client
            .clone()
            .stat(api::StatSnapshotRequest {
                snapshotter: "airgap".into(),
                key: "nope".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::NotFound);
        assert!(calls("Stat") > stats);
        assert!(errors("Stat", "NotFound") > not_found);

        let mut list = server
            .client
            .clone()
            .list(api::ListSnapshotsRequest {
                snapshotter: "airgap".into(),
                filters: vec![],
            })
            .await
            .unwrap()
            .into_inner();
        while list.message().await.unwrap().is_some() {}
        assert!(calls("List") > lists);
        assert_eq!(
            errors("List", "Unknown") + errors("List", "Internal"),
            list_errors
        );
        // The histogram of List moved too.
        let mut text = String::new();
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register("t", "t", timed);
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(!text.contains("t_count 0\n"), "{text}");
        server.stop().await;
    }

    #[test]
    fn methods_are_bounded() {
        assert_eq!(
            method("/containerd.services.snapshots.v1.Snapshots/Prepare"),
            "Prepare"
        );
        assert_eq!(
            method("/containerd.services.snapshots.v1.Snapshots/Nope"),
            "other"
        );
        assert_eq!(method(""), "other");
    }
}

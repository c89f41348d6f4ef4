//! The registry mirror: the OCI distribution read API that containerd
//! reaches through `hosts.toml`, answered from the catalog first and from
//! the configured upstream registry for what the archives lack.
//!
//! - `GET /v2/`: the API check.
//! - `HEAD`/`GET /v2/<name>/manifests/<tag|digest>?ns=<registry>`: a tag
//!   resolves from the archives first; only a tag no archive carries is
//!   asked of the upstream (so an archived tag wins over a newer push
//!   upstream). A digest is served from the archives if any holds that
//!   manifest, else from the upstream: this covers digest-pinned references
//!   to docker-save images, whose archived manifest is synthesized and so
//!   has another digest.
//! - `HEAD`/`GET /v2/<name>/blobs/<digest>` with `Range`: archives first,
//!   then the upstream.
//!
//! Request names follow [`request`]: with `ns` the image is `<ns>/<name>`,
//! without it `<name>` is a whole reference. Content is addressed by digest:
//! a blob or manifest any archive holds is served under any name.
//!
//! Archived blobs are read on blocking threads: from a plain tar or seekable
//! zstd archive in place, checked against the digest as they stream (a
//! mismatch aborts the response); from any other compressed archive through
//! the layer cache, which decompresses a blob once however many pulls ask
//! for it and checks it while filling. `Range` reads use the random-access
//! reader, whose bytes were all checked before the first one is served.

mod body;
pub mod cluster;
mod discovery;
pub mod error;
pub mod media;
pub mod request;

use std::future::Future;
use std::io;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;

use crate::catalog::container::Container;
use crate::catalog::reference::Reference;
use crate::catalog::{BlobError, Catalog};
use crate::digest::Digest;

use crate::registry::media::manifest_media_type;
use crate::registry::{Upstream, UpstreamError, Upstreams};
use crate::trust::Trust;
use body::RangeRequest;
pub use error::MirrorError;
use request::Route;

/// The mirror's shared state.
pub struct Mirror {
    catalog: Arc<Catalog>,
    upstreams: Upstreams,
    /// `[verify]`: archived manifests of images without a valid signature
    /// are refused under `enforce` (see `trust`).
    trust: Arc<Trust>,
}

/// Where a mirror request's answer came from: the `source` label of
/// `airgap_mirror_requests_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Source {
    /// The archives (what they hold, or that they lack it and there is no
    /// upstream to ask).
    Archive,
    /// The upstream was asked (whatever it answered).
    Upstream,
    /// Nothing was looked up (the API check, a bad request).
    None,
}

impl Source {
    fn label(self) -> &'static str {
        match self {
            Source::Archive => "archive",
            Source::Upstream => "upstream",
            Source::None => "none",
        }
    }
}

/// A manifest ready to answer with.
struct Manifest {
    digest: Digest,
    media_type: String,
    bytes: Bytes,
}

const DOCKER_CONTENT_DIGEST: &str = "docker-content-digest";

impl Mirror {
    pub fn new(catalog: Arc<Catalog>, upstreams: Upstreams) -> Arc<Mirror> {
        Mirror::with_trust(catalog, upstreams, Trust::off())
    }

    /// A mirror that serves archived manifests as `trust` admits them.
    pub fn with_trust(
        catalog: Arc<Catalog>,
        upstreams: Upstreams,
        trust: Arc<Trust>,
    ) -> Arc<Mirror> {
        Arc::new(Mirror {
            catalog,
            upstreams,
            trust,
        })
    }

    /// The HTTP service.
    pub fn router(self: &Arc<Self>) -> axum::Router {
        axum::Router::new()
            .fallback(handle)
            .with_state(self.clone())
    }

    /// Serves on `listener` until `shutdown` resolves.
    pub async fn serve(
        self: &Arc<Self>,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> io::Result<()> {
        axum::serve(listener, self.router())
            .with_graceful_shutdown(shutdown)
            .await
    }

    /// Runs catalog lookups on a blocking thread: they read-lock the
    /// catalog and wait for its first scan of the archives.
    async fn lookup<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Catalog) -> T + Send + 'static,
    ) -> Result<T, MirrorError> {
        let catalog = self.catalog.clone();
        tokio::task::spawn_blocking(move || f(&catalog))
            .await
            .map_err(|e| MirrorError::internal("catalog lookup task", e))
    }

    /// The manifest `r` names; `source` becomes [`Source::Upstream`] once
    /// the upstream is asked.
    async fn manifest(
        &self,
        r: &Reference,
        headers: &HeaderMap,
        source: &mut Source,
    ) -> Result<Manifest, MirrorError> {
        let reference = r.clone();
        let trust = self.trust.clone();
        if let Some(m) = self
            .lookup(move |c| archived_manifest(c, &trust, &reference))
            .await??
        {
            return Ok(m);
        }
        // Each upstream in turn (serving nodes, then the private
        // registry): a miss or a failure moves on to the next.
        let upstreams = self.upstreams.candidates(&r.domain);
        let mut failed = None;
        for up in &upstreams {
            if r.digest.is_some() {
                tracing::info!(image = %r, upstream = %up.endpoint(), "manifest digest not in the archives (a docker-save archive carries a synthesized manifest); asking the upstream");
            } else {
                tracing::info!(image = %r, upstream = %up.endpoint(), "tag not in the archives; asking the upstream");
            }
            let accept = headers
                .get(header::ACCEPT)
                .and_then(|v| v.to_str().ok())
                .filter(|v| !v.trim().is_empty());
            *source = Source::Upstream;
            match up.manifest(r, accept).await {
                Ok(Some(m)) => {
                    return Ok(Manifest {
                        digest: m.digest,
                        media_type: m.media_type,
                        bytes: m.bytes,
                    })
                }
                Ok(None) => {}
                Err(e) => failed = Some(upstream_failed(up, e)),
            }
        }
        if let Some(e) = failed {
            return Err(e);
        }
        let upstream = !upstreams.is_empty();
        let reference = r.clone();
        Err(self
            .lookup(move |c| manifest_miss(c, &reference, upstream))
            .await?)
    }

    async fn blob(
        &self,
        r: &Reference,
        digest: Digest,
        headers: &HeaderMap,
        head: bool,
        source: &mut Source,
    ) -> Result<Response, MirrorError> {
        let (size, in_place, good) = self
            .lookup(move |c| {
                let good = c.has_good_copy(&digest);
                (c.blob_size(&digest), reads_in_place(c, &digest), good)
            })
            .await?;
        let upstreams = self.upstreams.candidates(&r.domain);
        if let Some(size) = size {
            if good || upstreams.is_empty() {
                match self
                    .archived_blob(digest, size, in_place, headers, head)
                    .await
                {
                    Ok(resp) => return Ok(resp),
                    // Every archived copy turned out bad just now: the
                    // upstream, if there is one.
                    Err(e)
                        if upstreams.is_empty()
                            || self.lookup(move |c| c.has_good_copy(&digest)).await? =>
                    {
                        return Err(e)
                    }
                    Err(_) => {}
                }
            }
            tracing::warn!(%digest, "every archived copy of the blob is bad; asking the upstream");
        }
        if upstreams.is_empty() {
            return Err(MirrorError::BlobUnknown(format!(
                "blob {digest} is in no archive"
            )));
        }
        let endpoints: Vec<&str> = upstreams.iter().map(|u| u.endpoint()).collect();
        tracing::info!(%digest, repository = %r.repository(), upstreams = ?endpoints, "blob not in the archives; asking the upstream");
        *source = Source::Upstream;
        let missing =
            || MirrorError::BlobUnknown(format!("blob {digest} is in no archive nor upstream"));
        let range = headers.get(header::RANGE);
        if head || range.is_some() {
            // The first upstream that answers; a part is passed through
            // unchecked (containerd checks the whole blob).
            let mut failed = None;
            for up in &upstreams {
                if head {
                    match up.blob_size(r, &digest).await {
                        Ok(Some(size)) => return Ok(blob_head(digest, size)),
                        Ok(None) => continue,
                        Err(e) => failed = Some(upstream_failed(up, e)),
                    }
                    continue;
                }
                match up.blob(r, &digest, range).await {
                    Ok(Some(blob)) => {
                        let status = if blob.content_range.is_some() {
                            StatusCode::PARTIAL_CONTENT
                        } else {
                            StatusCode::OK
                        };
                        return Ok(blob_response(
                            status,
                            digest,
                            blob.content_length,
                            blob.content_range,
                            Body::from_stream(blob.body),
                        ));
                    }
                    Ok(None) => {}
                    Err(e) => failed = Some(upstream_failed(up, e)),
                }
            }
            return Err(failed.unwrap_or_else(missing));
        }
        // The whole blob: a transfer that breaks goes on from the next
        // upstream, checked end to end.
        match crate::registry::blob_with_failover(upstreams, r.clone(), digest).await {
            Ok(Some((len, body))) => Ok(blob_response(
                StatusCode::OK,
                digest,
                len,
                None,
                Body::from_stream(body),
            )),
            Ok(None) => Err(missing()),
            // Counted and logged per upstream as they failed.
            Err(e) => Err(MirrorError::Upstream(e.to_string())),
        }
    }

    async fn archived_blob(
        &self,
        digest: Digest,
        size: u64,
        in_place: bool,
        headers: &HeaderMap,
        head: bool,
    ) -> Result<Response, MirrorError> {
        let range = headers.get(header::RANGE).and_then(|v| v.to_str().ok());
        let range = body::parse_range(range, size);
        if head {
            return Ok(blob_head(digest, size));
        }
        let what = digest.to_string();
        let (status, len, content_range, body) = match range {
            RangeRequest::Unsatisfiable => return Err(MirrorError::RangeNotSatisfiable { size }),
            RangeRequest::Whole if in_place => {
                // Plain tar or seekable zstd: read in place, checked as it
                // streams (a mismatch aborts the response).
                let reader = self.open_archived(digest, Catalog::open_blob).await?;
                (StatusCode::OK, size, None, body::from_reader(reader, what))
            }
            RangeRequest::Whole => {
                // A compressed archive: decompressed once into the layer
                // cache (single-flight: concurrent pulls of the blob wait for
                // one fill), checked while it fills, then read from there.
                let reader = self.open_archived(digest, Catalog::blob_reader).await?;
                let body = body::from_range(reader, 0, size, what);
                (StatusCode::OK, size, None, body)
            }
            RangeRequest::Part { start, len } => {
                // Random access, every byte checked once before serving.
                let reader = self.open_archived(digest, Catalog::blob_reader).await?;
                let content_range =
                    HeaderValue::from_str(&format!("bytes {start}-{}/{size}", start + len - 1))
                        .map_err(|e| MirrorError::internal("content range", e))?;
                let body = body::from_range(reader, start, len, what);
                (StatusCode::PARTIAL_CONTENT, len, Some(content_range), body)
            }
        };
        Ok(blob_response(
            status,
            digest,
            Some(len),
            content_range,
            body,
        ))
    }

    /// An archived blob opened on a blocking thread by `open` (one of the
    /// catalog's readers).
    async fn open_archived<T: Send + 'static>(
        &self,
        digest: Digest,
        open: fn(&Catalog, &Digest) -> Result<T, BlobError>,
    ) -> Result<T, MirrorError> {
        self.lookup(move |c| open(c, &digest))
            .await?
            .map_err(|e| blob_open_error(digest, e))
    }
}

/// The manifest `r` names, from the archives, if `trust` admits it.
fn archived_manifest(
    catalog: &Catalog,
    trust: &Trust,
    r: &Reference,
) -> Result<Option<Manifest>, MirrorError> {
    let (digest, listed_type) = match (&r.digest, &r.tag) {
        (Some(d), _) => (*d, None),
        (None, Some(_)) => match catalog.resolve(&r.to_string()) {
            Some(info) => {
                tracing::info!(image = %r, digest = %info.entry.digest, archive = %info.archive.display(),
                    "tag resolved from the archives");
                (info.entry.digest, Some(info.entry.media_type))
            }
            None => return Ok(None),
        },
        (None, None) => return Ok(None),
    };
    let Some(doc) = catalog.document(&digest) else {
        if listed_type.is_some() {
            // The archive went away between the two lookups: a miss.
            tracing::debug!(image = %r, %digest, "archive withdrawn while resolving");
        }
        return Ok(None);
    };
    let bytes = doc;
    let Some(sniffed) = manifest_media_type(&bytes) else {
        // A config or other document: not a manifest.
        return Ok(None);
    };
    let media_type = listed_type.filter(|t| !t.is_empty()).unwrap_or(sniffed);
    let name = r.tag.is_some().then(|| r.to_string());
    trust
        .admit_manifest(catalog, &digest, name.as_deref())
        .map_err(|refusal| MirrorError::Denied(refusal.for_client()))?;
    // A client asks for the layers next, all at once: one pass over a
    // compressed archive keeps them all as it goes by them.
    if let Some(m) = catalog.manifest(&digest) {
        let layers: Vec<Digest> = m
            .chain
            .iter()
            .filter_map(|c| crate::catalog::LayerSource::layer(catalog, c))
            .map(|l| l.digest)
            .collect();
        catalog.expect_blobs(&layers);
    }
    Ok(Some(Manifest {
        digest,
        media_type,
        bytes,
    }))
}

/// The 404 for a manifest nobody has: NAME_UNKNOWN when no archive carries
/// the repository at all.
fn manifest_miss(catalog: &Catalog, r: &Reference, upstream: bool) -> MirrorError {
    let repo = format!("{}:", r.repository());
    let known = catalog
        .images()
        .iter()
        .any(|i| i.entry.name.starts_with(&repo));
    let upstream = if upstream { " nor upstream" } else { "" };
    if r.tag.is_some() && !known {
        MirrorError::NameUnknown(format!(
            "repository {} is in no archive{upstream}",
            r.repository()
        ))
    } else {
        MirrorError::ManifestUnknown(format!("{r} is in no archive{upstream}"))
    }
}

/// True when the archives holding `digest` can be read in place (plain tar,
/// seekable zstd) rather than through the layer cache.
fn reads_in_place(catalog: &Catalog, digest: &Digest) -> bool {
    if catalog.document(digest).is_some() {
        return true;
    }
    catalog
        .archives()
        .iter()
        .filter(|a| a.index.blobs.contains_key(digest))
        .all(|a| matches!(a.index.container, Container::Tar | Container::SeekableZstd))
}

/// The one request handler: method, path, then the lookup.
async fn handle(
    State(mirror): State<Arc<Mirror>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let started = std::time::Instant::now();
    let head = method == Method::HEAD;
    if method != Method::GET && !head {
        let response = MirrorError::Unsupported(format!(
            "{method} is not supported: this mirror is read-only"
        ))
        .into_response();
        crate::metrics::global().mirror_request(
            "unsupported",
            response.status().as_u16(),
            Source::None.label(),
            started.elapsed().as_secs_f64(),
        );
        return response;
    }
    let route = request::parse(uri.path(), uri.query());
    let route_name = match &route {
        Err(_) => "invalid",
        Ok(Route::Base) => "base",
        Ok(Route::Manifest(_)) => "manifest",
        Ok(Route::Blob(..)) => "blob",
        Ok(Route::Tags { .. }) => "tags",
        Ok(Route::Catalog { .. }) => "catalog",
    };
    // Content and listings come from the archives unless the upstream is
    // asked; the API check and bad requests look nothing up.
    let mut source = match route {
        Err(_) | Ok(Route::Base) => Source::None,
        Ok(_) => Source::Archive,
    };
    let result = match route {
        Err(e) => Err(e),
        Ok(Route::Base) => Ok(base()),
        Ok(Route::Manifest(r)) => match mirror.manifest(&r, &headers, &mut source).await {
            Ok(m) => manifest_response(m, &headers, head),
            Err(e) => Err(e),
        },
        Ok(Route::Blob(r, digest)) => mirror.blob(&r, digest, &headers, head, &mut source).await,
        Ok(Route::Tags {
            name,
            ns,
            repository,
            page,
        }) => mirror
            .lookup(move |c| discovery::tags(c, &name, ns.as_deref(), &repository, &page))
            .await
            .and_then(|r| r),
        Ok(Route::Catalog { ns, page }) => mirror
            .lookup(move |c| discovery::repositories(c, ns.as_deref(), &page))
            .await
            .and_then(|r| r),
    };
    let response = result.unwrap_or_else(|e| e.into_response());
    crate::metrics::global().mirror_request(
        route_name,
        response.status().as_u16(),
        source.label(),
        started.elapsed().as_secs_f64(),
    );
    tracing::debug!(%method, path = %uri.path(), status = response.status().as_u16(), "mirror request");
    response
}

fn base() -> Response {
    let mut resp = (StatusCode::OK, "{}").into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(
        "docker-distribution-api-version",
        HeaderValue::from_static("registry/2.0"),
    );
    resp
}

fn manifest_response(
    m: Manifest,
    headers: &HeaderMap,
    head: bool,
) -> Result<Response, MirrorError> {
    if !media::accepts(headers, &m.media_type) {
        return Err(MirrorError::ManifestUnknown(format!(
            "{} is held only as {}, which the request does not accept",
            m.digest, m.media_type
        )));
    }
    let len = m.bytes.len() as u64;
    let body = if head {
        Body::empty()
    } else {
        Body::from(m.bytes)
    };
    let mut resp = Response::new(body);
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_str(&m.media_type).map_err(|e| MirrorError::internal("media type", e))?,
    );
    common_headers(h, m.digest, Some(len));
    Ok(resp)
}

/// The answer to a HEAD of a blob of `size` bytes.
fn blob_head(digest: Digest, size: u64) -> Response {
    blob_response(StatusCode::OK, digest, Some(size), None, Body::empty())
}

fn blob_response(
    status: StatusCode,
    digest: Digest,
    len: Option<u64>,
    content_range: Option<HeaderValue>,
    body: Body,
) -> Response {
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if let Some(cr) = content_range {
        h.insert(header::CONTENT_RANGE, cr);
    }
    common_headers(h, digest, len);
    resp
}

fn common_headers(h: &mut HeaderMap, digest: Digest, len: Option<u64>) {
    let d = HeaderValue::from_str(&digest.to_string()).expect("a digest is a header value");
    h.insert(DOCKER_CONTENT_DIGEST, d.clone());
    if let Ok(etag) = HeaderValue::from_str(&format!("\"{digest}\"")) {
        h.insert(header::ETAG, etag);
    }
    if let Some(len) = len {
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    }
}

fn blob_open_error(digest: Digest, e: BlobError) -> MirrorError {
    match e {
        // The archive went away since the lookup.
        BlobError::Unknown(_) => {
            MirrorError::BlobUnknown(format!("blob {digest} is in no archive"))
        }
        e @ BlobError::Read { .. } => MirrorError::internal(&format!("opening blob {digest}"), e),
    }
}

/// Logs an upstream failure (no credentials; an outage is logged once by
/// the upstream itself) and turns it into the mirror's answer.
fn upstream_failed(up: &Upstream, e: UpstreamError) -> MirrorError {
    let kind = if e.is_unreachable() {
        "unreachable"
    } else {
        "failed"
    };
    up.metrics().error(kind);
    if e.is_unreachable() {
        tracing::debug!(error = %e, "upstream registry unreachable");
    } else {
        tracing::warn!(error = %e, "upstream registry request failed");
    }
    MirrorError::Upstream(e.to_string())
}

#[cfg(test)]
mod metrics_tests;
#[cfg(test)]
mod spec_tests;
#[cfg(test)]
mod tests;

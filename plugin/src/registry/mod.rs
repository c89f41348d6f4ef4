//! The client of the site's private registries (the `[[upstream]]` tables):
//! where the mirror fetches what the archives lack, and where `pack` fetches
//! what its other sources lack.
//!
//! One [`Upstream`] per `[[upstream]]` table, each with its own HTTP client
//! (its CA file, its TLS settings). Authentication follows the registry's
//! `WWW-Authenticate` challenge: `Bearer` (the token flow: credentials, if
//! any, go to the token realm, the token is cached per repository scope
//! until it expires) or `Basic`. Credentials and tokens are never logged;
//! errors name the endpoint and the repository only.
//!
//! Everything fetched is checked: a manifest against the digest asked for
//! (or the `Docker-Content-Digest` the upstream claims), a blob against its
//! digest as it streams through, the response aborted on a mismatch.
//! Partial (`Range`) blob answers are passed through unchecked; containerd
//! checks the whole blob when it commits it.

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use lru::LruCache;
use reqwest::header::{self, HeaderMap, HeaderValue};
use reqwest::{Method, StatusCode};

use crate::catalog::reference::Reference;
use crate::config::UpstreamConfig;
use crate::digest::Digest;

mod auth;
mod failover;
pub mod media;
mod stream;

use auth::{Auth, Challenge};
pub use failover::blob_with_failover;
use stream::verified_stream;
pub use stream::BlobStream;

/// Largest manifest accepted from an upstream (distribution's own limit).
pub const MAX_MANIFEST: usize = 4 << 20;
/// Manifests fetched by digest, kept in memory (they never change).
const MANIFEST_CACHE: usize = 256;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest wait for any single read from the upstream.
const READ_TIMEOUT: Duration = Duration::from_secs(60);
/// Whole-request limit for manifests and token requests.
pub(crate) const SMALL_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long an upstream found unreachable is tried after the others.
pub const DOWN_FOR: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("{endpoint}: cannot read {path}: {source}")]
    CaFile {
        endpoint: String,
        path: String,
        source: std::io::Error,
    },
    #[error("{endpoint}: bad CA file {path}: {reason}")]
    BadCa {
        endpoint: String,
        path: String,
        reason: String,
    },
    #[error("{endpoint}: {reason}")]
    Client { endpoint: String, reason: String },
    #[error("{endpoint} unreachable: {reason}")]
    Unreachable { endpoint: String, reason: String },
    #[error("{endpoint}: {what} answered {status}")]
    Status {
        endpoint: String,
        what: String,
        status: StatusCode,
    },
    #[error("{endpoint}: {what}: {reason}")]
    BadContent {
        endpoint: String,
        what: String,
        reason: String,
    },
}

impl UpstreamError {
    /// True when the upstream could not be reached at all.
    pub fn is_unreachable(&self) -> bool {
        matches!(self, UpstreamError::Unreachable { .. })
    }
}

/// The configured upstreams, looked up by registry name.
#[derive(Default)]
pub struct Upstreams {
    list: Vec<Arc<Upstream>>,
}

impl Upstreams {
    /// Builds a client per table; reads password files and CA files now.
    pub fn new(configs: &[UpstreamConfig]) -> Result<Upstreams, UpstreamError> {
        let mut list = Vec::new();
        for c in configs {
            let password = c.load_password()?;
            let u = Upstream::new(c, password)?;
            tracing::info!(registry = %u.registry, endpoint = %u.endpoint, prefix = ?u.path_prefix,
                credentials = u.username.is_some(), "upstream registry configured");
            list.push(Arc::new(u));
        }
        Ok(Upstreams { list })
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// The upstream for images of `registry`: the table naming it, else the
    /// `*` table.
    pub fn for_registry(&self, registry: &str) -> Option<&Arc<Upstream>> {
        self.list
            .iter()
            .find(|u| u.registry == registry)
            .or_else(|| self.list.iter().find(|u| u.registry == "*"))
    }

    /// Every upstream for images of `registry`, in the order they are
    /// tried: the tables naming it, then the `*` tables, each in config
    /// order (serving nodes before the private registry when listed so);
    /// one that could not be reached within [`DOWN_FOR`] goes last.
    pub fn candidates(&self, registry: &str) -> Vec<Arc<Upstream>> {
        let mut list: Vec<Arc<Upstream>> = self
            .list
            .iter()
            .filter(|u| u.registry == registry)
            .chain(self.list.iter().filter(|u| u.registry == "*"))
            .cloned()
            .collect();
        // Stable: config order among the reachable, and among the down.
        list.sort_by_key(|u| u.recently_down());
        list
    }
}

/// A manifest fetched from an upstream and checked.
#[derive(Debug, Clone)]
pub struct FetchedManifest {
    pub digest: Digest,
    pub media_type: String,
    pub bytes: Bytes,
}

/// A blob answer from an upstream, streaming.
pub struct UpstreamBlob {
    /// `Content-Range` of a partial answer.
    pub content_range: Option<HeaderValue>,
    pub content_length: Option<u64>,
    pub body: BlobStream,
}

pub struct Upstream {
    registry: String,
    endpoint: String,
    path_prefix: Option<String>,
    username: Option<String>,
    password: Option<String>,
    client: reqwest::Client,
    /// Bearer tokens by scope, with when they stop being used.
    tokens: Mutex<HashMap<String, (String, Instant)>>,
    /// The upstream asked for basic auth once: send it up front.
    basic: AtomicBool,
    /// The last request could not reach it (logged once per outage).
    down: AtomicBool,
    /// When it was last found unreachable.
    down_at: Mutex<Option<Instant>>,
    /// Sent as `Authorization: Bearer` with every request (`token_file`).
    static_token: Option<String>,
    manifests: Mutex<LruCache<Digest, FetchedManifest>>,
    /// Its counters, labelled with `registry`.
    metrics: crate::metrics::UpstreamMetrics,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("registry", &self.registry)
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl Upstream {
    fn new(c: &UpstreamConfig, password: Option<String>) -> Result<Upstream, UpstreamError> {
        let endpoint = c.endpoint.trim_end_matches('/').to_string();
        let mut builder = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(READ_TIMEOUT)
            .user_agent(concat!("airgap-snapshotter/", env!("CARGO_PKG_VERSION")));
        if let Some(path) = &c.ca_file {
            let pem = std::fs::read(path).map_err(|source| UpstreamError::CaFile {
                endpoint: endpoint.clone(),
                path: path.display().to_string(),
                source,
            })?;
            let certs =
                reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| UpstreamError::BadCa {
                    endpoint: endpoint.clone(),
                    path: path.display().to_string(),
                    reason: e.to_string(),
                })?;
            if certs.is_empty() {
                return Err(UpstreamError::BadCa {
                    endpoint,
                    path: path.display().to_string(),
                    reason: "no PEM certificate in it".into(),
                });
            }
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        if let (Some(cert), Some(key)) = (&c.client_cert_file, &c.client_key_file) {
            let mut pem = std::fs::read(cert).map_err(|source| UpstreamError::CaFile {
                endpoint: endpoint.clone(),
                path: cert.display().to_string(),
                source,
            })?;
            pem.push(b'\n');
            pem.extend(std::fs::read(key).map_err(|source| UpstreamError::CaFile {
                endpoint: endpoint.clone(),
                path: key.display().to_string(),
                source,
            })?);
            let identity = reqwest::Identity::from_pem(&pem).map_err(|e| UpstreamError::BadCa {
                endpoint: endpoint.clone(),
                path: format!("{} + {}", cert.display(), key.display()),
                reason: e.to_string(),
            })?;
            builder = builder.identity(identity);
        }
        if c.insecure_skip_verify {
            tracing::warn!(endpoint = %endpoint, "upstream TLS certificates are not verified (insecure_skip_verify)");
            builder = builder.danger_accept_invalid_certs(true);
        }
        let client = builder.build().map_err(|e| UpstreamError::Client {
            endpoint: endpoint.clone(),
            reason: e.to_string(),
        })?;
        Ok(Upstream {
            registry: c.registry.clone(),
            endpoint,
            path_prefix: c
                .path_prefix
                .as_deref()
                .map(|p| p.trim_matches('/').to_string()),
            username: c.username.clone(),
            password,
            client,
            tokens: Mutex::new(HashMap::new()),
            basic: AtomicBool::new(false),
            down: AtomicBool::new(false),
            down_at: Mutex::new(None),
            static_token: c.load_token()?,
            manifests: Mutex::new(LruCache::new(
                NonZeroUsize::new(MANIFEST_CACHE).expect("non-zero"),
            )),
            metrics: crate::metrics::global().upstream(&c.registry),
        })
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The registry name this upstream serves (`docker.io`, `*`).
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// Its counters (labelled with [`Upstream::registry`]).
    pub fn metrics(&self) -> &crate::metrics::UpstreamMetrics {
        &self.metrics
    }

    /// `GET /v2/` with this upstream's credentials (answering a token or
    /// basic challenge as for any request): the HTTP status it ends with.
    /// 200 means reachable, TLS verified and credentials accepted.
    pub async fn ping(&self) -> Result<u16, UpstreamError> {
        let resp = self
            .send(
                Method::GET,
                "/v2/",
                "",
                HeaderMap::new(),
                Some(SMALL_REQUEST_TIMEOUT),
            )
            .await?;
        Ok(resp.status().as_u16())
    }

    /// `?ns=<registry>` for a `*` table, which stands for several
    /// registries: asked as containerd asks a mirror, so that another
    /// node's airgap-snapshotter (or any mirror) knows the image's registry.
    /// Registries ignore it.
    fn ns_query(&self, r: &Reference) -> String {
        if self.registry == "*" {
            format!("?ns={}", r.domain)
        } else {
            String::new()
        }
    }

    /// The repository path on the upstream: `[prefix/]path`.
    fn repository(&self, r: &Reference) -> String {
        match &self.path_prefix {
            Some(p) => format!("{p}/{}", r.path),
            None => r.path.clone(),
        }
    }

    /// The manifest `r` names (by tag or digest); `None` if the upstream
    /// does not have it.
    pub async fn manifest(
        &self,
        r: &Reference,
        accept: Option<&str>,
    ) -> Result<Option<FetchedManifest>, UpstreamError> {
        let pinned: Option<Digest> = r.digest;
        if let Some(d) = &pinned {
            if let Some(m) = self.manifests.lock().unwrap().get(d) {
                return Ok(Some(m.clone()));
            }
        }
        let repo = self.repository(r);
        let by = r
            .digest
            .map(|d| d.to_string())
            .or_else(|| r.tag.clone())
            .unwrap_or_else(|| "latest".into());
        let path = format!("/v2/{repo}/manifests/{by}{}", self.ns_query(r));
        let mut headers = HeaderMap::new();
        headers.insert(
            header::ACCEPT,
            HeaderValue::from_str(accept.unwrap_or(media::ACCEPT_ALL_MANIFESTS))
                .unwrap_or(HeaderValue::from_static(media::ACCEPT_ALL_MANIFESTS)),
        );
        let resp = self
            .send(
                Method::GET,
                &path,
                &repo,
                headers,
                Some(SMALL_REQUEST_TIMEOUT),
            )
            .await?;
        let status = resp.status();
        if status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !status.is_success() {
            return Err(self.status_error(&path, status));
        }
        let media_type = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or(v).trim().to_string());
        let claimed: Option<Digest> = resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let bytes = self.read_limited(resp, &path).await?;
        let digest = Digest::of(&bytes);
        let bad = |reason: String| UpstreamError::BadContent {
            endpoint: self.endpoint.clone(),
            what: path.clone(),
            reason,
        };
        if let Some(want) = pinned.or(claimed) {
            if want != digest {
                return Err(bad(format!("manifest is {digest}, expected {want}")));
            }
        }
        // Whatever its Content-Type says, a manifest is a JSON object: a
        // garbage answer is the upstream's failure (containerd tries its next
        // host), never served as a manifest.
        if !serde_json::from_slice::<serde_json::Value>(&bytes).is_ok_and(|v| v.is_object()) {
            return Err(bad("answer is not a JSON manifest".into()));
        }
        let media_type = match media_type {
            Some(t) if t.starts_with("application/vnd.") => t,
            _ => media::manifest_media_type(&bytes)
                .ok_or_else(|| bad("answer is not a manifest".into()))?,
        };
        let m = FetchedManifest {
            digest,
            media_type,
            bytes,
        };
        self.manifests.lock().unwrap().put(digest, m.clone());
        Ok(Some(m))
    }

    /// The size of a blob, `None` if the upstream does not have it.
    pub async fn blob_size(
        &self,
        r: &Reference,
        digest: &Digest,
    ) -> Result<Option<u64>, UpstreamError> {
        let repo = self.repository(r);
        let path = format!("/v2/{repo}/blobs/{digest}{}", self.ns_query(r));
        let resp = self
            .send(
                Method::HEAD,
                &path,
                &repo,
                HeaderMap::new(),
                Some(SMALL_REQUEST_TIMEOUT),
            )
            .await?;
        match resp.status() {
            StatusCode::NOT_FOUND => Ok(None),
            s if s.is_success() => resp
                .headers()
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
                .map(Some)
                .ok_or_else(|| UpstreamError::BadContent {
                    endpoint: self.endpoint.clone(),
                    what: path.clone(),
                    reason: "no Content-Length".into(),
                }),
            s => Err(self.status_error(&path, s)),
        }
    }

    /// A blob, streaming; checked against `digest` unless `range` asked for
    /// a part of it.
    pub async fn blob(
        &self,
        r: &Reference,
        digest: &Digest,
        range: Option<&HeaderValue>,
    ) -> Result<Option<UpstreamBlob>, UpstreamError> {
        let repo = self.repository(r);
        let path = format!("/v2/{repo}/blobs/{digest}{}", self.ns_query(r));
        let mut headers = HeaderMap::new();
        if let Some(range) = range {
            headers.insert(header::RANGE, range.clone());
        }
        let resp = self.send(Method::GET, &path, &repo, headers, None).await?;
        let status = resp.status();
        if status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if status == StatusCode::RANGE_NOT_SATISFIABLE || !status.is_success() {
            return Err(self.status_error(&path, status));
        }
        let partial = status == StatusCode::PARTIAL_CONTENT;
        let content_range = resp.headers().get(header::CONTENT_RANGE).cloned();
        let content_length = resp
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let what = format!("{}{path}", self.endpoint);
        let body = if partial {
            resp.bytes_stream()
                .map(|c| c.map_err(std::io::Error::other))
                .boxed()
        } else {
            verified_stream(resp, *digest, what, self.metrics.clone())
        };
        Ok(Some(UpstreamBlob {
            content_range: if partial { content_range } else { None },
            content_length,
            body,
        }))
    }

    /// A blob from byte `offset` on, unchecked (the caller hashes the whole
    /// blob across endpoints): `None` if the upstream does not have it.
    pub(crate) async fn blob_from(
        &self,
        r: &Reference,
        digest: &Digest,
        offset: u64,
    ) -> Result<Option<failover::RawBlob>, UpstreamError> {
        let repo = self.repository(r);
        let path = format!("/v2/{repo}/blobs/{digest}{}", self.ns_query(r));
        let mut headers = HeaderMap::new();
        if offset > 0 {
            headers.insert(
                header::RANGE,
                HeaderValue::from_str(&format!("bytes={offset}-")).expect("a range header"),
            );
        }
        let resp = self.send(Method::GET, &path, &repo, headers, None).await?;
        let status = resp.status();
        if status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !status.is_success() {
            return Err(self.status_error(&path, status));
        }
        let content_length = resp.content_length();
        let start = if status == StatusCode::PARTIAL_CONTENT {
            resp.headers()
                .get(header::CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("bytes "))
                .and_then(|v| v.split('-').next())
                .and_then(|v| v.parse::<u64>().ok())
        } else {
            Some(0)
        };
        let metrics = self.metrics.clone();
        let body = resp
            .bytes_stream()
            .map(move |c| {
                if let Ok(c) = &c {
                    metrics.bytes.inc_by(c.len() as u64);
                }
                c.map_err(|e| std::io::Error::other(root_cause(&e)))
            })
            .boxed();
        Ok(Some(failover::RawBlob {
            start,
            content_length,
            body,
        }))
    }

    fn status_error(&self, path: &str, status: StatusCode) -> UpstreamError {
        UpstreamError::Status {
            endpoint: self.endpoint.clone(),
            what: path.to_string(),
            status,
        }
    }

    async fn read_limited(
        &self,
        resp: reqwest::Response,
        path: &str,
    ) -> Result<Bytes, UpstreamError> {
        let bad = |reason: String| UpstreamError::BadContent {
            endpoint: self.endpoint.clone(),
            what: path.to_string(),
            reason,
        };
        if resp
            .content_length()
            .is_some_and(|n| n > MAX_MANIFEST as u64)
        {
            return Err(bad(format!("larger than {MAX_MANIFEST} bytes")));
        }
        let mut out = Vec::new();
        let mut stream = resp.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| self.unreachable(&e))?;
            self.metrics.bytes.inc_by(chunk.len() as u64);
            out.extend_from_slice(&chunk);
            if out.len() > MAX_MANIFEST {
                return Err(bad(format!("larger than {MAX_MANIFEST} bytes")));
            }
        }
        Ok(Bytes::from(out))
    }

    fn unreachable(&self, e: &reqwest::Error) -> UpstreamError {
        let reason = if e.is_timeout() {
            "timed out".to_string()
        } else if e.is_connect() {
            format!("connection failed ({})", root_cause(e))
        } else {
            root_cause(e)
        };
        let err = UpstreamError::Unreachable {
            endpoint: self.endpoint.clone(),
            reason,
        };
        *self.down_at.lock().unwrap() = Some(Instant::now());
        if !self.down.swap(true, Ordering::Relaxed) {
            tracing::warn!(error = %err, "upstream registry is down or unreachable; only archived images are served until it is back");
        }
        err
    }

    /// Found unreachable within the last [`DOWN_FOR`].
    fn recently_down(&self) -> bool {
        self.down_at
            .lock()
            .unwrap()
            .is_some_and(|at| at.elapsed() < DOWN_FOR)
    }

    fn reached(&self) {
        *self.down_at.lock().unwrap() = None;
        if self.down.swap(false, Ordering::Relaxed) {
            tracing::info!(endpoint = %self.endpoint, "upstream registry reachable again");
        }
    }

    /// Sends a request, answering its authentication challenges: a 401 to
    /// a cached bearer token evicts it; a `Bearer` challenge fetches a token
    /// (once per call); a `Basic` challenge to a bearer token means the
    /// token is no longer valid (Harbor answers so), so the request is sent
    /// again without it to learn the registry's real challenge, and only a
    /// `Basic` challenge to a request without credentials turns to basic
    /// auth.
    async fn send(
        &self,
        method: Method,
        path: &str,
        repo: &str,
        headers: HeaderMap,
        timeout: Option<Duration>,
    ) -> Result<reqwest::Response, UpstreamError> {
        /// At most this many requests for one call: token refused,
        /// anonymous, new token.
        const MAX_SENDS: usize = 4;
        let url = format!("{}{path}", self.endpoint);
        let scope = format!("repository:{repo}:pull");
        let mut auth = match &self.static_token {
            Some(token) => Auth::Bearer(token.clone()),
            None => self.auth_for(&scope),
        };
        let mut fetched = false;
        for sent in 1.. {
            let mut req = self
                .client
                .request(method.clone(), &url)
                .headers(headers.clone());
            if let Some(t) = timeout {
                req = req.timeout(t);
            }
            req = match &auth {
                Auth::None => req,
                Auth::Bearer(token) => req.bearer_auth(token),
                Auth::Basic => match self.credentials() {
                    Some((u, p)) => req.basic_auth(u, Some(p)),
                    None => req,
                },
            };
            self.metrics.requests.inc();
            let resp = req.send().await.map_err(|e| self.unreachable(&e))?;
            self.reached();
            let refused = |resp: reqwest::Response| {
                tracing::warn!(endpoint = %self.endpoint, repository = %repo, status = %resp.status(),
                    "upstream registry refused access (check username and password of this [[upstream]])");
                Ok(resp)
            };
            if resp.status() != StatusCode::UNAUTHORIZED {
                if resp.status() == StatusCode::FORBIDDEN {
                    return refused(resp);
                }
                return Ok(resp);
            }
            if self.static_token.is_some() {
                return refused(resp);
            }
            if let Auth::Bearer(token) = &auth {
                self.forget_token(&scope, token);
            }
            if sent >= MAX_SENDS {
                return refused(resp);
            }
            let challenge = resp
                .headers()
                .get(header::WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok())
                .and_then(Challenge::parse);
            auth = match (challenge, &auth) {
                (Some(Challenge::Bearer { .. }), _) if fetched => return refused(resp),
                (
                    Some(Challenge::Bearer {
                        realm,
                        service,
                        scope: s,
                    }),
                    _,
                ) => {
                    self.basic.store(false, Ordering::Relaxed);
                    let s = s.unwrap_or_else(|| scope.clone());
                    let (token, ttl) = self.fetch_token(&realm, service.as_deref(), &s).await?;
                    fetched = true;
                    self.tokens
                        .lock()
                        .unwrap()
                        .insert(scope.clone(), (token.clone(), Instant::now() + ttl));
                    Auth::Bearer(token)
                }
                (Some(Challenge::Basic), Auth::Bearer(_)) => {
                    tracing::debug!(endpoint = %self.endpoint, repository = %repo,
                        "basic challenge to a bearer token: the token is no longer valid; asking again without it");
                    Auth::None
                }
                (Some(Challenge::Basic), Auth::None) if self.credentials().is_some() => {
                    self.basic.store(true, Ordering::Relaxed);
                    Auth::Basic
                }
                (Some(Challenge::Basic), Auth::Basic) => return refused(resp),
                _ => {
                    tracing::warn!(endpoint = %self.endpoint, repository = %repo,
                        "upstream registry asks for credentials this [[upstream]] does not have");
                    return Ok(resp);
                }
            };
        }
        unreachable!("the loop returns")
    }
}

/// The innermost error message (reqwest's top level only says "error
/// sending request").
pub(crate) fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_by_registry_then_star() {
        let cfg = UpstreamConfig::anonymous;
        let u = Upstreams::new(&[
            cfg("*", "http://127.0.0.1:1"),
            cfg("docker.io", "http://127.0.0.1:2/"),
        ])
        .unwrap();
        assert_eq!(
            u.for_registry("docker.io").unwrap().endpoint(),
            "http://127.0.0.1:2"
        );
        assert_eq!(
            u.for_registry("quay.io").unwrap().endpoint(),
            "http://127.0.0.1:1"
        );
        assert!(Upstreams::default().for_registry("docker.io").is_none());
    }
}

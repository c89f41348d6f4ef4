//! The upstream registries: where the mirror fetches what the archives lack.
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

use axum::body::Body;
use bytes::Bytes;
use futures::StreamExt;
use lru::LruCache;
use reqwest::header::{self, HeaderMap, HeaderValue};
use reqwest::{Method, StatusCode};

use crate::catalog::reference::Reference;
use crate::config::UpstreamConfig;
use crate::digest::{Digest, Hasher};

use super::media;

/// Largest manifest accepted from an upstream (distribution's own limit).
pub const MAX_MANIFEST: usize = 4 << 20;
/// Manifests fetched by digest, kept in memory (they never change).
const MANIFEST_CACHE: usize = 256;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest wait for any single read from the upstream.
const READ_TIMEOUT: Duration = Duration::from_secs(60);
/// Whole-request limit for manifests and token requests.
const SMALL_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

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
    pub body: Body,
}

#[derive(Clone)]
enum Auth {
    None,
    Basic,
    Bearer(String),
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
    manifests: Mutex<LruCache<Digest, FetchedManifest>>,
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
            manifests: Mutex::new(LruCache::new(
                NonZeroUsize::new(MANIFEST_CACHE).expect("non-zero"),
            )),
        })
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
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
        let pinned: Option<Digest> = r.digest.as_deref().and_then(|d| d.parse().ok());
        if let Some(d) = &pinned {
            if let Some(m) = self.manifests.lock().unwrap().get(d) {
                return Ok(Some(m.clone()));
            }
        }
        let repo = self.repository(r);
        let by = r
            .digest
            .clone()
            .or_else(|| r.tag.clone())
            .unwrap_or_else(|| "latest".into());
        let path = format!("/v2/{repo}/manifests/{by}");
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
        let path = format!("/v2/{repo}/blobs/{digest}");
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
        let path = format!("/v2/{repo}/blobs/{digest}");
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
            Body::from_stream(
                resp.bytes_stream()
                    .map(|c| c.map_err(std::io::Error::other)),
            )
        } else {
            verified_stream(resp, *digest, what)
        };
        Ok(Some(UpstreamBlob {
            content_range: if partial { content_range } else { None },
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
        if !self.down.swap(true, Ordering::Relaxed) {
            tracing::warn!(error = %err, "upstream registry is down or unreachable; only archived images are served until it is back");
        }
        err
    }

    fn reached(&self) {
        if self.down.swap(false, Ordering::Relaxed) {
            tracing::info!(endpoint = %self.endpoint, "upstream registry reachable again");
        }
    }

    fn credentials(&self) -> Option<(&str, &str)> {
        Some((
            self.username.as_deref()?,
            self.password.as_deref().unwrap_or(""),
        ))
    }

    /// What to send before any challenge: a cached token for the scope, or
    /// basic auth if the upstream asked for it before.
    fn auth_for(&self, scope: &str) -> Auth {
        let mut tokens = self.tokens.lock().unwrap();
        match tokens.get(scope) {
            Some((token, until)) if *until > Instant::now() => return Auth::Bearer(token.clone()),
            Some(_) => {
                tokens.remove(scope);
            }
            None => {}
        }
        if self.basic.load(Ordering::Relaxed) && self.credentials().is_some() {
            Auth::Basic
        } else {
            Auth::None
        }
    }

    /// Sends a request, answering one authentication challenge.
    async fn send(
        &self,
        method: Method,
        path: &str,
        repo: &str,
        headers: HeaderMap,
        timeout: Option<Duration>,
    ) -> Result<reqwest::Response, UpstreamError> {
        let url = format!("{}{path}", self.endpoint);
        let scope = format!("repository:{repo}:pull");
        let mut auth = self.auth_for(&scope);
        let mut challenged = false;
        loop {
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
            let resp = req.send().await.map_err(|e| self.unreachable(&e))?;
            self.reached();
            if resp.status() != StatusCode::UNAUTHORIZED || challenged {
                if resp.status() == StatusCode::UNAUTHORIZED
                    || resp.status() == StatusCode::FORBIDDEN
                {
                    tracing::warn!(endpoint = %self.endpoint, repository = %repo, status = %resp.status(),
                        "upstream registry refused access (check username and password of this [[upstream]])");
                }
                return Ok(resp);
            }
            challenged = true;
            let challenge = resp
                .headers()
                .get(header::WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok())
                .and_then(Challenge::parse);
            auth = match challenge {
                Some(Challenge::Bearer {
                    realm,
                    service,
                    scope: s,
                }) => {
                    let s = s.unwrap_or_else(|| scope.clone());
                    let (token, ttl) = self.fetch_token(&realm, service.as_deref(), &s).await?;
                    self.tokens
                        .lock()
                        .unwrap()
                        .insert(scope.clone(), (token.clone(), Instant::now() + ttl));
                    Auth::Bearer(token)
                }
                Some(Challenge::Basic) if self.credentials().is_some() => {
                    self.basic.store(true, Ordering::Relaxed);
                    Auth::Basic
                }
                _ => {
                    tracing::warn!(endpoint = %self.endpoint, repository = %repo,
                        "upstream registry asks for credentials this [[upstream]] does not have");
                    return Ok(resp);
                }
            };
        }
    }

    /// The token flow: `GET realm?service=..&scope=..`, with basic auth when
    /// there are credentials. Returns the token and how long to use it.
    async fn fetch_token(
        &self,
        realm: &str,
        service: Option<&str>,
        scope: &str,
    ) -> Result<(String, Duration), UpstreamError> {
        let mut params = vec![("scope", scope)];
        if let Some(s) = service {
            params.push(("service", s));
        }
        let url = reqwest::Url::parse_with_params(realm, &params).map_err(|e| {
            UpstreamError::BadContent {
                endpoint: self.endpoint.clone(),
                what: "token realm".into(),
                reason: e.to_string(),
            }
        })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(UpstreamError::BadContent {
                endpoint: self.endpoint.clone(),
                what: "token realm".into(),
                reason: format!("scheme {} is not http(s)", url.scheme()),
            });
        }
        let mut req = self.client.get(url).timeout(SMALL_REQUEST_TIMEOUT);
        if let Some((u, p)) = self.credentials() {
            req = req.basic_auth(u, Some(p));
        }
        let resp = req.send().await.map_err(|e| self.unreachable(&e))?;
        if !resp.status().is_success() {
            tracing::warn!(endpoint = %self.endpoint, status = %resp.status(), "upstream token service refused a token (check the credentials of this [[upstream]])");
            return Err(self.status_error("token request", resp.status()));
        }
        let body = self.read_limited(resp, "token request").await?;
        #[derive(serde::Deserialize)]
        struct TokenAnswer {
            #[serde(default)]
            token: Option<String>,
            #[serde(default)]
            access_token: Option<String>,
            #[serde(default)]
            expires_in: Option<u64>,
        }
        let answer: TokenAnswer =
            serde_json::from_slice(&body).map_err(|e| UpstreamError::BadContent {
                endpoint: self.endpoint.clone(),
                what: "token answer".into(),
                reason: e.to_string(),
            })?;
        let token = answer
            .token
            .or(answer.access_token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| UpstreamError::BadContent {
                endpoint: self.endpoint.clone(),
                what: "token answer".into(),
                reason: "no token in it".into(),
            })?;
        // Spec default 60 s; stop using it a little before it expires.
        let secs = answer.expires_in.unwrap_or(60).max(10);
        Ok((token, Duration::from_secs(secs - secs / 10)))
    }
}

/// The innermost error message (reqwest's top level only says "error
/// sending request").
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

/// Streams an upstream blob, hashing it; at its end a wrong length or digest
/// aborts the response instead of ending it.
fn verified_stream(resp: reqwest::Response, digest: Digest, what: String) -> Body {
    struct St {
        inner: futures::stream::BoxStream<'static, reqwest::Result<Bytes>>,
        hasher: Option<Hasher>,
    }
    let st = St {
        inner: resp.bytes_stream().boxed(),
        hasher: Some(Hasher::new()),
    };
    let stream = futures::stream::unfold(st, move |mut st| {
        let what = what.clone();
        async move {
            let hasher = st.hasher.as_mut()?;
            match st.inner.next().await {
                Some(Ok(chunk)) => {
                    hasher.update(&chunk);
                    Some((Ok(chunk), st))
                }
                Some(Err(e)) => {
                    st.hasher = None;
                    tracing::warn!(blob = %what, error = %root_cause(&e), "upstream blob transfer failed");
                    Some((Err(std::io::Error::other("upstream transfer failed")), st))
                }
                None => {
                    let actual = st.hasher.take()?.finish();
                    if actual != digest {
                        tracing::error!(blob = %what, %actual, "upstream blob does not match its digest; response aborted");
                        Some((Err(std::io::Error::other("digest mismatch")), st))
                    } else {
                        None
                    }
                }
            }
        }
    });
    Body::from_stream(stream)
}

/// A `WWW-Authenticate` challenge.
#[derive(Debug, PartialEq, Eq)]
enum Challenge {
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
    Basic,
}

impl Challenge {
    fn parse(value: &str) -> Option<Challenge> {
        let value = value.trim();
        let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
        if scheme.eq_ignore_ascii_case("basic") {
            return Some(Challenge::Basic);
        }
        if !scheme.eq_ignore_ascii_case("bearer") {
            return None;
        }
        let params = auth_params(rest);
        let get = |k: &str| {
            params
                .iter()
                .find(|(key, _)| key.eq_ignore_ascii_case(k))
                .map(|(_, v)| v.clone())
        };
        Some(Challenge::Bearer {
            realm: get("realm")?,
            service: get("service"),
            scope: get("scope"),
        })
    }
}

/// `k="v", k2=v2` with quoted values that may hold commas.
fn auth_params(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() {
            break;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.peek() {
                if *c == ',' {
                    break;
                }
                value.push(*c);
                chars.next();
            }
        }
        out.push((key.trim().to_string(), value.trim().to_string()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges() {
        assert_eq!(
            Challenge::parse(
                r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push""#
            ),
            Some(Challenge::Bearer {
                realm: "https://auth.example/token".into(),
                service: Some("registry.example".into()),
                scope: Some("repository:a/b:pull,push".into()),
            })
        );
        assert_eq!(
            Challenge::parse(r#"bearer realm=https://t/x"#),
            Some(Challenge::Bearer {
                realm: "https://t/x".into(),
                service: None,
                scope: None
            })
        );
        assert_eq!(
            Challenge::parse(r#"Basic realm="Registry Realm""#),
            Some(Challenge::Basic)
        );
        assert_eq!(Challenge::parse("Bearer service=x"), None);
        assert_eq!(Challenge::parse("Negotiate"), None);
    }

    #[test]
    fn lookup_by_registry_then_star() {
        let cfg = |registry: &str, endpoint: &str| UpstreamConfig {
            registry: registry.into(),
            endpoint: endpoint.into(),
            path_prefix: None,
            username: None,
            password: None,
            password_file: None,
            ca_file: None,
            insecure_skip_verify: false,
        };
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

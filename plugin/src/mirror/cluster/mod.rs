//! The cluster listener: the mirror served to the other nodes of the
//! cluster (`[[cluster_listener]]`), safely.
//!
//! - TLS from certificate and key files, read again when they change
//!   ([`tls`]); client authentication per listener: mutual TLS (a client
//!   CA file), bearer tokens and/or htpasswd basic auth ([`auth`]). With a
//!   client CA and no other way, a client without a certificate the CA
//!   signed fails the handshake; with other ways too, a request needs a
//!   verified certificate or valid credentials, else 401 with a `Bearer`
//!   challenge whose realm is the listener's token endpoint
//!   ([`TOKEN_PATH`]: basic credentials in, a bearer token out, the flow
//!   `docker-registry`'s proxy follows).
//! - Read-only: GET and HEAD of `/v2/`, manifests, blobs and tags/list;
//!   any other method is 405 `UNSUPPORTED` (after authentication: an
//!   anonymous push gets 401 first, as from a registry), any other path 404.
//! - Limits per client ([`limit`]): the certificate's subject, else the
//!   token or basic-auth user, else the address; 429 `TOOMANYREQUESTS`
//!   with `Retry-After`.
//! - Every refusal is counted by [`Refusal`], every failed handshake by
//!   [`HandshakeFailure`], per listener (its bound address), so that a
//!   node whose token was revoked, or a client of another CA, shows on a
//!   dashboard and not only in the log.
//!
//! A non-loopback listener without TLS or without authentication is
//! refused by the config unless `insecure = true`, warned at every start.
//! The handshake runs in its own task (10 s at most), so a slow client
//! holds no other up.

pub mod auth;
pub mod limit;
pub mod tls;

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::connect_info::Connected;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::serve::IncomingStream;
use futures::StreamExt;
use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

use super::request::{self, Route};
use super::Mirror;
use crate::config::ClusterListenerConfig;
use auth::Credentials;
use limit::{Limits, Refused};
use tls::{ReloadingTls, TlsFiles};

/// Longest TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The 401 challenge of the token endpoint itself.
const BASIC_CHALLENGE: &str = "Basic realm=\"airgap-snapshotter\"";
/// The token endpoint: basic auth (or a client certificate) in, a bearer
/// token out, as registries' token services answer (`docker-registry`'s
/// proxy only sends its credentials there).
pub const TOKEN_PATH: &str = "/auth/token";
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cluster listener {listen}: {source}")]
    Tls {
        listen: SocketAddr,
        source: tls::TlsError,
    },
    #[error("cluster listener {listen}: {source}")]
    Credentials {
        listen: SocketAddr,
        source: auth::CredentialsError,
    },
    #[error("cluster listener {listen}: bind: {source}")]
    Bind {
        listen: SocketAddr,
        source: io::Error,
    },
}

/// One configured cluster listener, its files loaded.
pub struct ClusterListener {
    listen: SocketAddr,
    tls: Option<Arc<ReloadingTls>>,
    /// The [`Gate`]'s parts: `serve` makes the gate, once the bound
    /// address its counters are labelled with is known (a port 0 is not).
    credentials: Credentials,
    requires_auth: bool,
    limits: Limits,
}

struct Gate {
    credentials: Credentials,
    /// The listener serves TLS (the scheme of the token realm).
    tls: bool,
    /// A verified certificate or valid credentials are needed.
    requires_auth: bool,
    limits: Limits,
    counters: Arc<Counters>,
}

/// Why the gate refused a request: the `reason` label of
/// `airgap_cluster_refusals_total`. A fixed set, so the series stay
/// bounded (the client and the path are in the log, never in a label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// 401: neither a verified certificate nor an `Authorization` header.
    /// Also the first, anonymous request of the token flow, answered with
    /// the challenge: normal in small numbers.
    Unauthenticated,
    /// 401: an `Authorization` header whose credentials are not valid (a
    /// wrong, revoked or expired token, a wrong password).
    BadCredentials,
    /// 405: not a GET or HEAD (a push, a delete).
    Method,
    /// 404: `/v2/_catalog`, not served to the cluster.
    Catalog,
    /// 429: over the client's `requests_per_second` and `burst`.
    Rate,
    /// 429: over the client's `max_concurrent_requests`.
    InFlight,
}

impl Refusal {
    /// Every reason, in the order of their discriminants.
    pub const ALL: [Refusal; 6] = [
        Refusal::Unauthenticated,
        Refusal::BadCredentials,
        Refusal::Method,
        Refusal::Catalog,
        Refusal::Rate,
        Refusal::InFlight,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Refusal::Unauthenticated => "unauthenticated",
            Refusal::BadCredentials => "bad_credentials",
            Refusal::Method => "method",
            Refusal::Catalog => "catalog",
            Refusal::Rate => "rate",
            Refusal::InFlight => "in_flight",
        }
    }

    /// The refusal of a request without valid credentials: whether it
    /// carried an `Authorization` header tells a client that never tried
    /// from one whose credentials are wrong.
    fn unauthenticated(presented: bool) -> Refusal {
        if presented {
            Refusal::BadCredentials
        } else {
            Refusal::Unauthenticated
        }
    }
}

/// Why a TLS handshake failed: the `reason` label of
/// `airgap_cluster_tls_handshake_failures_total`. The client never
/// reaches the gate, so this is the only count of, say, a node holding a
/// certificate of another CA.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HandshakeFailure {
    /// The client sent no certificate where one is required, or one the
    /// client CA did not sign (or expired, or not for client use).
    ClientCertificate,
    /// No handshake within [`HANDSHAKE_TIMEOUT`].
    Timeout,
    /// Anything else: no common protocol version or cipher suite, plain
    /// HTTP sent to the TLS port, a connection closed before its handshake
    /// (a TCP health check, a port scan).
    Other,
}

impl HandshakeFailure {
    /// Every reason, in the order of their discriminants.
    pub const ALL: [HandshakeFailure; 3] = [
        HandshakeFailure::ClientCertificate,
        HandshakeFailure::Timeout,
        HandshakeFailure::Other,
    ];

    pub fn label(self) -> &'static str {
        match self {
            HandshakeFailure::ClientCertificate => "client_certificate",
            HandshakeFailure::Timeout => "timeout",
            HandshakeFailure::Other => "other",
        }
    }

    /// What the acceptor's error says: tokio-rustls carries rustls' own
    /// error inside the `io::Error`.
    fn of(e: &io::Error) -> HandshakeFailure {
        match e.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()) {
            Some(rustls::Error::NoCertificatesPresented | rustls::Error::InvalidCertificate(_)) => {
                HandshakeFailure::ClientCertificate
            }
            _ => HandshakeFailure::Other,
        }
    }
}

/// One listener's counters, every series created at 0 when it starts (a
/// rate over them is then 0, not absent), indexed by the reasons'
/// discriminants.
struct Counters {
    refusals: [Counter; Refusal::ALL.len()],
    handshake_failures: [Counter; HandshakeFailure::ALL.len()],
}

impl Counters {
    /// The counters of the listener bound to `listener`.
    fn new(listener: SocketAddr) -> Counters {
        let m = crate::metrics::global();
        let listener = listener.to_string();
        Counters {
            refusals: Refusal::ALL.map(|r| m.cluster_refusals(&listener, r.label())),
            handshake_failures: HandshakeFailure::ALL
                .map(|f| m.cluster_handshake_failures(&listener, f.label())),
        }
    }

    fn refused(&self, why: Refusal) {
        self.refusals[why as usize].inc();
    }

    fn handshake_failed(&self, why: HandshakeFailure) {
        self.handshake_failures[why as usize].inc();
    }
}

/// Who is at the other end of a connection.
#[derive(Clone, Debug)]
pub struct Peer {
    pub addr: SocketAddr,
    /// The subject of its certificate, verified against the client CA.
    pub cert_subject: Option<String>,
}

impl ClusterListener {
    /// Loads the listener's TLS and credential files (an error names the
    /// file); warns when it serves a non-loopback address insecurely.
    pub fn new(c: &ClusterListenerConfig) -> Result<ClusterListener, ClusterError> {
        let credentials = Credentials::new(c.tokens_file.as_deref(), c.htpasswd_file.as_deref())
            .map_err(|source| ClusterError::Credentials {
                listen: c.listen,
                source,
            })?;
        let tls = match (&c.tls_cert_file, &c.tls_key_file) {
            (Some(cert), Some(key)) => Some(Arc::new(
                ReloadingTls::new(TlsFiles {
                    cert: cert.clone(),
                    key: key.clone(),
                    client_ca: c.client_ca_file.clone(),
                    client_cert_optional: !credentials.is_empty(),
                })
                .map_err(|source| ClusterError::Tls {
                    listen: c.listen,
                    source,
                })?,
            )),
            _ => None,
        };
        if !c.listen.ip().is_loopback() && (!c.tls() || !c.authenticates()) {
            tracing::warn!(listen = %c.listen, tls = c.tls(), authentication = c.authenticates(),
                "cluster listener on a non-loopback address without TLS or without client authentication (insecure = true): every archived image is served to whoever reaches it, in the clear");
        }
        Ok(ClusterListener {
            listen: c.listen,
            tls,
            credentials,
            requires_auth: c.authenticates(),
            limits: Limits::new(c.requests_per_second, c.burst, c.max_concurrent_requests),
        })
    }

    pub async fn bind(&self) -> Result<TcpListener, ClusterError> {
        TcpListener::bind(self.listen)
            .await
            .map_err(|source| ClusterError::Bind {
                listen: self.listen,
                source,
            })
    }

    /// Serves `mirror` on `listener` until `shutdown` resolves.
    pub async fn serve(
        self,
        mirror: Arc<Mirror>,
        listener: TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> io::Result<()> {
        let local = listener.local_addr()?;
        let counters = Arc::new(Counters::new(local));
        let state = Arc::new(Gate {
            credentials: self.credentials,
            tls: self.tls.is_some(),
            requires_auth: self.requires_auth,
            limits: self.limits,
            counters: counters.clone(),
        });
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
        let tls = self.tls.clone();
        let acceptor = tokio::spawn(async move {
            loop {
                let (tcp, addr) = tokio::select! {
                    r = listener.accept() => match r {
                        Ok(c) => c,
                        Err(e) => {
                            tracing::debug!(error = %e, "cluster listener: accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    },
                    _ = stop_rx.changed() => return,
                };
                let tx = tx.clone();
                let tls = tls.clone();
                let counters = counters.clone();
                tokio::spawn(async move {
                    let _ = tcp.set_nodelay(true);
                    let conn = match tls {
                        None => (
                            Conn::Plain(tcp),
                            Peer {
                                addr,
                                cert_subject: None,
                            },
                        ),
                        Some(tls) => {
                            let acceptor = tls.acceptor();
                            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp))
                                .await
                            {
                                Ok(Ok(stream)) => {
                                    let cert_subject = stream
                                        .get_ref()
                                        .1
                                        .peer_certificates()
                                        .and_then(|c| c.first())
                                        .map(|c| subject(c.as_ref()));
                                    (Conn::Tls(Box::new(stream)), Peer { addr, cert_subject })
                                }
                                Ok(Err(e)) => {
                                    counters.handshake_failed(HandshakeFailure::of(&e));
                                    tracing::info!(client = %addr, error = %e, "cluster listener: TLS handshake refused");
                                    return;
                                }
                                Err(_) => {
                                    counters.handshake_failed(HandshakeFailure::Timeout);
                                    tracing::info!(client = %addr, "cluster listener: TLS handshake timed out");
                                    return;
                                }
                            }
                        }
                    };
                    let _ = tx.send(conn).await;
                });
            }
        });
        let router = mirror
            .router()
            .layer(axum::middleware::from_fn_with_state(state, gate));
        let result = axum::serve(
            Accepted { rx, local },
            router.into_make_service_with_connect_info::<Peer>(),
        )
        .with_graceful_shutdown(shutdown)
        .await;
        let _ = stop_tx.send(true);
        let _ = acceptor.await;
        result
    }
}

/// A certificate's subject: its common name, else the whole subject.
fn subject(der: &[u8]) -> String {
    match x509_parser::parse_x509_certificate(der) {
        Ok((_, cert)) => cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_string)
            .unwrap_or_else(|| cert.subject().to_string()),
        Err(_) => "unparsed certificate".into(),
    }
}

/// The connections whose handshake is done.
struct Accepted {
    rx: tokio::sync::mpsc::Receiver<(Conn, Peer)>,
    local: SocketAddr,
}

impl axum::serve::Listener for Accepted {
    type Io = Conn;
    type Addr = Peer;

    async fn accept(&mut self) -> (Conn, Peer) {
        match self.rx.recv().await {
            Some(c) => c,
            // The acceptor stopped: only at shutdown, which ends the server.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Peer> {
        Ok(Peer {
            addr: self.local,
            cert_subject: None,
        })
    }
}

impl Connected<IncomingStream<'_, Accepted>> for Peer {
    fn connect_info(stream: IncomingStream<'_, Accepted>) -> Self {
        stream.remote_addr().clone()
    }
}

/// A connection, in the clear or TLS.
pub enum Conn {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_flush(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Authentication, read-only, limits: before the mirror's handler.
async fn gate(
    State(g): State<Arc<Gate>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    req: Request,
    next: Next,
) -> Response {
    let presented = req.headers().contains_key(header::AUTHORIZATION);
    let user = match (
        &peer.cert_subject,
        req.headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok()),
    ) {
        (Some(subject), _) => Some(format!("cert:{subject}")),
        (None, Some(authorization)) => g
            .credentials
            .check(authorization)
            .await
            .map(|u| format!("user:{u}")),
        (None, None) => None,
    };
    if req.uri().path() == TOKEN_PATH && req.method() == Method::GET {
        let minted = user
            .as_deref()
            .and_then(|u| g.credentials.mint(u.split_once(':').map_or(u, |(_, n)| n)));
        return match minted {
            Some(token) => {
                tracing::debug!(
                    client = user.as_deref().unwrap_or(""),
                    "cluster listener: token issued"
                );
                let body = serde_json::json!({
                    "token": token,
                    "access_token": token,
                    "expires_in": auth::MINTED_FOR.as_secs(),
                });
                let mut resp = (StatusCode::OK, body.to_string()).into_response();
                resp.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                resp
            }
            None => {
                if user.is_none() {
                    g.counters.refused(Refusal::unauthenticated(presented));
                    tracing::info!(client = %peer.addr, "cluster listener: token request without valid credentials refused");
                }
                refusal(
                    StatusCode::UNAUTHORIZED,
                    "UNAUTHORIZED",
                    "authentication required",
                    |h| {
                        h.insert(
                            header::WWW_AUTHENTICATE,
                            HeaderValue::from_static(BASIC_CHALLENGE),
                        );
                    },
                )
            }
        };
    }
    let client = match user {
        Some(c) => c,
        None if !g.requires_auth => format!("ip:{}", peer.addr.ip()),
        None => {
            g.counters.refused(Refusal::unauthenticated(presented));
            tracing::info!(client = %peer.addr, method = %req.method(), path = %req.uri().path(),
                "cluster listener: request without valid credentials refused");
            // The token flow's challenge: clients that hold basic
            // credentials trade them for a token at the realm.
            let host = req
                .headers()
                .get(header::HOST)
                .and_then(|v| v.to_str().ok())
                .filter(|h| !h.contains(['"', ',', ' ']))
                .unwrap_or("localhost")
                .to_string();
            let scheme = if g.tls { "https" } else { "http" };
            let challenge = format!(
                "Bearer realm=\"{scheme}://{host}{TOKEN_PATH}\",service=\"airgap-snapshotter\""
            );
            return refusal(
                StatusCode::UNAUTHORIZED,
                "UNAUTHORIZED",
                "authentication required",
                |h| {
                    if let Ok(v) = HeaderValue::from_str(&challenge) {
                        h.insert(header::WWW_AUTHENTICATE, v);
                    }
                },
            );
        }
    };
    if req.method() != Method::GET && req.method() != Method::HEAD {
        g.counters.refused(Refusal::Method);
        tracing::info!(%client, method = %req.method(), path = %req.uri().path(),
            "cluster listener: only pulls are served; refused");
        return refusal(
            StatusCode::METHOD_NOT_ALLOWED,
            "UNSUPPORTED",
            "this registry is read-only: only GET and HEAD of pulls",
            |h| {
                h.insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            },
        );
    }
    // The mirror answers the rest (bad names included).
    if let Ok(Route::Catalog { .. }) = request::parse(req.uri().path(), req.uri().query()) {
        g.counters.refused(Refusal::Catalog);
        return refusal(
            StatusCode::NOT_FOUND,
            "UNSUPPORTED",
            "the catalog is not served to the cluster",
            |_| {},
        );
    }
    let permit = match g.limits.admit(&client) {
        Ok(p) => p,
        Err(refused) => {
            let (retry, why, reason) = match refused {
                Refused::Rate { retry_after } => {
                    (retry_after.as_secs().max(1), "rate", Refusal::Rate)
                }
                Refused::Concurrency => (1, "requests in flight", Refusal::InFlight),
            };
            g.counters.refused(reason);
            tracing::debug!(%client, limit = why, "cluster listener: client over its limit; 429");
            return refusal(
                StatusCode::TOO_MANY_REQUESTS,
                "TOOMANYREQUESTS",
                &format!("too many requests ({why}): retry later"),
                |h| {
                    h.insert(header::RETRY_AFTER, HeaderValue::from(retry));
                },
            );
        }
    };
    tracing::debug!(%client, method = %req.method(), path = %req.uri().path(), "cluster request");
    let response = next.run(req).await;
    match permit {
        None => response,
        Some(permit) => {
            // Held until the body is sent (or the client goes away).
            let (parts, body) = response.into_parts();
            let body = body.into_data_stream().map(move |chunk| {
                let _held = &permit;
                chunk
            });
            Response::from_parts(parts, Body::from_stream(body))
        }
    }
}

fn refusal(
    status: StatusCode,
    code: &str,
    message: &str,
    headers: impl FnOnce(&mut axum::http::HeaderMap),
) -> Response {
    let body = serde_json::json!({"errors": [{"code": code, "message": message}]}).to_string();
    let mut resp = (status, body).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers(h);
    resp
}

#[cfg(test)]
mod tests;

//! The router in-process: a real catalog over generated archives, requests
//! through `tower::ServiceExt::oneshot`.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::body::{to_bytes, Body};
use axum::http::{Request, StatusCode};
use tower::ServiceExt;

use super::*;
use crate::catalog::index::{MEDIA_OCI_INDEX, MEDIA_OCI_MANIFEST};
use crate::catalog::CatalogOptions;
use crate::testsupport::*;

fn catalog(dir: &Path) -> Arc<Catalog> {
    Catalog::open(CatalogOptions {
        dirs: vec![dir.to_path_buf()],
        settle: Duration::ZERO,
        cache_bytes: 64 << 20,
        ..Default::default()
    })
    .unwrap()
}

fn spec() -> ImageSpec {
    ImageSpec::new(vec![
        layer_tar(&[("bin/busybox", &busybox_bytes())]),
        layer_tar(&[("etc/hello", b"hello\n")]),
    ])
}

pub(super) struct Answer {
    pub(super) status: StatusCode,
    pub(super) headers: HeaderMap,
    pub(super) body: Bytes,
}

impl Answer {
    pub(super) fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .unwrap_or_else(|| panic!("no {name} header in {:?}", self.headers))
            .to_str()
            .unwrap()
    }

    pub(super) fn error_code(&self) -> String {
        let v: serde_json::Value = serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("error body {:?}: {e}", self.body));
        v["errors"][0]["code"].as_str().unwrap().to_string()
    }
}

pub(super) async fn call(
    router: &axum::Router,
    method: &str,
    uri: &str,
    headers: &[(&str, &str)],
) -> Answer {
    let mut req = Request::builder().method(method).uri(uri);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = router
        .clone()
        .oneshot(req.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = to_bytes(resp.into_body(), usize::MAX).await.unwrap();
    Answer {
        status,
        headers,
        body,
    }
}

/// A request the mirror must refuse, and the status and OCI error code of
/// its answer (`""`: status only, as for HEAD, which has no body).
struct Refusal {
    method: &'static str,
    uri: String,
    headers: Vec<(&'static str, &'static str)>,
    status: StatusCode,
    code: &'static str,
}

fn refused(
    method: &'static str,
    uri: impl Into<String>,
    status: StatusCode,
    code: &'static str,
) -> Refusal {
    Refusal {
        method,
        uri: uri.into(),
        headers: Vec::new(),
        status,
        code,
    }
}

impl Refusal {
    fn with_header(mut self, name: &'static str, value: &'static str) -> Refusal {
        self.headers.push((name, value));
        self
    }
}

/// Sends every request of the table and checks its refusal.
async fn assert_refused(router: &axum::Router, table: &[Refusal]) {
    for r in table {
        let a = call(router, r.method, &r.uri, &r.headers).await;
        assert_eq!(a.status, r.status, "{} {}", r.method, r.uri);
        if !r.code.is_empty() {
            assert_eq!(a.error_code(), r.code, "{} {}", r.method, r.uri);
        }
    }
}

pub(super) fn mirror_over(dir: &Path) -> (Arc<Catalog>, axum::Router) {
    let c = catalog(dir);
    let m = Mirror::new(c.clone(), Upstreams::default());
    (c, m.router())
}

const NAME: &str = "/v2/library/busybox";
const NS: &str = "?ns=docker.io";

#[tokio::test]
async fn manifests_by_tag_and_digest_with_headers() {
    let dir = tempfile::tempdir().unwrap();
    let (oci, built) = OciLayout::single("busybox:1.36", &spec());
    write(dir.path(), "a.tar", &oci.to_tar());
    let (_c, router) = mirror_over(dir.path());
    let manifest_bytes = oci.blobs[&built.manifest].clone();

    let base = call(&router, "GET", "/v2/", &[]).await;
    assert_eq!(base.status, StatusCode::OK);
    assert_eq!(
        base.header("docker-distribution-api-version"),
        "registry/2.0"
    );

    for (uri, accept) in [
        (format!("{NAME}/manifests/1.36{NS}"), None),
        (
            format!("{NAME}/manifests/{}{NS}", built.manifest),
            Some(crate::registry::media::ACCEPT_ALL_MANIFESTS),
        ),
        // Without ns the name is a whole reference.
        ("/v2/busybox/manifests/1.36".to_string(), Some("*/*")),
    ] {
        let headers: Vec<(&str, &str)> = accept.iter().map(|a| ("accept", *a)).collect();
        for method in ["GET", "HEAD"] {
            let a = call(&router, method, &uri, &headers).await;
            assert_eq!(a.status, StatusCode::OK, "{method} {uri}");
            assert_eq!(a.header("content-type"), MEDIA_OCI_MANIFEST);
            assert_eq!(
                a.header("docker-content-digest"),
                built.manifest.to_string()
            );
            assert_eq!(a.header("content-length"), manifest_bytes.len().to_string());
            if method == "GET" {
                assert_eq!(a.body, manifest_bytes);
            } else {
                assert!(a.body.is_empty());
            }
        }
    }

    use StatusCode as S;
    #[rustfmt::skip]
    let refusals = [
        // Accept that excludes what we hold: a 404 so containerd tries
        // elsewhere.
        refused("GET", format!("{NAME}/manifests/1.36{NS}"), S::NOT_FOUND, "MANIFEST_UNKNOWN")
            .with_header("accept", "application/vnd.docker.distribution.manifest.v2+json"),
        // A config is a document but no manifest.
        refused("GET", format!("{NAME}/manifests/{}{NS}", built.config), S::NOT_FOUND, "MANIFEST_UNKNOWN"),
        // Another tag of a known repository; an unknown repository.
        refused("GET", format!("{NAME}/manifests/9{NS}"), S::NOT_FOUND, "MANIFEST_UNKNOWN"),
        refused("GET", "/v2/library/nginx/manifests/1?ns=docker.io", S::NOT_FOUND, "NAME_UNKNOWN"),
        // The same name under another registry is another image.
        refused("HEAD", format!("{NAME}/manifests/1.36?ns=quay.io"), S::NOT_FOUND, ""),
        refused("GET", format!("{NAME}/manifests/sha256:123{NS}"), S::BAD_REQUEST, "DIGEST_INVALID"),
        refused("GET", "/v2/UPPER/manifests/1", S::BAD_REQUEST, "NAME_INVALID"),
        refused("PUT", format!("{NAME}/manifests/1.36{NS}"), S::METHOD_NOT_ALLOWED, "UNSUPPORTED"),
        refused("DELETE", format!("{NAME}/blobs/{}", built.config), S::METHOD_NOT_ALLOWED, ""),
    ];
    assert_refused(&router, &refusals).await;
}

#[tokio::test]
async fn index_media_type_and_docker_save() {
    let dir = tempfile::tempdir().unwrap();
    let s = spec();
    let mut arm = spec();
    arm.arch = "arm64";
    arm.layers[1] = layer_tar(&[("etc/hello", b"arm\n")]);
    let mut oci = OciLayout::default();
    let a = oci.add_image(&s);
    let b = oci.add_image(&arm);
    let (index, size) = oci.add_index(&[(&s, &a), (&arm, &b)]);
    oci.tag("example.com/multi:1", index, size, true);
    write(dir.path(), "multi.tar", &oci.to_tar());
    write(
        dir.path(),
        "saved.tar.gz",
        &wrap(&docker_save(&s, &["example.com/tools/saved:2"]), Wrap::Gzip),
    );
    let (c, router) = mirror_over(dir.path());

    let m = call(&router, "GET", "/v2/multi/manifests/1?ns=example.com", &[]).await;
    assert_eq!(m.status, StatusCode::OK);
    assert_eq!(m.header("content-type"), MEDIA_OCI_INDEX);
    assert_eq!(m.header("docker-content-digest"), index.to_string());
    let m = call(
        &router,
        "GET",
        &format!("/v2/multi/manifests/{}?ns=example.com", b.manifest),
        &[],
    )
    .await;
    assert_eq!(m.header("content-type"), MEDIA_OCI_MANIFEST);

    // docker-save: the synthesized manifest by tag, then its blobs.
    let saved = c.resolve("example.com/tools/saved:2").unwrap().entry;
    let m = call(
        &router,
        "GET",
        "/v2/tools/saved/manifests/2?ns=example.com",
        &[],
    )
    .await;
    assert_eq!(m.status, StatusCode::OK);
    assert_eq!(m.header("docker-content-digest"), saved.digest.to_string());
    let doc: serde_json::Value = serde_json::from_slice(&m.body).unwrap();
    for d in doc["layers"]
        .as_array()
        .unwrap()
        .iter()
        .chain([&doc["config"]])
    {
        let digest = d["digest"].as_str().unwrap();
        let blob = call(
            &router,
            "GET",
            &format!("/v2/tools/saved/blobs/{digest}?ns=example.com"),
            &[],
        )
        .await;
        assert_eq!(blob.status, StatusCode::OK);
        assert_eq!(Digest::of(&blob.body).to_string(), digest);
        assert_eq!(
            blob.header("content-length"),
            d["size"].as_u64().unwrap().to_string()
        );
    }
}

#[tokio::test]
async fn blobs_whole_ranges_and_misses() {
    let dir = tempfile::tempdir().unwrap();
    let (oci, built) = OciLayout::single("busybox:1.36", &spec());
    write(
        dir.path(),
        "a.tar.zst",
        &wrap(&oci.to_tar(), Wrap::Seekable),
    );
    let (_c, router) = mirror_over(dir.path());
    let layer = built.layers[0];
    let data = oci.blobs[&layer].clone();
    let uri = format!("{NAME}/blobs/{layer}{NS}");

    let a = call(&router, "GET", &uri, &[]).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.body, data);
    assert_eq!(a.header("content-length"), data.len().to_string());
    assert_eq!(a.header("docker-content-digest"), layer.to_string());
    assert_eq!(a.header("content-type"), "application/octet-stream");

    let a = call(&router, "HEAD", &uri, &[]).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.header("content-length"), data.len().to_string());
    assert!(a.body.is_empty());

    let n = data.len();
    for (range, start, end) in [
        ("bytes=0-99".to_string(), 0, 99),
        (format!("bytes={}-", n - 10), n - 10, n - 1),
        ("bytes=-5".to_string(), n - 5, n - 1),
        (format!("bytes=1000-{}", n + 1000), 1000, n - 1),
    ] {
        let a = call(&router, "GET", &uri, &[("range", &range)]).await;
        assert_eq!(a.status, StatusCode::PARTIAL_CONTENT, "{range}");
        assert_eq!(
            a.header("content-range"),
            format!("bytes {start}-{end}/{n}")
        );
        assert_eq!(a.header("content-length"), (end - start + 1).to_string());
        assert_eq!(a.body, data[start..=end], "{range}");
    }
    let a = call(&router, "GET", &uri, &[("range", &format!("bytes={n}-"))]).await;
    assert_eq!(a.status, StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(a.header("content-range"), format!("bytes */{n}"));

    // The config and manifest are blobs too.
    let a = call(
        &router,
        "GET",
        &format!("{NAME}/blobs/{}{NS}", built.config),
        &[],
    )
    .await;
    assert_eq!(Digest::of(&a.body), built.config);

    let unknown = Digest::of(b"nothing");
    #[rustfmt::skip]
    let refusals = [
        refused("HEAD", format!("{NAME}/blobs/{unknown}{NS}"), StatusCode::NOT_FOUND, ""),
        refused("GET", format!("{NAME}/blobs/{unknown}{NS}"), StatusCode::NOT_FOUND, "BLOB_UNKNOWN"),
        refused("GET", format!("{NAME}/blobs/sha256:XYZ{NS}"), StatusCode::BAD_REQUEST, "DIGEST_INVALID"),
    ];
    assert_refused(&router, &refusals).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_pulls_of_a_blob_decompress_it_once() {
    let dir = tempfile::tempdir().unwrap();
    let (oci, built) = OciLayout::single("busybox:1.36", &spec());
    write(dir.path(), "a.tar.gz", &wrap(&oci.to_tar(), Wrap::Gzip));
    let (c, router) = mirror_over(dir.path());
    let layer = built.layers[0];
    let uri = format!("{NAME}/blobs/{layer}{NS}");
    let pulls: Vec<_> = (0..8)
        .map(|i| {
            let (router, uri) = (router.clone(), uri.clone());
            tokio::spawn(async move {
                let range = if i % 4 == 3 { "bytes=10-" } else { "" };
                let headers: Vec<(&str, &str)> = if range.is_empty() {
                    vec![]
                } else {
                    vec![("range", range)]
                };
                call(&router, "GET", &uri, &headers).await
            })
        })
        .collect();
    for p in pulls {
        let a = p.await.unwrap();
        assert!(a.status.is_success());
        let whole = &oci.blobs[&layer];
        let expect = if a.status == StatusCode::OK {
            &whole[..]
        } else {
            &whole[10..]
        };
        assert_eq!(a.body, expect);
    }
    assert_eq!(
        c.stats().cache_misses.load(Ordering::Relaxed),
        1,
        "one fill for every pull"
    );
    let one_pass = c.archives()[0].index.stream_len;
    assert!(
        c.stats().decompressed() <= one_pass,
        "decompressed {} bytes for 8 pulls of a blob in a {one_pass}-byte stream",
        c.stats().decompressed()
    );
}

/// A client reads the manifest, then the three largest blobs of a
/// single-frame `.tar.zst` at once (as containerd does): one pass over the
/// archive serves them all (decompressed at most 1.2 times the stream, not
/// once per blob), however late each read arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_reads_of_one_archive_share_one_pass() {
    let dir = tempfile::tempdir().unwrap();
    let tars: Vec<Vec<u8>> = (0..6u64)
        .map(|i| {
            let (name, data) = (format!("f{i}"), noise(i, (1 + i as usize) << 20));
            layer_tar(&[(name.as_str(), data.as_slice())])
        })
        .collect();
    let spec = ImageSpec {
        compression: LayerCompression::None,
        ..ImageSpec::new(tars)
    };
    let (oci, built) = OciLayout::single("busybox:1.36", &spec);
    write(dir.path(), "a.tar.zst", &wrap(&oci.to_tar(), Wrap::Zstd));
    let (c, router) = mirror_over(dir.path());
    let manifest = call(&router, "GET", &format!("{NAME}/manifests/1.36{NS}"), &[]).await;
    assert_eq!(manifest.status, StatusCode::OK);
    let mut largest = built.layers.clone();
    largest.sort_by_key(|d| std::cmp::Reverse(oci.blobs[d].len()));
    largest.truncate(3);
    let reads: Vec<_> = largest
        .iter()
        .map(|d| {
            let (router, uri) = (router.clone(), format!("{NAME}/blobs/{d}{NS}"));
            tokio::spawn(async move { call(&router, "GET", &uri, &[]).await })
        })
        .collect();
    for (read, d) in reads.into_iter().zip(&largest) {
        let a = read.await.unwrap();
        assert_eq!(a.status, StatusCode::OK);
        assert!(a.body == oci.blobs[d], "blob {d}");
    }
    let stream = c.archives()[0].index.stream_len;
    let decompressed: u64 = c.decompressed_by_archive().iter().map(|(_, n)| n).sum();
    assert!(
        decompressed * 10 <= stream * 12,
        "decompressed {decompressed} bytes of a {stream}-byte stream for three blobs"
    );
}

#[tokio::test]
async fn bad_bytes_are_never_served_and_paths_never_leak() {
    let dir = tempfile::tempdir().unwrap();
    // Big enough not to be verified while indexing (larger than MAX_JSON),
    // and a layer of exactly 36 of the body's 256 KiB chunks (a header, the
    // data, the two end blocks): the last chunk is full, so only a reader
    // that holds back the blob's last byte keeps the whole from going out.
    let big: Vec<u8> = (0..36 * 262_144 - 1536u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 7) as u8)
        .collect();
    let mut s = spec();
    s.compression = LayerCompression::None;
    s.layers[0] = layer_tar(&[("big", &big)]);
    assert_eq!(s.layers[0].len(), 36 * 262_144);
    let (oci, built) = OciLayout::single("busybox:1.36", &s);
    write(dir.path(), "a.tar", &oci.to_tar());
    let (_c, router) = mirror_over(dir.path());
    // Corrupt the layer in place (same file, so the catalog keeps its index).
    let path = dir.path().join("a.tar");
    let bytes = std::fs::read(&path).unwrap();
    let layer = &oci.blobs[&built.layers[0]];
    let at = bytes
        .windows(64)
        .position(|w| w == &layer[4096..4160])
        .unwrap();
    use std::os::unix::fs::FileExt;
    std::fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .write_all_at(&[bytes[at] ^ 0xff], at as u64)
        .unwrap();

    let uri = format!("{NAME}/blobs/{}{NS}", built.layers[0]);
    let a = call(&router, "GET", &uri, &[("range", "bytes=0-10")]).await;
    assert_eq!(
        (a.status, a.error_code().as_str()),
        (StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN")
    );
    let text = String::from_utf8_lossy(&a.body);
    assert!(!text.contains(dir.path().to_str().unwrap()), "{text}");
    // A catalog that indexed the archive as it now is: the whole blob
    // streams, and ends in an error instead of EOF.
    let (c, router) = mirror_over(dir.path());
    let resp = router
        .clone()
        .oneshot(Request::get(&uri).body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(to_bytes(resp.into_body(), usize::MAX).await.is_err());
    // That copy is marked bad: with no other copy, the next GET is refused.
    assert!(c.copy_is_bad(&path, &built.layers[0]));
    assert_eq!(
        call(&router, "GET", &uri, &[]).await.status,
        StatusCode::INTERNAL_SERVER_ERROR
    );

    // Over a real socket, a client that stops at Content-Length (as
    // containerd does) never receives the whole blob: its last byte is held
    // back until the digest holds, so the transfer fails instead.
    let (_c, router) = mirror_over(dir.path());
    let (addr, stop, server) = serve_on_loopback(&router).await;
    let got = reqwest::get(format!("http://{addr}{uri}")).await.unwrap();
    assert_eq!(got.status(), 200);
    assert!(got.bytes().await.is_err(), "a bad blob arrived whole");
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
}

/// Serves `router` on a loopback port until the sender fires.
async fn serve_on_loopback(
    router: &axum::Router,
) -> (
    std::net::SocketAddr,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<std::io::Result<()>>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let router = router.clone();
    let server = tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(async {
                let _ = rx.await;
            })
            .await
    });
    (addr, tx, server)
}

/// Over a real socket: HEAD keeps its Content-Length (containerd needs it).
#[tokio::test]
async fn head_over_http_keeps_content_length() {
    let dir = tempfile::tempdir().unwrap();
    let (oci, built) = OciLayout::single("busybox:1.36", &spec());
    write(dir.path(), "a.tar", &oci.to_tar());
    let m = Mirror::new(catalog(dir.path()), Upstreams::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn({
        let m = m.clone();
        async move {
            m.serve(listener, async {
                let _ = rx.await;
            })
            .await
        }
    });
    let client = reqwest::Client::new();
    let layer = built.layers[0];
    let resp = client
        .head(format!("http://{addr}{NAME}/blobs/{layer}{NS}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["content-length"].to_str().unwrap(),
        oci.blobs[&layer].len().to_string()
    );
    let resp = client
        .head(format!("http://{addr}{NAME}/manifests/1.36{NS}"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.headers()["content-length"].to_str().unwrap(),
        built.manifest_size.to_string()
    );
    assert_eq!(
        resp.headers()["docker-content-digest"].to_str().unwrap(),
        built.manifest.to_string()
    );
    tx.send(()).unwrap();
    server.await.unwrap().unwrap();
}

/// A fake upstream registry: token flow (`WWW-Authenticate: Bearer`, a
/// token service that wants basic auth), a path prefix, counters.
mod fake {
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    use axum::body::Body;
    use axum::extract::State;
    use axum::http::{header, HeaderMap, StatusCode, Uri};
    use axum::response::{IntoResponse, Response};
    use bytes::Bytes;

    pub const TOKEN: &str = "tok-3f9a";
    /// `user:pass`
    pub const BASIC: &str = "Basic dXNlcjpwYXNz";

    #[derive(Default)]
    pub struct Fake {
        pub addr: Mutex<String>,
        /// Path after `/v2/` -> (content type, bytes).
        pub content: Mutex<HashMap<String, (String, Bytes)>>,
        pub token_requests: AtomicUsize,
        pub requests: AtomicUsize,
        /// Bumped to revoke every token handed out so far.
        pub generation: AtomicUsize,
        /// Harbor's way: a bad bearer token is challenged with `Basic`
        /// (an anonymous request still with `Bearer`), and basic auth is
        /// accepted on the API.
        pub harbor: AtomicBool,
        /// Token requests still to refuse.
        pub refuse_tokens: AtomicUsize,
        /// Requests that came with a bearer token no longer valid.
        pub stale_tokens: AtomicUsize,
        /// Requests to the API that came with basic auth.
        pub basic_requests: AtomicUsize,
    }

    impl Fake {
        /// The token valid now.
        pub fn token(&self) -> String {
            match self.generation.load(Ordering::SeqCst) {
                0 => TOKEN.to_string(),
                n => format!("{TOKEN}-{n}"),
            }
        }
    }

    async fn handle(State(f): State<Arc<Fake>>, uri: Uri, headers: HeaderMap) -> Response {
        let addr = f.addr.lock().unwrap().clone();
        let auth = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if uri.path() == "/token" {
            f.token_requests.fetch_add(1, Ordering::SeqCst);
            let scope_ok = uri.query().unwrap_or("").contains("scope=repository");
            let refuse = f
                .refuse_tokens
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
            if auth != BASIC || !scope_ok || refuse {
                return StatusCode::UNAUTHORIZED.into_response();
            }
            let token = f.token();
            return format!(r#"{{"token":"{token}","expires_in":300}}"#).into_response();
        }
        f.requests.fetch_add(1, Ordering::SeqCst);
        let harbor = f.harbor.load(Ordering::SeqCst);
        if auth == BASIC {
            f.basic_requests.fetch_add(1, Ordering::SeqCst);
        }
        if auth.starts_with("Bearer ") && auth != format!("Bearer {}", f.token()) {
            f.stale_tokens.fetch_add(1, Ordering::SeqCst);
        }
        if auth != format!("Bearer {}", f.token()) && !(harbor && auth == BASIC) {
            let challenge = if harbor && auth.starts_with("Bearer ") {
                r#"Basic realm="harbor""#.to_string()
            } else {
                format!(r#"Bearer realm="http://{addr}/token",service="fake""#)
            };
            let mut r = StatusCode::UNAUTHORIZED.into_response();
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, challenge.parse().unwrap());
            return r;
        }
        let key = uri.path().trim_start_matches("/v2/").to_string();
        match f.content.lock().unwrap().get(&key) {
            Some((t, b)) => {
                let mut r = Response::new(Body::from(b.clone()));
                r.headers_mut()
                    .insert(header::CONTENT_TYPE, t.parse().unwrap());
                r.headers_mut()
                    .insert(header::CONTENT_LENGTH, b.len().into());
                r
            }
            None => StatusCode::NOT_FOUND.into_response(),
        }
    }

    pub async fn start() -> Arc<Fake> {
        let f = Arc::new(Fake::default());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        *f.addr.lock().unwrap() = listener.local_addr().unwrap().to_string();
        let app = axum::Router::new().fallback(handle).with_state(f.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        f
    }
}

fn upstream_config(
    registry: &str,
    endpoint: &str,
    prefix: Option<&str>,
) -> crate::config::UpstreamConfig {
    crate::config::UpstreamConfig {
        path_prefix: prefix.map(str::to_string),
        username: Some("user".into()),
        password: Some("pass".into()),
        ..crate::config::UpstreamConfig::anonymous(registry, endpoint)
    }
}

#[tokio::test]
async fn upstream_token_flow_prefix_and_checks() {
    use std::sync::atomic::Ordering::SeqCst;
    let dir = tempfile::tempdir().unwrap();
    let (oci, built) = OciLayout::single("busybox:1.36", &spec());
    write(dir.path(), "a.tar", &oci.to_tar());
    let f = fake::start().await;
    // Upstream content: an image `library/remote:2` under the prefix `hub`.
    let (up, up_built) = OciLayout::single(
        "remote:2",
        &ImageSpec::new(vec![layer_tar(&[("x", b"upstream only\n")])]),
    );
    {
        let mut c = f.content.lock().unwrap();
        let manifest = up.blobs[&up_built.manifest].clone();
        for tag in ["2".to_string(), up_built.manifest.to_string()] {
            c.insert(
                format!("hub/library/remote/manifests/{tag}"),
                (MEDIA_OCI_MANIFEST.into(), Bytes::from(manifest.clone())),
            );
        }
        for (d, data) in &up.blobs {
            c.insert(
                format!("hub/library/remote/blobs/{d}"),
                ("application/octet-stream".into(), Bytes::from(data.clone())),
            );
        }
        // A different busybox:1.36 upstream: the archive's tag must win.
        c.insert(
            "hub/library/busybox/manifests/1.36".into(),
            (
                MEDIA_OCI_MANIFEST.into(),
                Bytes::from(up.blobs[&up_built.manifest].clone()),
            ),
        );
        // A blob whose bytes do not match its digest.
        let liar = Digest::of(b"the real bytes");
        c.insert(
            format!("hub/library/remote/blobs/{liar}"),
            (
                "application/octet-stream".into(),
                Bytes::from_static(b"other bytes!!!"),
            ),
        );
        // A manifest that does not match the digest asked for.
        let wrong = Digest::of(b"wrong");
        c.insert(
            format!("hub/library/remote/manifests/{wrong}"),
            (
                MEDIA_OCI_MANIFEST.into(),
                Bytes::from(up.blobs[&up_built.manifest].clone()),
            ),
        );
    }
    let endpoint = format!("http://{}", f.addr.lock().unwrap());
    let upstreams =
        Upstreams::new(&[upstream_config("docker.io", &endpoint, Some("hub"))]).unwrap();
    let router = Mirror::new(catalog(dir.path()), upstreams).router();

    // Archived tag: from the archive, the upstream never asked.
    let a = call(&router, "GET", &format!("{NAME}/manifests/1.36{NS}"), &[]).await;
    assert_eq!(
        a.header("docker-content-digest"),
        built.manifest.to_string()
    );
    assert_eq!(f.requests.load(SeqCst), 0);

    // Upstream-only image: tag, digest, config and layer blobs.
    let m = call(
        &router,
        "HEAD",
        &format!("/v2/library/remote/manifests/2{NS}"),
        &[],
    )
    .await;
    assert_eq!(m.status, StatusCode::OK);
    assert_eq!(
        m.header("docker-content-digest"),
        up_built.manifest.to_string()
    );
    assert_eq!(m.header("content-type"), MEDIA_OCI_MANIFEST);
    assert_eq!(
        m.header("content-length"),
        up_built.manifest_size.to_string()
    );
    let m = call(
        &router,
        "GET",
        &format!("/v2/library/remote/manifests/{}{NS}", up_built.manifest),
        &[],
    )
    .await;
    assert_eq!(m.body, up.blobs[&up_built.manifest]);
    for d in up_built.layers.iter().chain([&up_built.config]) {
        let uri = format!("/v2/library/remote/blobs/{d}{NS}");
        let h = call(&router, "HEAD", &uri, &[]).await;
        assert_eq!(h.status, StatusCode::OK);
        assert_eq!(h.header("content-length"), up.blobs[d].len().to_string());
        let g = call(&router, "GET", &uri, &[]).await;
        assert_eq!(g.status, StatusCode::OK);
        assert_eq!(g.body, up.blobs[d]);
        assert_eq!(g.header("docker-content-digest"), d.to_string());
    }
    // One token for the repository, reused.
    assert_eq!(f.token_requests.load(SeqCst), 1);

    use StatusCode as S;
    #[rustfmt::skip]
    let refusals = [
        // Misses upstream are 404s of the right kind.
        refused("GET", format!("/v2/library/remote/manifests/9{NS}"), S::NOT_FOUND, "NAME_UNKNOWN"),
        refused("GET", format!("/v2/library/remote/blobs/{}{NS}", Digest::of(b"none")), S::NOT_FOUND, "BLOB_UNKNOWN"),
        // Another registry has no upstream.
        refused("GET", "/v2/library/remote/manifests/2?ns=quay.io", S::NOT_FOUND, ""),
        // Bad bytes from the upstream are never passed on as good.
        refused("GET", format!("/v2/library/remote/manifests/{}{NS}", Digest::of(b"wrong")), S::BAD_GATEWAY, "UNAVAILABLE"),
    ];
    assert_refused(&router, &refusals).await;
    let resp = router
        .clone()
        .oneshot(
            Request::get(format!(
                "/v2/library/remote/blobs/{}{NS}",
                Digest::of(b"the real bytes")
            ))
            .body(Body::empty())
            .unwrap(),
        )
        .await
        .unwrap();
    assert!(to_bytes(resp.into_body(), usize::MAX).await.is_err());
}

#[tokio::test]
async fn upstream_down_archives_still_served() {
    let dir = tempfile::tempdir().unwrap();
    let (oci, built) = OciLayout::single("busybox:1.36", &spec());
    write(dir.path(), "a.tar", &oci.to_tar());
    // A port nobody listens on.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let upstreams = Upstreams::new(&[upstream_config(
        "*",
        &format!("http://127.0.0.1:{port}"),
        None,
    )])
    .unwrap();
    let router = Mirror::new(catalog(dir.path()), upstreams).router();
    let a = call(&router, "GET", &format!("{NAME}/manifests/1.36{NS}"), &[]).await;
    assert_eq!(a.status, StatusCode::OK);
    let a = call(
        &router,
        "GET",
        &format!("{NAME}/blobs/{}{NS}", built.layers[1]),
        &[],
    )
    .await;
    assert_eq!(a.body, oci.blobs[&built.layers[1]]);
    let a = call(
        &router,
        "GET",
        &format!("/v2/library/other/manifests/1{NS}"),
        &[],
    )
    .await;
    assert!(!String::from_utf8_lossy(&a.body).contains("127.0.0.1"));
    #[rustfmt::skip]
    let refusals = [
        refused("GET", format!("/v2/library/other/manifests/1{NS}"), StatusCode::BAD_GATEWAY, "UNAVAILABLE"),
        refused("HEAD", format!("/v2/library/other/blobs/{}{NS}", Digest::of(b"x")), StatusCode::BAD_GATEWAY, ""),
    ];
    assert_refused(&router, &refusals).await;
}

/// Requests that arrive before the first scan of the archives wait for it on
/// a blocking thread, never on the runtime's: here the runtime has a single
/// thread, which must stay free to run the scan.
#[tokio::test(flavor = "current_thread")]
async fn requests_before_the_first_scan_wait_off_the_runtime() {
    let dir = tempfile::tempdir().unwrap();
    let (oci, built) = OciLayout::single("busybox:1.36", &spec());
    write(dir.path(), "a.tar", &oci.to_tar());
    let c = Catalog::empty(CatalogOptions {
        dirs: vec![dir.path().to_path_buf()],
        settle: Duration::ZERO,
        cache_bytes: 64 << 20,
        ..Default::default()
    })
    .unwrap();
    let router = Mirror::new(c.clone(), Upstreams::default()).router();
    let request = tokio::spawn({
        let router = router.clone();
        async move { call(&router, "GET", &format!("{NAME}/manifests/1.36{NS}"), &[]).await }
    });
    // Let the request start and wait, then scan on this same thread's
    // runtime (the scan itself runs on a blocking thread).
    tokio::task::yield_now().await;
    tokio::task::spawn_blocking(move || c.rescan())
        .await
        .unwrap();
    let a = request.await.unwrap();
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(
        a.header("docker-content-digest"),
        built.manifest.to_string()
    );
}

#[tokio::test]
async fn content_discovery_lists_archived_tags_and_repositories() {
    let dir = tempfile::tempdir().unwrap();
    let (mut oci, built) = OciLayout::single("busybox:1.36", &spec());
    oci.tag("busybox:1.37", built.manifest, built.manifest_size, false);
    oci.tag("quay.io/x/y:1", built.manifest, built.manifest_size, false);
    write(dir.path(), "a.tar", &oci.to_tar());
    let (_c, router) = mirror_over(dir.path());
    let json = |a: &Answer| serde_json::from_slice::<serde_json::Value>(&a.body).unwrap();

    let a = call(&router, "GET", &format!("{NAME}/tags/list{NS}"), &[]).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(
        json(&a),
        serde_json::json!({"name": "library/busybox", "tags": ["1.36", "1.37"]})
    );
    assert!(a.headers.get("link").is_none());
    // One at a time: a Link to the next page, then the rest.
    let a = call(&router, "GET", &format!("{NAME}/tags/list{NS}&n=1"), &[]).await;
    assert_eq!(json(&a)["tags"], serde_json::json!(["1.36"]));
    assert_eq!(
        a.header("link"),
        "</v2/library/busybox/tags/list?ns=docker.io&n=1&last=1.36>; rel=\"next\""
    );
    let a = call(
        &router,
        "GET",
        &format!("{NAME}/tags/list{NS}&n=1&last=1.36"),
        &[],
    )
    .await;
    assert_eq!(json(&a)["tags"], serde_json::json!(["1.37"]));
    assert!(a.headers.get("link").is_none());

    let a = call(&router, "GET", "/v2/_catalog", &[]).await;
    assert_eq!(
        json(&a)["repositories"],
        serde_json::json!(["docker.io/library/busybox", "quay.io/x/y"])
    );
    let a = call(&router, "GET", "/v2/_catalog?ns=quay.io", &[]).await;
    assert_eq!(json(&a)["repositories"], serde_json::json!(["x/y"]));

    #[rustfmt::skip]
    let refusals = [
        refused("GET", format!("/v2/library/nginx/tags/list{NS}"), StatusCode::NOT_FOUND, "NAME_UNKNOWN"),
        refused("GET", "/v2/_catalog?n=many", StatusCode::BAD_REQUEST, "PAGINATION_NUMBER_INVALID"),
    ];
    assert_refused(&router, &refusals).await;
}

/// A reader that fails is never "not here": with the layer cache's
/// directory gone, a blob of a compressed archive is a 500, not a
/// BLOB_UNKNOWN that would send containerd on as if the archive lacked it.
#[tokio::test]
async fn a_failing_cache_is_an_internal_error_not_a_missing_blob() {
    let dir = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let (oci, built) = OciLayout::single("busybox:1.36", &spec());
    write(dir.path(), "a.tar.gz", &wrap(&oci.to_tar(), Wrap::Gzip));
    let c = Catalog::open(CatalogOptions {
        dirs: vec![dir.path().to_path_buf()],
        cache_dir: Some(cache.path().join("cache")),
        settle: Duration::ZERO,
        cache_bytes: 64 << 20,
        ..Default::default()
    })
    .unwrap();
    let router = Mirror::new(c, Upstreams::default()).router();
    std::fs::remove_dir_all(cache.path().join("cache")).unwrap();
    let uri = format!("{NAME}/blobs/{}{NS}", built.layers[0]);
    #[rustfmt::skip]
    let refusals = [
        refused("GET", uri, StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN").with_header("range", "bytes=0-9"),
    ];
    assert_refused(&router, &refusals).await;
}

/// Range reads of a plain tar are served in place after one check of the
/// whole blob: a byte flipped in the archive afterwards, its mtime put back,
/// is never served.
#[tokio::test]
async fn a_range_read_never_serves_an_archive_changed_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = spec();
    s.compression = LayerCompression::None;
    let (oci, built) = OciLayout::single("busybox:1.36", &s);
    let path = write(dir.path(), "a.tar", &oci.to_tar());
    let (_c, router) = mirror_over(dir.path());
    let layer = &oci.blobs[&built.layers[0]];
    let uri = format!("{NAME}/blobs/{}{NS}", built.layers[0]);
    let a = call(&router, "GET", &uri, &[("range", "bytes=0-99")]).await;
    assert_eq!(a.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(a.body, layer[..100]);

    let bytes = std::fs::read(&path).unwrap();
    let at = bytes.windows(64).position(|w| w == &layer[..64]).unwrap();
    let mtime = std::fs::metadata(&path).unwrap().modified().unwrap();
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::File::options().write(true).open(&path).unwrap();
        f.write_all_at(&[bytes[at + 10] ^ 0xff], at as u64 + 10)
            .unwrap();
        f.set_modified(mtime).unwrap();
    }
    #[rustfmt::skip]
    let refusals = [
        refused("GET", uri, StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN").with_header("range", "bytes=0-99"),
    ];
    assert_refused(&router, &refusals).await;
}

/// Two archives hold the same layer and the newer one is corrupted in
/// place (its mtime put back): whole and Range reads still serve the good
/// copy of the older archive, never a bad byte, and the bad copy is marked.
#[tokio::test]
async fn a_bad_copy_falls_back_to_another_archive_holding_the_blob() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = spec();
    s.compression = LayerCompression::None;
    let (oci, built) = OciLayout::single("busybox:1.36", &s);
    let old = write(dir.path(), "a.tar", &oci.to_tar());
    let new = write(dir.path(), "b.tar", &oci.to_tar());
    let now = std::time::SystemTime::now();
    std::fs::File::options()
        .write(true)
        .open(&old)
        .unwrap()
        .set_modified(now - Duration::from_secs(3600))
        .unwrap();
    std::fs::File::options()
        .write(true)
        .open(&new)
        .unwrap()
        .set_modified(now - Duration::from_secs(60))
        .unwrap();
    let (c, router) = mirror_over(dir.path());
    let layer = &oci.blobs[&built.layers[0]];

    let bytes = std::fs::read(&new).unwrap();
    let at = bytes.windows(64).position(|w| w == &layer[..64]).unwrap();
    let mtime = std::fs::metadata(&new).unwrap().modified().unwrap();
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::File::options().write(true).open(&new).unwrap();
        f.write_all_at(&[bytes[at + 10] ^ 0xff], at as u64 + 10)
            .unwrap();
        f.set_modified(mtime).unwrap();
    }
    let uri = format!("{NAME}/blobs/{}{NS}", built.layers[0]);
    let whole = call(&router, "GET", &uri, &[]).await;
    assert_eq!(whole.status, StatusCode::OK);
    assert_eq!(whole.body, layer[..]);
    assert!(
        c.copy_is_bad(&new, &built.layers[0]),
        "the bad copy is marked"
    );
    assert!(!c.copy_is_bad(&old, &built.layers[0]));
    let part = call(&router, "GET", &uri, &[("range", "bytes=0-99")]).await;
    assert_eq!(part.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(part.body, layer[..100]);
    let mut out = Vec::new();
    std::io::Read::read_to_end(&mut c.open_blob(&built.layers[0]).unwrap(), &mut out).unwrap();
    assert_eq!(out, layer[..]);
    assert_eq!(c.bad_copies(), 1);
}

/// Serves `library/remote`'s one blob from the fake upstream; returns the
/// mirror over no archive and the blob's URI.
async fn upstream_with_one_blob(f: &fake::Fake) -> (axum::Router, String, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let blob = Bytes::from_static(b"upstream blob\n");
    let d = Digest::of(&blob);
    f.content.lock().unwrap().insert(
        format!("library/remote/blobs/{d}"),
        ("application/octet-stream".into(), blob),
    );
    let endpoint = format!("http://{}", f.addr.lock().unwrap());
    let upstreams = Upstreams::new(&[upstream_config("docker.io", &endpoint, None)]).unwrap();
    let router = Mirror::new(catalog(dir.path()), upstreams).router();
    (router, format!("/v2/library/remote/blobs/{d}{NS}"), dir)
}

/// A 401 to a cached bearer token evicts it: it is never sent again, even
/// when fetching the next token fails.
#[tokio::test]
async fn an_upstream_401_evicts_the_cached_token() {
    use std::sync::atomic::Ordering::SeqCst;
    let f = fake::start().await;
    let (router, uri, _dir) = upstream_with_one_blob(&f).await;
    assert_eq!(call(&router, "GET", &uri, &[]).await.status, StatusCode::OK);
    assert_eq!(f.token_requests.load(SeqCst), 1);
    // The registry revokes the token, and its token service fails once.
    f.generation.fetch_add(1, SeqCst);
    f.refuse_tokens.store(1, SeqCst);
    assert_eq!(
        call(&router, "GET", &uri, &[]).await.status,
        StatusCode::BAD_GATEWAY
    );
    assert_eq!(call(&router, "GET", &uri, &[]).await.status, StatusCode::OK);
    assert_eq!(f.token_requests.load(SeqCst), 3);
    assert_eq!(
        f.stale_tokens.load(SeqCst),
        1,
        "a refused token was sent again"
    );
}

/// Harbor challenges an expired bearer token with `Basic`: the client asks
/// again without the token, takes a new one, and never turns to basic auth.
#[tokio::test]
async fn a_basic_challenge_to_a_stale_token_does_not_switch_to_basic_auth() {
    use std::sync::atomic::Ordering::SeqCst;
    let f = fake::start().await;
    f.harbor.store(true, SeqCst);
    let (router, uri, _dir) = upstream_with_one_blob(&f).await;
    assert_eq!(call(&router, "GET", &uri, &[]).await.status, StatusCode::OK);
    f.generation.fetch_add(1, SeqCst);
    assert_eq!(call(&router, "GET", &uri, &[]).await.status, StatusCode::OK);
    assert_eq!(f.token_requests.load(SeqCst), 2, "a new token was taken");
    let before = f.requests.load(SeqCst);
    assert_eq!(call(&router, "GET", &uri, &[]).await.status, StatusCode::OK);
    assert_eq!(
        f.requests.load(SeqCst) - before,
        1,
        "the new token is used at once"
    );
    assert_eq!(f.basic_requests.load(SeqCst), 0, "switched to basic auth");
    assert_eq!(f.stale_tokens.load(SeqCst), 1);
}

/// The only archived copy of a layer is bad (changed in place, mtime put
/// back): the mirror asks the upstream for it instead, and serves its good
/// bytes, whole and in part.
#[tokio::test]
async fn every_archived_copy_bad_falls_back_to_the_upstream() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = spec();
    s.compression = LayerCompression::None;
    let (oci, built) = OciLayout::single("busybox:1.36", &s);
    let path = write(dir.path(), "a.tar", &oci.to_tar());
    let digest = built.layers[0];
    let layer = oci.blobs[&digest].clone();
    let f = fake::start().await;
    f.content.lock().unwrap().insert(
        format!("library/busybox/blobs/{digest}"),
        (
            "application/octet-stream".into(),
            Bytes::from(layer.clone()),
        ),
    );
    let endpoint = format!("http://{}", f.addr.lock().unwrap());
    let upstreams = Upstreams::new(&[upstream_config("docker.io", &endpoint, None)]).unwrap();
    let c = catalog(dir.path());
    let router = Mirror::new(c.clone(), upstreams).router();

    let bytes = std::fs::read(&path).unwrap();
    let at = bytes.windows(64).position(|w| w == &layer[..64]).unwrap();
    let mtime = std::fs::metadata(&path).unwrap().modified().unwrap();
    {
        use std::os::unix::fs::FileExt;
        let file = std::fs::File::options().write(true).open(&path).unwrap();
        file.write_all_at(&[bytes[at + 10] ^ 0xff], at as u64 + 10)
            .unwrap();
        file.set_modified(mtime).unwrap();
    }
    let uri = format!("{NAME}/blobs/{digest}{NS}");
    // The fake upstream ignores Range and answers the whole blob.
    let part = call(&router, "GET", &uri, &[("range", "bytes=0-99")]).await;
    assert_eq!(part.status, StatusCode::OK);
    assert_eq!(part.body, layer[..]);
    assert!(c.copy_is_bad(&path, &digest));
    let whole = call(&router, "GET", &uri, &[]).await;
    assert_eq!(whole.status, StatusCode::OK);
    assert_eq!(whole.body, layer[..]);
}

/// A TCP "upstream" on loopback that answers every connection with
/// `answer` (after reading the request), then holds it open for `hold`.
async fn raw_upstream(answer: &'static [u8], hold: Duration) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(answer).await;
                tokio::time::sleep(hold).await;
            });
        }
    });
    format!("http://{addr}")
}

/// An upstream that accepts connections and never answers: a request for
/// what only it could have ends in a 502 (containerd moves on to its next
/// host) within the client's timeouts, never hangs; archived images are
/// served meanwhile, at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_upstream_is_a_bad_gateway_and_blocks_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (oci, built) = OciLayout::single("busybox:1.36", &spec());
    write(dir.path(), "a.tar", &oci.to_tar());
    let endpoint = raw_upstream(b"", Duration::from_secs(3600)).await;
    let upstreams = Upstreams::new(&[upstream_config("*", &endpoint, None)]).unwrap();
    let router = Mirror::new(catalog(dir.path()), upstreams).router();
    let stalled = {
        let router = router.clone();
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            let a = call(
                &router,
                "GET",
                &format!("/v2/library/other/manifests/1{NS}"),
                &[],
            )
            .await;
            (a, started.elapsed())
        })
    };
    // While that request hangs on the upstream, archived content flows.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = std::time::Instant::now();
    let a = call(&router, "GET", &format!("{NAME}/manifests/1.36{NS}"), &[]).await;
    assert_eq!(a.status, StatusCode::OK);
    let b = call(
        &router,
        "GET",
        &format!("{NAME}/blobs/{}{NS}", built.layers[0]),
        &[],
    )
    .await;
    assert_eq!(b.body, oci.blobs[&built.layers[0]]);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let (a, took) = tokio::time::timeout(Duration::from_secs(90), stalled)
        .await
        .expect("the request to a stalled upstream never ended")
        .unwrap();
    assert_eq!(a.status, StatusCode::BAD_GATEWAY, "after {took:?}");
    assert_eq!(a.error_code(), "UNAVAILABLE");
    assert!(!String::from_utf8_lossy(&a.body).contains("127.0.0.1"));
}

/// An upstream answering garbage (not HTTP at all; an HTTP answer whose
/// manifest is not JSON; a blob cut short of its length) is an error the
/// client sees as one, never a good answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_answering_garbage_is_never_passed_on_as_good() {
    let dir = tempfile::tempdir().unwrap();
    let (oci, _) = OciLayout::single("busybox:1.36", &spec());
    write(dir.path(), "a.tar", &oci.to_tar());
    let mirror = |endpoint: String| {
        let upstreams = Upstreams::new(&[upstream_config("*", &endpoint, None)]).unwrap();
        Mirror::new(catalog(dir.path()), upstreams).router()
    };
    let blob = format!("/v2/library/other/blobs/{}{NS}", Digest::of(b"wanted"));
    let manifest = format!("/v2/library/other/manifests/1{NS}");

    // Not HTTP.
    let router = mirror(raw_upstream(b"\x00\xffgarbage\r\n\r\n\x13\x37", Duration::ZERO).await);
    for uri in [&manifest, &blob] {
        let a = call(&router, "GET", uri, &[]).await;
        assert_eq!(a.status, StatusCode::BAD_GATEWAY, "{uri}");
    }

    // HTTP, but the manifest is not a manifest.
    let router = mirror(
        raw_upstream(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/vnd.oci.image.manifest.v1+json\r\nContent-Length: 9\r\nConnection: close\r\n\r\n{not json",
            Duration::ZERO,
        )
        .await,
    );
    let a = call(&router, "GET", &manifest, &[]).await;
    assert_ne!(a.status, StatusCode::OK, "{:?}", a.body);

    // A blob shorter than it says: the body fails, it never completes.
    let router = mirror(
        raw_upstream(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: 1000\r\nConnection: close\r\n\r\nshort",
            Duration::ZERO,
        )
        .await,
    );
    let resp = router
        .clone()
        .oneshot(Request::get(&blob).body(Body::empty()).unwrap())
        .await
        .unwrap();
    if resp.status() == StatusCode::OK {
        assert!(to_bytes(resp.into_body(), usize::MAX).await.is_err());
    } else {
        assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
    }
}

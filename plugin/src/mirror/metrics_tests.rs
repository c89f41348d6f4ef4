//! The mirror seen through its metrics: `GET /metrics` scraped around
//! mirror requests (the counters the mirror, the catalog and the cache move).

use std::time::Duration;

use axum::body::{to_bytes, Body};
use axum::http::{Request, StatusCode};
use tower::ServiceExt;

use super::Mirror;
use crate::catalog::{Catalog, CatalogOptions};
use crate::health::Health;

fn router(catalog: std::sync::Arc<Catalog>) -> axum::Router {
    crate::metrics::router(Health::new(catalog))
}
use crate::registry::Upstreams;
use crate::testsupport::*;

async fn get(router: &axum::Router, uri: &str) -> (StatusCode, Vec<u8>) {
    let resp = router
        .clone()
        .oneshot(Request::get(uri).body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let body = to_bytes(resp.into_body(), usize::MAX).await.unwrap();
    (status, body.to_vec())
}

async fn get_text(router: &axum::Router, uri: &str) -> (StatusCode, String) {
    let (status, body) = get(router, uri).await;
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// The value of the sample `name{labels}` (`name` alone: no labels).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// A scrape after a mirror blob request of a compressed archive shows
/// the counters moved: the request by route and status, the archive's
/// decompressed bytes, the cache miss, then the cache hit.
#[tokio::test]
async fn a_scrape_shows_what_a_mirror_blob_request_did() {
    let dir = tempfile::tempdir().unwrap();
    let spec = ImageSpec::new(vec![layer_tar(&[("etc/hello", b"hello\n")])]);
    let (oci, built) = OciLayout::single("busybox:1.36", &spec);
    let archive = write(dir.path(), "a.tar.gz", &wrap(&oci.to_tar(), Wrap::Gzip));
    let catalog = Catalog::open(CatalogOptions {
        dirs: vec![dir.path().to_path_buf()],
        settle: Duration::ZERO,
        cache_bytes: 64 << 20,
        ..Default::default()
    })
    .unwrap();
    let mirror = Mirror::new(catalog.clone(), Upstreams::default()).router();
    let metrics = router(catalog);

    let (status, before) = get_text(&metrics, "/metrics").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(sample(&before, "airgap_archives_indexed"), Some(1.0));
    assert_eq!(sample(&before, "airgap_archives_broken"), Some(0.0));
    assert_eq!(sample(&before, "airgap_cache_misses_total"), Some(0.0));
    let decompressed = format!(
        "airgap_archive_decompressed_bytes_total{{archive=\"{}\"}}",
        archive.display()
    );
    let decompressed_before = sample(&before, &decompressed).unwrap_or(0.0);

    let uri = format!("/v2/library/busybox/blobs/{}?ns=docker.io", built.layers[0]);
    for _ in 0..2 {
        let (status, _) = get(&mirror, &uri).await;
        assert_eq!(status, StatusCode::OK);
    }
    let (_, after) = get_text(&metrics, "/metrics").await;
    // Process-wide: other tests in this process may count too.
    let blob_200 = "airgap_mirror_requests_total{route=\"blob\",status=\"200\",source=\"archive\"}";
    let served = sample(&after, blob_200).unwrap_or(0.0) - sample(&before, blob_200).unwrap_or(0.0);
    assert!(served >= 2.0, "{after}");
    assert_eq!(sample(&after, "airgap_cache_misses_total"), Some(1.0));
    assert_eq!(sample(&after, "airgap_cache_hits_total"), Some(1.0));
    assert!(sample(&after, "airgap_cache_bytes").unwrap() > 0.0);
    assert!(
        sample(&after, &decompressed).unwrap() > decompressed_before,
        "{after}"
    );
    for name in [
        "airgap_layers_from_archive_total",
        "airgap_extractions_in_flight",
        "airgap_extraction_duration_seconds_count",
        "airgap_layer_pull_duration_seconds_count",
        "airgap_cache_evictions_total",
        "airgap_blob_bad_copies_total",
        "airgap_archive_read_bytes_total",
    ] {
        assert!(sample(&after, name).is_some(), "{name} missing:\n{after}");
    }
    assert_eq!(get_text(&metrics, "/other").await.0, StatusCode::NOT_FOUND);
}

fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Concurrent mirror reads of different blobs of one single-frame
/// `.tar.zst` decompress the archive once, whatever their number
/// (`airgap_archive_decompressed_bytes_total`), and each gets its bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_reads_of_one_compressed_archive_decompress_it_once() {
    let layers: Vec<Vec<u8>> = (0..6)
        .map(|i| layer_tar(&[(&format!("f{i}"), &noise(600_000, i + 1)[..])]))
        .collect();
    let spec = ImageSpec::new(layers);
    let (oci, built) = OciLayout::single("many:1", &spec);
    // A large first entry, skipped by the one pass.
    let mut tar = tar::Builder::new(Vec::new());
    let filler = noise(8 << 20, 99);
    let mut h = tar::Header::new_ustar();
    h.set_size(filler.len() as u64);
    h.set_mode(0o644);
    tar.append_data(&mut h, "filler", &filler[..]).unwrap();
    let mut stream = tar.get_ref().clone();
    stream.extend_from_slice(&oci.to_tar());
    let dir = tempfile::tempdir().unwrap();
    let archive = write(dir.path(), "one-frame.tar.zst", &wrap(&stream, Wrap::Zstd));
    let catalog = Catalog::open(CatalogOptions {
        dirs: vec![dir.path().to_path_buf()],
        settle: Duration::ZERO,
        cache_bytes: 256 << 20,
        ..Default::default()
    })
    .unwrap();
    let stream_len = catalog.archives()[0].index.stream_len;
    let mirror = Mirror::new(catalog.clone(), Upstreams::default()).router();
    let metrics = router(catalog.clone());
    let series = format!(
        "airgap_archive_decompressed_bytes_total{{archive=\"{}\"}}",
        archive.display()
    );
    let decompressed = |text: &str| sample(text, &series).unwrap_or(0.0);
    let (_, before) = get_text(&metrics, "/metrics").await;
    let before = decompressed(&before);

    // Every decompression slot taken: the reads line up behind the
    // first one, as they do behind other work on a busy node.
    let held: Vec<_> = std::iter::from_fn(|| catalog.pass_permits().try_acquire()).collect();
    assert!(!held.is_empty());
    let reads: Vec<_> = built
        .layers
        .iter()
        .map(|d| {
            let mirror = mirror.clone();
            let uri = format!("/v2/library/many/blobs/{d}?ns=docker.io");
            let d = *d;
            tokio::spawn(async move {
                let (status, body) = get(&mirror, &uri).await;
                assert_eq!(status, StatusCode::OK);
                assert_eq!(crate::digest::Digest::of(&body), d);
            })
        })
        .collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while catalog.pass_pending(&archive) < built.layers.len() {
        assert!(
            std::time::Instant::now() < deadline,
            "reads did not line up"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(held);
    for r in reads {
        r.await.unwrap();
    }
    let (_, after) = get_text(&metrics, "/metrics").await;
    let used = decompressed(&after) - before;
    assert!(
        used <= stream_len as f64,
        "{used} bytes decompressed for 6 concurrent reads of a {stream_len}-byte stream"
    );
    assert!(used >= (8 << 20) as f64, "{used}");
}

/// A registry that answers every blob request with `blob`.
async fn one_blob_upstream(blob: &'static [u8]) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().fallback(move || async move {
        (
            [(axum::http::header::CONTENT_TYPE, "application/octet-stream")],
            blob,
        )
    });
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

/// Mirror requests are counted by source: a blob from the archives, one
/// from the upstream (with that upstream's request and byte counters, named
/// by its configured registry), the API check (nothing looked up), and a
/// request to an upstream that is down (an error of that upstream).
#[tokio::test]
async fn mirror_requests_are_counted_by_source_and_upstream() {
    let dir = tempfile::tempdir().unwrap();
    let spec = ImageSpec::new(vec![layer_tar(&[("etc/hello", b"hello\n")])]);
    let (oci, built) = OciLayout::single("busybox:1.36", &spec);
    write(dir.path(), "a.tar", &oci.to_tar());
    let catalog = Catalog::open(CatalogOptions {
        dirs: vec![dir.path().to_path_buf()],
        settle: Duration::ZERO,
        ..Default::default()
    })
    .unwrap();
    let remote: &'static [u8] = b"only upstream\n";
    let remote_digest = crate::digest::Digest::of(remote);
    let endpoint = one_blob_upstream(remote).await;
    let upstreams = Upstreams::new(&[crate::config::UpstreamConfig::anonymous(
        "docker.io",
        &endpoint,
    )])
    .unwrap();
    let mirror = Mirror::new(catalog.clone(), upstreams).router();
    let metrics = router(catalog.clone());
    let requests = |text: &str, route: &str, status: u16, source: &str| {
        sample(
            text,
            &format!("airgap_mirror_requests_total{{route=\"{route}\",status=\"{status}\",source=\"{source}\"}}"),
        )
        .unwrap_or(0.0)
    };
    let up = |text: &str, name: &str| {
        sample(text, &format!("{name}{{upstream=\"docker.io\"}}")).unwrap_or(0.0)
    };
    let (_, before) = get_text(&metrics, "/metrics").await;

    let archived = format!("/v2/library/busybox/blobs/{}?ns=docker.io", built.layers[0]);
    assert_eq!(get(&mirror, &archived).await.0, StatusCode::OK);
    let upstream = format!("/v2/library/remote/blobs/{remote_digest}?ns=docker.io");
    let (status, body) = get(&mirror, &upstream).await;
    assert_eq!((status, &body[..]), (StatusCode::OK, remote));
    assert_eq!(get(&mirror, "/v2/").await.0, StatusCode::OK);

    let (_, after) = get_text(&metrics, "/metrics").await;
    let moved = |route, status, source| {
        requests(&after, route, status, source) - requests(&before, route, status, source)
    };
    assert!(moved("blob", 200, "archive") >= 1.0, "{after}");
    assert!(moved("blob", 200, "upstream") >= 1.0, "{after}");
    assert!(moved("base", 200, "none") >= 1.0, "{after}");
    assert!(
        up(&after, "airgap_upstream_requests_total")
            > up(&before, "airgap_upstream_requests_total")
    );
    assert!(
        up(&after, "airgap_upstream_read_bytes_total")
            >= up(&before, "airgap_upstream_read_bytes_total") + remote.len() as f64
    );
    assert!(
        sample(
            &after,
            "airgap_mirror_request_duration_seconds_count{route=\"blob\",source=\"upstream\"}"
        )
        .unwrap_or(0.0)
            >= 1.0,
        "{after}"
    );
    // Never a label from the request: the image and endpoint appear nowhere.
    assert!(!after.contains("library/remote") && !after.contains(&endpoint));

    // An upstream that is down: a 502 from the upstream, and its error.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let down = Upstreams::new(&[crate::config::UpstreamConfig::anonymous(
        "*",
        &format!("http://127.0.0.1:{port}"),
    )])
    .unwrap();
    let mirror = Mirror::new(catalog, down).router();
    let unreachable = "airgap_upstream_errors_total{upstream=\"*\",kind=\"unreachable\"}";
    let (_, before) = get_text(&metrics, "/metrics").await;
    assert_eq!(get(&mirror, &upstream).await.0, StatusCode::BAD_GATEWAY);
    let (_, after) = get_text(&metrics, "/metrics").await;
    assert!(requests(&after, "blob", 502, "upstream") > requests(&before, "blob", 502, "upstream"));
    assert!(
        sample(&after, unreachable).unwrap_or(0.0) > sample(&before, unreachable).unwrap_or(0.0),
        "{after}"
    );
}

/// `/healthz` answers while the process does; `/readyz` is 503 with its
/// reason until the archives are scanned and, with registration on,
/// containerd answered; `airgap_ready` follows it.
#[tokio::test]
async fn readyz_follows_the_scan_and_containerd() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = Catalog::empty(CatalogOptions {
        dirs: vec![dir.path().to_path_buf()],
        ..Default::default()
    })
    .unwrap();
    let state = crate::health::ContainerdState::new("/run/containerd/containerd.sock".into());
    let metrics =
        crate::metrics::router(Health::new(catalog.clone()).with_containerd(state.clone()));
    assert_eq!(
        get_text(&metrics, "/healthz").await,
        (StatusCode::OK, "ok\n".into())
    );

    let (status, body) = get_text(&metrics, "/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body, "not ready: the archives have not been scanned yet\n");
    let (_, text) = get_text(&metrics, "/metrics").await;
    assert_eq!(sample(&text, "airgap_ready"), Some(0.0));

    catalog.rescan();
    let (status, body) = get_text(&metrics, "/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        body.starts_with("not ready: containerd at /run/containerd/containerd.sock")
            && body.lines().count() == 1,
        "{body}"
    );
    let (_, text) = get_text(&metrics, "/metrics").await;
    assert_eq!(sample(&text, "airgap_containerd_reachable"), Some(0.0));

    state.reachable();
    assert_eq!(
        get_text(&metrics, "/readyz").await,
        (StatusCode::OK, "ready\n".into())
    );
    let (_, text) = get_text(&metrics, "/metrics").await;
    assert_eq!(sample(&text, "airgap_ready"), Some(1.0));
    assert_eq!(sample(&text, "airgap_containerd_reachable"), Some(1.0));
    let build = text
        .lines()
        .find(|l| l.starts_with("airgap_build_info{"))
        .expect("build info");
    assert!(
        build.contains(&format!("version=\"{}\"", env!("CARGO_PKG_VERSION")))
            && build.contains(&format!("commit=\"{}\"", crate::version::COMMIT))
            && build.ends_with(" 1"),
        "{build}"
    );

    state.unreachable("connection refused");
    assert_eq!(
        get_text(&metrics, "/readyz").await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    catalog.shutdown();
    assert_eq!(
        get_text(&metrics, "/readyz").await,
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: shutting down\n".into()
        )
    );
}

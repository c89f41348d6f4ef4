//! Prometheus metrics, served as text on `metrics_listen` (`GET /metrics`).
//!
//! Two kinds: events counted where they happen (layers taken from the
//! archives and fallbacks, extractions, mirror requests, upstream requests),
//! kept in one process-wide [`Metrics`]; and figures the catalog and the
//! layer cache already keep ([`crate::blob::Stats`], cache usage), read at
//! scrape time by a collector rather than counted twice. Every name starts
//! with `airgap_`.

use std::sync::{Arc, LazyLock};
use std::time::Instant;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::catalog::Catalog;
use crate::health::Health;

/// Label set of a counter family: `(name, value)` pairs.
pub type Labels = Vec<(&'static str, String)>;

/// Events counted as they happen.
pub struct Metrics {
    /// Layers the remote path committed from an archive.
    pub layers_from_archive: Counter,
    /// Layers staged as EROFS mounts of their archive instead of extracted.
    pub layers_mounted: Counter,
    /// Layers that could have been mounted but were extracted (indexing or
    /// mounting failed).
    pub layer_mount_failures: Counter,
    /// Layers mounted from an archive found unmounted (at start, or on
    /// Prepare, View, Mounts) that could not be mounted again or rebuilt.
    pub layer_remount_failures: Counter,
    /// Layers prepared for mounting (indexed, and decompressed if need be)
    /// into the layer store, on pull or ahead of it.
    pub layers_prepared: Counter,
    /// Layers waiting to be prepared ahead of any pull.
    pub layer_prepare_pending: Gauge,
    /// The layer store: entries, bytes, evictions.
    pub layer_store_entries: Gauge,
    pub layer_store_bytes: Gauge,
    pub layer_store_evictions: Counter,
    /// Archives found rewritten in place (same file, new size or mtime):
    /// see `layer::rewrites`.
    pub archive_rewrites: Counter,
    /// Prepares that went the ordinary way (containerd downloads the
    /// layer), by reason.
    pub layer_fallbacks: Family<Labels, Counter>,
    /// Seconds each layer extraction from an archive took.
    pub extraction_seconds: Histogram,
    /// Extractions running now.
    pub extractions_in_flight: Gauge,
    /// Seconds from a Prepare naming an archived layer to that layer
    /// committed from the archive (waiting for its extraction included).
    pub layer_pull_seconds: Histogram,
    /// Mirror requests by route, status code and source (`archive`,
    /// `upstream`, `none`).
    pub mirror_requests: Family<Labels, Counter>,
    /// Seconds from a mirror request to its response's headers, by route
    /// and source.
    pub mirror_seconds: Family<Labels, Histogram, fn() -> Histogram>,
    /// Requests sent to upstream registries (token requests included), by
    /// upstream (the configured `registry` of its `[[upstream]]` table).
    pub upstream_requests: Family<Labels, Counter>,
    /// Upstream failures, by upstream and kind.
    pub upstream_errors: Family<Labels, Counter>,
    /// Bytes received from upstream registries, by upstream.
    pub upstream_bytes: Family<Labels, Counter>,
    /// Snapshots API calls by method (see [`crate::snapshot::observe`]).
    pub grpc_requests: Family<Labels, Counter>,
    /// Snapshots API calls that failed, by method and gRPC code.
    pub grpc_errors: Family<Labels, Counter>,
    /// Seconds a Snapshots API call took, by method.
    pub grpc_seconds: Family<Labels, Histogram, fn() -> Histogram>,
    /// Registration passes of the importer, by result (`ok`, `failed`,
    /// `unavailable`).
    pub import_passes: Family<Labels, Counter>,
    /// Images registered or updated in containerd.
    pub import_registered: Counter,
    /// Image records the importer deleted (their image left the archives).
    pub import_removed: Counter,
    /// Images that could not be registered, and listed references that
    /// could not be pulled.
    pub import_failures: Counter,
    /// Unix time of the last registration pass that succeeded.
    pub import_last_success: Gauge<f64, std::sync::atomic::AtomicU64>,
    /// Archived images by signature state (`valid`, `unsigned`,
    /// `invalid`), when `[verify]` has keys (see `trust`).
    pub images_signature: Family<Labels, Gauge>,
    /// Uses of an image without a valid signature, by use (`serve`,
    /// `register`, `mount`) and `[verify] require` (`warn`: used anyway,
    /// `enforce`: refused).
    pub signature_refusals: Family<Labels, Counter>,
    /// Requests a cluster listener refused, by listener (its bound
    /// address) and reason (see `mirror::cluster::Refusal`).
    pub cluster_refusals: Family<Labels, Counter>,
    /// TLS handshakes a cluster listener failed, by listener and reason
    /// (see `mirror::cluster::HandshakeFailure`).
    pub cluster_handshake_failures: Family<Labels, Counter>,
}

/// Buckets of request latencies: 1 ms .. ~65 s.
fn request_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| Metrics {
    layers_from_archive: Counter::default(),
    layers_mounted: Counter::default(),
    layer_mount_failures: Counter::default(),
    layer_remount_failures: Counter::default(),
    layers_prepared: Counter::default(),
    layer_prepare_pending: Gauge::default(),
    layer_store_entries: Gauge::default(),
    layer_store_bytes: Gauge::default(),
    layer_store_evictions: Counter::default(),
    archive_rewrites: Counter::default(),
    layer_fallbacks: Family::default(),
    // 10 ms .. ~10 min.
    extraction_seconds: Histogram::new(exponential_buckets(0.01, 2.0, 16)),
    extractions_in_flight: Gauge::default(),
    layer_pull_seconds: Histogram::new(exponential_buckets(0.005, 2.0, 18)),
    mirror_requests: Family::default(),
    mirror_seconds: Family::new_with_constructor(request_histogram),
    upstream_requests: Family::default(),
    upstream_errors: Family::default(),
    upstream_bytes: Family::default(),
    grpc_requests: Family::default(),
    grpc_errors: Family::default(),
    grpc_seconds: Family::new_with_constructor(request_histogram),
    import_passes: Family::default(),
    import_registered: Counter::default(),
    import_removed: Counter::default(),
    import_failures: Counter::default(),
    import_last_success: Gauge::default(),
    images_signature: Family::default(),
    signature_refusals: Family::default(),
    cluster_refusals: Family::default(),
    cluster_handshake_failures: Family::default(),
});

/// The process-wide event metrics.
pub fn global() -> &'static Metrics {
    &METRICS
}

impl Metrics {
    /// Counts a Prepare that took the ordinary path.
    pub fn layer_fallback(&self, reason: &'static str) {
        self.layer_fallbacks
            .get_or_create(&vec![("reason", reason.to_string())])
            .inc();
    }

    /// Counts a mirror request answered with `status` from `source`
    /// (`archive`, `upstream`, `none`) after `seconds`.
    pub fn mirror_request(
        &self,
        route: &'static str,
        status: u16,
        source: &'static str,
        seconds: f64,
    ) {
        self.mirror_requests
            .get_or_create(&vec![
                ("route", route.to_string()),
                ("status", status.to_string()),
                ("source", source.to_string()),
            ])
            .inc();
        self.mirror_seconds
            .get_or_create(&vec![
                ("route", route.to_string()),
                ("source", source.to_string()),
            ])
            .observe(seconds);
    }

    /// The counters of the upstream named `upstream` (the `registry` of its
    /// `[[upstream]]` table: bounded by the configuration, never a name
    /// taken from a request).
    pub fn upstream(&self, upstream: &str) -> UpstreamMetrics {
        let labels: Labels = vec![("upstream", upstream.to_string())];
        UpstreamMetrics {
            name: upstream.to_string(),
            requests: self.upstream_requests.get_or_create(&labels).clone(),
            bytes: self.upstream_bytes.get_or_create(&labels).clone(),
        }
    }

    /// Counts one Snapshots API call of `method` (bounded: the API's
    /// methods) that ended with `code` after `seconds`.
    pub fn grpc_call(&self, method: &'static str, code: tonic::Code, seconds: f64) {
        let labels: Labels = vec![("method", method.to_string())];
        self.grpc_requests.get_or_create(&labels).inc();
        self.grpc_seconds.get_or_create(&labels).observe(seconds);
        if code != tonic::Code::Ok {
            self.grpc_errors
                .get_or_create(&vec![
                    ("method", method.to_string()),
                    ("code", format!("{code:?}")),
                ])
                .inc();
        }
    }

    /// Counts a registration pass that ended as `result` (`ok`, `failed`,
    /// `unavailable`).
    pub fn import_pass(&self, result: &'static str) {
        self.import_passes
            .get_or_create(&vec![("result", result.to_string())])
            .inc();
        if result == "ok" {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            self.import_last_success.set(now.as_secs_f64());
        }
    }
}

impl Metrics {
    /// Sets the images-by-signature-state gauges.
    pub fn images_signature(&self, valid: i64, unsigned: i64, invalid: i64) {
        for (state, n) in [
            ("valid", valid),
            ("unsigned", unsigned),
            ("invalid", invalid),
        ] {
            self.images_signature
                .get_or_create(&vec![("state", state.to_string())])
                .set(n);
        }
    }

    /// Counts a use of an image without a valid signature.
    pub fn signature_refusal(&self, what: &'static str, require: &'static str) {
        self.signature_refusals
            .get_or_create(&vec![
                ("use", what.to_string()),
                ("require", require.to_string()),
            ])
            .inc();
    }
}

impl Metrics {
    /// The counter of the cluster listener bound to `listener` refusing
    /// requests for `reason`, created at 0. `listener` is an address of
    /// the configuration (bounded), never the client's.
    pub fn cluster_refusals(&self, listener: &str, reason: &'static str) -> Counter {
        self.cluster_refusals
            .get_or_create(&vec![
                ("listener", listener.to_string()),
                ("reason", reason.to_string()),
            ])
            .clone()
    }

    /// The counter of the cluster listener bound to `listener` failing TLS
    /// handshakes for `reason`, created at 0.
    pub fn cluster_handshake_failures(&self, listener: &str, reason: &'static str) -> Counter {
        self.cluster_handshake_failures
            .get_or_create(&vec![
                ("listener", listener.to_string()),
                ("reason", reason.to_string()),
            ])
            .clone()
    }
}

/// One upstream's counters, created once with its label.
#[derive(Clone, Debug)]
pub struct UpstreamMetrics {
    name: String,
    /// Requests sent to it (token requests included).
    pub requests: Counter,
    /// Bytes received from it.
    pub bytes: Counter,
}

impl UpstreamMetrics {
    /// Counts a failure of this upstream, by `kind` (`unreachable`,
    /// `failed`, `transfer`, `digest`).
    pub fn error(&self, kind: &'static str) {
        global()
            .upstream_errors
            .get_or_create(&vec![
                ("upstream", self.name.clone()),
                ("kind", kind.to_string()),
            ])
            .inc();
    }
}

impl Metrics {
    /// Counts one extraction in flight until the guard drops, then records
    /// its duration.
    pub fn extraction(&'static self) -> ExtractionGuard {
        self.extractions_in_flight.inc();
        ExtractionGuard {
            metrics: self,
            started: Instant::now(),
        }
    }
}

pub struct ExtractionGuard {
    metrics: &'static Metrics,
    started: Instant,
}

impl Drop for ExtractionGuard {
    fn drop(&mut self) {
        self.metrics.extractions_in_flight.dec();
        self.metrics
            .extraction_seconds
            .observe(self.started.elapsed().as_secs_f64());
    }
}

/// The registry a scrape encodes: the event metrics, the catalog's own
/// figures and the daemon's readiness.
pub fn registry(health: Health) -> Registry {
    let m = global();
    let mut r = Registry::default();
    r.register(
        "airgap_layers_from_archive",
        "Layers the snapshotter took straight from an archive",
        m.layers_from_archive.clone(),
    );
    r.register(
        "airgap_layers_mounted",
        "Layers mounted from their archive (EROFS index) instead of extracted",
        m.layers_mounted.clone(),
    );
    r.register(
        "airgap_layer_mount_failures",
        "Layers that could have been mounted from their archive but were extracted",
        m.layer_mount_failures.clone(),
    );
    r.register(
        "airgap_layer_remount_failures",
        "Layers mounted from an archive found unmounted that could be neither mounted again nor rebuilt from an archive",
        m.layer_remount_failures.clone(),
    );
    r.register(
        "airgap_archive_rewrites",
        "Archives rewritten in place (same inode, new size or mtime) instead of replaced by rename",
        m.archive_rewrites.clone(),
    );
    r.register(
        "airgap_layers_prepared",
        "Layers prepared for mounting (indexed, decompressed if need be) into the layer store",
        m.layers_prepared.clone(),
    );
    r.register(
        "airgap_layer_prepare_pending",
        "Layers waiting to be prepared ahead of any pull",
        m.layer_prepare_pending.clone(),
    );
    r.register(
        "airgap_layer_store_entries",
        "Prepared layers in the layer store",
        m.layer_store_entries.clone(),
    );
    r.register(
        "airgap_layer_store_bytes",
        "Bytes the layer store holds (in use or not)",
        m.layer_store_bytes.clone(),
    );
    r.register(
        "airgap_layer_store_evictions",
        "Prepared layers evicted from the layer store",
        m.layer_store_evictions.clone(),
    );
    r.register(
        "airgap_layer_fallbacks",
        "Prepares that took the ordinary path (containerd downloads the layer), by reason",
        m.layer_fallbacks.clone(),
    );
    r.register(
        "airgap_extraction_duration_seconds",
        "Time to extract one layer from an archive",
        m.extraction_seconds.clone(),
    );
    r.register(
        "airgap_layer_pull_duration_seconds",
        "Time from a Prepare naming an archived layer to the layer committed from the archive",
        m.layer_pull_seconds.clone(),
    );
    r.register(
        "airgap_extractions_in_flight",
        "Layer extractions running now",
        m.extractions_in_flight.clone(),
    );
    r.register(
        "airgap_mirror_requests",
        "Registry mirror requests by route, status and source (archive, upstream, none)",
        m.mirror_requests.clone(),
    );
    r.register(
        "airgap_mirror_request_duration_seconds",
        "Time from a registry mirror request to its response headers, by route and source",
        m.mirror_seconds.clone(),
    );
    r.register(
        "airgap_upstream_requests",
        "Requests sent to upstream registries, by upstream (its configured registry)",
        m.upstream_requests.clone(),
    );
    r.register(
        "airgap_upstream_errors",
        "Upstream registry failures by upstream and kind",
        m.upstream_errors.clone(),
    );
    r.register(
        "airgap_upstream_read_bytes",
        "Bytes received from upstream registries, by upstream",
        m.upstream_bytes.clone(),
    );
    r.register(
        "airgap_grpc_requests",
        "Snapshots API calls by method",
        m.grpc_requests.clone(),
    );
    r.register(
        "airgap_grpc_errors",
        "Snapshots API calls that failed, by method and gRPC code",
        m.grpc_errors.clone(),
    );
    r.register(
        "airgap_grpc_request_duration_seconds",
        "Time a Snapshots API call took, by method",
        m.grpc_seconds.clone(),
    );
    r.register(
        "airgap_import_passes",
        "Registration passes of the importer by result (ok, failed, unavailable)",
        m.import_passes.clone(),
    );
    r.register(
        "airgap_import_registered_images",
        "Images registered or updated in containerd by the importer",
        m.import_registered.clone(),
    );
    r.register(
        "airgap_import_removed_images",
        "Image records the importer deleted because their image left the archives",
        m.import_removed.clone(),
    );
    r.register(
        "airgap_import_failures",
        "Images the importer could not register, and listed images it could not pull",
        m.import_failures.clone(),
    );
    r.register(
        "airgap_import_last_success_timestamp_seconds",
        "Unix time of the last registration pass that succeeded",
        m.import_last_success.clone(),
    );
    r.register(
        "airgap_images_signature",
        "Archived images by signature state (valid, unsigned, invalid) against the [verify] keys",
        m.images_signature.clone(),
    );
    r.register(
        "airgap_signature_refusals",
        "Uses (serve, register, mount) of images without a valid signature, by [verify] require (warn: used, enforce: refused)",
        m.signature_refusals.clone(),
    );
    r.register(
        "airgap_cluster_refusals",
        "Requests a cluster listener refused, by listener (its address) and reason (unauthenticated, bad_credentials, method, catalog, rate, in_flight)",
        m.cluster_refusals.clone(),
    );
    r.register(
        "airgap_cluster_tls_handshake_failures",
        "TLS handshakes a cluster listener failed, by listener (its address) and reason (client_certificate, timeout, other)",
        m.cluster_handshake_failures.clone(),
    );
    // The bounded series exist from the start at zero, so that a rate
    // over them is 0 rather than absent.
    for method in crate::snapshot::observe::METHODS {
        let labels: Labels = vec![("method", method.to_string())];
        drop(m.grpc_requests.get_or_create(&labels));
        drop(m.grpc_seconds.get_or_create(&labels));
    }
    for result in ["ok", "failed", "unavailable"] {
        drop(
            m.import_passes
                .get_or_create(&vec![("result", result.to_string())]),
        );
    }
    let build: Family<Labels, Gauge> = Family::default();
    build
        .get_or_create(&vec![
            ("version", env!("CARGO_PKG_VERSION").to_string()),
            ("commit", crate::version::COMMIT.to_string()),
            ("target", crate::version::TARGET.to_string()),
        ])
        .set(1);
    r.register(
        "airgap_build_info",
        "Always 1: the version, git commit and target of the running daemon",
        build,
    );
    r.register_collector(Box::new(CatalogCollector(health.catalog().clone())));
    r.register_collector(Box::new(HealthCollector(health)));
    r
}

/// Encodes `registry` in the Prometheus text format.
pub fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut out, registry)
        .expect("writing to a String cannot fail");
    out
}

/// The `Content-Type` of [`encode`]'s output.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Reads the catalog's and the layer cache's counters at scrape time.
struct CatalogCollector(Arc<Catalog>);

impl std::fmt::Debug for CatalogCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CatalogCollector")
    }
}

fn counter(e: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> std::fmt::Result {
    let c = ConstCounter::new(v);
    c.encode(e.encode_descriptor(name, help, None, c.metric_type())?)
}

fn gauge(e: &mut DescriptorEncoder, name: &str, help: &str, v: i64) -> std::fmt::Result {
    let g = ConstGauge::new(v);
    g.encode(e.encode_descriptor(name, help, None, g.metric_type())?)
}

impl Collector for CatalogCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> std::fmt::Result {
        use std::sync::atomic::Ordering::Relaxed;
        let c = &self.0;
        let stats = c.stats();
        let (indexed, broken) = c.archive_counts();
        gauge(
            &mut e,
            "airgap_archives_indexed",
            "Archives indexed and served",
            indexed as i64,
        )?;
        gauge(
            &mut e,
            "airgap_archives_broken",
            "Archives that could not be read",
            broken as i64,
        )?;
        gauge(
            &mut e,
            "airgap_archives_missing",
            "Archives kept in the view while their file is absent (gone after archive_removal_grace)",
            c.missing_count() as i64,
        )?;
        counter(
            &mut e,
            "airgap_archive_read_bytes",
            "Bytes read in place from plain tar archives",
            stats.read.load(Relaxed),
        )?;
        let per_archive = c.decompressed_by_archive();
        {
            let family = ConstCounter::new(0u64);
            let mut fe = e.encode_descriptor(
                "airgap_archive_decompressed_bytes",
                "Bytes produced by decompressing each archive (bytes skipped to reach a blob included)",
                None,
                family.metric_type(),
            )?;
            for (archive, bytes) in per_archive {
                let labels: Labels = vec![("archive", archive.display().to_string())];
                ConstCounter::new(bytes).encode(fe.encode_family(&labels)?)?;
            }
        }
        counter(
            &mut e,
            "airgap_blob_bad_copies",
            "Copies of blobs found bad (another archive holding the blob is used)",
            c.bad_copies(),
        )?;
        counter(
            &mut e,
            "airgap_cache_hits",
            "Layer cache lookups that found the blob",
            stats.cache_hits.load(Relaxed),
        )?;
        counter(
            &mut e,
            "airgap_cache_misses",
            "Layer cache lookups that decompressed the blob",
            stats.cache_misses.load(Relaxed),
        )?;
        counter(
            &mut e,
            "airgap_cache_evictions",
            "Layer cache entries evicted",
            c.cache().evictions(),
        )?;
        let usage = c.cache().usage();
        gauge(
            &mut e,
            "airgap_cache_bytes",
            "Bytes in the layer cache",
            usage.bytes as i64,
        )?;
        gauge(
            &mut e,
            "airgap_cache_entries",
            "Blobs in the layer cache",
            usage.entries as i64,
        )?;
        Ok(())
    }
}

/// Reads the daemon's readiness at scrape time (see [`crate::health`]).
#[derive(Debug)]
struct HealthCollector(Health);

impl Collector for HealthCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> std::fmt::Result {
        gauge(
            &mut e,
            "airgap_ready",
            "1 when the daemon is ready (/readyz answers 200): archives scanned, containerd reachable when registration is on",
            self.0.ready().is_ok() as i64,
        )?;
        if let Some(reachable) = self.0.containerd_reachable() {
            gauge(
                &mut e,
                "airgap_containerd_reachable",
                "1 when the importer's last attempt reached containerd (registration on only)",
                reachable as i64,
            )?;
        }
        if let Some(disk) = self.0.disk() {
            gauge(
                &mut e,
                "airgap_cache_budget_bytes",
                "Byte budget of the layer cache (cache_bytes)",
                disk.cache_budget as i64,
            )?;
            gauge(
                &mut e,
                "airgap_layer_store_budget_bytes",
                "Byte budget of prepared layers no snapshot uses (layer_store_bytes)",
                disk.layer_store_budget as i64,
            )?;
            // A failed statvfs leaves the two out (an absent series, not a
            // false zero).
            match rustix::fs::statvfs(&disk.root) {
                Ok(st) => {
                    let frsize = st.f_frsize.max(1);
                    gauge(
                        &mut e,
                        "airgap_root_filesystem_avail_bytes",
                        "Bytes available to the daemon on the filesystem of its root",
                        st.f_bavail.saturating_mul(frsize).min(i64::MAX as u64) as i64,
                    )?;
                    gauge(
                        &mut e,
                        "airgap_root_filesystem_size_bytes",
                        "Size of the filesystem of the daemon's root",
                        st.f_blocks.saturating_mul(frsize).min(i64::MAX as u64) as i64,
                    )?;
                }
                Err(err) => {
                    tracing::debug!(root = %disk.root.display(), error = %err, "statvfs of the root failed")
                }
            }
        }
        Ok(())
    }
}

/// The metrics listener's HTTP service: `GET /metrics` in the Prometheus
/// text format, `/healthz` (200 while the process answers), `/readyz` (200
/// when ready, else 503 with the reason on one line), 404 for anything
/// else.
pub fn router(health: Health) -> axum::Router {
    use axum::http::{header, StatusCode};
    use axum::response::IntoResponse;
    let registry = Arc::new(registry(health.clone()));
    axum::Router::new()
        .route(
            "/metrics",
            axum::routing::get(move || {
                let registry = registry.clone();
                async move {
                    // The collector takes the catalog's locks: off the runtime.
                    match tokio::task::spawn_blocking(move || encode(&registry)).await {
                        Ok(text) => ([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response(),
                        Err(e) => {
                            tracing::error!(error = %e, "encoding the metrics failed");
                            StatusCode::INTERNAL_SERVER_ERROR.into_response()
                        }
                    }
                }
            }),
        )
        .route("/healthz", axum::routing::get(|| async { "ok\n" }))
        .route(
            "/readyz",
            axum::routing::get(move || {
                let health = health.clone();
                async move {
                    match health.ready() {
                        Ok(()) => (StatusCode::OK, "ready\n".to_string()),
                        Err(why) => (
                            StatusCode::SERVICE_UNAVAILABLE,
                            format!("not ready: {why}\n"),
                        ),
                    }
                }
            }),
        )
}

/// Serves [`router`] on `listener` until `shutdown` resolves.
pub async fn serve(
    health: Health,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(health))
        .with_graceful_shutdown(shutdown)
        .await
}

#[cfg(test)]
mod contrib_tests;

//! Import: the archives' images registered in containerd before anyone pulls
//! them (the third way an image gets in, `docs/architecture.md`).
//!
//! For each namespace, every archived image for this node's platform gets
//! what a CRI pull would have left: its index, manifest and config in the
//! content store (with containerd's garbage-collection labels), its layers
//! committed through containerd's Snapshots service on this snapshotter
//! (Prepare with `containerd.io/snapshot.ref`, answered `ALREADY_EXISTS`
//! by the remote path without extracting anything: `lazy`), and its image
//! records (tag, repo digest, image id) labelled as CRI labels them, pinned,
//! and marked with the archive they come from. Nothing but those few small
//! documents is copied.
//!
//! Registration is a reconciliation: records this importer made whose image
//! left the archives are deleted (containerd's GC then drops what no
//! container uses), changed tags are repointed, and what is already right is
//! left alone, at the cost of one List per namespace and one Stat per image.
//!
//! Files: `plan.rs` turns the catalog into [`plan::Registration`]s;
//! `client.rs` holds the calls into containerd; this file applies a plan
//! and runs the background loop.

pub mod client;
pub mod plan;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::catalog::Catalog;
use crate::labels::{AIRGAP_ARCHIVE, AIRGAP_IMPORT, TARGET_SNAPSHOT_REF};
use client::{Containerd, ImageRecord, Namespaced, Prepared};
use plan::Registration;

/// How registered layers get their data.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ImportMode {
    /// Committed without data; extracted on first use (a container's
    /// rootfs, a View), every layer of the chain in parallel.
    #[default]
    Lazy,
    /// Committed at once and extracted in the background right away.
    Eager,
    /// No registration.
    Off,
}

impl ImportMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ImportMode::Lazy => "lazy",
            ImportMode::Eager => "eager",
            ImportMode::Off => "off",
        }
    }
}

/// Where and how to register.
#[derive(Clone, Debug)]
pub struct ImportOptions {
    /// containerd's gRPC socket.
    pub address: PathBuf,
    pub namespaces: Vec<String>,
    pub mode: ImportMode,
    /// The name containerd knows this snapshotter by (`[proxy_plugins.X]`).
    pub snapshotter: String,
    /// This node's platform (`linux/amd64`).
    pub platform: String,
    /// How long a layer the snapshotter declines is asked for again: zero
    /// in the daemon (the snapshotter reads the same catalog), some seconds
    /// for the `import` command, whose catalog may see an archive before
    /// the daemon's watcher has indexed it.
    pub declined_wait: Duration,
}

impl ImportOptions {
    /// The daemon's `containerd_address` and `[import]` table, for this
    /// node's platform.
    pub fn from_config(config: &crate::config::Config) -> Self {
        ImportOptions {
            address: config.containerd_address.clone(),
            namespaces: config.import.namespaces.clone(),
            mode: config.import.mode,
            snapshotter: config.import.snapshotter.clone(),
            platform: crate::setup::platform(),
            declined_wait: Duration::ZERO,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("cannot reach containerd at {}: {reason}", address.display())]
    Connect { address: PathBuf, reason: String },
    #[error("containerd {call}: {code:?}: {message}")]
    Call {
        call: &'static str,
        code: tonic::Code,
        message: String,
    },
    #[error("containerd: {0}")]
    Protocol(&'static str),
    #[error(
        "layer {chain_id} (chain ID) of {image}: the snapshotter {snapshotter:?} did not take it \
         from {archive} (is containerd's proxy plugin {snapshotter:?} this daemon, and does it \
         watch that archive? its log says why)"
    )]
    Declined {
        image: String,
        archive: PathBuf,
        chain_id: crate::digest::Digest,
        snapshotter: String,
    },
}

impl ImportError {
    /// containerd went away: reconnect rather than go on.
    fn is_unavailable(&self) -> bool {
        matches!(self, ImportError::Connect { .. })
            || matches!(self, ImportError::Call { code, .. } if *code == tonic::Code::Unavailable)
    }
}

/// What one pass did in one namespace.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct NamespaceReport {
    pub namespace: String,
    /// Images registered or updated now.
    pub registered: Vec<String>,
    /// Images already registered as they should be.
    pub unchanged: usize,
    /// Image records deleted (their image left the archives).
    pub removed: Vec<String>,
    /// Images that could not be registered, and why.
    pub failed: Vec<(String, String)>,
}

/// What one pass did.
#[derive(Debug, Default, Clone)]
pub struct ImportReport {
    pub namespaces: Vec<NamespaceReport>,
    /// Archived images not registered for this node, and why.
    pub skipped: Vec<(String, String)>,
    /// References of the image lists no archive holds, pulled now.
    pub pulled: Vec<String>,
    /// Those that could not be pulled, and why.
    pub pull_failed: Vec<(String, String)>,
}

impl ImportReport {
    pub fn failed(&self) -> usize {
        self.namespaces
            .iter()
            .map(|n| n.failed.len())
            .sum::<usize>()
            + self.pull_failed.len()
    }
}

/// Keeps the catalog's images registered in containerd.
pub struct Importer {
    catalog: Arc<Catalog>,
    opts: ImportOptions,
    /// Listed references whose pull failed, and when.
    pull_failures: std::sync::Mutex<HashMap<String, std::time::Instant>>,
}

/// CRI's namespace: image lists are pulled only when it is registered.
const CRI_NAMESPACE: &str = "k8s.io";
/// A listed image that could not be pulled is tried again after this long.
const PULL_RETRY: Duration = Duration::from_secs(300);

impl Importer {
    pub fn new(catalog: Arc<Catalog>, opts: ImportOptions) -> Self {
        Importer {
            catalog,
            opts,
            pull_failures: Default::default(),
        }
    }

    pub fn options(&self) -> &ImportOptions {
        &self.opts
    }

    /// One registration pass over every namespace.
    pub async fn pass(&self, client: &Containerd) -> Result<ImportReport, ImportError> {
        let catalog = self.catalog.clone();
        let (platform, snapshotter) = (self.opts.platform.clone(), self.opts.snapshotter.clone());
        // Blocking: waits for the first scan of the archives.
        let (plan, skipped) =
            tokio::task::spawn_blocking(move || plan::plan(&catalog, &platform, &snapshotter))
                .await
                .map_err(|_| ImportError::Protocol("planning task failed"))?;
        // Images are unregistered only against a whole view of the
        // archives: not while the first scan is unfinished (it waited
        // long enough to give up), nor while the daemon stops.
        let complete = self.catalog.first_scan_done() && !self.catalog.stopping();
        let scope = if complete {
            self.catalog.options().dirs.clone()
        } else {
            Vec::new()
        };
        let mut report = ImportReport {
            skipped,
            ..Default::default()
        };
        for namespace in &self.opts.namespaces {
            let ns = client.namespace(namespace);
            report
                .namespaces
                .push(self.reconcile(ns, &plan, &scope).await?);
        }
        if self.opts.namespaces.iter().any(|n| n == CRI_NAMESPACE) {
            self.pull_listed(client, &mut report).await?;
        }
        Ok(report)
    }

    /// k3s's habit: references of the image lists (`*.txt`) beside the
    /// archives that no archive holds are pulled through containerd's CRI
    /// (so through hosts.toml, the mirror and its upstreams). One attempt
    /// per reference every [`PULL_RETRY`] while it fails.
    async fn pull_listed(
        &self,
        client: &Containerd,
        report: &mut ImportReport,
    ) -> Result<(), ImportError> {
        let catalog = self.catalog.clone();
        let listed = tokio::task::spawn_blocking(move || {
            catalog
                .image_lists()
                .into_iter()
                .filter_map(|(reference, list)| {
                    let normalized = crate::catalog::reference::Reference::parse(&reference)
                        .map(|r| r.to_string());
                    match normalized {
                        Ok(name) if catalog.resolve(&name).is_none() => Some((name, list)),
                        Ok(_) => None,
                        Err(e) => {
                            tracing::warn!(list = %list.display(), %reference, error = %e, "not an image reference");
                            None
                        }
                    }
                })
                .collect::<Vec<_>>()
        })
        .await
        .map_err(|_| ImportError::Protocol("reading image lists failed"))?;
        if listed.is_empty() {
            return Ok(());
        }
        let present: HashSet<String> = client
            .namespace(CRI_NAMESPACE)
            .list_images()
            .await?
            .into_iter()
            .map(|r| r.name)
            .collect();
        for (name, list) in listed {
            if present.contains(&name) {
                continue;
            }
            if let Some(failed) = self.pull_failures.lock().unwrap().get(&name) {
                if failed.elapsed() < PULL_RETRY {
                    continue;
                }
            }
            match client.cri_pull(&name).await {
                Ok(id) => {
                    tracing::info!(image = %name, %id, list = %list.display(), "listed image pulled");
                    self.pull_failures.lock().unwrap().remove(&name);
                    report.pulled.push(name);
                }
                Err(e) if e.is_unavailable() => return Err(e),
                Err(e) => {
                    tracing::warn!(image = %name, list = %list.display(), error = %e,
                        "listed image is in no archive and could not be pulled; retried later");
                    self.pull_failures
                        .lock()
                        .unwrap()
                        .insert(name.clone(), std::time::Instant::now());
                    report.pull_failed.push((name, e.to_string()));
                }
            }
        }
        Ok(())
    }

    /// Brings one namespace in line with `plan`; unregisters only what
    /// came from archives in `scope`.
    async fn reconcile(
        &self,
        ns: Namespaced<'_>,
        plan: &[Registration],
        scope: &[PathBuf],
    ) -> Result<NamespaceReport, ImportError> {
        let mut report = NamespaceReport {
            namespace: ns.namespace().to_string(),
            ..Default::default()
        };
        let existing: HashMap<String, ImageRecord> = ns
            .list_images()
            .await?
            .into_iter()
            .map(|r| (r.name.clone(), r))
            .collect();
        for registration in plan {
            if self.is_registered(ns, registration, &existing).await? {
                report.unchanged += 1;
                continue;
            }
            match self.register(ns, registration, &existing).await {
                Ok(()) => {
                    tracing::info!(namespace = ns.namespace(), image = %registration.name,
                        archive = %registration.archive.display(), "image registered");
                    report.registered.push(registration.name.clone());
                }
                Err(e) if e.is_unavailable() => return Err(e),
                Err(e) => {
                    tracing::warn!(namespace = ns.namespace(), image = %registration.name,
                        archive = %registration.archive.display(), error = %e, "image not registered");
                    report
                        .failed
                        .push((registration.name.clone(), e.to_string()));
                }
            }
        }
        let wanted: HashSet<&str> = plan
            .iter()
            .flat_map(|r| r.records.iter().map(String::as_str))
            .collect();
        for record in existing.values() {
            let Some(archive) = record.labels.get(AIRGAP_ARCHIVE) else {
                continue;
            };
            if wanted.contains(record.name.as_str()) || !in_scope(Path::new(archive), scope) {
                continue;
            }
            ns.delete_image(&record.name).await?;
            tracing::info!(namespace = ns.namespace(), image = %record.name, %archive,
                "image unregistered: no archive holds it any more");
            report.removed.push(record.name.clone());
        }
        Ok(report)
    }

    /// Every record points at the target with our labels, and containerd
    /// still has the top layer's snapshot.
    async fn is_registered(
        &self,
        ns: Namespaced<'_>,
        registration: &Registration,
        existing: &HashMap<String, ImageRecord>,
    ) -> Result<bool, ImportError> {
        let records_right = registration.records.iter().all(|name| {
            existing.get(name).is_some_and(|r| {
                r.target.digest == registration.target.digest
                    && registration
                        .labels
                        .iter()
                        .all(|(k, v)| r.labels.get(k) == Some(v))
            })
        });
        if !records_right {
            return Ok(false);
        }
        let Some(top) = registration.chain.last() else {
            return Ok(false);
        };
        ns.snapshot_exists(&self.opts.snapshotter, &top.to_string())
            .await
    }

    /// Registers one image, under a lease that keeps what is written until
    /// the image records refer to it.
    async fn register(
        &self,
        ns: Namespaced<'_>,
        registration: &Registration,
        existing: &HashMap<String, ImageRecord>,
    ) -> Result<(), ImportError> {
        let lease = ns.create_lease().await?;
        let result = self
            .register_leased(ns.with_lease(&lease), registration, existing)
            .await;
        if let Err(e) = ns.delete_lease(&lease).await {
            tracing::warn!(%lease, error = %e, "cannot delete the registration lease (it expires by itself)");
        }
        result
    }

    async fn register_leased(
        &self,
        ns: Namespaced<'_>,
        registration: &Registration,
        existing: &HashMap<String, ImageRecord>,
    ) -> Result<(), ImportError> {
        for doc in &registration.documents {
            match ns.content_labels(&doc.digest).await? {
                None => {
                    ns.write_content(&doc.digest, doc.data.clone(), doc.labels.clone())
                        .await?
                }
                Some(have) => {
                    // Unreferenced content (an earlier pass that failed) may
                    // be collected any moment: the lease holds it now.
                    ns.lease_resource("content", &doc.digest.to_string())
                        .await?;
                    if doc.labels.iter().any(|(k, v)| have.get(k) != Some(v)) {
                        ns.label_content(&doc.digest, doc.labels.clone()).await?
                    }
                }
            }
        }
        self.register_layers(ns, registration).await?;
        for name in &registration.records {
            let record = ImageRecord {
                name: name.clone(),
                target: registration.target.clone(),
                labels: registration.labels.clone(),
            };
            if ns.create_image(&record).await? {
                continue;
            }
            match existing.get(name) {
                // Not ours and pointing elsewhere: someone pulled or
                // imported that name; theirs stays.
                Some(other)
                    if !other.labels.contains_key(AIRGAP_ARCHIVE)
                        && other.target.digest != registration.target.digest =>
                {
                    tracing::warn!(namespace = ns.namespace(), image = %name, theirs = %other.target.digest,
                        archived = %registration.target.digest,
                        "an image record of that name exists and was not made from an archive: left alone");
                }
                _ => ns.update_image(&record).await?,
            }
        }
        Ok(())
    }

    /// containerd's unpack, layer by layer: each layer's snapshot committed
    /// on the one below, named by its chain ID.
    async fn register_layers(
        &self,
        ns: Namespaced<'_>,
        registration: &Registration,
    ) -> Result<(), ImportError> {
        let snapshotter = &self.opts.snapshotter;
        let mut parent = String::new();
        for chain_id in &registration.chain {
            let name = chain_id.to_string();
            if ns.snapshot_exists(snapshotter, &name).await? {
                ns.lease_resource(&format!("snapshots/{snapshotter}"), &name)
                    .await?;
            } else {
                let key = format!(
                    "airgap-import-{}-{} {name}",
                    unix_nanos(),
                    std::process::id()
                );
                let labels = HashMap::from([
                    (TARGET_SNAPSHOT_REF.to_string(), name.clone()),
                    (
                        AIRGAP_IMPORT.to_string(),
                        self.opts.mode.as_str().to_string(),
                    ),
                ]);
                let deadline = std::time::Instant::now() + self.opts.declined_wait;
                let mut prepared = ns
                    .prepare_target(snapshotter, &key, &parent, labels.clone())
                    .await?;
                while prepared == Prepared::Declined && std::time::Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    prepared = ns
                        .prepare_target(snapshotter, &key, &parent, labels.clone())
                        .await?;
                }
                if prepared == Prepared::Declined {
                    return Err(ImportError::Declined {
                        image: registration.name.clone(),
                        archive: registration.archive.clone(),
                        chain_id: *chain_id,
                        snapshotter: snapshotter.clone(),
                    });
                }
            }
            parent = name;
        }
        Ok(())
    }

    /// Connects to containerd (waiting for it, with backoff, logged once)
    /// and keeps the catalog registered: a pass at start, after every change
    /// of the archives and every [`REPASS`], until `shutdown` turns true.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut changes = self.catalog.subscribe();
        let mut waiting_logged = false;
        let mut backoff = Duration::from_millis(200);
        let wait = |backoff: &mut Duration| {
            let sleep = tokio::time::sleep(*backoff);
            *backoff = (*backoff * 2).min(Duration::from_secs(10));
            sleep
        };
        while !*shutdown.borrow() {
            let client = match Containerd::connect(&self.opts.address).await {
                Ok(c) => c,
                Err(e) => {
                    if !waiting_logged {
                        tracing::info!(error = %e, "waiting for containerd to register the archived images");
                        waiting_logged = true;
                    }
                    tokio::select! {
                        _ = wait(&mut backoff) => {}
                        _ = shutdown.changed() => {}
                    }
                    continue;
                }
            };
            if !waiting_logged {
                tracing::info!(address = %client.address().display(), namespaces = ?self.opts.namespaces,
                    mode = self.opts.mode.as_str(), "registering archived images in containerd");
            }
            loop {
                changes.borrow_and_update();
                match self.pass(&client).await {
                    Ok(report) => {
                        log_report(&report);
                        backoff = Duration::from_millis(200);
                        waiting_logged = false;
                    }
                    Err(e) if e.is_unavailable() => {
                        // containerd restarting, or not connected to this
                        // snapshotter yet: again after a while.
                        if !waiting_logged {
                            tracing::info!(error = %e, "containerd or its connection to this snapshotter is not up; retrying");
                            waiting_logged = true;
                        }
                        tokio::select! {
                            _ = wait(&mut backoff) => {}
                            _ = shutdown.changed() => return,
                        }
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "registration pass failed; retrying later")
                    }
                }
                tokio::select! {
                    _ = changes.changed() => {}
                    _ = tokio::time::sleep(REPASS) => {}
                    _ = shutdown.changed() => return,
                }
            }
        }
    }
}

/// A pass this often even when the archives did not change: what containerd
/// lost meanwhile (a restart onto an older state, an image deleted by hand)
/// comes back.
const REPASS: Duration = Duration::from_secs(60);

fn log_report(report: &ImportReport) {
    if !report.pulled.is_empty() {
        tracing::info!(
            pulled = report.pulled.len(),
            "listed images pulled through containerd"
        );
    }
    for ns in &report.namespaces {
        if !ns.registered.is_empty() || !ns.removed.is_empty() || !ns.failed.is_empty() {
            tracing::info!(namespace = %ns.namespace, registered = ns.registered.len(),
                unchanged = ns.unchanged, removed = ns.removed.len(), failed = ns.failed.len(),
                "registration pass");
        }
    }
}

/// Whether `archive` is one of the watched paths or inside one of them.
fn in_scope(archive: &Path, dirs: &[PathBuf]) -> bool {
    dirs.iter()
        .any(|d| archive == d || archive.parent() == Some(d.as_path()))
}

fn unix_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos()
}

/// `t` after the Unix epoch as RFC 3339 (containerd's `gc.expire` format).
pub(crate) fn rfc3339(t: Duration) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + t).to_string()
}

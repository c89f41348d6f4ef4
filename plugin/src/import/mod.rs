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
//! It only ever changes or deletes records it created (`records.rs`): a
//! record kubelet pulled, or anyone made, is never touched, whatever its
//! name and target.
//!
//! Files: `plan.rs` turns the catalog into [`plan::Registration`]s;
//! `client.rs` holds the calls into containerd; `records.rs` decides which
//! records are the importer's and reconciles a namespace; `register.rs`
//! writes one image's documents, layers and records; `listed.rs` pulls what
//! the image lists name and no archive holds; this file runs passes and the
//! background loop.

pub mod client;
pub mod plan;

mod listed;
mod records;
mod register;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;

use crate::catalog::Catalog;
pub use crate::config::ImportMode;
use client::{Containerd, ContainerdApi, Scope};
use plan::PlanError;

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
    /// Image records of an archived image's names that the importer did
    /// not create (pulled, or made by anyone else): left as they are.
    pub left_alone: Vec<String>,
    /// Images that could not be registered, and why.
    pub failed: Vec<(String, String)>,
}

/// What one pass did.
#[derive(Debug, Default)]
pub struct ImportReport {
    pub namespaces: Vec<NamespaceReport>,
    /// Archived images not registered for this node, and why.
    pub skipped: Vec<(String, PlanError)>,
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
    pull_failures: Mutex<HashMap<String, Instant>>,
    /// Records left alone that were logged already (namespace, name,
    /// target digest): logged once, not every pass.
    left_alone_logged: Mutex<HashSet<(String, String, String)>>,
    /// Incomplete images skipped, with the reason last logged: logged when
    /// it changes, not every pass.
    incomplete_logged: Mutex<HashMap<String, String>>,
    /// Told whether containerd answered (the daemon's `/readyz`).
    containerd: Option<Arc<crate::health::ContainerdState>>,
    /// `[verify]`: images without a valid signature are not registered
    /// under `enforce`.
    trust: Arc<crate::trust::Trust>,
}

/// Passes started in this process: with the process id, they make the
/// content ingest refs of a pass unique (see [`ingest_ref`]).
static PASSES: AtomicU64 = AtomicU64::new(0);

/// The ingest ref under which a pass writes `digest` into containerd's
/// content store. containerd lets one writer hold a ref at a time and
/// answers the next one "ref locked" (Unavailable): the daemon's background
/// pass and an `import` command, or two passes of one process, must never
/// share one.
fn ingest_ref(pass: u64, digest: &crate::digest::Digest) -> String {
    format!(
        "airgap-import-{}-{pass}-{}",
        std::process::id(),
        digest.hex()
    )
}

impl Importer {
    pub fn new(catalog: Arc<Catalog>, opts: ImportOptions) -> Self {
        Importer {
            catalog,
            opts,
            pull_failures: Default::default(),
            left_alone_logged: Default::default(),
            incomplete_logged: Default::default(),
            containerd: None,
            trust: crate::trust::Trust::off(),
        }
    }

    /// Registers only what `trust` admits.
    pub fn with_trust(mut self, trust: Arc<crate::trust::Trust>) -> Self {
        self.trust = trust;
        self
    }

    /// Tells `state` whether containerd answered, as the background loop
    /// connects and passes.
    pub fn with_containerd_state(mut self, state: Arc<crate::health::ContainerdState>) -> Self {
        self.containerd = Some(state);
        self
    }

    fn containerd_reached(&self, result: Result<(), &dyn std::fmt::Display>) {
        if let Some(state) = &self.containerd {
            match result {
                Ok(()) => state.reachable(),
                Err(why) => state.unreachable(why),
            }
        }
    }

    pub fn options(&self) -> &ImportOptions {
        &self.opts
    }

    /// One registration pass over every namespace, counted in the
    /// `airgap_import_*` metrics.
    pub async fn pass<C: ContainerdApi>(&self, client: &C) -> Result<ImportReport, ImportError> {
        let result = self.pass_uncounted(client).await;
        let m = crate::metrics::global();
        match &result {
            Ok(report) => {
                m.import_pass("ok");
                let ns = &report.namespaces;
                m.import_registered
                    .inc_by(ns.iter().map(|n| n.registered.len() as u64).sum());
                m.import_removed
                    .inc_by(ns.iter().map(|n| n.removed.len() as u64).sum());
                m.import_failures.inc_by(report.failed() as u64);
            }
            Err(e) if e.is_unavailable() => m.import_pass("unavailable"),
            Err(_) => m.import_pass("failed"),
        }
        result
    }

    async fn pass_uncounted<C: ContainerdApi>(
        &self,
        client: &C,
    ) -> Result<ImportReport, ImportError> {
        let pass = PASSES.fetch_add(1, Ordering::Relaxed);
        let catalog = self.catalog.clone();
        let trust = self.trust.clone();
        let (platform, snapshotter) = (self.opts.platform.clone(), self.opts.snapshotter.clone());
        // Blocking: waits for the first scan of the archives.
        let (plan, skipped) = tokio::task::spawn_blocking(move || {
            plan::plan(&catalog, &trust, &platform, &snapshotter)
        })
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
        self.log_incomplete(&skipped);
        let mut report = ImportReport {
            skipped,
            ..Default::default()
        };
        for namespace in &self.opts.namespaces {
            report.namespaces.push(
                self.reconcile(client, Scope::new(namespace), pass, &plan, &scope)
                    .await?,
            );
        }
        if self
            .opts
            .namespaces
            .iter()
            .any(|n| n == listed::CRI_NAMESPACE)
        {
            self.pull_listed(client, &mut report).await?;
        }
        Ok(report)
    }

    /// Logs each image skipped as incomplete (blobs in no archive: a delta
    /// without its base) once, and again when the reason changes.
    fn log_incomplete(&self, skipped: &[(String, PlanError)]) {
        let now: HashMap<String, String> = skipped
            .iter()
            .filter_map(|(name, why)| match why {
                PlanError::Incomplete(reason) => Some((name.clone(), reason.clone())),
                _ => None,
            })
            .collect();
        let mut logged = self.incomplete_logged.lock().unwrap();
        for (image, reason) in &now {
            if logged.get(image) != Some(reason) {
                tracing::warn!(%image, %reason, "not registered");
            }
        }
        *logged = now;
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
                    self.containerd_reached(Err(&e));
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
                        self.containerd_reached(Ok(()));
                        log_report(&report);
                        backoff = Duration::from_millis(200);
                        waiting_logged = false;
                    }
                    Err(e) if e.is_unavailable() => {
                        // containerd restarting, or not connected to this
                        // snapshotter yet: again after a while.
                        self.containerd_reached(Err(&e));
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
                        // containerd answered, with an error.
                        self.containerd_reached(Ok(()));
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
                unchanged = ns.unchanged, removed = ns.removed.len(),
                left_alone = ns.left_alone.len(), failed = ns.failed.len(),
                "registration pass");
        }
    }
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

//! Liveness and readiness, answered on the metrics listener: `/healthz`
//! (the process answers) and `/readyz` (it can do its job: the archives
//! were scanned at least once, and, when registration is on, containerd
//! answered the importer). Both are read at request time from what the
//! catalog and the importer already know; nothing is probed here.
//!
//! Readiness is not systemd's `READY=1`: that is sent once the sockets are
//! bound, because containerd is ordered after this daemon and so cannot be
//! reachable before it (see `commands/serve.rs`).

use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use crate::catalog::Catalog;

/// Why the daemon is not ready: one line for `/readyz`'s 503.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotReady {
    #[error("the archives have not been scanned yet")]
    Scanning,
    #[error("shutting down")]
    Stopping,
    #[error("containerd at {} is not reachable: {reason}", address.display())]
    Containerd { address: PathBuf, reason: String },
}

/// What the importer last learnt of containerd: reachable, or why not.
pub struct ContainerdState {
    address: PathBuf,
    /// `None` when the last attempt reached containerd.
    failure: Mutex<Option<String>>,
}

impl fmt::Debug for ContainerdState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ContainerdState")
            .field("address", &self.address)
            .field("failure", &self.failure.lock().unwrap())
            .finish()
    }
}

impl ContainerdState {
    /// Not reached yet (the importer has not connected).
    pub fn new(address: PathBuf) -> Arc<ContainerdState> {
        Arc::new(ContainerdState {
            address,
            failure: Mutex::new(Some("not connected yet".into())),
        })
    }

    /// A pass went through.
    pub fn reachable(&self) {
        *self.failure.lock().unwrap() = None;
    }

    /// Connecting or a call failed with containerd unavailable.
    pub fn unreachable(&self, reason: impl fmt::Display) {
        *self.failure.lock().unwrap() = Some(reason.to_string());
    }

    /// `Ok` when the last attempt reached containerd.
    pub fn check(&self) -> Result<(), NotReady> {
        match &*self.failure.lock().unwrap() {
            None => Ok(()),
            Some(reason) => Err(NotReady::Containerd {
                address: self.address.clone(),
                reason: reason.clone(),
            }),
        }
    }
}

/// The daemon's health, as `/healthz`, `/readyz` and the `airgap_ready`
/// gauge see it.
#[derive(Clone)]
pub struct Health {
    catalog: Arc<Catalog>,
    /// Set when registration is on: containerd must be reachable.
    containerd: Option<Arc<ContainerdState>>,
    /// The daemon's root and its byte budgets, for the disk gauges.
    disk: Option<Disk>,
}

/// The daemon's root and the budgets it was given (`cache_bytes`,
/// `layer_store_bytes`).
#[derive(Debug, Clone)]
pub struct Disk {
    pub root: PathBuf,
    pub cache_budget: u64,
    pub layer_store_budget: u64,
}

impl fmt::Debug for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Health")
            .field("containerd", &self.containerd)
            .finish_non_exhaustive()
    }
}

impl Health {
    pub fn new(catalog: Arc<Catalog>) -> Health {
        Health {
            catalog,
            containerd: None,
            disk: None,
        }
    }

    /// The metrics also report the filesystem of `disk.root` and the
    /// budgets.
    pub fn with_disk(mut self, disk: Disk) -> Health {
        self.disk = Some(disk);
        self
    }

    pub fn disk(&self) -> Option<&Disk> {
        self.disk.as_ref()
    }

    /// Readiness also needs containerd reachable, as `state` tells.
    pub fn with_containerd(mut self, state: Arc<ContainerdState>) -> Health {
        self.containerd = Some(state);
        self
    }

    pub fn catalog(&self) -> &Arc<Catalog> {
        &self.catalog
    }

    /// `Ok` when ready, else the first reason it is not.
    pub fn ready(&self) -> Result<(), NotReady> {
        if self.catalog.stopping() {
            return Err(NotReady::Stopping);
        }
        if !self.catalog.first_scan_done() {
            return Err(NotReady::Scanning);
        }
        match &self.containerd {
            Some(state) => state.check(),
            None => Ok(()),
        }
    }

    /// Whether containerd was reachable, when registration is on.
    pub fn containerd_reachable(&self) -> Option<bool> {
        self.containerd.as_ref().map(|s| s.check().is_ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::CatalogOptions;

    #[test]
    fn ready_once_scanned_and_containerd_reached() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = Catalog::empty(CatalogOptions {
            dirs: vec![dir.path().to_path_buf()],
            ..Default::default()
        })
        .unwrap();
        let state = ContainerdState::new("/run/c.sock".into());
        let health = Health::new(catalog.clone()).with_containerd(state.clone());
        assert_eq!(health.ready(), Err(NotReady::Scanning));
        catalog.rescan();
        assert!(catalog.first_scan_done());
        let err = health.ready().unwrap_err();
        assert!(
            matches!(&err, NotReady::Containerd { reason, .. } if reason == "not connected yet"),
            "{err:?}"
        );
        assert!(err.to_string().contains("/run/c.sock"), "{err}");
        state.reachable();
        assert_eq!(health.ready(), Ok(()));
        assert_eq!(health.containerd_reachable(), Some(true));
        state.unreachable("connection refused");
        assert!(health.ready().unwrap_err().to_string().contains("refused"));
        // Without registration containerd is not asked about.
        assert_eq!(Health::new(catalog.clone()).ready(), Ok(()));
        catalog.shutdown();
        assert_eq!(Health::new(catalog).ready(), Err(NotReady::Stopping));
    }
}

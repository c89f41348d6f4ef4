//! The `[[cluster_listener]]` tables: listeners that serve the archives to
//! the other nodes of the cluster (see `mirror::cluster`), checked field by
//! field.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::ConfigError;

/// Default of [`ClusterListenerConfig::requests_per_second`].
pub const DEFAULT_CLUSTER_RPS: u32 = 100;
/// Default of [`ClusterListenerConfig::burst`].
pub const DEFAULT_CLUSTER_BURST: u32 = 200;
/// Default of [`ClusterListenerConfig::max_concurrent_requests`].
pub const DEFAULT_CLUSTER_CONCURRENCY: u32 = 32;

/// One `[[cluster_listener]]` table: a read-only mirror listener for the
/// other nodes, with TLS and client authentication.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterListenerConfig {
    /// `host:port` to listen on, e.g. `0.0.0.0:5443`.
    pub listen: SocketAddr,
    /// PEM certificate chain served (the leaf first); reloaded when the
    /// file changes.
    #[serde(default)]
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key of `tls_cert_file`; reloaded with it.
    #[serde(default)]
    pub tls_key_file: Option<PathBuf>,
    /// PEM CA certificates that sign client certificates (mutual TLS);
    /// reloaded when the file changes.
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
    /// Bearer tokens, one `NAME:TOKEN` a line (`#` comments); a token is
    /// also accepted as the basic-auth password of NAME. Reloaded on change.
    #[serde(default)]
    pub tokens_file: Option<PathBuf>,
    /// htpasswd file of bcrypt hashes (`htpasswd -B`) for basic auth;
    /// reloaded on change.
    #[serde(default)]
    pub htpasswd_file: Option<PathBuf>,
    /// Serve a non-loopback address without TLS or without client
    /// authentication (warned at every start).
    #[serde(default)]
    pub insecure: bool,
    /// Requests a client may make per second on average (0: no limit).
    #[serde(default = "default_rps")]
    pub requests_per_second: u32,
    /// Requests a client may make at once above that rate.
    #[serde(default = "default_burst")]
    pub burst: u32,
    /// Requests of a client in flight at once, blob transfers included (0:
    /// no limit).
    #[serde(default = "default_concurrency")]
    pub max_concurrent_requests: u32,
}

fn default_rps() -> u32 {
    DEFAULT_CLUSTER_RPS
}
fn default_burst() -> u32 {
    DEFAULT_CLUSTER_BURST
}
fn default_concurrency() -> u32 {
    DEFAULT_CLUSTER_CONCURRENCY
}

impl ClusterListenerConfig {
    /// A listener on `listen` with no TLS, no authentication and the
    /// default limits (tests; a loopback address needs nothing more).
    pub fn plain(listen: SocketAddr) -> ClusterListenerConfig {
        ClusterListenerConfig {
            listen,
            tls_cert_file: None,
            tls_key_file: None,
            client_ca_file: None,
            tokens_file: None,
            htpasswd_file: None,
            insecure: false,
            requests_per_second: DEFAULT_CLUSTER_RPS,
            burst: DEFAULT_CLUSTER_BURST,
            max_concurrent_requests: DEFAULT_CLUSTER_CONCURRENCY,
        }
    }

    /// TLS is on.
    pub fn tls(&self) -> bool {
        self.tls_cert_file.is_some()
    }

    /// Some client authentication is configured.
    pub fn authenticates(&self) -> bool {
        self.client_ca_file.is_some() || self.tokens_file.is_some() || self.htpasswd_file.is_some()
    }

    /// Checks the table `number` (from 1); the error names it and the field.
    pub(super) fn validate(&self, number: usize) -> Result<(), ConfigError> {
        let invalid = |field, reason: String| {
            Err(ConfigError::Invalid {
                field,
                reason: format!("[[cluster_listener]] #{number} ({}): {reason}", self.listen),
            })
        };
        if self.tls_cert_file.is_some() != self.tls_key_file.is_some() {
            return invalid(
                "cluster_listener.tls_key_file",
                "set both tls_cert_file and tls_key_file, or neither".into(),
            );
        }
        if self.client_ca_file.is_some() && !self.tls() {
            return invalid(
                "cluster_listener.client_ca_file",
                "client certificates need TLS: set tls_cert_file and tls_key_file".into(),
            );
        }
        if self.requests_per_second > 0 && self.burst == 0 {
            return invalid(
                "cluster_listener.burst",
                "0 admits no request: set at least 1".into(),
            );
        }
        if !self.listen.ip().is_loopback() && !self.insecure {
            if !self.tls() {
                return invalid(
                    "cluster_listener.tls_cert_file",
                    format!(
                        "{} is not a loopback address and there is no TLS: set tls_cert_file and \
                         tls_key_file (or insecure = true to serve in the clear)",
                        self.listen
                    ),
                );
            }
            if !self.authenticates() {
                return invalid(
                    "cluster_listener.client_ca_file",
                    format!(
                        "{} is not a loopback address and no client authentication is set: set \
                         client_ca_file, tokens_file or htpasswd_file (or insecure = true to serve \
                         every archived image to whoever reaches it)",
                        self.listen
                    ),
                );
            }
        }
        Ok(())
    }
}

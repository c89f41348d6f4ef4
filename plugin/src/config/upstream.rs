//! The `[[upstream]]` tables: the registries the mirror (and `pack`) fetch
//! what the archives lack from, checked field by field.

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::ConfigError;

/// One `[[upstream]]` table: where images of `registry` are fetched from
/// when the archives lack them.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// The registry the image names use (containerd's `?ns=`), such as
    /// `docker.io` or `registry.k8s.io`; `*` matches every registry.
    pub registry: String,
    /// Base URL of the registry to fetch from, `https://host[:port]` (or
    /// `http://` for a plain-HTTP registry).
    pub endpoint: String,
    /// Prepended to the repository path: with `dockerhub`,
    /// `docker.io/library/nginx` is fetched as `<endpoint>/v2/dockerhub/library/nginx`.
    #[serde(default)]
    pub path_prefix: Option<String>,
    /// User for basic auth and for the token service.
    #[serde(default)]
    pub username: Option<String>,
    /// Password (or token) of `username`; never logged. Prefer `password_file`.
    #[serde(default, skip_serializing)]
    pub password: Option<String>,
    /// File holding the password (trailing newline ignored), read at start.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// PEM file of CA certificates trusted for this endpoint, in addition to
    /// the system's.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Accept any TLS certificate from this endpoint (tests only).
    #[serde(default)]
    pub insecure_skip_verify: bool,
    /// PEM client certificate presented to this endpoint (mutual TLS, e.g.
    /// another node's `[[cluster_listener]]`), with `client_key_file`.
    #[serde(default)]
    pub client_cert_file: Option<PathBuf>,
    /// PEM private key of `client_cert_file`.
    #[serde(default)]
    pub client_key_file: Option<PathBuf>,
    /// File holding a bearer token sent with every request
    /// (`Authorization: Bearer`), read at start: another node's
    /// `[[cluster_listener]]` tokens. Not with `username`.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
}

impl fmt::Debug for UpstreamConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamConfig")
            .field("registry", &self.registry)
            .field("endpoint", &self.endpoint)
            .field("path_prefix", &self.path_prefix)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("password_file", &self.password_file)
            .field("ca_file", &self.ca_file)
            .field("insecure_skip_verify", &self.insecure_skip_verify)
            .field("client_cert_file", &self.client_cert_file)
            .field("client_key_file", &self.client_key_file)
            .field("token_file", &self.token_file)
            .finish()
    }
}

impl UpstreamConfig {
    /// A table for `endpoint` without credentials, prefix or CA of its own:
    /// `pack --from https://...` and tests.
    pub fn anonymous(registry: &str, endpoint: &str) -> UpstreamConfig {
        UpstreamConfig {
            registry: registry.to_string(),
            endpoint: endpoint.to_string(),
            path_prefix: None,
            username: None,
            password: None,
            password_file: None,
            ca_file: None,
            insecure_skip_verify: false,
            client_cert_file: None,
            client_key_file: None,
            token_file: None,
        }
    }

    /// Checks the table `number` (from 1); the error names it and the field.
    pub(super) fn validate(&self, number: usize) -> Result<(), ConfigError> {
        let invalid = |field, reason: String| {
            Err(ConfigError::Invalid {
                field,
                reason: format!("[[upstream]] #{number} ({}): {reason}", self.registry),
            })
        };
        if self.registry.is_empty() {
            return invalid("upstream.registry", "is empty".into());
        }
        if self.registry != "*" && self.registry.contains(['/', ' ']) {
            return invalid(
                "upstream.registry",
                format!(
                    "{:?} is not a registry host (e.g. docker.io) or *",
                    self.registry
                ),
            );
        }
        let rest = self
            .endpoint
            .strip_prefix("https://")
            .or_else(|| self.endpoint.strip_prefix("http://"));
        match rest {
            Some(host)
                if !host.trim_end_matches('/').is_empty()
                    && !host.trim_end_matches('/').contains('/') => {}
            _ => {
                return invalid(
                    "upstream.endpoint",
                    format!("{:?} is not http(s)://host[:port]", self.endpoint),
                )
            }
        }
        if let Some(p) = &self.path_prefix {
            if p.trim_matches('/').is_empty() || p.contains("..") || p.contains(char::is_whitespace)
            {
                return invalid(
                    "upstream.path_prefix",
                    format!("{p:?} is not a repository path prefix"),
                );
            }
        }
        if self.password.is_some() && self.password_file.is_some() {
            return invalid(
                "upstream.password",
                "set either password or password_file, not both".into(),
            );
        }
        if (self.password.is_some() || self.password_file.is_some()) && self.username.is_none() {
            return invalid("upstream.username", "a password needs a username".into());
        }
        if self.client_cert_file.is_some() != self.client_key_file.is_some() {
            return invalid(
                "upstream.client_key_file",
                "set both client_cert_file and client_key_file, or neither".into(),
            );
        }
        if self.token_file.is_some() && self.username.is_some() {
            return invalid(
                "upstream.token_file",
                "set either token_file or username, not both".into(),
            );
        }
        Ok(())
    }

    /// The bearer token of `token_file` (trailing newline removed).
    pub fn load_token(&self) -> Result<Option<String>, ConfigError> {
        let Some(path) = &self.token_file else {
            return Ok(None);
        };
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.clone(),
            source,
        })?;
        let token = text.trim();
        if token.is_empty() || token.contains(char::is_whitespace) {
            return Err(ConfigError::Invalid {
                field: "upstream.token_file",
                reason: format!("{} holds no single token", path.display()),
            });
        }
        Ok(Some(token.to_string()))
    }

    /// The password, from `password` or `password_file` (trailing newline
    /// removed).
    pub fn load_password(&self) -> Result<Option<String>, ConfigError> {
        if let Some(p) = &self.password {
            return Ok(Some(p.clone()));
        }
        let Some(path) = &self.password_file else {
            return Ok(None);
        };
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.clone(),
            source,
        })?;
        Ok(Some(text.trim_end_matches(['\n', '\r']).to_string()))
    }
}

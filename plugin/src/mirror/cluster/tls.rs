//! The cluster listener's TLS: certificate, key and client CA read from
//! their files, and read again when any of them changes (checked at every
//! new connection: a `stat` of each file), so a rotated certificate is
//! served from the next handshake on without a restart. A set of files
//! that does not load (a key replaced before its certificate) keeps the
//! previous configuration, logged once per change.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

/// What identifies a file's version: size, modification and change time,
/// inode (a rename over it changes the inode).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Stamp(Option<(u64, SystemTime, i64, u64)>);

fn stamp(path: &Path) -> Stamp {
    use std::os::unix::fs::MetadataExt;
    Stamp(std::fs::metadata(path).ok().map(|m| {
        (
            m.len(),
            m.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            m.ctime_nsec() + m.ctime() * 1_000_000_000,
            m.ino(),
        )
    }))
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {reason}", path.display())]
    Bad { path: PathBuf, reason: String },
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// The files of one listener's TLS.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
    /// Client certificates are optional at the handshake (another way to
    /// authenticate is configured); without it they are required.
    pub client_cert_optional: bool,
}

impl TlsFiles {
    fn paths(&self) -> Vec<&Path> {
        let mut v = vec![self.cert.as_path(), self.key.as_path()];
        if let Some(ca) = &self.client_ca {
            v.push(ca);
        }
        v
    }

    fn stamps(&self) -> Vec<Stamp> {
        self.paths().into_iter().map(stamp).collect()
    }

    /// Reads the files into a server configuration.
    pub fn load(&self) -> Result<ServerConfig, TlsError> {
        let certs = read_certs(&self.cert)?;
        let key = PrivateKeyDer::from_pem_file(&self.key).map_err(|e| pem_error(&self.key, e))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let builder = match &self.client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let mut roots = RootCertStore::empty();
                for c in read_certs(ca)? {
                    roots.add(c).map_err(|e| TlsError::Bad {
                        path: ca.clone(),
                        reason: format!("not a CA certificate: {e}"),
                    })?;
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
                let verifier = if self.client_cert_optional {
                    verifier.allow_unauthenticated()
                } else {
                    verifier
                };
                let verifier = verifier.build().map_err(|e| TlsError::Bad {
                    path: ca.clone(),
                    reason: e.to_string(),
                })?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder
            .with_single_cert(certs, key)
            .map_err(|e| TlsError::Bad {
                path: self.key.clone(),
                reason: format!("does not go with {}: {e}", self.cert.display()),
            })?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(config)
    }
}

fn pem_error(path: &Path, e: rustls_pki_types::pem::Error) -> TlsError {
    match e {
        rustls_pki_types::pem::Error::Io(source) => TlsError::Read {
            path: path.to_path_buf(),
            source,
        },
        e => TlsError::Bad {
            path: path.to_path_buf(),
            reason: format!("no PEM private key or certificate in it ({e})"),
        },
    }
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_error(path, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| pem_error(path, e))?;
    if certs.is_empty() {
        return Err(TlsError::Bad {
            path: path.to_path_buf(),
            reason: "no PEM certificate in it".into(),
        });
    }
    Ok(certs)
}

/// A TLS acceptor that follows its files.
pub struct ReloadingTls {
    files: TlsFiles,
    state: Mutex<State>,
}

struct State {
    stamps: Vec<Stamp>,
    acceptor: TlsAcceptor,
    /// The stamps of a set that failed to load (logged once).
    failed: Option<Vec<Stamp>>,
}

impl ReloadingTls {
    /// Loads the files now: a listener whose files do not load does not
    /// start.
    pub fn new(files: TlsFiles) -> Result<ReloadingTls, TlsError> {
        let stamps = files.stamps();
        let config = files.load()?;
        Ok(ReloadingTls {
            files,
            state: Mutex::new(State {
                stamps,
                acceptor: TlsAcceptor::from(Arc::new(config)),
                failed: None,
            }),
        })
    }

    /// The acceptor for a new connection: reloaded first if a file changed.
    pub fn acceptor(&self) -> TlsAcceptor {
        let stamps = self.files.stamps();
        let mut state = self.state.lock().unwrap();
        if stamps != state.stamps && state.failed.as_ref() != Some(&stamps) {
            match self.files.load() {
                Ok(config) => {
                    tracing::info!(cert = %self.files.cert.display(), "cluster listener: TLS files changed; new connections use them");
                    state.acceptor = TlsAcceptor::from(Arc::new(config));
                    state.stamps = stamps;
                    state.failed = None;
                }
                Err(e) => {
                    tracing::error!(error = %e, "cluster listener: changed TLS files do not load; still serving the previous ones");
                    state.failed = Some(stamps);
                }
            }
        }
        state.acceptor.clone()
    }
}

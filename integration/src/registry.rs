//! A real `docker-registry` (distribution 2.8) on 127.0.0.1, storage and
//! access log in a temporary directory. The access log is how a test proves
//! which blobs containerd downloaded.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};

use crate::process::{self, Proc};
use crate::TestDir;

/// A running registry, stopped by pid on drop.
pub struct Registry {
    proc: Option<Proc>,
    port: u16,
    log: PathBuf,
    /// htpasswd credentials (user, password), when it asks for them.
    creds: Option<(String, String)>,
    dir: TestDir,
}

/// One request line of the access log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessLine {
    pub method: String,
    pub path: String,
    pub status: u16,
}

impl Registry {
    /// Starts `docker-registry serve` on a free loopback port.
    pub fn start() -> Result<Self> {
        Self::start_inner(None)
    }

    /// Starts `docker-registry serve` behind htpasswd basic auth (a file
    /// written with `htpasswd -Bbc`) for `user`:`password`.
    pub fn start_with_auth(user: &str, password: &str) -> Result<Self> {
        Self::start_inner(Some((user.to_string(), password.to_string())))
    }

    fn start_inner(creds: Option<(String, String)>) -> Result<Self> {
        let dir = TestDir::new("registry")?;
        let port = crate::free_port()?;
        let storage = dir.path().join("storage");
        std::fs::create_dir_all(&storage)?;
        let mut auth = String::new();
        if let Some((user, password)) = &creds {
            let htpasswd = dir.path().join("htpasswd");
            process::run(
                Command::new("htpasswd")
                    .arg("-Bbc")
                    .arg(&htpasswd)
                    .args([user, password]),
                Duration::from_secs(30),
            )?;
            auth = format!(
                "auth:\n  htpasswd:\n    realm: airgap-test\n    path: {}\n",
                htpasswd.display()
            );
        }
        let want = if creds.is_some() { 401 } else { 200 };
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\n\
                 log:\n  level: warn\n  accesslog:\n    disabled: false\n\
                 storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
                 http:\n  addr: 127.0.0.1:{port}\n{auth}",
                storage.display()
            ),
        )
        .with_context(|| format!("writing {}", config.display()))?;
        let log = dir.path().join("registry.log");
        let mut proc = Proc::spawn(
            "docker-registry",
            Command::new("docker-registry").arg("serve").arg(&config),
            &log,
        )?;
        process::wait_until("docker-registry to answer", Duration::from_secs(30), || {
            proc.check_running()?;
            Ok(http_status(port, "/v2/").ok() == Some(want))
        })?;
        Ok(Self {
            proc: Some(proc),
            port,
            log,
            creds,
            dir,
        })
    }

    /// `127.0.0.1:PORT`
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Pushes the image tagged `tag` in an OCI archive to `REPO` (for
    /// example `library/busybox:1`) with skopeo; returns the full reference.
    pub fn push_oci_archive(&self, archive: &Path, tag: &str, repo: &str) -> Result<String> {
        let reference = format!("{}/{repo}", self.host());
        let mut cmd = Command::new("skopeo");
        cmd.args(["copy", "--quiet", "--dest-tls-verify=false"]);
        if let Some((user, password)) = &self.creds {
            cmd.arg(format!("--dest-creds={user}:{password}"));
        }
        process::run(
            cmd.arg(format!("oci-archive:{}:{tag}", archive.display()))
                .arg(format!("docker://{reference}")),
            Duration::from_secs(120),
        )?;
        Ok(reference)
    }

    /// Every request line of the access log so far.
    pub fn access_lines(&self) -> Vec<AccessLine> {
        let text = std::fs::read(&self.log).unwrap_or_default();
        String::from_utf8_lossy(&text)
            .lines()
            .filter_map(parse_access_line)
            .collect()
    }

    /// The digests of every successful or attempted `GET /v2/.../blobs/<digest>`
    /// (after [`Registry::settle`]).
    pub fn blob_gets(&self) -> Vec<String> {
        self.settle();
        self.access_lines()
            .into_iter()
            .filter(|l| l.method == "GET")
            .filter_map(|l| blob_digest(&l.path))
            .collect()
    }

    /// Number of access-log lines so far; pass it to [`Registry::blob_gets_since`].
    pub fn mark(&self) -> usize {
        self.access_lines().len()
    }

    /// Waits until requests answered so far are in the access log: the
    /// registry writes a line after the response, so a client can be done
    /// before its line is. A sentinel request is sent and waited for.
    pub fn settle(&self) {
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let path = format!("/v2/?settle={}", SEQ.fetch_add(1, Ordering::Relaxed));
        let _ = http_status(self.port, &path);
        let _ = process::wait_until("the registry access log", Duration::from_secs(5), || {
            Ok(self.access_lines().iter().any(|l| l.path == path))
        });
        std::thread::sleep(Duration::from_millis(100));
    }

    /// Blob GETs after a [`Registry::mark`] (after [`Registry::settle`]).
    pub fn blob_gets_since(&self, mark: usize) -> Vec<String> {
        self.settle();
        self.access_lines()
            .into_iter()
            .skip(mark)
            .filter(|l| l.method == "GET")
            .filter_map(|l| blob_digest(&l.path))
            .collect()
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let access: Vec<String> =
                String::from_utf8_lossy(&std::fs::read(&self.log).unwrap_or_default())
                    .lines()
                    .filter(|l| parse_access_line(l).is_some())
                    .map(str::to_string)
                    .collect();
            eprintln!(
                "---- end of registry access log {} ----\n{}",
                self.log.display(),
                access[access.len().saturating_sub(30)..].join("\n")
            );
        }
        if let Some(mut proc) = self.proc.take() {
            if let Err(err) = proc.stop(process::STOP_TIMEOUT) {
                eprintln!("warning: stopping docker-registry: {err:#}");
            }
        }
    }
}

/// The digest of a `/v2/<name>/blobs/<digest>` path (not uploads).
fn blob_digest(path: &str) -> Option<String> {
    let (_, digest) = path.split_once("/blobs/")?;
    let digest = digest.split('?').next().unwrap_or(digest);
    digest.starts_with("sha256:").then(|| digest.to_string())
}

/// Parses a combined-log-format line:
/// `127.0.0.1 - - [date] "GET /v2/x/blobs/sha256:.. HTTP/1.1" 200 123 "" "ua"`.
pub fn parse_access_line(line: &str) -> Option<AccessLine> {
    let (_, rest) = line.split_once("] \"")?;
    let (request, rest) = rest.split_once('"')?;
    let mut parts = request.split(' ');
    let method = parts.next()?.to_string();
    let path = parts.next()?.to_string();
    let protocol = parts.next()?;
    if !protocol.starts_with("HTTP/") || !path.starts_with('/') {
        return None;
    }
    let status = rest.split_whitespace().next()?.parse().ok()?;
    Some(AccessLine {
        method,
        path,
        status,
    })
}

/// The status of `GET path` on 127.0.0.1:port (HTTP/1.0, no body parsing).
pub fn http_status(port: u16, path: &str) -> Result<u16> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut head = [0u8; 64];
    let n = stream.read(&mut head)?;
    let head = String::from_utf8_lossy(&head[..n]);
    head.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("no HTTP status line")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_combined_log_lines() {
        let line = r#"127.0.0.1 - - [21/Nov/2026:20:49:27 +0000] "GET /v2/library/x/blobs/sha256:abcd HTTP/1.1" 200 42 "" "containerd/1.6.20""#;
        assert_eq!(
            parse_access_line(line),
            Some(AccessLine {
                method: "GET".into(),
                path: "/v2/library/x/blobs/sha256:abcd".into(),
                status: 200
            })
        );
        assert_eq!(
            parse_access_line("time=\"...\" level=info msg=\"listening\""),
            None
        );
    }
}

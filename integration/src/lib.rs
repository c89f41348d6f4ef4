//! Harness for the root-only end-to-end tests of `airgap-snapshotter`.
//!
//! Every test starts its own real parts, each in its own temporary directory:
//! a private containerd ([`PrivateContainerd`]: the system's 1.6, or the
//! one in `AIRGAP_CONTAINERD_DIR`, e.g. 1.7 or 2.x), a `docker-registry` on
//! loopback ([`Registry`]), the daemon under test ([`Daemon`]), and plays
//! kubelet through CRI ([`CriClient`]): it pulls, inspects and lists images
//! (ImageService) and runs pods ([`CriClient::run_pod_once`], RuntimeService;
//! the sandbox image is a test image too, see
//! [`containerd::ContainerdOptions::sandbox_image`]). Test images are OCI
//! image layouts built here from files on the machine ([`image`]). A real
//! kubelet in standalone mode ([`kubelet::Kubelet`], static pods, its
//! binary from `AIRGAP_KUBELET`) drives containerd where a test asks for it.
//!
//! Every part is stopped by process id and cleaned up on `Drop`, also when a
//! test panics: processes are signalled (SIGTERM, then SIGKILL), mounts under
//! the temporary directories are detached, and the directories are removed.
//!
//! Run them as root, alone or with the rest:
//!
//! ```text
//! cargo nextest run -p airgap-integration      # or: cargo test -p airgap-integration
//! AIRGAP_CONTAINERD_DIR=/var/cache/airgap-snapshotter/containerd/sid cargo nextest run -p airgap-integration
//! AIRGAP_SNAPSHOTTER_BIN=target/release/airgap-snapshotter cargo test -p airgap-integration
//! ```
//!
//! Without `AIRGAP_SNAPSHOTTER_BIN` the tests build the daemon with
//! `cargo build -p airgap-snapshotter` first (a no-op when it is current).
//! The tests take a cross-process lock, so they run one at a time even
//! under nextest.

pub mod bench;
pub mod cluster;
pub mod containerd;
pub mod cri;
pub mod daemon;
pub mod image;
pub mod kubelet;
pub mod mounts;
pub mod netns;
pub mod process;
pub mod registry;
pub mod relay;

use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use nix::fcntl::{Flock, FlockArg};

pub use containerd::PrivateContainerd;
pub use cri::CriClient;
pub use daemon::Daemon;
pub use registry::Registry;

/// The workspace root (the parent of this crate's directory).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("integration crate has a parent directory")
        .to_path_buf()
}

/// True when the tests run as root; the end-to-end tests need it (mounts,
/// containerd, runc).
pub fn is_root() -> bool {
    nix::unistd::Uid::effective().is_root()
}

/// Returns false, after printing why, when the end-to-end tests cannot run
/// here. The only accepted reason is not being root: missing tools are a
/// failure, not a skip.
pub fn can_run(test: &str) -> bool {
    if is_root() {
        return true;
    }
    airgap_snapshotter::testsupport::skip(
        test,
        "the end-to-end tests need root (run them as root, e.g. via scripts/test.sh)",
    );
    false
}

/// Runs the end-to-end test `body` unless [`can_run`] says it cannot run
/// here: an error panics with the test's name and the whole chain of
/// causes, success says so.
pub fn run_as_root(test: &str, body: impl FnOnce(&str) -> Result<()>) {
    if !can_run(test) {
        return;
    }
    if let Err(err) = body(test) {
        panic!("{test}: {err:#}");
    }
    eprintln!("== {test}: passed");
}

/// Holds the lock that serializes the end-to-end tests across processes
/// (nextest runs each test in its own process). The lock is an `flock` on
/// this crate's directory, so nothing is left behind.
pub struct SerialGuard {
    _lock: Flock<File>,
}

/// Takes the cross-process lock that serializes the end-to-end tests.
pub fn serial() -> Result<SerialGuard> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let file = File::open(dir).with_context(|| format!("opening {} for flock", dir.display()))?;
    let lock = Flock::lock(file, FlockArg::LockExclusive)
        .map_err(|(_, errno)| errno)
        .with_context(|| format!("flock {}", dir.display()))?;
    Ok(SerialGuard { _lock: lock })
}

/// A Go tool the suite builds (crictl, cosign, ...), from the environment
/// variable `env` that `scripts/build-test-tools.sh` sets: `None`, recorded
/// as a skip of `test`, when it is unset; an error when it names no file.
/// `script` is the script that builds it, named in both messages.
pub fn test_tool(test: &str, env: &str, script: &str) -> Result<Option<PathBuf>> {
    let Some(path) = std::env::var_os(env) else {
        airgap_snapshotter::testsupport::skip(
            test,
            &format!(
                "{env} is not set (build it with {script} and set {env} to the path it prints)"
            ),
        );
        return Ok(None);
    };
    let path = PathBuf::from(path);
    anyhow::ensure!(
        path.is_file(),
        "{env}={} is not a file ({script} prints the path)",
        path.display()
    );
    Ok(Some(path))
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// A temporary directory for one part of a test, removed on drop after
/// everything mounted under it has been detached.
pub struct TestDir {
    dir: Option<tempfile::TempDir>,
}

impl TestDir {
    /// Creates `/tmp/airgap-e2e-<prefix>-XXXX`.
    pub fn new(prefix: &str) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("airgap-e2e-{prefix}-"))
            .tempdir()
            .context("creating a temporary directory")?;
        Ok(Self { dir: Some(dir) })
    }

    pub fn path(&self) -> &Path {
        self.dir.as_ref().expect("TestDir used after drop").path()
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if let Some(dir) = self.dir.take() {
            let path = dir.path().to_path_buf();
            mounts::unmount_under(&path);
            if let Err(err) = dir.close() {
                eprintln!("warning: removing {}: {err}", path.display());
            }
        }
    }
}

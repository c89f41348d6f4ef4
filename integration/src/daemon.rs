//! The daemon under test: `airgap-snapshotter serve` with its root, socket
//! and archives directory in a temporary directory; restartable.

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::process::{self, Proc};
use crate::TestDir;

/// Overrides the binary under test (otherwise it is built with cargo).
pub const BIN_ENV: &str = "AIRGAP_SNAPSHOTTER_BIN";

/// The `airgap-snapshotter` binary: `$AIRGAP_SNAPSHOTTER_BIN`, or the one
/// `cargo build -p airgap-snapshotter` produces for this workspace (a no-op
/// when it is up to date, so the tests never run a stale binary). Cargo's
/// JSON messages name the executable, wherever the target directory is.
pub fn binary() -> Result<PathBuf> {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    if let Some(path) = BINARY.get() {
        return Ok(path.clone());
    }
    let path = match std::env::var_os(BIN_ENV) {
        Some(path) => PathBuf::from(path),
        None => build_binary()?,
    };
    if !path.is_file() {
        bail!(
            "airgap-snapshotter binary {} does not exist",
            path.display()
        );
    }
    Ok(BINARY.get_or_init(|| path).clone())
}

fn build_binary() -> Result<PathBuf> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = process::run(
        Command::new(cargo)
            .current_dir(crate::workspace_root())
            .args([
                "build",
                "-p",
                "airgap-snapshotter",
                "--bin",
                "airgap-snapshotter",
                "--message-format=json-render-diagnostics",
            ]),
        Duration::from_secs(1800),
    )
    .context("building airgap-snapshotter")?;
    for line in out.lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if msg["reason"] == "compiler-artifact" && msg["target"]["name"] == "airgap-snapshotter" {
            if let Some(exe) = msg["executable"].as_str() {
                return Ok(PathBuf::from(exe));
            }
        }
    }
    bail!("cargo build did not report the airgap-snapshotter executable")
}

/// Writes containerd's hosts directory `hosts` with the daemon's own
/// `config --hosts-dir HOSTS --write`: `_default/hosts.toml` with the
/// mirror at `mirror` first and `upstream` (a URL), if any, as `server`.
pub fn write_hosts_dir(hosts: &Path, mirror: &str, upstream: Option<&str>) -> Result<()> {
    let mut cmd = Command::new(binary()?);
    cmd.args(["config", "--mirror-listen", mirror]);
    if let Some(url) = upstream {
        cmd.args(["--upstream", url]);
    }
    process::run(
        cmd.arg("--hosts-dir").arg(hosts).arg("--write"),
        Duration::from_secs(30),
    )?;
    Ok(())
}

/// A running (or stopped, between restarts) `airgap-snapshotter serve`.
pub struct Daemon {
    proc: Option<Proc>,
    extra_args: Vec<String>,
    binary: PathBuf,
    root: PathBuf,
    socket: PathBuf,
    archives: PathBuf,
    log: PathBuf,
    /// The network namespace it runs in (`None`: the test's own).
    netns: Option<PathBuf>,
    dir: TestDir,
}

impl Daemon {
    /// Starts the daemon with an empty archives directory (fill it with
    /// [`Daemon::archives_dir`] before or after start).
    pub fn start() -> Result<Self> {
        let dir = TestDir::new("daemon")?;
        let archives = dir.path().join("archives");
        std::fs::create_dir_all(&archives)?;
        Self::start_in(dir, archives, &[], None)
    }

    /// Starts the daemon on an archives directory that already holds files.
    pub fn start_with_archives(files: &[&Path]) -> Result<Self> {
        Self::start_with_args(files, &[])
    }

    /// Like [`Daemon::start_with_archives`], with extra `serve` arguments
    /// (e.g. `["--mirror-listen", "127.0.0.1:5000"]`, `["--config", FILE]`).
    /// Without a `--mirror-listen` among them, the mirror is off; without a
    /// `--metrics-listen`, so are the metrics (daemons run side by side);
    /// without `--containerd-address` or `--import-mode`, registration
    /// into containerd is off; without `--archive-removal-grace`, it is 2s.
    pub fn start_with_args(files: &[&Path], args: &[&str]) -> Result<Self> {
        Self::start_in_netns(None, files, args)
    }

    /// [`Daemon::start_with_args`] inside the network namespace `netns`
    /// (a `/run/netns/NAME` file, see [`crate::netns`]), restarts too.
    pub fn start_in_netns(netns: Option<&Path>, files: &[&Path], args: &[&str]) -> Result<Self> {
        let dir = TestDir::new("daemon")?;
        let archives = dir.path().join("archives");
        std::fs::create_dir_all(&archives)?;
        for file in files {
            let name = file.file_name().context("archive without a file name")?;
            std::fs::copy(file, archives.join(name))
                .with_context(|| format!("copying {} into the archives", file.display()))?;
        }
        Self::start_in(dir, archives, args, netns)
    }

    fn start_in(
        dir: TestDir,
        archives: PathBuf,
        args: &[&str],
        netns: Option<&Path>,
    ) -> Result<Self> {
        let mut extra_args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        if !args.iter().any(|a| a.starts_with("--mirror-listen")) {
            extra_args.extend(["--mirror-listen".to_string(), "off".to_string()]);
        }
        if !args.iter().any(|a| a.starts_with("--metrics-listen")) {
            extra_args.extend(["--metrics-listen".to_string(), "off".to_string()]);
        }
        // Archives a test deletes leave the view after 2 s rather than the
        // default 5 min; tests of the grace itself give their own.
        if !args
            .iter()
            .any(|a| a.starts_with("--archive-removal-grace"))
        {
            extra_args.extend(["--archive-removal-grace".to_string(), "2s".to_string()]);
        }
        // Registration into containerd only where a test points it at its
        // own containerd: never the machine's.
        if !args
            .iter()
            .any(|a| a.starts_with("--import-mode") || a.starts_with("--containerd-address"))
        {
            extra_args.extend(["--import-mode".to_string(), "off".to_string()]);
        }
        let mut this = Self {
            proc: None,
            extra_args,
            binary: binary()?,
            root: dir.path().join("root"),
            socket: dir.path().join("snap.sock"),
            archives,
            log: dir.path().join("daemon.log"),
            netns: netns.map(Path::to_path_buf),
            dir,
        };
        this.spawn()?;
        Ok(this)
    }

    fn spawn(&mut self) -> Result<()> {
        let _ = std::fs::remove_file(&self.socket);
        let mut cmd = Command::new(&self.binary);
        if let Some(netns) = &self.netns {
            crate::netns::enter(&mut cmd, netns)?;
        }
        let mut proc = Proc::spawn(
            "airgap-snapshotter",
            cmd.env(
                "RUST_LOG",
                "debug,h2=info,hyper=info,hyper_util=info,tower=info,tonic=info",
            )
            .env("NO_COLOR", "1")
            .arg("serve")
            .arg("--root")
            .arg(&self.root)
            .arg("--socket")
            .arg(&self.socket)
            .arg("--archives")
            .arg(&self.archives)
            .args(&self.extra_args),
            &self.log,
        )?;
        let socket = self.socket.clone();
        process::wait_until(
            "airgap-snapshotter to listen",
            Duration::from_secs(60),
            || {
                proc.check_running()?;
                Ok(UnixStream::connect(&socket).is_ok())
            },
        )
        .with_context(|| {
            format!(
                "end of {}:\n{}",
                self.log.display(),
                process::tail(&self.log, 40)
            )
        })?;
        self.proc = Some(proc);
        Ok(())
    }

    /// Stops the daemon (SIGTERM) and starts it again on the same root.
    pub fn restart(&mut self) -> Result<()> {
        self.stop()?;
        self.spawn()
    }

    /// [`Daemon::restart`] with `args` added to its `serve` arguments from
    /// now on (e.g. `--containerd-address` of a containerd started after it).
    pub fn restart_with_args(&mut self, args: &[&str]) -> Result<()> {
        for arg in args {
            if arg.starts_with("--import-mode") || arg.starts_with("--containerd-address") {
                // The harness's `--import-mode off` gives way.
                if let Some(i) = self.extra_args.iter().position(|a| a == "--import-mode") {
                    self.extra_args.drain(i..i + 2);
                }
            }
            // So do its `--mirror-listen off` and `--metrics-listen off`.
            for flag in ["--mirror-listen", "--metrics-listen"] {
                if arg.starts_with(flag) {
                    if let Some(i) = self.extra_args.iter().position(|a| a == flag) {
                        self.extra_args.drain(i..i + 2);
                    }
                }
            }
        }
        if args.contains(&"--archive-removal-grace") {
            // The harness's (or an earlier) grace gives way.
            if let Some(i) = self
                .extra_args
                .iter()
                .position(|a| a == "--archive-removal-grace")
            {
                self.extra_args.drain(i..i + 2);
            }
        }
        self.extra_args.extend(args.iter().map(|a| a.to_string()));
        self.restart()
    }

    /// Kills the daemon with SIGKILL (a crash) and starts it again on the
    /// same root.
    pub fn kill_and_restart(&mut self) -> Result<()> {
        if let Some(mut proc) = self.proc.take() {
            proc.kill()?;
        }
        self.spawn()
    }

    /// The daemon's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.proc.as_ref().and_then(Proc::pid)
    }

    /// Stops the daemon; it must exit cleanly on SIGTERM.
    pub fn stop(&mut self) -> Result<()> {
        if let Some(mut proc) = self.proc.take() {
            let status = proc.stop(process::STOP_TIMEOUT)?;
            if let Some(status) = status {
                if !status.success() {
                    bail!(
                        "airgap-snapshotter exited with {status} on SIGTERM; end of log:\n{}",
                        process::tail(&self.log, 30)
                    );
                }
            }
        }
        Ok(())
    }

    /// Fails if the daemon died.
    pub fn check_running(&mut self) -> Result<()> {
        match self.proc.as_mut() {
            Some(proc) => proc.check_running(),
            None => bail!("airgap-snapshotter is stopped"),
        }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn archives_dir(&self) -> &Path {
        &self.archives
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    pub fn log(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.log).unwrap_or_default()).into_owned()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- end of airgap-snapshotter log {} ----\n{}",
                self.log.display(),
                process::tail(&self.log, 60)
            );
        }
        if let Some(mut proc) = self.proc.take() {
            if let Err(err) = proc.stop(process::STOP_TIMEOUT) {
                eprintln!("warning: stopping airgap-snapshotter: {err:#}");
            }
        }
    }
}

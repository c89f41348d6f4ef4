//! Child processes the tests start: output captured to a log file, stopped by
//! process id (SIGTERM, then SIGKILL after a timeout) and reaped on drop.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// How long a process gets to exit after SIGTERM before it is killed.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// A running child process owned by a test.
pub struct Proc {
    name: String,
    child: Option<Child>,
    log: PathBuf,
}

impl Proc {
    /// Spawns `cmd` with stdin closed and stdout and stderr appended to `log`.
    pub fn spawn(name: &str, cmd: &mut Command, log: &Path) -> Result<Self> {
        let out = open_log(log)?;
        let err = out
            .try_clone()
            .with_context(|| format!("duplicating {}", log.display()))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting {name}: {cmd:?}"))?;
        Ok(Self {
            name: name.to_string(),
            child: Some(child),
            log: log.to_path_buf(),
        })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Fails if the process has already exited, with the end of its log.
    pub fn check_running(&mut self) -> Result<()> {
        let Some(child) = self.child.as_mut() else {
            bail!("{} was stopped", self.name);
        };
        if let Some(status) = child.try_wait()? {
            self.child = None;
            bail!(
                "{} exited early ({status}); end of {}:\n{}",
                self.name,
                self.log.display(),
                tail(&self.log, 40)
            );
        }
        Ok(())
    }

    /// SIGTERM, wait up to `timeout`, then SIGKILL; reaps the process.
    pub fn stop(&mut self, timeout: Duration) -> Result<Option<ExitStatus>> {
        let Some(mut child) = self.child.take() else {
            return Ok(None);
        };
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        let pid = Pid::from_raw(child.id() as i32);
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = child.try_wait()? {
                return Ok(Some(status));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!(
            "warning: {} (pid {pid}) ignored SIGTERM for {timeout:?}, killing it",
            self.name
        );
        let _ = kill(pid, Signal::SIGKILL);
        Ok(Some(child.wait()?))
    }
}

impl Proc {
    /// SIGKILL at once (a crash, as the tests simulate one); reaps it.
    pub fn kill(&mut self) -> Result<Option<ExitStatus>> {
        let Some(mut child) = self.child.take() else {
            return Ok(None);
        };
        let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
        Ok(Some(child.wait()?))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Err(err) = self.stop(STOP_TIMEOUT) {
            eprintln!("warning: stopping {}: {err:#}", self.name);
        }
    }
}

fn open_log(log: &Path) -> Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("opening log {}", log.display()))
}

/// The last `lines` lines of a log file (empty if it cannot be read).
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Runs a command to completion with a timeout; output is captured. Fails
/// (with stdout and stderr in the message) on a non-zero exit status.
pub fn run(cmd: &mut Command, timeout: Duration) -> Result<String> {
    let output = run_unchecked(cmd, timeout)?;
    if !output.status.success() {
        bail!(
            "{cmd:?} failed ({}):\nstdout: {}\nstderr: {}",
            output.status,
            output.stdout,
            output.stderr
        );
    }
    Ok(output.stdout)
}

/// The result of a finished command.
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Runs a command with a timeout (killed by pid when it expires) and returns
/// its status and output whatever the status.
pub fn run_unchecked(cmd: &mut Command, timeout: Duration) -> Result<Output> {
    let dir = tempfile::tempdir().context("creating a temporary directory for output")?;
    let out_path = dir.path().join("stdout");
    let err_path = dir.path().join("stderr");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(File::create(&out_path)?)
        .stderr(File::create(&err_path)?)
        .spawn()
        .with_context(|| format!("starting {cmd:?}"))?;
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
            let _ = child.wait();
            bail!(
                "{cmd:?} did not finish within {timeout:?}; stderr so far: {}",
                std::fs::read_to_string(&err_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Ok(Output {
        status,
        stdout: String::from_utf8_lossy(&std::fs::read(&out_path)?).into_owned(),
        stderr: String::from_utf8_lossy(&std::fs::read(&err_path)?).into_owned(),
    })
}

/// Kills the process `pid` with SIGKILL (a crash) and waits up to
/// `timeout` until it has exited: a zombie until its parent reaps it, or
/// gone. For a process that its [`Proc`] reaps later, stopped from
/// elsewhere (its pid cannot be reused before that).
pub fn kill_by_pid(pid: u32, timeout: Duration) -> Result<()> {
    let raw = i32::try_from(pid).context("a pid out of range")?;
    kill(Pid::from_raw(raw), Signal::SIGKILL).with_context(|| format!("SIGKILL to {pid}"))?;
    let stat = format!("/proc/{pid}/stat");
    wait_until(&format!("process {pid} to exit"), timeout, || {
        Ok(match std::fs::read_to_string(&stat) {
            // `pid (comm) S ...`: the state follows the last parenthesis.
            Ok(text) => text.rsplit_once(')').is_some_and(|(_, rest)| {
                matches!(rest.trim_start().chars().next(), Some('Z' | 'X'))
            }),
            Err(_) => true,
        })
    })
}

/// Polls `ready` every 50 ms until it returns true or `timeout` passes.
pub fn wait_until(
    what: &str,
    timeout: Duration,
    mut ready: impl FnMut() -> Result<bool>,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if ready()? {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

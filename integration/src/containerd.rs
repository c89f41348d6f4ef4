//! A private containerd 1.6: its own root, state and sockets in a temporary
//! directory, the airgap proxy snapshotter plugged in, CRI set to use it.
//! The system containerd (`/run/containerd/containerd.sock`,
//! `/var/lib/containerd`) is never touched.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};

use crate::process::{self, Proc};
use crate::TestDir;

/// The name of the proxy snapshotter in the generated config.
pub const SNAPSHOTTER: &str = "airgap";

/// The CRI namespace.
pub const K8S_NS: &str = "k8s.io";

const SYSTEM_ROOT: &str = "/var/lib/containerd";
const SYSTEM_SOCKET: &str = "/run/containerd/containerd.sock";
/// Where the runc shims keep files whatever the config says (see NOTES.md).
const SHIM_DIRS: [&str; 3] = [
    "/run/containerd/runc",
    "/run/containerd/s",
    "/run/containerd/fifo",
];

/// Options of a [`PrivateContainerd`].
#[derive(Default, Clone)]
pub struct ContainerdOptions {
    /// A registry hosts directory (`certs.d` layout) for CRI pulls.
    pub hosts_dir: Option<PathBuf>,
}

/// A running private containerd, stopped and cleaned up on drop.
pub struct PrivateContainerd {
    proc: Option<Proc>,
    address: PathBuf,
    config: PathBuf,
    log: PathBuf,
    run_containerd_existed: bool,
    // Dropped last: removed after containerd stopped and mounts are detached.
    dir: TestDir,
}

impl PrivateContainerd {
    /// Writes the config and starts containerd with the airgap proxy
    /// snapshotter at `snapshotter_socket`; waits until it answers.
    pub fn start(snapshotter_socket: &Path, options: &ContainerdOptions) -> Result<Self> {
        let dir = TestDir::new("containerd")?;
        let root = dir.path().join("root");
        let state = dir.path().join("state");
        let address = dir.path().join("containerd.sock");
        let config = dir.path().join("config.toml");
        let log = dir.path().join("containerd.log");
        for d in [
            &root,
            &state,
            &dir.path().join("opt"),
            &dir.path().join("cni"),
        ] {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
        }

        let default = process::run(
            Command::new("containerd").args(["config", "default"]),
            Duration::from_secs(30),
        )?;
        let text = write_config(&default, dir.path(), snapshotter_socket, options)?;
        check_config(&text, dir.path(), snapshotter_socket)?;
        std::fs::write(&config, &text).with_context(|| format!("writing {}", config.display()))?;

        let run_containerd_existed = Path::new("/run/containerd").exists();
        let proc = Proc::spawn(
            "containerd",
            Command::new("containerd")
                .arg("--config")
                .arg(&config)
                .args(["--log-level", "info"]),
            &log,
        )?;
        let mut this = Self {
            proc: Some(proc),
            address,
            config,
            log,
            run_containerd_existed,
            dir,
        };
        this.wait_ready()?;
        Ok(this)
    }

    fn wait_ready(&mut self) -> Result<()> {
        let address = self.address.clone();
        let log = self.log.clone();
        let proc = self.proc.as_mut().expect("containerd started");
        let ready = process::wait_until("containerd to answer", Duration::from_secs(60), || {
            proc.check_running()?;
            if !address.exists() {
                return Ok(false);
            }
            let out = process::run_unchecked(
                Command::new("ctr")
                    .arg("--address")
                    .arg(&address)
                    .arg("version"),
                Duration::from_secs(10),
            )?;
            Ok(out.status.success())
        });
        ready.with_context(|| format!("end of {}:\n{}", log.display(), process::tail(&log, 40)))
    }

    /// The gRPC socket of this containerd (for CRI clients too).
    pub fn address(&self) -> &Path {
        &self.address
    }

    pub fn config_path(&self) -> &Path {
        &self.config
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// `ctr --address <sock> ARGS...`; fails on a non-zero exit status.
    pub fn ctr(&self, args: &[&str]) -> Result<String> {
        process::run(&mut self.ctr_command(args), Duration::from_secs(180))
    }

    /// `ctr --address <sock> ARGS...` whatever its exit status.
    pub fn ctr_unchecked(&self, args: &[&str]) -> Result<process::Output> {
        process::run_unchecked(&mut self.ctr_command(args), Duration::from_secs(180))
    }

    /// A `ctr` call of the cleanup path: a short timeout, so that a wedged
    /// containerd cannot hold a failing test for long.
    fn ctr_cleanup(&self, args: &[&str]) -> Result<process::Output> {
        process::run_unchecked(&mut self.ctr_command(args), Duration::from_secs(15))
    }

    fn ctr_command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("ctr");
        cmd.arg("--address").arg(&self.address).args(args);
        cmd
    }

    /// Image references in a namespace.
    pub fn image_refs(&self, namespace: &str) -> Result<Vec<String>> {
        let out = self.ctr(&["-n", namespace, "images", "ls", "-q"])?;
        Ok(out
            .lines()
            .map(str::to_string)
            .filter(|l| !l.is_empty())
            .collect())
    }

    /// Snapshot keys of the airgap snapshotter in a namespace.
    pub fn snapshot_keys(&self, namespace: &str) -> Result<Vec<String>> {
        let out = self.ctr(&[
            "-n",
            namespace,
            "snapshots",
            "--snapshotter",
            SNAPSHOTTER,
            "ls",
        ])?;
        Ok(out
            .lines()
            .skip(1)
            .filter_map(|l| l.split_whitespace().next())
            .map(str::to_string)
            .collect())
    }

    /// Waits until containerd reaches the proxy snapshotter again (after a
    /// daemon restart its gRPC client reconnects with a backoff of about a
    /// second, and fails calls with Unavailable meanwhile).
    pub fn wait_snapshotter_reachable(&self, timeout: Duration) -> Result<()> {
        process::wait_until(
            "containerd to reach the airgap snapshotter",
            timeout,
            || {
                let out = self.ctr_unchecked(&[
                    "-n",
                    K8S_NS,
                    "snapshots",
                    "--snapshotter",
                    SNAPSHOTTER,
                    "ls",
                ])?;
                Ok(out.status.success())
            },
        )
    }

    /// Kills and deletes every task and container this containerd runs
    /// (best effort: this runs from `Drop`).
    fn remove_workloads(&self) {
        let Ok(out) = self.ctr_cleanup(&["namespaces", "ls", "-q"]) else {
            return;
        };
        for ns in out.stdout.lines().filter(|l| !l.is_empty()) {
            if let Ok(tasks) = self.ctr_cleanup(&["-n", ns, "tasks", "ls", "-q"]) {
                for id in tasks.stdout.lines().filter(|l| !l.is_empty()) {
                    let _ = self.ctr_cleanup(&["-n", ns, "tasks", "kill", "-s", "SIGKILL", id]);
                    std::thread::sleep(Duration::from_millis(200));
                    let _ = self.ctr_cleanup(&["-n", ns, "tasks", "delete", "-f", id]);
                }
            }
            if let Ok(containers) = self.ctr_cleanup(&["-n", ns, "containers", "ls", "-q"]) {
                for id in containers.stdout.lines().filter(|l| !l.is_empty()) {
                    let _ = self.ctr_cleanup(&["-n", ns, "containers", "delete", id]);
                }
            }
        }
    }

    /// Kills shims that this containerd started and that outlived it,
    /// recognised by our socket address on their command line.
    fn kill_leftover_shims(&self) {
        let needle = self.address.to_string_lossy().into_owned();
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return;
        };
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<i32>().ok())
            else {
                continue;
            };
            let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
                continue;
            };
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if cmdline.contains("containerd-shim") && cmdline.contains(&needle) {
                eprintln!("warning: killing leftover shim pid {pid}: {cmdline}");
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}

impl Drop for PrivateContainerd {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- end of containerd log {} ----\n{}",
                self.log.display(),
                process::tail(&self.log, 60)
            );
        }
        if self.proc.is_some() {
            self.remove_workloads();
        }
        if let Some(mut proc) = self.proc.take() {
            if let Err(err) = proc.stop(process::STOP_TIMEOUT) {
                eprintln!("warning: stopping containerd: {err:#}");
            }
        }
        self.kill_leftover_shims();
        crate::mounts::unmount_under(self.dir.path());
        // The shims' directories under /run/containerd: remove them only if
        // they did not exist before and are empty now.
        if !self.run_containerd_existed {
            for d in [
                "/run/containerd/runc/k8s.io",
                "/run/containerd/runc/default",
            ]
            .iter()
            .chain(SHIM_DIRS.iter())
            .chain(["/run/containerd"].iter())
            {
                let _ = std::fs::remove_dir(d);
            }
        }
    }
}

fn quoted(path: &Path) -> String {
    format!("\"{}\"", path.display())
}

/// Rewrites `containerd config default` so that every path containerd
/// writes to lives under `dir`, and wires in the airgap proxy snapshotter.
fn write_config(
    default: &str,
    dir: &Path,
    snapshotter_socket: &Path,
    options: &ContainerdOptions,
) -> Result<String> {
    let mut section = String::new();
    let mut out = String::new();
    let mut seen_proxy_header = false;
    for line in default.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('[') {
            section = trimmed.to_string();
            if section == "[proxy_plugins]" {
                seen_proxy_header = true;
            }
        }
        let key = trimmed.split('=').next().unwrap_or("").trim();
        let indent = &line[..line.len() - line.trim_start().len()];
        let replacement = match (section.as_str(), key) {
            ("", "root") => Some(quoted(&dir.join("root"))),
            ("", "state") => Some(quoted(&dir.join("state"))),
            ("[grpc]", "address") => Some(quoted(&dir.join("containerd.sock"))),
            ("[ttrpc]", "address") => Some(quoted(&dir.join("containerd.sock.ttrpc"))),
            ("[plugins.\"io.containerd.internal.v1.opt\"]", "path") => {
                Some(quoted(&dir.join("opt")))
            }
            // CRI creates its CNI config directory: keep it private too.
            ("[plugins.\"io.containerd.grpc.v1.cri\".cni]", "conf_dir") => {
                Some(quoted(&dir.join("cni")))
            }
            ("[plugins.\"io.containerd.grpc.v1.cri\".containerd]", "snapshotter") => {
                Some(format!("\"{SNAPSHOTTER}\""))
            }
            (
                "[plugins.\"io.containerd.grpc.v1.cri\".containerd]",
                "disable_snapshot_annotations",
            ) => Some("false".to_string()),
            ("[plugins.\"io.containerd.grpc.v1.cri\".registry]", "config_path") => {
                options.hosts_dir.as_deref().map(quoted)
            }
            _ => None,
        };
        match replacement {
            Some(value) => out.push_str(&format!("{indent}{key} = {value}\n")),
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    ensure!(
        seen_proxy_header,
        "containerd's default config has no [proxy_plugins] table"
    );
    out.push_str(&format!(
        "\n[proxy_plugins.{SNAPSHOTTER}]\n  type = \"snapshot\"\n  address = {}\n",
        quoted(snapshotter_socket)
    ));
    Ok(out)
}

/// Parses the generated config and asserts it points containerd at the
/// private directory, never at the system containerd's.
fn check_config(text: &str, dir: &Path, snapshotter_socket: &Path) -> Result<()> {
    let value: toml::Value = text
        .parse()
        .context("parsing the generated containerd config")?;
    let get = |path: &[&str]| -> Option<String> {
        let mut v = &value;
        for key in path {
            v = v.get(key)?;
        }
        match v {
            toml::Value::String(s) => Some(s.clone()),
            other => Some(other.to_string()),
        }
    };
    let expect = |path: &[&str], want: &str| -> Result<()> {
        let got = get(path);
        ensure!(
            got.as_deref() == Some(want),
            "generated containerd config: {} is {got:?}, expected {want:?}",
            path.join(".")
        );
        Ok(())
    };
    let under = |p: &str| dir.join(p).to_string_lossy().into_owned();
    expect(&["root"], &under("root"))?;
    expect(&["state"], &under("state"))?;
    expect(&["grpc", "address"], &under("containerd.sock"))?;
    expect(&["ttrpc", "address"], &under("containerd.sock.ttrpc"))?;
    expect(&["proxy_plugins", SNAPSHOTTER, "type"], "snapshot")?;
    expect(
        &["proxy_plugins", SNAPSHOTTER, "address"],
        &snapshotter_socket.to_string_lossy(),
    )?;
    let cri = ["plugins", "io.containerd.grpc.v1.cri", "containerd"];
    expect(&[cri[0], cri[1], cri[2], "snapshotter"], SNAPSHOTTER)?;
    expect(
        &[cri[0], cri[1], cri[2], "disable_snapshot_annotations"],
        "false",
    )?;
    for forbidden in [SYSTEM_ROOT, SYSTEM_SOCKET] {
        if text.contains(forbidden) {
            bail!("generated containerd config still mentions {forbidden}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFAULT_EXCERPT: &str = r#"root = "/var/lib/containerd"
state = "/run/containerd"
version = 2

[grpc]
  address = "/run/containerd/containerd.sock"

[plugins]

  [plugins."io.containerd.grpc.v1.cri"]

    [plugins."io.containerd.grpc.v1.cri".containerd]
      disable_snapshot_annotations = true
      snapshotter = "overlayfs"

    [plugins."io.containerd.grpc.v1.cri".registry]
      config_path = ""

[proxy_plugins]

[ttrpc]
  address = ""
"#;

    #[test]
    fn config_points_into_the_private_dir() {
        let dir = Path::new("/tmp/x");
        let sock = Path::new("/tmp/y/snap.sock");
        let options = ContainerdOptions {
            hosts_dir: Some(PathBuf::from("/tmp/x/certs.d")),
        };
        let text = write_config(DEFAULT_EXCERPT, dir, sock, &options).unwrap();
        check_config(&text, dir, sock).unwrap();
        assert!(text.contains("config_path = \"/tmp/x/certs.d\""), "{text}");
    }

    #[test]
    fn check_rejects_the_system_paths() {
        let sock = Path::new("/tmp/y/snap.sock");
        assert!(check_config(DEFAULT_EXCERPT, Path::new("/tmp/x"), sock).is_err());
    }
}

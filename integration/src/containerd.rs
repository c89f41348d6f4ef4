//! A private containerd: its own root, state and sockets in a temporary
//! directory, the airgap proxy snapshotter plugged in, CRI set to use it.
//! The system containerd (`/run/containerd/containerd.sock`,
//! `/var/lib/containerd`) is never touched.
//!
//! Which containerd: the one on PATH (Debian 12: 1.6), or the binaries in
//! `AIRGAP_CONTAINERD_DIR` (`scripts/fetch-containerd.sh` unpacks 1.7 and
//! 2.x there). Its config is `containerd config default` with the output of
//! `airgap-snapshotter config --containerd <its version>` merged in.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};

use crate::process::{self, Proc};
use crate::TestDir;

/// The name of the proxy snapshotter in the generated config.
pub const SNAPSHOTTER: &str = "airgap";

/// The CRI namespace.
pub const K8S_NS: &str = "k8s.io";

/// Selects the containerd binaries (see [`bin_dir`]).
pub const DIR_ENV: &str = "AIRGAP_CONTAINERD_DIR";

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
    /// containerd 2.x only: leave CRI's `disable_snapshot_annotations` at
    /// its default (true), so that CRI pulls go through the transfer
    /// service. Otherwise it is false: the layer hints reach the
    /// snapshotter, and 2.1+ pulls on the client side ("local pull").
    pub cri_transfer_service: bool,
    /// The snapshotter CRI unpacks into, when not `airgap` (the benchmark's
    /// baselines use `overlayfs`, as sites run containerd today).
    pub cri_snapshotter: Option<String>,
    /// The CRI sandbox ("pause") image every pod runs, e.g. an image the
    /// test put into an archive and pushed to its registry
    /// ([`crate::image::write_pause_archive`]). containerd pulls it through
    /// CRI on the first RunPodSandbox and reports it pinned. `None`: the
    /// default (`registry.k8s.io/pause:<version>`, which an air-gapped test
    /// cannot pull). Set as `plugins."io.containerd.grpc.v1.cri".sandbox_image`
    /// (1.6, 1.7) or `plugins."io.containerd.cri.v1.images".pinned_images.sandbox`
    /// (2.x).
    pub sandbox_image: Option<String>,
    /// CRI's `restrict_oom_score_adj`: never give a container a lower OOM
    /// score adjustment than containerd's own. containerd gives every pod
    /// sandbox -998, which runc cannot set without CAP_SYS_RESOURCE (e.g.
    /// when the tests run in a container: RunPodSandbox then fails with
    /// "can't get final child's PID from pipe: EOF"). [`private_config`]
    /// turns it on by itself when this machine cannot lower an OOM score
    /// adjustment; kind's nodes set it for the same reason.
    pub restrict_oom_score_adj: bool,
    /// The network namespace containerd runs in (a `/run/netns/NAME`
    /// file, see [`crate::netns`]); `None`: the test's own.
    pub netns: Option<PathBuf>,
}

/// A running private containerd, stopped and cleaned up on drop.
pub struct PrivateContainerd {
    proc: Option<Proc>,
    address: PathBuf,
    config: PathBuf,
    log: PathBuf,
    version: Version,
    run_containerd_existed: bool,
    netns: Option<PathBuf>,
    // Dropped last: removed after containerd stopped and mounts are detached.
    dir: TestDir,
}

impl PrivateContainerd {
    /// Writes the config and starts containerd with the airgap proxy
    /// snapshotter at `snapshotter_socket`; waits until it answers.
    pub fn start(snapshotter_socket: &Path, options: &ContainerdOptions) -> Result<Self> {
        let dir = Self::dir()?;
        let config = dir.path().join("config.toml");
        let text = private_config(dir.path(), snapshotter_socket, options)?;
        std::fs::write(&config, &text).with_context(|| format!("writing {}", config.display()))?;
        Self::start_with_config_in(dir, config, options.netns.clone())
    }

    /// A directory for a private containerd whose config the caller writes
    /// (see [`private_paths`] and [`PrivateContainerd::start_with_config`]).
    pub fn dir() -> Result<TestDir> {
        let dir = TestDir::new("containerd")?;
        for d in ["root", "state", "opt", "cni", "certs.d"] {
            let d = dir.path().join(d);
            std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
        }
        Ok(dir)
    }

    /// Starts containerd in `dir` (from [`PrivateContainerd::dir`]) with the
    /// config file `config`, which must point root, state and sockets into
    /// `dir` as [`private_paths`] does; waits until it answers.
    pub fn start_with_config(dir: TestDir, config: PathBuf) -> Result<Self> {
        Self::start_with_config_in(dir, config, None)
    }

    fn start_with_config_in(dir: TestDir, config: PathBuf, netns: Option<PathBuf>) -> Result<Self> {
        let address = dir.path().join("containerd.sock");
        let log = dir.path().join("containerd.log");
        let version = version()?;
        let text = std::fs::read_to_string(&config)
            .with_context(|| format!("reading {}", config.display()))?;
        for forbidden in [SYSTEM_ROOT, SYSTEM_SOCKET] {
            ensure!(
                !text.contains(forbidden),
                "{} still mentions {forbidden}: not starting a containerd on the system's paths",
                config.display()
            );
        }
        let run_containerd_existed = Path::new("/run/containerd").exists();
        let proc = spawn_containerd(&config, &log, netns.as_deref())?;
        let mut this = Self {
            proc: Some(proc),
            address,
            config,
            log,
            version,
            run_containerd_existed,
            netns,
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
                command("ctr").arg("--address").arg(&address).arg("version"),
                Duration::from_secs(10),
            )?;
            Ok(out.status.success())
        });
        ready.with_context(|| format!("end of {}:\n{}", log.display(), process::tail(&log, 40)))
    }

    /// Stops containerd (SIGTERM; running containers' shims stay up, as on
    /// a node) and starts it again on the same config and state.
    pub fn restart(&mut self) -> Result<()> {
        if let Some(mut proc) = self.proc.take() {
            proc.stop(process::STOP_TIMEOUT)?;
        }
        self.proc = Some(spawn_containerd(
            &self.config,
            &self.log,
            self.netns.as_deref(),
        )?);
        self.wait_ready()
    }

    /// The gRPC socket of this containerd (for CRI clients too).
    pub fn address(&self) -> &Path {
        &self.address
    }

    /// The version of this containerd.
    pub fn version(&self) -> &Version {
        &self.version
    }

    pub fn config_path(&self) -> &Path {
        &self.config
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// `ctr --address <sock> ARGS...`; fails on a non-zero exit status.
    pub fn ctr(&self, args: &[&str]) -> Result<String> {
        process::run(&mut self.ctr_command(args)?, Duration::from_secs(180))
    }

    /// `ctr --address <sock> ARGS...` whatever its exit status.
    pub fn ctr_unchecked(&self, args: &[&str]) -> Result<process::Output> {
        process::run_unchecked(&mut self.ctr_command(args)?, Duration::from_secs(180))
    }

    /// A `ctr` call of the cleanup path: a short timeout, so that a wedged
    /// containerd cannot hold a failing test for long.
    fn ctr_cleanup(&self, args: &[&str]) -> Result<process::Output> {
        process::run_unchecked(&mut self.ctr_command(args)?, Duration::from_secs(15))
    }

    /// `ctr` runs where its containerd runs: in its network namespace, if
    /// it has one (`ctr pull` fetches on the client side).
    fn ctr_command(&self, args: &[&str]) -> Result<Command> {
        let mut cmd = command("ctr");
        if let Some(netns) = &self.netns {
            crate::netns::enter(&mut cmd, netns)?;
        }
        cmd.arg("--address").arg(&self.address).args(args);
        Ok(cmd)
    }

    /// The manifest digest `ctr images ls` shows for `name` in a namespace.
    pub fn image_digest(&self, namespace: &str, name: &str) -> Result<String> {
        let out = self.ctr(&["-n", namespace, "images", "ls"])?;
        out.lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .and_then(|l| l.split_whitespace().nth(2))
            .map(str::to_string)
            .with_context(|| format!("{name} not in `ctr images ls`:\n{out}"))
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
                // A Prepare (not a List: containerd lists from its own
                // metadata) reaches the daemon through containerd's client,
                // which may still be backing off from a restart.
                let key = format!("airgap-e2e-reachable-{}", std::process::id());
                let ctr = |verb: &str| {
                    self.ctr_unchecked(&[
                        "-n",
                        K8S_NS,
                        "snapshots",
                        "--snapshotter",
                        SNAPSHOTTER,
                        verb,
                        &key,
                    ])
                };
                let _ = ctr("rm")?;
                let reached = ctr("prepare")?.status.success();
                let _ = ctr("rm")?;
                Ok(reached)
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

    /// The directory everything of this containerd lives in (root, state,
    /// sockets, config, log): for checks that nothing stays mounted there.
    pub fn private_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Process ids and command lines of the shims this containerd started
    /// that are still running, recognised by its socket address on their
    /// command line (a runc shim exits once its last task is deleted).
    pub fn shims(&self) -> Vec<(i32, String)> {
        let needle = self.address.to_string_lossy().into_owned();
        let mut shims = Vec::new();
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return shims;
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
                shims.push((pid, cmdline));
            }
        }
        shims
    }

    /// Kills shims that this containerd started and that outlived it.
    fn kill_leftover_shims(&self) {
        for (pid, cmdline) in self.shims() {
            eprintln!("warning: killing leftover shim pid {pid}: {cmdline}");
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

fn spawn_containerd(config: &Path, log: &Path, netns: Option<&Path>) -> Result<Proc> {
    let mut cmd = command("containerd");
    if let Some(netns) = netns {
        crate::netns::enter(&mut cmd, netns)?;
    }
    Proc::spawn(
        "containerd",
        cmd.arg("--config")
            .arg(config)
            .args(["--log-level", "info"]),
        log,
    )
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
            // One directory per containerd namespace the tests used
            // (k8s.io, default, local, ...): remove_dir only takes empty ones.
            if let Ok(entries) = std::fs::read_dir("/run/containerd/runc") {
                for entry in entries.flatten() {
                    let _ = std::fs::remove_dir(entry.path());
                }
            }
            for d in SHIM_DIRS.iter().chain(["/run/containerd"].iter()) {
                let _ = std::fs::remove_dir(d);
            }
        }
    }
}

/// The directory `AIRGAP_CONTAINERD_DIR` names, if set: where `containerd`,
/// `ctr` and `containerd-shim-runc-v2` are, directly or under `usr/bin`
/// (the layout `scripts/fetch-containerd.sh` unpacks a Debian package into).
pub fn bin_dir() -> Option<PathBuf> {
    let dir = PathBuf::from(std::env::var_os(DIR_ENV).filter(|d| !d.is_empty())?);
    // Absolute, so that it still means the same on a child's PATH.
    let dir = std::fs::canonicalize(&dir).unwrap_or(dir);
    let usr_bin = dir.join("usr/bin");
    Some(if usr_bin.join("containerd").exists() {
        usr_bin
    } else {
        dir
    })
}

/// The path of a containerd binary (`containerd`, `ctr`): in
/// `AIRGAP_CONTAINERD_DIR` when it is set, else the name (found on PATH).
pub fn binary(name: &str) -> PathBuf {
    match bin_dir() {
        Some(dir) => dir.join(name),
        None => PathBuf::from(name),
    }
}

/// A command running a containerd binary, with `AIRGAP_CONTAINERD_DIR`
/// first on its PATH (containerd finds its shim on PATH).
pub fn command(name: &str) -> Command {
    let mut cmd = Command::new(binary(name));
    if let Some(dir) = bin_dir() {
        let path = std::env::var_os("PATH").unwrap_or_default();
        let paths = std::iter::once(dir).chain(std::env::split_paths(&path));
        if let Ok(joined) = std::env::join_paths(paths) {
            cmd.env("PATH", joined);
        }
    }
    cmd
}

/// A containerd release, as `containerd --version` prints it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl Version {
    /// Parses `containerd --version` output, e.g. `containerd
    /// github.com/containerd/containerd 1.6.20~ds1 1.6.20~ds1-1+deb12u3` or
    /// `containerd github.com/containerd/containerd/v2 2.1.9+unknown`.
    pub fn parse(output: &str) -> Result<Self> {
        let word = output
            .split_whitespace()
            .nth(2)
            .with_context(|| format!("unexpected `containerd --version` output {output:?}"))?;
        let word = word.trim_start_matches('v');
        let numbers: Vec<u32> = word
            .split(|c: char| !c.is_ascii_digit() && c != '.')
            .next()
            .unwrap_or("")
            .split('.')
            .map(|n| n.parse::<u32>())
            .collect::<Result<_, _>>()
            .with_context(|| format!("no version number in {output:?}"))?;
        match numbers.as_slice() {
            [major, minor, patch, ..] => Ok(Self {
                major: *major,
                minor: *minor,
                patch: *patch,
            }),
            [major, minor] => Ok(Self {
                major: *major,
                minor: *minor,
                patch: 0,
            }),
            _ => bail!("no version number in {output:?}"),
        }
    }

    /// containerd 2.x: `version = 3` config, CRI split into
    /// `io.containerd.cri.v1.*`, `ctr pull` through the transfer service.
    pub fn is_2x(&self) -> bool {
        self.major >= 2
    }

    /// Whether this is `major.minor` or newer.
    pub fn at_least(&self, major: u32, minor: u32) -> bool {
        (self.major, self.minor) >= (major, minor)
    }

    /// The `airgap-snapshotter config --containerd` argument for it.
    pub fn config_arg(&self) -> &'static str {
        match (self.major, self.minor) {
            (1, 6) => "1.6",
            (1, _) => "1.7",
            _ => "2",
        }
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// The version of the containerd the tests run (`AIRGAP_CONTAINERD_DIR`, or
/// the one on PATH), detected once per process and printed.
pub fn version() -> Result<Version> {
    static VERSION: OnceLock<Version> = OnceLock::new();
    if let Some(v) = VERSION.get() {
        return Ok(v.clone());
    }
    let out = process::run(
        command("containerd").arg("--version"),
        Duration::from_secs(30),
    )
    .with_context(|| format!("running {} --version", binary("containerd").display()))?;
    let version = Version::parse(&out)?;
    eprintln!(
        "containerd {version} ({}: {})",
        binary("containerd").display(),
        out.trim()
    );
    Ok(VERSION.get_or_init(|| version).clone())
}

/// The config.toml of a private containerd living in `dir` (see
/// [`write_config`]), checked: what [`PrivateContainerd::start`] writes, and
/// what `scripts/demo.sh` uses (through the `containerd-config` binary).
pub fn private_config(
    dir: &Path,
    snapshotter_socket: &Path,
    options: &ContainerdOptions,
) -> Result<String> {
    let version = version()?;
    let default = default_config()?;
    let fragment = airgap_fragment(&version, snapshotter_socket)?;
    let mut options = options.clone();
    options.restrict_oom_score_adj |= !can_lower_oom_score_adj();
    let text = write_config(&default, &fragment, &version, dir, &options)?;
    check_config(&text, &version, dir, snapshotter_socket, &options)?;
    Ok(text)
}

/// Whether a child process may lower its OOM score adjustment below 0, as
/// runc must for a pod sandbox (-998): not without CAP_SYS_RESOURCE.
fn can_lower_oom_score_adj() -> bool {
    static CAN: OnceLock<bool> = OnceLock::new();
    *CAN.get_or_init(|| {
        let can = Command::new("sh")
            .args(["-c", "echo -999 > /proc/self/oom_score_adj"])
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !can {
            eprintln!("cannot lower oom_score_adj here: CRI restrict_oom_score_adj = true");
        }
        can
    })
}

/// `containerd config default` of the containerd the tests run.
pub fn default_config() -> Result<String> {
    process::run(
        command("containerd").args(["config", "default"]),
        Duration::from_secs(30),
    )
}

/// A containerd config text (e.g. `containerd config default`) with every
/// path containerd writes to moved under `dir` as [`write_config`] does
/// (root, state, gRPC and ttrpc sockets, opt, CNI config) and, on 2.x, NRI
/// disabled; edited in place (`toml_edit`), so comments and order stay
/// and nothing of the airgap wiring is added: that is left to
/// `airgap-snapshotter config --merge`.
pub fn private_paths(text: &str, version: &Version, dir: &Path) -> Result<String> {
    use toml_edit::{value, DocumentMut, Item, Table};
    let mut doc: DocumentMut = text.parse().context("parsing the containerd config")?;
    let (_, _, cni) = cri_tables(version);
    let nri = ["plugins", "io.containerd.nri.v1.nri", "disable"];
    let [grpc, ttrpc] = server_address_keys(doc.get("version").and_then(|v| v.as_integer()));
    let mut edits: Vec<(Vec<&str>, Item)> = vec![
        (vec!["root"], value(path_str(&dir.join("root")))),
        (vec!["state"], value(path_str(&dir.join("state")))),
        (grpc, value(path_str(&dir.join("containerd.sock")))),
        (ttrpc, value(path_str(&dir.join("containerd.sock.ttrpc")))),
        (
            vec!["plugins", "io.containerd.internal.v1.opt", "path"],
            value(path_str(&dir.join("opt"))),
        ),
        (
            key_path(&cni, "conf_dir"),
            value(path_str(&dir.join("cni"))),
        ),
    ];
    if version.is_2x() {
        edits.push((nri.to_vec(), value(true)));
        // 2.2+ defaults to `imports = ['/etc/containerd/conf.d/*.toml']`:
        // the node's drop-ins must not reach a private containerd.
        if doc.contains_key("imports") {
            edits.push((vec!["imports"], value(toml_edit::Array::new())));
        }
    }
    for (path, item) in edits {
        let (last, parents) = path.split_last().context("empty key path")?;
        let mut t = doc.as_table_mut() as &mut dyn toml_edit::TableLike;
        for key in parents {
            t = t
                .entry(key)
                .or_insert_with(|| Item::Table(Table::new()))
                .as_table_like_mut()
                .with_context(|| format!("{key} in {path:?} is not a table"))?;
        }
        match t.get_mut(last) {
            // In place: the key keeps its comments and indentation.
            Some(old) => {
                let decor = old.as_value().map(|v| v.decor().clone());
                *old = item;
                if let (Some(decor), Some(v)) = (decor, old.as_value_mut()) {
                    *v.decor_mut() = decor;
                }
            }
            None => {
                t.insert(last, item);
            }
        }
    }
    Ok(doc.to_string())
}

/// `airgap-snapshotter config --containerd <version> --socket SOCKET`: the
/// config.toml fragment the project tells users to merge (the hosts.toml
/// part it prints after it is cut off).
fn airgap_fragment(version: &Version, snapshotter_socket: &Path) -> Result<String> {
    let out = process::run(
        Command::new(crate::daemon::binary()?)
            .args(["config", "--containerd", version.config_arg(), "--socket"])
            .arg(snapshotter_socket)
            .args(["--mirror", "off"]),
        Duration::from_secs(30),
    )
    .context("airgap-snapshotter config")?;
    Ok(config_part(&out).to_string())
}

/// The config.toml part of `airgap-snapshotter config` output: what comes
/// before the `# ---- .../hosts.toml ----` line.
fn config_part(output: &str) -> &str {
    let mut offset = 0;
    for line in output.split_inclusive('\n') {
        if line.starts_with("# ----") && line.contains("hosts.toml") {
            return &output[..offset];
        }
        offset += line.len();
    }
    output
}

/// Merges `overlay` into `base`: tables recursively, any other value
/// (arrays of tables included) replaces the base's.
fn deep_merge(base: &mut toml::Table, overlay: toml::Table) {
    for (key, value) in overlay {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => deep_merge(b, o),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

/// Sets `path` in `table`, creating the tables on the way.
fn set(table: &mut toml::Table, path: &[&str], value: impl Into<toml::Value>) -> Result<()> {
    let (last, parents) = path.split_last().context("empty key path")?;
    let mut t = table;
    for key in parents {
        t = t
            .entry(key.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .with_context(|| format!("{key} in {path:?} is not a table"))?;
    }
    t.insert(last.to_string(), value.into());
    Ok(())
}

fn path_str(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

/// Where a config version has the gRPC and ttrpc socket addresses:
/// top-level `[grpc]` and `[ttrpc]` up to version 3; version 4 (containerd
/// 2.3+) ignores those and reads the `io.containerd.server.v1.*` plugins'.
fn server_address_keys(config_version: Option<i64>) -> [Vec<&'static str>; 2] {
    if config_version.is_some_and(|v| v >= 4) {
        [
            vec!["plugins", "io.containerd.server.v1.grpc", "address"],
            vec!["plugins", "io.containerd.server.v1.ttrpc", "address"],
        ]
    } else {
        [vec!["grpc", "address"], vec!["ttrpc", "address"]]
    }
}

/// CRI's registry `config_path` for the options: their hosts directory, or
/// none. "None" is `""` on 1.6/1.7; 2.2+'s CRI replaces `""` with the node's
/// `/etc/containerd/certs.d:/etc/docker/certs.d` when it starts, so on 2.x
/// it is the private `dir/certs.d` (empty unless the test fills it).
fn hosts_dir_value(version: &Version, dir: &Path, options: &ContainerdOptions) -> String {
    match &options.hosts_dir {
        Some(d) => path_str(d),
        None if version.is_2x() => path_str(&dir.join("certs.d")),
        None => String::new(),
    }
}

/// The CRI tables of a config version: (snapshotter and annotations table,
/// registry table, CNI table).
fn cri_tables(version: &Version) -> ([&'static str; 3], [&'static str; 3], [&'static str; 3]) {
    if version.is_2x() {
        (
            ["plugins", "io.containerd.cri.v1.images", ""],
            ["plugins", "io.containerd.cri.v1.images", "registry"],
            ["plugins", "io.containerd.cri.v1.runtime", "cni"],
        )
    } else {
        (
            ["plugins", "io.containerd.grpc.v1.cri", "containerd"],
            ["plugins", "io.containerd.grpc.v1.cri", "registry"],
            ["plugins", "io.containerd.grpc.v1.cri", "cni"],
        )
    }
}

/// Where a config version names the CRI sandbox ("pause") image.
fn sandbox_image_key(version: &Version) -> Vec<&'static str> {
    if version.is_2x() {
        vec![
            "plugins",
            "io.containerd.cri.v1.images",
            "pinned_images",
            "sandbox",
        ]
    } else {
        vec!["plugins", "io.containerd.grpc.v1.cri", "sandbox_image"]
    }
}

/// Where a config version has CRI's `restrict_oom_score_adj`.
fn restrict_oom_key(version: &Version) -> Vec<&'static str> {
    if version.is_2x() {
        vec![
            "plugins",
            "io.containerd.cri.v1.runtime",
            "restrict_oom_score_adj",
        ]
    } else {
        vec![
            "plugins",
            "io.containerd.grpc.v1.cri",
            "restrict_oom_score_adj",
        ]
    }
}

/// A table path without its empty trailing parts.
fn key_path<'a>(table: &[&'a str], key: &'a str) -> Vec<&'a str> {
    table
        .iter()
        .copied()
        .filter(|k| !k.is_empty())
        .chain([key])
        .collect()
}

/// The private containerd's config: `containerd config default` with
/// `airgap-snapshotter config --containerd <version>` (the `fragment`)
/// merged in, as a node's config would be, then every path containerd
/// writes to moved under `dir`, the CRI registry hosts directory set from
/// the options (none by default: not the node's `/etc/containerd/certs.d`)
/// and, on 2.x, NRI disabled (it would open a socket under `/var/run/nri`).
fn write_config(
    default: &str,
    fragment: &str,
    version: &Version,
    dir: &Path,
    options: &ContainerdOptions,
) -> Result<String> {
    let mut config: toml::Table = default
        .parse()
        .context("parsing `containerd config default`")?;
    let fragment: toml::Table = fragment
        .parse()
        .context("parsing `airgap-snapshotter config` output")?;
    deep_merge(&mut config, fragment);

    set(&mut config, &["root"], path_str(&dir.join("root")))?;
    set(&mut config, &["state"], path_str(&dir.join("state")))?;
    let [grpc, ttrpc] =
        server_address_keys(config.get("version").and_then(toml::Value::as_integer));
    set(&mut config, &grpc, path_str(&dir.join("containerd.sock")))?;
    set(
        &mut config,
        &ttrpc,
        path_str(&dir.join("containerd.sock.ttrpc")),
    )?;
    set(
        &mut config,
        &["plugins", "io.containerd.internal.v1.opt", "path"],
        path_str(&dir.join("opt")),
    )?;
    let (images, registry, cni) = cri_tables(version);
    // CRI creates its CNI config directory: keep it private too.
    set(
        &mut config,
        &key_path(&cni, "conf_dir"),
        path_str(&dir.join("cni")),
    )?;
    set(
        &mut config,
        &key_path(&registry, "config_path"),
        hosts_dir_value(version, dir, options),
    )?;
    if let Some(name) = &options.cri_snapshotter {
        set(
            &mut config,
            &key_path(&images, "snapshotter"),
            name.as_str(),
        )?;
    }
    if let Some(image) = &options.sandbox_image {
        set(&mut config, &sandbox_image_key(version), image.as_str())?;
    }
    if options.restrict_oom_score_adj {
        set(&mut config, &restrict_oom_key(version), true)?;
    }
    if version.is_2x() {
        // 2.2+ defaults to `imports = ['/etc/containerd/conf.d/*.toml']`:
        // the node's drop-ins must not reach a private containerd.
        set(&mut config, &["imports"], toml::Value::Array(Vec::new()))?;
        // `disable_snapshot_annotations = false` makes 2.1+ CRI fall back to
        // the client-side ("local") pull; the default (true) pulls through
        // the transfer service. Both must take the layers from the archive.
        set(
            &mut config,
            &key_path(&images, "disable_snapshot_annotations"),
            options.cri_transfer_service,
        )?;
        set(
            &mut config,
            &["plugins", "io.containerd.nri.v1.nri", "disable"],
            true,
        )?;
    } else if options.cri_transfer_service {
        bail!("containerd {version} has no CRI pull through the transfer service");
    }
    toml::to_string(&config).context("writing the containerd config")
}

/// Parses the generated config and asserts it points containerd at the
/// private directory, never at the system containerd's, with the airgap
/// snapshotter wired in as `airgap-snapshotter config` says.
fn check_config(
    text: &str,
    version: &Version,
    dir: &Path,
    snapshotter_socket: &Path,
    options: &ContainerdOptions,
) -> Result<()> {
    let value: toml::Value = text
        .parse()
        .context("parsing the generated containerd config")?;
    let lookup = |path: &[&str]| -> Option<toml::Value> {
        let mut v = &value;
        for key in path {
            v = v.get(key)?;
        }
        Some(v.clone())
    };
    let get = |path: &[&str]| -> Option<String> {
        match lookup(path)? {
            toml::Value::String(s) => Some(s),
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
    let config_version = lookup(&["version"]).and_then(|v| v.as_integer());
    let [grpc, ttrpc] = server_address_keys(config_version);
    expect(&grpc, &under("containerd.sock"))?;
    expect(&ttrpc, &under("containerd.sock.ttrpc"))?;
    expect(&["proxy_plugins", SNAPSHOTTER, "type"], "snapshot")?;
    expect(
        &["proxy_plugins", SNAPSHOTTER, "address"],
        &snapshotter_socket.to_string_lossy(),
    )?;
    let (images, registry, cni) = cri_tables(version);
    expect(
        &key_path(&images, "snapshotter"),
        options.cri_snapshotter.as_deref().unwrap_or(SNAPSHOTTER),
    )?;
    expect(
        &key_path(&images, "disable_snapshot_annotations"),
        if options.cri_transfer_service {
            "true"
        } else {
            "false"
        },
    )?;
    expect(
        &key_path(&registry, "config_path"),
        &hosts_dir_value(version, dir, options),
    )?;
    expect(&key_path(&cni, "conf_dir"), &under("cni"))?;
    if let Some(image) = &options.sandbox_image {
        expect(&sandbox_image_key(version), image)?;
    }
    if options.restrict_oom_score_adj {
        expect(&restrict_oom_key(version), "true")?;
    }
    if version.is_2x() {
        ensure!(
            matches!(config_version, Some(3 | 4)),
            "generated containerd config: version is {config_version:?}, expected 3 or 4"
        );
        ensure!(
            lookup(&["imports"])
                .as_ref()
                .and_then(toml::Value::as_array)
                .is_none_or(|a| a.is_empty()),
            "generated containerd config imports drop-ins: {:?}",
            lookup(&["imports"])
        );
        expect(&["plugins", "io.containerd.nri.v1.nri", "disable"], "true")?;
        expect(
            &[
                "proxy_plugins",
                SNAPSHOTTER,
                "exports",
                "enable_remote_snapshot_annotations",
            ],
            "true",
        )?;
        // The transfer service unpacks only into the snapshotters listed,
        // and the list replaces the default one: overlayfs must stay.
        let unpack = lookup(&[
            "plugins",
            "io.containerd.transfer.v1.local",
            "unpack_config",
        ]);
        let names: Vec<String> = unpack
            .as_ref()
            .and_then(toml::Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|e| e.get("snapshotter")?.as_str().map(str::to_string))
            .collect();
        for want in [SNAPSHOTTER, "overlayfs"] {
            ensure!(
                names.iter().any(|n| n == want),
                "generated containerd config: the transfer service's unpack_config lists {names:?}, not {want}"
            );
        }
    }
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

    const DEFAULT_1_6: &str = r#"root = "/var/lib/containerd"
state = "/run/containerd"
version = 2

[grpc]
  address = "/run/containerd/containerd.sock"

[plugins]

  [plugins."io.containerd.grpc.v1.cri"]

    [plugins."io.containerd.grpc.v1.cri".cni]
      conf_dir = "/etc/cni/net.d"

    [plugins."io.containerd.grpc.v1.cri".containerd]
      disable_snapshot_annotations = true
      snapshotter = "overlayfs"

    [plugins."io.containerd.grpc.v1.cri".registry]
      config_path = ""

  [plugins."io.containerd.internal.v1.opt"]
    path = "/opt/containerd"

[proxy_plugins]

[ttrpc]
  address = ""
"#;

    const DEFAULT_2: &str = r#"version = 3
root = '/var/lib/containerd'
state = '/run/containerd'

[grpc]
  address = '/run/containerd/containerd.sock'

[ttrpc]
  address = ''

[plugins]
  [plugins.'io.containerd.cri.v1.images']
    snapshotter = 'overlayfs'
    disable_snapshot_annotations = true

    [plugins.'io.containerd.cri.v1.images'.registry]
      config_path = ''

  [plugins.'io.containerd.cri.v1.runtime']
    [plugins.'io.containerd.cri.v1.runtime'.cni]
      conf_dir = '/etc/cni/net.d'

  [plugins.'io.containerd.internal.v1.opt']
    path = '/opt/containerd'

  [plugins.'io.containerd.nri.v1.nri']
    disable = false
    socket_path = '/var/run/nri/nri.sock'

  [plugins.'io.containerd.transfer.v1.local']
    config_path = ''
"#;

    /// What `airgap-snapshotter config --containerd 1.6` prints (the
    /// config part), abridged.
    const FRAGMENT_1: &str = r#"[proxy_plugins.airgap]
  type = "snapshot"
  address = "/tmp/y/snap.sock"

[plugins."io.containerd.grpc.v1.cri".containerd]
  snapshotter = "airgap"
  disable_snapshot_annotations = false

[plugins."io.containerd.grpc.v1.cri".registry]
  config_path = "/etc/containerd/certs.d"
"#;

    const FRAGMENT_2: &str = r#"[proxy_plugins.airgap]
  type = "snapshot"
  address = "/tmp/y/snap.sock"
  [proxy_plugins.airgap.exports]
    enable_remote_snapshot_annotations = "true"

[plugins."io.containerd.cri.v1.images"]
  snapshotter = "airgap"

[plugins."io.containerd.cri.v1.images".registry]
  config_path = "/etc/containerd/certs.d"

[[plugins."io.containerd.transfer.v1.local".unpack_config]]
  platform = "linux/amd64"
  snapshotter = "airgap"

[[plugins."io.containerd.transfer.v1.local".unpack_config]]
  platform = "linux/amd64"
  snapshotter = "overlayfs"
"#;

    fn v(text: &str) -> Version {
        Version::parse(text).unwrap()
    }

    #[test]
    fn versions_parse() {
        let v16 = v("containerd github.com/containerd/containerd 1.6.20~ds1 1.6.20~ds1-1+deb12u3");
        assert_eq!(v16.to_string(), "1.6.20");
        assert_eq!(v16.config_arg(), "1.6");
        assert!(!v16.is_2x());
        let v17 = v("containerd github.com/containerd/containerd 1.7.24~ds1 1.7.24~ds1-6+deb13u1");
        assert_eq!(
            (v17.to_string().as_str(), v17.config_arg()),
            ("1.7.24", "1.7")
        );
        let v2 = v("containerd github.com/containerd/containerd/v2 2.1.9+unknown ");
        assert_eq!((v2.to_string().as_str(), v2.config_arg()), ("2.1.9", "2"));
        assert!(v2.is_2x() && v2 > v17 && v17 > v16);
        assert_eq!(v("containerd x v2.2.0 abc").to_string(), "2.2.0");
        assert!(Version::parse("containerd").is_err());
    }

    #[test]
    fn config_part_cuts_the_hosts_file() {
        let out = "[a]\nb = 1\n\n# ---- /etc/containerd/certs.d/_default/hosts.toml ----\nserver = \"x\"\n";
        assert_eq!(config_part(out), "[a]\nb = 1\n\n");
        assert_eq!(config_part("[a]\n"), "[a]\n");
    }

    #[test]
    fn merge_keeps_defaults_and_replaces_arrays() {
        let mut base: toml::Table = "[t]\na = 1\nb = [1]\n[t.u]\nc = 2\n".parse().unwrap();
        let overlay: toml::Table = "[t]\nb = [2, 3]\n[t.u]\nd = 4\n[v]\ne = 5\n"
            .parse()
            .unwrap();
        deep_merge(&mut base, overlay);
        let want: toml::Table = "[t]\na = 1\nb = [2, 3]\n[t.u]\nc = 2\nd = 4\n[v]\ne = 5\n"
            .parse()
            .unwrap();
        assert_eq!(base, want);
    }

    #[test]
    fn config_1_points_into_the_private_dir() {
        let dir = Path::new("/tmp/x");
        let sock = Path::new("/tmp/y/snap.sock");
        let version = v("containerd x 1.6.20");
        let options = ContainerdOptions {
            hosts_dir: Some(PathBuf::from("/tmp/x/certs.d")),
            sandbox_image: Some("127.0.0.1:1/library/pause:v1".into()),
            restrict_oom_score_adj: true,
            ..Default::default()
        };
        let text = write_config(DEFAULT_1_6, FRAGMENT_1, &version, dir, &options).unwrap();
        check_config(&text, &version, dir, sock, &options).unwrap();
        let value: toml::Value = text.parse().unwrap();
        let cri = &value["plugins"]["io.containerd.grpc.v1.cri"];
        assert_eq!(
            cri["sandbox_image"].as_str(),
            Some("127.0.0.1:1/library/pause:v1")
        );
        assert_eq!(cri["restrict_oom_score_adj"].as_bool(), Some(true));
        assert!(!text.contains("/etc/containerd/certs.d"), "{text}");
        // Without a hosts directory: not the node's either.
        let options = ContainerdOptions::default();
        let text = write_config(DEFAULT_1_6, FRAGMENT_1, &version, dir, &options).unwrap();
        check_config(&text, &version, dir, sock, &options).unwrap();
        let transfer = ContainerdOptions {
            cri_transfer_service: true,
            ..Default::default()
        };
        assert!(write_config(DEFAULT_1_6, FRAGMENT_1, &version, dir, &transfer).is_err());
    }

    #[test]
    fn config_2_points_into_the_private_dir() {
        let dir = Path::new("/tmp/x");
        let sock = Path::new("/tmp/y/snap.sock");
        let version = v("containerd x 2.1.9");
        for transfer in [false, true] {
            let options = ContainerdOptions {
                hosts_dir: Some(PathBuf::from("/tmp/x/certs.d")),
                cri_transfer_service: transfer,
                sandbox_image: Some("127.0.0.1:1/library/pause:v1".into()),
                restrict_oom_score_adj: true,
                ..Default::default()
            };
            let text = write_config(DEFAULT_2, FRAGMENT_2, &version, dir, &options).unwrap();
            check_config(&text, &version, dir, sock, &options).unwrap();
            let value: toml::Value = text.parse().unwrap();
            assert_eq!(
                value["plugins"]["io.containerd.cri.v1.runtime"]["restrict_oom_score_adj"]
                    .as_bool(),
                Some(true)
            );
            assert_eq!(
                value["plugins"]["io.containerd.cri.v1.images"]["pinned_images"]["sandbox"]
                    .as_str(),
                Some("127.0.0.1:1/library/pause:v1")
            );
        }
        // 2.2+: the node's conf.d drop-ins and certs.d stay out.
        let default_2_2 = format!("imports = ['/etc/containerd/conf.d/*.toml']\n{DEFAULT_2}");
        let options = ContainerdOptions::default();
        let text = write_config(&default_2_2, FRAGMENT_2, &version, dir, &options).unwrap();
        check_config(&text, &version, dir, sock, &options).unwrap();
        let value: toml::Value = text.parse().unwrap();
        assert_eq!(value["imports"].as_array().map(Vec::len), Some(0));
        assert_eq!(
            value["plugins"]["io.containerd.cri.v1.images"]["registry"]["config_path"].as_str(),
            Some("/tmp/x/certs.d")
        );
        let paths = private_paths(&default_2_2, &version, dir).unwrap();
        assert!(!paths.contains("conf.d"), "{paths}");
        // The benchmark's baseline: CRI on containerd's own overlayfs.
        let options = ContainerdOptions {
            cri_snapshotter: Some("overlayfs".into()),
            ..Default::default()
        };
        let text = write_config(DEFAULT_2, FRAGMENT_2, &version, dir, &options).unwrap();
        check_config(&text, &version, dir, sock, &options).unwrap();
        assert!(text.contains("snapshotter = \"overlayfs\""), "{text}");
        // The transfer service must keep unpacking into overlayfs.
        let one_entry = FRAGMENT_2
            .rsplit_once("[[plugins")
            .map(|(head, _)| head)
            .unwrap();
        let options = ContainerdOptions::default();
        let text = write_config(DEFAULT_2, one_entry, &version, dir, &options).unwrap();
        let err = check_config(&text, &version, dir, sock, &options).unwrap_err();
        assert!(err.to_string().contains("overlayfs"), "{err}");
    }

    #[test]
    fn private_paths_keep_comments_and_leave_the_wiring_out() {
        let dir = Path::new("/tmp/x");
        for (default, version) in [
            (DEFAULT_1_6, v("containerd x 1.6.20")),
            (DEFAULT_2, v("containerd x 2.1.9")),
        ] {
            let text = format!("# kept\n{default}");
            let out = private_paths(&text, &version, dir).unwrap();
            assert!(out.starts_with("# kept\n"), "{out}");
            assert!(
                !out.contains(SYSTEM_ROOT) && !out.contains(SYSTEM_SOCKET),
                "{out}"
            );
            assert!(!out.contains(SNAPSHOTTER), "{out}");
            let value: toml::Value = out.parse().unwrap();
            assert_eq!(
                value["grpc"]["address"].as_str(),
                Some("/tmp/x/containerd.sock")
            );
            assert_eq!(
                value["plugins"]
                    .get("io.containerd.nri.v1.nri")
                    .map(|t| t["disable"].as_bool() == Some(true)),
                version.is_2x().then_some(true)
            );
        }
    }

    /// 2.3's `containerd config default`: `version = 4`, the sockets in
    /// `io.containerd.server.v1.*`, conf.d imported.
    #[test]
    fn config_4_moves_the_server_plugins_sockets() {
        const DEFAULT_2_3: &str =
            include_str!("../../plugin/src/setup/testdata/containerd-2.3.7.toml");
        let dir = Path::new("/tmp/x");
        let sock = Path::new("/tmp/y/snap.sock");
        let version = v("containerd x 2.3.7");
        let options = ContainerdOptions::default();
        let text = write_config(DEFAULT_2_3, FRAGMENT_2, &version, dir, &options).unwrap();
        check_config(&text, &version, dir, sock, &options).unwrap();
        let value: toml::Value = text.parse().unwrap();
        let server = |p: &str| value["plugins"][p]["address"].as_str().map(str::to_string);
        assert_eq!(
            server("io.containerd.server.v1.grpc").as_deref(),
            Some("/tmp/x/containerd.sock")
        );
        assert_eq!(
            server("io.containerd.server.v1.ttrpc").as_deref(),
            Some("/tmp/x/containerd.sock.ttrpc")
        );
        let paths = private_paths(DEFAULT_2_3, &version, dir).unwrap();
        assert!(
            !paths.contains(SYSTEM_SOCKET) && !paths.contains("conf.d/*.toml"),
            "{paths}"
        );
        // A version 3 layout would leave the system socket in place.
        let three = DEFAULT_2_3.replacen("version = 4", "version = 3", 1);
        let text = write_config(&three, FRAGMENT_2, &version, dir, &options).unwrap();
        assert!(check_config(&text, &version, dir, sock, &options).is_err());
    }

    #[test]
    fn check_rejects_the_system_paths() {
        let sock = Path::new("/tmp/y/snap.sock");
        let options = ContainerdOptions::default();
        let version = v("containerd x 1.6.20");
        assert!(check_config(DEFAULT_1_6, &version, Path::new("/tmp/x"), sock, &options).is_err());
        let version = v("containerd x 2.1.9");
        assert!(check_config(DEFAULT_2, &version, Path::new("/tmp/x"), sock, &options).is_err());
    }
}

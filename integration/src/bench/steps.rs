//! The steps: each starts what it needs (a fresh private containerd, a
//! daemon on a fresh root seeded with the persisted indexes), drops the
//! caches, times one way of getting the largest image runnable, measures
//! disk and the daemon's peak RSS, checks that the image runs, and stops
//! everything again (by pid, on drop, also on failure) before the next.

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::bundle::{path, say, Facts, BIG};
use super::report::{human, Measure, Records, Secs};
use super::system::{self, count_lines, cpu_since, cpu_ticks, drop_caches, du_bytes, hwm_kib};
use crate::containerd::{self, ContainerdOptions, PrivateContainerd, K8S_NS};
use crate::process::{self, Proc};
use crate::{CriClient, Registry};

/// Everything the steps share.
pub struct Bench {
    pub bin: PathBuf,
    pub decompressed: PathBuf,
    pub work: PathBuf,
    pub facts: Facts,
    pub registry: Registry,
    /// The largest image in the registry, `127.0.0.1:PORT/bench/debian-go:1`.
    pub registry_ref: String,
    pub mirror_port: u16,
    /// The hosts directory sending docker.io to the mirror.
    pub hosts: PathBuf,
    pub records: Records,
    pub can_prepare: bool,
    daemon_seq: usize,
    pub(super) check_seq: usize,
}

/// The daemon as a step runs it.
pub struct BenchDaemon {
    proc: Proc,
    pub root: PathBuf,
    pub log: PathBuf,
    pub socket: PathBuf,
    /// Where its metrics are served, when they are.
    pub metrics: Option<String>,
}

impl BenchDaemon {
    pub fn pid(&self) -> u32 {
        self.proc.pid().unwrap_or(0)
    }

    pub fn stop(mut self) -> Result<()> {
        self.proc.stop(process::STOP_TIMEOUT)?;
        Ok(())
    }
}

/// What the shell reads over a container of the largest image in (9).
pub const READ_ALL: &str =
    "/usr/lib/go-1.19/bin/go version && find / -xdev -type f -exec cat {} + >/dev/null";

/// The manifest path of the largest image on the mirror.
pub const BIG_MANIFEST: &str = "/v2/bench/debian-go/manifests/1?ns=docker.io";

fn log_of(root: &Path) -> PathBuf {
    let mut log = root.as_os_str().to_owned();
    log.push(".log");
    PathBuf::from(log)
}

impl Bench {
    pub fn new(
        bin: PathBuf,
        decompressed: PathBuf,
        work: PathBuf,
        facts: Facts,
        registry: Registry,
    ) -> Result<Self> {
        let registry_ref = format!("{}/bench/debian-go:1", registry.host());
        let mirror_port = crate::free_port()?;
        let hosts = work.join("certs.d");
        system::run(
            path(&bin)?,
            &[
                "config",
                "--mirror",
                &format!("127.0.0.1:{mirror_port}"),
                "--upstream",
                &format!("http://{}", registry.host()),
                "--write",
                path(&hosts)?,
            ],
        )?;
        let help = system::run(path(&bin)?, &["serve", "--help"]).unwrap_or_default();
        Ok(Self {
            bin,
            decompressed,
            work,
            facts,
            registry,
            registry_ref,
            mirror_port,
            hosts,
            records: Records::default(),
            can_prepare: help.contains("--prepare-layers"),
            daemon_seq: 0,
            check_seq: 0,
        })
    }

    pub fn mirror(&self) -> String {
        format!("127.0.0.1:{}", self.mirror_port)
    }

    pub fn archives(&self, kind: &str) -> PathBuf {
        self.work.join(format!("archives-{kind}"))
    }

    /// Starts the daemon on the archives of `kind` with `root`; returns once
    /// its socket answers and the mirror serves the largest image.
    pub fn start_daemon(
        &self,
        kind: &str,
        root: &Path,
        flags: &[&str],
        metrics: Option<String>,
    ) -> Result<BenchDaemon> {
        let run = self.work.join("run");
        std::fs::create_dir_all(root).with_context(|| format!("creating {}", root.display()))?;
        std::fs::create_dir_all(&run).with_context(|| format!("creating {}", run.display()))?;
        let socket = run.join("snap.sock");
        let _ = std::fs::remove_file(&socket);
        let log = log_of(root);
        let mut cmd = Command::new(&self.bin);
        cmd.env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .arg("serve")
            .arg("--root")
            .arg(root)
            .arg("--socket")
            .arg(&socket)
            .arg("--archives")
            .arg(self.archives(kind))
            .args(["--mirror-listen", &self.mirror()])
            .args(["--metrics-listen", metrics.as_deref().unwrap_or("off")])
            .args(["--import-mode", "off"])
            .args(flags);
        let mut proc = Proc::spawn("airgap-snapshotter", &mut cmd, &log)?;
        process::wait_until("the daemon's socket", Duration::from_secs(60), || {
            proc.check_running()?;
            Ok(UnixStream::connect(&socket).is_ok())
        })?;
        let mirror = self.mirror();
        process::wait_until(
            &format!("the daemon to index {kind}"),
            Duration::from_secs(600),
            || {
                proc.check_running()?;
                Ok(system::serves(&mirror, BIG_MANIFEST))
            },
        )?;
        Ok(BenchDaemon {
            proc,
            root: root.to_path_buf(),
            log,
            socket,
            metrics,
        })
    }

    /// Indexes each kind's archive once, persisted in `seed-KIND`.
    pub fn seed(&self, kinds: &[&str]) -> Result<()> {
        for kind in kinds {
            say(&format!("indexing the {kind} archive once (persisted)"));
            self.start_daemon(kind, &self.work.join(format!("seed-{kind}")), &[], None)?
                .stop()?;
        }
        Ok(())
    }

    /// A fresh daemon root holding a copy of the persisted indexes of `kind`.
    pub fn fresh_root(&mut self, kind: &str) -> Result<PathBuf> {
        self.daemon_seq += 1;
        let root = self.work.join(format!("daemon-{}-{kind}", self.daemon_seq));
        std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
        let seed = self.work.join(format!("seed-{kind}/catalog"));
        system::run("cp", &["-a", path(&seed)?, path(&root)?])?;
        Ok(root)
    }

    /// A fresh private containerd; CRI unpacks with `overlayfs` or `airgap`.
    pub fn containerd(&self, cri_snapshotter: &str, socket: &Path) -> Result<PrivateContainerd> {
        let options = ContainerdOptions {
            hosts_dir: Some(self.hosts.clone()),
            cri_snapshotter: (cri_snapshotter != containerd::SNAPSHOTTER)
                .then(|| cri_snapshotter.to_string()),
            ..Default::default()
        };
        PrivateContainerd::start(socket, &options)
    }

    fn socket(&self) -> PathBuf {
        self.work.join("run/snap.sock")
    }

    /// The image runs: a container of it runs the Go toolchain of layer 2
    /// with the shell of layer 1.
    pub fn check_runs(
        &mut self,
        c: &PrivateContainerd,
        snapshotter: &str,
        image: &str,
    ) -> Result<()> {
        self.check_seq += 1;
        c.ctr(&[
            "-n",
            K8S_NS,
            "run",
            "--rm",
            "--snapshotter",
            snapshotter,
            image,
            &format!("bench-check-{}", self.check_seq),
            "/bin/sh",
            "-c",
            "/usr/lib/go-1.19/bin/go version >/dev/null && test -x /usr/bin/apt-get",
        ])
        .context("the pulled image does not run")?;
        Ok(())
    }

    pub(super) fn record(
        &mut self,
        id: &str,
        label: &str,
        secs: Secs,
        disk: u64,
        hwm: Option<u64>,
        note: String,
    ) {
        self.records.record(
            id,
            label,
            Measure {
                secs,
                disk: Some(disk),
                hwm_kib: hwm,
                note,
            },
        );
    }

    /// (1) `zstd -dc | ctr images import -` of the bundle.
    pub fn step_import(&mut self, kind: &str) -> Result<()> {
        let _lock = crate::serial()?;
        let c = self.containerd("overlayfs", &self.socket())?;
        drop_caches()?;
        // containerd 1.6's ctr does not read zstd itself (k3s too
        // decompresses the .tar.zst before handing it to containerd).
        let archive = self.archives(kind).join(format!("{kind}.tar.zst"));
        let ctr = containerd::binary("ctr");
        let t0 = Instant::now();
        system::sh(
            r#"zstd -dc "$1" | "$2" --address "$3" -n k8s.io images import - >/dev/null"#,
            &[path(&archive)?, path(&ctr)?, path(c.address())?],
        )?;
        let t = Secs::new(t0.elapsed().as_secs_f64(), 2);
        let disk = du_bytes(&[&c.private_dir().join("root")]);
        self.check_runs(&c, "overlayfs", BIG)?;
        drop(c);
        self.record(
            &format!("import-{kind}"),
            &format!("(1) `zstd -dc | ctr images import -` of the bundle, {kind} (all 4 images)"),
            t,
            disk,
            None,
            String::new(),
        );
        Ok(())
    }

    /// (2) CRI PullImage or (3) `ctr pull` from the registry.
    pub fn step_registry(&mut self, cri: bool) -> Result<()> {
        let _lock = crate::serial()?;
        let c = self.containerd("overlayfs", &self.socket())?;
        let image = self.registry_ref.clone();
        drop_caches()?;
        let t = if cri {
            cri_pull(c.address(), &image)?
        } else {
            let t0 = Instant::now();
            c.ctr(&["-n", K8S_NS, "images", "pull", "--plain-http", &image])?;
            Secs::new(t0.elapsed().as_secs_f64(), 2)
        };
        let disk = du_bytes(&[&c.private_dir().join("root")]);
        self.check_runs(&c, "overlayfs", &image)?;
        drop(c);
        if cri {
            self.record(
                super::report::REGISTRY_CRI,
                "(2) CRI PullImage from docker-registry",
                t,
                disk,
                None,
                String::new(),
            );
        } else {
            self.record(
                "registry-ctr",
                "(3) `ctr pull` from docker-registry",
                t,
                disk,
                None,
                String::new(),
            );
        }
        Ok(())
    }

    /// (4) `ctr pull` through the mirror (`mirror`), (4b) `ctr pull
    /// --snapshotter airgap` through mirror + snapshotter (`ctr-snap`), or
    /// (5) CRI PullImage through mirror + snapshotter (`snap`); `profile`:
    /// one more (5) under `perf record`, not recorded.
    pub fn step_daemon(&mut self, how: &str, kind: &str, profile: bool) -> Result<()> {
        let snapshotter = if how == "mirror" {
            "overlayfs"
        } else {
            containerd::SNAPSHOTTER
        };
        let _lock = crate::serial()?;
        let root = self.fresh_root(kind)?;
        let daemon = self.start_daemon(kind, &root, &[], None)?;
        let c = self.containerd(snapshotter, &daemon.socket)?;
        let gets = self.blob_gets();
        drop_caches()?;
        let mut perf = None;
        if profile {
            let data = self.work.join("perf.data");
            perf = Some(Proc::spawn(
                "perf",
                Command::new("perf").args([
                    "record",
                    "-q",
                    "-F",
                    "999",
                    "-g",
                    "-p",
                    &daemon.pid().to_string(),
                    "-o",
                    path(&data)?,
                ]),
                &self.work.join("perf.log"),
            )?);
            std::thread::sleep(Duration::from_millis(500));
        }
        let cpu0 = cpu_ticks(daemon.pid());
        let t = if how == "snap" {
            cri_pull(c.address(), BIG)?
        } else {
            let t0 = Instant::now();
            c.ctr(&[
                "-n",
                K8S_NS,
                "images",
                "pull",
                "--hosts-dir",
                path(&self.hosts)?,
                "--snapshotter",
                snapshotter,
                BIG,
            ])?;
            Secs::new(t0.elapsed().as_secs_f64(), 2)
        };
        if let Some(mut perf) = perf.take() {
            // perf writes its data on SIGINT.
            if let Some(pid) = perf.pid() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGINT,
                );
            }
            perf.stop(Duration::from_secs(60))?;
        }
        let croot = c.private_dir().join("root");
        let disk = du_bytes(&[&croot, &root]);
        let split = format!(
            "containerd {} + daemon {}",
            human(Some(du_bytes(&[&croot]))),
            human(Some(du_bytes(&[&root])))
        );
        let hwm = hwm_kib(daemon.pid());
        let mut note = format!(
            "disk: {split}; registry blob GETs: {}; {}",
            self.blob_gets().saturating_sub(gets),
            cpu_since(daemon.pid(), cpu0)
        );
        if how != "mirror" {
            note = format!(
                "layers from the archive: {}/{}, layers extracted by then: {}; {note}",
                count_lines(&daemon.log, "layer committed from archive"),
                self.facts.big_layers.len(),
                count_lines(&daemon.log, "layer extracted from archive")
            );
        }
        self.check_runs(&c, snapshotter, BIG)?;
        drop(c);
        daemon.stop()?;
        if profile {
            return Ok(());
        }
        let (id, label) = match how {
            "snap" if kind == "alone" => (format!("snap-{kind}"), "(5) CRI PullImage, mirror + snapshotter, packed archive of this image alone".to_string()),
            "snap" => (format!("snap-{kind}"), format!("(5) CRI PullImage, mirror + snapshotter, {kind} archive")),
            "ctr-snap" => (format!("ctr-snap-{kind}"), format!("(4b) `ctr pull --snapshotter airgap` through mirror + snapshotter, {kind} archive")),
            _ => (format!("mirror-{kind}"), format!("(4) `ctr pull` through the mirror, {kind} archive")),
        };
        self.record(&id, &label, t, disk, hwm, note);
        Ok(())
    }

    fn blob_gets(&self) -> usize {
        self.registry.blob_gets().len()
    }

    /// (7) `airgap-snapshotter import` of the bundle into a containerd wired
    /// to the daemon (for eager, until every layer of the bundle is
    /// extracted), and after a lazy one (7b) the first `ctr run` of the
    /// largest image, whose layers are filled from the archive then.
    pub fn step_register(&mut self, mode: &str, kind: &str) -> Result<()> {
        let _lock = crate::serial()?;
        let root = self.fresh_root(kind)?;
        let daemon = self.start_daemon(kind, &root, &[], None)?;
        let c = self.containerd(containerd::SNAPSHOTTER, &daemon.socket)?;
        drop_caches()?;
        let t0 = Instant::now();
        let out = system::sh(
            r#"exec "$@" 2>&1"#,
            &[
                path(&self.bin)?,
                "import",
                "--archives",
                path(&self.archives(kind))?,
                "--root",
                path(&root)?,
                "--containerd-address",
                path(c.address())?,
                "--import-mode",
                mode,
            ],
        )?;
        if mode != "lazy" {
            let want = self.facts.bundle_layers;
            process::wait_until(
                "every layer of the bundle extracted",
                Duration::from_secs(600),
                || Ok(count_lines(&daemon.log, "imported layer extracted") >= want),
            )?;
        }
        let t = Secs::new(t0.elapsed().as_secs_f64(), 2);
        let croot = c.private_dir().join("root");
        let disk = du_bytes(&[&croot, &root]);
        let note = format!(
            "disk: containerd {} + daemon {}; layers extracted by then: {}/{}; {}",
            human(Some(du_bytes(&[&croot]))),
            human(Some(du_bytes(&[&root]))),
            count_lines(&daemon.log, "imported layer extracted"),
            self.facts.bundle_layers,
            out.lines().last().unwrap_or_default()
        );
        self.record(&format!("register-{mode}-{kind}"), &format!("(7) `airgap-snapshotter import --import-mode {mode}` of the bundle, {kind} archive (all 4 images)"), t, disk, hwm_kib(daemon.pid()), note);
        if mode == "lazy" {
            drop_caches()?;
            let t0 = Instant::now();
            self.check_runs(&c, containerd::SNAPSHOTTER, BIG)?;
            let t = Secs::new(t0.elapsed().as_secs_f64(), 2);
            let disk = du_bytes(&[&croot, &root]);
            let note = format!(
                "includes starting and stopping the container; layers extracted: {}/{}",
                count_lines(&daemon.log, "imported layer extracted"),
                self.facts.big_layers.len()
            );
            self.record(&format!("first-run-{kind}"), "(7b) first `ctr run` of the largest image after a lazy registration (its layers filled then)", t, disk, hwm_kib(daemon.pid()), note);
        }
        drop(c);
        daemon.stop()
    }

    /// (6) system tools on the same layers: `parallel`, `sequential`, `tar`
    /// (the uncompressed layers) or `zstd` (out of the docker-save archive).
    pub fn step_floor(&mut self, mode: &str) -> Result<()> {
        let floor = self.work.join("floor");
        if floor.exists() {
            std::fs::remove_dir_all(&floor)
                .with_context(|| format!("removing {}", floor.display()))?;
        }
        let docker = self.archives("docker").join("docker.tar.zst");
        let mut jobs = Vec::new();
        for (i, digest) in self.facts.big_layers.iter().enumerate() {
            let dir = floor.join((i + 1).to_string());
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let blob = self
                .work
                .join("floor-blobs")
                .join(digest.trim_start_matches("sha256:"));
            let raw = self.work.join(format!("floor-raw/{}.tar", i + 1));
            let member = format!(
                "{}/layer.tar",
                self.facts.big_diff_ids[i].trim_start_matches("sha256:")
            );
            let (script, args): (&str, Vec<String>) = match mode {
                "parallel" | "sequential" => {
                    (r#"pigz -dc "$1" | tar -x -C "$2""#, vec![s(&blob), s(&dir)])
                }
                "tar" => (r#"tar -x -C "$2" -f "$1""#, vec![s(&raw), s(&dir)]),
                _ => (
                    r#"zstd -dc "$1" | tar -xO "$3" | tar -x -C "$2""#,
                    vec![s(&docker), s(&dir), member],
                ),
            };
            let mut cmd = Command::new("sh");
            cmd.arg("-c").arg(script).arg("sh").args(&args);
            jobs.push(cmd);
        }
        drop_caches()?;
        let t0 = Instant::now();
        if mode == "sequential" {
            for mut job in jobs {
                process::run(&mut job, system::LONG)?;
            }
        } else {
            let children: Vec<_> = jobs
                .iter_mut()
                .map(|j| j.spawn().context("starting a floor pipeline"))
                .collect::<Result<_>>()?;
            for mut child in children {
                let status = child.wait().context("waiting for a floor pipeline")?;
                if !status.success() {
                    bail!("a floor pipeline ({mode}) failed: {status}");
                }
            }
        }
        let t = Secs::new(t0.elapsed().as_secs_f64(), 2);
        let disk = du_bytes(&[&floor]);
        std::fs::remove_dir_all(&floor).with_context(|| format!("removing {}", floor.display()))?;
        let (id, label) = match mode {
            "parallel" => (super::report::FLOOR_PARALLEL, "(6) floor: `pigz -dc | tar -x`, one process per layer in parallel"),
            "sequential" => ("floor-sequential", "(6) floor: `pigz -dc | tar -x`, layers one after the other"),
            "tar" => ("floor-tar", "(6) file creation alone: `tar -x` of the uncompressed layers, in parallel"),
            _ => ("floor-zstd", "(6) floor for the docker-save archive: `zstd -dc | tar -xO LAYER | tar -x`, one per layer in parallel"),
        };
        self.record(id, label, t, disk, None, String::new());
        Ok(())
    }
}

pub(super) fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// A CRI PullImage, as kubelet sends it, timed until it answers (the image
/// is unpacked then).
pub fn cri_pull(address: &Path, image: &str) -> Result<Secs> {
    let mut client = CriClient::connect(address)?;
    let t0 = Instant::now();
    client
        .pull_image(image)
        .with_context(|| format!("CRI PullImage {image}"))?;
    Ok(Secs::new(t0.elapsed().as_secs_f64(), 3))
}

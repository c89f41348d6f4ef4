//! A real kubelet drives the product: `cmd/kubelet` of k8s.io/kubernetes
//! (`scripts/build-kubelet.sh` builds it; its path in `AIRGAP_KUBELET`) in
//! standalone mode, static pods from a manifest directory, on the private
//! containerd (`AIRGAP_CONTAINERD_DIR`, or the system's 1.6) wired to the
//! daemon as a node's would be (see the harness's `kubelet` module for
//! how kubelet is confined and what it changes on the machine is undone).
//!
//! - Registration on, no registry at all: a static pod of an archived
//!   image with `imagePullPolicy: Never` runs (its sandbox image archived
//!   and registered too); a kubelet restart keeps the same container
//!   running; an archive added while kubelet runs lets a new static pod
//!   (manifest added after) run.
//! - Registration off, `imagePullPolicy: IfNotPresent`: kubelet's pull
//!   goes through hosts.toml to the daemon's mirror and the snapshotter
//!   takes every layer from the archive; the registry named as `server`
//!   after the mirror, which holds the same images, is never asked; the
//!   same for an archive added while kubelet runs.
//!
//! Each pod's container prints what the sample layers must hold
//! (`SAMPLE_CHECK`) to its CRI log under kubelet's `podLogsDir`, then
//! sleeps. Root only; without `AIRGAP_KUBELET` the tests are recorded as
//! skipped (an `AIRGAP_KUBELET` that names no executable fails them).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};

use airgap_integration::containerd::{ContainerdOptions, K8S_NS};
use airgap_integration::cri::parse_cri_log;
use airgap_integration::image::{self, BuiltImage, SAMPLE_CHECK, SAMPLE_EXPECTED};
use airgap_integration::kubelet::{self, Kubelet, PullPolicy, RunningContainer, StaticPod};
use airgap_integration::{
    can_run, daemon, free_port, process, serial, CriClient, Daemon, PrivateContainerd, Registry,
    TestDir,
};

/// How long a static pod may take to run (kubelet's pod workers, a pull
/// through the mirror, the sandbox and the container).
const POD_TIMEOUT: Duration = Duration::from_secs(120);

/// The kubelet binary, or `None` after recording why the test does not run.
fn kubelet_binary(test: &str) -> Option<PathBuf> {
    if !can_run(test) {
        return None;
    }
    match kubelet::binary() {
        Ok(Some(path)) => Some(path),
        Ok(None) => {
            airgap_snapshotter::testsupport::skip(
                test,
                &format!(
                    "{} is not set (scripts/build-kubelet.sh builds a kubelet and prints its path)",
                    kubelet::BIN_ENV
                ),
            );
            None
        }
        Err(err) => panic!("{test}: {err:#}"),
    }
}

fn run(test: &str, body: impl FnOnce(&str, &Path) -> Result<()>) {
    let Some(binary) = kubelet_binary(test) else {
        return;
    };
    if let Err(err) = body(test, &binary) {
        panic!("{test}: {err:#}");
    }
    eprintln!("== {test}: passed");
}

/// The `sh -c` script of every test pod: prints what the sample layers
/// hold, then sleeps until stopped (exits 0 on SIGTERM).
fn pod_script() -> String {
    format!("{SAMPLE_CHECK}; trap 'exit 0' TERM INT; sleep 2147483647 & wait")
}

/// Writes the sample image `name:v1` on `host` into `dir`.
fn sample(dir: &Path, host: &str, name: &str) -> Result<BuiltImage> {
    let spec = image::sample_spec(host, name, "v1")?;
    image::write_oci_archive(&spec, &dir.join(format!("{name}.tar")))
}

/// Writes a pause image `<host>/library/pause:<tag>` into `dir`.
fn pause(dir: &Path, host: &str, tag: &str) -> Result<BuiltImage> {
    image::write_pause_archive(
        &format!("{host}/library/pause:{tag}"),
        tag,
        &format!("pause:{tag}"),
        &dir.join(format!("pause-{tag}.tar")),
    )
}

/// Runs `pod` and checks it: running, the sample output in its log.
fn run_static_pod(
    kubelet: &mut Kubelet,
    cri: &mut CriClient,
    pod: &StaticPod,
) -> Result<RunningContainer> {
    kubelet.add_static_pod(pod)?;
    let running = kubelet.wait_running(cri, &pod.pod_name(), POD_TIMEOUT)?;
    eprintln!(
        "   pod {} runs: container {} pid {} image {}",
        pod.pod_name(),
        running.id,
        running.pid,
        running.image_ref
    );
    let mut output = String::new();
    let printed = process::wait_until(
        &format!("pod {} to print the sample output", pod.pod_name()),
        Duration::from_secs(30),
        || {
            let log = std::fs::read_to_string(&running.log_path).unwrap_or_default();
            output = parse_cri_log(&log)?.output;
            Ok(output == SAMPLE_EXPECTED)
        },
    );
    printed.with_context(|| {
        format!(
            "{} printed:\n{output}--- expected:\n{SAMPLE_EXPECTED}",
            running.log_path.display()
        )
    })?;
    Ok(running)
}

/// Waits until CRI has `image` (the daemon registered it).
fn wait_registered(cri: &mut CriClient, image: &str) -> Result<()> {
    process::wait_until(
        &format!("CRI to have {image}"),
        Duration::from_secs(60),
        || Ok(cri.image_status(image)?.is_some()),
    )
}

/// Asserts every layer of `image` was committed from the archive by the
/// snapshotter (the mirror would serve layer blobs too: this is what
/// proves the fast path) and has its snapshot in containerd.
fn assert_layers_from_archive(
    daemon: &Daemon,
    containerd: &PrivateContainerd,
    image: &BuiltImage,
) -> Result<()> {
    let log = daemon.log();
    let keys = containerd.snapshot_keys(K8S_NS)?;
    for chain_id in &image.chain_ids {
        ensure!(
            log.lines().any(
                |l| l.contains("layer committed from archive") && l.contains(chain_id.as_str())
            ),
            "layer {chain_id} of {} was not committed from the archive",
            image.name
        );
        ensure!(
            keys.contains(chain_id),
            "no snapshot {chain_id} of {}: {keys:?}",
            image.name
        );
    }
    Ok(())
}

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Registration on, no registry anywhere: pods of registered archived
/// images with `imagePullPolicy: Never`; a kubelet restart; an archive
/// added while kubelet runs. (Two kubelet starts.)
#[test]
fn kubelet_runs_static_pods_of_registered_archives() {
    run("kubelet_registered", kubelet_registered);
}

fn kubelet_registered(test: &str, binary: &Path) -> Result<()> {
    let _serial = serial()?;
    let work = TestDir::new(test)?;
    // A registry host where nothing listens: any pull would fail.
    let host = format!("127.0.0.1:{}", free_port()?);
    let first = sample(work.path(), &host, "kubelet-first")?;
    let sandbox = pause(work.path(), &host, "kubelet")?;
    let added = sample(work.path(), &host, "kubelet-added")?;

    eprintln!("== {test}: daemon, containerd, registration into it");
    let mut daemon = Daemon::start_with_archives(&[&first.archive, &sandbox.archive])?;
    let options = ContainerdOptions {
        sandbox_image: Some(sandbox.name.clone()),
        ..Default::default()
    };
    let containerd = PrivateContainerd::start(daemon.socket(), &options)?;
    let address = containerd.address().display().to_string();
    daemon.restart_with_args(&["--containerd-address", &address, "--import-mode", "lazy"])?;
    containerd.wait_snapshotter_reachable(Duration::from_secs(30))?;
    let mut cri = CriClient::connect(containerd.address())?;
    wait_registered(&mut cri, &first.name)?;
    wait_registered(&mut cri, &sandbox.name)?;

    eprintln!(
        "== {test}: kubelet {} on containerd {}",
        binary.display(),
        containerd.version()
    );
    let started = Instant::now();
    let mut kubelet = Kubelet::start(binary, containerd.address())?;
    eprintln!("   kubelet healthy in {:?}", started.elapsed());
    let script = pod_script();
    let command = ["/bin/sh", "-c", script.as_str()];
    let pod = StaticPod {
        name: "airgap-registered",
        image: &first.name,
        pull_policy: PullPolicy::Never,
        command: &command,
    };
    let started = Instant::now();
    let running = run_static_pod(&mut kubelet, &mut cri, &pod)?;
    eprintln!("   static pod ran in {:?}", started.elapsed());
    ensure!(
        running.image_ref.contains(&first.manifest_digest)
            || running.image_ref == first.config_digest,
        "the container runs {}, not {} ({})",
        running.image_ref,
        first.name,
        first.manifest_digest
    );
    for image in [&first, &sandbox] {
        let keys = containerd.snapshot_keys(K8S_NS)?;
        for chain_id in &image.chain_ids {
            ensure!(keys.contains(chain_id), "no snapshot {chain_id}: {keys:?}");
        }
    }

    eprintln!("== {test}: kubelet restarted");
    let adds_before = std::fs::read_to_string(kubelet.log_path())?
        .matches("SyncLoop ADD")
        .count();
    kubelet.stop()?;
    ensure!(
        pid_alive(running.pid),
        "the container's process {} died with kubelet",
        running.pid
    );
    kubelet.restart()?;
    process::wait_until(
        "kubelet to take the static pod again",
        Duration::from_secs(60),
        || {
            Ok(std::fs::read_to_string(kubelet.log_path())?
                .matches("SyncLoop ADD")
                .count()
                > adds_before)
        },
    )
    .with_context(|| format!("end of kubelet log:\n{}", kubelet.log_tail(40)))?;
    // kubelet syncs the pod right after it takes it: a kubelet that would
    // recreate it does so within seconds. The same container must stay.
    let watch = Instant::now();
    while watch.elapsed() < Duration::from_secs(10) {
        let now = kubelet.wait_running(&mut cri, &pod.pod_name(), Duration::from_secs(5))?;
        ensure!(
            now.id == running.id && now.pid == running.pid && now.sandbox_id == running.sandbox_id,
            "after the kubelet restart the pod runs container {} (pid {}, sandbox {}), \
             not {} (pid {}, sandbox {})\nend of kubelet log:\n{}",
            now.id,
            now.pid,
            now.sandbox_id,
            running.id,
            running.pid,
            running.sandbox_id,
            kubelet.log_tail(40)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let of_pod = cri
        .list_containers()?
        .into_iter()
        .filter(|c| {
            c.labels.get("io.kubernetes.pod.name").map(String::as_str) == Some(&pod.pod_name())
        })
        .count();
    ensure!(
        of_pod == 1,
        "{of_pod} containers of the pod after the restart"
    );

    eprintln!("== {test}: an archive added while kubelet runs, then its static pod");
    let dest = daemon.archives_dir().join("kubelet-added.tar");
    std::fs::copy(&added.archive, &dest)
        .with_context(|| format!("copying into {}", dest.display()))?;
    wait_registered(&mut cri, &added.name)?;
    let later = StaticPod {
        name: "airgap-added",
        image: &added.name,
        pull_policy: PullPolicy::Never,
        command: &command,
    };
    run_static_pod(&mut kubelet, &mut cri, &later)?;
    ensure!(
        pid_alive(running.pid),
        "the first pod's process {} died",
        running.pid
    );
    daemon.check_running()?;

    eprintln!("== {test}: kubelet stopped, pods removed, machine restored");
    kubelet.shutdown(&mut cri)?;
    Ok(())
}

/// Writes the hosts directory with the daemon's own `config --write`:
/// `_default/hosts.toml`, the mirror first and the registry as `server`.
fn write_hosts_dir(dir: &Path, mirror: &str, server_url: &str) -> Result<PathBuf> {
    let hosts = dir.join("certs.d");
    daemon::write_hosts_dir(&hosts, mirror, Some(server_url))?;
    Ok(hosts)
}

/// The registry's requests for the repository of `image` since `mark`.
fn registry_asked(registry: &Registry, mark: usize, image: &BuiltImage) -> Vec<String> {
    let repo = image
        .name
        .split_once('/')
        .and_then(|(_, rest)| rest.rsplit_once(':'))
        .map(|(repo, _)| format!("/v2/{repo}/"))
        .unwrap_or_default();
    registry.settle();
    registry
        .access_lines()
        .into_iter()
        .skip(mark)
        .map(|l| l.path)
        .filter(|p| p.starts_with(&repo))
        .collect()
}

/// Registration off, `imagePullPolicy: IfNotPresent`: kubelet pulls
/// through hosts.toml and the mirror, every layer comes from the archive,
/// the registry after the mirror is never asked; also for an archive
/// added while kubelet runs. (One kubelet start.)
#[test]
fn kubelet_pulls_archived_images_through_the_mirror() {
    run("kubelet_mirror", kubelet_mirror);
}

fn kubelet_mirror(test: &str, binary: &Path) -> Result<()> {
    let _serial = serial()?;
    let work = TestDir::new(test)?;
    let registry = Registry::start()?;
    let host = registry.host();
    let first = sample(work.path(), &host, "kubelet-pulled")?;
    let sandbox = pause(work.path(), &host, "kubelet-mirror")?;
    let added = sample(work.path(), &host, "kubelet-pulled-later")?;
    // The registry holds every image: a pull that missed the mirror would
    // succeed there, and show in its access log.
    for image in [&first, &sandbox, &added] {
        let repo = image
            .name
            .strip_prefix(&format!("{host}/"))
            .context("image on the registry")?;
        registry.push_oci_archive(&image.archive, &image.tag, repo)?;
    }
    let mark = registry.mark();

    eprintln!("== {test}: daemon with its mirror, registration off; containerd");
    let mirror = format!("127.0.0.1:{}", free_port()?);
    let daemon = Daemon::start_with_args(
        &[&first.archive, &sandbox.archive],
        &["--mirror-listen", &mirror],
    )?;
    let hosts = write_hosts_dir(work.path(), &mirror, &format!("http://{host}"))?;
    let options = ContainerdOptions {
        hosts_dir: Some(hosts),
        sandbox_image: Some(sandbox.name.clone()),
        ..Default::default()
    };
    let containerd = PrivateContainerd::start(daemon.socket(), &options)?;
    let mut cri = CriClient::connect(containerd.address())?;
    ensure!(
        cri.image_status(&first.name)?.is_none(),
        "{} is in containerd before any pull (registration should be off)",
        first.name
    );

    eprintln!(
        "== {test}: kubelet {} on containerd {}",
        binary.display(),
        containerd.version()
    );
    let mut kubelet = Kubelet::start(binary, containerd.address())?;
    let script = pod_script();
    let command = ["/bin/sh", "-c", script.as_str()];
    let pod = StaticPod {
        name: "airgap-pulled",
        image: &first.name,
        pull_policy: PullPolicy::IfNotPresent,
        command: &command,
    };
    let started = Instant::now();
    run_static_pod(&mut kubelet, &mut cri, &pod)?;
    eprintln!("   static pod pulled and ran in {:?}", started.elapsed());
    // Absent before kubelet started: kubelet's PullImage brought it.
    ensure!(
        cri.image_status(&first.name)?.is_some(),
        "{} is not in containerd after its pod ran",
        first.name
    );
    for image in [&first, &sandbox] {
        assert_layers_from_archive(&daemon, &containerd, image)?;
        let asked = registry_asked(&registry, mark, image);
        ensure!(
            asked.is_empty(),
            "the pull of {} reached the registry, not only the mirror: {asked:?}",
            image.name
        );
    }

    eprintln!("== {test}: an archive added while kubelet runs, then its static pod");
    let dest = daemon.archives_dir().join("kubelet-pulled-later.tar");
    std::fs::copy(&added.archive, &dest)
        .with_context(|| format!("copying into {}", dest.display()))?;
    let needle = dest.display().to_string();
    process::wait_until(
        "the daemon to index the new archive",
        Duration::from_secs(30),
        || {
            Ok(daemon
                .log()
                .lines()
                .any(|l| l.contains("archive indexed") && l.contains(&needle)))
        },
    )?;
    let later = StaticPod {
        name: "airgap-pulled-later",
        image: &added.name,
        pull_policy: PullPolicy::IfNotPresent,
        command: &command,
    };
    run_static_pod(&mut kubelet, &mut cri, &later)?;
    assert_layers_from_archive(&daemon, &containerd, &added)?;
    let asked = registry_asked(&registry, mark, &added);
    ensure!(
        asked.is_empty(),
        "the pull of {} reached the registry: {asked:?}",
        added.name
    );

    eprintln!("== {test}: kubelet stopped, pods removed, machine restored");
    kubelet.shutdown(&mut cri)?;
    Ok(())
}

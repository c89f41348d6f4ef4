//! End-to-end tests with crictl (`sigs.k8s.io/cri-tools`, built by
//! `scripts/build-crictl.sh`) as a second CRI client, next to the
//! harness's own: a real client, with its own pod and container configs,
//! pulls and runs archived images through a private containerd, the
//! airgap snapshotter and its mirror, with no registry reachable.
//!
//! The binary comes from `AIRGAP_CRICTL` (a path). Unset: the tests are
//! recorded as skipped (the skip ledger); set to a file that is not there:
//! they fail. crictl runs with a private `--config` file and explicit
//! endpoints, never `/etc/crictl.yaml` or the machine's containerd.
//!
//! Root only, serialized with the other end-to-end tests, every part
//! stopped and removed on drop (pods by id, then containerd, the daemon
//! and the temporary directories).

use std::io::ErrorKind;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};

use airgap_integration::containerd::{ContainerdOptions, K8S_NS};
use airgap_integration::image::{self, BuiltImage, ImageSpec, SAMPLE_CHECK, SAMPLE_EXPECTED};
use airgap_integration::registry::http_status;
use airgap_integration::{
    can_run, daemon, free_port, process, serial, Daemon, PrivateContainerd, TestDir,
};

/// Where the tests find crictl.
const CRICTL_ENV: &str = "AIRGAP_CRICTL";

fn crictl_binary(test: &str) -> Result<Option<PathBuf>> {
    airgap_integration::test_tool(test, CRICTL_ENV, "scripts/build-crictl.sh")
}

/// A TCP port where the images' registry would be: it accepts and at once
/// closes every connection, counting them, so that a pull that reached
/// for the registry fails and shows. Stopped on drop.
struct DeadRegistry {
    port: u16,
    connections: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl DeadRegistry {
    fn start() -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0")?;
        listener
            .set_nonblocking(true)
            .context("making the listener non-blocking")?;
        let port = listener.local_addr()?.port();
        let connections = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (count, stopped) = (connections.clone(), stop.clone());
        // Non-blocking accept polled, so that drop can end the thread.
        let thread = std::thread::spawn(move || {
            while !stopped.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        count.fetch_add(1, Ordering::Relaxed);
                        drop(stream);
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    Err(e) => eprintln!("warning: dead registry accept: {e}"),
                }
            }
        });
        Ok(Self {
            port,
            connections,
            stop,
            thread: Some(thread),
        })
    }

    fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }
}

impl Drop for DeadRegistry {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// crictl with a private config file and the private containerd's socket
/// as both endpoints.
struct Crictl {
    binary: PathBuf,
    config: PathBuf,
    endpoint: String,
}

impl Crictl {
    fn new(binary: PathBuf, dir: &Path, containerd: &PrivateContainerd) -> Result<Self> {
        let endpoint = format!("unix://{}", containerd.address().display());
        let config = dir.join("crictl.yaml");
        std::fs::write(
            &config,
            format!(
                "runtime-endpoint: {endpoint}\nimage-endpoint: {endpoint}\ntimeout: 60\n\
                 debug: false\npull-image-on-create: false\ndisable-pull-on-run: true\n"
            ),
        )
        .with_context(|| format!("writing {}", config.display()))?;
        Ok(Self {
            binary,
            config,
            endpoint,
        })
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.binary);
        cmd.arg("--config")
            .arg(&self.config)
            .args(["--runtime-endpoint", &self.endpoint])
            .args(["--image-endpoint", &self.endpoint])
            .args(args);
        cmd
    }

    /// Runs `crictl ARGS`, failing with its output when it fails.
    fn run(&self, args: &[&str]) -> Result<String> {
        process::run(&mut self.command(args), Duration::from_secs(120))
            .with_context(|| format!("crictl {}", args.join(" ")))
    }

    fn version(&self) -> Result<String> {
        self.run(&["--version"])
    }
}

/// One row of `crictl images --digests --no-trunc --pinned`.
#[derive(Debug)]
struct ImageRow {
    image: String,
    tag: String,
    digest: String,
    id: String,
    pinned: String,
}

fn images(crictl: &Crictl) -> Result<Vec<ImageRow>> {
    let out = crictl.run(&["images", "--digests", "--no-trunc", "--pinned"])?;
    let mut lines = out.lines();
    let header: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    ensure!(
        header == ["IMAGE", "TAG", "DIGEST", "IMAGE", "ID", "SIZE", "PINNED"],
        "unexpected `crictl images` header {header:?}"
    );
    lines
        .map(
            |line| match line.split_whitespace().collect::<Vec<_>>()[..] {
                [image, tag, digest, id, _size, pinned] => Ok(ImageRow {
                    image: image.to_string(),
                    tag: tag.to_string(),
                    digest: digest.to_string(),
                    id: id.to_string(),
                    pinned: pinned.to_string(),
                }),
                _ => bail!("unexpected `crictl images` row {line:?} in:\n{out}"),
            },
        )
        .collect()
}

/// The row of `built` (its repository, `tag` or `<none>`), failing with the
/// whole listing when there is none.
fn row_of<'a>(rows: &'a [ImageRow], built: &BuiltImage, tag: &str) -> Result<&'a ImageRow> {
    let repo = built
        .name
        .rsplit_once(':')
        .map(|(repo, _)| repo)
        .context("image name without a tag")?;
    rows.iter()
        .find(|r| r.image == repo && r.tag == tag)
        .with_context(|| format!("`crictl images` has no {repo} {tag}: {rows:#?}"))
}

/// Pods crictl started, removed by id on drop (also when the test fails).
struct Pods<'a> {
    crictl: &'a Crictl,
    ids: Vec<String>,
}

impl Drop for Pods<'_> {
    fn drop(&mut self) {
        for id in self.ids.drain(..) {
            if let Err(err) = self.crictl.run(&["rmp", "--force", &id]) {
                eprintln!("warning: removing pod {id}: {err:#}");
            }
        }
    }
}

/// Every image name of this test is on `host`, where no registry answers.
fn build_images(work: &Path, host: &str) -> Result<Vec<BuiltImage>> {
    let specs = [
        image::sample_spec(host, "bytag", "v1")?,
        image::sample_spec(host, "bydigest", "v1")?,
        image::sample_spec(host, "registered", "v1")?,
    ];
    let mut built = Vec::new();
    for spec in &specs {
        let name = spec
            .name
            .rsplit('/')
            .next()
            .unwrap_or("image")
            .replace(':', "-");
        built.push(image::write_oci_archive(
            spec,
            &work.join(format!("{name}.tar")),
        )?);
    }
    let pause = ImageSpec {
        name: format!("{host}/library/pause:crictl"),
        tag: "crictl".to_string(),
        layers: image::pause_layers("pause:crictl")?,
    };
    built.push(image::write_oci_archive_with_cmd(
        &pause,
        &work.join("pause.tar"),
        image::LayerCompression::Gzip,
        Some(image::PAUSE_CMD),
    )?);
    Ok(built)
}

/// Blob GETs the daemon's mirror answered for any of `digests`.
fn mirror_blob_gets(daemon: &Daemon, digests: &[String]) -> Vec<String> {
    daemon
        .log()
        .lines()
        .filter(|l| l.contains("mirror request") && l.contains("GET") && l.contains("/blobs/"))
        .filter(|l| digests.iter().any(|d| l.contains(d.as_str())))
        .map(str::to_string)
        .collect()
}

/// crictl pulls archived images (by tag, by digest), lists them with their
/// digests (and the registered ones pinned), and runs a pod of them
/// (`runp`, `create`, `start`, `exec`, `stop`, `rm`), while the images'
/// registry refuses every connection: the mirror answers every manifest
/// from the archives, the snapshotter every layer, no layer blob is
/// fetched at all, and nothing reaches the registry.
#[test]
fn crictl_pulls_and_runs_archived_images_with_no_registry() {
    let test = "crictl_pull_run";
    if !can_run(test) {
        return;
    }
    let binary = match crictl_binary(test) {
        Ok(Some(binary)) => binary,
        Ok(None) => return,
        Err(err) => panic!("{test}: {err:#}"),
    };
    if let Err(err) = crictl_pull_run(test, binary) {
        panic!("{test}: {err:#}");
    }
    eprintln!("== {test}: passed");
}

fn crictl_pull_run(test: &str, binary: PathBuf) -> Result<()> {
    let _serial = serial()?;
    let registry = DeadRegistry::start()?;
    let host = registry.host();
    let work = TestDir::new(test)?;
    let built = build_images(work.path(), &host)?;
    let [by_tag, by_digest, registered, pause] = &built[..] else {
        bail!("expected four test images");
    };

    // The daemon's mirror, its upstream for the images' host the dead
    // registry; containerd's hosts.toml puts the mirror first.
    let config = work.path().join("daemon.toml");
    std::fs::write(
        &config,
        format!("[[upstream]]\nregistry = \"{host}\"\nendpoint = \"http://{host}\"\n"),
    )?;
    let mirror = format!("127.0.0.1:{}", free_port()?);
    let archives: Vec<&Path> = built.iter().map(|b| b.archive.as_path()).collect();
    eprintln!("== {test}: starting airgap-snapshotter (mirror {mirror})");
    let mut daemon = Daemon::start_with_args(
        &archives,
        &[
            "--mirror-listen",
            &mirror,
            "--config",
            &config.to_string_lossy(),
        ],
    )?;
    let mirror_port: u16 = mirror.rsplit(':').next().unwrap_or_default().parse()?;
    process::wait_until("the mirror to answer", Duration::from_secs(30), || {
        Ok(http_status(mirror_port, "/v2/").ok() == Some(200))
    })?;
    let hosts = work.path().join("certs.d");
    daemon::write_hosts_dir(&hosts, &mirror, Some(&format!("http://{host}")))?;
    eprintln!("== {test}: starting a private containerd");
    let containerd = PrivateContainerd::start(
        daemon.socket(),
        &ContainerdOptions {
            hosts_dir: Some(hosts),
            sandbox_image: Some(pause.name.clone()),
            ..Default::default()
        },
    )?;
    let crictl = Crictl::new(binary, work.path(), &containerd)?;
    eprintln!(
        "== {test}: {} against containerd {}",
        crictl.version()?.trim(),
        containerd.version()
    );

    // 1. Pulls, by tag and by digest.
    eprintln!("== {test}: crictl pull {}", by_tag.name);
    let out = crictl.run(&["pull", &by_tag.name])?;
    ensure!(
        out.contains(&by_tag.config_digest),
        "crictl pull {} answered {out:?}, expected the image id {}",
        by_tag.name,
        by_tag.config_digest
    );
    let repo = by_digest.name.rsplit_once(':').context("tagged name")?.0;
    let pinned_ref = format!("{repo}@{}", by_digest.manifest_digest);
    eprintln!("== {test}: crictl pull {pinned_ref}");
    let out = crictl.run(&["pull", &pinned_ref])?;
    ensure!(
        out.contains(&by_digest.config_digest),
        "crictl pull {pinned_ref} answered {out:?}, expected the image id {}",
        by_digest.config_digest
    );

    // 2. Listed with the archives' digests; pulled images are not pinned.
    let rows = images(&crictl)?;
    for (built, tag) in [(by_tag, "v1"), (by_digest, "<none>")] {
        let row = row_of(&rows, built, tag)?;
        ensure!(
            row.digest == built.manifest_digest && row.id == built.config_digest,
            "`crictl images` lists {} with digest {} and id {}, the archive holds {} and {}",
            built.name,
            row.digest,
            row.id,
            built.manifest_digest,
            built.config_digest
        );
        ensure!(row.pinned == "false", "{} is pinned: {row:?}", built.name);
    }

    // 3. A pod: host network, the sandbox image pulled by containerd
    // through the mirror, a container of the image pulled by tag.
    let pod_json = work.path().join("pod.json");
    let logs = work.path().join("pod-logs");
    std::fs::create_dir_all(&logs)?;
    let pid = std::process::id();
    std::fs::write(
        &pod_json,
        serde_json::json!({
            "metadata": {
                "name": format!("airgap-crictl-{pid}"),
                "namespace": "airgap-e2e",
                "uid": format!("00000000-0000-4000-8002-{pid:012x}"),
                "attempt": 0
            },
            "log_directory": logs,
            "linux": {
                "security_context": {
                    "namespace_options": { "network": 2, "pid": 1, "ipc": 0 }
                }
            }
        })
        .to_string(),
    )?;
    let container_json = work.path().join("container.json");
    std::fs::write(
        &container_json,
        serde_json::json!({
            "metadata": { "name": "sample" },
            "image": { "image": by_tag.name },
            "command": image::PAUSE_CMD,
            "log_path": "sample.log",
            "linux": {}
        })
        .to_string(),
    )?;
    let mut pods = Pods {
        crictl: &crictl,
        ids: Vec::new(),
    };
    eprintln!("== {test}: crictl runp, create, start");
    let pod = crictl
        .run(&["runp", &pod_json.to_string_lossy()])?
        .trim()
        .to_string();
    pods.ids.push(pod.clone());
    let container = crictl
        .run(&[
            "create",
            "--no-pull",
            &pod,
            &container_json.to_string_lossy(),
            &pod_json.to_string_lossy(),
        ])?
        .trim()
        .to_string();
    crictl.run(&["start", &container])?;
    let state = crictl.run(&[
        "inspect",
        "--output",
        "go-template",
        "--template",
        "{{.status.state}}",
        &container,
    ])?;
    ensure!(
        state.trim() == "CONTAINER_RUNNING",
        "container {container} is {state:?} after crictl start"
    );
    let out = crictl.run(&["exec", &container, "/bin/sh", "-c", SAMPLE_CHECK])?;
    ensure!(
        out == SAMPLE_EXPECTED,
        "crictl exec in {} differs\n--- got:\n{out}--- expected:\n{SAMPLE_EXPECTED}",
        by_tag.name
    );
    let marker = crictl.run(&["exec", &container, "cat", "/data/file"])?;
    ensure!(marker == "hello airgap\n", "cat /data/file: {marker:?}");

    // containerd pulled the sandbox image by its tag, through the mirror.
    let rows = images(&crictl)?;
    let row = row_of(&rows, pause, "crictl")?;
    ensure!(
        row.digest == pause.manifest_digest,
        "the sandbox image is listed with digest {}, the archive holds {}",
        row.digest,
        pause.manifest_digest
    );

    eprintln!("== {test}: crictl stop, rm, stopp, rmp");
    crictl.run(&["stop", "--timeout", "10", &container])?;
    crictl.run(&["rm", &container])?;
    crictl.run(&["stopp", &pod])?;
    crictl.run(&["rmp", &pod])?;
    pods.ids.clear();
    let left = crictl.run(&["ps", "--all", "--quiet"])?;
    ensure!(left.trim().is_empty(), "containers left: {left}");
    let left = crictl.run(&["pods", "--quiet"])?;
    ensure!(left.trim().is_empty(), "pods left: {left}");
    drop(pods);

    // 4. Registration: the image nobody pulled shows up pinned (CRI
    // reports pins from 1.7 on), with the archive's digest.
    eprintln!("== {test}: daemon registering into containerd");
    let address = containerd.address().display().to_string();
    daemon.restart_with_args(&["--containerd-address", &address, "--import-mode", "lazy"])?;
    let registered_repo = registered.name.rsplit_once(':').context("tagged name")?.0;
    let mut listed = None;
    process::wait_until(
        &format!("crictl to list {} with its digest", registered.name),
        Duration::from_secs(60),
        || {
            let rows = images(&crictl)?;
            listed = rows
                .into_iter()
                .find(|r| r.image == registered_repo && r.tag == "v1" && r.digest != "<none>");
            Ok(listed.is_some())
        },
    )?;
    let row = listed.expect("found");
    let pins = containerd.version().major >= 2 || containerd.version().minor >= 7;
    ensure!(
        row.digest == registered.manifest_digest
            && row.id == registered.config_digest
            && row.pinned == pins.to_string(),
        "containerd {}: `crictl images` lists the registered {} as {row:?}; expected digest {}, id {}, pinned {pins}",
        containerd.version(),
        registered.name,
        registered.manifest_digest,
        registered.config_digest
    );
    let records = containerd.ctr(&["-n", K8S_NS, "images", "ls"])?;
    ensure!(
        records
            .lines()
            .any(|l| l.starts_with(&registered.name)
                && l.contains("io.cri-containerd.pinned=pinned")),
        "the registered image record is not labelled pinned:\n{records}"
    );

    // No layer blob was fetched, from the mirror or anywhere, and nothing
    // reached the registry.
    // (The daemon logs every mirror request: the manifests must be there.)
    let log = daemon.log();
    ensure!(
        log.lines()
            .any(|l| l.contains("mirror request") && l.contains("/manifests/")),
        "the daemon logged no mirror request for a manifest"
    );
    let layers: Vec<String> = built.iter().flat_map(|b| b.layer_digests.clone()).collect();
    let fetched = mirror_blob_gets(&daemon, &layers);
    ensure!(
        fetched.is_empty(),
        "layer blobs were fetched from the mirror: {fetched:#?}"
    );
    ensure!(
        registry.connections() == 0,
        "{} connection(s) reached the images' registry",
        registry.connections()
    );
    daemon.check_running()?;
    drop(containerd);
    Ok(())
}

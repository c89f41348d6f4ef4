//! End-to-end tests of the registry mirror: a private containerd whose
//! hosts directory (written by `airgap-snapshotter config --write`) puts the
//! daemon's mirror first and a real `docker-registry` last.
//!
//! - An archived image (OCI layout, and a docker-save archive) pulls with
//!   `ctr images pull --hosts-dir` and through CRI with no blob, and no
//!   request at all, reaching the registry; it has the archive's manifest
//!   digest and runs.
//! - An image only in the registry pulls through the mirror's upstream
//!   fallback; with a registry behind TLS from a test CA and htpasswd auth,
//!   only the daemon holds the CA and the credentials, so the pull cannot
//!   have gone around the mirror.
//! - With the registry gone, archived images still pull (CRI and ctr) and
//!   the daemon logs that the upstream is down.
//!
//! Root only, serialized with the other end-to-end tests, every part
//! stopped and removed on drop.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Context, Result};

use airgap_integration::containerd::{ContainerdOptions, K8S_NS, SNAPSHOTTER};
use airgap_integration::image::{self, BuiltImage, ImageSpec, SAMPLE_CHECK, SAMPLE_EXPECTED};
use airgap_integration::process::{self, Proc};
use airgap_integration::registry::{http_status, parse_access_line};
use airgap_integration::{
    daemon, free_port, run_as_root, serial, CriClient, PrivateContainerd, TestDir,
};

const USER: &str = "airgap";
const PASSWORD: &str = "not-a-real-secret-7f3a";

/// `docker-registry` on loopback, optionally behind htpasswd basic auth.
struct TestRegistry {
    proc: Option<Proc>,
    port: u16,
    log: PathBuf,
    auth: bool,
    /// The test CA's certificate, when it serves TLS.
    ca: Option<PathBuf>,
    /// Dropped last: removed after the process stopped.
    _dir: TestDir,
}

/// A CA and a server certificate for 127.0.0.1 signed by it, made with
/// `openssl` in `dir`; returns (ca.pem, server.pem, server.key).
fn test_ca(dir: &Path) -> Result<(PathBuf, PathBuf, PathBuf)> {
    // File names are relative to `dir`, where openssl runs.
    let (ca, cert, key) = (
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server.key"),
    );
    let openssl = |args: &[&str]| -> Result<()> {
        process::run(
            Command::new("openssl").current_dir(dir).args(args),
            Duration::from_secs(60),
        )?;
        Ok(())
    };
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=airgap test CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ])?;
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    ])?;
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
         keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
    )?;
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "server.ext",
    ])?;
    Ok((ca, cert, key))
}

impl TestRegistry {
    fn start(auth: bool, tls: bool) -> Result<Self> {
        let dir = TestDir::new("mirror-registry")?;
        let port = free_port()?;
        let storage = dir.path().join("storage");
        std::fs::create_dir_all(&storage)?;
        let mut auth_yaml = String::new();
        if auth {
            let htpasswd = dir.path().join("htpasswd");
            process::run(
                Command::new("htpasswd")
                    .args(["-Bbc"])
                    .arg(&htpasswd)
                    .args([USER, PASSWORD]),
                Duration::from_secs(30),
            )?;
            auth_yaml = format!(
                "auth:\n  htpasswd:\n    realm: airgap-test\n    path: {}\n",
                htpasswd.display()
            );
        }
        let mut tls_yaml = String::new();
        let mut ca = None;
        if tls {
            let (ca_pem, cert, key) = test_ca(dir.path())?;
            tls_yaml = format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                cert.display(),
                key.display()
            );
            ca = Some(ca_pem);
        }
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\n\
                 log:\n  level: warn\n  accesslog:\n    disabled: false\n\
                 storage:\n  filesystem:\n    rootdirectory: {}\n\
                 http:\n  addr: 127.0.0.1:{port}\n{tls_yaml}{auth_yaml}",
                storage.display()
            ),
        )?;
        let log = dir.path().join("registry.log");
        let mut proc = Proc::spawn(
            "docker-registry",
            Command::new("docker-registry").arg("serve").arg(&config),
            &log,
        )?;
        // Plain HTTP to a TLS port gets a 400.
        let want = match (tls, auth) {
            (true, _) => 400,
            (false, true) => 401,
            (false, false) => 200,
        };
        process::wait_until("docker-registry to answer", Duration::from_secs(30), || {
            proc.check_running()?;
            Ok(http_status(port, "/v2/").ok() == Some(want))
        })?;
        Ok(Self {
            proc: Some(proc),
            port,
            log,
            auth,
            ca,
            _dir: dir,
        })
    }

    fn url(&self) -> String {
        let scheme = if self.ca.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.host())
    }

    fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn push(&self, archive: &Path, tag: &str, repo: &str) -> Result<()> {
        let mut cmd = Command::new("skopeo");
        cmd.args(["copy", "--quiet", "--dest-tls-verify=false"]);
        if self.auth {
            cmd.arg(format!("--dest-creds={USER}:{PASSWORD}"));
        }
        cmd.arg(format!("oci-archive:{}:{tag}", archive.display()))
            .arg(format!("docker://{}/{repo}", self.host()));
        process::run(&mut cmd, Duration::from_secs(120))?;
        Ok(())
    }

    /// Raw access-log lines (they end with the user agent).
    fn access(&self) -> Vec<String> {
        String::from_utf8_lossy(&std::fs::read(&self.log).unwrap_or_default())
            .lines()
            .filter(|l| parse_access_line(l).is_some())
            .map(str::to_string)
            .collect()
    }

    fn stop(&mut self) -> Result<()> {
        if let Some(mut p) = self.proc.take() {
            p.stop(process::STOP_TIMEOUT)?;
        }
        Ok(())
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let a = self.access();
            eprintln!(
                "---- registry access log {} ----\n{}",
                self.log.display(),
                a[a.len().saturating_sub(40)..].join("\n")
            );
        }
        if let Some(mut p) = self.proc.take() {
            if let Err(e) = p.stop(process::STOP_TIMEOUT) {
                eprintln!("warning: stopping docker-registry: {e:#}");
            }
        }
    }
}

/// `airgap-snapshotter serve` with its mirror on a free loopback port and
/// a config file (the `[[upstream]]` tables).
struct MirrorDaemon {
    proc: Option<Proc>,
    socket: PathBuf,
    port: u16,
    log: PathBuf,
    /// Dropped last: removed after the process stopped.
    _dir: TestDir,
}

impl MirrorDaemon {
    fn start(archives: &[&Path], config: &str) -> Result<Self> {
        let dir = TestDir::new("mirror-daemon")?;
        let archives_dir = dir.path().join("archives");
        std::fs::create_dir_all(&archives_dir)?;
        for a in archives {
            std::fs::copy(a, archives_dir.join(a.file_name().context("no file name")?))?;
        }
        let config_file = dir.path().join("config.toml");
        std::fs::write(&config_file, config)?;
        let port = free_port()?;
        let socket = dir.path().join("snap.sock");
        let log = dir.path().join("daemon.log");
        let mut proc = Proc::spawn(
            "airgap-snapshotter",
            Command::new(daemon::binary()?)
                .env("RUST_LOG", "debug,h2=info,hyper=info,hyper_util=info,tower=info,tonic=info,reqwest=info,rustls=info")
                .env("NO_COLOR", "1")
                .arg("serve")
                .arg("--config")
                .arg(&config_file)
                .arg("--root")
                .arg(dir.path().join("root"))
                .arg("--socket")
                .arg(&socket)
                .arg("--archives")
                .arg(&archives_dir)
                .arg("--mirror-listen")
                .arg(format!("127.0.0.1:{port}"))
                .arg("--metrics-listen")
                .arg("off")
                .args(["--import-mode", "off"]),
            &log,
        )?;
        let s = socket.clone();
        process::wait_until(
            "airgap-snapshotter and its mirror",
            Duration::from_secs(60),
            || {
                proc.check_running()?;
                Ok(std::os::unix::net::UnixStream::connect(&s).is_ok()
                    && TcpStream::connect(("127.0.0.1", port)).is_ok()
                    && http_status(port, "/v2/").ok() == Some(200))
            },
        )
        .with_context(|| format!("end of {}:\n{}", log.display(), process::tail(&log, 40)))?;
        Ok(Self {
            proc: Some(proc),
            socket,
            port,
            log,
            _dir: dir,
        })
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn log(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.log).unwrap_or_default()).into_owned()
    }

    fn check_running(&mut self) -> Result<()> {
        self.proc
            .as_mut()
            .context("daemon stopped")?
            .check_running()
    }
}

impl Drop for MirrorDaemon {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- end of airgap-snapshotter log {} ----\n{}",
                self.log.display(),
                process::tail(&self.log, 80)
            );
        }
        if let Some(mut p) = self.proc.take() {
            if let Err(e) = p.stop(process::STOP_TIMEOUT) {
                eprintln!("warning: stopping airgap-snapshotter: {e:#}");
            }
        }
    }
}

/// Writes the hosts directory with the daemon's own `config --write`:
/// `_default/hosts.toml` with the mirror first and `server` last.
fn write_hosts_dir(dir: &Path, mirror: &str, server_url: &str) -> Result<PathBuf> {
    let hosts = dir.join("certs.d");
    daemon::write_hosts_dir(&hosts, mirror, Some(server_url))?;
    let text = std::fs::read_to_string(hosts.join("_default/hosts.toml"))?;
    ensure!(
        text.contains(&format!("[host.\"http://{mirror}\"]"))
            && text.contains(&format!("server = \"{server_url}\"")),
        "unexpected hosts.toml:\n{text}"
    );
    Ok(hosts)
}

fn ctr_pull(c: &PrivateContainerd, ns: &str, hosts: &Path, name: &str) -> Result<()> {
    c.ctr(&[
        "-n",
        ns,
        "images",
        "pull",
        "--hosts-dir",
        &hosts.to_string_lossy(),
        "--snapshotter",
        SNAPSHOTTER,
        name,
    ])?;
    Ok(())
}

/// The target digest of an image in containerd.
fn run_check(c: &PrivateContainerd, ns: &str, image: &str, purpose: &str) -> Result<()> {
    let run = |purpose: &str| {
        let id = format!("airgap-mirror-{purpose}-{}", std::process::id());
        c.ctr(&[
            "-n",
            ns,
            "run",
            "--rm",
            "--snapshotter",
            SNAPSHOTTER,
            image,
            &id,
            "/bin/sh",
            "-c",
            SAMPLE_CHECK,
        ])
    };
    let out = image::run_sample_check(image, |attempt| run(&format!("{purpose}-{attempt}")))?;
    ensure!(
        out == SAMPLE_EXPECTED,
        "container output of {image}:\n{out}"
    );
    Ok(())
}

fn build(work: &Path, spec: &ImageSpec) -> Result<BuiltImage> {
    image::write_oci_archive(
        spec,
        &work.join(format!("{}-{}.tar", spec.tag, spec.name.len())),
    )
}

/// Archived images come from the mirror (no request reaches the registry),
/// an image only in the registry comes through the mirror's upstream, and
/// with the registry gone archived images still pull.
#[test]
fn ctr_and_cri_pull_through_the_mirror() {
    run_as_root("mirror_pull", |test| {
        let _serial = serial()?;
        mirror_pull(test)
    });
}

fn mirror_pull(test: &str) -> Result<()> {
    let mut registry = TestRegistry::start(false, false)?;
    let host = registry.host();
    let work = TestDir::new(test)?;
    let archived = build(work.path(), &image::sample_spec(&host, "archived", "v1")?)?;
    let remote = build(work.path(), &image::sample_spec(&host, "remote", "v1")?)?;
    for img in [&archived, &remote] {
        let repo = img.name.strip_prefix(&format!("{host}/")).unwrap();
        registry.push(&img.archive, &img.tag, repo)?;
    }
    // A docker-save archive of an image.
    let saved_name = format!("{host}/library/saved:v1");
    let saved_spec = image::sample_spec(&host, "saved", "v1")?;
    let saved_oci = build(work.path(), &saved_spec)?;
    // The registry has it too, under its OCI manifest (another digest than
    // the one the daemon synthesizes for the docker-save archive).
    registry.push(&saved_oci.archive, "v1", "library/saved:v1")?;
    let saved = work.path().join("saved-docker.tar");
    process::run(
        Command::new("skopeo")
            .args(["copy", "--quiet"])
            .arg(format!("oci-archive:{}:v1", saved_oci.archive.display()))
            .arg(format!("docker-archive:{}:{saved_name}", saved.display())),
        Duration::from_secs(120),
    )?;

    let config = format!("[[upstream]]\nregistry = \"{host}\"\nendpoint = \"http://{host}\"\n");
    let mut daemon = MirrorDaemon::start(&[&archived.archive, &saved], &config)?;
    let hosts = write_hosts_dir(work.path(), &daemon.addr(), &registry.url())?;
    let containerd = PrivateContainerd::start(
        &daemon.socket,
        &ContainerdOptions {
            hosts_dir: Some(hosts.clone()),
            ..Default::default()
        },
    )?;

    // 1. The archived image: not one request reaches the registry.
    let mark = registry.access().len();
    eprintln!("== {test}: ctr images pull --hosts-dir {}", archived.name);
    ctr_pull(&containerd, "default", &hosts, &archived.name)?;
    let after = registry.access();
    ensure!(
        after.len() == mark,
        "pulling an archived image reached the registry: {:?}",
        &after[mark..]
    );
    let digest = containerd.image_digest("default", &archived.name)?;
    ensure!(
        digest == archived.manifest_digest,
        "pulled {digest}, the archive holds {}",
        archived.manifest_digest
    );
    run_check(&containerd, "default", &archived.name, "archived")?;

    // 2. The docker-save image, by tag, from its synthesized manifest: the
    // archived tag wins, the registry is not asked.
    eprintln!("== {test}: ctr images pull --hosts-dir {saved_name} (docker-save archive)");
    let mark = registry.access().len();
    ctr_pull(&containerd, "default", &hosts, &saved_name)?;
    let after = registry.access();
    ensure!(
        after.len() == mark,
        "pulling an archived tag reached the registry: {:?}",
        &after[mark..]
    );
    run_check(&containerd, "default", &saved_name, "saved")?;
    // Pinned to the registry's digest, which no archive holds: the mirror
    // fetches that manifest from its upstream.
    let pinned = format!("{host}/library/saved@{}", saved_oci.manifest_digest);
    eprintln!("== {test}: ctr images pull --hosts-dir {pinned}");
    let mark = registry.access().len();
    ctr_pull(&containerd, "default", &hosts, &pinned)?;
    let wanted = format!("/manifests/{}", saved_oci.manifest_digest);
    ensure!(
        registry.access()[mark..]
            .iter()
            .any(|l| l.contains("airgap-snapshotter/") && l.contains(&wanted)),
        "the mirror did not fetch {wanted} from its upstream"
    );
    run_check(&containerd, "default", &pinned, "pinned")?;

    // 3. Only in the registry: the mirror fetches it from its upstream.
    let mark = registry.access().len();
    eprintln!(
        "== {test}: ctr images pull --hosts-dir {} (registry only)",
        remote.name
    );
    ctr_pull(&containerd, "default", &hosts, &remote.name)?;
    let by_mirror: Vec<String> = registry.access()[mark..]
        .iter()
        .filter(|l| l.contains("airgap-snapshotter/"))
        .cloned()
        .collect();
    // Layers it shares with the archived image come from the archive.
    for layer in remote
        .layer_digests
        .iter()
        .filter(|l| !archived.layer_digests.contains(l))
    {
        ensure!(
            by_mirror
                .iter()
                .any(|l| l.contains(&format!("/blobs/{layer}"))),
            "the mirror did not fetch layer {layer} from its upstream; its requests: {by_mirror:?}"
        );
    }
    ensure!(
        daemon.log().contains("asking the upstream"),
        "the daemon did not log its upstream fallback"
    );
    ensure!(containerd.image_digest("default", &remote.name)? == remote.manifest_digest);
    run_check(&containerd, "default", &remote.name, "remote")?;
    let mut cri = CriClient::connect(containerd.address())?;
    eprintln!("== {test}: CRI PullImage {} (registry only)", remote.name);
    ensure!(cri.pull_image(&remote.name)? == remote.config_digest);
    run_check(&containerd, K8S_NS, &remote.name, "remote-cri")?;

    // 3b. A registry the mirror has no upstream for: the mirror answers 404
    // and containerd goes on to the next host, the server.
    let other = TestRegistry::start(false, false)?;
    let next = build(
        work.path(),
        &image::sample_spec(&other.host(), "next", "v1")?,
    )?;
    other.push(&next.archive, "v1", "library/next:v1")?;
    let other_hosts = hosts.join(other.host());
    std::fs::create_dir_all(&other_hosts)?;
    std::fs::write(
        other_hosts.join("hosts.toml"),
        format!(
            "server = \"{}\"\n\n[host.\"http://{}\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
            other.url(),
            daemon.addr()
        ),
    )?;
    eprintln!(
        "== {test}: ctr images pull --hosts-dir {} (next host)",
        next.name
    );
    ctr_pull(&containerd, "default", &hosts, &next.name)?;
    let access = other.access();
    ensure!(
        access.iter().all(|l| !l.contains("airgap-snapshotter/")),
        "the mirror reached a registry it has no upstream for"
    );
    for layer in next
        .layer_digests
        .iter()
        .filter(|l| !archived.layer_digests.contains(l))
    {
        ensure!(
            access
                .iter()
                .any(|l| l.contains(&format!("/blobs/{layer}"))),
            "containerd did not fetch {layer} from the next host: {access:?}"
        );
    }
    run_check(&containerd, "default", &next.name, "next")?;
    drop(other);

    // 4. No registry at all: archived images still pull, through CRI too.
    eprintln!("== {test}: stopping the registry");
    registry.stop()?;
    eprintln!(
        "== {test}: CRI PullImage {} with no registry",
        archived.name
    );
    let id = cri.pull_image(&archived.name)?;
    ensure!(id == archived.config_digest, "CRI pulled {id}");
    ensure!(containerd.image_digest(K8S_NS, &archived.name)? == archived.manifest_digest);
    run_check(&containerd, K8S_NS, &archived.name, "cri")?;
    ctr_pull(&containerd, "other", &hosts, &archived.name)?;
    let missing = format!("{host}/library/nowhere:v1");
    ensure!(
        containerd
            .ctr_unchecked(&[
                "-n",
                "other",
                "images",
                "pull",
                "--hosts-dir",
                &hosts.to_string_lossy(),
                &missing
            ])?
            .status
            .code()
            != Some(0),
        "pulling an image nobody has succeeded"
    );
    ensure!(
        daemon
            .log()
            .contains("upstream registry is down or unreachable"),
        "the daemon did not log that its upstream is down"
    );
    daemon.check_running()?;
    drop(containerd);
    Ok(())
}

/// The upstream serves TLS from a test CA and needs credentials (htpasswd
/// basic auth) that only the daemon has: an image only there pulls through
/// the mirror and runs.
/// Real clients of the distribution API, no containerd: `skopeo list-tags`
/// gets the archived tags of a repository from the mirror, and `skopeo
/// inspect` the archive's manifest digest.
#[test]
fn skopeo_lists_and_inspects_through_the_mirror() {
    run_as_root("skopeo_discovery", skopeo_discovery);
}

fn skopeo_discovery(test: &str) -> Result<()> {
    let work = TestDir::new(test)?;
    let one = build(
        work.path(),
        &image::sample_spec("example.com", "tools", "1")?,
    )?;
    let two = build(
        work.path(),
        &image::sample_spec("example.com", "tools", "2")?,
    )?;
    let daemon = MirrorDaemon::start(&[&one.archive, &two.archive], "")?;
    let repo = format!("docker://{}/example.com/library/tools", daemon.addr());
    let skopeo = |args: &[&str]| {
        process::run(
            Command::new("skopeo").args(args).arg("--tls-verify=false"),
            Duration::from_secs(60),
        )
    };
    let listed: serde_json::Value = serde_json::from_str(&skopeo(&["list-tags", &repo])?)?;
    ensure!(
        listed["Tags"] == serde_json::json!(["1", "2"]),
        "skopeo list-tags: {listed}"
    );
    let digest = skopeo(&["inspect", "--format", "{{.Digest}}", &format!("{repo}:2")])?;
    ensure!(
        digest.trim() == two.manifest_digest,
        "skopeo inspect: {digest} (archived: {})",
        two.manifest_digest
    );
    Ok(())
}

#[test]
fn upstream_with_tls_and_basic_auth() {
    run_as_root("mirror_upstream_auth", |test| {
        let _serial = serial()?;
        upstream_auth(test)
    });
}

fn upstream_auth(test: &str) -> Result<()> {
    let registry = TestRegistry::start(true, true)?;
    let host = registry.host();
    let work = TestDir::new(test)?;
    let remote = build(work.path(), &image::sample_spec(&host, "private", "v1")?)?;
    registry.push(&remote.archive, "v1", "library/private:v1")?;
    let password_file = work.path().join("password");
    std::fs::write(&password_file, format!("{PASSWORD}\n"))?;
    let ca = registry.ca.clone().context("TLS registry without CA")?;
    let config = format!(
        "[[upstream]]\nregistry = \"*\"\nendpoint = \"{}\"\n\
         username = \"{USER}\"\npassword_file = \"{}\"\nca_file = \"{}\"\n",
        registry.url(),
        password_file.display(),
        ca.display()
    );
    let daemon = MirrorDaemon::start(&[], &config)?;
    let hosts = write_hosts_dir(work.path(), &daemon.addr(), &registry.url())?;
    let containerd = PrivateContainerd::start(
        &daemon.socket,
        &ContainerdOptions {
            hosts_dir: Some(hosts.clone()),
            ..Default::default()
        },
    )?;
    eprintln!("== {test}: ctr images pull --hosts-dir {}", remote.name);
    ctr_pull(&containerd, "default", &hosts, &remote.name)?;
    ensure!(containerd.image_digest("default", &remote.name)? == remote.manifest_digest);
    run_check(&containerd, "default", &remote.name, "auth")?;
    let log = daemon.log();
    for secret in [PASSWORD.to_string(), base64(&format!("{USER}:{PASSWORD}"))] {
        ensure!(
            !log.contains(&secret),
            "the daemon logged the upstream credentials"
        );
    }
    let access = registry.access();
    ensure!(
        access
            .iter()
            .any(|l| l.contains("airgap-snapshotter/") && l.contains("/blobs/")),
        "no blob request from the mirror in the registry log"
    );
    drop(containerd);

    // doctor's upstream check: accepted as configured; a wrong password and
    // a missing CA are failures naming the fix.
    let upstream_check = |name: &str, config: &str| -> Result<serde_json::Value> {
        let dir = work.path().join(name);
        std::fs::create_dir_all(dir.join("archives"))?;
        std::fs::write(dir.join("daemon.toml"), config)?;
        let out = process::run_unchecked(
            Command::new(daemon::binary()?)
                .args(["doctor", "--json", "--config"])
                .arg(dir.join("daemon.toml"))
                .arg("--root")
                .arg(dir.join("root"))
                .arg("--archives")
                .arg(dir.join("archives"))
                .arg("--containerd-config")
                .arg(dir.join("none.toml"))
                .arg("--containerd-address")
                .arg(dir.join("none.sock"))
                .arg("--hosts-dir")
                .arg(&hosts)
                .args(["--mirror-listen", "off"]),
            Duration::from_secs(60),
        )?;
        let json: serde_json::Value = serde_json::from_str(&out.stdout)
            .with_context(|| format!("doctor output:\n{}\n{}", out.stdout, out.stderr))?;
        json["checks"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["name"] == "upstream *")
            .cloned()
            .with_context(|| format!("no upstream check in {json}"))
    };
    let c = upstream_check("right", &config)?;
    ensure!(c["status"] == "ok", "doctor on the right credentials: {c}");
    let wrong_password = work.path().join("wrong-password");
    std::fs::write(&wrong_password, "not-the-password\n")?;
    let c = upstream_check(
        "wrong",
        &config.replace(
            &password_file.display().to_string(),
            &wrong_password.display().to_string(),
        ),
    )?;
    ensure!(
        c["status"] == "fail"
            && c["detail"].as_str().unwrap_or("").contains("credentials")
            && c["fix"].as_str().unwrap_or("").contains("password_file"),
        "doctor on a wrong password: {c}"
    );
    let c = upstream_check(
        "no-ca",
        &config.replace(&format!("ca_file = \"{}\"\n", ca.display()), ""),
    )?;
    ensure!(
        c["status"] == "fail" && c["fix"].as_str().unwrap_or("").contains("ca_file"),
        "doctor without the CA: {c}"
    );
    Ok(())
}

/// Standard base64 (the form credentials take in a basic auth header).
fn base64(s: &str) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in s.as_bytes().chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ABC[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[test]
fn base64_as_in_basic_auth() {
    assert_eq!(base64("user:pass"), "dXNlcjpwYXNz");
    assert_eq!(base64("a"), "YQ==");
    assert_eq!(base64("ab"), "YWI=");
}

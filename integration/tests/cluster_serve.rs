//! End-to-end tests of one node's archives serving the cluster
//! (`[[cluster_listener]]`, docs/cluster.md), on loopback addresses:
//!
//! - Node A has the archives and a cluster listener with TLS (a test CA
//!   made with `openssl`), client certificates and tokens. Node B runs the
//!   daemon with no archives and no registry, A as its upstream (mutual
//!   TLS), its own containerd: CRI pulls through B's mirror and runs a pod.
//!   A client without credentials, with a certificate of another CA, or
//!   pushing, is refused. A's certificate is replaced on disk: the next
//!   handshake presents the new one, B still pulls. A plain containerd
//!   node's `hosts.toml` written by `config --serving-node` (CA and token
//!   header) pulls from A.
//! - Failover: B has two serving nodes as upstreams; the first is stopped
//!   and a pull completes from the second.
//! - A pull-through cache (`docker-registry`, `proxy.remoteurl` = A's
//!   cluster listener, a token as its basic-auth password) serves a pull.
//!
//! Root only, serialized with the other end-to-end tests, every part
//! stopped and removed on drop.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Context, Result};

use airgap_integration::cluster::{DaemonNode, Pki, Serving, ServingNode};
use airgap_integration::containerd::{ContainerdOptions, K8S_NS, SNAPSHOTTER};
use airgap_integration::image::{self, BuiltImage, SAMPLE_CHECK, SAMPLE_EXPECTED};
use airgap_integration::process::{self, Proc};
use airgap_integration::{
    daemon, free_port, run_as_root, serial, CriClient, Daemon, PrivateContainerd, TestDir,
};

const HOST: &str = "registry.airgap.test";
const TOKEN_B: &str = "node-b-token-6f1d0c2a9e8b7d44";
const TOKEN_CACHE: &str = "cache-token-03b5e7a9c1d2f486";

/// The CA, another CA, A's server certificate, B's client certificate and
/// an intruder's (B's name, signed by the other CA).
fn pki(work: &Path) -> Result<Pki> {
    let pki = Pki::new(&work.join("pki"))?;
    pki.ca("ca", "airgap cluster test CA")?
        .ca("other-ca", "someone else's CA")?
        .server("ca", "node-a", &["127.0.0.1"])?
        .client("ca", "node-b", "node-b")?
        .client("other-ca", "intruder", "node-b")?;
    Ok(pki)
}

fn serving_node(work: &Path, name: &str, pki: &Pki, archives: &[&Path]) -> Result<ServingNode> {
    ServingNode::start(
        work,
        Serving {
            name,
            node: None,
            cert: "node-a",
            tokens: &[("node-b", TOKEN_B), ("cache", TOKEN_CACHE)],
            listener_extra: "",
            args: &[],
        },
        pki,
        archives,
    )
}

/// Node B: no archives, `serving` as its upstreams, on loopback.
fn node_b(work: &Path, pki: &Pki, serving: &[&ServingNode], pause: &str) -> Result<DaemonNode> {
    let upstreams: Vec<String> = serving.iter().map(|s| s.url()).collect();
    DaemonNode::start(work, "node-b", None, pki, &upstreams, pause)
}

/// The subject of the certificate a new TLS session with `node` presents.
fn presented_subject(node: &ServingNode, pki: &Pki) -> Result<String> {
    let out = process::run(
        Command::new("sh").arg("-c").arg(format!(
            "openssl s_client -connect 127.0.0.1:{} -CAfile {} </dev/null 2>/dev/null | openssl x509 -noout -subject",
            node.port(),
            pki.path("ca.pem")
        )),
        Duration::from_secs(30),
    )?;
    Ok(out.trim().to_string())
}

fn images(work: &Path) -> Result<(BuiltImage, BuiltImage, BuiltImage)> {
    let sample = image::write_oci_archive(
        &image::sample_spec(HOST, "sample", "v1")?,
        &work.join("sample.tar"),
    )?;
    let second = image::write_oci_archive(
        &image::sample_spec(HOST, "second", "v1")?,
        &work.join("second.tar"),
    )?;
    let pause = image::write_pause_archive(
        &format!("{HOST}/library/pause:3.10"),
        "3.10",
        "cluster-serve",
        &work.join("pause.tar"),
    )?;
    Ok((sample, second, pause))
}

#[test]
fn a_node_without_archives_pulls_and_runs_from_a_serving_node() {
    run_as_root("cluster_serve", |test| {
        let _serial = serial()?;
        cluster_serve(test)
    });
}

fn cluster_serve(test: &str) -> Result<()> {
    let work = TestDir::new(test)?;
    let pki = pki(work.path())?;
    let (sample, second, pause) = images(work.path())?;
    let a = serving_node(
        work.path(),
        "node-a",
        &pki,
        &[&sample.archive, &second.archive, &pause.archive],
    )?;
    let mut b = node_b(work.path(), &pki, &[&a], &pause.name)?;

    // 1. CRI on B: pull and run, from A's archives, no registry anywhere.
    let mut cri = CriClient::connect(b.containerd.address())?;
    eprintln!("== {test}: CRI PullImage {} on node B", sample.name);
    let id = cri.pull_image(&sample.name)?;
    ensure!(
        id == sample.config_digest,
        "CRI pulled {id}, expected {}",
        sample.config_digest
    );
    ensure!(b.containerd.image_digest(K8S_NS, &sample.name)? == sample.manifest_digest);
    let run = cri.run_pod_once(&sample.name, &["/bin/sh", "-c", SAMPLE_CHECK])?;
    ensure!(
        run.exit_code == 0 && run.stdout == SAMPLE_EXPECTED,
        "the pod on B exited {} with:\n{}",
        run.exit_code,
        run.output
    );
    ensure!(
        a.daemon.log().contains("client=cert:node-b"),
        "A's log does not show node B's certificate as the client"
    );
    ensure!(
        b.daemon.log().contains("asking the upstream"),
        "B did not ask its upstream"
    );

    // 2. Refusals: no credentials, a wrong token, another CA's
    // certificate, a push.
    let manifest = "/v2/library/sample/manifests/v1?ns=registry.airgap.test";
    let bearer = format!("Authorization: Bearer {TOKEN_B}");
    let wrong = "Authorization: Bearer node-b-token-000000000000000";
    ensure!(
        a.status(None, &pki, "GET", manifest, &[])? == 401,
        "anonymous pull not refused"
    );
    ensure!(
        a.status(None, &pki, "GET", manifest, &["-H", wrong])? == 401,
        "a wrong token was taken"
    );
    let intruder = [
        "--cert",
        &pki.path("intruder.pem"),
        "--key",
        &pki.path("intruder.key"),
    ];
    ensure!(
        a.status(None, &pki, "GET", manifest, &intruder)? == 0,
        "a certificate of another CA got a TLS session"
    );
    ensure!(
        a.status(None, &pki, "GET", manifest, &["-H", &bearer])? == 200,
        "the token was refused"
    );
    let uploads = "/v2/library/sample/blobs/uploads/";
    ensure!(
        a.status(None, &pki, "POST", uploads, &[])? == 401,
        "anonymous push not refused"
    );
    ensure!(
        a.status(None, &pki, "POST", uploads, &["-H", &bearer])? == 405,
        "push not refused"
    );
    ensure!(
        a.status(
            None,
            &pki,
            "PUT",
            "/v2/library/sample/manifests/v2",
            &["-H", &bearer]
        )? == 405,
        "manifest put not refused"
    );

    // 3. Rotation: new files, the next handshake presents the new
    // certificate, B still pulls.
    let before = presented_subject(&a, &pki)?;
    ensure!(before.contains("node-a"), "A presents {before}");
    pki.server("ca", "node-a-renewed", &["127.0.0.1"])?;
    std::fs::copy(
        pki.dir().join("node-a-renewed.key"),
        pki.dir().join("next.key"),
    )?;
    std::fs::copy(
        pki.dir().join("node-a-renewed.pem"),
        pki.dir().join("next.pem"),
    )?;
    std::fs::rename(pki.dir().join("next.key"), pki.dir().join("node-a.key"))?;
    std::fs::rename(pki.dir().join("next.pem"), pki.dir().join("node-a.pem"))?;
    let after = presented_subject(&a, &pki)?;
    ensure!(
        after.contains("node-a-renewed"),
        "after rotation A presents {after}"
    );
    eprintln!(
        "== {test}: CRI PullImage {} on node B after rotation",
        second.name
    );
    ensure!(cri.pull_image(&second.name)? == second.config_digest);

    // 4. A plain containerd node: hosts.toml from `config --serving-node`
    // with the CA and a token header (ctr reads the same hosts.toml).
    let plain_hosts = work.path().join("certs.d-plain");
    let token_file = work.path().join("node.token");
    std::fs::write(&token_file, format!("{TOKEN_B}\n"))?;
    process::run(
        Command::new(daemon::binary()?)
            .arg("config")
            .args(["--containerd", "1.6", "--mirror", "off"])
            .args([
                "--serving-node",
                &a.url(),
                "--serving-ca",
                &pki.path("ca.pem"),
            ])
            .arg("--serving-token-file")
            .arg(&token_file)
            .arg("--write")
            .arg(&plain_hosts),
        Duration::from_secs(30),
    )?;
    eprintln!("== {test}: ctr pull with the plain node's hosts.toml");
    b.containerd.ctr(&[
        "-n",
        "plain",
        "images",
        "pull",
        "--hosts-dir",
        &plain_hosts.to_string_lossy(),
        "--snapshotter",
        SNAPSHOTTER,
        &second.name,
    ])?;
    ensure!(b.containerd.image_digest("plain", &second.name)? == second.manifest_digest);
    ensure!(
        a.daemon.log().contains("client=user:node-b"),
        "A's log does not show the token's user"
    );
    b.daemon.check_running()?;
    drop(cri);
    drop(b);
    Ok(())
}

#[test]
fn a_pull_fails_over_to_the_next_serving_node() {
    run_as_root("cluster_failover", |test| {
        let _serial = serial()?;
        cluster_failover(test)
    });
}

fn cluster_failover(test: &str) -> Result<()> {
    let work = TestDir::new(test)?;
    let pki = pki(work.path())?;
    let (sample, _, pause) = images(work.path())?;
    let archives = [sample.archive.as_path(), pause.archive.as_path()];
    let mut first = serving_node(work.path(), "node-a1", &pki, &archives)?;
    let second = serving_node(work.path(), "node-a2", &pki, &archives)?;
    let b = node_b(work.path(), &pki, &[&first, &second], &pause.name)?;
    eprintln!("== {test}: stopping the first serving node");
    first.daemon.stop()?;
    let mut cri = CriClient::connect(b.containerd.address())?;
    eprintln!("== {test}: CRI PullImage {} on node B", sample.name);
    let id = cri.pull_image(&sample.name)?;
    ensure!(id == sample.config_digest, "CRI pulled {id}");
    ensure!(b.containerd.image_digest(K8S_NS, &sample.name)? == sample.manifest_digest);
    ensure!(
        second.daemon.log().contains("client=cert:node-b"),
        "the second serving node did not serve B"
    );
    drop(cri);
    drop(b);
    Ok(())
}

/// `docker-registry` as a pull-through cache of A's cluster listener.
struct Cache {
    proc: Option<Proc>,
    port: u16,
    dir: TestDir,
}

impl Cache {
    fn start(pki: &Pki, upstream: &str) -> Result<Cache> {
        let dir = TestDir::new("pull-through-cache")?;
        let port = free_port()?;
        let storage = dir.path().join("storage");
        std::fs::create_dir_all(&storage)?;
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
                 http:\n  addr: 127.0.0.1:{port}\nproxy:\n  remoteurl: {upstream}\n  username: cache\n  password: {TOKEN_CACHE}\n",
                storage.display()
            ),
        )?;
        let proc = Proc::spawn(
            "docker-registry",
            Command::new("docker-registry")
                .env("SSL_CERT_FILE", pki.path("ca.pem"))
                .arg("serve")
                .arg(&config),
            &dir.path().join("registry.log"),
        )?;
        process::wait_until("the cache to answer", Duration::from_secs(30), || {
            Ok(std::net::TcpStream::connect(("127.0.0.1", port)).is_ok())
        })?;
        Ok(Cache {
            proc: Some(proc),
            port,
            dir,
        })
    }
}

impl Drop for Cache {
    fn drop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            let _ = p.stop(process::STOP_TIMEOUT);
        }
    }
}

#[test]
fn a_pull_through_cache_in_front_of_a_serving_node() {
    run_as_root("cluster_pull_through_cache", |test| {
        let _serial = serial()?;
        pull_through_cache(test)
    });
}

fn pull_through_cache(test: &str) -> Result<()> {
    let work = TestDir::new(test)?;
    let pki = pki(work.path())?;
    let (sample, _, _) = images(work.path())?;
    let a = serving_node(work.path(), "node-a", &pki, &[&sample.archive])?;
    let cache = Cache::start(&pki, &a.url())?;
    // A node pulling from the cache: it knows nothing of A.
    let node = Daemon::start()?;
    let containerd = PrivateContainerd::start(node.socket(), &ContainerdOptions::default())?;
    // The cache serves A's repositories under their whole names.
    let name = format!("127.0.0.1:{}/{}", cache.port, sample.name);
    eprintln!("== {test}: ctr pull {name} (plain HTTP, the cache)");
    containerd
        .ctr(&[
            "-n",
            "default",
            "images",
            "pull",
            "--plain-http",
            "--snapshotter",
            SNAPSHOTTER,
            &name,
        ])
        .with_context(|| {
            format!(
                "the cache's log:\n{}\nA's log:\n{}",
                process::tail(&cache.dir.path().join("registry.log"), 30),
                process::tail(a.daemon.log_path(), 30)
            )
        })?;
    ensure!(containerd.image_digest("default", &name)? == sample.manifest_digest);
    ensure!(
        a.daemon.log().contains("client=user:cache"),
        "A's log shows no request of the cache"
    );
    let out = containerd.ctr(&[
        "-n",
        "default",
        "run",
        "--rm",
        "--snapshotter",
        SNAPSHOTTER,
        &name,
        &format!("airgap-cache-{}", std::process::id()),
        "/bin/sh",
        "-c",
        SAMPLE_CHECK,
    ])?;
    ensure!(
        out == SAMPLE_EXPECTED || image::is_truncated_sample_output(&out),
        "container output:\n{out}"
    );
    drop(containerd);
    drop(node);
    drop(cache);
    Ok(())
}

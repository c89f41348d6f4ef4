//! End-to-end test of one node's archives serving the cluster across
//! "hosts": network namespaces made by the test ([`TestNet`]: a bridge in
//! its own namespace, a veth and a private address per node, nothing in the
//! root namespace, all removed at the end).
//!
//! - Nodes A1 and A2 hold the same archives and run the daemon with a
//!   cluster listener on their own address (TLS from a test CA made with
//!   `openssl`, client certificates).
//! - Nodes B and C run the daemon with no archives and no registry, A1 then
//!   A2 as upstreams (mutual TLS), and their own containerd in their
//!   namespace: CRI pulls and a pod run on B and on C.
//! - A1's daemon stops: a pull on C fails over to A2 and completes.
//!
//! Root only, serialized with the other end-to-end tests.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Context, Result};

use airgap_integration::containerd::{ContainerdOptions, K8S_NS};
use airgap_integration::image::{self, BuiltImage, SAMPLE_CHECK, SAMPLE_EXPECTED};
use airgap_integration::netns::{Node, TestNet};
use airgap_integration::process;
use airgap_integration::{
    daemon, run_as_root, serial, CriClient, Daemon, PrivateContainerd, TestDir,
};

const HOST: &str = "registry.airgap.test";
const PORT: u16 = 5443;
const TOKEN: &str = "probe-token-5c1e9a7d3b2f8e60";

/// A test PKI made with `openssl` in a directory.
struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn openssl(&self, args: &[&str]) -> Result<()> {
        process::run(
            Command::new("openssl").current_dir(&self.dir).args(args),
            Duration::from_secs(60),
        )?;
        Ok(())
    }

    /// The CA, a server certificate for the serving nodes' addresses and a
    /// client certificate per daemon node.
    fn new(dir: &Path, server_ips: &[&str], clients: &[&str]) -> Result<Pki> {
        let pki = Pki {
            dir: dir.to_path_buf(),
        };
        pki.openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=airgap cluster test CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ])?;
        let sans: Vec<String> = server_ips.iter().map(|ip| format!("IP:{ip}")).collect();
        pki.issue(
            "server",
            &format!(
                "subjectAltName={}\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
                sans.join(",")
            ),
        )?;
        for client in clients {
            pki.issue(
                client,
                "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n",
            )?;
        }
        Ok(pki)
    }

    fn issue(&self, name: &str, ext: &str) -> Result<()> {
        self.openssl(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
            "-subj",
            &format!("/CN={name}"),
        ])?;
        std::fs::write(self.dir.join(format!("{name}.ext")), ext)?;
        self.openssl(&[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &format!("{name}.pem"),
            "-days",
            "2",
            "-extfile",
            &format!("{name}.ext"),
        ])
    }

    fn path(&self, file: &str) -> String {
        self.dir.join(file).to_string_lossy().into_owned()
    }
}

/// A serving node: the daemon with archives and a cluster listener on its
/// address in its own namespace.
struct ServingNode {
    daemon: Daemon,
    node: Node,
}

impl ServingNode {
    fn start(work: &Path, node: Node, pki: &Pki, archives: &[&Path]) -> Result<ServingNode> {
        let tokens = work.join(format!("{}.tokens", node.name));
        std::fs::write(&tokens, format!("probe:{TOKEN}\n"))?;
        let config = work.join(format!("{}.toml", node.name));
        std::fs::write(
            &config,
            format!(
                "[[cluster_listener]]\nlisten = \"{}:{PORT}\"\n\
                 tls_cert_file = \"{}\"\ntls_key_file = \"{}\"\nclient_ca_file = \"{}\"\n\
                 tokens_file = \"{}\"\n",
                node.addr,
                pki.path("server.pem"),
                pki.path("server.key"),
                pki.path("ca.pem"),
                tokens.display()
            ),
        )?;
        eprintln!("== serving node {} on {}:{PORT}", node.name, node.addr);
        let daemon = Daemon::start_in_netns(
            Some(&node.path()),
            archives,
            &["--config", &config.to_string_lossy()],
        )?;
        let serving = ServingNode { daemon, node };
        process::wait_until(
            "the cluster listener to answer",
            Duration::from_secs(30),
            || Ok(serving.status_from(&serving.node, pki)? == 200),
        )?;
        Ok(serving)
    }

    fn url(&self) -> String {
        format!("https://{}:{PORT}", self.node.addr)
    }

    /// The HTTP status of `GET /v2/` with the probe token, by curl in
    /// `from`'s namespace (0: no answer).
    fn status_from(&self, from: &Node, pki: &Pki) -> Result<u16> {
        let out = process::run_unchecked(
            from.command("curl")?
                .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
                .args(["--max-time", "10", "--cacert", &pki.path("ca.pem")])
                .args(["-H", &format!("Authorization: Bearer {TOKEN}")])
                .arg(format!("{}/v2/", self.url())),
            Duration::from_secs(20),
        )?;
        Ok(out.stdout.trim().parse().unwrap_or(0))
    }
}

/// A node with the daemon (no archives, the serving nodes as upstreams by
/// mutual TLS, its mirror on its own loopback) and its own containerd,
/// both in its namespace.
struct DaemonNode {
    // containerd first: it stops before the daemon it uses.
    containerd: PrivateContainerd,
    daemon: Daemon,
    node: Node,
}

impl DaemonNode {
    fn start(
        work: &Path,
        node: Node,
        pki: &Pki,
        serving: &[&ServingNode],
        pause: &str,
    ) -> Result<DaemonNode> {
        let client = &node.name;
        let mut config = String::new();
        for s in serving {
            config.push_str(&format!(
                "[[upstream]]\nregistry = \"*\"\nendpoint = \"{}\"\nca_file = \"{}\"\n\
                 client_cert_file = \"{}\"\nclient_key_file = \"{}\"\n\n",
                s.url(),
                pki.path("ca.pem"),
                pki.path(&format!("{client}.pem")),
                pki.path(&format!("{client}.key")),
            ));
        }
        let file = work.join(format!("{client}.toml"));
        std::fs::write(&file, config)?;
        // The node's own loopback: every namespace has its own ports.
        let mirror = "127.0.0.1:5000";
        eprintln!(
            "== node {client} ({}): the daemon with no archives, mirror {mirror}",
            node.addr
        );
        let daemon = Daemon::start_in_netns(
            Some(&node.path()),
            &[],
            &[
                "--mirror-listen",
                mirror,
                "--config",
                &file.to_string_lossy(),
            ],
        )?;
        let hosts = work.join(format!("certs.d-{client}"));
        process::run(
            Command::new(daemon::binary()?)
                .arg("config")
                .args(["--containerd", "1.6", "--mirror", mirror])
                .arg("--write")
                .arg(&hosts),
            Duration::from_secs(30),
        )?;
        let containerd = PrivateContainerd::start(
            daemon.socket(),
            &ContainerdOptions {
                hosts_dir: Some(hosts),
                sandbox_image: Some(pause.to_string()),
                netns: Some(node.path()),
                ..Default::default()
            },
        )?;
        Ok(DaemonNode {
            containerd,
            daemon,
            node,
        })
    }

    /// CRI pull and a pod run of `image` on this node.
    fn pull_and_run(&self, test: &str, image: &BuiltImage) -> Result<()> {
        let mut cri = CriClient::connect(self.containerd.address())?;
        eprintln!(
            "== {test}: CRI PullImage {} on {}",
            image.name, self.node.name
        );
        let id = cri.pull_image(&image.name)?;
        ensure!(
            id == image.config_digest,
            "CRI on {} pulled {id}, expected {}",
            self.node.name,
            image.config_digest
        );
        ensure!(image_digest(&self.containerd, &image.name)? == image.manifest_digest);
        let run = cri.run_pod_once(&image.name, &["/bin/sh", "-c", SAMPLE_CHECK])?;
        ensure!(
            run.exit_code == 0 && run.stdout == SAMPLE_EXPECTED,
            "the pod on {} exited {} with:\n{}",
            self.node.name,
            run.exit_code,
            run.output
        );
        Ok(())
    }
}

fn image_digest(c: &PrivateContainerd, name: &str) -> Result<String> {
    let out = c.ctr(&["-n", K8S_NS, "images", "ls"])?;
    out.lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .and_then(|l| l.split_whitespace().nth(2))
        .map(str::to_string)
        .with_context(|| format!("{name} not in `ctr images ls`:\n{out}"))
}

#[test]
fn nodes_in_other_network_namespaces_pull_from_serving_nodes_and_fail_over() {
    run_as_root("cluster_netns", |test| {
        let _serial = serial()?;
        let existed = std::path::Path::new("/run/netns").exists();
        let result = cluster_netns(test);
        let left = TestNet::leftovers()?;
        let run_netns = std::path::Path::new("/run/netns").exists();
        result?;
        ensure!(!run_netns || existed, "/run/netns left behind");
        ensure!(left.is_empty(), "network namespaces left behind: {left:?}");
        Ok(())
    });
}

fn cluster_netns(test: &str) -> Result<()> {
    let work = TestDir::new(test)?;
    let mut net = TestNet::new()?;
    let (a1, a2, b, c) = (
        net.add_node(1)?,
        net.add_node(2)?,
        net.add_node(3)?,
        net.add_node(4)?,
    );
    let pki_dir = work.path().join("pki");
    std::fs::create_dir_all(&pki_dir)?;
    let pki = Pki::new(&pki_dir, &[&a1.addr, &a2.addr], &[&b.name, &c.name])?;
    let sample = image::write_oci_archive(
        &image::sample_spec(HOST, "sample", "v1")?,
        &work.path().join("sample.tar"),
    )?;
    let second = image::write_oci_archive(
        &image::sample_spec(HOST, "second", "v1")?,
        &work.path().join("second.tar"),
    )?;
    let pause = image::write_pause_archive(
        &format!("{HOST}/library/pause:3.10"),
        "3.10",
        "cluster-netns",
        &work.path().join("pause.tar"),
    )?;
    let archives = [
        sample.archive.as_path(),
        second.archive.as_path(),
        pause.archive.as_path(),
    ];
    let mut first = ServingNode::start(work.path(), a1, &pki, &archives)?;
    let next = ServingNode::start(work.path(), a2, &pki, &archives)?;
    let mut node_b = DaemonNode::start(work.path(), b, &pki, &[&first, &next], &pause.name)?;
    let mut node_c = DaemonNode::start(work.path(), c, &pki, &[&first, &next], &pause.name)?;
    ensure!(first.status_from(&node_c.node, &pki)? == 200);

    // 1. CRI on B and C: pull and run, from A1's archives, no registry.
    node_b.pull_and_run(test, &sample)?;
    node_c.pull_and_run(test, &sample)?;
    let log = first.daemon.log();
    for client in [&node_b.node.name, &node_c.node.name] {
        ensure!(
            log.contains(&format!("client=cert:{client}")),
            "A1's log does not show {client}'s certificate as a client"
        );
    }

    // 2. A1 stops: C's next pull goes to A2 and completes.
    eprintln!("== {test}: stopping the daemon of {}", first.node.name);
    first.daemon.stop()?;
    ensure!(
        first.status_from(&node_c.node, &pki)? == 0,
        "A1 still answers"
    );
    node_c.pull_and_run(test, &second)?;
    ensure!(
        next.daemon
            .log()
            .contains(&format!("client=cert:{}", node_c.node.name)),
        "A2 did not serve {}",
        node_c.node.name
    );
    node_b.daemon.check_running()?;
    node_c.daemon.check_running()?;
    drop(node_c);
    drop(node_b);
    drop(next);
    drop(first);
    drop(net);
    Ok(())
}

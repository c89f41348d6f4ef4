//! The parts of the cluster-serving tests and benchmark (docs/cluster.md):
//! a test PKI made with `openssl` ([`Pki`]), a serving node (the daemon with
//! archives and a `[[cluster_listener]]`, [`ServingNode`]) and a node that
//! pulls from serving nodes (the daemon with no archives, the serving nodes
//! as upstreams by mutual TLS, and its own containerd, [`DaemonNode`]).
//!
//! Each part runs either on the test's loopback (a free port) or in a node
//! of a [`crate::netns::TestNet`] (its own address), so the loopback tests
//! (`tests/cluster_serve.rs`) and the ones across network namespaces
//! (`tests/cluster.rs`, `bench --cluster`) share one implementation.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Context, Result};

use crate::containerd::{ContainerdOptions, K8S_NS};
use crate::image::{BuiltImage, SAMPLE_CHECK, SAMPLE_EXPECTED};
use crate::netns::{Node, TestNet};
use crate::{daemon, free_port, process, CriClient, Daemon, PrivateContainerd};

/// The port of cluster listeners in network namespaces (each node has its
/// own address, so they can all use it).
pub const NETNS_PORT: u16 = 5443;

/// A test PKI made with `openssl` in a directory: `<name>.pem` and
/// `<name>.key` per certificate.
pub struct Pki {
    dir: PathBuf,
}

impl Pki {
    /// An empty PKI in `dir` (created); add CAs with [`Pki::ca`].
    pub fn new(dir: &Path) -> Result<Pki> {
        std::fs::create_dir_all(dir)?;
        Ok(Pki {
            dir: dir.to_path_buf(),
        })
    }

    fn openssl(&self, args: &[&str]) -> Result<()> {
        process::run(
            Command::new("openssl").current_dir(&self.dir).args(args),
            Duration::from_secs(60),
        )?;
        Ok(())
    }

    /// A self-signed CA `name` with the common name `cn`.
    pub fn ca(&self, name: &str, cn: &str) -> Result<&Pki> {
        self.openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.pem"),
            "-days",
            "2",
            "-subj",
            &format!("/CN={cn}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ])?;
        Ok(self)
    }

    /// A server certificate `name` signed by `ca`, for the addresses `ips`.
    pub fn server(&self, ca: &str, name: &str, ips: &[&str]) -> Result<&Pki> {
        let sans: Vec<String> = ips.iter().map(|ip| format!("IP:{ip}")).collect();
        self.issue(
            ca,
            name,
            name,
            &format!(
                "subjectAltName={}\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
                sans.join(",")
            ),
        )?;
        Ok(self)
    }

    /// A client certificate `name` for the common name `cn`, signed by `ca`.
    pub fn client(&self, ca: &str, name: &str, cn: &str) -> Result<&Pki> {
        self.issue(
            ca,
            name,
            cn,
            "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n",
        )?;
        Ok(self)
    }

    fn issue(&self, ca: &str, name: &str, cn: &str, ext: &str) -> Result<()> {
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
            &format!("/CN={cn}"),
        ])?;
        std::fs::write(self.dir.join(format!("{name}.ext")), ext)?;
        self.openssl(&[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-out",
            &format!("{name}.pem"),
            "-days",
            "2",
            "-extfile",
            &format!("{name}.ext"),
        ])
    }

    /// The path of one of its files, e.g. `ca.pem`.
    pub fn path(&self, file: &str) -> String {
        self.dir.join(file).to_string_lossy().into_owned()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// How a [`ServingNode`] is set up.
pub struct Serving<'a> {
    /// Its name: its config and tokens files are `<name>.toml` and
    /// `<name>.tokens` in the work directory.
    pub name: &'a str,
    /// The node of a test network it runs in (its address, [`NETNS_PORT`]);
    /// `None`: the test's loopback, a free port.
    pub node: Option<Node>,
    /// Its certificate and key in the PKI (`<cert>.pem`, `<cert>.key`); the
    /// listener asks for client certificates of the PKI's `ca`.
    pub cert: &'a str,
    /// `user:token` pairs of its tokens file; the first is the readiness
    /// probe's.
    pub tokens: &'a [(&'a str, &'a str)],
    /// More lines of the `[[cluster_listener]]` table (e.g. limits).
    pub listener_extra: &'a str,
    /// More `serve` arguments (e.g. `--metrics-listen`).
    pub args: &'a [&'a str],
}

/// A serving node: the daemon with archives and a cluster listener.
pub struct ServingNode {
    pub daemon: Daemon,
    pub node: Option<Node>,
    addr: String,
    port: u16,
    probe_token: String,
}

impl ServingNode {
    /// Starts it and waits until its listener answers the probe token.
    pub fn start(
        work: &Path,
        serving: Serving<'_>,
        pki: &Pki,
        archives: &[&Path],
    ) -> Result<ServingNode> {
        let (addr, port) = match &serving.node {
            Some(node) => (node.addr.clone(), NETNS_PORT),
            None => ("127.0.0.1".to_string(), free_port()?),
        };
        let name = serving.name;
        let tokens = work.join(format!("{name}.tokens"));
        let lines: String = serving
            .tokens
            .iter()
            .map(|(user, token)| format!("{user}:{token}\n"))
            .collect();
        std::fs::write(&tokens, format!("# who may pull\n{lines}"))?;
        let config = work.join(format!("{name}.toml"));
        std::fs::write(
            &config,
            format!(
                "[[cluster_listener]]\nlisten = \"{addr}:{port}\"\n\
                 tls_cert_file = \"{}\"\ntls_key_file = \"{}\"\nclient_ca_file = \"{}\"\n\
                 tokens_file = \"{}\"\n{}",
                pki.path(&format!("{}.pem", serving.cert)),
                pki.path(&format!("{}.key", serving.cert)),
                pki.path("ca.pem"),
                tokens.display(),
                serving.listener_extra,
            ),
        )?;
        eprintln!("== serving node {name} on {addr}:{port}");
        let netns = serving.node.as_ref().map(Node::path);
        let config = config.to_string_lossy();
        let mut args = vec!["--config", &config];
        args.extend(serving.args);
        let daemon = Daemon::start_in_netns(netns.as_deref(), archives, &args)?;
        let node = ServingNode {
            daemon,
            node: serving.node,
            addr,
            port,
            probe_token: serving.tokens.first().map_or(String::new(), |t| t.1.into()),
        };
        let bearer = format!("Authorization: Bearer {}", node.probe_token);
        process::wait_until(
            "the cluster listener to answer",
            Duration::from_secs(30),
            || Ok(node.status(node.node.as_ref(), pki, "GET", "/v2/", &["-H", &bearer])? == 200),
        )?;
        Ok(node)
    }

    pub fn url(&self) -> String {
        format!("https://{}:{}", self.addr, self.port)
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The HTTP status of a request by curl from `from`'s namespace (or
    /// the test's), trusting the PKI's CA (0: no TLS session, no answer).
    pub fn status(
        &self,
        from: Option<&Node>,
        pki: &Pki,
        method: &str,
        path: &str,
        extra: &[&str],
    ) -> Result<u16> {
        let mut curl = match from {
            Some(node) => node.command("curl")?,
            None => Command::new("curl"),
        };
        let out = process::run_unchecked(
            curl.args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
                .args(["--max-time", "20", "--cacert", &pki.path("ca.pem")])
                .args(["-X", method])
                .args(extra)
                .arg(format!("{}{path}", self.url())),
            Duration::from_secs(30),
        )?;
        Ok(out.stdout.trim().parse().unwrap_or(0))
    }

    /// Its daemon's metrics (`--metrics-listen LISTEN` among its
    /// [`Serving::args`]), read by curl in its own namespace.
    pub fn metrics(&self, listen: &str) -> Result<String> {
        let mut curl = match &self.node {
            Some(node) => node.command("curl")?,
            None => Command::new("curl"),
        };
        process::run(
            curl.args(["-sf", "--max-time", "20"])
                .arg(format!("http://{listen}/metrics")),
            Duration::from_secs(30),
        )
    }

    /// `GET /v2/` with the probe token from `from`.
    pub fn probe_from(&self, from: Option<&Node>, pki: &Pki) -> Result<u16> {
        let bearer = format!("Authorization: Bearer {}", self.probe_token);
        self.status(from, pki, "GET", "/v2/", &["-H", &bearer])
    }
}

/// A node with the daemon (no archives, the serving nodes as upstreams in
/// order, by mutual TLS with the client certificate `<client>.pem`), its
/// mirror on its own loopback, and its own containerd using both.
pub struct DaemonNode {
    // containerd first: it stops before the daemon it uses.
    pub containerd: PrivateContainerd,
    pub daemon: Daemon,
    pub node: Option<Node>,
    /// Its name (the client certificate's).
    pub client: String,
}

impl DaemonNode {
    /// Starts it with `upstreams` (cluster listener URLs, tried in order).
    pub fn start(
        work: &Path,
        client: &str,
        node: Option<Node>,
        pki: &Pki,
        upstreams: &[String],
        pause: &str,
    ) -> Result<DaemonNode> {
        let mut config = String::new();
        for url in upstreams {
            config.push_str(&format!(
                "[[upstream]]\nregistry = \"*\"\nendpoint = \"{url}\"\nca_file = \"{}\"\n\
                 client_cert_file = \"{}\"\nclient_key_file = \"{}\"\n\n",
                pki.path("ca.pem"),
                pki.path(&format!("{client}.pem")),
                pki.path(&format!("{client}.key")),
            ));
        }
        let file = work.join(format!("{client}.toml"));
        std::fs::write(&file, config)?;
        // In a namespace the node's own loopback has every port free.
        let mirror = match node {
            Some(_) => "127.0.0.1:5000".to_string(),
            None => format!("127.0.0.1:{}", free_port()?),
        };
        eprintln!("== node {client}: the daemon with no archives, mirror {mirror}");
        let netns = node.as_ref().map(Node::path);
        let daemon = Daemon::start_in_netns(
            netns.as_deref(),
            &[],
            &[
                "--mirror-listen",
                &mirror,
                "--config",
                &file.to_string_lossy(),
            ],
        )?;
        let hosts = work.join(format!("certs.d-{client}"));
        daemon::write_hosts_dir(&hosts, &mirror, None)?;
        let containerd = PrivateContainerd::start(
            daemon.socket(),
            &ContainerdOptions {
                hosts_dir: Some(hosts),
                sandbox_image: Some(pause.to_string()),
                netns,
                ..Default::default()
            },
        )?;
        Ok(DaemonNode {
            containerd,
            daemon,
            node,
            client: client.to_string(),
        })
    }

    /// CRI pull of `image` on this node, checked against what was built,
    /// then a pod run of it that must print the sample's files.
    pub fn pull_and_run(&self, test: &str, image: &BuiltImage) -> Result<()> {
        self.pull_and_check(test, image, SAMPLE_CHECK, SAMPLE_EXPECTED)
    }

    /// [`DaemonNode::pull_and_run`] with the pod running `/bin/sh -c
    /// script`, which must exit 0 printing `expected`.
    pub fn pull_and_check(
        &self,
        test: &str,
        image: &BuiltImage,
        script: &str,
        expected: &str,
    ) -> Result<()> {
        let mut cri = CriClient::connect(self.containerd.address())?;
        eprintln!("== {test}: CRI PullImage {} on {}", image.name, self.client);
        let id = cri.pull_image(&image.name)?;
        ensure!(
            id == image.config_digest,
            "CRI on {} pulled {id}, expected {}",
            self.client,
            image.config_digest
        );
        ensure!(
            self.containerd.image_digest(K8S_NS, &image.name)? == image.manifest_digest,
            "{} on {} is not the manifest built",
            image.name,
            self.client
        );
        let run = cri.run_pod_once(&image.name, &["/bin/sh", "-c", script])?;
        ensure!(
            run.exit_code == 0 && run.stdout == expected,
            "the pod on {} exited {} with:\n{}",
            self.client,
            run.exit_code,
            run.output
        );
        Ok(())
    }
}

/// The hosts directory of a plain containerd node (no daemon): every
/// registry through `serving` (cluster listener or registry URLs, in order),
/// trusting the PKI's CA, with a bearer token when given, as
/// `config --serving-node` writes it (docs/cluster.md).
pub fn plain_hosts(
    work: &Path,
    name: &str,
    pki: &Pki,
    serving: &[String],
    token: Option<&str>,
) -> Result<PathBuf> {
    let hosts = work.join(format!("certs.d-{name}"));
    let mut cmd = Command::new(daemon::binary()?);
    cmd.arg("config")
        .args(["--containerd", "1.6", "--mirror-listen", "off"])
        .args(["--serving-ca", &pki.path("ca.pem")]);
    for url in serving {
        cmd.args(["--serving-node", url]);
    }
    if let Some(token) = token {
        let file = work.join(format!("{name}.token"));
        std::fs::write(&file, format!("{token}\n"))?;
        cmd.arg("--serving-token-file").arg(file);
    }
    process::run(
        cmd.arg("--hosts-dir").arg(&hosts).arg("--write"),
        Duration::from_secs(30),
    )?;
    Ok(hosts)
}

/// A node with containerd alone (no daemon, overlayfs), in a namespace of
/// a test network, its registries configured by a hosts directory: what
/// the other nodes of a cluster run.
pub struct PlainNode {
    pub containerd: PrivateContainerd,
    pub node: Node,
    hosts: PathBuf,
}

impl PlainNode {
    pub fn start(work: &Path, node: Node, hosts: PathBuf) -> Result<PlainNode> {
        // The airgap proxy plugin is in every private containerd's config;
        // here it points at nothing and nothing uses it.
        let containerd = PrivateContainerd::start(
            &work.join(format!("{}-no-daemon.sock", node.name)),
            &ContainerdOptions {
                hosts_dir: Some(hosts.clone()),
                cri_snapshotter: Some("overlayfs".to_string()),
                netns: Some(node.path()),
                ..Default::default()
            },
        )?;
        Ok(PlainNode {
            containerd,
            node,
            hosts,
        })
    }

    /// `ctr images pull --hosts-dir HOSTS IMAGE` in the namespace `ns`, on
    /// this node (overlayfs: fetched and unpacked).
    pub fn pull(&self, ns: &str, image: &str) -> Result<()> {
        self.ctr_hosts(ns, &["images", "pull"], image)
    }

    /// `ctr content fetch --hosts-dir HOSTS IMAGE`: the image's blobs into
    /// the content store, nothing unpacked.
    pub fn fetch(&self, ns: &str, image: &str) -> Result<()> {
        self.ctr_hosts(ns, &["content", "fetch"], image)
    }

    fn ctr_hosts(&self, ns: &str, command: &[&str], image: &str) -> Result<()> {
        let hosts = self.hosts.to_string_lossy();
        let mut args = vec!["-n", ns];
        args.extend(command);
        args.extend(["--hosts-dir", &hosts, image]);
        self.containerd.ctr(&args).map(drop)
    }
}

/// Pulls `image` on every node at once (a thread each); the wall time of
/// each pull, in node order. Every pull must succeed.
pub fn pull_at_once(nodes: &[PlainNode], ns: &str, image: &str) -> Result<Vec<Duration>> {
    at_once(nodes, &format!("pulling {image}"), |n| n.pull(ns, image))
}

/// [`pull_at_once`] with `ctr content fetch`: the blobs, no unpacking.
pub fn fetch_at_once(nodes: &[PlainNode], ns: &str, image: &str) -> Result<Vec<Duration>> {
    at_once(nodes, &format!("fetching {image}"), |n| n.fetch(ns, image))
}

fn at_once(
    nodes: &[PlainNode],
    what: &str,
    op: impl Fn(&PlainNode) -> Result<()> + Sync,
) -> Result<Vec<Duration>> {
    let op = &op;
    std::thread::scope(|scope| {
        let runs: Vec<_> = nodes
            .iter()
            .map(|n| {
                scope.spawn(move || {
                    let t0 = std::time::Instant::now();
                    op(n).map(|()| t0.elapsed()).map_err(|e| {
                        e.context(format!(
                            "{what} on {}; the end of its containerd's log:\n{}",
                            n.node.name,
                            process::tail(n.containerd.log_path(), 15)
                        ))
                    })
                })
            })
            .collect();
        runs.into_iter()
            .map(|r| {
                r.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a {what} thread panicked")))
            })
            .collect()
    })
}

/// A test network for load: a serving node (number 1) and `n` nodes
/// (2 and on), with a PKI whose server certificate is the serving node's.
/// Declare it before the parts that run in it: it is dropped (its
/// namespaces removed) after them.
pub struct LoadNet {
    pub pki: Pki,
    pub server: Node,
    pub nodes: Vec<Node>,
    pub net: TestNet,
}

impl LoadNet {
    pub fn new(work: &Path, n: u8) -> Result<LoadNet> {
        let mut net = TestNet::new()?;
        let server = net.add_node(1)?;
        let nodes = (2..2 + n).map(|i| net.add_node(i)).collect::<Result<_>>()?;
        let pki = Pki::new(&work.join("pki"))?;
        pki.ca("ca", "airgap cluster test CA")?
            .server("ca", "server", &[&server.addr])?;
        Ok(LoadNet {
            pki,
            server,
            nodes,
            net,
        })
    }
}

/// The bearer token of `node` in a load test or benchmark: a user each.
pub fn node_token(node: &Node) -> String {
    format!("token-{}-4b8e2c6a7d1f0a9c", node.name)
}

/// Where [`serve_nodes`]'s daemon serves its metrics, in its namespace.
pub const METRICS_LISTEN: &str = "127.0.0.1:9100";

/// A serving node in `server` for `nodes` (a token each, [`node_token`]),
/// its metrics on [`METRICS_LISTEN`]; returns once it serves `manifest`
/// (`/v2/...`) to the first node: indexing a compressed archive is a pass
/// of its own, which the caller does not want to measure.
pub fn serve_nodes(
    work: &Path,
    server: &Node,
    nodes: &[Node],
    pki: &Pki,
    archives: &[&Path],
    manifest: &str,
) -> Result<ServingNode> {
    let tokens: Vec<(String, String)> = nodes
        .iter()
        .map(|n| (n.name.clone(), node_token(n)))
        .collect();
    let pairs: Vec<(&str, &str)> = tokens
        .iter()
        .map(|(u, t)| (u.as_str(), t.as_str()))
        .collect();
    let serving = ServingNode::start(
        work,
        Serving {
            name: "serving",
            node: Some(server.clone()),
            cert: "server",
            tokens: &pairs,
            listener_extra: "",
            args: &["--metrics-listen", METRICS_LISTEN],
        },
        pki,
        archives,
    )?;
    let first = nodes.first().context("no nodes to serve")?;
    let bearer = format!("Authorization: Bearer {}", node_token(first));
    let accept = "Accept: application/vnd.oci.image.manifest.v1+json, \
                  application/vnd.docker.distribution.manifest.v2+json";
    process::wait_until(
        "the serving node to index its archives",
        Duration::from_secs(300),
        || {
            Ok(serving.status(
                Some(first),
                pki,
                "GET",
                manifest,
                &["-H", &bearer, "-H", accept],
            )? == 200)
        },
    )?;
    Ok(serving)
}

/// A [`PlainNode`] per node, pulling from `serving` (URLs, in order) with
/// its own [`node_token`] when `tokens`; `label` names their hosts
/// directories (`certs.d-<label>-<node>`).
pub fn plain_nodes(
    work: &Path,
    label: &str,
    nodes: &[Node],
    pki: &Pki,
    serving: &[String],
    tokens: bool,
) -> Result<Vec<PlainNode>> {
    nodes
        .iter()
        .map(|n| {
            let token = tokens.then(|| node_token(n));
            let name = format!("{label}-{}", n.name);
            let hosts = plain_hosts(work, &name, pki, serving, token.as_deref())?;
            PlainNode::start(work, n.clone(), hosts)
        })
        .collect()
}

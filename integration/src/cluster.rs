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

use anyhow::{ensure, Result};

use crate::containerd::{ContainerdOptions, K8S_NS};
use crate::image::{BuiltImage, SAMPLE_CHECK, SAMPLE_EXPECTED};
use crate::netns::Node;
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
        process::run(
            Command::new(daemon::binary()?)
                .arg("config")
                .args(["--containerd", "1.6", "--mirror-listen", &mirror])
                .arg("--hosts-dir")
                .arg(&hosts)
                .arg("--write"),
            Duration::from_secs(30),
        )?;
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

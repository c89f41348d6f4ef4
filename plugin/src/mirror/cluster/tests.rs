//! The cluster listener over real sockets: TLS from files (rotated while it
//! runs), mutual TLS, tokens, read-only, limits, each refusal counted;
//! certificates from rcgen.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair};

use rustls_pki_types::pem::PemObject;

use super::*;
use crate::catalog::{Catalog, CatalogOptions};
use crate::config::ClusterListenerConfig;
use crate::registry::Upstreams;
use crate::testsupport::*;

const TOKEN: &str = "node-b-0123456789abcdef";

/// A CA that signs server and client certificates.
struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, name);
        Ca {
            cert: p.self_signed(&key).unwrap(),
            key,
        }
    }

    /// (certificate PEM, key PEM) for `cn`, a server for 127.0.0.1 or a client.
    fn issue(&self, cn: &str, server: bool) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let sans = if server {
            vec!["127.0.0.1".to_string()]
        } else {
            vec![]
        };
        let mut p = CertificateParams::new(sans).unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.extended_key_usages = vec![if server {
            ExtendedKeyUsagePurpose::ServerAuth
        } else {
            ExtendedKeyUsagePurpose::ClientAuth
        }];
        let cert = p.signed_by(&key, &self.cert, &self.key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn pem(&self) -> String {
        self.cert.pem()
    }
}

fn write_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    // Replaced by rename, as a certificate manager does.
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, &p).unwrap();
    p
}

struct Served {
    addr: SocketAddr,
    catalog: Arc<Catalog>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<io::Result<()>>,
}

impl Served {
    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.await.unwrap().unwrap();
    }
}

async fn serve(archives: &Path, config: ClusterListenerConfig) -> Served {
    let catalog = Catalog::open(CatalogOptions {
        dirs: vec![archives.to_path_buf()],
        settle: Duration::ZERO,
        cache_bytes: 64 << 20,
        ..Default::default()
    })
    .unwrap();
    let mirror = Mirror::new(catalog.clone(), Upstreams::default());
    let l = ClusterListener::new(&config).unwrap();
    let bound = l.bind().await.unwrap();
    let addr = bound.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        l.serve(mirror, bound, async {
            let _ = rx.await;
        })
        .await
    });
    Served {
        addr,
        catalog,
        stop: Some(tx),
        task,
    }
}

/// The counters of the listener on one address, read again at each
/// [`Counted::moved`] to see what the requests in between counted.
struct Counted {
    addr: SocketAddr,
    last: BTreeMap<&'static str, u64>,
}

impl Counted {
    fn new(addr: SocketAddr) -> Counted {
        let mut c = Counted {
            addr,
            last: BTreeMap::new(),
        };
        c.last = c.read();
        c
    }

    /// Every reason's count; the handshake's prefixed `handshake:`.
    fn read(&self) -> BTreeMap<&'static str, u64> {
        let m = crate::metrics::global();
        let listener = self.addr.to_string();
        let mut counts = BTreeMap::new();
        for r in Refusal::ALL {
            counts.insert(r.label(), m.cluster_refusals(&listener, r.label()).get());
        }
        for f in HandshakeFailure::ALL {
            let n = m.cluster_handshake_failures(&listener, f.label()).get();
            let key = match f {
                HandshakeFailure::ClientCertificate => "handshake:client_certificate",
                HandshakeFailure::Timeout => "handshake:timeout",
                HandshakeFailure::Other => "handshake:other",
            };
            counts.insert(key, n);
        }
        counts
    }

    /// The reasons counted since the last call, with how many.
    fn moved(&mut self) -> Vec<(&'static str, u64)> {
        let now = self.read();
        let moved = now
            .iter()
            .filter_map(|(k, n)| Some((*k, n.checked_sub(self.last[k]).filter(|d| *d > 0)?)))
            .collect();
        self.last = now;
        moved
    }

    /// As [`Counted::moved`], once something was counted: a failed
    /// handshake is counted by the listener's task after the client saw
    /// the alert.
    async fn moved_soon(&mut self) -> Vec<(&'static str, u64)> {
        for _ in 0..500 {
            if self.read() != self.last {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.moved()
    }
}

fn client(ca: &str, identity: Option<(&str, &str)>) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca.as_bytes()).unwrap())
        .pool_max_idle_per_host(0);
    if let Some((cert, key)) = identity {
        b = b.identity(reqwest::Identity::from_pem(format!("{cert}\n{key}").as_bytes()).unwrap());
    }
    b.build().unwrap()
}

/// The certificate the server presents on a new connection.
async fn presented(addr: SocketAddr, ca: &str) -> Vec<u8> {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_slice_iter(ca.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let stream = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(
            rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap(),
            tcp,
        )
        .await
        .unwrap();
    stream.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

fn der(pem: &str) -> Vec<u8> {
    rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .to_vec()
}

fn archive(dir: &Path) -> BuiltImage {
    let spec = ImageSpec::new(vec![layer_tar(&[("etc/hello", b"hello\n")])]);
    let (oci, built) = OciLayout::single("busybox:1.36", &spec);
    write(dir, "a.tar", &oci.to_tar());
    built
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_tokens_and_client_certificates_read_only_and_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let archives = dir.path().join("archives");
    std::fs::create_dir_all(&archives).unwrap();
    let built = archive(&archives);
    let ca = Ca::new("cluster CA");
    let (cert, key) = ca.issue("node-a", true);
    let cert_file = write_file(dir.path(), "node.pem", &cert);
    let key_file = write_file(dir.path(), "node.key", &key);
    let ca_file = write_file(dir.path(), "ca.pem", &ca.pem());
    let tokens = write_file(dir.path(), "tokens", &format!("node-b:{TOKEN}\n"));
    let served = serve(
        &archives,
        ClusterListenerConfig {
            tls_cert_file: Some(cert_file.clone()),
            tls_key_file: Some(key_file.clone()),
            client_ca_file: Some(ca_file),
            tokens_file: Some(tokens),
            ..ClusterListenerConfig::plain("127.0.0.1:0".parse().unwrap())
        },
    )
    .await;
    let base = format!("https://127.0.0.1:{}", served.addr.port());
    let manifest = format!("{base}/v2/library/busybox/manifests/1.36?ns=docker.io");
    let blob = format!(
        "{base}/v2/library/busybox/blobs/{}?ns=docker.io",
        built.layers[0]
    );
    let mut counted = Counted::new(served.addr);

    // No credentials: 401 with a basic challenge.
    let anonymous = client(&ca.pem(), None);
    let r = anonymous.get(&manifest).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(counted.moved(), [("unauthenticated", 1)]);
    let challenge = r.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(
        challenge,
        format!("Bearer realm=\"{base}{TOKEN_PATH}\",service=\"airgap-snapshotter\"")
    );
    // The token flow: basic credentials (a token as NAME's password) at the
    // realm give a bearer token that pulls; none, or wrong ones, a 401.
    let realm = format!(
        "{base}{TOKEN_PATH}?service=airgap-snapshotter&scope=repository:library/busybox:pull"
    );
    let r = anonymous.get(&realm).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], BASIC_CHALLENGE);
    assert_eq!(counted.moved(), [("unauthenticated", 1)]);
    let r = anonymous
        .get(&realm)
        .basic_auth("node-b", Some("wrong"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(counted.moved(), [("bad_credentials", 1)]);
    let r = anonymous
        .get(&realm)
        .basic_auth("node-b", Some(TOKEN))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let answer: serde_json::Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    let minted = answer["token"].as_str().unwrap().to_string();
    assert_ne!(minted, TOKEN);
    let r = anonymous
        .get(&manifest)
        .bearer_auth(&minted)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = anonymous
        .get(&manifest)
        .bearer_auth("node-b-wrong-token-000000")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // The token issued and the pull with it are not refusals.
    assert_eq!(counted.moved(), [("bad_credentials", 1)]);
    // An anonymous push: 401 first, as from a registry.
    let r = anonymous
        .post(format!("{base}/v2/library/busybox/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(counted.moved(), [("unauthenticated", 1)]);

    // A token: pulls; a push or a delete is 405, the catalog 404.
    for url in [&manifest, &blob, &format!("{base}/v2/")] {
        let r = anonymous.get(url).bearer_auth(TOKEN).send().await.unwrap();
        assert_eq!(r.status(), 200, "{url}");
    }
    let r = anonymous
        .get(&blob)
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.headers()["docker-content-digest"],
        built.layers[0].to_string()
    );
    for (method, url) in [
        (
            reqwest::Method::POST,
            format!("{base}/v2/library/busybox/blobs/uploads/"),
        ),
        (
            reqwest::Method::PUT,
            format!("{base}/v2/library/busybox/manifests/1.36"),
        ),
        (reqwest::Method::DELETE, blob.clone()),
    ] {
        let r = anonymous
            .request(method.clone(), &url)
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 405, "{method} {url}");
        assert_eq!(r.headers()["allow"], "GET, HEAD");
        let body: serde_json::Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
        assert_eq!(body["errors"][0]["code"], "UNSUPPORTED");
    }
    assert_eq!(counted.moved(), [("method", 3)]);
    let r = anonymous
        .get(format!("{base}/v2/_catalog"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(counted.moved(), [("catalog", 1)]);

    // A client certificate the CA signed: pulls without a token.
    let (ccert, ckey) = ca.issue("node-c", false);
    let with_cert = client(&ca.pem(), Some((&ccert, &ckey)));
    assert_eq!(with_cert.get(&manifest).send().await.unwrap().status(), 200);
    // One another CA signed: the handshake fails.
    let other = Ca::new("someone else");
    let (bad_cert, bad_key) = other.issue("node-c", false);
    let bad = client(&ca.pem(), Some((&bad_cert, &bad_key)));
    assert!(bad.get(&manifest).send().await.is_err());
    assert_eq!(
        counted.moved_soon().await,
        [("handshake:client_certificate", 1)]
    );

    // Rotation: new files, the next handshake presents the new certificate.
    assert_eq!(presented(served.addr, &ca.pem()).await, der(&cert));
    let (cert2, key2) = ca.issue("node-a-renewed", true);
    write_file(dir.path(), "node.key", &key2);
    write_file(dir.path(), "node.pem", &cert2);
    assert_eq!(presented(served.addr, &ca.pem()).await, der(&cert2));
    assert_eq!(with_cert.get(&manifest).send().await.unwrap().status(), 200);
    // A broken file keeps the last good certificate.
    write_file(dir.path(), "node.pem", "not a certificate\n");
    assert_eq!(presented(served.addr, &ca.pem()).await, der(&cert2));
    // Plain HTTP to the TLS port, a connection closed before its handshake.
    let plain = reqwest::Client::new();
    assert!(plain
        .get(format!("http://127.0.0.1:{}/v2/", served.addr.port()))
        .send()
        .await
        .is_err());
    assert_eq!(counted.moved_soon().await, [("handshake:other", 1)]);
    drop(TcpStream::connect(served.addr).await.unwrap());
    assert_eq!(counted.moved_soon().await, [("handshake:other", 1)]);
    served.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_only_requires_a_certificate_and_limits_answer_429() {
    let dir = tempfile::tempdir().unwrap();
    let archives = dir.path().join("archives");
    std::fs::create_dir_all(&archives).unwrap();
    archive(&archives);
    let ca = Ca::new("cluster CA");
    let (cert, key) = ca.issue("node-a", true);
    let served = serve(
        &archives,
        ClusterListenerConfig {
            tls_cert_file: Some(write_file(dir.path(), "node.pem", &cert)),
            tls_key_file: Some(write_file(dir.path(), "node.key", &key)),
            client_ca_file: Some(write_file(dir.path(), "ca.pem", &ca.pem())),
            requests_per_second: 1,
            burst: 2,
            ..ClusterListenerConfig::plain("127.0.0.1:0".parse().unwrap())
        },
    )
    .await;
    let url = format!("https://127.0.0.1:{}/v2/", served.addr.port());
    let mut counted = Counted::new(served.addr);
    // No certificate: no handshake.
    assert!(client(&ca.pem(), None).get(&url).send().await.is_err());
    assert_eq!(
        counted.moved_soon().await,
        [("handshake:client_certificate", 1)]
    );
    let (ccert, ckey) = ca.issue("node-b", false);
    let b = client(&ca.pem(), Some((&ccert, &ckey)));
    assert_eq!(b.get(&url).send().await.unwrap().status(), 200);
    assert_eq!(b.get(&url).send().await.unwrap().status(), 200);
    // The burst is spent: 429 with Retry-After, for this client only.
    let r = b.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "1");
    let body: serde_json::Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    assert_eq!(body["errors"][0]["code"], "TOOMANYREQUESTS");
    assert_eq!(counted.moved(), [("rate", 1)]);
    let (ccert, ckey) = ca.issue("node-c", false);
    let c = client(&ca.pem(), Some((&ccert, &ckey)));
    assert_eq!(c.get(&url).send().await.unwrap().status(), 200);
    assert_eq!(counted.moved(), []);
    served.stop().await;
}

/// A client at its `max_concurrent_requests` gets 429 for one more, counted
/// apart from the rate: the first request waits for a pass over a
/// single-frame archive while every decompression slot is held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_over_the_in_flight_limit_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let archives = dir.path().join("archives");
    std::fs::create_dir_all(&archives).unwrap();
    let spec = ImageSpec::new(vec![layer_tar(&[("etc/hello", b"hello\n")])]);
    let (oci, built) = OciLayout::single("busybox:1.36", &spec);
    let archive = write(&archives, "a.tar.zst", &wrap(&oci.to_tar(), Wrap::Zstd));
    let served = serve(
        &archives,
        ClusterListenerConfig {
            max_concurrent_requests: 1,
            ..ClusterListenerConfig::plain("127.0.0.1:0".parse().unwrap())
        },
    )
    .await;
    let base = format!("http://127.0.0.1:{}", served.addr.port());
    let blob = format!(
        "{base}/v2/library/busybox/blobs/{}?ns=docker.io",
        built.layers[0]
    );
    let mut counted = Counted::new(served.addr);
    let catalog = served.catalog.clone();
    let held: Vec<_> = std::iter::from_fn(|| catalog.pass_permits().try_acquire()).collect();
    assert!(!held.is_empty());
    let first = tokio::spawn({
        let blob = blob.clone();
        async move { reqwest::get(&blob).await.unwrap().status() }
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while catalog.pass_pending(&archive) < 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "the read did not wait"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let r = reqwest::get(format!("{base}/v2/")).await.unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(counted.moved(), [("in_flight", 1)]);
    drop(held);
    assert_eq!(first.await.unwrap(), 200);
    assert_eq!(reqwest::get(&blob).await.unwrap().status(), 200);
    assert_eq!(counted.moved(), []);
    served.stop().await;
}

#[test]
fn listener_files_that_do_not_load_stop_the_start_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("cluster CA");
    let (cert, _) = ca.issue("node-a", true);
    let (_, other_key) = ca.issue("node-x", true);
    let config = ClusterListenerConfig {
        tls_cert_file: Some(write_file(dir.path(), "node.pem", &cert)),
        tls_key_file: Some(write_file(dir.path(), "node.key", &other_key)),
        ..ClusterListenerConfig::plain("127.0.0.1:0".parse().unwrap())
    };
    let err = ClusterListener::new(&config).err().unwrap().to_string();
    assert!(err.contains("node.key"), "{err}");
    let config = ClusterListenerConfig {
        tls_key_file: Some(dir.path().join("missing.key")),
        ..config
    };
    let err = ClusterListener::new(&config).err().unwrap().to_string();
    assert!(err.contains("missing.key"), "{err}");
}

/// The counters are indexed by the reasons' discriminants: `ALL` lists
/// them in that order, each label once.
#[test]
fn every_reason_has_its_own_counter() {
    for (i, r) in Refusal::ALL.into_iter().enumerate() {
        assert_eq!(r as usize, i, "{r:?}");
    }
    for (i, f) in HandshakeFailure::ALL.into_iter().enumerate() {
        assert_eq!(f as usize, i, "{f:?}");
    }
    let labels: std::collections::BTreeSet<_> = Refusal::ALL
        .map(Refusal::label)
        .into_iter()
        .chain(HandshakeFailure::ALL.map(HandshakeFailure::label))
        .collect();
    assert_eq!(
        labels.len(),
        Refusal::ALL.len() + HandshakeFailure::ALL.len()
    );
}

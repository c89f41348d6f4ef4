//! The cluster listener over real sockets: TLS from files (rotated while it
//! runs), mutual TLS, tokens, read-only, limits; certificates from rcgen.

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
    let mirror = Mirror::new(catalog, Upstreams::default());
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
        stop: Some(tx),
        task,
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

    // No credentials: 401 with a basic challenge.
    let anonymous = client(&ca.pem(), None);
    let r = anonymous.get(&manifest).send().await.unwrap();
    assert_eq!(r.status(), 401);
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
    let r = anonymous
        .get(&realm)
        .basic_auth("node-b", Some("wrong"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
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
    // An anonymous push: 401 first, as from a registry.
    let r = anonymous
        .post(format!("{base}/v2/library/busybox/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

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
    let r = anonymous
        .get(format!("{base}/v2/_catalog"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    // A client certificate the CA signed: pulls without a token.
    let (ccert, ckey) = ca.issue("node-c", false);
    let with_cert = client(&ca.pem(), Some((&ccert, &ckey)));
    assert_eq!(with_cert.get(&manifest).send().await.unwrap().status(), 200);
    // One another CA signed: the handshake fails.
    let other = Ca::new("someone else");
    let (bad_cert, bad_key) = other.issue("node-c", false);
    let bad = client(&ca.pem(), Some((&bad_cert, &bad_key)));
    assert!(bad.get(&manifest).send().await.is_err());

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
    // No certificate: no handshake.
    assert!(client(&ca.pem(), None).get(&url).send().await.is_err());
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
    let (ccert, ckey) = ca.issue("node-c", false);
    let c = client(&ca.pem(), Some((&ccert, &ckey)));
    assert_eq!(c.get(&url).send().await.unwrap().status(), 200);
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

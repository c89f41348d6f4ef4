//! End-to-end test of one node's archives serving the cluster across
//! "hosts": network namespaces made by the test ([`TestNet`]: a bridge in
//! its own namespace, a veth and a private address per node, nothing in the
//! root namespace, all removed at the end).
//!
//! - Nodes A1 and A2 hold the same archives and run the daemon with a
//!   cluster listener on their own address (TLS from a test CA made with
//!   `openssl`, client certificates).
//! - Nodes B and C run the daemon with no archives and no registry, and
//!   their own containerd in their namespace: B has A1 then A2 as
//!   upstreams, C a relay in A1's namespace in front of A1 ([`Relay`]) then
//!   A2 (mutual TLS, passed through by the relay). CRI pulls and a pod run
//!   on B and on C, from A1.
//! - A1 stopped mid-pull: the relay, armed, cuts C's transfer of a large
//!   layer once it has relayed [`CUT_AFTER`] bytes of it, SIGKILLing A1's
//!   daemon first. C's daemon continues that blob from A2 with a
//!   `Range: bytes=N-` request, the pull completes, and the pod sees the
//!   layer's bytes. (A first endpoint already dead when a pull starts is
//!   `tests/cluster_serve.rs`'s.)
//! - Refusals across hosts, at A2 from B's namespace: no credentials, a
//!   wrong token, a certificate of another CA, a push; each is counted in
//!   A2's metrics (`airgap_cluster_refusals_total`,
//!   `airgap_cluster_tls_handshake_failures_total`).
//!
//! The parts are [`airgap_integration::cluster`]'s. Root only, serialized
//! with the other end-to-end tests.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{ensure, Context, Result};

use airgap_integration::cluster::{
    DaemonNode, Pki, Serving, ServingNode, METRICS_LISTEN, NETNS_PORT,
};
use airgap_integration::image::{
    self, Entry, Layer, LayerCompression, SAMPLE_CHECK, SAMPLE_EXPECTED,
};
use airgap_integration::netns::TestNet;
use airgap_integration::relay::Relay;
use airgap_integration::{process, run_as_root, serial, TestDir};
use airgap_snapshotter::digest::Digest;

const HOST: &str = "registry.airgap.test";
const TOKEN: &str = "probe-token-5c1e9a7d3b2f8e60";

/// The size of the large layer's one file (incompressible bytes).
const LARGE_LEN: usize = 24 << 20;
/// The relay cuts a connection once it relayed this many bytes since it
/// was armed: more than everything but the large layer (so the cut lands in
/// it, past what C's buffers can hold unread) and well short of its end.
const CUT_AFTER: u64 = 8 << 20;

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
    let pki = Pki::new(&work.path().join("pki"))?;
    pki.ca("ca", "airgap cluster test CA")?
        .server("ca", "server", &[&a1.addr, &a2.addr])?
        .client("ca", &b.name, &b.name)?
        .client("ca", &c.name, &c.name)?
        .ca("other-ca", "someone else's CA")?
        .client("other-ca", "intruder", &b.name)?;
    let sample = image::write_oci_archive(
        &image::sample_spec(HOST, "sample", "v1")?,
        &work.path().join("sample.tar"),
    )?;
    let large_file = image::incompressible(LARGE_LEN, 22);
    let mut spec = image::sample_spec(HOST, "large", "v1")?;
    spec.layers.push(Layer::new(vec![
        Entry::dir("data"),
        Entry::file("data/large", large_file.as_slice()),
    ]));
    // Uncompressed layers: gzip in a debug build would take 10 s here, and
    // failover handles a blob's bytes whatever they are.
    let large = image::write_oci_archive_with(
        &spec,
        &work.path().join("large.tar"),
        LayerCompression::None,
    )?;
    drop(spec);
    let large_layer = large.layer_digests.last().context("no layer")?.clone();
    let large_check = format!("{SAMPLE_CHECK}; /bin/busybox sha256sum /data/large");
    let large_expected = format!(
        "{SAMPLE_EXPECTED}{}  /data/large\n",
        Digest::of(&large_file).hex()
    );
    drop(large_file);
    // Everything in the archive but the large file's bytes: more than the
    // pull of `large` fetches besides its large layer.
    let others = std::fs::metadata(&large.archive)?.len() - LARGE_LEN as u64;
    ensure!(
        others < CUT_AFTER / 2,
        "the large image's other blobs ({others} bytes) leave the cut no room"
    );
    let pause = image::write_pause_archive(
        &format!("{HOST}/library/pause:3.10"),
        "3.10",
        "cluster-netns",
        &work.path().join("pause.tar"),
    )?;
    let archives = [
        sample.archive.as_path(),
        large.archive.as_path(),
        pause.archive.as_path(),
    ];
    let serving = |node: airgap_integration::netns::Node| -> Result<ServingNode> {
        let name = node.name.clone();
        ServingNode::start(
            work.path(),
            Serving {
                name: &name,
                node: Some(node),
                cert: "server",
                tokens: &[("probe", TOKEN)],
                listener_extra: "",
                args: &["--metrics-listen", METRICS_LISTEN],
            },
            &pki,
            &archives,
        )
    };
    let mut first = serving(a1)?;
    let next = serving(a2)?;
    let a1_netns = first.node.as_ref().context("A1 has no node")?.path();
    let target: SocketAddr = format!("{}:{}", first.addr(), first.port()).parse()?;
    let relay = Relay::start(
        &a1_netns,
        format!("{}:{}", first.addr(), NETNS_PORT + 1).parse()?,
        target,
    )?;
    let relay_url = format!("https://{}", relay.addr());
    let pulling =
        |node: airgap_integration::netns::Node, upstreams: &[String]| -> Result<DaemonNode> {
            let name = node.name.clone();
            DaemonNode::start(work.path(), &name, Some(node), &pki, upstreams, &pause.name)
        };
    let mut node_b = pulling(b, &[first.url(), next.url()])?;
    let mut node_c = pulling(c, &[relay_url.clone(), next.url()])?;
    ensure!(first.probe_from(node_c.node.as_ref(), &pki)? == 200);

    // 1. CRI on B and C: pull and run, from A1's archives (C's through the
    //    relay, not armed yet), no registry.
    node_b.pull_and_run(test, &sample)?;
    node_c.pull_and_run(test, &sample)?;
    let log = first.daemon.log();
    for client in [&node_b.client, &node_c.client] {
        ensure!(
            log.contains(&format!("client=cert:{client}")),
            "A1's log does not show {client}'s certificate as a client"
        );
    }
    let c_cert = format!("client=cert:{}", node_c.client);
    ensure!(
        !next.daemon.log().contains(&c_cert),
        "A2 served {} before A1 was stopped",
        node_c.client
    );

    // 2. A1 stopped mid-pull: the relay cuts C's transfer of the large
    //    layer, A1's daemon SIGKILLed first; C finishes it from A2.
    let pid = first.daemon.pid().context("A1's daemon is not running")?;
    relay.cut_after(CUT_AFTER, move || {
        eprintln!("== relay: {CUT_AFTER} bytes relayed, killing A1's daemon (pid {pid})");
        process::kill_by_pid(pid, Duration::from_secs(10))
    });
    node_c.pull_and_check(test, &large, &large_check, &large_expected)?;
    let cut = relay
        .cut()
        .context("the relay never cut: the pull did not go through it")?;
    eprintln!("== {test}: the relay cut after {} bytes", cut.relayed);
    ensure!(
        cut.action.is_ok(),
        "killing A1's daemon at the cut: {:?}",
        cut.action
    );
    ensure!(cut.relayed > CUT_AFTER);
    ensure!(
        first.daemon.check_running().is_err(),
        "A1's daemon still runs"
    );
    ensure!(
        first.probe_from(node_c.node.as_ref(), &pki)? == 0,
        "A1 still answers"
    );
    let a2_log = next.daemon.log();
    ensure!(
        a2_log
            .lines()
            .any(|l| l.contains(&c_cert) && l.contains(&format!("/blobs/{large_layer}"))),
        "A2 did not serve {} the large layer",
        node_c.client
    );
    // The line C's daemon logs when a transfer goes on from the next
    // upstream, having asked it for `Range: bytes=<offset>-` and got that.
    let c_log = node_c.daemon.log();
    let offsets = resumed_at(&c_log, &large_layer, &relay_url, &next.url());
    ensure!(
        offsets.len() == 1,
        "C's daemon did not continue {large_layer} from A2 exactly once: {offsets:?}; \
         its failover lines:\n{}",
        c_log
            .lines()
            .filter(|l| l.contains("registry::failover"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    ensure!(
        offsets[0] > 0 && offsets[0] < LARGE_LEN as u64,
        "C's daemon continued the large layer at {}, not mid-blob",
        offsets[0]
    );
    eprintln!(
        "== {test}: C continued the large layer from A2 at byte {}",
        offsets[0]
    );

    // 3. Refusals across hosts, at A2, from B's namespace, each counted:
    //    no credentials, a wrong token, another CA's certificate, a push.
    let from = node_b.node.as_ref();
    let manifest = format!("/v2/library/sample/manifests/v1?ns={HOST}");
    let bearer = format!("Authorization: Bearer {TOKEN}");
    let wrong = "Authorization: Bearer probe-token-000000000000000";
    let intruder = [
        "--cert",
        &pki.path("intruder.pem"),
        "--key",
        &pki.path("intruder.key"),
    ];
    let uploads = "/v2/library/sample/blobs/uploads/";
    for (what, method, path, extra, want) in [
        ("no credentials", "GET", manifest.as_str(), &[][..], 401),
        ("a wrong token", "GET", &manifest, &["-H", wrong][..], 401),
        (
            "another CA's certificate",
            "GET",
            &manifest,
            &intruder[..],
            0,
        ),
        ("a push", "POST", uploads, &["-H", &bearer][..], 405),
        ("the token", "GET", &manifest, &["-H", &bearer][..], 200),
    ] {
        let got = next.status(from, &pki, method, path, extra)?;
        ensure!(got == want, "{what}: A2 answered {got}, not {want}");
    }
    let metrics = next.metrics(METRICS_LISTEN)?;
    for (name, reason) in [
        ("airgap_cluster_refusals_total", "unauthenticated"),
        ("airgap_cluster_refusals_total", "bad_credentials"),
        ("airgap_cluster_refusals_total", "method"),
        (
            "airgap_cluster_tls_handshake_failures_total",
            "client_certificate",
        ),
    ] {
        let count = counted(&metrics, name, reason);
        ensure!(
            count >= 1,
            "A2's {name}{{reason=\"{reason}\"}} is {count} after such a refusal"
        );
    }

    node_b.daemon.check_running()?;
    node_c.daemon.check_running()?;
    drop(node_c);
    drop(node_b);
    drop(relay);
    drop(next);
    drop(first);
    drop(net);
    Ok(())
}

/// The sum of the samples of `name` with `reason="<reason>"` in a metrics
/// text.
fn counted(metrics: &str, name: &str, reason: &str) -> u64 {
    let label = format!("reason=\"{reason}\"");
    metrics
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(&label))
        .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// The offsets of the lines of a daemon's `log` that say it continued the
/// blob `digest`, broken off from `from`, from `to`.
fn resumed_at(log: &str, digest: &str, from: &str, to: &str) -> Vec<u64> {
    log.lines()
        .filter(|l| l.contains("continuing from the next upstream"))
        .filter(|l| {
            let fields: Vec<&str> = l.split_whitespace().collect();
            fields.contains(&format!("digest={digest}").as_str())
                && fields.contains(&format!("from={from}").as_str())
                && fields.contains(&format!("to={to}").as_str())
        })
        .filter_map(|l| {
            l.split_whitespace()
                .find_map(|f| f.strip_prefix("offset="))
                .and_then(|v| v.parse().ok())
        })
        .collect()
}

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
//! The parts are [`airgap_integration::cluster`]'s. Root only, serialized
//! with the other end-to-end tests.

use anyhow::{ensure, Result};

use airgap_integration::cluster::{DaemonNode, Pki, Serving, ServingNode};
use airgap_integration::image;
use airgap_integration::netns::TestNet;
use airgap_integration::{run_as_root, serial, TestDir};

const HOST: &str = "registry.airgap.test";
const TOKEN: &str = "probe-token-5c1e9a7d3b2f8e60";

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
        .client("ca", &c.name, &c.name)?;
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
                args: &[],
            },
            &pki,
            &archives,
        )
    };
    let mut first = serving(a1)?;
    let next = serving(a2)?;
    let upstreams = [first.url(), next.url()];
    let pulling = |node: airgap_integration::netns::Node| -> Result<DaemonNode> {
        let name = node.name.clone();
        DaemonNode::start(
            work.path(),
            &name,
            Some(node),
            &pki,
            &upstreams,
            &pause.name,
        )
    };
    let mut node_b = pulling(b)?;
    let mut node_c = pulling(c)?;
    ensure!(first.probe_from(node_c.node.as_ref(), &pki)? == 200);

    // 1. CRI on B and C: pull and run, from A1's archives, no registry.
    node_b.pull_and_run(test, &sample)?;
    node_c.pull_and_run(test, &sample)?;
    let log = first.daemon.log();
    for client in [&node_b.client, &node_c.client] {
        ensure!(
            log.contains(&format!("client=cert:{client}")),
            "A1's log does not show {client}'s certificate as a client"
        );
    }

    // 2. A1 stops: C's next pull goes to A2 and completes.
    eprintln!("== {test}: stopping the daemon of A1");
    first.daemon.stop()?;
    ensure!(
        first.probe_from(node_c.node.as_ref(), &pki)? == 0,
        "A1 still answers"
    );
    node_c.pull_and_run(test, &second)?;
    ensure!(
        next.daemon
            .log()
            .contains(&format!("client=cert:{}", node_c.client)),
        "A2 did not serve {}",
        node_c.client
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

//! Ten nodes pull the same image at once from one serving node (issue 22,
//! load): each node a network namespace with its own containerd and no
//! daemon, its hosts.toml written by `config --serving-node` with a token
//! of its own; the serving node has the image in a single-frame `.tar.zst`
//! archive (no random access: a blob is reached only by decompressing from
//! the first byte).
//!
//! Asserted: every pull succeeds with the manifest built; the serving node
//! decompresses the archive at most once for all ten (the shared pass:
//! `airgap_archive_decompressed_bytes` grows by at most the archive's
//! uncompressed size); its peak RSS during the pulls grows by less than
//! four times the image's largest layer, where holding that layer in memory
//! per request would take ten (blobs are streamed; what grows is threads,
//! TLS sessions and the decompressor: about 45 MiB for a debug build). The
//! time and CPU against docker-registry are measured by `bench --cluster`,
//! not here.
//!
//! Root only, serialized with the other end-to-end tests.

use anyhow::{ensure, Context, Result};

use airgap_integration::bench::system::{status_kib, sum_metric};
use airgap_integration::cluster::{
    plain_nodes, pull_at_once, serve_nodes, LoadNet, METRICS_LISTEN,
};
use airgap_integration::image::{self, ArchiveContainer, Entry, Layer};
use airgap_integration::netns::TestNet;
use airgap_integration::{run_as_root, serial, TestDir};

const HOST: &str = "registry.airgap.test";
const NODES: u8 = 10;
const DECOMPRESSED: &str = "airgap_archive_decompressed_bytes_total";
/// The incompressible file of the image's top layer.
const BIG_FILE: usize = 24 << 20;

fn vm_kib(pid: u32, key: &str) -> Result<u64> {
    status_kib(pid, key).with_context(|| format!("no {key} in /proc/{pid}/status"))
}

#[test]
fn ten_nodes_pull_at_once_from_one_serving_node_in_one_pass() {
    run_as_root("cluster_load", |test| {
        let _serial = serial()?;
        let result = cluster_load(test);
        let left = TestNet::leftovers()?;
        result?;
        ensure!(left.is_empty(), "network namespaces left behind: {left:?}");
        Ok(())
    });
}

fn cluster_load(test: &str) -> Result<()> {
    let work = TestDir::new(test)?;
    let LoadNet {
        pki,
        server,
        nodes,
        net,
    } = LoadNet::new(work.path(), NODES)?;

    let mut spec = image::sample_spec(HOST, "load", "v1")?;
    spec.layers.push(Layer::new(vec![
        Entry::dir("big"),
        Entry::file(
            "big/noise",
            image::incompressible(BIG_FILE, 0x9e37_79b9_7f4a_7c15),
        ),
    ]));
    let tar = work.path().join("load.tar");
    let built = image::write_oci_archive(&spec, &tar)?;
    let archive = image::compress_archive(&tar, ArchiveContainer::Zstd)?;
    let unpacked = std::fs::metadata(&tar)?.len();

    let manifest = format!("/v2/library/load/manifests/v1?ns={HOST}");
    let serving = serve_nodes(work.path(), &server, &nodes, &pki, &[&archive], &manifest)?;
    let plain = plain_nodes(work.path(), "load", &nodes, &pki, &[serving.url()], true)?;

    let pid = serving
        .daemon
        .pid()
        .context("the serving daemon is not running")?;
    let decompressed = || -> Result<u64> {
        sum_metric(&serving.metrics(METRICS_LISTEN)?, DECOMPRESSED)
            .with_context(|| format!("no {DECOMPRESSED} in the serving node's metrics"))
    };
    let before = decompressed()?;
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5")?;
    let rss_before = vm_kib(pid, "VmRSS")?;
    eprintln!("== {test}: {NODES} nodes pull {} at once", built.name);
    pull_at_once(&plain, "load", &built.name)?;
    let rss_peak = vm_kib(pid, "VmHWM")?;
    let passes = decompressed()?.saturating_sub(before);

    for node in &plain {
        let digest = node.containerd.image_digest("load", &built.name)?;
        ensure!(
            digest == built.manifest_digest,
            "{} pulled {digest}, built {}",
            node.node.name,
            built.manifest_digest
        );
    }
    eprintln!(
        "== {test}: decompressed {passes} bytes for {NODES} pulls (archive {unpacked} bytes unpacked); \
         RSS {rss_before} KiB before, peak {rss_peak} KiB"
    );
    ensure!(
        passes <= unpacked,
        "the serving node decompressed {passes} bytes for {NODES} pulls: more than one pass over \
         the archive's {unpacked} bytes"
    );
    ensure!(
        passes > 0,
        "the serving node decompressed nothing: the pulls were not served from the archive"
    );
    let growth = rss_peak.saturating_sub(rss_before) * 1024;
    ensure!(
        growth < 4 * BIG_FILE as u64,
        "the serving node's RSS grew by {growth} bytes during {NODES} pulls of a {BIG_FILE}-byte \
         layer: blobs held in memory per request?"
    );
    drop(plain);
    drop(serving);
    drop(net);
    Ok(())
}

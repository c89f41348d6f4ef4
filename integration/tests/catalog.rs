//! The catalog against containerd itself: the chain IDs `images --json`
//! computes for an archive are the snapshot names containerd gives the
//! same archive's layers when it imports it with `ctr images import`.
//!
//! Root only (a private containerd). Serialized with the other end-to-end
//! tests.

use std::process::Command;

use anyhow::{ensure, Context, Result};

use airgap_integration::containerd::ContainerdOptions;
use airgap_integration::image::{self, ImageSpec};
use airgap_integration::{can_run, serial, Daemon, PrivateContainerd, TestDir};

#[test]
fn chain_ids_match_containerd() -> Result<()> {
    if !can_run("chain_ids_match_containerd") {
        return Ok(());
    }
    let _serial = serial()?;
    let work = TestDir::new("catalog-chain")?;
    let archive = work.path().join("three-layers.tar");
    let built = image::write_oci_archive(
        &ImageSpec {
            name: "example.test/chain/check:v1".into(),
            tag: "v1".into(),
            layers: image::sample_layers("chain")?,
        },
        &archive,
    )?;

    // What we compute.
    let out = Command::new(airgap_integration::daemon::binary()?)
        .args(["images", "--json", "--archives"])
        .arg(work.path())
        .output()
        .context("running airgap-snapshotter images")?;
    ensure!(
        out.status.success(),
        "images failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let ours: Vec<String> = rows[0]["manifests"][0]["layers"]
        .as_array()
        .context("no layers in images --json")?
        .iter()
        .map(|l| l["chain_id"].as_str().unwrap().to_string())
        .collect();
    ensure!(ours.len() >= 2, "want a multi-layer image, got {ours:?}");
    ensure!(
        rows[0]["ref"] == "example.test/chain/check:v1",
        "ref: {}",
        rows[0]["ref"]
    );
    ensure!(
        rows[0]["digest"] == built.manifest_digest.as_str(),
        "digest: {}",
        rows[0]["digest"]
    );

    // What containerd computes: import with its own overlayfs snapshotter,
    // whose committed snapshots are named by chain ID.
    let daemon = Daemon::start()?;
    let containerd = PrivateContainerd::start(daemon.socket(), &ContainerdOptions::default())?;
    let archive_arg = archive.to_str().unwrap();
    containerd.ctr(&[
        "-n",
        "default",
        "images",
        "import",
        "--snapshotter",
        "overlayfs",
        archive_arg,
    ])?;
    let listing = containerd.ctr(&[
        "-n",
        "default",
        "snapshots",
        "--snapshotter",
        "overlayfs",
        "ls",
    ])?;
    let theirs: Vec<&str> = listing
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    for chain in &ours {
        ensure!(
            theirs.contains(&chain.as_str()),
            "containerd has no snapshot {chain}; it has {theirs:?}"
        );
    }
    ensure!(
        ours == built.chain_ids,
        "chain IDs differ from the builder's: {ours:?} vs {:?}",
        built.chain_ids
    );
    containerd.ctr(&[
        "-n",
        "default",
        "images",
        "rm",
        "--sync",
        "example.test/chain/check:v1",
    ])?;
    Ok(())
}

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

/// The sample image (busybox plus the test entries) named `name`, written
/// as an OCI archive at `path`.
fn sample_archive(name: &str, path: &std::path::Path) -> Result<image::BuiltImage> {
    let tag = name.rsplit(':').next().unwrap_or("latest");
    image::write_oci_archive(
        &ImageSpec {
            name: name.into(),
            tag: tag.into(),
            layers: image::sample_layers(name)?,
        },
        path,
    )
}

/// `airgap-snapshotter images --json --archives PATH`, parsed.
fn images_json(archives: &std::path::Path) -> Result<serde_json::Value> {
    let out = Command::new(airgap_integration::daemon::binary()?)
        .args(["images", "--json", "--archives"])
        .arg(archives)
        .output()
        .context("running airgap-snapshotter images")?;
    ensure!(
        out.status.success(),
        "images failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(serde_json::from_slice(&out.stdout)?)
}

#[test]
fn chain_ids_match_containerd() -> Result<()> {
    if !can_run("chain_ids_match_containerd") {
        return Ok(());
    }
    let _serial = serial()?;
    let work = TestDir::new("catalog-chain")?;
    let archive = work.path().join("three-layers.tar");
    let built = sample_archive("example.test/chain/check:v1", &archive)?;

    // What we compute.
    let rows = images_json(work.path())?;
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

/// A packed archive is still an ordinary `.tar.zst`: `zstd -d | tar -t`
/// reads it and containerd's own `ctr images import` imports it, with the
/// same manifest digest.
#[test]
fn packed_archives_work_with_zstd_tar_and_ctr_import() -> Result<()> {
    if !can_run("packed_archives_work_with_zstd_tar_and_ctr_import") {
        return Ok(());
    }
    let _serial = serial()?;
    let work = TestDir::new("catalog-pack")?;
    let src = work.path().join("src");
    std::fs::create_dir_all(&src)?;
    let built = sample_archive("example.test/pack/check:v2", &src.join("in.tar"))?;
    let packed = work.path().join("out.tar.zst");
    let bin = airgap_integration::daemon::binary()?;
    let out = Command::new(&bin)
        .arg("pack")
        .arg("-o")
        .arg(&packed)
        .arg("--from")
        .arg(&src)
        .arg("example.test/pack/check:v2")
        .output()?;
    ensure!(
        out.status.success(),
        "pack failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let listing = Command::new("sh")
        .arg("-c")
        .arg(format!("zstd -dc '{}' | tar -t", packed.display()))
        .output()?;
    ensure!(listing.status.success(), "zstd -d | tar -t failed");
    let names = String::from_utf8_lossy(&listing.stdout);
    ensure!(
        names.lines().any(|l| l == "index.json"),
        "no index.json in {names}"
    );
    let manifest_blob = format!(
        "blobs/sha256/{}",
        built.manifest_digest.trim_start_matches("sha256:")
    );
    ensure!(
        names.lines().any(|l| l == manifest_blob),
        "manifest blob missing: {names}"
    );

    let daemon = Daemon::start()?;
    let containerd = PrivateContainerd::start(daemon.socket(), &ContainerdOptions::default())?;
    // containerd 1.6's import reads a plain tar (2.x also decompresses):
    // it gets the decompressed stream, as k3s does with a .tar.zst.
    let import = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "zstd -dc '{}' | '{}' --address '{}' -n default images import --snapshotter overlayfs -",
            packed.display(),
            airgap_integration::containerd::binary("ctr").display(),
            containerd.address().display()
        ))
        .output()?;
    ensure!(
        import.status.success(),
        "ctr import failed: {}",
        String::from_utf8_lossy(&import.stderr)
    );
    let images = containerd.ctr(&["-n", "default", "images", "ls"])?;
    let row = images
        .lines()
        .find(|l| l.starts_with("example.test/pack/check:v2"))
        .with_context(|| format!("ctr did not import the image: {images}"))?;
    ensure!(
        row.contains(&built.manifest_digest),
        "digest changed: {row}"
    );
    containerd.ctr(&[
        "-n",
        "default",
        "images",
        "rm",
        "--sync",
        "example.test/pack/check:v2",
    ])?;
    Ok(())
}

/// `pack --from https://registry` fills in what the archives lack: one image
/// from an archive, one from a real docker-registry, both in the output with
/// their registry digests.
#[test]
fn pack_takes_what_the_archives_lack_from_a_registry() -> Result<()> {
    if !can_run("pack_takes_what_the_archives_lack_from_a_registry") {
        return Ok(());
    }
    let _serial = serial()?;
    let work = TestDir::new("catalog-pack-registry")?;
    let src = work.path().join("src");
    std::fs::create_dir_all(&src)?;
    let archived = sample_archive("example.test/pack/archived:v1", &src.join("archived.tar"))?;
    let remote = sample_archive(
        "docker.io/library/remote:v3",
        &work.path().join("remote.tar"),
    )?;
    let registry = airgap_integration::Registry::start()?;
    registry.push_oci_archive(&remote.archive, "v3", "library/remote:v3")?;

    let packed = work.path().join("out.tar.zst");
    let bin = airgap_integration::daemon::binary()?;
    let pack = |refs: &[&str]| {
        Command::new(&bin)
            .arg("pack")
            .arg("-o")
            .arg(&packed)
            .arg("--from")
            .arg(&src)
            .arg("--from")
            .arg(format!("http://127.0.0.1:{}", registry.port()))
            .args(refs)
            .output()
    };
    let out = pack(&["example.test/pack/archived:v1", "remote:v3"])?;
    ensure!(
        out.status.success(),
        "pack failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let rows = images_json(&packed)?;
    let digest_of = |name: &str| {
        rows.as_array()
            .into_iter()
            .flatten()
            .find(|r| r["ref"] == name)
            .map(|r| r["digest"].as_str().unwrap_or_default().to_string())
    };
    ensure!(
        digest_of("example.test/pack/archived:v1").as_deref()
            == Some(archived.manifest_digest.as_str()),
        "archived image: {rows}"
    );
    ensure!(
        digest_of("docker.io/library/remote:v3").as_deref()
            == Some(remote.manifest_digest.as_str()),
        "registry image: {rows}"
    );
    let verify = Command::new(&bin).arg("verify").arg(&packed).output()?;
    ensure!(
        verify.status.success(),
        "verify: {}",
        String::from_utf8_lossy(&verify.stdout)
    );

    // A reference neither has is named, and nothing is written.
    std::fs::remove_file(&packed)?;
    let out = pack(&["remote:v3", "remote:nope"])?;
    ensure!(!out.status.success(), "pack of a missing ref succeeded");
    ensure!(String::from_utf8_lossy(&out.stderr).contains("remote:nope"));
    ensure!(!packed.exists(), "partial output left behind");

    // The daemon's [[upstream]] tables serve as well (here: docker.io only).
    let config = work.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[[upstream]]\nregistry = \"docker.io\"\nendpoint = \"http://127.0.0.1:{}\"\n",
            registry.port()
        ),
    )?;
    let out = Command::new(&bin)
        .arg("pack")
        .arg("-o")
        .arg(&packed)
        .arg("--config")
        .arg(&config)
        .arg("remote:v3")
        .output()?;
    ensure!(
        out.status.success(),
        "pack --config failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(packed.exists());
    Ok(())
}

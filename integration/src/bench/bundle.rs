//! The generated bundle the benchmark pulls from: a debootstrap minbase
//! with the Go toolchain, LLVM and Python as three images sharing their base
//! layer, plus a busybox image, as `ctr export | zstd` makes it (oci), as
//! docker-save `.tar.zst` (docker), packed seekable (packed, and the largest
//! image alone), and for --mounts the docker-save archive uncompressed
//! (docker-plain). Kept in `--cache DIR` between runs, rebuilt when what it
//! is made of (or the daemon's version) changes.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::system::{run, sh};

pub const BIG: &str = "docker.io/bench/debian-go:1";
pub const SMALL: &str = "docker.io/bench/busybox:1";
const GO_TREE: &str = "/=usr/lib/go-1.19,usr/share/go-1.19";
const LLVM_TREE: &str = "/=usr/lib/llvm-14";
const PY_TREE: &str = "/=usr/lib/python3";

/// The archive file of a kind of the bundle.
pub fn archive_of(bundle: &Path, kind: &str) -> PathBuf {
    match kind {
        "docker-plain" => bundle.join("docker-plain.tar"),
        _ => bundle.join(format!("{kind}.tar.zst")),
    }
}

/// The bundle's directory: --cache DIR, else `cache` in the run's `work`
/// directory; created, canonical.
pub fn in_cache_or(args: &super::args::Args, work: &Path) -> Result<PathBuf> {
    let dir = match &args.cache {
        Some(dir) => dir.clone(),
        None => work.join("cache"),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::canonicalize(&dir).with_context(|| format!("resolving {}", dir.display()))
}

/// Makes (or reuses) the bundle in `bundle`; `plain` adds docker-plain.tar.
pub fn ensure(repo: &Path, bin: &Path, bundle: &Path, plain: bool) -> Result<()> {
    for d in [
        "/usr/lib/go-1.19",
        "/usr/share/go-1.19",
        "/usr/lib/llvm-14",
        "/usr/lib/python3",
        "/bin/busybox",
    ] {
        if !Path::new(d).exists() {
            bail!("needs {d} (golang-1.19, llvm-14, python3, busybox-static: scripts/install-deps.sh)");
        }
    }
    let arch = run("dpkg", &["--print-architecture"])
        .or_else(|_| run("uname", &["-m"]))?
        .trim()
        .to_string();
    let script = repo.join("scripts/make-archive.py");
    let script_sum = run("sha256sum", &[path(&script)?])?;
    let version = run(path(bin)?, &["--version"])?;
    let spec = format!(
        "v3 {arch} minbase+{GO_TREE} minbase+{LLVM_TREE} minbase+{PY_TREE} busybox {} {}",
        script_sum.get(..16).unwrap_or_default(),
        version.trim()
    );
    let stamp = bundle.join("stamp");
    let plain_tar = bundle.join("docker-plain.tar");
    if std::fs::read_to_string(&stamp).is_ok_and(|s| s.trim_end() == spec) {
        say(&format!("reusing the bundle in {}", bundle.display()));
    } else {
        remove_if_there(&stamp)?;
        remove_if_there(&plain_tar)?;
        build(repo, bin, bundle, &script)?;
        std::fs::write(&stamp, format!("{spec}\n"))
            .with_context(|| format!("writing {}", stamp.display()))?;
    }
    if plain && !plain_tar.exists() {
        say("docker-plain.tar: the docker-save archive, uncompressed");
        sh(
            r#"zstd -dcq "$1" > "$2.tmp" && mv "$2.tmp" "$2""#,
            &[path(&bundle.join("docker.tar.zst"))?, path(&plain_tar)?],
        )?;
    }
    Ok(())
}

fn build(repo: &Path, bin: &Path, bundle: &Path, script: &Path) -> Result<()> {
    let minbase = bundle.join("minbase");
    if !minbase.is_dir() {
        say("debootstrap --variant=minbase bookworm (the base layer)");
        let tmp = bundle.join("minbase.tmp");
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).with_context(|| format!("removing {}", tmp.display()))?;
        }
        let log = bundle.join("debootstrap.log");
        sh(
            r#"debootstrap --variant=minbase bookworm "$1" > "$2" 2>&1 || { tail -20 "$2" >&2; exit 1; }"#,
            &[path(&tmp)?, path(&log)?],
        )?;
        std::fs::rename(&tmp, &minbase)
            .with_context(|| format!("renaming {} into place", tmp.display()))?;
    }
    let busybox = bundle.join("busybox/bin");
    std::fs::create_dir_all(&busybox).with_context(|| format!("creating {}", busybox.display()))?;
    std::fs::copy("/bin/busybox", busybox.join("busybox")).context("copying /bin/busybox")?;
    for applet in ["sh", "ls", "cat", "echo", "true"] {
        let link = busybox.join(applet);
        remove_if_there(&link)?;
        std::os::unix::fs::symlink("busybox", &link)
            .with_context(|| format!("linking {}", link.display()))?;
    }
    say(
        "building the bundle: OCI layout with gzip layers in .tar.zst, and docker-save in .tar.zst",
    );
    let b = |name: &str| bundle.join(name).to_string_lossy().into_owned();
    let minbase = b("minbase");
    crate::process::run(
        std::process::Command::new("python3")
            .current_dir(repo)
            .arg(script)
            .args([
                "--out",
                &b("oci.tar.zst"),
                "--wrap",
                "zstd",
                "--docker-save-out",
                &b("docker.tar.zst"),
            ])
            .args(["--name", BIG, "--layer", &minbase, "--layer-tree", GO_TREE])
            .args([
                "--name",
                "docker.io/bench/debian-llvm:1",
                "--layer",
                &minbase,
                "--layer-tree",
                LLVM_TREE,
            ])
            .args([
                "--name",
                "docker.io/bench/debian-python:1",
                "--layer",
                &minbase,
                "--layer-tree",
                PY_TREE,
            ])
            .args(["--name", SMALL, "--layer", &b("busybox")]),
        super::system::LONG,
    )?;
    say("airgap-snapshotter pack (seekable)");
    let bin = path(bin)?;
    let oci = b("oci.tar.zst");
    run(
        bin,
        &[
            "pack",
            "-o",
            &b("packed.tar.zst"),
            "--from",
            &oci,
            BIG,
            "docker.io/bench/debian-llvm:1",
            "docker.io/bench/debian-python:1",
            SMALL,
        ],
    )?;
    // The largest image alone: no other image shares its base layer, so the
    // daemon has nothing else to prefetch while it is pulled.
    run(
        bin,
        &["pack", "-o", &b("alone.tar.zst"), "--from", &oci, BIG],
    )?;
    sh(r#"zstd -dc "$1" > "$2""#, &[&oci, &b("oci.tar")])?; // for skopeo
    Ok(())
}

/// What the reports say about the images, from `airgap-snapshotter images --json`.
#[derive(Debug, Default)]
pub struct Facts {
    pub big_layers: Vec<String>,
    pub big_diff_ids: Vec<String>,
    pub small_layers: Vec<String>,
    /// Distinct layers (chain ids) of the whole bundle.
    pub bundle_layers: usize,
    /// Bytes of the largest image's (gzip) layers.
    pub big_gz: u64,
}

impl Facts {
    pub fn parse(json: &str) -> Result<Self> {
        let images: serde_json::Value =
            serde_json::from_str(json).context("parsing `images --json`")?;
        let images = images.as_array().context("`images --json` is not a list")?;
        let image = |r: &str| images.iter().find(|i| i["ref"] == r);
        let layers = |r: &str, field: &str| -> Result<Vec<String>> {
            let i = image(r).with_context(|| format!("{r} is not in the bundle"))?;
            let layers = i["manifests"][0]["layers"]
                .as_array()
                .with_context(|| format!("{r} has no layers"))?;
            layers
                .iter()
                .map(|l| {
                    l[field]
                        .as_str()
                        .map(str::to_string)
                        .with_context(|| format!("a layer of {r} has no {field}"))
                })
                .collect()
        };
        let mut chains: Vec<&str> = images
            .iter()
            .filter_map(|i| i["manifests"].as_array())
            .flatten()
            .filter_map(|m| m["layers"].as_array())
            .flatten()
            .filter_map(|l| l["chain_id"].as_str())
            .collect();
        chains.sort_unstable();
        chains.dedup();
        Ok(Self {
            big_layers: layers(BIG, "digest")?,
            big_diff_ids: layers(BIG, "diff_id")?,
            small_layers: layers(SMALL, "digest")?,
            bundle_layers: chains.len(),
            big_gz: image(BIG).and_then(|i| i["size"].as_u64()).unwrap_or(0),
        })
    }
}

/// A path as an argument.
pub fn path(p: &Path) -> Result<&str> {
    p.to_str()
        .with_context(|| format!("{} is not UTF-8", p.display()))
}

fn remove_if_there(p: &Path) -> Result<()> {
    match std::fs::remove_file(p) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", p.display()))
        }
        _ => Ok(()),
    }
}

/// Progress on stderr.
pub fn say(what: &str) {
    eprintln!("==> {what}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn facts_from_the_images_listing() {
        let json = r#"[
          {"ref": "docker.io/bench/debian-go:1", "size": 300, "manifests": [{"layers": [
            {"digest": "sha256:a", "diff_id": "sha256:da", "chain_id": "c1"},
            {"digest": "sha256:b", "diff_id": "sha256:db", "chain_id": "c2"}]}]},
          {"ref": "docker.io/bench/debian-llvm:1", "size": 9, "manifests": [{"layers": [
            {"digest": "sha256:a", "diff_id": "sha256:da", "chain_id": "c1"},
            {"digest": "sha256:l", "diff_id": "sha256:dl", "chain_id": "c3"}]}]},
          {"ref": "docker.io/bench/busybox:1", "size": 1, "manifests": [{"layers": [
            {"digest": "sha256:s", "diff_id": "sha256:ds", "chain_id": "c4"}]}]}
        ]"#;
        let f = Facts::parse(json).unwrap();
        assert_eq!(f.big_layers, ["sha256:a", "sha256:b"]);
        assert_eq!(f.big_diff_ids, ["sha256:da", "sha256:db"]);
        assert_eq!(f.small_layers, ["sha256:s"]);
        assert_eq!(f.bundle_layers, 4);
        assert_eq!(f.big_gz, 300);
        assert!(
            Facts::parse("[]").is_err(),
            "the largest image must be there"
        );
        assert!(Facts::parse("{").is_err());
    }
}

//! Compiles containerd's snapshots, content, images and leases APIs (`proto/`) with `protox`, so building
//! needs no system `protoc`, and records what `--version` prints: the target
//! triple and the git commit (`AIRGAP_BUILD_TARGET`, `AIRGAP_BUILD_COMMIT`).

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let manifest_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    // Without `..` in it: cargo stores a rerun-if-changed path under the
    // package relative to it and compares it with the printed one, and a
    // `plugin/../proto` path then never matches, rerunning every build.
    let proto_root = manifest_dir.join("../proto").canonicalize()?;
    let files = [
        "containerd/types/mount.proto",
        "containerd/types/descriptor.proto",
        "containerd/services/snapshots/v1/snapshots.proto",
        "containerd/services/content/v1/content.proto",
        "containerd/services/images/v1/images.proto",
        "containerd/services/leases/v1/leases.proto",
    ];
    for file in &files {
        println!("cargo:rerun-if-changed={}", proto_root.join(file).display());
    }
    let fds = protox::compile(files, [&proto_root])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;

    // CRI's ImageService, client only: the importer pulls what k3s-style
    // image lists name and no archive holds through containerd's CRI.
    let cri = "cri/api.proto";
    println!("cargo:rerun-if-changed={}", proto_root.join(cri).display());
    let fds = protox::compile([cri], [&proto_root])?;
    tonic_prost_build::configure()
        .build_server(false)
        .build_client(true)
        .compile_fds(fds)?;

    let target = std::env::var("TARGET")?;
    println!("cargo:rustc-env=AIRGAP_BUILD_TARGET={target}");
    println!("cargo:rerun-if-env-changed=AIRGAP_COMMIT");
    let commit = git_commit(&manifest_dir)
        .or_else(|| {
            std::env::var("AIRGAP_COMMIT")
                .ok()
                .map(|c| c.trim().to_string())
                .filter(|c| !c.is_empty())
        })
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=AIRGAP_BUILD_COMMIT={commit}");
    Ok(())
}

/// The short commit of `HEAD` when `git` and a repository are there. Asks
/// cargo to rerun this script only when `HEAD` moves: the `HEAD` file of
/// this work tree, the branch ref it points to and `packed-refs` (a missing
/// file would make cargo rerun the script on every build, so only existing
/// ones are named). Anything else (no git, no repository) is `None`.
fn git_commit(dir: &Path) -> Option<String> {
    let git = |args: &[&str]| -> Option<String> {
        let out = Command::new("git")
            .current_dir(dir)
            .args(args)
            .output()
            .ok()?;
        if !out.status.success() {
            return None;
        }
        let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
        (!s.is_empty()).then_some(s)
    };
    let commit = git(&["rev-parse", "--short", "HEAD"])?;
    // A linked work tree has its own HEAD; refs live in the common dir.
    let git_dir = dir.join(git(&["rev-parse", "--git-dir"])?);
    let common_dir = dir.join(git(&["rev-parse", "--git-common-dir"])?);
    let head = git_dir.join("HEAD");
    let mut watched = vec![head.clone(), common_dir.join("packed-refs")];
    if let Ok(contents) = std::fs::read_to_string(&head) {
        if let Some(branch) = contents.trim().strip_prefix("ref: ") {
            watched.push(common_dir.join(branch));
        }
    }
    for path in watched.iter().filter(|p| p.is_file()) {
        println!("cargo:rerun-if-changed={}", path.display());
    }
    Some(commit)
}

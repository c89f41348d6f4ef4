//! Image lists (k3s/rke2 `.txt`, `k0s airgap list-images` output, Kubekey
//! manifests, the project's own `[group]` lists) and where each reference
//! stands against the archives.

use std::path::PathBuf;

use super::{Check, ImageReport, ImageStatus};
use crate::catalog::reference::Reference;
use crate::catalog::ImageInfo;
use crate::pack::parse_image_list;

/// The references of an image list, whatever its format: a Kubekey
/// manifest (YAML with an `images:` list) or a text list (one reference a
/// line, `#` comments, optional `[group]` sections selected by `groups`).
pub fn read_list(text: &str, groups: &[String]) -> Vec<String> {
    let kubekey = text.lines().any(|l| l.trim() == "images:")
        && text
            .lines()
            .any(|l| l.starts_with("kind:") || l.starts_with("apiVersion:"));
    if kubekey {
        return kubekey_images(text);
    }
    parse_image_list(text, groups)
}

/// The entries of the `images:` list of a Kubekey manifest.
fn kubekey_images(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut indent: Option<usize> = None;
    for line in text.lines() {
        let trimmed = line.trim_start();
        let depth = line.len() - trimmed.len();
        match indent {
            None => {
                if trimmed.trim_end() == "images:" {
                    indent = Some(depth);
                }
            }
            Some(d) => {
                if trimmed.is_empty() || trimmed.starts_with('#') {
                    continue;
                }
                if let Some(item) = trimmed.strip_prefix("- ") {
                    if depth >= d {
                        let item = item.split(" #").next().unwrap_or("").trim();
                        let item = item.trim_matches(|c| c == '"' || c == '\'');
                        if !item.is_empty() {
                            out.push(item.to_string());
                        }
                        continue;
                    }
                }
                if depth <= d {
                    indent = None;
                    if trimmed.trim_end() == "images:" {
                        indent = Some(depth);
                    }
                }
            }
        }
    }
    out
}

/// Where each reference stands: `images` is what the catalog holds
/// (`Catalog::images`), `platform` this node's.
pub fn classify(refs: &[String], images: &[ImageInfo], platform: &str) -> Vec<ImageReport> {
    refs.iter()
        .map(|r| {
            let found = Reference::parse(r).ok().and_then(|parsed| {
                images.iter().find(|i| match (&parsed.digest, &parsed.tag) {
                    (Some(d), _) => i.entry.digest == *d || i.entry.manifests.contains(d),
                    (None, Some(tag)) => i.entry.name == format!("{}:{tag}", parsed.repository()),
                    (None, None) => false,
                })
            });
            match found {
                None => ImageReport {
                    reference: r.clone(),
                    status: ImageStatus::Missing,
                    archive: None,
                    digest: None,
                    platforms: Vec::new(),
                },
                Some(i) => ImageReport {
                    reference: r.clone(),
                    status: if i
                        .entry
                        .platforms
                        .iter()
                        .any(|p| crate::setup::platform_matches(p, platform))
                    {
                        ImageStatus::Present
                    } else {
                        ImageStatus::WrongPlatform
                    },
                    archive: Some(i.archive.display().to_string()),
                    digest: Some(i.entry.digest.to_string()),
                    platforms: i.entry.platforms.clone(),
                },
            }
        })
        .collect()
}

/// The archives check: broken archives named with their reason (fail),
/// partly unusable ones (warn), else how many there are.
pub fn archives_check(
    broken: &[(PathBuf, String)],
    problems: &[(PathBuf, String)],
    archives: usize,
    images: usize,
) -> Vec<Check> {
    let mut out = Vec::new();
    for (path, reason) in broken {
        out.push(Check::fail(
            format!("archive {}", path.display()),
            format!("unusable: {reason}"),
            format!(
                "replace or remove {} (`airgap-snapshotter verify {}` checks a copy)",
                path.display(),
                path.display()
            ),
        ));
    }
    for (path, problem) in problems {
        out.push(Check::warn(
            format!("archive {}", path.display()),
            problem.clone(),
            format!(
                "`airgap-snapshotter verify {}`, then repack it",
                path.display()
            ),
        ));
    }
    if out.is_empty() {
        out.push(Check::ok(
            "archives",
            format!("{archives} archive(s), {images} image name(s), none broken"),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::index::ImageEntry;
    use crate::digest::Digest;

    fn image(name: &str, platforms: &[&str], seed: &[u8]) -> ImageInfo {
        ImageInfo {
            entry: ImageEntry {
                name: name.into(),
                digest: Digest::of(seed),
                media_type: "application/vnd.oci.image.index.v1+json".into(),
                size: 1,
                platforms: platforms.iter().map(|p| p.to_string()).collect(),
                manifests: vec![Digest::of(&[seed, b"m"].concat())],
                synthesized: false,
            },
            archive: PathBuf::from(format!("/archives/{}.tar", seed[0])),
        }
    }

    #[test]
    fn present_wrong_platform_missing() {
        let images = vec![
            image(
                "docker.io/library/busybox:1.36",
                &["linux/amd64", "linux/arm64/v8"],
                b"a",
            ),
            image("registry.k8s.io/pause:3.10", &["linux/arm64"], b"b"),
        ];
        let pinned = format!("quay.io/x/y@{}", Digest::of(b"a"));
        let refs = vec![
            "busybox:1.36".to_string(),
            "registry.k8s.io/pause:3.10".to_string(),
            "ghcr.io/nope/nope:1".to_string(),
            pinned,
            "Not A Ref".to_string(),
        ];
        let r = classify(&refs, &images, "linux/amd64");
        let st: Vec<ImageStatus> = r.iter().map(|i| i.status).collect();
        assert_eq!(
            st,
            [
                ImageStatus::Present,
                ImageStatus::WrongPlatform,
                ImageStatus::Missing,
                ImageStatus::Present,
                ImageStatus::Missing
            ]
        );
        assert_eq!(r[1].platforms, ["linux/arm64"]);
        assert_eq!(r[0].archive.as_deref(), Some("/archives/97.tar"));
        assert_eq!(
            classify(&refs[..1], &images, "linux/arm64")[0].status,
            ImageStatus::Present
        );
    }

    #[test]
    fn list_formats() {
        // k3s / rke2 / k0s: one reference a line.
        let k3s = "docker.io/rancher/mirrored-pause:3.6\ndocker.io/rancher/klipper-helm:v0.8.2-build20230815\n";
        assert_eq!(read_list(k3s, &[]).len(), 2);
        // `k0s airgap list-images` output (k0s 1.30): one reference a line.
        let k0s = "quay.io/k0sproject/apiserver-network-proxy-agent:v0.1.4\nquay.io/k0sproject/cni-node:1.3.0-k0s.0\nquay.io/k0sproject/coredns:1.11.3\nquay.io/k0sproject/kube-proxy:v1.30.4\nregistry.k8s.io/pause:3.9\n";
        assert_eq!(
            read_list(k0s, &[]),
            k0s.lines().collect::<Vec<_>>(),
            "k0s list-images"
        );
        // A `kk create manifest` file: nested lists and maps before and
        // after `images:` (operatingSystems, components) are not images.
        let kk_full = "apiVersion: kubekey.kubesphere.io/v1alpha2\nkind: Manifest\nmetadata:\n  name: sample\nspec:\n  arches:\n  - amd64\n  operatingSystems:\n  - arch: amd64\n    type: linux\n    id: ubuntu\n    version: \"20.04\"\n    repository:\n      iso:\n        localPath:\n        url:\n  kubernetesDistributions:\n  - type: kubernetes\n    version: v1.23.15\n  components:\n    helm:\n      version: v3.9.0\n    docker-registry:\n      version: \"2\"\n  images:\n  - docker.io/kubesphere/kube-apiserver:v1.23.15\n  - docker.io/kubesphere/pause:3.6\n  registry:\n    auths: {}\n";
        assert_eq!(
            read_list(kk_full, &[]),
            [
                "docker.io/kubesphere/kube-apiserver:v1.23.15",
                "docker.io/kubesphere/pause:3.6"
            ]
        );
        // The project's own lists with groups.
        let own = "# base\nbusybox:1\n[core]\npause:3\n[extra]\nnginx:1\n";
        assert_eq!(read_list(own, &["core".into()]), ["busybox:1", "pause:3"]);
        // A Kubekey manifest.
        let kk = "apiVersion: kubekey.kubesphere.io/v1alpha2\nkind: Manifest\nmetadata:\n  name: sample\nspec:\n  arches:\n  - amd64\n  images:\n  - docker.io/calico/cni:v3.23.2\n  - \"registry.k8s.io/pause:3.7\"  # sandbox\n  registry:\n    auths: {}\n";
        assert_eq!(
            read_list(kk, &[]),
            ["docker.io/calico/cni:v3.23.2", "registry.k8s.io/pause:3.7"]
        );
    }

    #[test]
    fn broken_archives_named() {
        let c = archives_check(
            &[(PathBuf::from("/a/bad.tar"), "not a tar".into())],
            &[],
            2,
            1,
        );
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].status, crate::doctor::Status::Fail);
        assert!(c[0].name.contains("/a/bad.tar") && c[0].detail.contains("not a tar"));
        assert!(c[0].fix.as_deref().unwrap().contains("verify"));
        assert_eq!(
            archives_check(&[], &[], 2, 1)[0].status,
            crate::doctor::Status::Ok
        );
    }
}

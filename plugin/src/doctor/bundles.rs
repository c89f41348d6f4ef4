//! Delta bundles on the node: a delta whose base is gone (fail: its images
//! cannot be pulled from the archives), and images some of whose blobs are
//! in no archive (warn: they come from the upstream, if one has them).

use std::path::PathBuf;

use super::Check;
use crate::catalog::bundle::AbsentBase;

/// The checks for `absent` bases (`Catalog::absent_bases`) and `incomplete`
/// images (name, archive, reason) that no absent base explains.
pub fn check(absent: &[AbsentBase], incomplete: &[(String, PathBuf, String)]) -> Vec<Check> {
    let mut out = Vec::new();
    for a in absent {
        let images = if a.incomplete.is_empty() {
            "no image of it is incomplete (another archive holds the blobs)".to_string()
        } else {
            format!("incomplete: {}", a.incomplete.join(", "))
        };
        out.push(Check::fail(
            format!("delta {}", a.archive.display()),
            format!(
                "extends {}, which is not on this node (deleted, or never copied): {images}",
                a.base
            ),
            format!(
                "copy {} (bundle {}) back into the archives directory, or replace {} with a full bundle (`pack` without --base)",
                a.base.name,
                a.base.id,
                a.archive.display()
            ),
        ));
    }
    let explained = |name: &str| {
        absent
            .iter()
            .any(|a| a.incomplete.iter().any(|i| i == name))
    };
    for (name, archive, reason) in incomplete.iter().filter(|(n, _, _)| !explained(n)) {
        out.push(Check::warn(
            format!("image {name}"),
            format!("{reason} ({})", archive.display()),
            "repack the image (`airgap-snapshotter verify` names the blobs), or let the upstream serve them",
        ));
    }
    if out.is_empty() {
        out.push(Check::ok(
            "bundles",
            "every image has all its blobs in the archives",
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::BundleRef;
    use crate::digest::Digest;
    use crate::doctor::Status;

    #[test]
    fn an_absent_base_fails_naming_it_and_its_images() {
        let base = BundleRef {
            id: Digest::of(b"base"),
            name: "release-1.tar.zst".into(),
        };
        let absent = vec![AbsentBase {
            archive: "/a/release-2.tar.zst".into(),
            base: base.clone(),
            incomplete: vec!["docker.io/library/app:2".into()],
        }];
        let incomplete = vec![
            (
                "docker.io/library/app:2".to_string(),
                PathBuf::from("/a/release-2.tar.zst"),
                "incomplete: ...".to_string(),
            ),
            (
                "docker.io/library/other:1".to_string(),
                PathBuf::from("/a/x.tar"),
                "incomplete: 1 blob(s)".to_string(),
            ),
        ];
        let c = check(&absent, &incomplete);
        assert_eq!(c.len(), 2, "{c:?}");
        assert_eq!(c[0].status, Status::Fail);
        assert!(
            c[0].detail.contains(&base.id.to_string()),
            "{}",
            c[0].detail
        );
        assert!(c[0].detail.contains("release-1.tar.zst"));
        assert!(c[0].detail.contains("docker.io/library/app:2"));
        assert!(c[0].fix.as_deref().unwrap().contains("release-1.tar.zst"));
        assert_eq!(c[1].status, Status::Warn);
        assert!(c[1].name.contains("other:1"));
        assert_eq!(check(&[], &[])[0].status, Status::Ok);
    }
}

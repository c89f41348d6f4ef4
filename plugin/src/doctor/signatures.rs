//! Signed bundles (`[verify]`): which archived images lack a valid
//! signature from the configured keys, and what the daemon does with them.

use super::Check;
use crate::catalog::ImageInfo;
use crate::config::Require;
use crate::trust::Verdict;

/// One check per archived image without a valid signature (its archive and
/// the reason), or one that says all are signed. Nothing when no key is
/// configured. Under `enforce` such an image is refused: a failure; under
/// `warn` or `off`, a warning.
pub fn signatures_check(require: Require, survey: &[(ImageInfo, Verdict)]) -> Vec<Check> {
    let mut out = Vec::new();
    let effect = match require {
        Require::Enforce => "refused: not served, registered nor mounted",
        Require::Warn => "used, with a warning ([verify] require = \"warn\")",
        Require::Off => "used ([verify] require = \"off\")",
    };
    for (image, verdict) in survey {
        if matches!(verdict, Verdict::Valid { .. }) {
            continue;
        }
        let name = format!("signature {}", image.entry.name);
        let detail = format!(
            "{verdict} (archive {}, digest {}); {effect}",
            image.archive.display(),
            image.entry.digest
        );
        let fix = "pack the image again with `pack --sign KEY` using a key whose public half is in [verify] keys";
        out.push(match require {
            Require::Enforce => Check::fail(name, detail, fix),
            _ => Check::warn(name, detail, fix),
        });
    }
    if out.is_empty() && !survey.is_empty() {
        out.push(Check::ok(
            "signatures",
            format!(
                "all {} archived image(s) signed with a [verify] key",
                survey.len()
            ),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::index::ImageEntry;
    use crate::digest::Digest;
    use crate::doctor::Status;
    use crate::trust::Invalid;

    fn image(name: &str) -> ImageInfo {
        ImageInfo {
            entry: ImageEntry {
                name: name.into(),
                digest: Digest::of(name.as_bytes()),
                media_type: String::new(),
                size: 0,
                platforms: Vec::new(),
                manifests: Vec::new(),
                synthesized: false,
            },
            archive: "/archives/bundle.tar.zst".into(),
        }
    }

    #[test]
    fn unsigned_and_bad_images_are_named_with_archive_and_reason() {
        let survey = vec![
            (
                image("a:1"),
                Verdict::Valid {
                    key: "/k.pub".into(),
                },
            ),
            (image("b:1"), Verdict::Unsigned),
            (image("c:1"), Verdict::Invalid(Invalid::NoKey)),
        ];
        let checks = signatures_check(Require::Enforce, &survey);
        assert_eq!(checks.len(), 2);
        assert!(checks.iter().all(|c| c.status == Status::Fail));
        assert!(checks[0].name.contains("b:1") && checks[0].detail.contains("unsigned"));
        assert!(checks[1].detail.contains("bad signature"));
        assert!(checks[1].detail.contains("/archives/bundle.tar.zst"));
        let checks = signatures_check(Require::Warn, &survey);
        assert!(checks.iter().all(|c| c.status == Status::Warn));
        let checks = signatures_check(Require::Enforce, &survey[..1]);
        assert_eq!(checks.len(), 1);
        assert_eq!(checks[0].status, Status::Ok);
        assert!(signatures_check(Require::Off, &[]).is_empty());
    }
}

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

//! Archives the daemon found rewritten in place (recorded by
//! [`crate::layer::rewrites`] in `<root>/archive-rewrites.json`).

use super::Check;
use crate::config::LayerBackingMode;
use crate::layer::rewrites::{RewritesError, Status, STATUS};

const NAME: &str = "archive rewrites";

/// Ok when no archive was rewritten in place; else a warning (private
/// copies: containers unaffected), or a failure when mounted layers read
/// an archive that was rewritten (they read other bytes).
pub fn check(status: Result<Status, RewritesError>, backing: LayerBackingMode) -> Check {
    let status = match status {
        Ok(s) => s,
        Err(e) => {
            return Check::warn(
                NAME,
                format!("cannot read the daemon's record of rewrites: {e}"),
                format!("remove the file (the daemon writes it again: <root>/{STATUS})"),
            )
        }
    };
    if status.rewrites.is_empty() {
        return Check::ok(NAME, "no archive was rewritten in place");
    }
    let mounted: Vec<&String> = status
        .rewrites
        .iter()
        .flat_map(|r| &r.mounted_layers)
        .collect();
    let mut archives: Vec<String> = status
        .rewrites
        .iter()
        .map(|r| r.archive.display().to_string())
        .collect();
    archives.sort();
    archives.dedup();
    let rename = "replace archives by rename, never in place: \
                  `cp new.tar DIR/.NAME.tmp && mv DIR/.NAME.tmp DIR/NAME.tar`";
    let done = format!("once handled, delete <root>/{STATUS}");
    if mounted.is_empty() {
        Check::warn(
            NAME,
            format!(
                "rewritten in place (same file, new contents): {}; no mounted layer read them \
                 (layer_backing = {:?})",
                archives.join(", "),
                backing
            ),
            format!("{rename}; {done}"),
        )
    } else {
        Check::fail(
            NAME,
            format!(
                "rewritten in place: {}; these mounted layers read the archive itself and \
                 now see other bytes: {}",
                archives.join(", "),
                mounted
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            format!(
                "restart the containers using those layers (after removing their images), \
                 {rename}, or set layer_backing = \"private\"; {done}"
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::Status as CheckStatus;
    use crate::layer::rewrites::Rewrite;

    fn rewrite(mounted: &[&str]) -> Rewrite {
        Rewrite {
            archive: "/a/k3s.tar".into(),
            at: 1,
            size_before: 10,
            size_after: 20,
            mounted_layers: mounted.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn rewrites_warn_and_mounted_readers_fail() {
        let none = check(Ok(Status::default()), LayerBackingMode::Private);
        assert_eq!(none.status, CheckStatus::Ok);
        let private = check(
            Ok(Status {
                rewrites: vec![rewrite(&[])],
            }),
            LayerBackingMode::Private,
        );
        assert_eq!(private.status, CheckStatus::Warn);
        assert!(private.detail.contains("/a/k3s.tar"), "{}", private.detail);
        assert!(private.fix.unwrap().contains("mv "));
        let mounted = check(
            Ok(Status {
                rewrites: vec![rewrite(&["snapshot 3: layer sha256:ab"])],
            }),
            LayerBackingMode::Archive,
        );
        assert_eq!(mounted.status, CheckStatus::Fail);
        assert!(mounted.detail.contains("snapshot 3"), "{}", mounted.detail);
    }
}

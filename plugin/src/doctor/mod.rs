//! `doctor`: is this node wired right, and which images of a list does it
//! have? Each check is a [`Check`] (ok / warn / fail, what was found, the
//! exact fix); each listed image an [`ImageReport`]. The checks are plain
//! functions over what they look at (a config text, a hosts directory, a
//! list of images, the output of `ctr`), so each mistake has its unit test;
//! the `doctor` command gathers the inputs and prints.

pub mod bundles;
pub mod config_file;
pub mod hosts;
pub mod images;
pub mod probe;
pub mod rewrites;
pub mod signatures;
pub mod upstream;

use std::path::PathBuf;

use serde::Serialize;

/// What a probe or a parser could not do; shown as the detail of the
/// check that needed it.
#[derive(Debug, thiserror::Error)]
pub enum DoctorError {
    #[error("running {}: {source}", path.display())]
    RunCtr {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// `ctr` ran and failed: its standard error, trimmed.
    #[error("{0}")]
    CtrFailed(String),
    #[error(transparent)]
    Toml(#[from] toml_edit::TomlError),
}

/// How a check came out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Warn,
    Fail,
}

/// One check: its name, status, what was found and, unless ok, the fix.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Check {
    pub name: String,
    pub status: Status,
    pub detail: String,
    pub fix: Option<String>,
}

impl Check {
    fn new(
        name: impl Into<String>,
        status: Status,
        detail: impl Into<String>,
        fix: Option<String>,
    ) -> Self {
        Check {
            name: name.into(),
            status,
            detail: detail.into(),
            fix,
        }
    }

    pub fn ok(name: impl Into<String>, detail: impl Into<String>) -> Self {
        Check::new(name, Status::Ok, detail, None)
    }

    pub fn warn(
        name: impl Into<String>,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Check::new(name, Status::Warn, detail, Some(fix.into()))
    }

    pub fn fail(
        name: impl Into<String>,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Check::new(name, Status::Fail, detail, Some(fix.into()))
    }
}

/// Where a listed image stands on this node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ImageStatus {
    /// Archived, for this node's platform.
    Present,
    /// Archived, but not for this node's platform.
    WrongPlatform,
    /// Not archived; the upstream registry has it.
    Upstream,
    /// Neither.
    Missing,
    /// Archived, but some of its blobs are in no archive (a delta whose
    /// base is not on the node).
    Incomplete,
}

/// One reference of an image list.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ImageReport {
    #[serde(rename = "ref")]
    pub reference: String,
    pub status: ImageStatus,
    pub archive: Option<String>,
    pub digest: Option<String>,
    /// The platforms the archive holds for it.
    pub platforms: Vec<String>,
}

/// Everything `doctor` found: the `--json` output.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    pub checks: Vec<Check>,
    pub images: Vec<ImageReport>,
}

impl Report {
    /// True when the node is not ready: a check failed (or warned, with
    /// `strict`), or a listed image is missing or for another platform.
    pub fn failed(&self, strict: bool) -> bool {
        self.checks
            .iter()
            .any(|c| c.status == Status::Fail || (strict && c.status == Status::Warn))
            || self.images.iter().any(|i| {
                matches!(
                    i.status,
                    ImageStatus::Missing | ImageStatus::WrongPlatform | ImageStatus::Incomplete
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_shape_and_exit_rule() {
        let mut r = Report {
            checks: vec![Check::ok("a", "fine"), Check::warn("b", "hm", "do x")],
            images: vec![ImageReport {
                reference: "docker.io/library/x:1".into(),
                status: ImageStatus::WrongPlatform,
                archive: Some("/a.tar".into()),
                digest: Some("sha256:00".into()),
                platforms: vec!["linux/arm64".into()],
            }],
        };
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["checks"][0]["status"], "ok");
        assert_eq!(v["checks"][0]["fix"], serde_json::Value::Null);
        assert_eq!(v["checks"][1]["fix"], "do x");
        assert_eq!(v["images"][0]["ref"], "docker.io/library/x:1");
        assert_eq!(v["images"][0]["status"], "wrong-platform");
        assert_eq!(v["images"][0]["platforms"][0], "linux/arm64");
        assert!(r.failed(false));
        r.images[0].status = ImageStatus::Present;
        assert!(!r.failed(false));
        assert!(r.failed(true));
        r.images[0].status = ImageStatus::Upstream;
        assert!(!r.failed(false));
    }
}

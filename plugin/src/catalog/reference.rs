//! Image reference normalization, as containerd (and docker) do it:
//! `busybox:1.36` -> `docker.io/library/busybox:1.36`, `nginx` ->
//! `docker.io/library/nginx:latest`.
//!
//! Hand-written because the few Rust reference parsers either pull in a
//! registry client or do not apply the docker.io defaults containerd applies;
//! the grammar is the distribution reference grammar, narrowed to what an
//! image name in an archive can be.

use std::fmt;

use crate::digest::Digest;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid image reference {value:?}: {kind}")]
pub struct ReferenceError {
    /// The reference (its first 200 characters).
    pub value: String,
    pub kind: ReferenceErrorKind,
}

/// Which part of a reference is wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReferenceErrorKind {
    Empty,
    TooLong,
    Digest,
    Tag,
    Domain,
    Path,
}

impl fmt::Display for ReferenceErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ReferenceErrorKind::Empty => "empty",
            ReferenceErrorKind::TooLong => "longer than 1024 bytes",
            ReferenceErrorKind::Digest => "digest is not sha256:<64 hex>",
            ReferenceErrorKind::Tag => "tag must be [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}",
            ReferenceErrorKind::Domain => "bad registry host",
            ReferenceErrorKind::Path => {
                "repository path must be lowercase [a-z0-9] separated by . _ __ - or /"
            }
        })
    }
}

/// A normalized reference: `domain/path[:tag][@digest]`, with at least a tag
/// or a digest.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Reference {
    pub domain: String,
    pub path: String,
    pub tag: Option<String>,
    pub digest: Option<Digest>,
}

const DEFAULT_DOMAIN: &str = "docker.io";
const MAX_LEN: usize = 1024;

impl Reference {
    /// Parses and normalizes `s`.
    pub fn parse(s: &str) -> Result<Reference, ReferenceError> {
        use ReferenceErrorKind as Kind;
        let err = |kind| ReferenceError {
            value: s.chars().take(200).collect(),
            kind,
        };
        if s.is_empty() {
            return Err(err(Kind::Empty));
        }
        if s.len() > MAX_LEN {
            return Err(err(Kind::TooLong));
        }
        let (rest, digest) = match s.split_once('@') {
            Some((r, d)) => (r, Some(d.parse::<Digest>().map_err(|_| err(Kind::Digest))?)),
            None => (s, None),
        };
        // A tag follows the last ':' that comes after the last '/'.
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => {
                let (n, t) = rest.split_at(last_slash + i);
                (n, Some(t[1..].to_string()))
            }
            None => (rest, None),
        };
        if let Some(tag) = &tag {
            if !valid_tag(tag) {
                return Err(err(Kind::Tag));
            }
        }
        let (domain, path) = match name.split_once('/') {
            Some((first, remainder))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_string(), remainder.to_string())
            }
            _ => (DEFAULT_DOMAIN.to_string(), name.to_string()),
        };
        if !valid_domain(&domain) {
            return Err(err(Kind::Domain));
        }
        let path = if domain == DEFAULT_DOMAIN && !path.contains('/') {
            format!("library/{path}")
        } else {
            path
        };
        if path.is_empty() || !path.split('/').all(valid_path_component) {
            return Err(err(Kind::Path));
        }
        let tag = if tag.is_none() && digest.is_none() {
            Some("latest".to_string())
        } else {
            tag
        };
        Ok(Reference {
            domain,
            path,
            tag,
            digest,
        })
    }

    /// `domain/path`, without tag or digest.
    pub fn repository(&self) -> String {
        format!("{}/{}", self.domain, self.path)
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.domain, self.path)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

/// `host[:port]`, each dot-separated label non-empty alphanumerics and `-`.
fn valid_domain(domain: &str) -> bool {
    let (host, port) = match domain.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (domain, None),
    };
    let host_ok = host
        .split('.')
        .all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
    let port_ok =
        port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()));
    host_ok && port_ok
}

fn valid_tag(tag: &str) -> bool {
    let b = tag.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || b"_.-".contains(c))
}

fn valid_path_component(c: &str) -> bool {
    let b = c.as_bytes();
    !b.is_empty()
        && b[0].is_ascii_lowercase() | b[0].is_ascii_digit()
        && b[b.len() - 1].is_ascii_lowercase() | b[b.len() - 1].is_ascii_digit()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"._-".contains(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(s: &str) -> String {
        Reference::parse(s).unwrap().to_string()
    }

    #[test]
    fn normalizes_like_containerd() {
        assert_eq!(norm("busybox:1.36"), "docker.io/library/busybox:1.36");
        assert_eq!(norm("busybox"), "docker.io/library/busybox:latest");
        assert_eq!(norm("rancher/pause:3.6"), "docker.io/rancher/pause:3.6");
        assert_eq!(norm("docker.io/nginx"), "docker.io/library/nginx:latest");
        assert_eq!(
            norm("registry.k8s.io/pause:3.9"),
            "registry.k8s.io/pause:3.9"
        );
        assert_eq!(norm("localhost:5000/a/b:c"), "localhost:5000/a/b:c");
        assert_eq!(norm("localhost/app"), "localhost/app:latest");
        let d = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        assert_eq!(
            norm(&format!("quay.io/x/y@{d}")),
            format!("quay.io/x/y@{d}")
        );
        assert_eq!(
            norm(&format!("y:1@{d}")),
            format!("docker.io/library/y:1@{d}")
        );
    }

    #[test]
    fn rejects_garbage() {
        for bad in [
            "",
            "UPPER/case",
            "a//b",
            "a:",
            "a:-x",
            "a@sha256:12",
            "a b",
            "../x",
            ":tag",
        ] {
            assert!(Reference::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn errors_say_which_part_is_wrong() {
        use ReferenceErrorKind as Kind;
        let kind = |s: &str| Reference::parse(s).unwrap_err().kind;
        assert_eq!(kind(""), Kind::Empty);
        assert_eq!(kind(&"a".repeat(1025)), Kind::TooLong);
        assert_eq!(kind("a@sha256:12"), Kind::Digest);
        assert_eq!(kind("a:-x"), Kind::Tag);
        assert_eq!(kind("bad_host.io/a"), Kind::Domain);
        assert_eq!(kind("tag/UPPER"), Kind::Path);
        let e = Reference::parse("a:-x").unwrap_err();
        assert_eq!(
            e.to_string(),
            r#"invalid image reference "a:-x": tag must be [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"#
        );
    }

    #[test]
    fn the_digest_is_typed() {
        let d = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let r = Reference::parse(&format!("quay.io/x/y@{d}")).unwrap();
        assert_eq!(r.digest, Some(d.parse::<Digest>().unwrap()));
    }
}

//! What a request asks for: the distribution API path
//! (`/v2/<name>/manifests/<tag|digest>`, `/v2/<name>/blobs/<digest>`) and
//! containerd's `?ns=<registry>`, turned into a normalized [`Reference`].
//!
//! With `ns`, the image is `<ns>/<name>` (what containerd sends to a mirror
//! in `hosts.toml`). Without it, `<name>` is read as a whole image reference
//! and normalized as containerd does: `/v2/library/busybox/...` is
//! `docker.io/library/busybox`, `/v2/quay.io/x/y/...` is `quay.io/x/y`.

use crate::catalog::reference::{Reference, ReferenceError, ReferenceErrorKind};
use crate::digest::Digest;

use super::error::MirrorError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `/v2/`: the API version check.
    Base,
    /// A manifest; the reference has a tag or a digest.
    Manifest(Reference),
    /// A blob of the repository the reference names.
    Blob(Reference, Digest),
}

/// Parses the path and query of a request.
pub fn parse(path: &str, query: Option<&str>) -> Result<Route, MirrorError> {
    if path == "/v2" || path == "/v2/" {
        return Ok(Route::Base);
    }
    let rest = path
        .strip_prefix("/v2/")
        .ok_or_else(|| MirrorError::NameUnknown(format!("{path} is not a registry API path")))?;
    let ns = query.and_then(namespace).transpose()?;
    let split = |sep: &str| {
        rest.rsplit_once(sep)
            .filter(|(name, last)| !name.is_empty() && !last.is_empty() && !last.contains('/'))
    };
    if let Some((name, reference)) = split("/manifests/") {
        let by = if reference.contains(':') {
            let digest: Digest = reference
                .parse()
                .map_err(|e| MirrorError::DigestInvalid(format!("{e}")))?;
            format!("@{digest}")
        } else {
            format!(":{reference}")
        };
        let r = reference_of(ns.as_deref(), name, &by).map_err(|e| match e.kind {
            ReferenceErrorKind::Tag => {
                MirrorError::ManifestUnknown(format!("invalid tag {reference:?}"))
            }
            _ => MirrorError::NameInvalid(e.to_string()),
        })?;
        return Ok(Route::Manifest(r));
    }
    if let Some((name, digest)) = split("/blobs/") {
        let digest: Digest = digest
            .parse()
            .map_err(|e| MirrorError::DigestInvalid(format!("{e}")))?;
        let r = reference_of(ns.as_deref(), name, &format!("@{digest}"))
            .map_err(|e| MirrorError::NameInvalid(e.to_string()))?;
        return Ok(Route::Blob(r, digest));
    }
    Err(MirrorError::NameUnknown(format!(
        "{path} is neither a manifest nor a blob path"
    )))
}

/// `<ns>/<name><by>` (or `<name><by>`) as a normalized reference. With `ns`
/// the registry is `ns` even when it is a single-label host name.
fn reference_of(ns: Option<&str>, name: &str, by: &str) -> Result<Reference, ReferenceError> {
    let full = match ns {
        Some(ns) => format!("{ns}/{name}{by}"),
        None => format!("{name}{by}"),
    };
    let mut r = Reference::parse(&full)?;
    if let Some(ns) = ns {
        if r.domain != ns {
            r.domain = ns.to_string();
            r.path = name.to_string();
        }
    }
    Ok(r)
}

/// The `ns` query parameter, percent-decoded and checked to be a host name
/// with an optional port.
fn namespace(query: &str) -> Option<Result<String, MirrorError>> {
    let raw = query.split('&').find_map(|kv| kv.strip_prefix("ns="))?;
    let value = match percent_decode(raw) {
        Some(v) => v,
        None => return Some(Err(MirrorError::NameInvalid(format!("bad ns {raw:?}")))),
    };
    let ok = !value.is_empty()
        && value.len() <= 255
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-:".contains(&b))
        && !value.starts_with(['.', '-', ':']);
    Some(if ok {
        Ok(value.to_ascii_lowercase())
    } else {
        Err(MirrorError::NameInvalid(format!("bad ns {value:?}")))
    })
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = s.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn manifest(path: &str, query: Option<&str>) -> String {
        match parse(path, query).unwrap() {
            Route::Manifest(r) => r.to_string(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn names_with_and_without_ns() {
        assert_eq!(parse("/v2/", None).unwrap(), Route::Base);
        assert_eq!(parse("/v2", None).unwrap(), Route::Base);
        assert_eq!(
            manifest("/v2/library/busybox/manifests/1.36", Some("ns=docker.io")),
            "docker.io/library/busybox:1.36"
        );
        assert_eq!(
            manifest("/v2/pause/manifests/3.9", Some("ns=registry.k8s.io")),
            "registry.k8s.io/pause:3.9"
        );
        assert_eq!(
            manifest("/v2/x/y/manifests/t", Some("ns=localhost%3A5000")),
            "localhost:5000/x/y:t"
        );
        // Single-label registry names stay the registry.
        assert_eq!(
            manifest("/v2/a/b/manifests/t", Some("ns=myregistry")),
            "myregistry/a/b:t"
        );
        // Without ns: the name is a whole reference.
        assert_eq!(
            manifest("/v2/library/busybox/manifests/1.36", None),
            "docker.io/library/busybox:1.36"
        );
        assert_eq!(
            manifest("/v2/busybox/manifests/1.36", None),
            "docker.io/library/busybox:1.36"
        );
        assert_eq!(
            manifest("/v2/quay.io/x/y/manifests/t", Some("other=1")),
            "quay.io/x/y:t"
        );
        assert_eq!(
            manifest(
                &format!("/v2/a/blobs/b/manifests/{D}"),
                Some("ns=docker.io")
            ),
            format!("docker.io/a/blobs/b@{D}")
        );
        match parse(&format!("/v2/library/x/blobs/{D}"), Some("ns=docker.io")).unwrap() {
            Route::Blob(r, d) => {
                assert_eq!(r.repository(), "docker.io/library/x");
                assert_eq!(d.to_string(), D);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_requests() {
        let code = |p: &str, q: Option<&str>| match parse(p, q).unwrap_err() {
            MirrorError::DigestInvalid(_) => "DIGEST_INVALID",
            MirrorError::NameInvalid(_) => "NAME_INVALID",
            MirrorError::NameUnknown(_) => "NAME_UNKNOWN",
            MirrorError::ManifestUnknown(_) => "MANIFEST_UNKNOWN",
            other => panic!("{other:?}"),
        };
        assert_eq!(code("/v2/x/blobs/sha256:abc", None), "DIGEST_INVALID");
        assert_eq!(code("/v2/x/blobs/md5:abc", None), "DIGEST_INVALID");
        assert_eq!(code("/v2/x/manifests/sha256:zz", None), "DIGEST_INVALID");
        assert_eq!(code("/v2/X/manifests/t", None), "NAME_INVALID");
        assert_eq!(code("/v2/../etc/manifests/t", None), "NAME_INVALID");
        assert_eq!(code("/v2/x/manifests/-t", None), "MANIFEST_UNKNOWN");
        // A bad name is NAME_INVALID even when it contains the word "tag".
        assert_eq!(code("/v2/tag/Bad/manifests/t", None), "NAME_INVALID");
        assert_eq!(code("/v2/x/tags/list", None), "NAME_UNKNOWN");
        assert_eq!(code("/v3/x", None), "NAME_UNKNOWN");
        assert_eq!(code("/v2/x/manifests/t", Some("ns=a/b")), "NAME_INVALID");
        assert_eq!(code("/v2/x/manifests/t", Some("ns=%zz")), "NAME_INVALID");
    }
}

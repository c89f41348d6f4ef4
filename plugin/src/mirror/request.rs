//! What a request asks for: the distribution API path
//! (`/v2/<name>/manifests/<tag|digest>`, `/v2/<name>/blobs/<digest>`,
//! `/v2/<name>/tags/list`, `/v2/_catalog`) and containerd's
//! `?ns=<registry>`, turned into a normalized [`Reference`].
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
    /// The tags of a repository (`name` as the request spelled it; the
    /// reference's tag is a placeholder).
    Tags {
        name: String,
        ns: Option<String>,
        repository: Reference,
        page: Page,
    },
    /// The repositories: of the registry `ns`, or all of them as whole
    /// names (`docker.io/library/busybox`) without it.
    Catalog { ns: Option<String>, page: Page },
}

/// Pagination of a list (`?n=<count>&last=<entry>`): entries after `last`,
/// at most `n` of them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Page {
    pub n: Option<usize>,
    pub last: Option<String>,
}

impl Page {
    /// Takes this page of a sorted list; returns it and whether more follow.
    pub fn apply(&self, sorted: Vec<String>) -> (Vec<String>, bool) {
        let after: Vec<String> = match &self.last {
            Some(last) => sorted.into_iter().filter(|e| e > last).collect(),
            None => sorted,
        };
        match self.n {
            Some(n) if after.len() > n => (after.into_iter().take(n).collect(), true),
            _ => (after, false),
        }
    }

    fn of(query: Option<&str>) -> Result<Page, MirrorError> {
        let n = match query_param(query, "n") {
            Some(n) => Some(n.parse().map_err(|_| {
                MirrorError::PaginationNumberInvalid(format!("n={n:?} is not a count"))
            })?),
            None => None,
        };
        Ok(Page {
            n,
            last: query_param(query, "last"),
        })
    }
}

/// Parses the path and query of a request.
pub fn parse(path: &str, query: Option<&str>) -> Result<Route, MirrorError> {
    if path == "/v2" || path == "/v2/" {
        return Ok(Route::Base);
    }
    let rest = path
        .strip_prefix("/v2/")
        .ok_or_else(|| MirrorError::NameUnknown(format!("{path} is not a registry API path")))?;
    let ns = namespace(query)?;
    if rest == "_catalog" {
        return Ok(Route::Catalog {
            ns,
            page: Page::of(query)?,
        });
    }
    if let Some(name) = rest.strip_suffix("/tags/list").filter(|n| !n.is_empty()) {
        return Ok(Route::Tags {
            name: name.to_string(),
            repository: reference_of(ns.as_deref(), name, ":latest")?,
            ns,
            page: Page::of(query)?,
        });
    }
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
            _ => e.into(),
        })?;
        return Ok(Route::Manifest(r));
    }
    if let Some((name, digest)) = split("/blobs/") {
        let digest: Digest = digest
            .parse()
            .map_err(|e| MirrorError::DigestInvalid(format!("{e}")))?;
        let r = reference_of(ns.as_deref(), name, &format!("@{digest}"))?;
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

/// The first value of `key` in a query string, percent-decoded.
fn query_param(query: Option<&str>, key: &str) -> Option<String> {
    form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
}

/// The `ns` query parameter, checked to be a host name with an optional
/// port.
fn namespace(query: Option<&str>) -> Result<Option<String>, MirrorError> {
    let Some(value) = query_param(query, "ns") else {
        return Ok(None);
    };
    let ok = !value.is_empty()
        && value.len() <= 255
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-:".contains(&b))
        && !value.starts_with(['.', '-', ':']);
    if ok {
        Ok(Some(value.to_ascii_lowercase()))
    } else {
        Err(MirrorError::NameInvalid(format!("bad ns {value:?}")))
    }
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
    fn content_discovery() {
        match parse(
            "/v2/library/busybox/tags/list",
            Some("ns=docker.io&n=2&last=1.35"),
        )
        .unwrap()
        {
            Route::Tags {
                name,
                ns,
                repository,
                page,
            } => {
                assert_eq!(ns.as_deref(), Some("docker.io"));
                assert_eq!(name, "library/busybox");
                assert_eq!(repository.repository(), "docker.io/library/busybox");
                assert_eq!(
                    page,
                    Page {
                        n: Some(2),
                        last: Some("1.35".into())
                    }
                );
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            parse("/v2/_catalog", Some("ns=quay.io")).unwrap(),
            Route::Catalog {
                ns: Some("quay.io".into()),
                page: Page::default()
            }
        );
        assert!(matches!(
            parse("/v2/_catalog", Some("n=x")),
            Err(MirrorError::PaginationNumberInvalid(_))
        ));
        let tags = || vec!["1".to_string(), "2".into(), "3".into()];
        let page = |n, last: Option<&str>| Page {
            n,
            last: last.map(str::to_string),
        };
        assert_eq!(page(None, None).apply(tags()), (tags(), false));
        assert_eq!(
            page(Some(2), None).apply(tags()),
            (vec!["1".into(), "2".into()], true)
        );
        assert_eq!(
            page(Some(2), Some("2")).apply(tags()),
            (vec!["3".into()], false)
        );
        assert_eq!(page(Some(0), None).apply(tags()), (vec![], true));
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
        assert_eq!(code("/v2/tags/list", None), "NAME_UNKNOWN");
        assert_eq!(code("/v2/X/tags/list", None), "NAME_INVALID");
        // A bad name is NAME_INVALID even when it contains the word "tag".
        assert_eq!(code("/v2/tag/Bad/manifests/t", None), "NAME_INVALID");
        assert_eq!(code("/v3/x", None), "NAME_UNKNOWN");
        assert_eq!(code("/v2/x/manifests/t", Some("ns=a/b")), "NAME_INVALID");
        assert_eq!(code("/v2/x/manifests/t", Some("ns=%zz")), "NAME_INVALID");
    }
}

//! Content discovery (distribution spec "Content discovery", and the
//! `_catalog` extension registries implement): the tags of a repository and
//! the repositories, from what the archives hold, paginated with `n` and
//! `last` and a `Link: <...>; rel="next"` header when more follow, so that
//! `skopeo list-tags` and `crane catalog` work against the mirror.
//!
//! Only archived names are listed: the upstream is not asked, since its
//! tags are not what this node can pull without it.

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::error::MirrorError;
use super::request::Page;
use crate::catalog::reference::Reference;
use crate::catalog::Catalog;

/// The archived images' references, parsed (names the catalog holds were
/// normalized when indexed).
fn archived_references(catalog: &Catalog) -> impl Iterator<Item = Reference> {
    catalog
        .images()
        .into_iter()
        .filter_map(|i| Reference::parse(&i.entry.name).ok())
}

/// `GET /v2/<name>/tags/list`: the archived tags of `repository`, sorted.
pub(super) fn tags(
    catalog: &Catalog,
    name: &str,
    ns: Option<&str>,
    repository: &Reference,
    page: &Page,
) -> Result<Response, MirrorError> {
    let mut tags: Vec<String> = archived_references(catalog)
        .filter(|r| r.domain == repository.domain && r.path == repository.path)
        .filter_map(|r| r.tag)
        .collect();
    if tags.is_empty() {
        return Err(MirrorError::NameUnknown(format!(
            "no archive holds {}",
            repository.repository()
        )));
    }
    tags.sort();
    tags.dedup();
    let (tags, more) = page.apply(tags);
    let next = more.then(|| format!("/v2/{name}/tags/list"));
    list_response(
        json!({ "name": name, "tags": tags }),
        next,
        ns,
        page,
        tags.last(),
    )
}

/// `GET /v2/_catalog`: the archived repositories of registry `ns`, or all of
/// them as whole names.
pub(super) fn repositories(
    catalog: &Catalog,
    ns: Option<&str>,
    page: &Page,
) -> Result<Response, MirrorError> {
    let mut names: Vec<String> = archived_references(catalog)
        .filter_map(|r| match ns {
            Some(ns) => (r.domain == ns).then_some(r.path),
            None => Some(r.repository()),
        })
        .collect();
    names.sort();
    names.dedup();
    let (names, more) = page.apply(names);
    let next = more.then(|| "/v2/_catalog".to_string());
    list_response(
        json!({ "repositories": names }),
        next,
        ns,
        page,
        names.last(),
    )
}

/// A JSON list answer, with the `Link` to the next page when there is one.
fn list_response(
    body: serde_json::Value,
    next_path: Option<String>,
    ns: Option<&str>,
    page: &Page,
    last: Option<&String>,
) -> Result<Response, MirrorError> {
    let mut resp = axum::Json(body).into_response();
    if let (Some(path), Some(last)) = (next_path, last) {
        let mut query = form_urlencoded::Serializer::new(String::new());
        if let Some(ns) = ns {
            query.append_pair("ns", ns);
        }
        if let Some(n) = page.n {
            query.append_pair("n", &n.to_string());
        }
        query.append_pair("last", last);
        let link = format!("<{path}?{}>; rel=\"next\"", query.finish());
        resp.headers_mut().insert(
            header::LINK,
            HeaderValue::from_str(&link).map_err(|e| MirrorError::internal("link header", e))?,
        );
    }
    Ok(resp)
}

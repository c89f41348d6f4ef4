//! `Accept` negotiation for manifests (their media types are
//! [`crate::registry::media`]'s).
//!
//! The mirror cannot convert between formats: it serves a manifest in the
//! one media type it has. When the request's `Accept` excludes that type,
//! the answer is a 404, so containerd tries its next host (which may hold
//! the other format) instead of failing on an unexpected document.

use axum::http::{header, HeaderMap};

/// True when the request's `Accept` headers admit `media_type` (no `Accept`
/// at all admits everything; `q=0` excludes).
pub fn accepts(headers: &HeaderMap, media_type: &str) -> bool {
    let mut any = false;
    for value in headers.get_all(header::ACCEPT) {
        let Ok(value) = value.to_str() else {
            continue;
        };
        for item in value.split(',') {
            let mut parts = item.split(';');
            let range = parts.next().unwrap_or("").trim();
            if range.is_empty() {
                continue;
            }
            any = true;
            let refused = parts.any(|p| {
                let p = p.trim();
                p.strip_prefix("q=")
                    .and_then(|q| q.trim().parse::<f32>().ok())
                    .is_some_and(|q| q <= 0.0)
            });
            if refused {
                continue;
            }
            let matches = range == "*/*"
                || range.eq_ignore_ascii_case(media_type)
                || range
                    .strip_suffix("/*")
                    .is_some_and(|t| media_type.split('/').next() == Some(t));
            if matches {
                return true;
            }
        }
    }
    !any
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::index::{MEDIA_DOCKER_LIST, MEDIA_DOCKER_MANIFEST, MEDIA_OCI_INDEX};
    use crate::registry::media::ACCEPT_ALL_MANIFESTS;
    use axum::http::HeaderValue;

    #[test]
    fn accept_negotiation() {
        let h = |values: &[&str]| {
            let mut m = HeaderMap::new();
            for v in values {
                m.append(header::ACCEPT, HeaderValue::from_str(v).unwrap());
            }
            m
        };
        assert!(accepts(&h(&[]), MEDIA_OCI_INDEX));
        assert!(accepts(&h(&[ACCEPT_ALL_MANIFESTS]), MEDIA_DOCKER_LIST));
        assert!(accepts(
            &h(&[
                MEDIA_DOCKER_MANIFEST,
                "application/vnd.oci.image.index.v1+json"
            ]),
            MEDIA_OCI_INDEX
        ));
        assert!(!accepts(&h(&[MEDIA_DOCKER_MANIFEST]), MEDIA_OCI_INDEX));
        assert!(accepts(&h(&["*/*"]), MEDIA_OCI_INDEX));
        assert!(accepts(&h(&["application/*;q=0.5"]), MEDIA_OCI_INDEX));
        assert!(!accepts(
            &h(&[&format!("{MEDIA_OCI_INDEX};q=0, {MEDIA_DOCKER_LIST}")]),
            MEDIA_OCI_INDEX
        ));
    }
}

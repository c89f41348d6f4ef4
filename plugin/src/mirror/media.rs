//! Manifest media types and `Accept` negotiation.
//!
//! The mirror cannot convert between formats: it serves a manifest in the
//! one media type it has. When the request's `Accept` excludes that type,
//! the answer is a 404, so containerd tries its next host (which may hold
//! the other format) instead of failing on an unexpected document.

use axum::http::{header, HeaderMap};
use serde::Deserialize;

use crate::catalog::index::{
    MEDIA_DOCKER_LIST, MEDIA_DOCKER_MANIFEST, MEDIA_OCI_INDEX, MEDIA_OCI_MANIFEST,
};

/// What a mirror asks an upstream for when the client said nothing.
pub const ACCEPT_ALL_MANIFESTS: &str = "application/vnd.oci.image.index.v1+json, \
     application/vnd.oci.image.manifest.v1+json, \
     application/vnd.docker.distribution.manifest.list.v2+json, \
     application/vnd.docker.distribution.manifest.v2+json";

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Probe {
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    config: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    layers: Option<serde::de::IgnoredAny>,
}

/// The media type of a manifest or index document, `None` when the document
/// is neither (an image config, say).
pub fn manifest_media_type(doc: &[u8]) -> Option<String> {
    let probe: Probe = serde_json::from_slice(doc).ok()?;
    let is_index = probe.manifests.is_some();
    let is_manifest = probe.config.is_some() && probe.layers.is_some();
    match probe.media_type.as_deref() {
        Some(t @ (MEDIA_OCI_INDEX | MEDIA_DOCKER_LIST)) if is_index => Some(t.to_string()),
        Some(t @ (MEDIA_OCI_MANIFEST | MEDIA_DOCKER_MANIFEST)) if is_manifest => {
            Some(t.to_string())
        }
        Some(t) if !t.is_empty() && (is_index || is_manifest) => Some(t.to_string()),
        _ if is_index => Some(MEDIA_OCI_INDEX.to_string()),
        _ if is_manifest => Some(MEDIA_OCI_MANIFEST.to_string()),
        _ => None,
    }
}

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
    use axum::http::HeaderValue;

    #[test]
    fn media_types_of_documents() {
        assert_eq!(
            manifest_media_type(br#"{"schemaVersion":2,"manifests":[]}"#).as_deref(),
            Some(MEDIA_OCI_INDEX)
        );
        assert_eq!(
            manifest_media_type(br#"{"mediaType":"application/vnd.docker.distribution.manifest.list.v2+json","manifests":[]}"#).as_deref(),
            Some(MEDIA_DOCKER_LIST)
        );
        assert_eq!(
            manifest_media_type(br#"{"config":{},"layers":[]}"#).as_deref(),
            Some(MEDIA_OCI_MANIFEST)
        );
        assert_eq!(
            manifest_media_type(br#"{"mediaType":"application/vnd.docker.distribution.manifest.v2+json","config":{},"layers":[]}"#).as_deref(),
            Some(MEDIA_DOCKER_MANIFEST)
        );
        // An image config is not a manifest.
        assert_eq!(
            manifest_media_type(br#"{"architecture":"amd64","rootfs":{"diff_ids":[]}}"#),
            None
        );
        assert_eq!(manifest_media_type(b"not json"), None);
    }

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

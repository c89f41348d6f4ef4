//! Manifest media types: what the registry client asks an upstream for
//! (`Accept`), and the media type of a manifest document when its
//! `Content-Type` does not say (the mirror sniffs archived documents the
//! same way).

use serde::Deserialize;

use crate::catalog::index::{
    MEDIA_DOCKER_LIST, MEDIA_DOCKER_MANIFEST, MEDIA_OCI_INDEX, MEDIA_OCI_MANIFEST,
};

/// What is asked of an upstream when the client said nothing: every
/// manifest and index media type.
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

#[cfg(test)]
mod tests {
    use super::*;

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
}

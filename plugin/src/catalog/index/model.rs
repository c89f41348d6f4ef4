//! The JSON documents of an archive, read leniently: only the fields used,
//! tolerant of Docker's and OCI's variants (oci-spec's types reject some real
//! archives, e.g. a Docker manifest list without per-entry platforms).

use std::collections::BTreeMap;

use serde::Deserialize;

use super::IndexError;

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub(super) struct Descriptor {
    #[serde(default)]
    pub(super) media_type: String,
    pub(super) digest: String,
    #[serde(default)]
    pub(super) size: u64,
    #[serde(default)]
    pub(super) platform: Option<Platform>,
    #[serde(default)]
    pub(super) annotations: BTreeMap<String, String>,
}

#[derive(Deserialize, Default, Clone)]
pub(super) struct Platform {
    #[serde(default)]
    pub(super) os: String,
    #[serde(default)]
    pub(super) architecture: String,
    #[serde(default)]
    pub(super) variant: Option<String>,
}

impl Platform {
    pub(super) fn render(&self) -> String {
        match &self.variant {
            Some(v) if !v.is_empty() => format!("{}/{}/{}", self.os, self.architecture, v),
            _ => format!("{}/{}", self.os, self.architecture),
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Document {
    #[serde(default)]
    pub(super) media_type: String,
    #[serde(default)]
    pub(super) manifests: Option<Vec<Descriptor>>,
    #[serde(default)]
    pub(super) config: Option<Descriptor>,
    #[serde(default)]
    pub(super) layers: Option<Vec<Descriptor>>,
    #[serde(default)]
    pub(super) annotations: BTreeMap<String, String>,
}

#[derive(Deserialize)]
pub(super) struct ImageConfig {
    #[serde(default)]
    pub(super) os: String,
    #[serde(default)]
    pub(super) architecture: String,
    #[serde(default)]
    pub(super) variant: Option<String>,
    pub(super) rootfs: RootFs,
}

#[derive(Deserialize)]
pub(super) struct RootFs {
    #[serde(default)]
    pub(super) diff_ids: Vec<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct DockerManifest {
    pub(super) config: String,
    #[serde(default)]
    pub(super) repo_tags: Option<Vec<String>>,
    #[serde(default)]
    pub(super) layers: Vec<String>,
}

pub(super) fn parse_json<'a, T: Deserialize<'a>>(
    file: &str,
    bytes: &'a [u8],
) -> Result<T, IndexError> {
    serde_json::from_slice(bytes).map_err(|e| IndexError::BadDocument {
        file: file.to_string(),
        reason: e.to_string(),
    })
}

//! `docker save` archives: manifest.json names a config and layer files; the
//! OCI manifest of each image is synthesized here.

use std::path::Path;

use bytes::Bytes;
use serde::Serialize;

use super::model::{parse_json, DockerManifest};
use super::resolve::{json_text, Resolver};
use super::walk::{entry_name, Entry};
use super::{ImageError, ImageResult, IndexError, MEDIA_OCI_CONFIG, MEDIA_OCI_MANIFEST};
use crate::catalog::container::{sniff_compression, Container};
use crate::catalog::reference::Reference;
use crate::digest::Digest;

/// The OCI manifest written for a docker-save image. Field order is fixed, so
/// the same archive always gives the same digest.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SynthManifest<'a> {
    schema_version: u32,
    media_type: &'a str,
    config: SynthDescriptor,
    layers: Vec<SynthDescriptor>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SynthDescriptor {
    media_type: String,
    digest: Digest,
    size: u64,
}

const MEDIA_OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";

impl Resolver<'_> {
    pub(super) fn docker_save(&mut self) -> Result<(), IndexError> {
        let list: Vec<DockerManifest> =
            parse_json("manifest.json", &self.pass.json_files["manifest.json"])?;
        for (i, m) in list.iter().enumerate() {
            let label = m
                .repo_tags
                .as_ref()
                .and_then(|t| t.first().cloned())
                .unwrap_or_else(|| format!("manifest.json[{i}]"));
            if let Err(e) = self.docker_image(m) {
                self.out.problems.push(format!("{label}: {e}"));
            }
        }
        Ok(())
    }

    /// A docker-save entry: finds a file by its manifest.json path, which
    /// may also be a `blobs/sha256/<hex>` path (Docker 25+).
    fn docker_file(&self, path: &str) -> Option<(&Entry, Option<&Bytes>)> {
        let name = entry_name(Path::new(path));
        if let Some(e) = self.pass.files.get(&name) {
            return Some((e, self.pass.json_files.get(&name)));
        }
        let digest: Digest = format!("sha256:{}", name.strip_prefix("blobs/sha256/")?)
            .parse()
            .ok()?;
        let e = self.pass.blobs.get(&digest)?;
        Some((e, self.pass.json_blobs.get(&digest)))
    }

    fn docker_image(&mut self, m: &DockerManifest) -> ImageResult<()> {
        let (config_entry, config_bytes) =
            self.docker_file(&m.config)
                .ok_or_else(|| ImageError::FileMissing {
                    what: "config",
                    path: m.config.clone(),
                })?;
        let config_bytes = config_bytes
            .ok_or_else(|| ImageError::ConfigNotJson {
                path: m.config.clone(),
            })?
            .clone();
        let config_loc = config_entry.loc;
        let config_digest = Digest::of(&config_bytes);
        let mut layers = Vec::new();
        for path in &m.layers {
            let (e, _) = self
                .docker_file(path)
                .ok_or_else(|| ImageError::FileMissing {
                    what: "layer",
                    path: path.clone(),
                })?;
            let e = e.clone();
            let digest = e.digest.expect("every docker-save file is hashed");
            let media_type = match sniff_compression(&e.head) {
                Some(Container::Gzip) => format!("{MEDIA_OCI_LAYER}+gzip"),
                Some(Container::Zstd) => format!("{MEDIA_OCI_LAYER}+zstd"),
                _ => MEDIA_OCI_LAYER.to_string(),
            };
            self.out.blobs.insert(digest, e.loc);
            layers.push((digest, media_type, e.loc.size));
            self.saved_layers.insert(digest, e);
        }
        let manifest = SynthManifest {
            schema_version: 2,
            media_type: MEDIA_OCI_MANIFEST,
            config: SynthDescriptor {
                media_type: MEDIA_OCI_CONFIG.into(),
                digest: config_digest,
                size: config_bytes.len() as u64,
            },
            layers: layers
                .iter()
                .map(|(d, t, s)| SynthDescriptor {
                    media_type: t.clone(),
                    digest: *d,
                    size: *s,
                })
                .collect(),
        };
        let manifest_json = serde_json::to_string(&manifest).expect("plain structs serialize");
        let manifest_digest = Digest::of(manifest_json.as_bytes());
        self.out.blobs.insert(config_digest, config_loc);
        json_text(config_digest, &config_bytes)?;
        self.out
            .documents
            .insert(config_digest, config_bytes.clone());
        let mut summary =
            self.add_manifest(manifest_digest, config_digest, &config_bytes, &layers, None)?;
        summary
            .blobs
            .insert(manifest_digest, manifest_json.len() as u64);
        summary
            .blobs
            .insert(config_digest, config_bytes.len() as u64);
        self.out
            .documents
            .insert(manifest_digest, Bytes::from(manifest_json));
        for tag in m.repo_tags.iter().flatten() {
            match Reference::parse(tag) {
                Ok(r) => self.push_image(
                    r.to_string(),
                    manifest_digest,
                    MEDIA_OCI_MANIFEST.into(),
                    &summary,
                    true,
                ),
                Err(e) => self.out.problems.push(e.to_string()),
            }
        }
        Ok(())
    }
}

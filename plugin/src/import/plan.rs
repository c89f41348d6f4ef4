//! What should be registered: the catalog's images for this node's platform,
//! each as the image records, documents and layers a CRI pull leaves in
//! containerd.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use serde_json::Value;

use crate::catalog::reference::{Reference, ReferenceError};
use crate::catalog::{Catalog, ImageInfo, LayerSource};
use crate::digest::Digest;
use crate::labels::{
    AIRGAP_ARCHIVE, AIRGAP_CREATED, CRI_IMAGE, CRI_PINNED, GC_REF_CONTENT, GC_REF_SNAPSHOT,
};
use crate::proto::containerd::types::Descriptor;

/// One archived image, ready to register.
#[derive(Clone, Debug)]
pub struct Registration {
    /// The catalog's name for it (`docker.io/library/busybox:1.36`).
    pub name: String,
    pub archive: PathBuf,
    /// The image records CRI keeps for a pulled image: the tag, the repo
    /// digest (`repo@<target digest>`) and the image id (`sha256:<config>`).
    pub records: Vec<String>,
    /// What every record points to: the index (multi-arch images keep their
    /// digest) or the manifest.
    pub target: Descriptor,
    /// Labels on every record: CRI's, the pin, the archive, the creator.
    pub labels: HashMap<String, String>,
    /// The small blobs to put in the content store, children first.
    pub documents: Vec<Document>,
    /// Chain IDs of the platform manifest's layers, bottom first.
    pub chain: Vec<Digest>,
}

/// A blob for the content store, with the labels that keep its children.
#[derive(Clone, Debug)]
pub struct Document {
    pub digest: Digest,
    pub data: Bytes,
    pub labels: HashMap<String, String>,
}

/// Why an archived image is not registered on this node.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// No manifest for this node's platform (the catalog's words: which
    /// platforms the archive has).
    #[error(transparent)]
    Platform(crate::catalog::NoPlatformManifest),
    /// Some blob of the image is in no archive (a delta whose base is not
    /// on the node): `Completeness::reason`.
    #[error("{0}")]
    Incomplete(String),
    #[error("layer {0} (chain ID) is not in the archive: pulled from a registry instead")]
    LayerNotArchived(Digest),
    #[error("the manifest has no layers")]
    NoLayers,
    #[error("the archive lacks document {0}")]
    MissingDocument(Digest),
    #[error(transparent)]
    Name(#[from] ReferenceError),
    /// `[verify] require = "enforce"` and no valid signature.
    #[error(transparent)]
    Unsigned(#[from] crate::trust::Refusal),
}

/// Every image of the catalog to register for `platform` (`linux/amd64`),
/// and why the others are not (name, reason). Each image record name is
/// claimed by one registration only (see [`assign_owners`]).
pub fn plan(
    catalog: &Catalog,
    trust: &crate::trust::Trust,
    platform: &str,
    snapshotter: &str,
) -> (Vec<Registration>, Vec<(String, PlanError)>) {
    let mut registrations = Vec::new();
    let mut skipped = Vec::new();
    for image in catalog.images() {
        let admitted = trust
            .admit(catalog, &image, crate::trust::Use::Register)
            .map_err(PlanError::from);
        match admitted.and_then(|()| registration(catalog, &image, platform, snapshotter)) {
            Ok(r) => registrations.push(r),
            Err(why) => skipped.push((image.entry.name.clone(), why)),
        }
    }
    let modified: HashMap<PathBuf, i128> = catalog
        .archives()
        .iter()
        .map(|a| (a.path().to_path_buf(), a.index.key.mtime_ns))
        .collect();
    assign_owners(&mut registrations, |archive| {
        modified.get(archive).copied().unwrap_or_default()
    });
    (registrations, skipped)
}

/// Two archives may hold one image under two names (`a:1` and `b:1`), or
/// one archive two tags of one repository: their registrations then claim
/// the same records (the image id `sha256:<config>`, the repo digest), each
/// with its own archive label, and would take them from each other on every
/// pass. Each record name goes to one registration, as the catalog picks the
/// winner of a name: the most recently modified archive (`modified`), then
/// the greater path, then the first name; the others leave it out.
pub fn assign_owners(registrations: &mut [Registration], modified: impl Fn(&Path) -> i128) {
    let mut order: Vec<usize> = (0..registrations.len()).collect();
    order.sort_by(|&a, &b| {
        let (a, b) = (&registrations[a], &registrations[b]);
        (modified(&b.archive), &b.archive)
            .cmp(&(modified(&a.archive), &a.archive))
            .then_with(|| a.name.cmp(&b.name))
    });
    let mut claimed = HashSet::new();
    for i in order {
        registrations[i]
            .records
            .retain(|record| claimed.insert(record.clone()));
    }
}

fn registration(
    catalog: &Catalog,
    image: &ImageInfo,
    platform: &str,
    snapshotter: &str,
) -> Result<Registration, PlanError> {
    let entry = &image.entry;
    let document = |digest: &Digest| {
        catalog
            .document(digest)
            .ok_or(PlanError::MissingDocument(*digest))
    };
    let manifest = catalog
        .platform_manifest(entry, platform)
        .map_err(PlanError::Platform)?;
    let completeness = catalog.completeness_for(image, platform);
    if !completeness.is_complete() {
        return Err(PlanError::Incomplete(completeness.reason()));
    }
    if let Some(missing) = manifest.chain.iter().find(|c| catalog.layer(c).is_none()) {
        return Err(PlanError::LayerNotArchived(*missing));
    }
    let top = manifest.chain.last().ok_or(PlanError::NoLayers)?;

    let target_data = document(&entry.digest)?;
    let manifest_data = document(&manifest.digest)?;
    let config_data = document(&manifest.config)?;
    let mut documents = vec![
        Document {
            digest: manifest.config,
            data: config_data,
            labels: HashMap::from([(format!("{GC_REF_SNAPSHOT}.{snapshotter}"), top.to_string())]),
        },
        Document {
            digest: manifest.digest,
            labels: children_labels(&manifest_data, &[("config", "config"), ("layers", "l")]),
            data: manifest_data,
        },
    ];
    if entry.digest != manifest.digest {
        documents.push(Document {
            digest: entry.digest,
            labels: children_labels(&target_data, &[("manifests", "m")]),
            data: target_data.clone(),
        });
    }

    let reference = Reference::parse(&entry.name)?;
    // The tag last: CRI lists an image under its tag as soon as that record
    // exists, and kubelet then finds its repo digest and id already there.
    let mut records = vec![
        manifest.config.to_string(),
        format!("{}@{}", reference.repository(), entry.digest),
    ];
    if reference.tag.is_some() {
        records.push(entry.name.clone());
    }

    Ok(Registration {
        name: entry.name.clone(),
        archive: image.archive.clone(),
        records,
        target: Descriptor {
            media_type: entry.media_type.clone(),
            digest: entry.digest.to_string(),
            size: target_data.len() as i64,
            annotations: HashMap::new(),
        },
        labels: HashMap::from([
            (CRI_IMAGE.to_string(), "managed".to_string()),
            (CRI_PINNED.to_string(), "pinned".to_string()),
            (
                AIRGAP_ARCHIVE.to_string(),
                image.archive.display().to_string(),
            ),
            // Set by the Create, kept equal to the target by the importer's
            // own updates: see `records.rs`.
            (AIRGAP_CREATED.to_string(), entry.digest.to_string()),
        ]),
        documents,
        chain: manifest.chain.clone(),
    })
}

/// containerd's GC labels for the children a document names: for each
/// `(field, label)`, a descriptor field (`config`) gives
/// `gc.ref.content.<label>`, a list (`layers`) `gc.ref.content.<label>.<i>`.
fn children_labels(document: &[u8], fields: &[(&str, &str)]) -> HashMap<String, String> {
    let mut labels = HashMap::new();
    let Ok(json) = serde_json::from_slice::<Value>(document) else {
        return labels;
    };
    let digest_of = |v: &Value| v.get("digest").and_then(Value::as_str).map(str::to_string);
    for (field, label) in fields {
        match json.get(field) {
            Some(Value::Array(children)) => {
                for (i, child) in children.iter().enumerate() {
                    if let Some(d) = digest_of(child) {
                        labels.insert(format!("{GC_REF_CONTENT}.{label}.{i}"), d);
                    }
                }
            }
            Some(child) => {
                if let Some(d) = digest_of(child) {
                    labels.insert(format!("{GC_REF_CONTENT}.{label}"), d);
                }
            }
            None => {}
        }
    }
    labels
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::CatalogOptions;
    use crate::testsupport::*;

    /// A multi-arch index: an arm64 node gets the `arm64/v8` manifest, the
    /// records keep the index digest, and every document carries the GC
    /// references containerd's pull writes.
    #[test]
    fn a_node_gets_its_platform_of_a_multi_arch_index() {
        let amd = ImageSpec::new(vec![layer_tar(&[("a", b"amd64")])]);
        let arm = ImageSpec {
            arch: "arm64",
            variant: Some("v8"),
            ..ImageSpec::new(vec![
                layer_tar(&[("a", b"arm64")]),
                layer_tar(&[("b", b"2")]),
            ])
        };
        let mut layout = OciLayout::default();
        let built_amd = layout.add_image(&amd);
        let built_arm = layout.add_image(&arm);
        let (index, size) = layout.add_index(&[(&amd, &built_amd), (&arm, &built_arm)]);
        layout.tag("registry.k8s.io/pause:3.9", index, size, true);
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "multi.tar", &layout.to_tar());
        let catalog = Catalog::open(CatalogOptions {
            dirs: vec![dir.path().to_path_buf()],
            settle: std::time::Duration::ZERO,
            ..Default::default()
        })
        .unwrap();

        let (registrations, skipped) = plan(
            &catalog,
            &crate::trust::Trust::off(),
            "linux/arm64",
            "airgap",
        );
        assert!(skipped.is_empty(), "{skipped:?}");
        let r = &registrations[0];
        assert_eq!(r.target.digest, index.to_string());
        assert_eq!(r.target.size, size as i64);
        assert_eq!(
            r.records,
            [
                built_arm.config.to_string(),
                format!("registry.k8s.io/pause@{index}"),
                "registry.k8s.io/pause:3.9".to_string(),
            ]
        );
        let chain = arm.chain_ids();
        assert_eq!(r.chain, chain);
        let doc = |d: &Digest| r.documents.iter().find(|x| x.digest == *d).unwrap();
        assert_eq!(
            doc(&built_arm.config).labels["containerd.io/gc.ref.snapshot.airgap"],
            chain[1].to_string()
        );
        assert_eq!(
            doc(&built_arm.manifest).labels["containerd.io/gc.ref.content.config"],
            built_arm.config.to_string()
        );
        assert_eq!(doc(&index).labels.len(), 2, "both manifests referenced");
        assert_eq!(r.labels["io.cri-containerd.pinned"], "pinned");

        // Not archived for this node: skipped, saying which platforms are.
        let (registrations, skipped) = plan(
            &catalog,
            &crate::trust::Trust::off(),
            "linux/s390x",
            "airgap",
        );
        assert!(registrations.is_empty());
        assert!(
            skipped[0]
                .1
                .to_string()
                .contains("linux/amd64, linux/arm64/v8"),
            "{skipped:?}"
        );
    }

    #[test]
    fn gc_labels_name_every_child() {
        let manifest = br#"{"config":{"digest":"sha256:c"},"layers":[{"digest":"sha256:a"},{"digest":"sha256:b"}]}"#;
        let labels = children_labels(manifest, &[("config", "config"), ("layers", "l")]);
        assert_eq!(labels["containerd.io/gc.ref.content.config"], "sha256:c");
        assert_eq!(labels["containerd.io/gc.ref.content.l.0"], "sha256:a");
        assert_eq!(labels["containerd.io/gc.ref.content.l.1"], "sha256:b");
        assert_eq!(labels.len(), 3);
        let index = br#"{"manifests":[{"digest":"sha256:m0"},{"digest":"sha256:m1"}]}"#;
        let labels = children_labels(index, &[("manifests", "m")]);
        assert_eq!(labels["containerd.io/gc.ref.content.m.1"], "sha256:m1");
    }
}

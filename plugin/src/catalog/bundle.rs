//! Bundles: what identifies an archive by its contents, which bases a delta
//! archive extends, the inventory of a node (`images --inventory`, read by
//! `pack --base-inventory`), and whether an image has every blob it needs
//! somewhere in the catalog.
//!
//! A bundle's ID is the SHA-256 of the sorted digests of every blob it holds
//! (documents and layers), one `sha256:<hex>\n` line each: the digest of its
//! inventory. It depends on nothing but the contents, so the connected side
//! (packing against an archive or an inventory) and the node (indexing the
//! archive) compute the same ID for the same archive, whoever packed it.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::index::{ArchiveIndex, ImageEntry};
use super::store::ImageInfo;
use super::Catalog;
use crate::digest::{Digest, Hasher};

/// The inventory format `images --inventory` writes and
/// `pack --base-inventory` reads.
pub const INVENTORY_VERSION: u32 = 1;
/// The inventory's `kind`, so another JSON file is refused by name.
pub const INVENTORY_KIND: &str = "airgap-snapshotter.inventory";

/// A bundle named by its ID, with the name it was packed as (its file name
/// when nothing recorded one).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct BundleRef {
    pub id: Digest,
    pub name: String,
}

impl std::fmt::Display for BundleRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "bundle {} ({})", self.id, self.name)
    }
}

/// What an archive says about itself as a bundle.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bundle {
    /// [`bundle_id`] of what the archive holds (computed, never trusted
    /// from the archive's own annotation).
    pub id: Option<Digest>,
    /// The name it was packed as (`io.airgap-snapshotter.bundle.name`).
    pub name: Option<String>,
    /// The bundles a delta archive extends: the blobs it leaves out are
    /// theirs (`io.airgap-snapshotter.bundle.bases`).
    pub bases: Vec<BundleRef>,
}

/// The ID of a bundle holding `blobs`.
pub fn bundle_id<'a>(blobs: impl IntoIterator<Item = &'a Digest>) -> Digest {
    let sorted: BTreeSet<&Digest> = blobs.into_iter().collect();
    let mut h = Hasher::new();
    for d in sorted {
        h.update(d.to_string().as_bytes());
        h.update(b"\n");
    }
    h.finish()
}

/// The bases recorded in an index.json annotation: a JSON array of
/// `{"id", "name"}`.
pub fn parse_bases(value: &str) -> Result<Vec<BundleRef>, serde_json::Error> {
    serde_json::from_str(value)
}

impl ArchiveIndex {
    /// Every blob the archive can serve: its blobs and its documents
    /// (a docker-save archive's synthesized manifests among them).
    pub fn held_blobs(&self) -> BTreeSet<Digest> {
        self.blobs
            .keys()
            .chain(self.documents.keys())
            .copied()
            .collect()
    }

    /// The bundle's ID: computed at indexing ([`Bundle::id`]).
    pub fn bundle_id(&self) -> Digest {
        self.bundle
            .id
            .unwrap_or_else(|| bundle_id(&self.held_blobs()))
    }

    /// This archive as a bundle: its ID and the name it was packed as, or
    /// its file name.
    pub fn bundle_ref(&self) -> BundleRef {
        BundleRef {
            id: self.bundle_id(),
            name: self
                .bundle
                .name
                .clone()
                .unwrap_or_else(|| file_name(&self.path)),
        }
    }
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

/// What the archives of a node hold, by bundle.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Inventory {
    pub kind: String,
    pub version: u32,
    pub bundles: Vec<InventoryBundle>,
}

/// One archive of an inventory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InventoryBundle {
    pub id: Digest,
    pub name: String,
    /// Where it is on the node (for the reader; not part of its identity).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archive: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bases: Vec<BundleRef>,
    pub blobs: BTreeSet<Digest>,
}

#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    #[error("{path}: not an inventory: {reason}")]
    Parse { path: String, reason: String },
    #[error("{path}: kind is {found:?}, expected {INVENTORY_KIND:?} (`airgap-snapshotter images --inventory` writes it)")]
    Kind { path: String, found: String },
    #[error("{path}: inventory version {found} is not supported (this version reads {INVENTORY_VERSION})")]
    Version { path: String, found: u32 },
    #[error("{path}: bundles[{index}] ({name}): id {claimed} does not match its blobs ({actual})")]
    Id {
        path: String,
        index: usize,
        name: String,
        claimed: Digest,
        actual: Digest,
    },
}

impl Inventory {
    /// The inventory of some archives.
    pub fn of<'a>(archives: impl IntoIterator<Item = &'a ArchiveIndex>) -> Inventory {
        let mut bundles: Vec<InventoryBundle> = archives
            .into_iter()
            .map(|a| {
                let r = a.bundle_ref();
                InventoryBundle {
                    id: r.id,
                    name: r.name,
                    archive: Some(a.path.display().to_string()),
                    bases: a.bundle.bases.clone(),
                    blobs: a.held_blobs(),
                }
            })
            .collect();
        bundles.sort_by(|a, b| (&a.name, &a.archive).cmp(&(&b.name, &b.archive)));
        Inventory {
            kind: INVENTORY_KIND.to_string(),
            version: INVENTORY_VERSION,
            bundles,
        }
    }

    /// Reads an inventory; `path` names it in errors. Each bundle's ID is
    /// checked against its blobs, so a hand-edited list is refused rather
    /// than recorded as a base no node has.
    pub fn parse(path: &str, text: &str) -> Result<Inventory, InventoryError> {
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| InventoryError::Parse {
                path: path.to_string(),
                reason: e.to_string(),
            })?;
        let kind = value["kind"].as_str().unwrap_or_default();
        if kind != INVENTORY_KIND {
            return Err(InventoryError::Kind {
                path: path.to_string(),
                found: kind.to_string(),
            });
        }
        match value["version"].as_u64() {
            Some(v) if v == INVENTORY_VERSION as u64 => {}
            other => {
                return Err(InventoryError::Version {
                    path: path.to_string(),
                    found: other.unwrap_or(0) as u32,
                })
            }
        }
        let inv: Inventory = serde_json::from_value(value).map_err(|e| InventoryError::Parse {
            path: path.to_string(),
            reason: e.to_string(),
        })?;
        for (index, b) in inv.bundles.iter().enumerate() {
            let actual = bundle_id(&b.blobs);
            if actual != b.id {
                return Err(InventoryError::Id {
                    path: path.to_string(),
                    index,
                    name: b.name.clone(),
                    claimed: b.id,
                    actual,
                });
            }
        }
        Ok(inv)
    }
}

/// The blobs one platform manifest of an image lacks in every archive.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MissingBlobs {
    pub manifest: Digest,
    pub platform: String,
    pub blobs: Vec<Digest>,
}

/// Whether an image has every blob it needs somewhere in the catalog.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Completeness {
    /// Per platform manifest with blobs in no archive (empty: complete).
    pub missing: Vec<MissingBlobs>,
    /// The bases the image's archive extends that no archive of this node
    /// is: why the blobs are missing, when it is a delta.
    pub absent_bases: Vec<BundleRef>,
}

impl Completeness {
    pub fn is_complete(&self) -> bool {
        self.missing.is_empty()
    }

    /// Why the image is incomplete, in one line (empty when complete).
    pub fn reason(&self) -> String {
        if self.is_complete() {
            return String::new();
        }
        let blobs: BTreeSet<&Digest> = self.missing.iter().flat_map(|m| &m.blobs).collect();
        let platforms: Vec<&str> = self.missing.iter().map(|m| m.platform.as_str()).collect();
        let first = blobs
            .iter()
            .next()
            .map(|d| d.to_string())
            .unwrap_or_default();
        let what = format!(
            "{} blob(s) of {} in no archive (first {first})",
            blobs.len(),
            platforms.join(", ")
        );
        if self.absent_bases.is_empty() {
            format!("incomplete: {what}")
        } else {
            let bases: Vec<String> = self.absent_bases.iter().map(|b| b.to_string()).collect();
            format!(
                "incomplete: needs base {}, not on this node: {what}",
                bases.join(", ")
            )
        }
    }
}

/// A delta archive whose base is not on the node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AbsentBase {
    pub archive: PathBuf,
    pub base: BundleRef,
    /// Images of the archive (names it wins) left incomplete.
    pub incomplete: Vec<String>,
}

impl Catalog {
    /// What the archives hold, by bundle: `images --inventory`.
    pub fn inventory(&self) -> Inventory {
        let archives = self.archives();
        Inventory::of(archives.iter().map(|a| &a.index))
    }

    /// Whether every blob of `image` (each platform manifest the catalog has
    /// for it, its config and layers; and the image's own document) is in
    /// some archive.
    pub fn completeness(&self, image: &ImageInfo) -> Completeness {
        self.completeness_where(image, |_| true)
    }

    /// [`Catalog::completeness`] for one platform only (`linux/amd64`): what
    /// a node of that platform pulls.
    pub fn completeness_for(&self, image: &ImageInfo, platform: &str) -> Completeness {
        let Ok(m) = self.platform_manifest(&image.entry, platform) else {
            return Completeness::default();
        };
        self.completeness_where(image, |d| *d == m.digest)
    }

    fn completeness_where(
        &self,
        image: &ImageInfo,
        keep: impl Fn(&Digest) -> bool,
    ) -> Completeness {
        let state = self.ready_state();
        let held = |d: &Digest| {
            state.blobs.contains_key(d)
                || state
                    .archives
                    .values()
                    .any(|a| a.index.documents.contains_key(d))
        };
        let mut out = Completeness::default();
        let entry: &ImageEntry = &image.entry;
        for md in entry.manifests.iter().filter(|d| keep(d)) {
            let manifest = state
                .archives
                .values()
                .find_map(|a| a.index.manifests.iter().find(|m| m.digest == *md));
            let mut wanted = vec![entry.digest, *md];
            let mut platform = String::new();
            if let Some(m) = manifest {
                platform = m.platform.clone();
                wanted.push(m.config);
                for a in state.archives.values() {
                    for c in &m.chain {
                        if let Some(l) = a.index.layers.iter().find(|l| l.chain_id == *c) {
                            wanted.push(l.digest);
                        }
                    }
                }
            }
            let mut seen = HashSet::new();
            let blobs: Vec<Digest> = wanted
                .into_iter()
                .filter(|d| seen.insert(*d) && !held(d))
                .collect();
            if !blobs.is_empty() {
                out.missing.push(MissingBlobs {
                    manifest: *md,
                    platform,
                    blobs,
                });
            }
        }
        if !out.is_complete() {
            let present: HashSet<Digest> = state
                .archives
                .values()
                .map(|a| a.index.bundle_id())
                .collect();
            if let Some(a) = state.archives.get(&image.archive) {
                out.absent_bases = a
                    .index
                    .bundle
                    .bases
                    .iter()
                    .filter(|b| !present.contains(&b.id))
                    .cloned()
                    .collect();
            }
        }
        out
    }

    /// Every recorded base of a delta archive that no archive of this node
    /// is, with the archive's images it leaves incomplete: what `doctor`
    /// reports when a base was deleted while a delta needs it.
    pub fn absent_bases(&self) -> Vec<AbsentBase> {
        let archives = self.archives();
        let present: HashSet<Digest> = archives.iter().map(|a| a.index.bundle_id()).collect();
        let images = self.images();
        let mut out = Vec::new();
        for a in &archives {
            for base in a.index.bundle.bases.iter() {
                if present.contains(&base.id) {
                    continue;
                }
                let incomplete = images
                    .iter()
                    .filter(|i| i.archive == a.index.path)
                    .filter(|i| !self.completeness(i).is_complete())
                    .map(|i| i.entry.name.clone())
                    .collect();
                out.push(AbsentBase {
                    archive: a.index.path.clone(),
                    base: base.clone(),
                    incomplete,
                });
            }
        }
        out
    }

    /// The images missing blobs in every archive, with the reason.
    pub fn incomplete_images(&self) -> BTreeMap<String, (ImageInfo, Completeness)> {
        self.images()
            .into_iter()
            .filter_map(|i| {
                let c = self.completeness(&i);
                (!c.is_complete()).then(|| (i.entry.name.clone(), (i, c)))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_is_the_digest_of_the_sorted_list() {
        let (a, b) = (Digest::of(b"a"), Digest::of(b"b"));
        assert_eq!(bundle_id(&[a, b]), bundle_id(&[b, a, a]));
        let text = {
            let mut v = [a.to_string(), b.to_string()];
            v.sort();
            format!("{}\n{}\n", v[0], v[1])
        };
        assert_eq!(bundle_id(&[a, b]), Digest::of(text.as_bytes()));
        assert_ne!(bundle_id(&[a]), bundle_id(&[a, b]));
    }

    #[test]
    fn inventory_round_trips_and_refuses_what_it_cannot_trust() {
        let blobs: BTreeSet<Digest> = [Digest::of(b"x"), Digest::of(b"y")].into();
        let inv = Inventory {
            kind: INVENTORY_KIND.into(),
            version: INVENTORY_VERSION,
            bundles: vec![InventoryBundle {
                id: bundle_id(&blobs),
                name: "release-1.tar.zst".into(),
                archive: None,
                bases: Vec::new(),
                blobs: blobs.clone(),
            }],
        };
        let text = serde_json::to_string_pretty(&inv).unwrap();
        assert_eq!(Inventory::parse("inv.json", &text).unwrap(), inv);

        let err = Inventory::parse(
            "inv.json",
            &text.replace("\"version\": 1", "\"version\": 9"),
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("inv.json: inventory version 9"),
            "{err}"
        );
        let err = Inventory::parse("inv.json", "{\"kind\":\"x\"}").unwrap_err();
        assert!(err.to_string().contains("kind is \"x\""), "{err}");
        let err = Inventory::parse("inv.json", "[1,").unwrap_err();
        assert!(
            err.to_string().starts_with("inv.json: not an inventory"),
            "{err}"
        );
        // A bundle whose blobs were edited no longer has its ID.
        let mut edited = inv.clone();
        edited.bundles[0].blobs.insert(Digest::of(b"z"));
        let err =
            Inventory::parse("inv.json", &serde_json::to_string(&edited).unwrap()).unwrap_err();
        assert!(
            err.to_string()
                .contains("bundles[0] (release-1.tar.zst): id"),
            "{err}"
        );
        let err = Inventory::parse(
            "inv.json",
            &text.replace("\"blobs\"", "\"extra\": 1, \"blobs\""),
        )
        .unwrap_err();
        assert!(err.to_string().contains("extra"), "{err}");
    }
}

//! Delta bundles: `pack --base ARCHIVE` and `--base-inventory FILE` leave
//! out the layers the bases hold and record, in index.json, which bases the
//! archive extends (by bundle ID, `catalog::bundle`). Documents (indexes,
//! manifests, configs: a few KB an image) always go in, so a delta is an
//! ordinary OCI layout naming every image it carries, and the node can tell
//! what it lacks without its base.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Map, Value};

use super::PackError;
use crate::catalog::bundle::{bundle_id, BundleRef, Inventory};
use crate::catalog::{Catalog, CatalogOptions};
use crate::digest::Digest;
use crate::labels;

/// The bundles a delta is packed against, with the blobs each holds.
#[derive(Debug, Default)]
pub struct Bases {
    bundles: Vec<(BundleRef, BTreeSet<Digest>)>,
}

/// What [`Bases::split`] left out, and whose it is.
#[derive(Clone, Debug, Default)]
pub struct LeftOut {
    pub blobs: usize,
    pub bytes: u64,
    /// The bases holding them, in the order given (each once): what the
    /// delta records as the bases it extends.
    pub bases: Vec<BundleRef>,
}

impl Bases {
    /// The bases named by `archives` (archives of any kind the catalog reads,
    /// or directories of them) and `inventories` (`images --inventory`).
    pub fn load(archives: &[PathBuf], inventories: &[PathBuf]) -> Result<Bases, PackError> {
        let mut out = Bases::default();
        for path in archives {
            if !path.exists() {
                return Err(PackError::Base {
                    path: path.clone(),
                    reason: "no such file or directory".into(),
                });
            }
        }
        if !archives.is_empty() {
            let catalog = Catalog::open(CatalogOptions {
                dirs: archives.to_vec(),
                settle: Duration::ZERO,
                cache_bytes: 0,
                ..Default::default()
            })?;
            if let Some((path, reason)) = catalog.broken().into_iter().next() {
                return Err(PackError::Base {
                    path,
                    reason: format!("unusable: {reason}"),
                });
            }
            let mut indexed = catalog.archives();
            indexed.sort_by(|a, b| a.path().cmp(b.path()));
            for a in indexed {
                out.bundles
                    .push((a.index.bundle_ref(), a.index.held_blobs()));
            }
        }
        for path in inventories {
            let text = std::fs::read_to_string(path).map_err(|source| PackError::Io {
                what: "reading inventory",
                path: path.clone(),
                source,
            })?;
            let inv = Inventory::parse(&path.display().to_string(), &text)?;
            for b in inv.bundles {
                out.bundles.push((
                    BundleRef {
                        id: b.id,
                        name: b.name,
                    },
                    b.blobs,
                ));
            }
        }
        Ok(out)
    }

    pub fn is_empty(&self) -> bool {
        self.bundles.is_empty()
    }

    fn holder(&self, digest: &Digest) -> Option<&BundleRef> {
        self.bundles
            .iter()
            .find(|(_, blobs)| blobs.contains(digest))
            .map(|(b, _)| b)
    }

    /// Keeps from `order` the blobs to write: every document (`is_document`)
    /// and every other blob no base holds.
    pub fn split(
        &self,
        order: Vec<Digest>,
        is_document: impl Fn(&Digest) -> bool,
        size: impl Fn(&Digest) -> u64,
    ) -> (Vec<Digest>, LeftOut) {
        let mut left = LeftOut::default();
        let mut kept = Vec::new();
        for d in order {
            match self.holder(&d).filter(|_| !is_document(&d)) {
                Some(base) => {
                    left.blobs += 1;
                    left.bytes += size(&d);
                    if !left.bases.contains(base) {
                        left.bases.push(base.clone());
                    }
                }
                None => kept.push(d),
            }
        }
        (kept, left)
    }
}

/// The index.json annotations of an archive holding `blobs`, packed as
/// `output`, extending `bases`.
pub fn annotations(blobs: &[Digest], output: &Path, bases: &[BundleRef]) -> Map<String, Value> {
    let mut map = Map::new();
    map.insert(
        labels::BUNDLE_ID.into(),
        json!(bundle_id(blobs).to_string()),
    );
    if let Some(name) = output.file_name() {
        map.insert(labels::BUNDLE_NAME.into(), json!(name.to_string_lossy()));
    }
    if !bases.is_empty() {
        map.insert(
            labels::BUNDLE_BASES.into(),
            json!(serde_json::to_string(bases).expect("JSON values serialize")),
        );
    }
    map
}

#[cfg(test)]
mod tests {
    use std::fs::File;
    use std::sync::Arc;

    use super::*;
    use crate::catalog::bundle::Inventory;
    use crate::catalog::verify::verify_archive;
    use crate::catalog::LayerSource;
    use crate::pack::{pack, PackOptions};
    use crate::testsupport::*;

    /// Release 1: app:1 (base layer + top) and old:1. Release 2: app:2
    /// (the same base layer, a changed top), new:1; old:1 removed.
    struct Releases {
        src: tempfile::TempDir,
        base: ImageSpec,
        app2: ImageSpec,
        new: ImageSpec,
    }

    fn releases() -> Releases {
        let src = tempfile::tempdir().unwrap();
        let bottom = layer_tar(&[("bin/busybox", &noise(1, 300_000))]);
        let base = ImageSpec::new(vec![bottom.clone(), layer_tar(&[("etc/v", b"1")])]);
        let app2 = ImageSpec::new(vec![bottom.clone(), layer_tar(&[("etc/v", b"2")])]);
        let old = ImageSpec::new(vec![layer_tar(&[("old", &noise(2, 50_000))])]);
        let new = ImageSpec::new(vec![bottom, layer_tar(&[("new", &noise(3, 50_000))])]);
        for (file, images) in [
            (
                "r1.tar",
                vec![("example.com/app:1", &base), ("example.com/old:1", &old)],
            ),
            (
                "r2.tar",
                vec![("example.com/app:2", &app2), ("example.com/new:1", &new)],
            ),
        ] {
            let mut l = OciLayout::default();
            for (name, spec) in images {
                let built = l.add_image(spec);
                l.tag(name, built.manifest, built.manifest_size, false);
            }
            std::fs::write(src.path().join(file), l.to_tar()).unwrap();
        }
        Releases {
            src,
            base,
            app2,
            new,
        }
    }

    fn opts(src: &Path, out: &Path, refs: &[&str]) -> PackOptions {
        PackOptions {
            output: out.to_path_buf(),
            refs: refs.iter().map(|s| s.to_string()).collect(),
            sources: vec![src.to_path_buf()],
            level: 3,
            frame_size: 64 * 1024,
            threads: 1,
            ..Default::default()
        }
    }

    fn catalog(paths: &[&Path]) -> Arc<Catalog> {
        Catalog::open(CatalogOptions {
            dirs: paths.iter().map(|p| p.to_path_buf()).collect(),
            settle: Duration::ZERO,
            ..Default::default()
        })
        .unwrap()
    }

    #[test]
    fn a_delta_leaves_out_what_its_base_holds_and_names_the_base() {
        let r = releases();
        let out = tempfile::tempdir().unwrap();
        let base_path = out.path().join("release-1.tar.zst");
        let base_sum = pack(
            &opts(
                r.src.path(),
                &base_path,
                &["example.com/app:1", "example.com/old:1"],
            ),
            &|_, _| {},
        )
        .unwrap();
        let delta_path = out.path().join("release-2.tar.zst");
        let refs = ["example.com/app:2", "example.com/new:1"];
        let mut o = opts(r.src.path(), &delta_path, &refs);
        o.bases = vec![base_path.clone()];
        let delta_sum = pack(&o, &|_, _| {}).unwrap();
        let full_path = out.path().join("full-2.tar.zst");
        let full_sum = pack(&opts(r.src.path(), &full_path, &refs), &|_, _| {}).unwrap();

        // The shared bottom layer is left out, once; documents all go in.
        let bottom = ImageSpec::new(vec![r.base.layers[0].clone()]);
        let bottom_digest = OciLayout::default().add_image(&bottom).layers[0];
        assert_eq!(delta_sum.left_out.blobs, 1, "{:?}", delta_sum.left_out);
        assert_eq!(delta_sum.blobs + 1, full_sum.blobs);
        assert!(delta_sum.bytes_out < full_sum.bytes_out);
        let base_id = base_sum.bundle.unwrap();
        assert_eq!(
            delta_sum.left_out.bases,
            vec![BundleRef {
                id: base_id,
                name: "release-1.tar.zst".into()
            }]
        );

        // The node computes the same IDs, and reads the bases back.
        let alone = catalog(&[&delta_path]);
        let a = &alone.archives()[0];
        assert!(a.index.problems.is_empty(), "{:?}", a.index.problems);
        assert!(!a.index.blobs.contains_key(&bottom_digest));
        assert_eq!(a.index.bundle_id(), delta_sum.bundle.unwrap());
        assert_eq!(a.index.bundle.name.as_deref(), Some("release-2.tar.zst"));
        assert_eq!(a.index.bundle.bases, delta_sum.left_out.bases);
        assert!(
            verify_archive(&a.index, &File::open(&delta_path).unwrap(), &mut |_| {}).is_empty()
        );

        // Alone, the delta's images that need the base are incomplete, and
        // say which base; neither registered nor prepared ahead.
        let incomplete = alone.incomplete_images();
        assert_eq!(
            incomplete.keys().cloned().collect::<Vec<_>>(),
            ["example.com/app:2", "example.com/new:1"]
        );
        let (_, c) = &incomplete["example.com/app:2"];
        assert_eq!(c.missing[0].blobs, vec![bottom_digest]);
        assert_eq!(c.absent_bases[0].id, base_id);
        assert!(c.reason().contains("release-1.tar.zst"), "{}", c.reason());
        assert!(alone.layers_for("linux/amd64").is_empty());
        let (planned, skipped) =
            crate::import::plan::plan(&alone, &crate::trust::Trust::off(), "linux/amd64", "airgap");
        assert!(planned.is_empty());
        assert!(
            skipped
                .iter()
                .all(|(_, why)| why.to_string().contains("needs base")),
            "{skipped:?}"
        );
        let absent = alone.absent_bases();
        assert_eq!(absent.len(), 1);
        assert_eq!(absent[0].incomplete.len(), 2);

        // Beside its base: complete, every layer of release 2 found by its
        // chain ID, both releases registrable.
        let both = catalog(&[&base_path, &delta_path]);
        assert!(both.incomplete_images().is_empty());
        assert!(both.absent_bases().is_empty());
        for spec in [&r.app2, &r.new] {
            for c in spec.chain_ids() {
                let l = both.layer(&c).expect("layer found across archives");
                std::io::copy(
                    &mut both.open_blob(&l.digest).unwrap(),
                    &mut std::io::sink(),
                )
                .unwrap();
            }
        }
        let (planned, skipped) =
            crate::import::plan::plan(&both, &crate::trust::Trust::off(), "linux/amd64", "airgap");
        assert_eq!(planned.len(), 4, "{skipped:?}");

        // The inventory of a node with the base gives the same delta.
        let inv_path = out.path().join("inventory.json");
        let inv = catalog(&[&base_path]).inventory();
        assert_eq!(inv.bundles[0].id, base_id);
        std::fs::write(&inv_path, serde_json::to_vec_pretty(&inv).unwrap()).unwrap();
        let again = out.path().join("again").join("release-2.tar.zst");
        std::fs::create_dir(again.parent().unwrap()).unwrap();
        let mut o = opts(r.src.path(), &again, &refs);
        o.base_inventories = vec![inv_path.clone()];
        let inv_sum = pack(&o, &|_, _| {}).unwrap();
        assert_eq!(inv_sum.bundle, delta_sum.bundle);
        assert_eq!(inv_sum.left_out.bases, delta_sum.left_out.bases);
        assert_eq!(
            std::fs::read(&again).unwrap(),
            std::fs::read(&delta_path).unwrap(),
            "same bytes either way"
        );
        let parsed = Inventory::parse("x", &std::fs::read_to_string(&inv_path).unwrap()).unwrap();
        assert_eq!(parsed, inv);
    }

    #[test]
    fn bad_bases_are_named() {
        let r = releases();
        let out = tempfile::tempdir().unwrap();
        let mut o = opts(
            r.src.path(),
            &out.path().join("d.tar.zst"),
            &["example.com/app:2"],
        );
        o.bases = vec![out.path().join("nope.tar.zst")];
        let err = pack(&o, &|_, _| {}).unwrap_err().to_string();
        assert!(
            err.contains("nope.tar.zst") && err.contains("no such file"),
            "{err}"
        );
        let junk = write(out.path(), "junk.json", b"{\"kind\":\"other\"}");
        let mut o = opts(
            r.src.path(),
            &out.path().join("d.tar.zst"),
            &["example.com/app:2"],
        );
        o.base_inventories = vec![junk];
        let err = pack(&o, &|_, _| {}).unwrap_err().to_string();
        assert!(
            err.contains("junk.json") && err.contains("kind is"),
            "{err}"
        );
        assert!(!out.path().join("d.tar.zst").exists());
    }
}

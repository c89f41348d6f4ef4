//! `airgap-snapshotter images`: what the archives hold, one row per image name.

use std::path::PathBuf;
use std::process::ExitCode;

use airgap_snapshotter::catalog::{Completeness, ImageInfo};
use anyhow::Result;
use serde::Serialize;

use super::{human_bytes, open_catalog};

#[derive(clap::Args, Debug)]
pub struct ImagesArgs {
    /// A directory of archives (repeatable) [default: the config file's
    /// `archives`, else /var/lib/airgap-snapshotter/archives].
    #[arg(long = "archives", value_name = "DIR")]
    pub archives: Vec<PathBuf>,
    /// The daemon's config file, for its `archives`
    /// [default: /etc/airgap-snapshotter/config.toml when it exists].
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Print a JSON array instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Print what the archives hold, by bundle (ID, name, every blob
    /// digest), as JSON: the file `pack --base-inventory` reads to pack a
    /// delta of exactly what this node lacks.
    #[arg(long, conflicts_with = "json")]
    pub inventory: bool,
    /// The daemon's root: reuse (and update) the indexes it persisted there,
    /// instead of indexing every archive again.
    #[arg(long, value_name = "DIR")]
    pub root: Option<PathBuf>,
}

/// One row of `images --json`.
#[derive(Serialize)]
struct ImageRow<'a> {
    #[serde(rename = "ref")]
    reference: &'a str,
    digest: String,
    media_type: &'a str,
    platforms: &'a [String],
    archive: String,
    size: u64,
    synthesized: bool,
    /// The archive's bundle ID.
    bundle: String,
    /// True when every blob of the image is in some archive.
    complete: bool,
    /// Why not: the blobs in no archive, per platform manifest, and the
    /// bases of a delta that are not on this node.
    #[serde(skip_serializing_if = "Option::is_none")]
    incomplete: Option<Completeness>,
    /// Every platform manifest present, with its layers bottom first.
    manifests: Vec<ManifestRow>,
}

#[derive(Serialize)]
struct ManifestRow {
    digest: String,
    platform: String,
    layers: Vec<LayerRow>,
}

#[derive(Serialize)]
struct LayerRow {
    digest: String,
    diff_id: String,
    chain_id: String,
    size: u64,
    /// False when the archive lacks the blob (another archive, or a
    /// registry, has to supply it).
    present: bool,
}

pub fn run(args: ImagesArgs) -> Result<ExitCode> {
    let archives = super::archive_dirs(args.archives, args.config.as_deref())?;
    let catalog = open_catalog(archives, args.root)?;
    if args.inventory {
        for (path, reason) in catalog.broken() {
            eprintln!("{}: {reason}", path.display());
        }
        println!("{}", serde_json::to_string_pretty(&catalog.inventory())?);
        return Ok(ExitCode::SUCCESS);
    }
    for (path, reason) in catalog.broken() {
        eprintln!("{}: {reason}", path.display());
    }
    for archive in catalog.archives() {
        for problem in &archive.index.problems {
            eprintln!("{}: {problem}", archive.path().display());
        }
    }
    let images = catalog.images();
    let incomplete = catalog.incomplete_images();
    let bundles: std::collections::HashMap<PathBuf, String> = catalog
        .archives()
        .iter()
        .map(|a| (a.path().to_path_buf(), a.index.bundle_id().to_string()))
        .collect();
    if args.json {
        let archives = catalog.archives();
        let manifest_rows = |i: &ImageInfo| -> Vec<ManifestRow> {
            let Some(a) = archives.iter().find(|a| a.path() == i.archive) else {
                return Vec::new();
            };
            let idx = &a.index;
            i.entry
                .manifests
                .iter()
                .filter_map(|d| idx.manifests.iter().find(|m| m.digest == *d))
                .map(|m| ManifestRow {
                    digest: m.digest.to_string(),
                    platform: m.platform.clone(),
                    layers: m
                        .chain
                        .iter()
                        .filter_map(|c| idx.layers.iter().find(|l| l.chain_id == *c))
                        .map(|l| LayerRow {
                            digest: l.digest.to_string(),
                            diff_id: l.diff_id.to_string(),
                            chain_id: l.chain_id.to_string(),
                            size: l.size,
                            present: l.present,
                        })
                        .collect(),
                })
                .collect()
        };
        let rows: Vec<ImageRow> = images
            .iter()
            .map(|i| ImageRow {
                manifests: manifest_rows(i),
                reference: &i.entry.name,
                digest: i.entry.digest.to_string(),
                media_type: &i.entry.media_type,
                platforms: &i.entry.platforms,
                archive: i.archive.display().to_string(),
                size: i.entry.size,
                synthesized: i.entry.synthesized,
                bundle: bundles.get(&i.archive).cloned().unwrap_or_default(),
                complete: !incomplete.contains_key(&i.entry.name),
                incomplete: incomplete.get(&i.entry.name).map(|(_, c)| c.clone()),
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        println!(
            "{:<50} {:<19} {:<28} {:>10}  ARCHIVE",
            "REF", "DIGEST", "PLATFORMS", "SIZE"
        );
        for i in &images {
            let digest = i.entry.digest.to_string();
            let marker = match (i.entry.synthesized, incomplete.contains_key(&i.entry.name)) {
                (_, true) => "!",
                (true, false) => "*",
                (false, false) => "",
            };
            println!(
                "{:<50} {:<19} {:<28} {:>10}  {}",
                i.entry.name,
                format!("{}{marker}", &digest[..19]),
                i.entry.platforms.join(","),
                human_bytes(i.entry.size),
                i.archive.display()
            );
        }
        if images.iter().any(|i| i.entry.synthesized) {
            println!("* manifest synthesized from a docker-save archive (registry digest unknown)");
        }
        for (name, (_, c)) in &incomplete {
            println!("! {name}: {}", c.reason());
        }
    }
    Ok(ExitCode::SUCCESS)
}

//! The operator commands that read the catalog: `images` and `verify`.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use serde::Serialize;

use crate::catalog::verify::verify_archive;
use crate::catalog::{Catalog, CatalogOptions, FileKey};

pub const DEFAULT_ARCHIVES: &str = "/var/lib/airgap-snapshotter/archives";

#[derive(clap::Args, Debug)]
pub struct ImagesArgs {
    /// A directory of archives (repeatable).
    #[arg(long = "archives", value_name = "DIR", default_value = DEFAULT_ARCHIVES)]
    pub archives: Vec<PathBuf>,
    /// Print a JSON array instead of a table.
    #[arg(long)]
    pub json: bool,
    /// The daemon's root: reuse (and update) the indexes it persisted there,
    /// instead of indexing every archive again.
    #[arg(long, value_name = "DIR")]
    pub root: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
pub struct VerifyArgs {
    /// A directory of archives (repeatable); used when no ARCHIVE is given.
    #[arg(long = "archives", value_name = "DIR", default_value = DEFAULT_ARCHIVES)]
    pub archives: Vec<PathBuf>,
    /// Archive files to check (default: every archive in the directories).
    #[arg(value_name = "ARCHIVE")]
    pub files: Vec<PathBuf>,
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
    /// False when the archive lacks the blob (it would come from a registry).
    present: bool,
}

/// Opens a catalog for a one-shot command: every file is indexed now, none
/// is waited for.
fn open_catalog(
    dirs: Vec<PathBuf>,
    root: Option<PathBuf>,
) -> anyhow::Result<std::sync::Arc<Catalog>> {
    Catalog::open(CatalogOptions {
        dirs,
        state_dir: root.map(|r| r.join("catalog")),
        settle: Duration::ZERO,
        cache_bytes: 0,
        ..Default::default()
    })
    .context("opening the archive catalog")
}

pub fn images(args: ImagesArgs) -> anyhow::Result<ExitCode> {
    let catalog = open_catalog(args.archives, args.root)?;
    for (path, reason) in catalog.broken() {
        eprintln!("{}: {reason}", path.display());
    }
    for archive in catalog.archives() {
        for problem in &archive.index.problems {
            eprintln!("{}: {problem}", archive.path().display());
        }
    }
    let images = catalog.images();
    if args.json {
        let archives = catalog.archives();
        let manifest_rows = |i: &crate::catalog::ImageInfo| -> Vec<ManifestRow> {
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
            let marker = if i.entry.synthesized { "*" } else { "" };
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
    }
    Ok(ExitCode::SUCCESS)
}

pub fn verify(args: VerifyArgs) -> anyhow::Result<ExitCode> {
    let mut archives = Vec::new();
    let mut failed = 0usize;
    if args.files.is_empty() {
        let catalog = open_catalog(args.archives, None)?;
        for (path, reason) in catalog.broken() {
            println!("FAIL {}: {reason}", path.display());
            failed += 1;
        }
        archives.extend(catalog.archives().iter().map(|a| a.index.clone()));
    } else {
        for path in &args.files {
            let result = std::fs::File::open(path)
                .and_then(|f| Ok((f.metadata()?, f)))
                .map_err(|e| e.to_string())
                .and_then(|(meta, f)| {
                    crate::catalog::index::index_archive(path, &f, FileKey::of(&meta))
                        .map_err(|e| e.to_string())
                });
            match result {
                Ok(index) => archives.push(index),
                Err(e) => {
                    println!("FAIL {}: {e}", path.display());
                    failed += 1;
                }
            }
        }
    }
    let tty = std::io::stderr().is_terminal();
    for index in &archives {
        let file = std::fs::File::open(&index.path)
            .with_context(|| format!("opening {}", index.path.display()))?;
        let bar = if tty {
            indicatif::ProgressBar::new(index.stream_len)
        } else {
            indicatif::ProgressBar::hidden()
        };
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
            )
            .expect("static template")
            .progress_chars("=> "),
        );
        bar.set_message(index.path.display().to_string());
        let failures = verify_archive(index, &file, &mut |pos| bar.set_position(pos));
        bar.finish_and_clear();
        if failures.is_empty() {
            println!(
                "ok   {} ({} blobs, {} images)",
                index.path.display(),
                index.blobs.len(),
                index.images.len()
            );
        }
        for f in &failures {
            failed += 1;
            match f.digest {
                Some(d) => println!("FAIL {}: {d}: {}", index.path.display(), f.reason),
                None => println!("FAIL {}: {}", index.path.display(), f.reason),
            }
        }
    }
    if archives.is_empty() && failed == 0 {
        println!("no archives found");
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[derive(clap::Args, Debug)]
pub struct PackArgs {
    /// The archive to write (an OCI layout tar in seekable zstd).
    #[arg(short, long, value_name = "OUT.tar.zst")]
    pub output: PathBuf,
    /// Keep only these platforms (`os/arch[/variant]`, repeatable; default all).
    #[arg(long, value_name = "PLATFORM")]
    pub platform: Vec<String>,
    /// A file of image references, one per line, `#` comments, `[group]` sections.
    #[arg(long, value_name = "LIST")]
    pub images_from: Option<PathBuf>,
    /// With --images-from: only these sections (repeatable; default all).
    #[arg(long, value_name = "GROUP")]
    pub group: Vec<String>,
    /// Where the images are: archives, directories of archives, OCI layout
    /// directories, or a registry (`https://host[:port]`, anonymous; asked
    /// only for what the other sources lack) (repeatable).
    #[arg(
        long = "from",
        value_name = "SOURCE",
        required_unless_present = "config"
    )]
    pub from: Vec<PathBuf>,
    /// zstd compression level.
    #[arg(long, default_value_t = 3)]
    pub level: i32,
    /// The daemon's config file: its `[[upstream]]` registries (with their
    /// credentials and CAs) are asked for what the other sources lack.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Largest zstd frame in MiB (a blob always starts a new frame).
    #[arg(long, default_value_t = 4, value_name = "MIB")]
    pub frame_mib: usize,
    /// Image references to pack.
    #[arg(value_name = "REF")]
    pub refs: Vec<String>,
}

/// A `--from` that names a registry (`http://` or `https://`) rather than a path.
fn is_registry(source: &std::path::Path) -> bool {
    let s = source.to_string_lossy();
    s.starts_with("https://") || s.starts_with("http://")
}

pub fn pack(args: PackArgs) -> anyhow::Result<ExitCode> {
    let mut refs = args.refs;
    if let Some(list) = &args.images_from {
        let text = std::fs::read_to_string(list)
            .with_context(|| format!("reading image list {}", list.display()))?;
        refs.extend(crate::pack::parse_image_list(&text, &args.group));
    }
    // The daemon's [[upstream]] tables (credentials, CA, path prefix) first,
    // then registries named on the command line, anonymously.
    let mut registries = match &args.config {
        Some(file) => crate::config::Config::from_file(file)?.upstream,
        None => Vec::new(),
    };
    registries.extend(args.from.iter().filter(|s| is_registry(s)).map(|s| {
        crate::config::UpstreamConfig {
            registry: "*".into(),
            endpoint: s.to_string_lossy().trim_end_matches('/').to_string(),
            path_prefix: None,
            username: None,
            password: None,
            password_file: None,
            ca_file: None,
            insecure_skip_verify: false,
        }
    }));
    let opts = crate::pack::PackOptions {
        output: args.output,
        platforms: args.platform,
        refs,
        sources: args
            .from
            .iter()
            .filter(|s| !is_registry(s))
            .cloned()
            .collect(),
        registries,
        level: args.level,
        frame_size: args.frame_mib.clamp(1, 256) << 20,
        threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
    };
    let bar = if std::io::stderr().is_terminal() {
        indicatif::ProgressBar::new(0)
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "packing [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}",
        )
        .expect("static template")
        .progress_chars("=> "),
    );
    let summary = crate::pack::pack(&opts, &|done, total| {
        bar.set_length(total);
        bar.set_position(done);
    });
    bar.finish_and_clear();
    let summary = summary?;
    println!("wrote {}", opts.output.display());
    for (name, platforms) in &summary.images {
        println!("  {name}  {}", platforms.join(","));
    }
    println!(
        "{} images, {} blobs, {} in, {} out",
        summary.images.len(),
        summary.blobs,
        human_bytes(summary.bytes_in),
        human_bytes(summary.bytes_out)
    );
    Ok(ExitCode::SUCCESS)
}

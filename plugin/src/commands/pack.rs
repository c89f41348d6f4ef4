//! `airgap-snapshotter pack`: a seekable airgap archive of a list of images.

use std::path::PathBuf;
use std::process::ExitCode;

use airgap_snapshotter::config::{Config, UpstreamConfig};
use anyhow::{Context, Result};

use super::{human_bytes, progress_bar};

#[derive(clap::Args, Debug)]
pub struct PackArgs {
    /// The archive to write (an OCI layout tar in seekable zstd).
    #[arg(short, long, value_name = "OUT.tar.zst")]
    pub output: PathBuf,
    /// Keep only these platforms (`os/arch[/variant]`, repeatable; default all).
    #[arg(long, value_name = "OS/ARCH[/VARIANT]")]
    pub platform: Vec<String>,
    /// A file of image references, one per line, `#` comments, `[group]` sections.
    #[arg(long, value_name = "LIST")]
    pub images_from: Option<PathBuf>,
    /// With --images-from: only these sections (repeatable; default all).
    #[arg(long, value_name = "NAME")]
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
    /// credentials and CAs) are asked for what the other sources lack
    /// [default: /etc/airgap-snapshotter/config.toml when it exists].
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Largest zstd frame in MiB (a blob always starts a new frame).
    #[arg(long, default_value_t = 4, value_name = "MIB")]
    pub frame_mib: usize,
    /// Sign every image packed with this key (PEM, ECDSA P-256: PKCS#8 or
    /// SEC1, or cosign's encrypted cosign.key with COSIGN_PASSWORD): cosign
    /// signatures stored in the archive, checked on the node against
    /// `[verify] keys` and by `cosign verify --key`.
    #[arg(long, value_name = "KEY.pem")]
    pub sign: Option<PathBuf>,
    /// Pack a delta: leave out the layers this archive (or directory of
    /// archives) already holds, and record it as the base (repeatable).
    #[arg(long, value_name = "ARCHIVE")]
    pub base: Vec<PathBuf>,
    /// Pack a delta against what a node holds: the output of
    /// `airgap-snapshotter images --inventory` there (repeatable).
    #[arg(long, value_name = "FILE")]
    pub base_inventory: Vec<PathBuf>,
    /// Image references to pack.
    #[arg(value_name = "REF")]
    pub refs: Vec<String>,
}

/// A `--from` that names a registry (`http://` or `https://`) rather than a path.
fn is_registry(source: &std::path::Path) -> bool {
    let s = source.to_string_lossy();
    s.starts_with("https://") || s.starts_with("http://")
}

pub fn run(args: PackArgs) -> Result<ExitCode> {
    let mut refs = args.refs;
    if let Some(list) = &args.images_from {
        let text = std::fs::read_to_string(list)
            .with_context(|| format!("reading image list {}", list.display()))?;
        refs.extend(airgap_snapshotter::pack::parse_image_list(
            &text,
            &args.group,
        ));
    }
    // The daemon's [[upstream]] tables (credentials, CA, path prefix) first,
    // then registries named on the command line, anonymously.
    let file = airgap_snapshotter::config::config_file(
        args.config.as_deref(),
        &airgap_snapshotter::config::DefaultFiles::system(),
    );
    let mut registries = match &file {
        Some(file) => Config::from_file(file)?.upstream,
        None => Vec::new(),
    };
    registries.extend(
        args.from
            .iter()
            .filter(|s| is_registry(s))
            .map(|s| UpstreamConfig::anonymous("*", s.to_string_lossy().trim_end_matches('/'))),
    );
    let sign = match &args.sign {
        Some(key) => Some(airgap_snapshotter::trust::Signer::from_file(key)?),
        None => None,
    };
    let opts = airgap_snapshotter::pack::PackOptions {
        sign,
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
        bases: args.base,
        base_inventories: args.base_inventory,
    };
    let bar = progress_bar(
        0,
        "packing [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}",
    );
    let summary = airgap_snapshotter::pack::pack(&opts, &|done, total| {
        bar.set_length(total);
        bar.set_position(done);
    });
    bar.finish_and_clear();
    let summary = summary?;
    println!("wrote {}", opts.output.display());
    for (name, platforms) in &summary.images {
        println!("  {name}  {}", platforms.join(","));
    }
    if let Some(signer) = &opts.sign {
        println!(
            "signed {} images with key {}",
            summary.signatures,
            signer.key_id()
        );
    }
    println!(
        "{} images, {} blobs, {} in, {} out",
        summary.images.len(),
        summary.blobs,
        human_bytes(summary.bytes_in),
        human_bytes(summary.bytes_out)
    );
    if let Some(id) = summary.bundle {
        println!("bundle {id}");
    }
    let left = &summary.left_out;
    if !opts.bases.is_empty() || !opts.base_inventories.is_empty() {
        println!(
            "delta: {} blobs ({}) left out, held by its base(s):",
            left.blobs,
            human_bytes(left.bytes)
        );
        for base in &left.bases {
            println!("  extends {base}");
        }
        if left.bases.is_empty() {
            println!(
                "  none: no base holds any of these layers; the archive is complete on its own"
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

//! `airgap-snapshotter verify`: every digest and diffID of the archives, checked.

use std::path::PathBuf;
use std::process::ExitCode;

use airgap_snapshotter::catalog::verify::verify_archive;
use airgap_snapshotter::catalog::FileKey;
use airgap_snapshotter::config::DEFAULT_ARCHIVES;
use anyhow::{Context, Result};

use super::{open_catalog, progress_bar};

#[derive(clap::Args, Debug)]
pub struct VerifyArgs {
    /// A directory of archives (repeatable); used when no ARCHIVE is given.
    #[arg(long = "archives", value_name = "DIR", default_value = DEFAULT_ARCHIVES)]
    pub archives: Vec<PathBuf>,
    /// Archive files to check (default: every archive in the directories).
    #[arg(value_name = "ARCHIVE")]
    pub files: Vec<PathBuf>,
}

pub fn run(args: VerifyArgs) -> Result<ExitCode> {
    let mut archives = Vec::new();
    let mut failed = 0usize;
    let mut incomplete = Vec::new();
    if args.files.is_empty() {
        let catalog = open_catalog(args.archives, None)?;
        for (path, reason) in catalog.broken() {
            println!("FAIL {}: {reason}", path.display());
            failed += 1;
        }
        // Every blob of every image must be in some archive (a delta
        // needs its base).
        incomplete.extend(
            catalog
                .incomplete_images()
                .into_iter()
                .map(|(name, (info, c))| (name, info.archive, c.reason())),
        );
        archives.extend(catalog.archives().iter().map(|a| a.index.clone()));
    } else {
        for path in &args.files {
            let result = std::fs::File::open(path)
                .and_then(|f| Ok((f.metadata()?, f)))
                .map_err(|e| e.to_string())
                .and_then(|(meta, f)| {
                    airgap_snapshotter::catalog::index::index_archive(path, &f, FileKey::of(&meta))
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
    for index in &archives {
        let file = std::fs::File::open(&index.path)
            .with_context(|| format!("opening {}", index.path.display()))?;
        let bar = progress_bar(
            index.stream_len,
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
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
    for (name, archive, reason) in &incomplete {
        failed += 1;
        println!("FAIL {}: image {name}: {reason}", archive.display());
    }
    if !args.files.is_empty() {
        for index in archives.iter().filter(|i| !i.bundle.bases.is_empty()) {
            for base in &index.bundle.bases {
                println!(
                    "note {}: a delta extending {base}: its images are complete only beside it",
                    index.path.display()
                );
            }
        }
    }
    if archives.is_empty() && failed == 0 {
        println!("no archives found");
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(crate::exit::PROBLEMS)
    })
}

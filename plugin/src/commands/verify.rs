//! `airgap-snapshotter verify`: every digest and diffID of the archives, checked.

use std::path::PathBuf;
use std::process::ExitCode;

use airgap_snapshotter::catalog::index::{index_archive, IndexError};
use airgap_snapshotter::catalog::verify::verify_archive;
use airgap_snapshotter::catalog::FileKey;
use anyhow::{Context, Result};
use serde::Serialize;

use super::{open_catalog, progress_bar};

#[derive(clap::Args, Debug)]
pub struct VerifyArgs {
    /// A directory of archives (repeatable); used when no ARCHIVE is given
    /// [default: the config file's `archives`, else
    /// /var/lib/airgap-snapshotter/archives].
    #[arg(long = "archives", value_name = "DIR")]
    pub archives: Vec<PathBuf>,
    /// The daemon's config file, for its `archives`
    /// [default: /etc/airgap-snapshotter/config.toml when it exists].
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Archive files to check (default: every archive in the directories).
    #[arg(value_name = "ARCHIVE")]
    pub files: Vec<PathBuf>,
    /// Print one JSON object (see docs/reference.md) instead of lines.
    #[arg(long)]
    pub json: bool,
}

/// One failure of `verify --json`.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct FailureJson {
    /// The blob or layer, when the failure is about one.
    pub digest: Option<String>,
    pub reason: String,
}

/// One archive of `verify --json`.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct ArchiveJson {
    pub path: String,
    pub ok: bool,
    /// Blobs and images indexed (0 when the archive could not be read).
    pub blobs: usize,
    pub images: usize,
    pub failures: Vec<FailureJson>,
}

/// `verify --json`: the field names are stable (docs/reference.md).
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct VerifyJson {
    /// True when every archive holds (exit status 0).
    pub ok: bool,
    pub archives: Vec<ArchiveJson>,
    /// Images lacking a blob no archive holds (a delta without its base).
    pub incomplete: Vec<IncompleteJson>,
}

/// An incomplete image of `verify --json`.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct IncompleteJson {
    pub image: String,
    pub archive: String,
    pub reason: String,
}

impl VerifyJson {
    fn push(
        &mut self,
        path: &std::path::Path,
        blobs: usize,
        images: usize,
        failures: Vec<FailureJson>,
    ) {
        self.ok &= failures.is_empty();
        self.archives.push(ArchiveJson {
            path: path.display().to_string(),
            ok: failures.is_empty(),
            blobs,
            images,
            failures,
        });
    }
}

pub fn run(args: VerifyArgs) -> Result<ExitCode> {
    let mut archives = Vec::new();
    let mut report = VerifyJson {
        ok: true,
        archives: Vec::new(),
        incomplete: Vec::new(),
    };
    let unreadable = |report: &mut VerifyJson,
                      path: &std::path::Path,
                      digest: Option<String>,
                      reason: String| {
        if !args.json {
            println!("FAIL {}: {reason}", path.display());
        }
        report.push(path, 0, 0, vec![FailureJson { digest, reason }]);
    };
    if args.files.is_empty() {
        let dirs = super::archive_dirs(args.archives.clone(), args.config.as_deref())?;
        let catalog = open_catalog(dirs, None)?;
        for (path, reason) in catalog.broken() {
            unreadable(&mut report, &path, None, reason.to_string());
        }
        // Every blob of every image must be in some archive (a delta
        // needs its base).
        for (name, (info, c)) in catalog.incomplete_images() {
            report.ok = false;
            report.incomplete.push(IncompleteJson {
                image: name,
                archive: info.archive.display().to_string(),
                reason: c.reason(),
            });
        }
        archives.extend(catalog.archives().iter().map(|a| a.index.clone()));
    } else {
        for path in &args.files {
            let result = std::fs::File::open(path)
                .and_then(|f| Ok((f.metadata()?, f)))
                .map_err(|e| (None, e.to_string()))
                .and_then(|(meta, f)| {
                    index_archive(path, &f, FileKey::of(&meta)).map_err(|e| {
                        // A blob read while indexing (a manifest, a config,
                        // a layer for its diffID) is checked there already.
                        let digest = match &e {
                            IndexError::DigestMismatch { digest, .. } => Some(digest.to_string()),
                            _ => None,
                        };
                        (digest, e.to_string())
                    })
                });
            match result {
                Ok(index) => archives.push(index),
                Err((digest, reason)) => unreadable(&mut report, path, digest, reason),
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
        if !args.json {
            if failures.is_empty() {
                println!(
                    "ok   {} ({} blobs, {} images)",
                    index.path.display(),
                    index.blobs.len(),
                    index.images.len()
                );
            }
            for f in &failures {
                match f.digest {
                    Some(d) => println!("FAIL {}: {d}: {}", index.path.display(), f.reason),
                    None => println!("FAIL {}: {}", index.path.display(), f.reason),
                }
            }
        }
        report.push(
            &index.path,
            index.blobs.len(),
            index.images.len(),
            failures
                .iter()
                .map(|f| FailureJson {
                    digest: f.digest.map(|d| d.to_string()),
                    reason: f.reason.clone(),
                })
                .collect(),
        );
    }
    if !args.json {
        for i in &report.incomplete {
            println!("FAIL {}: image {}: {}", i.archive, i.image, i.reason);
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
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else if report.archives.is_empty() && report.incomplete.is_empty() {
        println!("no archives found");
    }
    Ok(if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(crate::exit::PROBLEMS)
    })
}

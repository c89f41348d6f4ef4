//! The subcommands' bodies, one module each; `main.rs` parses the arguments
//! and dispatches here. They print for an operator and return an exit code;
//! everything they build on is in the library.

pub mod config;
pub mod doctor;
pub mod images;
pub mod import;
pub mod pack;
pub mod serve;
pub mod verify;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use airgap_snapshotter::catalog::{Catalog, CatalogOptions};
use airgap_snapshotter::config::{Config, ServeArgs};
use anyhow::{Context, Result};

/// The archive directories of a command that reads no other setting:
/// `--archives` when given, else the config file's (`--config FILE`, else
/// the default file when it exists), else the default directory.
fn archive_dirs(flags: Vec<PathBuf>, config: Option<&std::path::Path>) -> Result<Vec<PathBuf>> {
    if !flags.is_empty() {
        return Ok(flags);
    }
    let config = Config::load(&ServeArgs {
        config: config.map(std::path::Path::to_path_buf),
        ..Default::default()
    })
    .context("loading the daemon's configuration")?;
    Ok(config.archives)
}

/// Opens a catalog for a one-shot command: every file is indexed now, none
/// is waited for.
fn open_catalog(dirs: Vec<PathBuf>, root: Option<PathBuf>) -> Result<Arc<Catalog>> {
    Catalog::open(CatalogOptions {
        dirs,
        state_dir: root.map(|r| r.join("catalog")),
        settle: Duration::ZERO,
        cache_bytes: 0,
        ..Default::default()
    })
    .context("opening the archive catalog")
}

/// A progress bar on stderr when it is a terminal, hidden otherwise.
fn progress_bar(len: u64, template: &'static str) -> indicatif::ProgressBar {
    let bar = if std::io::stderr().is_terminal() {
        indicatif::ProgressBar::new(len)
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(template)
            .expect("static template")
            .progress_chars("=> "),
    );
    bar
}

pub(crate) fn human_bytes(n: u64) -> String {
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

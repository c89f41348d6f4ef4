//! `airgap-snapshotter import`: one registration pass of the archives'
//! images into a running containerd, through a running daemon (the one
//! containerd knows as its proxy snapshotter), then exit. The daemon does
//! the same in the background; this is for scripts, and for sites that run
//! it with `import.mode = "off"`.

use std::process::ExitCode;
use std::sync::Arc;

use airgap_snapshotter::config::{Config, ImportMode, ServeArgs};
use airgap_snapshotter::import::client::Containerd;
use airgap_snapshotter::import::{ImportOptions, Importer};
use anyhow::{bail, Context, Result};

use super::open_catalog;

#[derive(clap::Args, Debug)]
pub struct ImportArgs {
    /// The daemon's flags and config file: `--archives`, `--root`,
    /// `--containerd-address`, `--import-namespace`, `--import-mode`...
    #[command(flatten)]
    pub serve: ServeArgs,
}

pub fn run(args: ImportArgs) -> Result<ExitCode> {
    let config = Config::load(&args.serve)?;
    let mut opts = ImportOptions::from_config(&config);
    // An archive copied in just now may not be indexed by the daemon yet.
    opts.declined_wait = std::time::Duration::from_secs(30);
    if opts.mode == ImportMode::Off {
        // The config may turn the daemon's background pass off; asking for
        // one pass by hand still means one, lazily unless told otherwise.
        opts.mode = args.serve.import_mode.unwrap_or(ImportMode::Lazy);
        if opts.mode == ImportMode::Off {
            bail!("--import-mode off: nothing to do");
        }
    }
    let trust = airgap_snapshotter::trust::Trust::from_config(&config.verify)?;
    let catalog = open_catalog(config.archives.clone(), Some(config.root.clone()))?;
    for (path, reason) in catalog.broken() {
        eprintln!("warning: {} is not usable: {reason}", path.display());
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("start the async runtime")?;
    let report = runtime.block_on(async {
        let client = Containerd::connect(&opts.address).await?;
        Importer::new(Arc::clone(&catalog), opts)
            .with_trust(trust)
            .pass(&client)
            .await
    })?;
    for (image, why) in &report.skipped {
        println!("skipped     {image}: {why}");
    }
    for image in &report.pulled {
        println!("pulled      {image} (listed, in no archive)");
    }
    for (image, why) in &report.pull_failed {
        println!("not pulled  {image} (listed, in no archive): {why}");
    }
    for ns in &report.namespaces {
        for image in &ns.registered {
            println!("registered  {image} (namespace {})", ns.namespace);
        }
        for image in &ns.removed {
            println!("removed     {image} (namespace {})", ns.namespace);
        }
        for record in &ns.left_alone {
            println!(
                "left alone  {record} (namespace {}): not created by the importer",
                ns.namespace
            );
        }
        for (image, why) in &ns.failed {
            println!("failed      {image} (namespace {}): {why}", ns.namespace);
        }
        println!(
            "namespace {}: {} registered, {} already registered, {} removed, {} failed, \
             {} records left alone",
            ns.namespace,
            ns.registered.len(),
            ns.unchanged,
            ns.removed.len(),
            ns.failed.len(),
            ns.left_alone.len()
        );
    }
    Ok(if report.failed() > 0 {
        ExitCode::from(crate::exit::PROBLEMS)
    } else {
        ExitCode::SUCCESS
    })
}

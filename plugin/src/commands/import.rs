//! `airgap-snapshotter import`: one registration pass of the archives'
//! images into a running containerd, through a running daemon (the one
//! containerd knows as its proxy snapshotter), then exit. The daemon does
//! the same in the background; this is for scripts, and for sites that run
//! it with `import.mode = "off"`.

use std::process::ExitCode;
use std::sync::Arc;

use airgap_snapshotter::config::{Config, ImportMode, ServeArgs};
use airgap_snapshotter::import::client::Containerd;
use airgap_snapshotter::import::{ImportOptions, ImportReport, Importer};
use anyhow::{bail, Context, Result};
use serde::Serialize;

use super::open_catalog;

#[derive(clap::Args, Debug)]
pub struct ImportArgs {
    /// The daemon's flags and config file: `--archives`, `--root`,
    /// `--containerd-address`, `--import-namespace`, `--import-mode`...
    #[command(flatten)]
    pub serve: ServeArgs,
    /// Print one JSON object (see docs/reference.md) instead of lines.
    #[arg(long)]
    pub json: bool,
}

/// An image and why it was not registered (`import --json`).
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Why {
    pub image: String,
    pub reason: String,
}

/// One namespace of `import --json`.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct NamespaceJson {
    pub namespace: String,
    pub registered: Vec<String>,
    /// Images already registered as they should be.
    pub unchanged: usize,
    pub removed: Vec<String>,
    /// Records of those names the importer did not create.
    pub left_alone: Vec<String>,
    pub failed: Vec<Why>,
}

/// `import --json`: the field names are stable (docs/reference.md).
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct ImportJson {
    /// True when nothing failed (exit status 0).
    pub ok: bool,
    pub namespaces: Vec<NamespaceJson>,
    /// Archived images not for this node.
    pub skipped: Vec<Why>,
    /// Listed references in no archive, pulled.
    pub pulled: Vec<String>,
    pub pull_failed: Vec<Why>,
}

impl ImportJson {
    pub fn of(report: &ImportReport) -> Self {
        let why = |(image, reason): (&String, String)| Why {
            image: image.clone(),
            reason,
        };
        ImportJson {
            ok: report.failed() == 0,
            namespaces: report
                .namespaces
                .iter()
                .map(|ns| NamespaceJson {
                    namespace: ns.namespace.clone(),
                    registered: ns.registered.clone(),
                    unchanged: ns.unchanged,
                    removed: ns.removed.clone(),
                    left_alone: ns.left_alone.clone(),
                    failed: ns.failed.iter().map(|(i, r)| why((i, r.clone()))).collect(),
                })
                .collect(),
            skipped: report
                .skipped
                .iter()
                .map(|(i, e)| why((i, e.to_string())))
                .collect(),
            pulled: report.pulled.clone(),
            pull_failed: report
                .pull_failed
                .iter()
                .map(|(i, r)| why((i, r.clone())))
                .collect(),
        }
    }
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
    let code = if report.failed() > 0 {
        ExitCode::from(crate::exit::PROBLEMS)
    } else {
        ExitCode::SUCCESS
    };
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&ImportJson::of(&report))?
        );
        return Ok(code);
    }
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
    Ok(code)
}

#[cfg(test)]
mod tests {
    use super::*;
    use airgap_snapshotter::import::NamespaceReport;

    #[test]
    fn the_json_names_every_outcome() {
        let report = ImportReport {
            namespaces: vec![NamespaceReport {
                namespace: "k8s.io".into(),
                registered: vec!["docker.io/library/a:1".into()],
                unchanged: 2,
                removed: vec!["docker.io/library/old:1".into()],
                left_alone: vec!["docker.io/library/pulled:1".into()],
                failed: vec![("docker.io/library/b:1".into(), "declined".into())],
            }],
            skipped: Vec::new(),
            pulled: vec!["docker.io/library/c:1".into()],
            pull_failed: vec![("docker.io/library/d:1".into(), "404".into())],
        };
        let v = serde_json::to_value(ImportJson::of(&report)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "ok": false,
                "namespaces": [{
                    "namespace": "k8s.io",
                    "registered": ["docker.io/library/a:1"],
                    "unchanged": 2,
                    "removed": ["docker.io/library/old:1"],
                    "left_alone": ["docker.io/library/pulled:1"],
                    "failed": [{"image": "docker.io/library/b:1", "reason": "declined"}],
                }],
                "skipped": [],
                "pulled": ["docker.io/library/c:1"],
                "pull_failed": [{"image": "docker.io/library/d:1", "reason": "404"}],
            })
        );
    }
}

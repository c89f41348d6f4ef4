//! `airgap-snapshotter doctor`: is this node wired right, and which images
//! of a list does it have? Gathers the inputs (daemon config, containerd
//! config file, hosts directory, catalog, `ctr`), runs the checks of
//! `airgap_snapshotter::doctor` and prints a table or JSON. Exit status 1
//! when a check failed (or warned, with `--strict`) or a listed image is
//! missing or for another platform.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use airgap_snapshotter::catalog::reference::Reference;
use airgap_snapshotter::config::{Config, Listen, ServeArgs};
use airgap_snapshotter::doctor::{
    bundles, config_file, hosts, images, probe, rewrites, signatures, upstream, Check, ImageStatus,
    Report, Status,
};
use airgap_snapshotter::registry::Upstreams;
use airgap_snapshotter::setup::{platform, DEFAULT_CONTAINERD_CONFIG, DEFAULT_HOSTS_DIR};
use anyhow::{Context, Result};

use super::open_catalog;

#[derive(clap::Args, Debug)]
pub struct DoctorArgs {
    /// The daemon's flags, as for `serve` (`--config`, `--root`, `--socket`,
    /// `--archives`, `--mirror-listen`).
    #[command(flatten)]
    pub serve: ServeArgs,
    /// containerd's config file.
    #[arg(
        long,
        value_name = "FILE",
        default_value = DEFAULT_CONTAINERD_CONFIG
    )]
    pub containerd_config: PathBuf,
    /// The registry hosts directory [default: CRI's config_path in the
    /// containerd config, else /etc/containerd/certs.d].
    #[arg(long, value_name = "DIR")]
    pub hosts_dir: Option<PathBuf>,
    /// An image list to check (k3s/rke2 .txt, `k0s airgap list-images`
    /// output, a Kubekey manifest, or a `[group]` list as `pack` reads);
    /// repeatable.
    #[arg(long, value_name = "LIST")]
    pub images_from: Vec<PathBuf>,
    /// Only these `[group]` sections of the lists (repeatable).
    #[arg(long, value_name = "NAME")]
    pub group: Vec<String>,
    /// This node's platform [default: the machine's, e.g. linux/amd64].
    #[arg(long, value_name = "OS/ARCH[/VARIANT]")]
    pub platform: Option<String>,
    /// The `ctr` binary used to ask containerd.
    #[arg(long, value_name = "PATH", default_value = "ctr")]
    pub ctr: PathBuf,
    /// Print one JSON object `{checks, images}`.
    #[arg(long)]
    pub json: bool,
    /// Warnings count as failures for the exit status.
    #[arg(long)]
    pub strict: bool,
}

pub fn run(args: DoctorArgs) -> Result<ExitCode> {
    let config = Config::load(&args.serve).context("loading the daemon's configuration")?;
    let mut report = Report::default();
    let checks = &mut report.checks;

    checks.push(probe::daemon_socket(&config.socket));
    checks.extend(probe::containerd(&args.ctr, &config.containerd_address));

    let file = &args.containerd_config;
    let mut hosts_dir = args.hosts_dir.clone();
    match std::fs::read_to_string(file) {
        Ok(text) => {
            let found = config_file::check(file, &text, &config.socket);
            checks.extend(found.checks);
            if hosts_dir.is_none() {
                hosts_dir = found.hosts_dir;
            }
        }
        Err(e) => {
            // k3s and rke2 keep their containerd's files elsewhere.
            let k3s = ["k3s", "rke2"].into_iter().find(|p| {
                std::path::Path::new(&format!(
                    "/var/lib/rancher/{p}/agent/etc/containerd/config.toml"
                ))
                .exists()
            });
            let fix = match k3s {
                Some(p) => format!(
                    "this is a {p} node: pass --containerd-config /var/lib/rancher/{p}/agent/etc/containerd/config.toml \
                     --containerd-address /run/k3s/containerd/containerd.sock \
                     --hosts-dir /var/lib/rancher/{p}/agent/etc/containerd/certs.d"
                ),
                None => format!(
                    "`containerd config default > {0}`, then `airgap-snapshotter config --merge {0}` (or pass --containerd-config)",
                    file.display()
                ),
            };
            checks.push(Check::fail(
                "containerd config",
                format!("{}: {e}", file.display()),
                fix,
            ))
        }
    }
    let hosts_dir = hosts_dir.unwrap_or_else(|| PathBuf::from(DEFAULT_HOSTS_DIR));
    let mirror_url = match config.mirror_listen {
        Listen::Off => None,
        Listen::Addr(a) => Some(format!("http://{a}")),
    };
    checks.extend(hosts::check(&hosts_dir, mirror_url.as_deref()));
    if let Listen::Addr(a) = config.mirror_listen {
        checks.push(probe::mirror(a));
    }
    checks.push(probe::overlayfs());
    checks.push(probe::layer_mounts(
        config.layer_mounts,
        Path::new("/sys/fs/erofs/features"),
    ));
    checks.push(rewrites::check(
        airgap_snapshotter::layer::rewrites::read_status(&config.root),
        config.layer_backing,
    ));
    checks.push(probe::free_space(
        &config.root,
        config.cache_bytes.saturating_add(config.layer_store_bytes),
    ));

    for dir in config.archives.iter().filter(|d| !d.is_dir()) {
        report.checks.push(Check::warn(
            format!("archives {}", dir.display()),
            "the archives directory does not exist: no image can come from it",
            format!(
                "`mkdir -p {}` and put the archives there, or pass the right --archives",
                dir.display()
            ),
        ));
    }
    let catalog = open_catalog(config.archives.clone(), Some(config.root.clone()))?;
    let problems: Vec<(PathBuf, String)> = catalog
        .archives()
        .iter()
        .flat_map(|a| {
            a.index
                .problems
                .iter()
                .map(|p| (a.path().to_path_buf(), p.clone()))
                .collect::<Vec<_>>()
        })
        .collect();
    let all_images = catalog.images();
    report.checks.extend(images::archives_check(
        &catalog.broken(),
        &problems,
        catalog.archives().len(),
        all_images.len(),
    ));

    // Signed bundles: every archived image against the [verify] keys.
    match airgap_snapshotter::trust::Trust::from_config(&config.verify) {
        Ok(trust) => report.checks.extend(signatures::signatures_check(
            trust.require(),
            &trust.survey(&catalog),
        )),
        Err(e) => report.checks.push(Check::fail(
            "verify keys",
            e.to_string(),
            "fix [verify] keys: PEM public keys (-----BEGIN PUBLIC KEY-----, ECDSA P-256)",
        )),
    }
    let incomplete = catalog.incomplete_images();
    report.checks.extend(bundles::check(
        &catalog.absent_bases(),
        &incomplete
            .iter()
            .map(|(name, (info, c))| (name.clone(), info.archive.clone(), c.reason()))
            .collect::<Vec<_>>(),
    ));

    let platform = args.platform.clone().unwrap_or_else(platform);
    for list in &args.images_from {
        let text =
            std::fs::read_to_string(list).with_context(|| format!("read {}", list.display()))?;
        let refs = images::read_list(&text, &args.group);
        let mut found = images::classify(&refs, &all_images, &platform);
        for i in found
            .iter_mut()
            .filter(|i| i.status == ImageStatus::Present)
        {
            let info = all_images
                .iter()
                .find(|a| Some(a.entry.digest.to_string()) == i.digest);
            if info.is_some_and(|a| !catalog.completeness_for(a, &platform).is_complete()) {
                i.status = ImageStatus::Incomplete;
            }
        }
        report.images.extend(found);
    }

    // The upstreams: each pinged; listed images no archive holds are
    // looked up there (`upstream` rather than `missing`).
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    match Upstreams::new(&config.upstream) {
        Err(e) => report.checks.push(Check::fail(
            "upstream config",
            e.to_string(),
            "fix the [[upstream]] tables of the daemon's config (password_file, ca_file)",
        )),
        Ok(ups) => {
            for c in &config.upstream {
                if let Some(u) = ups.for_registry(&c.registry) {
                    let result = runtime.block_on(u.ping());
                    report
                        .checks
                        .push(upstream::ping_check(u.registry(), u.endpoint(), &result));
                }
            }
            for i in report
                .images
                .iter_mut()
                .filter(|i| i.status == ImageStatus::Missing)
            {
                let Ok(r) = Reference::parse(&i.reference) else {
                    continue;
                };
                let Some(u) = ups.for_registry(&r.domain) else {
                    continue;
                };
                if let Ok(Some(m)) = runtime.block_on(u.manifest(&r, None)) {
                    i.status = ImageStatus::Upstream;
                    i.digest = Some(m.digest.to_string());
                }
            }
        }
    }

    let failed = report.failed(args.strict);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_table(&report, &platform);
    }
    Ok(if failed {
        ExitCode::from(crate::exit::PROBLEMS)
    } else {
        ExitCode::SUCCESS
    })
}

fn print_table(report: &Report, platform: &str) {
    let color = std::io::stdout().is_terminal();
    let mark = |s: Status| -> &'static str {
        match (s, color) {
            (Status::Ok, true) => "\x1b[32mok  \x1b[0m",
            (Status::Warn, true) => "\x1b[33mwarn\x1b[0m",
            (Status::Fail, true) => "\x1b[31mfail\x1b[0m",
            (Status::Ok, false) => "ok  ",
            (Status::Warn, false) => "warn",
            (Status::Fail, false) => "fail",
        }
    };
    for c in &report.checks {
        println!("{}  {:<44} {}", mark(c.status), c.name, c.detail);
        if let Some(fix) = &c.fix {
            println!("      {:<44} fix: {fix}", "");
        }
    }
    if !report.images.is_empty() {
        println!("\nimages for {platform}:");
        for i in &report.images {
            let status = match i.status {
                ImageStatus::Present => "present",
                ImageStatus::WrongPlatform => "wrong-platform",
                ImageStatus::Upstream => "upstream",
                ImageStatus::Missing => "missing",
                ImageStatus::Incomplete => "incomplete",
            };
            let where_ = match (&i.archive, i.status) {
                (Some(a), ImageStatus::WrongPlatform) => {
                    format!("{a} has only {}", i.platforms.join(", "))
                }
                (Some(a), _) => a.clone(),
                (None, ImageStatus::Upstream) => "in no archive; the upstream has it".to_string(),
                (None, _) => "in no archive".to_string(),
            };
            println!("  {status:<15} {:<50} {where_}", i.reference);
        }
    }
    let fails = report
        .checks
        .iter()
        .filter(|c| c.status == Status::Fail)
        .count();
    let warns = report
        .checks
        .iter()
        .filter(|c| c.status == Status::Warn)
        .count();
    let bad_images = report
        .images
        .iter()
        .filter(|i| {
            matches!(
                i.status,
                ImageStatus::Missing | ImageStatus::WrongPlatform | ImageStatus::Incomplete
            )
        })
        .count();
    println!(
        "\n{} checks: {fails} failed, {warns} warnings; {} images listed, {bad_images} not usable here",
        report.checks.len(),
        report.images.len()
    );
}

//! A whole run: the bundle, the registry, the rounds of steps in turn, and
//! the report of the mode, printed and (with --write) put into its section
//! of BENCHMARKS.md.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use super::args::{Args, Mode};
use super::bundle::{self, path, say, Facts};
use super::sections::{full, Big, Ctx};
use super::steps::Bench;
use super::system::{self, loadavg, sh};
use crate::process;
use crate::Registry;

/// The temporary directory of a run: logs copied out (with --logs, or
/// when the run failed), mounts detached and everything removed on drop.
struct Work {
    path: PathBuf,
    logs: Option<PathBuf>,
    ok: bool,
}

impl Drop for Work {
    fn drop(&mut self) {
        if self.logs.is_some() || !self.ok {
            let to = self.logs.clone().unwrap_or_else(|| {
                PathBuf::from(format!("/tmp/airgap-bench-logs-{}", std::process::id()))
            });
            let copied = sh(
                r#"mkdir -p "$2" && cd "$1" && find . -name '*.log' -exec cp --parents {} "$2/" \;"#,
                &[&self.path.to_string_lossy(), &to.to_string_lossy()],
            );
            match copied {
                Ok(_) => eprintln!("logs of this run: {}", to.display()),
                Err(err) => eprintln!("warning: copying the logs to {}: {err:#}", to.display()),
            }
        }
        crate::mounts::unmount_under(&self.path);
        if let Err(err) = std::fs::remove_dir_all(&self.path) {
            eprintln!("warning: removing {}: {err}", self.path.display());
        }
    }
}

/// The containerd the run uses, as `containerd --version` names it (the
/// third word, e.g. `1.6.20~ds1`): the sections are per version.
fn containerd_version() -> Result<String> {
    let out = process::run(
        crate::containerd::command("containerd").arg("--version"),
        Duration::from_secs(30),
    )?;
    out.split_whitespace()
        .nth(2)
        .map(str::to_string)
        .with_context(|| format!("unexpected `containerd --version` output {out:?}"))
}

/// The daemon under test and `bench-decompressed`: `AIRGAP_SNAPSHOTTER_BIN`
/// (scripts/bench.sh points it at the release build) or the daemon beside
/// this binary; the example in the same target directory as the daemon
/// (required when `example`: the modes that pull through the daemon).
fn binaries(example: bool) -> Result<(PathBuf, PathBuf)> {
    let bin = match std::env::var_os(crate::daemon::BIN_ENV) {
        Some(bin) => PathBuf::from(bin),
        None => {
            let exe = std::env::current_exe().context("locating the bench binary")?;
            exe.with_file_name("airgap-snapshotter")
        }
    };
    let decompressed = bin.with_file_name("examples").join("bench-decompressed");
    for p in [&bin, &decompressed].into_iter().take(1 + example as usize) {
        if !p.is_file() {
            bail!(
                "{} does not exist (scripts/bench.sh builds it)",
                p.display()
            );
        }
    }
    Ok((bin, decompressed))
}

pub fn run(args: Args) -> Result<()> {
    let repo = crate::workspace_root();
    let mode = args.mode();
    let (bin, decompressed) = binaries(!matches!(mode, Mode::Index | Mode::Delta | Mode::Cluster))?;
    if mode == Mode::Index {
        return super::index::run(&repo, &bin, &args);
    }
    if mode == Mode::Delta {
        return super::delta::run_delta(&repo, &bin, &args);
    }
    if mode == Mode::Cluster {
        return super::cluster::run_cluster(&repo, &bin, &args);
    }
    if !crate::is_root() {
        bail!("bench needs root (containerd, mounts, drop_caches)");
    }
    let load_start = loadavg();
    let version = containerd_version()?;
    let work = tempfile::Builder::new()
        .prefix("airgap-bench-")
        .tempdir()
        .context("creating the work directory")?
        .keep();
    let mut work = Work {
        path: work,
        logs: args.logs.clone(),
        ok: false,
    };
    let result = run_in(
        &args,
        &repo,
        bin,
        decompressed,
        &work.path,
        &version,
        &load_start,
    );
    work.ok = result.is_ok();
    result
}

fn run_in(
    args: &Args,
    repo: &Path,
    bin: PathBuf,
    decompressed: PathBuf,
    work: &Path,
    version: &str,
    load_start: &str,
) -> Result<()> {
    let mode = args.mode();
    let bundle = match &args.cache {
        Some(dir) => dir.clone(),
        None => work.join("cache"),
    };
    std::fs::create_dir_all(&bundle).with_context(|| format!("creating {}", bundle.display()))?;
    let bundle = std::fs::canonicalize(&bundle)
        .with_context(|| format!("resolving {}", bundle.display()))?;
    bundle::ensure(repo, &bin, &bundle, mode == Mode::Mounts)?;
    let kinds: &[&str] = if mode == Mode::Mounts {
        &["oci", "docker", "docker-plain"]
    } else {
        &["oci", "docker", "packed", "alone"]
    };
    // One archives directory per kind; hard links keep the (device, inode,
    // size, mtime) the persisted indexes are keyed by.
    for kind in kinds {
        let dir = work.join(format!("archives-{kind}"));
        let archive = bundle::archive_of(&bundle, kind);
        sh(
            r#"mkdir -p "$1" && { ln "$2" "$1/" 2>/dev/null || cp -p "$2" "$1/"; }"#,
            &[path(&dir)?, path(&archive)?],
        )?;
    }
    let json = system::run(
        path(&bin)?,
        &[
            "images",
            "--archives",
            path(&work.join("archives-oci"))?,
            "--json",
        ],
    )?;
    let facts = Facts::parse(&json)?;
    // The largest image's layers, for the floor, its unpacked size and files.
    let blobs = work.join("floor-blobs");
    std::fs::create_dir_all(&blobs).with_context(|| format!("creating {}", blobs.display()))?;
    let mut members = vec![
        path(&bundle.join("oci.tar.zst"))?.to_string(),
        path(&blobs)?.to_string(),
    ];
    members.extend(
        facts
            .big_layers
            .iter()
            .map(|d| d.replacen("sha256:", "blobs/sha256/", 1)),
    );
    let members: Vec<&str> = members.iter().map(String::as_str).collect();
    sh(
        r#"f=$1 d=$2; shift 2; zstd -dc "$f" | tar -x -C "$d" --strip-components=2 "$@""#,
        &members,
    )?;
    let mut big = Big {
        unpacked: 0,
        files: 0,
    };
    for d in &facts.big_layers {
        let listing = sh(
            r#"pigz -dc "$1" | tar -tv"#,
            &[path(&blobs.join(d.trim_start_matches("sha256:")))?],
        )?;
        for line in listing.lines() {
            big.files += 1;
            big.unpacked += line
                .split_whitespace()
                .nth(2)
                .and_then(|s| s.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    let registry = Registry::start()?;
    registry.push_oci_archive(&bundle.join("oci.tar"), "1", "bench/debian-go:1")?;
    let (status, _) = system::http(
        &registry.host(),
        "HEAD",
        "/v2/bench/debian-go/manifests/1",
        &[("Accept", "application/vnd.oci.image.manifest.v1+json")],
    )?;
    if status != 200 {
        bail!("the registry does not have bench/debian-go:1 (HEAD answered {status})");
    }
    let mut bench = Bench::new(bin, decompressed, work.to_path_buf(), facts, registry)?;
    bench.seed(kinds)?;
    if mode == Mode::Full {
        let raw = work.join("floor-raw");
        std::fs::create_dir_all(&raw).with_context(|| format!("creating {}", raw.display()))?;
        for (i, d) in bench.facts.big_layers.iter().enumerate() {
            sh(
                r#"pigz -dc "$1" > "$2""#,
                &[
                    path(&blobs.join(d.trim_start_matches("sha256:")))?,
                    path(&raw.join(format!("{}.tar", i + 1)))?,
                ],
            )?;
        }
    }
    for round in 1..=args.reps {
        say(&format!("round {round} of {}", args.reps));
        round_of(&mut bench, mode)?;
    }
    let _ = std::fs::remove_dir_all(work.join("floor-raw"));
    let ctx = Ctx {
        args,
        bundle: &bundle,
        version,
        load_start,
        big: &big,
    };
    match mode {
        Mode::Pulls => ctx.print_section(&format!("bench-pulls-{version}"),
            &format!("Pulls on containerd {version} (`scripts/bench.sh --pulls --write`)"), &ctx.pulls_report(&bench), false),
        Mode::Import => ctx.print_section(&format!("bench-import-{version}"),
            &format!("Registering images into containerd on {version} (`scripts/bench.sh --import --write`)"), &ctx.import_report(&bench), false),
        Mode::Mounts => ctx.print_section(&format!("bench-mounts-{version}"),
            &format!("Layers mounted from the archive on containerd {version} (`scripts/bench.sh --mounts --write`)"), &ctx.mounts_report(&bench), false),
        _ => {
            let report = full(&mut bench, &ctx)?;
            ctx.print_section("bench", "Pulling an image, against what sites use today (`scripts/bench.sh --write`)", &report, true)
        }
    }
}

/// One round: every step of the mode once, in turn, so that load from
/// elsewhere spreads over all of them.
fn round_of(b: &mut Bench, mode: Mode) -> Result<()> {
    match mode {
        Mode::Mounts => {
            b.step_registry(true)?;
            b.step_mount("extract-oci", "(5) CRI PullImage, mirror + snapshotter, oci archive, layers extracted (`--layer-mounts extract`)", "oci", false,
                Some("(9) `ctr run` reading every file of the image, layers extracted (pulled by (5))"), &["--layer-mounts", "extract"])?;
            let mounted = "(9) `ctr run` reading every file of the image, layers mounted (pulled by (8) from the `.tar`)";
            if b.can_prepare {
                b.step_mount("mount-plain", "(8) CRI PullImage, mirror + snapshotter, docker-save `.tar` (uncompressed), private copies (the default) made on arrival, once prepared",
                    "docker-plain", true, Some(mounted), &["--layer-mounts", "auto", "--prepare-layers", "on-arrival"])?;
                b.step_mount("pull-plain", "(8) CRI PullImage, mirror + snapshotter, docker-save `.tar` (uncompressed), private copies (the default) made on pull",
                    "docker-plain", false, None, &["--layer-mounts", "auto", "--prepare-layers", "on-pull"])?;
                b.step_mount("archive-plain", "(8) CRI PullImage, mirror + snapshotter, docker-save `.tar` (uncompressed), `--layer-backing archive` (in place, no copy), once prepared",
                    "docker-plain", true, None, &["--layer-mounts", "auto", "--layer-backing", "archive"])?;
                b.step_mount("arrival-docker", "(8) CRI PullImage, mirror + snapshotter, docker-save `.tar.zst`, `--prepare-layers on-arrival`, once prepared",
                    "docker", true, None, &["--layer-mounts", "auto", "--prepare-layers", "on-arrival"])?;
                b.step_mount("pull-docker", "(8) CRI PullImage, mirror + snapshotter, docker-save `.tar.zst`, prepared on pull",
                    "docker", false, None, &["--layer-mounts", "auto", "--prepare-layers", "on-pull"])?;
                b.step_mount("pull-oci", "(8) CRI PullImage, mirror + snapshotter, oci archive (gzip layers), prepared on pull",
                    "oci", false, None, &["--layer-mounts", "auto", "--prepare-layers", "on-pull"])?;
            } else {
                b.step_mount("mount-plain", "(8) CRI PullImage, mirror + snapshotter, docker-save `.tar` (uncompressed), `--layer-mounts auto`",
                    "docker-plain", false, Some(mounted), &["--layer-mounts", "auto"])?;
            }
            b.step_floor("parallel")
        }
        Mode::Pulls => {
            b.step_registry(true)?;
            b.step_registry(false)?;
            b.step_daemon("mirror", "oci", false)?;
            b.step_daemon("ctr-snap", "oci", false)?;
            b.step_daemon("snap", "oci", false)?;
            b.step_floor("parallel")
        }
        Mode::Import => {
            b.step_register("lazy", "oci")?;
            b.step_register("eager", "oci")?;
            b.step_import("oci")?;
            b.step_registry(true)?;
            b.step_daemon("snap", "oci", false)?;
            b.step_floor("parallel")
        }
        _ => {
            for kind in ["oci", "docker"] {
                b.step_import(kind)?;
            }
            b.step_registry(true)?;
            b.step_registry(false)?;
            for kind in ["oci", "packed"] {
                b.step_daemon("mirror", kind, false)?;
            }
            b.step_daemon("ctr-snap", "oci", false)?;
            for kind in ["oci", "packed", "docker", "alone"] {
                b.step_daemon("snap", kind, false)?;
            }
            for mode in ["parallel", "sequential", "tar", "zstd"] {
                b.step_floor(mode)?;
            }
            Ok(())
        }
    }
}

//! --index (what `scripts/bench-index.sh` ran): how long `airgap-snapshotter
//! images` takes to index an archive it has never seen, against `zstd -d`
//! of the same archive to /dev/null (the floor: indexing is one
//! decompressing pass), and how long a restart takes when the index was
//! persisted. No containerd, no daemon.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};

use super::args::Args;
use super::bundle::{path, say};
use super::report::{human_plain, publish};
use super::system::{self, sh};

/// Wall seconds of a command, caches dropped first (when this may: as
/// before, this benchmark also runs without root).
fn secs(cmd: &mut Command) -> Result<f64> {
    let _ = system::drop_caches();
    let t0 = Instant::now();
    crate::process::run(cmd, system::LONG)?;
    Ok(t0.elapsed().as_secs_f64())
}

pub fn run(repo: &Path, bin: &Path, args: &Args) -> Result<()> {
    let mut dirs: Vec<PathBuf> = args.dirs.clone();
    if dirs.is_empty() {
        dirs = [
            "/usr/lib/go-1.19",
            "/usr/lib/llvm-14",
            "/usr/share/gocode",
            "/usr/lib/python3",
        ]
        .iter()
        .map(PathBuf::from)
        .filter(|d| d.is_dir())
        .collect();
    }
    if dirs.is_empty() {
        bail!("no input directories");
    }
    let work = tempfile::Builder::new()
        .prefix("airgap-bench-index-")
        .tempdir()
        .context("creating the work directory")?;
    let names: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
    let mut table = String::from(
        "| archive | tar stream | `zstd -dc > /dev/null` (floor) | first index | vs floor | persisted index | vs floor |\n|---|---|---|---|---|---|---|",
    );
    // Two kinds of bundle: gzip layers in zstd (`ctr export | zstd`: the
    // outer zstd has little to do) and plain layers in zstd (`docker save |
    // zstd`).
    for kind in ["gzip", "none"] {
        let dir = work.path().join(kind);
        let (archives, root) = (dir.join("archives"), dir.join("root"));
        for d in [&archives, &root] {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
        }
        let archive = archives.join("bundle.tar.zst");
        say(&format!(
            "building a bundle with {kind} layers from {}",
            names.join(" ")
        ));
        let mut make = Command::new("python3");
        make.current_dir(repo)
            .arg(repo.join("scripts/make-archive.py"))
            .args([
                "--out",
                path(&archive)?,
                "--wrap",
                "zstd",
                "--layer-compression",
                kind,
                "--name",
                "bench/big:1",
            ]);
        for d in &dirs {
            make.arg("--layer").arg(d);
        }
        crate::process::run(&mut make, system::LONG)?;
        let size = std::fs::metadata(&archive)
            .with_context(|| format!("reading {}", archive.display()))?
            .len();
        let stream: u64 = sh(r#"zstd -dc "$1" | wc -c"#, &[path(&archive)?])?
            .trim()
            .parse()
            .context("counting the tar stream")?;
        let t_zstd = secs(Command::new("sh").args([
            "-c",
            r#"zstd -dc "$1" >/dev/null"#,
            "sh",
            path(&archive)?,
        ]))?;
        let t_index = secs(Command::new(bin).args(["images", "--archives", path(&archives)?]))?;
        // A restart reads the persisted index: the first run writes it.
        system::run(
            path(bin)?,
            &[
                "images",
                "--archives",
                path(&archives)?,
                "--root",
                path(&root)?,
            ],
        )?;
        let t_restart = secs(Command::new(bin).args([
            "images",
            "--archives",
            path(&archives)?,
            "--root",
            path(&root)?,
        ]))?;
        table.push_str(&format!(
            "\n| {kind} layers, {} | {} | {t_zstd:.2} s | {t_index:.2} s | {:.3}x | {t_restart:.3} s | {:.3}x |",
            human_plain(size),
            human_plain(stream),
            t_index / t_zstd,
            t_restart / t_zstd
        ));
        std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    let nproc = system::run("nproc", &[]).unwrap_or_default();
    let mem = system::run("free", &["-g"])
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("Mem:"))
        .and_then(|l| l.split_whitespace().nth(1).map(str::to_string))
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    table.push_str(&format!(
        "\n\nTimes are whole commands (process start included); caches dropped before each.\n\
         Layers from {}. Machine: {} cores, {mem} GiB,\nkernel {}, load average {} at the end.\n\n\
         Reproduce: `scripts/bench-index.sh --write [DIR...]` as root.",
        names.join(" "),
        nproc.trim(),
        kernel.trim(),
        system::loadavg()
    ));
    publish(
        args.write,
        "bench-index",
        "Indexing an archive (`scripts/bench-index.sh --write`)",
        &table,
        false,
    )
}

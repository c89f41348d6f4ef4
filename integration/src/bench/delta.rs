//! --delta: what a delta bundle saves crossing the air gap. Release 1 is
//! the bench bundle's images packed (debian-go, debian-llvm, debian-python,
//! busybox); release 2 changes debian-go's top layer (the
//! Go layer rebuilt with one more file), adds an image (debian-perl: the
//! shared base + Perl's library) and drops debian-python. Release 2 is
//! packed in full and as a delta of release 1 (`--base`, and
//! `--base-inventory` from `images --inventory` of a node holding release
//! 1): bytes and time to pack each. No containerd, no daemon. Both
//! releases come from one `make-archive.py` run, so that an unchanged
//! layer is the same blob in both, as in a registry (two runs would gzip it
//! with another timestamp: a new digest for the same content).

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};

use super::args::Args;
use super::bundle::{self, path, say, BIG, SMALL};

const GO_TREE: &str = "/=usr/lib/go-1.19,usr/share/go-1.19";
const PY_TREE: &str = "/=usr/lib/python3";
const PY: &str = "docker.io/bench/debian-python:1";
use super::report::{human_plain, publish};
use super::system::{self, run};

const GO2_TREE: &str = "/=etc/os-release,usr/lib/go-1.19,usr/share/go-1.19";
const PERL_TREE: &str = "/=usr/share/perl";
const LLVM_TREE: &str = "/=usr/lib/llvm-14";
const GO2: &str = "docker.io/bench/debian-go:2";
const LLVM: &str = "docker.io/bench/debian-llvm:1";
const PERL: &str = "docker.io/bench/debian-perl:1";

/// Wall seconds of a command, caches dropped first.
fn secs(cmd: &mut Command) -> Result<(f64, String)> {
    let _ = system::drop_caches();
    let t0 = Instant::now();
    let out = crate::process::run(cmd, system::LONG)?;
    Ok((t0.elapsed().as_secs_f64(), out))
}

fn size(p: &Path) -> Result<u64> {
    Ok(std::fs::metadata(p)
        .with_context(|| format!("reading {}", p.display()))?
        .len())
}

pub fn run_delta(repo: &Path, bin: &Path, args: &Args) -> Result<()> {
    if !crate::is_root() {
        bail!("bench --delta needs root (debootstrap for the bundle, drop_caches)");
    }
    let work = tempfile::Builder::new()
        .prefix("airgap-bench-delta-")
        .tempdir()
        .context("creating the work directory")?;
    let bundle_dir = bundle::in_cache_or(args, work.path())?;
    bundle::ensure(repo, bin, &bundle_dir, false)?;
    for d in ["/usr/share/perl", "/etc/os-release"] {
        if !Path::new(d).exists() {
            bail!("release 2 of the bench bundle needs {d}");
        }
    }
    let load_start = system::loadavg();
    let w = |name: &str| work.path().join(name);
    let b = |name: &str| bundle_dir.join(name);

    say("sources of both releases: debian-go:1 and :2 (Go layer rebuilt), debian-llvm:1, debian-python:1, debian-perl:1 (new), busybox:1");
    let minbase = path(&b("minbase"))?.to_string();
    let busybox = path(&b("busybox"))?.to_string();
    let src2 = w("releases-src.tar");
    crate::process::run(
        Command::new("python3")
            .current_dir(repo)
            .arg(repo.join("scripts/make-archive.py"))
            .args(["--out", path(&src2)?])
            .args(["--name", BIG, "--layer", &minbase, "--layer-tree", GO_TREE])
            .args(["--name", PY, "--layer", &minbase, "--layer-tree", PY_TREE])
            .args(["--name", GO2, "--layer", &minbase, "--layer-tree", GO2_TREE])
            .args([
                "--name",
                LLVM,
                "--layer",
                &minbase,
                "--layer-tree",
                LLVM_TREE,
            ])
            .args([
                "--name",
                PERL,
                "--layer",
                &minbase,
                "--layer-tree",
                PERL_TREE,
            ])
            .args(["--name", SMALL, "--layer", &busybox]),
        system::LONG,
    )?;
    let pack_refs = |out: &Path, extra: &[&str], refs: &[&str]| -> Result<(f64, String)> {
        secs(
            Command::new(bin)
                .args(["pack", "-o", path(out)?, "--from", path(&src2)?])
                .args(extra)
                .args(refs),
        )
    };
    say("pack release 1 (the base)");
    let base = w("release-1.tar.zst");
    pack_refs(&base, &[], &[BIG, LLVM, PY, SMALL])?;
    let pack = |out: &Path, extra: &[&str]| pack_refs(out, extra, &[GO2, LLVM, PERL, SMALL]);
    say("pack release 2 in full");
    let full = w("release-2-full.tar.zst");
    let (t_full, _) = pack(&full, &[])?;
    say("pack release 2 as a delta of release 1 (--base)");
    let delta = w("release-2-delta.tar.zst");
    let (t_delta, printed) = pack(&delta, &["--base", path(&base)?])?;
    let left_out = printed
        .lines()
        .find(|l| l.starts_with("delta: "))
        .unwrap_or_default()
        .to_string();
    say("images --inventory of a node holding release 1, then --base-inventory");
    let node = w("node");
    std::fs::create_dir_all(&node)?;
    std::fs::hard_link(&base, node.join("release-1.tar.zst"))
        .or_else(|_| std::fs::copy(&base, node.join("release-1.tar.zst")).map(|_| ()))?;
    let t0 = Instant::now();
    let inventory = run(
        path(bin)?,
        &["images", "--inventory", "--archives", path(&node)?],
    )?;
    let t_inventory = t0.elapsed().as_secs_f64();
    let inv_path = w("inventory.json");
    std::fs::write(&inv_path, &inventory)?;
    // The same file name (recorded in the archive), in another directory.
    std::fs::create_dir_all(w("inv"))?;
    let delta_inv = w("inv").join("release-2-delta.tar.zst");
    let (t_delta_inv, _) = pack(&delta_inv, &["--base-inventory", path(&inv_path)?])?;
    if std::fs::read(&delta_inv)? != std::fs::read(&delta)? {
        bail!("--base and --base-inventory packed different archives");
    }

    let (s_base, s_full, s_delta) = (size(&base)?, size(&full)?, size(&delta)?);
    let mut table = format!(
        "Run {} on {}. Load average at the start: {load_start}, at the end: {}.\n\n\
         Release 1: the bench bundle's images as `pack` writes them (`{BIG}`, debian-llvm, debian-python, busybox), {}.\n\
         Release 2: `{GO2}` (its Go layer rebuilt with one more file: a changed top layer), debian-llvm and busybox unchanged,\n\
         `{PERL}` new (the shared base + `/usr/share/perl`), debian-python removed.\n\n\
         | release 2 as | bytes to carry | vs full | time to pack | vs full |\n|---|---:|---:|---:|---:|\n\
         | full bundle (`pack`) | {} | 1.00x | {t_full:.2} s | 1.00x |\n\
         | delta, `pack --base release-1` | {} | {:.3}x | {t_delta:.2} s | {:.2}x |\n\
         | delta, `pack --base-inventory` (from `images --inventory` on the node, {:.2} s, {}) | {} | {:.3}x | {t_delta_inv:.2} s | {:.2}x |\n\n\
         `pack` said: `{left_out}`. The delta carries every image's index, manifest and config (a few KB) and only the layers\n\
         release 1 lacks: the rebuilt Go layer and Perl's. Both deltas are the same bytes. Times are whole commands, caches dropped\n\
         before each; the sources are an uncompressed OCI layout tar (`scripts/make-archive.py`), so packing is mostly compressing.\n\n\
         Packed by `{}` (`scripts/bench.sh` builds it for release).\n\n\
         Reproduce: `scripts/bench.sh --delta --write [--cache DIR]` as root.",
        system::date(),
        system::machine_line("-"),
        system::loadavg(),
        human_plain(s_base),
        human_plain(s_full),
        human_plain(s_delta),
        s_delta as f64 / s_full as f64,
        t_delta / t_full,
        t_inventory,
        human_plain(inventory.len() as u64),
        human_plain(size(&delta_inv)?),
        size(&delta_inv)? as f64 / s_full as f64,
        t_delta_inv / t_full,
        bin.display(),
    );
    table = table.replace(", containerd -", "");
    publish(args.write, "bench-delta", "Delta bundles: release 2 in full and as a delta of release 1 (`scripts/bench.sh --delta --write`)", &table, false)
}

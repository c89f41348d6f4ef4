//! The report of each mode as BENCHMARKS.md keeps it: the table, what it
//! measured and how to reproduce it; for the full run also the small image,
//! the daemon's start-up and idle RSS, and the profile.

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::args::Args;
use super::bundle::{path, say, BIG, SMALL};
use super::report::Secs;
use super::report::{self, human, kib, ratio};
use super::steps::{cri_pull, s, Bench, BIG_MANIFEST, READ_ALL};
use super::system::{self, drop_caches, loadavg, machine_line};
use crate::containerd;
use crate::process::{self, Proc};

/// Facts about the largest image the reports give.
pub struct Big {
    pub unpacked: u64,
    pub files: u64,
}

/// What every report says about the run.
pub struct Ctx<'a> {
    pub args: &'a Args,
    pub bundle: &'a Path,
    pub version: &'a str,
    pub load_start: &'a str,
    pub big: &'a Big,
}

impl Ctx<'_> {
    fn size(&self, name: &str) -> String {
        human(
            std::fs::metadata(self.bundle.join(name))
                .ok()
                .map(|m| m.len()),
        )
    }

    fn head(&self) -> String {
        format!(
            "Run {} on {}.\nLoad average (1, 5, 15 min) at the start: {}; at the end: {} (other work was running: figures are noisy).",
            system::date(),
            machine_line(self.version),
            self.load_start,
            loadavg()
        )
    }

    /// Prints the report and, with --write, puts it into BENCHMARKS.md as
    /// the section `marker`, titled `title`.
    pub fn print_section(
        &self,
        marker: &str,
        title: &str,
        report: &str,
        first: bool,
    ) -> Result<()> {
        report::publish(self.args.write, marker, title, report, first)
    }

    pub fn pulls_report(&self, b: &Bench) -> String {
        let v = self.version;
        format!(
            "{}\n\n{}\n\n\
The largest image of the bundle (`{BIG}`, {} layers, {} unpacked), median of {} rounds, caches dropped before
each step, a fresh private containerd {v} per step configured as the end-to-end tests do. (4b) is what a site
running `ctr pull --snapshotter airgap` sees: on 1.6 and 1.7 ctr fetches every blob itself (through the mirror) and unpacks;
on 2.x the transfer service passes `snapshot.ref` and the layers come from the archive (see \"layers from the archive\").

Reproduce: `AIRGAP_CONTAINERD_DIR=DIR scripts/bench.sh --pulls --write [--cache DIR] [--reps N]` as root (DIR from
`scripts/fetch-containerd.sh`; unset: the system's containerd).",
            self.head(),
            report::results_table(&b.records),
            b.facts.big_layers.len(),
            human(Some(self.big.unpacked)),
            self.args.reps,
        )
    }

    pub fn import_report(&self, b: &Bench) -> String {
        let v = self.version;
        format!(
            "{}\n\n{}\n\n\
Median of {} rounds, caches dropped before each step, a fresh private containerd {v} and daemon root (holding only the
persisted indexes) per step. (1) and (7) register all 4 images of the bundle ({} distinct layers); (2), (5) and (7b) are
about the largest (`{BIG}`, {} layers, {} unpacked). (7) lazy writes only the index, manifests
and configs into containerd and commits every layer without data: containerd lists the images, pinned, and records them unpacked;
(7) eager is timed until the daemon has extracted every layer (in the background, bounded by the cores). (7b) times `ctr run` of a
short command, container start and stop included, with the layers filled from the archive first.

Reproduce: `[AIRGAP_CONTAINERD_DIR=DIR] scripts/bench.sh --import --write [--cache DIR] [--reps N]` as root.",
            self.head(),
            report::results_table(&b.records),
            self.args.reps,
            b.facts.bundle_layers,
            b.facts.big_layers.len(),
            human(Some(self.big.unpacked)),
        )
    }

    pub fn mounts_report(&self, b: &Bench) -> String {
        let prepare_rows = if b.can_prepare {
            "\"Once prepared\": the daemon indexes the layers of the whole bundle in the background as soon as the
archive is indexed (uncompressed layers of an uncompressed archive always; compressed ones, decompressed into its layer store, with
`--prepare-layers on-arrival`); those rows start the pull when `airgap_layer_prepare_pending` is 0 and
`airgap_layers_prepared_total` above 0, and the note gives how long that took from the daemon's start and what it added to the
daemon root (neither is in the time). \"Prepared on pull\": the pull decompresses and indexes the image's layers itself."
        } else {
            "The rows prepared on arrival and on pull from the docker-save and oci `.tar.zst` archives are missing: this daemon
has no `--prepare-layers`."
        };
        format!(
            "{}\n\n{}\n\n\
The largest image of the bundle (`{BIG}`, {} layers, {} unpacked, {} files), median of {} rounds,
caches dropped before each step, a fresh private containerd {} and daemon root (holding only the persisted indexes) per
step. Time to runnable: until CRI `PullImage` answers, as in (5). (6) is the floor of the other sections (`pigz -dc | tar -x`, one
process per layer). Archives: oci.tar.zst {} (gzip layers), docker.tar.zst {} (docker-save) and
docker-plain.tar {} (the same, uncompressed: `zstd -dc docker.tar.zst`; plain-tar layers, as k3s and rke2 ship them).
Ratios are within this run; the target of (9) over mounted layers is against (9) over extracted ones.

\"Mounted (EROFS)\": the daemon's log lines \"layer mounted from archive (EROFS)\" (one per layer staged as a snapshot), and of those
\"prepared by the pull\" the ones whose index (and decompressed copy) the pull built; a mount that failed and fell back to extraction
(\"mounting the layer from the archive failed\") would be counted in the note.
{prepare_rows}

(9) runs `sh -c '{READ_ALL}'` in a container of the pulled image with
`ctr run` (container start and stop included), caches dropped just before: once over the layers mounted by (8) from docker-plain.tar,
once over the layers extracted by (5); \"files read\" is counted afterwards, not timed.

Reproduce: `[AIRGAP_CONTAINERD_DIR=DIR] scripts/bench.sh --mounts --write [--cache DIR] [--reps N]` as root (kernel 6.12+ for EROFS).",
            self.head(),
            report::mounts_table(&b.records),
            b.facts.big_layers.len(),
            human(Some(self.big.unpacked)),
            self.big.files,
            self.args.reps,
            self.version,
            self.size("oci.tar.zst"),
            self.size("docker.tar.zst"),
            self.size("docker-plain.tar"),
        )
    }
}

/// The full run's report: the table, the small image, start-up and idle
/// RSS, and where the daemon's CPU time goes.
pub fn full(b: &mut Bench, ctx: &Ctx<'_>) -> Result<String> {
    let mut profile_text = String::new();
    let has_perf = Command::new("perf")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if ctx.args.profile() && has_perf {
        say("profiling the daemon during (5) on the oci archive (one more pull, not timed)");
        b.step_daemon("snap", "oci", true)?;
        let data = b.work.join("perf.data");
        let out = system::sh(
            r#"perf report -i "$1" --stdio --no-children --sort comm,dso,symbol --percent-limit 1.5 2>/dev/null"#,
            &[path(&data)?],
        )
        .unwrap_or_default();
        profile_text = profile_lines(&out);
    }
    let mut small = Vec::new();
    for kind in ["oci", "packed"] {
        small.push((kind, b.small_image(kind)?));
    }
    say("daemon start-up with a persisted index of the whole bundle; idle RSS");
    let all = b.work.join("archives-all");
    std::fs::create_dir_all(&all).with_context(|| format!("creating {}", all.display()))?;
    for kind in ["oci", "docker", "packed"] {
        let name = format!("{kind}.tar.zst");
        std::fs::hard_link(b.archives(kind).join(&name), all.join(&name))
            .with_context(|| format!("linking {name} into {}", all.display()))?;
    }
    let all_root = b.work.join("daemon-all");
    drop_caches()?;
    let first = startup(&b.bin, &all, &all_root, &b.mirror(), Duration::from_secs(3))?;
    let mut restarts = Vec::new();
    for _ in 0..3 {
        drop_caches()?;
        restarts.push(startup(
            &b.bin,
            &all,
            &all_root,
            &b.mirror(),
            Duration::from_secs(2),
        )?);
    }
    let med = |f: fn(&Startup) -> u64| {
        let mut v: Vec<u64> = restarts.iter().map(f).collect();
        v.sort_unstable();
        v[v.len().div_ceil(2) - 1]
    };
    let (restart_socket, restart_serving, restart_rss) = (
        med(|s| s.socket_ms),
        med(|s| s.serving_ms),
        med(|s| s.rss_kib),
    );
    eprintln!(
        "    first start {} ms to serving (rss {} KiB); restarts: {restarts:?}",
        first.serving_ms, first.rss_kib
    );

    let mut small_table = String::from(
        "| archive | CRI pull | decompressed | image's own bytes | ratio | read from disk by the daemon |\n|---|---:|---:|---:|---:|---:|",
    );
    for (kind, (t, dec, blobs, io)) in &small {
        let name = if *kind == "oci" {
            "single frame (`ctr export \\| zstd`)"
        } else {
            "seekable (`airgap-snapshotter pack`)"
        };
        small_table.push_str(&format!(
            "\n| {name}, {} | {} s | {} | {} | {} | {} |",
            ctx.size(&format!("{kind}.tar.zst")),
            t.text,
            human(Some(*dec)),
            human(Some(*blobs)),
            ratio(Some(*dec as f64), Some(*blobs as f64)),
            human(Some(*io))
        ));
    }
    let sizes = format!(
        "oci.tar.zst {}, docker.tar.zst {}, packed.tar.zst {}, and alone.tar.zst (the largest image alone, packed) {}",
        ctx.size("oci.tar.zst"),
        ctx.size("docker.tar.zst"),
        ctx.size("packed.tar.zst"),
        ctx.size("alone.tar.zst")
    );
    let profile_block = if profile_text.is_empty() {
        String::new()
    } else {
        format!(
            "Where the daemon's CPU time goes during (5) on the oci archive (`perf record -g` on the daemon during one more
pull, not timed; self time by thread, object and symbol, entries above 1.5 %):\n\n```\n{profile_text}\n```\n\n"
        )
    };
    let v = ctx.version;
    Ok(format!(
        "{}

Bundle: 4 images (`{BIG}`: debootstrap minbase bookworm + Go 1.19 toolchain; debian-llvm: minbase + LLVM 14;
debian-python: minbase + Python 3 stdlib; `{SMALL}`: static busybox), the base layer shared. Archives: {sizes}.
The largest image: {} layers, {} unpacked, {} files, {} of gzip layers.

{}

Times are the median of {} rounds (every step once per round, in turn); daemon peak RSS is the highest of the rounds, disk the last
round's. Time to runnable: until `ctr` returns or CRI `PullImage` answers (both unpack before returning); each pulled image is then run
once (`ctr run`, not timed) to check it. Caches dropped before each step. Every step starts a fresh private containerd {v} and, for
(4) and (5), a fresh daemon root holding only the persisted indexes. Disk: `du` of containerd's root plus the daemon's root after the
step (for (6), the extracted layers). (1) imports all four images; every other step pulls `{BIG}`. (6) does no fsync; the
snapshotter syncs each layer before committing it. \"Layers extracted by then\" in (5) counts what the daemon extracted until the
pull returned, including layers of the other bundle images that it prefetched because they share the base layer; those staged
layers are in the disk column until the daemon drops them, unclaimed. The last (5) row pulls from an archive holding only this
image: nothing else to prefetch.

Small image (`{SMALL}`, the last blobs of the stream) pulled alone with CRI through mirror + snapshotter out of the large archive:

{small_table}

Decompressed: the bytes the archive's decoders produced to read the image's blobs (`Catalog::open_blob`, the call the snapshotter
makes per layer; measured by `plugin/examples/bench-decompressed.rs`, as the daemon does not export the counter).

Daemon start-up, the whole bundle (3 archives) in its directory: first start, indexing everything: serving after {} ms;
restart with the persisted indexes (caches dropped, median of 3): socket answers after {restart_socket} ms, mirror serves the largest
image's manifest after {restart_serving} ms. Idle RSS with the bundle indexed: {} after the first indexing (peak
{}), {} after a restart with the persisted indexes.

{profile_block}Reproduce: `scripts/bench.sh --write [--cache DIR] [--reps N]` as root on Debian 12 (installs what it needs; `--cache` keeps the generated
bundle for the next run).",
        ctx.head(),
        b.facts.big_layers.len(),
        human(Some(ctx.big.unpacked)),
        ctx.big.files,
        human(Some(b.facts.big_gz)),
        report::results_table(&b.records),
        ctx.args.reps,
        first.serving_ms,
        kib(Some(first.rss_kib)),
        kib(Some(first.hwm_kib)),
        kib(Some(restart_rss)),
    ))
}

impl Bench {
    /// The small image pulled alone out of the large archive of `kind`:
    /// (CRI seconds, bytes decompressed, the image's own bytes, bytes the
    /// daemon read from disk).
    pub fn small_image(&mut self, kind: &str) -> Result<(Secs, u64, u64, u64)> {
        let lock = crate::serial()?;
        let root = self.fresh_root(kind)?;
        let daemon = self.start_daemon(kind, &root, &[], None)?;
        let c = self.containerd(containerd::SNAPSHOTTER, &daemon.socket)?;
        drop_caches()?;
        say(&format!("small image out of the large archive ({kind})"));
        let io0 = system::read_bytes(daemon.pid());
        let t = cri_pull(c.address(), SMALL)?;
        let io = system::read_bytes(daemon.pid()).saturating_sub(io0);
        drop(c);
        daemon.stop()?;
        drop(lock);
        // The counter the daemon keeps (bytes its decoders produced), read
        // from the same library calls in a process of its own.
        let mut args = vec![s(&self.archives(kind)), s(&root.join("catalog"))];
        args.extend(self.facts.small_layers.iter().cloned());
        let out = process::run(Command::new(&self.decompressed).args(&args), system::LONG)?;
        let field = |name: &str| {
            out.split_whitespace()
                .find_map(|w| w.strip_prefix(name)?.parse::<u64>().ok())
                .with_context(|| format!("no {name} in bench-decompressed's output {out:?}"))
        };
        let (dec, blobs) = (field("decompressed=")?, field("blobs=")?);
        eprintln!(
            "    {kind}: {}s, decompressed {} for {} of layers, read from disk {}",
            t.text,
            human(Some(dec)),
            human(Some(blobs)),
            human(Some(io))
        );
        Ok((t, dec, blobs, io))
    }
}

/// The hottest entries of `perf report --stdio`: the sample lines, their
/// trailing call-graph dashes cut, at most 25.
pub fn profile_lines(report: &str) -> String {
    report
        .lines()
        .filter(|l| {
            // `  33.12%  comm  dso  [.] symbol`, not the call-graph lines
            // under it (some of which are bare addresses: `0x4`).
            let t = l.trim_start();
            l.starts_with(' ')
                && t.split_whitespace()
                    .next()
                    .and_then(|p| p.strip_suffix('%'))
                    .is_some_and(|p| p.parse::<f64>().is_ok())
        })
        .take(25)
        .map(|l| l.trim_end().trim_end_matches([' ', '-']).trim_end())
        .collect::<Vec<_>>()
        .join("\n")
}

/// The daemon's start-up on an archives directory.
#[derive(Debug)]
struct Startup {
    socket_ms: u64,
    serving_ms: u64,
    rss_kib: u64,
    hwm_kib: u64,
}

/// Starts `serve` on `archives` with `root` (its socket ROOT.sock, its log
/// ROOT.log): milliseconds from exec until the snapshotter socket accepts a
/// connection, and until the mirror answers 200 to a HEAD of the largest
/// image's manifest (the index is loaded and serving); then, after `idle`,
/// its VmRSS and VmHWM. Stops the daemon (by pid) before it returns.
fn startup(
    bin: &Path,
    archives: &Path,
    root: &Path,
    mirror: &str,
    idle: Duration,
) -> Result<Startup> {
    let with = |ext: &str| {
        let mut p = root.as_os_str().to_owned();
        p.push(ext);
        PathBuf::from(p)
    };
    let (socket, log) = (with(".sock"), with(".log"));
    let _ = std::fs::remove_file(&socket);
    let mut cmd = Command::new(bin);
    cmd.env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .arg("serve")
        .arg("--root")
        .arg(root)
        .arg("--socket")
        .arg(&socket)
        .arg("--archives")
        .arg(archives)
        .args([
            "--mirror-listen",
            mirror,
            "--metrics-listen",
            "off",
            "--import-mode",
            "off",
        ]);
    let t0 = Instant::now();
    let mut proc = Proc::spawn("airgap-snapshotter", &mut cmd, &log)?;
    let deadline = t0 + Duration::from_secs(600);
    // Polled every 2 ms: start-up is a few tens of ms.
    let poll = |proc: &mut Proc, what: &str, ready: &dyn Fn() -> bool| -> Result<u64> {
        loop {
            proc.check_running()?;
            if ready() {
                return Ok(t0.elapsed().as_millis() as u64);
            }
            if Instant::now() > deadline {
                bail!("the daemon did not {what}; see {}", log.display());
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    };
    let socket_ms = poll(&mut proc, "listen", &|| {
        UnixStream::connect(&socket).is_ok()
    })?;
    let serving_ms = poll(&mut proc, "serve the manifest", &|| {
        system::serves(mirror, BIG_MANIFEST)
    })?;
    std::thread::sleep(idle);
    let pid = proc.pid().unwrap_or(0);
    let result = Startup {
        socket_ms,
        serving_ms,
        rss_kib: system::status_kib(pid, "VmRSS").unwrap_or(0),
        hwm_kib: system::status_kib(pid, "VmHWM").unwrap_or(0),
    };
    proc.stop(process::STOP_TIMEOUT)?;
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profile_keeps_the_sample_lines() {
        let report = "# Samples: 10K\n#\n    33.12%  extract-inflate  airgap-snapshotter  [.] inflate_fast  -      -    \n            |\n            ---inflate\n                          0x4\n     1.60%  extract-inflate  airgap-snapshotter  [.] inflate_table\n\n";
        assert_eq!(
            profile_lines(report),
            "    33.12%  extract-inflate  airgap-snapshotter  [.] inflate_fast\n     1.60%  extract-inflate  airgap-snapshotter  [.] inflate_table"
        );
    }
}

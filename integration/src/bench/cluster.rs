//! --cluster: one node serving the cluster (issue 22). Ten nodes, each a
//! network namespace with its own containerd (no daemon, overlayfs, the
//! hosts.toml `config --serving-node` writes), get the bundle's largest
//! image at once from one serving node, which is in turn:
//!
//! - the daemon's cluster listener (TLS, a bearer token per node) serving
//!   the bundle's single-frame `oci.tar.zst` as it arrived;
//! - `docker-registry` (TLS, no authentication) serving the same image,
//!   pushed into its storage beforehand (not timed).
//!
//! Each server gets two kinds of round, each with a fresh server and fresh
//! nodes: the ten nodes fetch the image's blobs (`ctr content fetch`: the
//! serving side alone), or pull it (`ctr images pull`: fetched and unpacked,
//! what a node waits for). Measured per round: the wall time until every
//! node is done, the slowest node, and the serving process's CPU
//! time and peak RSS during the round (VmHWM, reset before it); for the
//! daemon also the bytes it decompressed and read from the archive, which
//! say how many passes over the archive served the ten nodes (the shared
//! pass: one). Every fetch and pull must succeed, and every pull give the
//! same manifest digest from both servers, else the run fails. Not a test:
//! no time is asserted.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

use super::args::Args;
use super::bundle::{self, say, BIG};
use super::report::{human_plain, publish};
use super::system::{self, cpu_ticks, hwm_kib, sum_metric};
use crate::cluster::{
    fetch_at_once, plain_nodes, pull_at_once, serve_nodes, LoadNet, Pki, PlainNode, METRICS_LISTEN,
};
use crate::netns::Node;
use crate::process::{self, Proc};
use crate::TestDir;

/// How many nodes pull at once.
pub const NODES: u8 = 10;
/// docker-registry's port on the serving node's address.
const REGISTRY_PORT: u16 = 5000;
/// The containerd namespace the nodes pull into.
const NS: &str = "bench";

/// What one round measured.
struct Round {
    total: f64,
    slowest: f64,
    cpu: f64,
    hwm_kib: u64,
    /// Bytes the serving process read from storage (/proc/PID/io, caches
    /// dropped before).
    read: u64,
    /// The daemon's `airgap_archive_decompressed_bytes` during the round.
    decompressed: Option<u64>,
    digest: String,
}

/// What the ten nodes do in a round.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// `ctr content fetch`: the blobs only, what the serving side does.
    Fetch,
    /// `ctr images pull`: fetched and unpacked, what a node waits for.
    Pull,
}

impl Phase {
    fn label(self) -> &'static str {
        match self {
            Phase::Fetch => "fetch (`ctr content fetch`)",
            Phase::Pull => "pull (`ctr images pull`: fetch + unpack)",
        }
    }
}

/// The rounds of one server: fetches and pulls.
#[derive(Default)]
struct Served {
    fetch: Vec<Round>,
    pull: Vec<Round>,
}

impl Served {
    fn push(&mut self, phase: Phase, round: Round) {
        match phase {
            Phase::Fetch => self.fetch.push(round),
            Phase::Pull => self.pull.push(round),
        }
    }
}

pub fn run_cluster(repo: &Path, bin: &Path, args: &Args) -> Result<()> {
    if !crate::is_root() {
        bail!("bench --cluster needs root (network namespaces, containerd, drop_caches)");
    }
    let work = TestDir::new("bench-cluster")?;
    let bundle_dir = bundle::in_cache_or(args, work.path())?;
    bundle::ensure(repo, bin, &bundle_dir, false)?;
    let archive = bundle_dir.join("oci.tar.zst");
    let unpacked_size = std::fs::metadata(bundle_dir.join("oci.tar"))
        .context("the bundle's oci.tar")?
        .len();
    let archive_size = std::fs::metadata(&archive)?.len();
    // Every node keeps the image's blobs and its unpacked layers (about
    // three times the blobs) under /tmp for its round.
    let need = u64::from(NODES) * 4 * unpacked_size;
    let stat = nix::sys::statvfs::statvfs("/tmp").context("statvfs /tmp")?;
    let free = stat.blocks_available() as u64 * stat.fragment_size() as u64;
    if free < need {
        bail!(
            "bench --cluster needs about {} free under /tmp for {NODES} nodes' content and \
             unpacked layers; {} is free",
            human_plain(need),
            human_plain(free)
        );
    }
    let load_start = system::loadavg();

    let _serial = crate::serial()?;
    let LoadNet {
        pki,
        server,
        nodes,
        net,
    } = LoadNet::new(work.path(), NODES)?;
    let registry_storage = work.path().join("registry-storage");
    fill_registry(&work, &server, &pki, &registry_storage, &bundle_dir)?;

    // Each round starts a fresh server and fresh nodes: nothing is cached
    // on either side from the round before.
    let mut airgap = Served::default();
    let mut registry = Served::default();
    for rep in 1..=args.reps {
        for phase in [Phase::Fetch, Phase::Pull] {
            let what = phase.label();
            say(&format!(
                "round {rep}/{}: {NODES} nodes {what} {BIG} from the daemon's cluster listener",
                args.reps
            ));
            airgap.push(
                phase,
                round_airgap(&work, &server, &nodes, &pki, &archive, phase)?,
            );
            say(&format!(
                "round {rep}/{}: {NODES} nodes {what} {BIG} from docker-registry",
                args.reps
            ));
            registry.push(
                phase,
                round_registry(&work, &server, &nodes, &pki, &registry_storage, phase)?,
            );
        }
    }
    drop(net);
    let digest = &airgap.pull[0].digest;
    ensure!(
        airgap
            .pull
            .iter()
            .chain(&registry.pull)
            .all(|r| &r.digest == digest),
        "the rounds pulled different manifests"
    );
    let report = report(
        &airgap,
        &registry,
        unpacked_size,
        archive_size,
        bin,
        &load_start,
    );
    publish(args.write, "bench-cluster", "One node serving the cluster: ten nodes pull at once (`scripts/bench.sh --cluster --write`)", &report, false)
}

/// The serving node's daemon with the archive; the nodes pull from its
/// cluster listener.
fn round_airgap(
    work: &TestDir,
    server: &Node,
    nodes: &[Node],
    pki: &Pki,
    archive: &Path,
    phase: Phase,
) -> Result<Round> {
    let serving = serve_nodes(
        work.path(),
        server,
        nodes,
        pki,
        &[archive],
        super::steps::BIG_MANIFEST,
    )?;
    let plain = plain_nodes(work.path(), "airgap", nodes, pki, &[serving.url()], true)?;
    let metric =
        |name: &str| -> Option<u64> { sum_metric(&serving.metrics(METRICS_LISTEN).ok()?, name) };
    const DECOMPRESSED: &str = "airgap_archive_decompressed_bytes_total";
    let before = metric(DECOMPRESSED);
    let pid = serving
        .daemon
        .pid()
        .context("the serving daemon is not running")?;
    let mut round = measure(pid, &plain, phase)?;
    round.decompressed = metric(DECOMPRESSED)
        .zip(before)
        .map(|(a, b)| a.saturating_sub(b));
    drop(plain);
    drop(serving);
    Ok(round)
}

/// docker-registry with TLS on the serving node's address, over the
/// storage [`fill_registry`] made.
fn round_registry(
    work: &TestDir,
    server: &Node,
    nodes: &[Node],
    pki: &Pki,
    storage: &Path,
    phase: Phase,
) -> Result<Round> {
    let mut registry = start_registry(work, server, pki, storage, true)?;
    let url = format!("https://{}:{REGISTRY_PORT}", server.addr);
    let plain = plain_nodes(
        work.path(),
        "registry",
        nodes,
        pki,
        std::slice::from_ref(&url),
        false,
    )?;
    let pid = registry.pid().context("docker-registry is not running")?;
    let round = measure(pid, &plain, phase)?;
    drop(plain);
    registry.stop(process::STOP_TIMEOUT)?;
    Ok(round)
}

/// Caches dropped, the serving process's peak RSS reset, every node
/// fetches or pulls at once; its CPU and peak RSS over that time. After a
/// pull, every node must hold the same manifest.
fn measure(pid: u32, nodes: &[PlainNode], phase: Phase) -> Result<Round> {
    system::drop_caches()?;
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5")
        .with_context(|| format!("resetting the peak RSS of {pid}"))?;
    let cpu0 = cpu_ticks(pid);
    let read0 = system::read_bytes(pid);
    let t0 = Instant::now();
    let times = match phase {
        Phase::Fetch => fetch_at_once(nodes, NS, BIG)?,
        Phase::Pull => pull_at_once(nodes, NS, BIG)?,
    };
    let total = t0.elapsed().as_secs_f64();
    let cpu1 = cpu_ticks(pid);
    let read = system::read_bytes(pid).saturating_sub(read0);
    // SAFETY: sysconf only reads a configuration value.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let cpu = (cpu1.0 + cpu1.1).saturating_sub(cpu0.0 + cpu0.1) as f64 / hz;
    let hwm = hwm_kib(pid).context("reading the serving process's VmHWM")?;
    let mut digests = Vec::new();
    if phase == Phase::Pull {
        for n in nodes {
            digests.push(n.containerd.image_digest(NS, BIG)?);
        }
        digests.dedup();
        ensure!(
            digests.len() == 1,
            "the nodes pulled different manifests: {digests:?}"
        );
    }
    Ok(Round {
        total,
        slowest: times.iter().map(Duration::as_secs_f64).fold(0.0, f64::max),
        cpu,
        hwm_kib: hwm,
        read,
        decompressed: None,
        digest: digests.pop().unwrap_or_default(),
    })
}

/// `docker-registry serve` in the serving node's namespace: with TLS on
/// its address, or (`tls` false) plain HTTP on its loopback for skopeo.
fn start_registry(
    work: &TestDir,
    server: &Node,
    pki: &Pki,
    storage: &Path,
    tls: bool,
) -> Result<Proc> {
    let (addr, tls_config) = if tls {
        (
            format!("{}:{REGISTRY_PORT}", server.addr),
            format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                pki.path("server.pem"),
                pki.path("server.key")
            ),
        )
    } else {
        (format!("127.0.0.1:{REGISTRY_PORT}"), String::new())
    };
    let config = work.path().join(format!("registry-{tls}.yml"));
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
             http:\n  addr: {addr}\n{tls_config}",
            storage.display()
        ),
    )?;
    let mut cmd = server.command("docker-registry")?;
    let mut proc = Proc::spawn(
        "docker-registry",
        cmd.arg("serve").arg(&config),
        &work.path().join(format!("registry-{tls}.log")),
    )?;
    let scheme = if tls { "https" } else { "http" };
    process::wait_until("docker-registry to answer", Duration::from_secs(30), || {
        proc.check_running()?;
        let out = process::run_unchecked(
            server
                .command("curl")?
                .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
                .args(["--cacert", &pki.path("ca.pem")])
                .arg(format!("{scheme}://{addr}/v2/")),
            Duration::from_secs(10),
        )?;
        Ok(out.stdout.trim() == "200")
    })?;
    Ok(proc)
}

/// The registry's storage with the largest image, pushed by skopeo from
/// the bundle's uncompressed OCI layout (its layers as they are: the same
/// blobs the daemon serves).
fn fill_registry(
    work: &TestDir,
    server: &Node,
    pki: &Pki,
    storage: &PathBuf,
    bundle_dir: &Path,
) -> Result<()> {
    std::fs::create_dir_all(storage)?;
    let mut registry = start_registry(work, server, pki, storage, false)?;
    say("pushing the image into docker-registry's storage (skopeo, not timed)");
    process::run(
        server
            .command("skopeo")?
            .args(["copy", "--quiet", "--dest-tls-verify=false"])
            .arg(format!(
                "oci-archive:{}:1",
                bundle_dir.join("oci.tar").display()
            ))
            .arg(format!(
                "docker://127.0.0.1:{REGISTRY_PORT}/bench/debian-go:1"
            )),
        system::LONG,
    )?;
    registry.stop(process::STOP_TIMEOUT)?;
    Ok(())
}

fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.collect();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// Medians of a server's rounds of one phase: total, slowest node, CPU,
/// peak RSS (KiB).
fn medians(rounds: &[Round]) -> [f64; 4] {
    [
        median(rounds.iter().map(|r| r.total)),
        median(rounds.iter().map(|r| r.slowest)),
        median(rounds.iter().map(|r| r.cpu)),
        median(rounds.iter().map(|r| r.hwm_kib as f64)),
    ]
}

/// The three rows of one phase: the daemon, docker-registry, the ratio.
fn phase_rows(phase: Phase, airgap: &[Round], registry: &[Round]) -> String {
    let (a, r) = (medians(airgap), medians(registry));
    let row = |who: &str, m: [f64; 4]| {
        format!(
            "| {who} | {} | {:.1} s | {:.1} s | {:.1} s | {:.0} MiB |\n",
            phase.label(),
            m[0],
            m[1],
            m[2],
            m[3] / 1024.0
        )
    };
    format!(
        "{}{}| ratio, daemon / docker-registry | {} | {:.2}x | {:.2}x | {:.2}x | {:.2}x |\n",
        row("the daemon's cluster listener", a),
        row("docker-registry", r),
        phase.label(),
        a[0] / r[0].max(0.01),
        a[1] / r[1].max(0.01),
        a[2] / r[2].max(0.01),
        a[3] / r[3].max(1.0),
    )
}

fn report(
    airgap: &Served,
    registry: &Served,
    unpacked_size: u64,
    archive_size: u64,
    bin: &Path,
    load_start: &str,
) -> String {
    let passes: Vec<String> = airgap
        .fetch
        .iter()
        .chain(&airgap.pull)
        .map(|round| match round.decompressed {
            Some(d) => format!(
                "{} decompressed ({:.2} passes over the archive's {}), {} read from disk",
                human_plain(d),
                d as f64 / unpacked_size as f64,
                human_plain(unpacked_size),
                human_plain(round.read)
            ),
            None => format!(
                "no archive metrics, {} read from disk",
                human_plain(round.read)
            ),
        })
        .collect();
    let registry_read: Vec<String> = registry
        .fetch
        .iter()
        .chain(&registry.pull)
        .map(|r| human_plain(r.read))
        .collect();
    let version = crate::containerd::version()
        .map(|v| format!("{}.{}.{}", v.major, v.minor, v.patch))
        .unwrap_or_default();
    format!(
        "Run {} on {}. Load average at the start: {load_start}, at the end: {}.\n\n\
         {NODES} nodes, each a network namespace with its own containerd (overlayfs, no daemon), fetch or pull `{BIG}`\n\
         at once (`--hosts-dir`: the hosts.toml of `config --serving-node`), median of {} rounds, each with a fresh\n\
         server and fresh nodes, caches dropped before. Served by the daemon's cluster listener (TLS, a token per node)\n\
         from the bundle's single-frame `oci.tar.zst` ({}), or by docker-registry 2.8 (TLS, no authentication,\n\
         filesystem storage, the same blobs pushed before). Every node runs on this machine's two cores, so a pull's\n\
         time includes ten unpacks; the fetch rows show the serving side alone. CPU and peak RSS (VmHWM, reset before\n\
         the round) are the serving process's own.\n\n\
         | served by | the ten nodes | all {NODES} done | slowest node | serving CPU | serving peak RSS |\n\
         |---|---|---:|---:|---:|---:|\n{}{}\n\
         The serving daemon, per round (fetches, then pulls): {}. docker-registry read {} from disk per round.\n\
         The daemon's CPU is its single pass decompressing the archive, plus each blob copied to every request waiting\n\
         for it through a file and its digest checked per copy (ten here); docker-registry sends the files it stores.\n\n\
         Served by `{}` (`scripts/bench.sh` builds it for release).\n\n\
         Reproduce: `scripts/bench.sh --cluster --write [--cache DIR] [--reps N]` as root.",
        system::date(),
        system::machine_line(&version),
        system::loadavg(),
        airgap.pull.len(),
        human_plain(archive_size),
        phase_rows(Phase::Fetch, &airgap.fetch, &registry.fetch),
        phase_rows(Phase::Pull, &airgap.pull, &registry.pull),
        passes.join("; "),
        registry_read.join(", "),
        bin.display(),
    )
}

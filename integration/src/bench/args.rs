//! The command line of `bench` (the flags `scripts/bench.sh` always had).

use std::path::PathBuf;

use clap::Parser;

/// Which set of steps a run measures, and which section of BENCHMARKS.md
/// `--write` regenerates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Every way a site pulls an image (section `bench`), plus the small
    /// image, the daemon's start-up and idle RSS, and the profile.
    Full,
    /// The pulls compared across containerd versions (`bench-pulls-<version>`).
    Pulls,
    /// Registration into containerd against import (`bench-import-<version>`).
    Import,
    /// Layers mounted from the archive (`bench-mounts-<version>`).
    Mounts,
    /// Indexing an archive against `zstd -d` (`bench-index`), what
    /// `scripts/bench-index.sh` measures.
    Index,
    /// Release 2 of the bundle packed in full and as a delta of release 1
    /// (`bench-delta`): bytes and time to pack.
    Delta,
    /// Ten nodes in network namespaces pull at once from one serving node,
    /// against docker-registry (`bench-cluster`).
    Cluster,
}

/// The benchmark against what sites use today (issue 5). In one run, on
/// this machine, caches dropped before each step, it pulls the largest image
/// of a generated bundle in every way a site can, and measures the time
/// until the image can run, the disk used (containerd's root plus the
/// daemon's root) and the daemon's peak RSS:
///
///   1  ctr images import of the bundle (.tar.zst: OCI layout with gzip
///      layers as `ctr export | zstd` makes, and docker-save as k3s ships it)
///   2  CRI PullImage (as kubelet) from a local docker-registry
///   3  ctr pull from that registry
///   4  ctr pull through the daemon's registry mirror
///   5  CRI PullImage through mirror + snapshotter, from each kind of archive
///   6  the floor: pigz -dc | tar -x of the same layers, one process per
///      layer in parallel and one after the other (and tar -x of the
///      uncompressed layers: file creation alone)
///
/// and also: a small image out of the large archive (bytes decompressed
/// against the image's own bytes; single-frame and seekable), the daemon's
/// start-up time with a persisted index, and its idle RSS with the bundle
/// indexed. Prints a table; --write puts it into BENCHMARKS.md. Not a test:
/// nothing here asserts a time.
///
/// --pulls runs only the pulls a site compares across containerd versions:
/// (2), (3), (4) and (5) on the oci archive, `ctr pull --snapshotter airgap`
/// through mirror + snapshotter (4b), and the parallel floor (6), and writes
/// them into a section of their own per containerd version. With
/// AIRGAP_CONTAINERD_DIR=DIR the private containerds are the one in DIR,
/// configured as the end-to-end tests do.
///
/// --import runs only what registration into containerd (issue 10) is
/// compared with: (1), (2), (5) on the oci archive, (7) `airgap-snapshotter
/// import` of the bundle, lazy and eager, and (7b) the first `ctr run` of the
/// largest image after a lazy registration.
///
/// --mounts runs only what layers mounted from the archive (EROFS, issue 12)
/// are compared with, on the largest image: (2); (5) with `--layer-mounts
/// extract`; (8) from an uncompressed docker-save archive (private copies made
/// on arrival or on pull, and `--layer-backing archive`), from the docker-save
/// .tar.zst prepared on arrival and on pull, from the oci archive prepared on
/// pull; (9) reading every file of the image in a container over mounted and
/// over extracted layers; and the parallel floor (6).
///
/// --delta packs a release 2 of the bundle (debian-go's top layer changed,
/// debian-perl added, debian-python removed) in full and as a delta of
/// release 1 (`pack --base`, `pack --base-inventory`): bytes and time to
/// pack (no containerd).
///
/// --cluster: ten nodes, each a network namespace with its own containerd,
/// pull the largest image at once from one node's cluster listener serving
/// the single-frame oci archive, and from docker-registry (TLS both): time
/// until all are done, the serving process's CPU and peak RSS, and the
/// daemon's passes over the archive.
///
/// --index [DIR...] measures indexing an archive never seen against `zstd -d`
/// of it, and a restart with the persisted index (no containerd).
///
/// Needs root. Everything runs on loopback in a temporary directory: private
/// containerds (the system containerd is never used), a private
/// docker-registry and the daemon, all stopped by pid at the end, also on
/// failure. containerd runs take the e2e tests' lock (flock integration/).
#[derive(Debug, Parser, PartialEq)]
#[command(name = "bench", verbatim_doc_comment)]
pub struct Args {
    /// Put the report into its section of BENCHMARKS.md.
    #[arg(long)]
    pub write: bool,
    /// Keep the generated bundle (debootstrap rootfs, archives) in DIR, so
    /// that a rerun skips generating it.
    #[arg(long, value_name = "DIR")]
    pub cache: Option<PathBuf>,
    /// Keep the logs of the daemon and the registry in DIR (kept anyway,
    /// under /tmp, when a step fails).
    #[arg(long, value_name = "DIR")]
    pub logs: Option<PathBuf>,
    /// Run every step N times and report the median.
    #[arg(long, value_name = "N", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub reps: u32,
    /// Skip the `perf record` of one more pull of (5) (full run only).
    #[arg(long)]
    pub no_profile: bool,
    /// Only the pulls compared across containerd versions.
    #[arg(long, conflicts_with_all = ["import", "mounts", "index"])]
    pub pulls: bool,
    /// Only registration into containerd against import.
    #[arg(long, conflicts_with_all = ["mounts", "index"])]
    pub import: bool,
    /// Only layers mounted from the archive (EROFS).
    #[arg(long, conflicts_with = "index")]
    pub mounts: bool,
    /// Only indexing speed (what `scripts/bench-index.sh` runs).
    #[arg(long, conflicts_with = "delta")]
    pub index: bool,
    /// Only delta bundles: release 2 in full and as a delta of release 1.
    #[arg(long, conflicts_with_all = ["pulls", "import", "mounts"])]
    pub delta: bool,
    /// Only one node serving ten: the cluster listener against docker-registry.
    #[arg(long, conflicts_with_all = ["pulls", "import", "mounts", "index", "delta"])]
    pub cluster: bool,
    /// --index: the directories the bundles are made of (default: a few
    /// large directories of this machine).
    #[arg(value_name = "DIR", requires = "index")]
    pub dirs: Vec<PathBuf>,
}

impl Args {
    pub fn mode(&self) -> Mode {
        if self.pulls {
            Mode::Pulls
        } else if self.import {
            Mode::Import
        } else if self.mounts {
            Mode::Mounts
        } else if self.index {
            Mode::Index
        } else if self.delta {
            Mode::Delta
        } else if self.cluster {
            Mode::Cluster
        } else {
            Mode::Full
        }
    }

    /// The profile is taken in the full run only, as before.
    pub fn profile(&self) -> bool {
        self.mode() == Mode::Full && !self.no_profile
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Args, clap::Error> {
        Args::try_parse_from(std::iter::once("bench").chain(args.iter().copied()))
    }

    #[test]
    fn defaults_are_the_full_run_with_three_rounds_and_a_profile() {
        let args = parse(&[]).unwrap();
        assert_eq!(args.mode(), Mode::Full);
        assert_eq!(args.reps, 3);
        assert!(args.profile());
        assert!(!args.write);
        assert_eq!(args.cache, None);
    }

    #[test]
    fn flags_as_the_script_took_them() {
        let args = parse(&[
            "--mounts", "--write", "--cache", "/c", "--reps", "1", "--logs", "/l",
        ])
        .unwrap();
        assert_eq!(args.mode(), Mode::Mounts);
        assert!(args.write);
        assert_eq!(args.cache.as_deref(), Some(std::path::Path::new("/c")));
        assert_eq!(args.logs.as_deref(), Some(std::path::Path::new("/l")));
        assert_eq!(args.reps, 1);
        assert!(!args.profile(), "only the full run is profiled");
        assert_eq!(parse(&["--pulls"]).unwrap().mode(), Mode::Pulls);
        assert_eq!(parse(&["--import"]).unwrap().mode(), Mode::Import);
        assert!(!parse(&["--no-profile"]).unwrap().profile());
        let index = parse(&["--index", "--write", "/usr/lib/go-1.19"]).unwrap();
        assert_eq!(index.mode(), Mode::Index);
        assert_eq!(index.dirs, vec![PathBuf::from("/usr/lib/go-1.19")]);
        let delta = parse(&["--delta", "--write", "--cache", "/c"]).unwrap();
        assert_eq!(delta.mode(), Mode::Delta);
        assert!(!delta.profile());
        assert_eq!(
            parse(&["--cluster", "--reps", "1"]).unwrap().mode(),
            Mode::Cluster
        );
    }

    #[test]
    fn refuses_what_the_script_refused() {
        assert!(parse(&["--pulls", "--mounts"]).is_err());
        assert!(parse(&["--delta", "--index"]).is_err());
        assert!(parse(&["--cluster", "--delta"]).is_err());
        assert!(parse(&["--reps", "0"]).is_err());
        assert!(parse(&["--reps"]).is_err());
        assert!(parse(&["--frobnicate"]).is_err());
        assert!(
            parse(&["/some/dir"]).is_err(),
            "directories only with --index"
        );
    }
}

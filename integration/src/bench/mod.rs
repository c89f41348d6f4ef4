//! The benchmark harness (`bench`, run by `scripts/bench.sh` and
//! `scripts/bench-index.sh`): every way a site gets an image runnable, timed
//! against each other in one run, on the private containerd, registry and
//! daemon of the end-to-end harness. Not a test: nothing asserts a time.
//!
//! - [`args`]: the command line.
//! - [`bundle`]: the generated images and archives (cached with --cache).
//! - [`steps`]: one way of pulling per step, measured (time, disk, RSS);
//!   [`mounts`]: the --mounts steps.
//! - [`run`]: the rounds of a mode; [`sections`]: the report of each mode.
//! - [`report`]: the pure part: numbers as printed, tables, the sections of
//!   BENCHMARKS.md.
//! - [`index`]: indexing speed (--index).
//! - [`delta`]: delta bundles against the full bundle (--delta).
//! - [`cluster`]: one node serving ten at once, against docker-registry
//!   (--cluster).
//! - [`system`]: /proc, caches, small commands, HTTP probes.

pub mod args;
pub mod bundle;
pub mod cluster;
pub mod delta;
pub mod index;
pub mod mounts;
pub mod report;
pub mod run;
pub mod sections;
pub mod steps;
pub mod system;

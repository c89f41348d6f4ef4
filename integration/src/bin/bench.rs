//! `bench`: the benchmark harness (see `airgap_integration::bench` and
//! `bench --help`); `scripts/bench.sh` builds and runs it as root.

use airgap_integration::bench::{args::Args, run};
use clap::Parser;

fn main() -> anyhow::Result<()> {
    run::run(Args::parse())
}

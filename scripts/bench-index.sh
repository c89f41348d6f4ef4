#!/usr/bin/env bash
# Indexing speed: how long `airgap-snapshotter images` takes to index an
# archive it has never seen, against `zstd -d` of the same archive to
# /dev/null, and a restart with the persisted index. Runs the harness's
# --index mode (integration/src/bench/index.rs). Not a test: prints a table
# and, with --write, puts it into BENCHMARKS.md.
#
#   scripts/bench-index.sh [--write] [DIR...]   (default DIRs: a few large
#                                              directories of this machine)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
command -v zstd >/dev/null && command -v python3 >/dev/null ||
    { echo "needs zstd, python3 (scripts/install-deps.sh)" >&2; exit 1; }
cargo build --release -q -p airgap-snapshotter --bin airgap-snapshotter --example bench-decompressed
cargo build -q -p airgap-integration --bin bench
target=${CARGO_TARGET_DIR:-target}
AIRGAP_SNAPSHOTTER_BIN=$(realpath "$target/release/airgap-snapshotter") exec "$target/debug/bench" --index "$@"

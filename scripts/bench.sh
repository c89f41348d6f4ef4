#!/usr/bin/env bash
# The benchmark against what sites use today (issues 5, 10, 12): installs
# what it needs, builds the daemon and the harness (release), and runs the
# harness, integration/src/bench (`bench --help` says what each mode
# measures). Needs root.
#
#   scripts/bench.sh [--write] [--cache DIR] [--logs DIR] [--reps N] [--no-profile] [--pulls|--import|--mounts|--delta|--cluster]
#
# AIRGAP_CONTAINERD_DIR=DIR runs the private containerds from DIR (1.7, 2.x:
# scripts/fetch-containerd.sh, scripts/build-containerd.sh).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
[[ $(id -u) -eq 0 ]] || { echo "bench.sh needs root (containerd, mounts, drop_caches)" >&2; exit 1; }
need=(containerd ctr runc docker-registry skopeo pigz zstd tar python3 debootstrap du findmnt ip curl openssl)
missing=()
for c in "${need[@]}"; do command -v "$c" >/dev/null || missing+=("$c"); done
if ((${#missing[@]})); then
    echo "==> installing what is missing: ${missing[*]}" >&2
    scripts/install-deps.sh >/dev/null
    command -v debootstrap >/dev/null || apt-get install -y -q debootstrap >/dev/null
fi
# What is measured is built for release; the harness only starts and times
# it (in release it would build the daemon's library a second time).
echo "==> building (the daemon for release, the harness)" >&2
cargo build --release -q -p airgap-snapshotter --bin airgap-snapshotter --example bench-decompressed
cargo build -q -p airgap-integration --bin bench
target=${CARGO_TARGET_DIR:-target}
AIRGAP_SNAPSHOTTER_BIN=$(realpath "$target/release/airgap-snapshotter") exec "$target/debug/bench" "$@"

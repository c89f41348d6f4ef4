#!/usr/bin/env bash
# A short smoke run of every cargo-fuzz target in fuzz/fuzz_targets (the
# `fuzz` step of scripts/test.sh): builds them with the nightly toolchain and
# runs each for AIRGAP_FUZZ_SECONDS (default 30) from an empty corpus kept
# in a temporary directory (nothing is written under fuzz/). A crash fails
# the run and leaves its reproducer in the printed artifacts directory.
#
# Needs `cargo +nightly` and `cargo install cargo-fuzz`; says it skipped
# and exits 0 without them (scripts/test.sh checks first and reports a SKIP). The `extract` target wants root (device nodes, trusted.*
# xattrs). Longer runs: `cd fuzz && cargo +nightly fuzz run TARGET`.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../fuzz"

if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "fuzz-smoke: no nightly toolchain (rustup toolchain install nightly): skipped"
    exit 0
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "fuzz-smoke: cargo-fuzz is not installed (cargo install cargo-fuzz): skipped"
    exit 0
fi

seconds=${AIRGAP_FUZZ_SECONDS:-30}
work=$(mktemp -d /tmp/airgap-fuzz-smoke-XXXXXX)
# The targets' scratch directories (std::env::temp_dir()) go here too, and
# with the corpus whatever happens; only a crash's artifacts stay.
export TMPDIR=$work/tmp
mkdir -p "$TMPDIR"
trap 'rm -rf "$work/corpus" "$work/tmp"' EXIT

targets=()
for f in fuzz_targets/*.rs; do
    targets+=("$(basename "$f" .rs)")
done

cargo +nightly fuzz build
for t in "${targets[@]}"; do
    mkdir -p "$work/corpus/$t" "$work/artifacts/$t"
    echo "== fuzz-smoke: $t for ${seconds}s"
    cargo +nightly fuzz run "$t" "$work/corpus/$t" -- \
        -max_total_time="$seconds" -artifact_prefix="$work/artifacts/$t/" -print_final_stats=1
done
rm -rf "$work"
echo "fuzz-smoke: ${#targets[@]} targets ran ${seconds}s each without a crash"

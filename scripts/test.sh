#!/usr/bin/env bash
# The whole test suite, as CI runs it (.ci/run), on a fresh Debian 12 as root:
#
#   1. installs what the build and the tests need (scripts/install-deps.sh)
#   2. cargo fmt --all --check
#   3. cargo clippy --workspace --all-targets -- -D warnings
#   4. unit and in-process tests of the whole workspace (cargo nextest)
#   5. containerd's snapshotter conformance suite (integration/conformance.sh)
#   6. the root-only end-to-end tests (integration/tests/*.rs): a private
#      containerd, runc, docker-registry and a CRI client playing kubelet
#
# Every step runs even when an earlier one failed (after the build steps),
# a summary is printed at the end, and the exit status is non-zero if any
# step failed. Steps 5 and 6 need root and are reported as skipped
# otherwise. Environment: AIRGAP_TEST_SKIP_DEPS=1 skips step 1;
# AIRGAP_SNAPSHOTTER_BIN=PATH tests that daemon binary instead of building
# target/debug/airgap-snapshotter.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

# rustup installs cargo in ~/.cargo/bin, which a non-login shell may lack.
if ! command -v cargo >/dev/null 2>&1 && [[ -x ${CARGO_HOME:-$HOME/.cargo}/bin/cargo ]]; then
    export PATH=${CARGO_HOME:-$HOME/.cargo}/bin:$PATH
fi

export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}
export RUST_BACKTRACE=${RUST_BACKTRACE:-1}

started=$(date +%s)
logs=$(mktemp -d /tmp/airgap-test-logs-XXXXXX)
summary=()
failed=0

# step NAME TIMEOUT_MINUTES COMMAND...
step() {
    local name=$1 minutes=$2
    shift 2
    local t0 rc
    t0=$(date +%s)
    printf '\n===== %s: %s\n' "$name" "$*"
    local log=$logs/$name.log
    rc=0
    timeout --kill-after=30s "${minutes}m" "$@" 2>&1 | tee "$log" || rc=${PIPESTATUS[0]}
    local took=$(($(date +%s) - t0))
    if ((rc == 0)); then
        summary+=("PASS  ${name} (${took}s)")
    else
        if ((rc == 124)); then
            summary+=("FAIL  ${name} (timed out after ${minutes} min)")
        else
            summary+=("FAIL  ${name} (exit ${rc}, ${took}s)")
        fi
        # Name the failed tests (nextest, cargo test and go test formats).
        local line
        while IFS= read -r line; do
            summary+=("        ${line}")
        done < <(grep -E '^ +FAIL \[|^test .* FAILED$|^--- FAIL' "$log" | sed -E 's/^ +//' | sort -u | head -n 20)
        failed=1
    fi
    return 0
}

skip() {
    printf '\n===== %s: skipped (%s)\n' "$1" "$2"
    summary+=("SKIP  $1 ($2)")
}

print_summary() {
    printf '\n===== summary (%ss in total)\n' "$(($(date +%s) - started))"
    printf '  %s\n' "${summary[@]}"
    if ((failed)); then
        printf 'FAILED\n'
    else
        printf 'ALL PASSED\n'
    fi
}
trap 'print_summary; rm -rf "$logs"' EXIT

is_root=0
[[ $(id -u) -eq 0 ]] && is_root=1

if [[ ${AIRGAP_TEST_SKIP_DEPS:-0} == 1 ]]; then
    skip install-deps "AIRGAP_TEST_SKIP_DEPS=1"
elif ((is_root)); then
    step install-deps 30 scripts/install-deps.sh
    if ((failed)); then
        exit 1
    fi
else
    skip install-deps "not root"
fi

step fmt 5 cargo fmt --all --check
step clippy 30 cargo clippy --workspace --all-targets -- -D warnings

if cargo nextest --version >/dev/null 2>&1; then
    # The root-only tests of integration/tests get their own step below.
    step unit-tests 30 cargo nextest run --workspace --no-fail-fast \
        -E 'not (package(airgap-integration) & kind(test))'
else
    step unit-tests 30 cargo test --workspace --no-fail-fast \
        --exclude airgap-integration
fi

# One daemon binary for the conformance suite and the end-to-end tests.
if [[ -z ${AIRGAP_SNAPSHOTTER_BIN:-} ]]; then
    step build-daemon 30 cargo build -p airgap-snapshotter --bin airgap-snapshotter
    export AIRGAP_SNAPSHOTTER_BIN=${CARGO_TARGET_DIR:-$PWD/target}/debug/airgap-snapshotter
fi

if [[ ! -f integration/conformance.sh ]]; then
    skip conformance "integration/conformance.sh does not exist yet"
elif ((is_root)); then
    step conformance 20 bash integration/conformance.sh
else
    skip conformance "needs root"
fi

if ((is_root)); then
    if cargo nextest --version >/dev/null 2>&1; then
        step e2e 25 cargo nextest run -p airgap-integration --no-fail-fast \
            --test-threads 1 -E 'kind(test)'
    else
        step e2e 25 cargo test -p airgap-integration --no-fail-fast \
            --tests -- --test-threads 1
    fi
else
    skip e2e "needs root"
fi

exit "$failed"

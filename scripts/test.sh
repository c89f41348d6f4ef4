#!/usr/bin/env bash
# The whole test suite, as CI runs it (.ci/run), on a fresh Debian 12 as root:
#
#   1. installs what the build and the tests need (scripts/install-deps.sh)
#   2. cargo fmt --all --check
#   3. cargo clippy --workspace --all-targets -- -D warnings
#   4. unit and in-process tests of the whole workspace (cargo nextest),
#      then a short smoke run of each fuzz target (scripts/fuzz-smoke.sh,
#      step `fuzz`; skipped without a nightly toolchain and cargo-fuzz)
#   5. containerd's snapshotter conformance suite, twice: 1.6's from Debian
#      12's packages (integration/conformance.sh, step `conformance`) and
#      2.x's from Debian sid's Go sources, fetched (not installed) into
#      /var/cache/airgap-snapshotter/containerd-go (integration/conformance2.sh,
#      step `conformance-2.x`: every case 2.x's own overlayfs snapshotter
#      passes must pass; about 3 min cold, 40 s warm)
#   6. the root-only end-to-end tests (integration/tests/*.rs): a private
#      containerd, runc, docker-registry and a CRI client playing kubelet,
#      once per containerd version, each its own step `e2e-<version>`:
#      the system's (Debian 12: 1.6), and Debian trixie's (1.7) and sid's
#      (2.x) packages, fetched (not installed) by scripts/fetch-containerd.sh
#      into /var/cache/airgap-snapshotter/containerd. The full suite runs on
#      every version (about 1.5 min each on 2 cores): version-specific
#      behaviour is asserted per version inside the tests.
#   7. the release artifacts (scripts/release.sh: static musl binaries,
#      tarballs and .debs for linux-amd64 and linux-arm64 into dist/), then
#      their tests (scripts/release-test.sh: checksums, contents, --version,
#      the .debs unpacked, never installed, and the arm64 daemon under
#      qemu-user serving the system containerd through integration/tests/e2e.rs).
#
# Every step runs even when an earlier one failed (after the build steps),
# a summary is printed at the end (with every test that skipped itself,
# counted and named: tests record a skip and its reason in the file
# $AIRGAP_TEST_SKIP_LOG that each step gets), and the exit status is non-zero if any
# step failed. Steps 5 and 6 need root and are reported as skipped
# otherwise. A containerd version (or 2.x's Go sources) that could not be
# fetched (no network) is a FAIL of its step, with the reason. Environment:
# AIRGAP_TEST_SKIP_DEPS=1 skips step 1; AIRGAP_TEST_SKIP_RELEASE=1 skips
# the release steps; AIRGAP_RELEASE_TEST_ARM64_UNIT=1 adds the unit tests built for
# aarch64 and run under qemu-aarch64 to it (slow, see scripts/release-test.sh); AIRGAP_SNAPSHOTTER_BIN=PATH tests
# that daemon binary instead of building target/debug/airgap-snapshotter;
# AIRGAP_CONTAINERD_DIRS="system DIR..." replaces the list of containerds
# (`system` is the one on PATH; a DIR holds containerd, ctr and
# containerd-shim-runc-v2, directly or in usr/bin) and skips the fetch.
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
skipped_tests=0

# step NAME TIMEOUT_MINUTES COMMAND...
step() {
    local name=$1 minutes=$2
    shift 2
    local t0 rc
    t0=$(date +%s)
    printf '\n===== %s: %s\n' "$name" "$*"
    local log=$logs/$name.log
    rc=0
    local skips=$logs/$name.skips
    AIRGAP_TEST_SKIP_LOG=$skips timeout --kill-after=30s "${minutes}m" "$@" 2>&1 | tee "$log" || rc=${PIPESTATUS[0]}
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
    # Tests that skipped themselves (testsupport::skip) are counted and
    # named: a skipped test is not a passed one.
    if [[ -s $skips ]]; then
        local n
        n=$(sort -u "$skips" | wc -l)
        summary+=("SKIP  ${n} test(s) in ${name}:")
        while IFS= read -r line; do
            summary+=("        ${line}")
        done < <(sort -u "$skips" | head -n 30)
        skipped_tests=$((skipped_tests + n))
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
    elif ((skipped_tests)); then
        printf 'PASSED, with %s test(s) skipped (named above)\n' "$skipped_tests"
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

# A short smoke run of every fuzz target (nightly and cargo-fuzz needed).
if cargo +nightly fuzz --version >/dev/null 2>&1; then
    step fuzz 40 env AIRGAP_FUZZ_SECONDS="${AIRGAP_FUZZ_SECONDS:-20}" scripts/fuzz-smoke.sh
else
    skip fuzz "no nightly toolchain with cargo-fuzz (rustup toolchain install nightly; cargo install cargo-fuzz)"
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

if [[ ! -f integration/conformance2.sh ]]; then
    skip conformance-2.x "integration/conformance2.sh does not exist yet"
elif ((is_root)); then
    step conformance-2.x 20 bash integration/conformance2.sh
else
    skip conformance-2.x "needs root"
fi

# The containerd versions of the end-to-end tests: `system` (the one on
# PATH, Debian 12's 1.6) and one Debian suite per later version. Adding a
# version is one more suite here (its containerd package is fetched into
# $containerd_cache/<suite>), or one more directory in AIRGAP_CONTAINERD_DIRS.
CONTAINERD_SUITES=(trixie sid) # 1.7, 2.x
containerd_cache=${AIRGAP_CONTAINERD_CACHE:-/var/cache/airgap-snapshotter/containerd}

# e2e_step DIR: the end-to-end tests against the containerd in DIR (or the
# system's), as step `e2e-<version>`.
e2e_step() {
    local dir=$1 bin version
    if [[ $dir == system ]]; then
        bin=$(dirname "$(command -v containerd 2>/dev/null || echo /usr/bin/containerd)")
    elif [[ -x $dir/usr/bin/containerd ]]; then
        bin=$dir/usr/bin
    else
        bin=$dir
    fi
    if [[ ! -x $bin/containerd || ! -x $bin/ctr ]]; then
        local name
        name=e2e-$(basename "$dir")
        printf '\n===== %s: no containerd in %s\n' "$name" "$dir"
        summary+=("FAIL  ${name} (no containerd and ctr in ${dir}: fetching it failed, see the fetch-containerd step)")
        failed=1
        return 0
    fi
    version=$("$bin/containerd" --version 2>/dev/null | awk '{ print $3 }' | sed -E 's/^v//; s/[~+-].*//')
    [[ -n $version ]] || version=unknown
    local test_cmd
    if cargo nextest --version >/dev/null 2>&1; then
        test_cmd=(cargo nextest run -p airgap-integration --no-fail-fast
            --test-threads 1 -E 'kind(test)')
    else
        test_cmd=(cargo test -p airgap-integration --no-fail-fast
            --tests -- --test-threads 1)
    fi
    if [[ $dir == system ]]; then
        step "e2e-$version" 25 env -u AIRGAP_CONTAINERD_DIR "${test_cmd[@]}"
    else
        step "e2e-$version" 25 env AIRGAP_CONTAINERD_DIR="$dir" "${test_cmd[@]}"
    fi
}

if ((is_root)); then
    if [[ -n ${AIRGAP_CONTAINERD_DIRS:-} ]]; then
        read -r -a containerd_dirs <<<"$AIRGAP_CONTAINERD_DIRS"
    else
        containerd_dirs=(system)
        for suite in "${CONTAINERD_SUITES[@]}"; do
            containerd_dirs+=("$containerd_cache/$suite")
        done
        step fetch-containerd 10 env AIRGAP_CONTAINERD_CACHE="$containerd_cache" \
            scripts/fetch-containerd.sh "${CONTAINERD_SUITES[@]}"
    fi
    for dir in "${containerd_dirs[@]}"; do
        e2e_step "$dir"
    done
else
    skip e2e "needs root"
fi

if [[ ${AIRGAP_TEST_SKIP_RELEASE:-0} == 1 ]]; then
    skip release "AIRGAP_TEST_SKIP_RELEASE=1"
elif ((is_root)); then
    step release 30 scripts/release.sh
    step release-test 20 scripts/release-test.sh
else
    skip release "needs root (it installs the cross toolchains; the tests run containerd)"
fi

exit "$failed"

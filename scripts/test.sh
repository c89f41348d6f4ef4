#!/usr/bin/env bash
# The whole test suite, as CI runs it (.ci/run), on a fresh Debian 12 as root.
#
#   scripts/test.sh           the whole suite (CI)
#   scripts/test.sh --quick   fmt, clippy, unit tests and the end-to-end tests
#                             on one containerd (AIRGAP_CONTAINERD_DIR, else the
#                             system's): the tier to run before a commit
#
# Steps, in order (each named in the summary with its time):
#   1. install-deps: what the build and the tests need (scripts/install-deps.sh)
#   2. go-clients and go-tools, in the background from the start (niced, so
#      the Rust steps keep the CPU): the Go programs Debian does not ship,
#      built from the Go module proxy with /usr/local/go and cached by
#      version under /var/cache/airgap-snapshotter/
#      (scripts/build-test-tools.sh): crictl, cosign and the
#      distribution-spec suite (go-clients, needed by every e2e step), containerd 2.3 and 2.4 and
#      kubelet (go-tools, needed from the first whole-suite step on)
#   3. fmt, clippy (-D warnings), unit-tests (every unit and in-process
#      test, cargo nextest), fuzz (a short run of each fuzz target; skipped,
#      and said so, without a nightly toolchain and cargo-fuzz)
#   4. conformance, conformance-2.x: containerd's snapshotter conformance
#      suite from 1.6 (Debian 12's sources, GOPATH mode, Debian's Go 1.19)
#      and from 2.3.7 (the Go module integration/conformance2, go.sum
#      committed, built with /usr/local/go; the test binary cached under
#      /var/cache/airgap-snapshotter/conformance2: about 50 s warm)
#   5. release, in the background from here on (its own target directory,
#      niced): static musl binaries, tarballs and .debs for linux-amd64 and
#      linux-arm64 (scripts/release.sh)
#   6. e2e-<version>: the root-only end-to-end tests (integration/tests/*.rs:
#      a private containerd, runc, docker-registry, crictl, kubelet and our
#      CRI client) once per containerd version. The whole suite runs on the
#      versions that matter most (1.7, 2.3 LTS, 2.4 current); 1.6 (end of
#      life) and 2.1 get the subset below (E2E_SUBSET), chosen so every
#      version-specific behaviour is still asserted on them. Test files
#      that do not depend on the version (E2E_ONCE) run on 2.3 only.
#      Versions: the system's (Debian 12: 1.6), Debian trixie's (1.7) and
#      sid's (2.1) packages fetched, not installed, by
#      scripts/fetch-containerd.sh, and 2.3 and 2.4 from step 2.
#   7. distspec: the OCI distribution-spec conformance suite against the
#      mirror (integration/distspec.sh)
#   8. release-test: the release artifacts' tests (scripts/release-test.sh:
#      checksums, contents, --version, the .debs unpacked, never installed,
#      and the arm64 daemon under qemu-user serving the system containerd)
#
# Build outputs are cached across runs outside the clone: cargo's target
# directory is /var/cache/airgap-snapshotter/cargo-target (the release
# build's: .../cargo-target-release) unless CARGO_TARGET_DIR is set, and Go's
# caches are under /var/cache/airgap-snapshotter/go.
#
# Every step runs even when an earlier one failed (after install-deps), a
# summary is printed at the end with each step's time and every test that
# skipped itself, counted and named (tests record a skip and its reason in
# the file $AIRGAP_TEST_SKIP_LOG that each step gets), and the exit status is
# non-zero if any step failed. The root-only steps are reported as skipped
# when not root. A containerd or tool that could not be fetched or built (no
# network) is a FAIL of its step, with the reason. Environment:
# AIRGAP_TEST_SKIP_DEPS=1 skips step 1; AIRGAP_TEST_SKIP_RELEASE=1 skips
# the release steps; AIRGAP_RELEASE_TEST_ARM64_UNIT=1 adds the unit tests built for
# aarch64 and run under qemu-aarch64 to it (slow, see scripts/release-test.sh); AIRGAP_SNAPSHOTTER_BIN=PATH tests
# that daemon binary instead of building it;
# AIRGAP_CONTAINERD_DIRS="system DIR..." replaces the list of containerds
# (`system` is the one on PATH; a DIR holds containerd, ctr and
# containerd-shim-runc-v2, directly or in usr/bin), each getting the whole
# end-to-end suite, and skips the fetch and the containerd builds.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

# rustup installs cargo in ~/.cargo/bin, which a non-login shell may lack.
if ! command -v cargo >/dev/null 2>&1 && [[ -x ${CARGO_HOME:-$HOME/.cargo}/bin/cargo ]]; then
    export PATH=${CARGO_HOME:-$HOME/.cargo}/bin:$PATH
fi

quick=0
for arg in "$@"; do
    case $arg in
        --quick) quick=1 ;;
        -h | --help)
            sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'
            exit 0
            ;;
        *)
            echo "test.sh: unknown argument $arg (see --help)" >&2
            exit 2
            ;;
    esac
done

# Rust build outputs live outside the clone and survive it (CI clones
# afresh): one target directory for the debug build and tests, another for
# the release build, which runs in the background beside the tests (cargo
# locks a target directory for the length of a build).
cache_root=/var/cache/airgap-snapshotter
if [[ -z ${CARGO_TARGET_DIR:-} ]] && mkdir -p "$cache_root/cargo-target" 2>/dev/null; then
    export CARGO_TARGET_DIR=$cache_root/cargo-target
    release_target_dir=$cache_root/cargo-target-release
else
    release_target_dir=${CARGO_TARGET_DIR:-$PWD/target}-release
fi

export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}
export RUST_BACKTRACE=${RUST_BACKTRACE:-1}

started=$(date +%s)
logs=$(mktemp -d /tmp/airgap-test-logs-XXXXXX)
summary=()
failed=0
skipped_tests=0

# record NAME RC SECONDS MINUTES: the summary lines of a finished step
# (its log and skip ledger are in $logs).
record() {
    local name=$1 rc=$2 took=$3 minutes=$4 log=$logs/$1.log skips=$logs/$1.skips line
    if ((rc == 0)); then
        summary+=("PASS  ${name} (${took}s)")
    else
        if ((rc == 124)); then
            summary+=("FAIL  ${name} (timed out after ${minutes} min)")
        else
            summary+=("FAIL  ${name} (exit ${rc}, ${took}s)")
        fi
        # Name the failed tests (nextest, cargo test and go test formats).
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
}

# step NAME TIMEOUT_MINUTES COMMAND...
step() {
    local name=$1 minutes=$2
    shift 2
    local t0 rc=0
    t0=$(date +%s)
    printf '\n===== %s: %s\n' "$name" "$*"
    AIRGAP_TEST_SKIP_LOG=$logs/$name.skips timeout --kill-after=30s "${minutes}m" "$@" 2>&1 |
        tee "$logs/$name.log" || rc=${PIPESTATUS[0]}
    record "$name" "$rc" "$(($(date +%s) - t0))" "$minutes"
    return 0
}

# bg_step NAME TIMEOUT_MINUTES COMMAND...: starts a step in the background,
# niced, its output kept for wait_step NAME, which prints it and records
# the step. A step still running when the suite ends is stopped.
declare -A bg_pids=() bg_minutes=()
bg_step() {
    local name=$1 minutes=$2
    shift 2
    printf '\n===== %s: started in the background: %s\n' "$name" "$*"
    (
        t0=$(date +%s)
        rc=0
        AIRGAP_TEST_SKIP_LOG=$logs/$name.skips nice -n 10 timeout --kill-after=30s "${minutes}m" "$@" \
            >"$logs/$name.log" 2>&1 </dev/null || rc=$?
        echo "$rc $(($(date +%s) - t0))" >"$logs/$name.rc"
    ) &
    bg_pids[$name]=$!
    bg_minutes[$name]=$minutes
}

wait_step() {
    local name=$1 rc took
    [[ -n ${bg_pids[$name]:-} ]] || return 0
    printf '\n===== %s: waiting for the background step\n' "$name"
    wait "${bg_pids[$name]}" || true
    unset "bg_pids[$name]"
    cat "$logs/$name.log"
    read -r rc took <"$logs/$name.rc" || { rc=1 took=0; }
    record "$name" "$rc" "$took" "${bg_minutes[$name]}"
    return 0
}

stop_background() {
    local name pid
    for name in "${!bg_pids[@]}"; do
        pid=${bg_pids[$name]}
        # timeout forwards TERM to the step's process group.
        pkill -TERM -P "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
        summary+=("FAIL  ${name} (stopped: the suite ended first)")
    done
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
trap 'stop_background; print_summary; rm -rf "$logs"' EXIT

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

# The Go programs of the end-to-end tests, built while the Rust steps run, in
# two steps so that the first e2e steps (crictl) need not wait for the
# longest builds (kubelet, containerd). Their paths come back in
# $logs/<step>.env; a cached build costs nothing.
if ((is_root)); then
    if ((quick)); then
        # One containerd, chosen by the caller: only the clients.
        bg_step go-clients 50 scripts/build-test-tools.sh "$logs/go-clients.env" crictl kubelet
    else
        bg_step go-clients 50 scripts/build-test-tools.sh "$logs/go-clients.env" crictl distspec cosign
        bg_step go-tools 50 scripts/build-test-tools.sh "$logs/go-tools.env" \
            containerd-2.3 containerd-2.4 kubelet
    fi
fi

step fmt 5 cargo fmt --all --check
step clippy 30 cargo clippy --workspace --all-targets -- -D warnings

if cargo nextest --version >/dev/null 2>&1; then
    # The root-only tests of integration/tests get their own steps below.
    step unit-tests 30 cargo nextest run --workspace --no-fail-fast \
        -E 'not (package(airgap-integration) & kind(test))'
else
    step unit-tests 30 cargo test --workspace --no-fail-fast \
        --exclude airgap-integration
fi

if ((!quick)); then
    # A short smoke run of every fuzz target (nightly and cargo-fuzz needed).
    if cargo +nightly fuzz --version >/dev/null 2>&1; then
        step fuzz 40 env AIRGAP_FUZZ_SECONDS="${AIRGAP_FUZZ_SECONDS:-20}" scripts/fuzz-smoke.sh
    else
        skip fuzz "no nightly toolchain with cargo-fuzz (rustup toolchain install nightly; cargo install cargo-fuzz)"
    fi
fi

# One daemon binary for the conformance suites and the end-to-end tests.
if [[ -z ${AIRGAP_SNAPSHOTTER_BIN:-} ]]; then
    step build-daemon 30 cargo build -p airgap-snapshotter --bin airgap-snapshotter
    export AIRGAP_SNAPSHOTTER_BIN=${CARGO_TARGET_DIR:-$PWD/target}/debug/airgap-snapshotter
fi

if ((!quick)); then
    if ((is_root)); then
        step conformance 20 bash integration/conformance.sh
        step conformance-2.x 20 bash integration/conformance2.sh
    else
        skip conformance "needs root"
        skip conformance-2.x "needs root"
    fi
    if [[ ${AIRGAP_TEST_SKIP_RELEASE:-0} == 1 ]]; then
        skip release "AIRGAP_TEST_SKIP_RELEASE=1"
    elif ((is_root)); then
        bg_step release 45 env AIRGAP_RELEASE_TARGET_DIR="$release_target_dir" scripts/release.sh
    else
        skip release "needs root (it installs the cross toolchains; the tests run containerd)"
    fi
fi

# The end-to-end subset for the containerd versions that do not get the
# whole suite (1.6, end of life, and 2.1): every test with behaviour that
# differs by version, so each difference is still asserted on each version.
#   CRI pull from an archive, a pod running it, CRI's version answer, pins
E2E_SUBSET=(cri_pull_of_archived_image_downloads_no_layer cri_pod_runs_archived_image)
#   the transfer service (2.x), ctr pull with and without it, the diff-id
#   and parent-chain-id Prepare labels (2.3+: a layer from another image's
#   archive)
E2E_SUBSET+=(cri_pull_through_the_transfer_service_downloads_no_layer plain_ctr_pull_works_as_ordinary_snapshotter
    cri_pull_of_rebased_image_takes_its_archived_layer_by_diff_id)
#   EROFS layers and their mounts across a daemon restart
E2E_SUBSET+=(docker_save_layers_are_mounted_from_the_archive daemon_restart_keeps_snapshots_usable)
#   registration through containerd's images API
E2E_SUBSET+=(imported_image_runs_without_a_pull a_pulled_image_is_untouched_by_archives_of_its_name)
#   each containerd config version (2, 3), written by `config --merge`,
#   read by doctor, k3s's template, the mirror through hosts.toml
E2E_SUBSET+=(config_merge_wires_containerd_default_config doctor_names_each_mistake_with_its_fix
    config_merge_writes_a_conf_d_drop_in transfer_service_ignores_a_config_path_list
    k3s_template_and_registries_yaml_take_layers_from_the_archive ctr_and_cri_pull_through_the_mirror)
# crictl, the real CRI client, runs on every version (binary(=crictl)).
# A name here that no test has would drop its coverage silently: refused.
#
# Test files whose behaviour does not depend on the containerd version
# (the features built on the mirror and the archives: cluster serving and
# its load test, bundles, signatures; the CLI's JSON output) run once, on 2.3 LTS (tier `all`); the other
# whole-suite versions run everything else (tier `most`).
E2E_ONCE=(cluster cluster_serve cluster_load bundles signing cli_json)
for name in "${E2E_SUBSET[@]}"; do
    if ! grep -q "^fn $name()" integration/tests/*.rs; then
        summary+=("FAIL  e2e subset: no test named $name in integration/tests (E2E_SUBSET in scripts/test.sh)")
        failed=1
    fi
done

# e2e_step DIR TIER: the end-to-end tests (TIER: all, most or subset) against the
# containerd in DIR (or the system's), as step `e2e-<version>`.
e2e_step() {
    local dir=$1 tier=$2 bin version
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
        summary+=("FAIL  ${name} (no containerd and ctr in ${dir}: fetching or building it failed, see the step that made it)")
        failed=1
        return 0
    fi
    version=$("$bin/containerd" --version 2>/dev/null | awk '{ print $3 }' | sed -E 's/^v//; s/[~+-].*//')
    [[ -n $version ]] || version=unknown
    local test_cmd filter='kind(test)' once
    if [[ $tier == most ]]; then
        for once in "${E2E_ONCE[@]}"; do
            [[ -f integration/tests/$once.rs ]] && filter+=" & !binary(=$once)"
        done
    elif [[ $tier == subset ]]; then
        local name
        filter=
        for name in "${E2E_SUBSET[@]}"; do
            filter+=" | test(=$name)"
        done
        # (nextest refuses a binary() naming no test binary)
        [[ -f integration/tests/crictl.rs ]] && filter+=" | binary(=crictl)"
        filter="kind(test) & (${filter# | })"
    fi
    if cargo nextest --version >/dev/null 2>&1; then
        test_cmd=(cargo nextest run -p airgap-integration --no-fail-fast
            --test-threads 1 -E "$filter")
    else
        # Without nextest there is no filter: every version gets it all.
        test_cmd=(cargo test -p airgap-integration --no-fail-fast
            --tests -- --test-threads 1)
    fi
    local name=e2e-$version
    [[ $tier == subset ]] && name+="-subset"
    [[ $tier == most ]] && name+="-most"
    if [[ $dir == system ]]; then
        step "$name" 25 env -u AIRGAP_CONTAINERD_DIR "${test_cmd[@]}"
    else
        step "$name" 25 env AIRGAP_CONTAINERD_DIR="$dir" "${test_cmd[@]}"
    fi
}

# use_go_tools STEP...: waits for the background build STEPs and exports the
# paths they wrote.
use_go_tools() {
    local name line
    for name in "$@"; do
        [[ -n ${bg_pids[$name]:-} ]] || continue
        wait_step "$name"
        while IFS= read -r line; do
            [[ $line == AIRGAP_*=* ]] && export "${line?}"
        done < <(cat "$logs/$name.env" 2>/dev/null)
    done
}

containerd_cache=${AIRGAP_CONTAINERD_CACHE:-$cache_root/containerd}
if ((!is_root)); then
    skip e2e "needs root"
elif [[ -n ${AIRGAP_CONTAINERD_DIRS:-} ]]; then
    use_go_tools go-clients go-tools
    read -r -a containerd_dirs <<<"$AIRGAP_CONTAINERD_DIRS"
    for dir in "${containerd_dirs[@]}"; do
        e2e_step "$dir" all
    done
elif ((quick)); then
    use_go_tools go-clients
    e2e_step "${AIRGAP_CONTAINERD_DIR:-system}" all
else
    # 1.7 and 2.1 are Debian trixie's and sid's packages.
    step fetch-containerd 10 env AIRGAP_CONTAINERD_CACHE="$containerd_cache" \
        scripts/fetch-containerd.sh trixie sid
    use_go_tools go-clients
    e2e_step system subset
    e2e_step "$containerd_cache/sid" subset
    use_go_tools go-tools
    e2e_step "$containerd_cache/trixie" most
    e2e_step "${AIRGAP_CONTAINERD_2_3:-$cache_root/containerd-go/2.3}" all
    e2e_step "${AIRGAP_CONTAINERD_2_4:-$cache_root/containerd-go/2.4}" most
fi

if ((!quick && is_root)); then
    step distspec 15 bash integration/distspec.sh
fi

if [[ -n ${bg_pids[release]:-} ]]; then
    wait_step release
    step release-test 20 env AIRGAP_RELEASE_TEST_TARGET_DIR="$release_target_dir" scripts/release-test.sh
fi

exit "$failed"

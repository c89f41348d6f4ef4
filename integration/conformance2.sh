#!/usr/bin/env bash
# Runs containerd 2.x's snapshotter conformance suite
# (core/snapshots/testsuite.SnapshotterSuite, through core/snapshots/proxy)
# against airgap-snapshotter, and, as the bar, against containerd 2.x's own
# overlayfs snapshotter served over gRPC the same way. Verdict: every case the
# overlayfs reference passes must pass against the daemon.
#
# The suite is a Go module of the project, integration/conformance2 (go.mod
# requires github.com/containerd/containerd/v2 at the 2.3 LTS release the
# tests are pinned to; go.sum is committed): its test binary is built with
# the project's one Go client and caches (scripts/lib/go.sh: Go 1.26 at
# /usr/local/go, GOMODCACHE and GOCACHE under /var/cache/airgap-snapshotter/go)
# and kept in
#
#   $AIRGAP_CONFORMANCE2_CACHE/<key>/conformance2.test
#
# (default cache: /var/cache/airgap-snapshotter/conformance2), <key> the
# sha256 of go.mod, go.sum and the test's sources together: a complete
# binary is used as is (no Go, no network), a changed module or test builds
# a new one (into a temporary file renamed into place; older keys are
# removed). --rebuild builds again. The first build downloads the modules
# go.sum names from the Go module proxy (-mod=readonly: go.sum is never
# rewritten by a run; bump the version with `go get` in that directory).
#
# Needs root (the suite mounts). Exits non-zero, with the reason, if the
# build fails (e.g. no proxy and nothing cached), or a case the reference
# passes does not pass against the daemon.
#
#   integration/conformance2.sh [--rebuild]            # builds the daemon (debug) first
#   AIRGAP_SNAPSHOTTER_BIN=/path/to/bin integration/conformance2.sh
#   AIRGAP_CONFORMANCE2_CASES='^Basic$' integration/conformance2.sh   # some cases only
#   integration/conformance2.sh -test.count 2          # other args go to the test binary
#   integration/conformance2.sh --build-only           # only build (or find) the test binary
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
source "$repo/scripts/lib/go.sh"
module_dir=$here/conformance2
cache=${AIRGAP_CONFORMANCE2_CACHE:-/var/cache/airgap-snapshotter/conformance2}

rebuild=0
build_only=0
args=()
for arg in "$@"; do
    case $arg in
        --rebuild) rebuild=1 ;;
        --build-only) build_only=1 ;;
        -h | --help)
            sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'
            exit 0
            ;;
        *) args+=("$arg") ;;
    esac
done

log() { printf 'conformance2: %s\n' "$*" >&2; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

if [[ $(id -u) -ne 0 ]]; then
    log "must run as root (the suite mounts overlayfs; the cache is in $cache)"
    exit 2
fi

t0=$(now)
go_ready conformance2 || {
    echo "--- FAIL: conformance-2.x: no Go client to build the suite with"
    exit 1
}
mkdir -p "$cache"
key=$(cd "$module_dir" && cat go.mod go.sum ./*.go | sha256sum | cut -c1-16)
bin=$cache/$key/conformance2.test
containerd_version=$(awk '$1 == "github.com/containerd/containerd/v2" { print $2 }' "$module_dir/go.mod")
# One build at a time; a finished binary is renamed into place, so a run
# never sees half of one.
exec 9>"$cache/.lock"
flock -x 9
if ((rebuild)) || [[ ! -x $bin ]]; then
    t1=$(now)
    mkdir -p "$cache/$key"
    log "building the suite against containerd $containerd_version ($("$go" version)) into $bin"
    if ! (cd "$module_dir" && nice -n 10 "$go" test -mod=readonly -c -o "$bin.tmp" .) >"$cache/$key/build.log" 2>&1; then
        tail -n 20 "$cache/$key/build.log" >&2
        rm -f "$bin.tmp"
        echo "--- FAIL: conformance-2.x: the suite does not build (log: $cache/$key/build.log)"
        exit 1
    fi
    mv -f "$bin.tmp" "$bin"
    # Binaries of other keys are stale (another go.sum or test source).
    find "$cache" -mindepth 1 -maxdepth 1 -type d ! -name "$key" -exec rm -rf {} +
    log "build: $(since "$t1")s"
else
    log "using $bin (containerd $containerd_version; --rebuild to build again)"
fi
flock -u 9
((build_only)) && exit 0

if [[ -z ${AIRGAP_SNAPSHOTTER_BIN:-} ]]; then
    (cd "$repo" && cargo build -p airgap-snapshotter --bin airgap-snapshotter)
    AIRGAP_SNAPSHOTTER_BIN=${CARGO_TARGET_DIR:-$repo/target}/debug/airgap-snapshotter
fi
export AIRGAP_SNAPSHOTTER_BIN
[[ -x $AIRGAP_SNAPSHOTTER_BIN ]] || {
    log "no binary at $AIRGAP_SNAPSHOTTER_BIN"
    exit 2
}

work=$(mktemp -d /tmp/airgap-conformance2.XXXXXX)
trap 'rm -rf "$work"' EXIT INT TERM

# run OUT PATTERN [ARGS...]: the test binary with -test.run PATTERN; its
# output in $work/OUT.out.
run() {
    local t2 rc=0 out=$1 pattern=$2
    shift 2
    t2=$(now)
    (cd "$work" && "$bin" -test.root -test.v -test.run "$pattern" "$@" "${args[@]}") \
        >"$work/$out.out" 2>&1 || rc=$?
    cat "$work/$out.out"
    log "$out: exit $rc, $(since "$t2")s"
}
# result OUT TEST: `<case> <PASS|FAIL|SKIP>` per case of TEST in OUT.out.
result() {
    sed -nE "s/^ *--- (PASS|FAIL|SKIP): $2\/([^ ]+) .*/\2 \1/p" "$work/$1.out" | sort
}

cases=${AIRGAP_CONFORMANCE2_CASES:-}
run overlayfs "^TestOverlayReference\$${cases:+/$cases}"
run airgap "^TestAirgapSnapshotter\$${cases:+/$cases}"
# Rename again under the name the suite exempts from renaming a directory of
# a lower layer (the name containerd's own overlayfs test runs under).
run overlayfs-name '^Test(OverlayReference|AirgapSnapshotter)$/^Rename$' -suite.overlayfs-name
results() { # results overlayfs|airgap TEST
    result "$1" "$2"
    result overlayfs-name "$2" | sed 's/^Rename /Rename(as-"overlayfs") /'
}
results overlayfs TestOverlayReference >"$work/overlayfs.results"
results airgap TestAirgapSnapshotter >"$work/airgap.results"

verdict=0
printf '\n%-32s %-10s %s\n' case overlayfs airgap
while read -r name ref; do
    got=$(awk -v n="$name" '$1 == n { print $2 }' "$work/airgap.results")
    mark=
    if [[ $ref == PASS && $got != PASS ]]; then
        mark="  <- passes on overlayfs"
        verdict=1
    fi
    printf '%-32s %-10s %s%s\n' "$name" "$ref" "${got:-missing}" "$mark"
done <"$work/overlayfs.results"
if [[ ! -s $work/overlayfs.results ]]; then
    log "FAIL: the overlayfs reference ran no case"
    verdict=1
fi
for s in PASS SKIP FAIL; do
    printf '%s: overlayfs %d, airgap %d\n' "$s" \
        "$(grep -c " $s$" "$work/overlayfs.results" || true)" \
        "$(grep -c " $s$" "$work/airgap.results" || true)"
done
log "total: $(since "$t0")s"
if ((verdict)); then
    echo "--- FAIL: conformance-2.x: a case containerd 2.x's overlayfs passes does not pass against airgap-snapshotter"
    exit 1
fi
echo "conformance-2.x: airgap-snapshotter passes every case containerd 2.x's overlayfs snapshotter passes"

#!/usr/bin/env bash
# Runs containerd 2.x's snapshotter conformance suite
# (core/snapshots/testsuite.SnapshotterSuite, through core/snapshots/proxy)
# against airgap-snapshotter, and, as the bar, against containerd 2.x's own
# overlayfs snapshotter served over gRPC the same way. Verdict: every case the
# overlayfs reference passes must pass against the daemon.
#
# containerd 2.x's Go sources are not in Debian 12: Debian sid's
# golang-github-containerd-containerd-dev (2.1.x) and the Go packages the
# suite imports, plus a Go toolchain from sid (the one sid's golang-go
# depends on; the sources need Go >= 1.24), are downloaded with apt-get using
# a private sources list, lists directory and cache (the system's apt
# configuration is not touched, nothing is installed) and unpacked with
# `dpkg-deb -x` into
#
#   $AIRGAP_CONFORMANCE2_CACHE/root/usr/share/gocode/src/...   (GOPATH)
#   $AIRGAP_CONFORMANCE2_CACHE/root/usr/lib/go-1.N             (GOROOT)
#
# (default cache: /var/cache/airgap-snapshotter/containerd-go). Which Go
# packages are needed is found from the import errors: `go list -deps -test`
# of the test names the import paths no fetched package holds; each is
# mapped to its Debian package by the Go team's naming scheme
# (github.com/a/b -> golang-github-a-b-dev, golang.org/x/y ->
# golang-golang-x-y-dev, ...; virtual names resolved to their provider),
# fetched, and the loop repeats until nothing is missing. An import that maps
# to no sid package is an error naming it. The build is GOPATH mode
# (GO111MODULE=off); its Go build cache is kept in the cache directory.
#
# Idempotent: a complete cache is used as is (no network); --refresh fetches
# again (a lock in the cache directory serializes fetches and keeps a
# refresh from replacing the sources under a running build). Needs root (the suite mounts). Exits non-zero, with the reason, if
# the fetch fails (e.g. no network), the build fails, or a case the reference
# passes does not pass against the daemon.
#
#   integration/conformance2.sh [--refresh]            # builds the daemon (debug) first
#   AIRGAP_SNAPSHOTTER_BIN=/path/to/bin integration/conformance2.sh
#   AIRGAP_CONFORMANCE2_CASES='^Basic$' integration/conformance2.sh   # some cases only
#   integration/conformance2.sh -test.count 2          # other args go to the test binary
#   integration/conformance2.sh --fetch-only
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
source "$repo/scripts/lib/private-apt.sh"
cache=${AIRGAP_CONFORMANCE2_CACHE:-/var/cache/airgap-snapshotter/containerd-go}
dist=${AIRGAP_CONFORMANCE2_SUITE:-sid}
mirror=${AIRGAP_DEBIAN_MIRROR:-http://deb.debian.org/debian}
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
# The packages to start from; the rest is found from the import errors.
ROOTS=(golang-github-containerd-containerd-dev golang-github-containerd-containerd-api-dev)
# Import paths whose package name does not follow the naming scheme.
declare -A OVERRIDES=(
    [go.etcd.io/bbolt]=golang-github-coreos-bbolt-dev
    [github.com/opencontainers/runtime-spec]=golang-github-opencontainers-specs-dev
    [github.com/golang/protobuf]=golang-github-golang-protobuf-1-5-dev
)

refresh=0
fetch_only=0
fail_reason=
args=()
for arg in "$@"; do
    case $arg in
        --refresh) refresh=1 ;;
        --fetch-only) fetch_only=1 ;;
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

root=$cache/root
apt=$cache/.apt/$dist
private_apt_opts "$apt"
opts=("${apt_opts[@]}")

# goroot DIR: the Go toolchain unpacked in DIR (usr/lib/go-1.N), newest first.
goroot() {
    local g
    g=$(ls -d "$1"/usr/lib/go-1.* 2>/dev/null | sort -V | tail -n 1)
    [[ -n $g && -x $g/bin/go ]] && echo "$g"
}

# index_names: `NAME PACKAGE` for every golang-* package of the suite and
# every golang-* name one provides, in $apt/golang-names (one apt-cache call).
index_names() {
    apt-cache "${opts[@]}" dumpavail | awk '
        /^Package: / { p = $2; if (p ~ /^golang-/) print p, p }
        /^Provides: / {
            n = split(substr($0, 11), a, ",")
            for (i = 1; i <= n; i++) {
                split(a[i], w, " ")
                if (w[1] ~ /^golang-/) print w[1], p
            }
        }' | sort -u -k1,1 >"$apt/golang-names"
}

# real_package NAME: NAME if the suite has it, else a package providing it;
# nothing if neither.
real_package() {
    awk -v n="$1" '$1 == n { print $2; exit }' "$apt/golang-names"
}

# package_for IMPORT: the Debian package holding IMPORT, by the Go team's
# naming scheme, trying the longest prefix first.
package_for() {
    local path=$1 p name cand
    local -a parts
    IFS=/ read -r -a parts <<<"$path"
    local n=${#parts[@]}
    for ((k = n; k >= 2; k--)); do
        p=$(IFS=/; echo "${parts[*]:0:k}")
        if [[ -n ${OVERRIDES[$p]:-} ]]; then
            echo "${OVERRIDES[$p]}"
            return
        fi
        # drop a major-version suffix: .../typeurl/v2 -> .../typeurl
        [[ ${parts[k - 1]} =~ ^v[0-9]+$ ]] && continue
        case $p in
            github.com/* | gitlab.com/*) name=${p#*/}; name=golang-${p%%.*}-${name//\//-}-dev ;;
            golang.org/x/*) name=golang-golang-x-${p#golang.org/x/}; name=${name//\//-}-dev ;;
            google.golang.org/*) name=golang-google-${p#google.golang.org/}; name=${name//\//-}-dev ;;
            gopkg.in/*) name=golang-gopkg-${p#gopkg.in/}; name=${name//\//-}-dev ;;
            k8s.io/*) name=golang-k8s-${p#k8s.io/}; name=${name//\//-}-dev ;;
            go.opentelemetry.io/*) name=golang-opentelemetry-${p#go.opentelemetry.io/}; name=${name//\//-}-dev ;;
            *) name=golang-${p//\//-}-dev ;;
        esac
        name=${name,,}
        cand=$(real_package "$name")
        if [[ -n $cand ]]; then
            echo "$cand"
            return
        fi
    done
}

# missing_imports GOROOT GOPATHSRC: the import paths the test needs that
# nothing under the GOPATH holds.
missing_imports() {
    local gr=$1 gp=$2 w
    w=$(mktemp -d /tmp/airgap-conformance2-list.XXXXXX)
    mkdir -p "$w/src/airgapconformance2"
    cp "$here/conformance2/conformance2_test.go" "$w/src/airgapconformance2/"
    (cd "$w/src/airgapconformance2" &&
        GOROOT=$gr GO111MODULE=off GOFLAGS= GOPATH="$w:$gp" GOCACHE="$w/cache" \
            "$gr/bin/go" list -e -deps -test \
            -f '{{with .Error}}{{.}}{{"\n"}}{{end}}{{range .DepsErrors}}{{.}}{{"\n"}}{{end}}' . 2>&1 || true) |
        { grep -o 'cannot find package "[^"]*"' || true; } | sed -E 's/.*"(.*)"/\1/' | sort -u
    rm -rf "$w"
}

# download_into DIR PKG...: apt-get download PKG... and dpkg-deb -x each into DIR.
download_into() {
    local dest=$1
    shift
    rm -f "$apt/download/"*.deb
    if ! (cd "$apt/download" && apt-get "${opts[@]}" -qq download "$@") >"$apt/download.log" 2>&1; then
        log "apt-get download failed for: $*"
        grep -v 'unsandboxed' "$apt/download.log" | tail -n 5 >&2
        fail_reason="apt-get download failed: $(grep -m 1 '^E:' "$apt/download.log" || tail -n 1 "$apt/download.log")"
        return 1
    fi
    local deb
    for deb in "$apt/download/"*.deb; do
        dpkg-deb -x "$deb" "$dest"
        dpkg-deb -W --showformat='${Package} ${Version}\n' "$deb" >>"$dest/PACKAGES"
    done
    rm -f "$apt/download/"*.deb
}

fetch() {
    mkdir -p "$apt/lists/partial" "$apt/cache/archives/partial" "$apt/download" "$apt/empty.d"
    printf 'deb [signed-by=%s] %s %s main\n' "$keyring" "$mirror" "$dist" >"$apt/sources.list"
    log "$dist: apt-get update (private lists in $apt)"
    if ! apt-get "${opts[@]}" -qq --error-on=any update >"$apt/update.log" 2>&1; then
        log "$dist: apt-get update failed (no network?):"
        tail -n 5 "$apt/update.log" >&2
        fail_reason="apt-get update failed: $(grep -m 1 '^E:' "$apt/update.log" || tail -n 1 "$apt/update.log")"
        return 1
    fi
    index_names
    local new
    new=$(mktemp -d "$cache/.unpack-XXXXXX")
    : >"$new/PACKAGES"
    # The Go toolchain sid's golang-go depends on (golang-1.N-go).
    local gopkg
    gopkg=$(apt-cache "${opts[@]}" show --no-all-versions golang-go |
        sed -n 's/^Depends: //p' | tr ',' '\n' | grep -o 'golang-1\.[0-9]*-go' | head -n 1)
    if [[ -z $gopkg ]]; then
        log "$dist: cannot tell which golang-1.N-go sid's golang-go depends on"
        rm -rf "$new"
        return 1
    fi
    log "$dist: downloading $gopkg ${gopkg%-go}-src ${ROOTS[*]}"
    download_into "$new" "$gopkg" "${gopkg%-go}-src" "${ROOTS[@]}" || { rm -rf "$new"; return 1; }
    local gr
    gr=$(goroot "$new") || { log "no go binary in $gopkg"; rm -rf "$new"; return 1; }
    local round missing imp pkg
    for round in $(seq 1 30); do
        mapfile -t missing < <(missing_imports "$gr" "$new/usr/share/gocode")
        ((${#missing[@]})) || break
        local -A want=()
        local unmapped=()
        for imp in "${missing[@]}"; do
            pkg=$(package_for "$imp")
            if [[ -z $pkg ]]; then
                unmapped+=("$imp")
            elif grep -q "^$pkg " "$new/PACKAGES"; then
                unmapped+=("$imp (not in $pkg, which is already unpacked)")
            else
                want[$pkg]=1
            fi
        done
        if ((${#unmapped[@]})); then
            log "$dist: no Debian package found for these imports:"
            printf '    %s\n' "${unmapped[@]}" >&2
            fail_reason="no $dist package found for: ${unmapped[*]}"
            rm -rf "$new"
            return 1
        fi
        log "$dist: round $round: ${#missing[@]} imports missing, downloading: ${!want[*]}"
        download_into "$new" "${!want[@]}" || { rm -rf "$new"; return 1; }
        unset want
    done
    if ((${#missing[@]})); then
        log "$dist: still missing after 30 rounds: ${missing[*]}"
        fail_reason="still missing after 30 rounds: ${missing[*]}"
        rm -rf "$new"
        return 1
    fi
    sort -o "$new/PACKAGES" "$new/PACKAGES"
    rm -rf "$root"
    mv "$new" "$root"
    log "$dist: $(wc -l <"$root/PACKAGES") packages unpacked in $root"
}

t0=$(now)
mkdir -p "$cache"
# One fetch at a time; a run holds the cache shared until it exits, so a
# concurrent --refresh waits instead of replacing the sources under a build.
exec 9>"$cache/.lock"
flock -x 9
if ((refresh)) || [[ ! -s $root/PACKAGES ]] || ! goroot "$root" >/dev/null; then
    fetch || {
        echo "--- FAIL: conformance-2.x: could not fetch containerd 2.x's Go sources from Debian $dist: ${fail_reason:-see above}"
        exit 1
    }
    log "fetch: $(since "$t0")s"
else
    log "using $root ($(wc -l <"$root/PACKAGES") packages; --refresh to fetch again)"
fi
flock -s 9
gr=$(goroot "$root")
gopath=$root/usr/share/gocode
log "containerd $(grep -E '^golang-github-containerd-containerd-dev ' "$root/PACKAGES" | cut -d' ' -f2), $("$gr/bin/go" version)"
((fetch_only)) && exit 0

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
t1=$(now)
mkdir -p "$work/gopath/src/airgapconformance2"
cp "$here/conformance2/conformance2_test.go" "$work/gopath/src/airgapconformance2/"
if ! (cd "$work/gopath/src/airgapconformance2" &&
    GOROOT=$gr GO111MODULE=off GOFLAGS= GOTOOLCHAIN=local GOPATH="$work/gopath:$gopath" \
        GOCACHE="${GOCACHE:-$cache/gocache}" \
        "$gr/bin/go" test -c -o "$work/conformance2.test" .); then
    echo "--- FAIL: conformance-2.x: the suite does not build against $root (--refresh fetches again)"
    exit 1
fi
log "build: $(since "$t1")s"

# run OUT PATTERN [ARGS...]: the test binary with -test.run PATTERN; its
# output in $work/OUT.out.
run() {
    local t2 rc=0 out=$1 pattern=$2
    shift 2
    t2=$(now)
    (cd "$work" && "$work/conformance2.test" -test.root -test.v -test.run "$pattern" "$@" "${args[@]}") \
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

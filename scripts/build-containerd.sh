#!/usr/bin/env bash
# Builds containerd releases Debian does not ship (2.3 LTS, 2.4) for the
# end-to-end tests, from the Go module proxy: `containerd`, `ctr` and
# `containerd-shim-runc-v2` of github.com/containerd/containerd/v2 at each
# VERSION (e.g. 2.3.7, v2.4.2, or a minor such as 2.3 = its newest patch
# release the proxy serves; default: the newest 2.3.x and 2.4.x), into
#
#   $AIRGAP_CONTAINERD_GO_CACHE/<version>/bin/{containerd,ctr,containerd-shim-runc-v2}
#   $AIRGAP_CONTAINERD_GO_CACHE/<major.minor> -> <version>   (when asked for by minor)
#
# (default cache: /var/cache/airgap-snapshotter/containerd-go, outside the
# repository). Point the tests at one with AIRGAP_CONTAINERD_DIR=<that
# bin dir> (the harness takes DIR or DIR/usr/bin). The binaries are static
# (CGO_ENABLED=0, which leaves out the btrfs snapshotter) and run with
# Debian 12's runc.
#
# Built with the ordinary Go client at $AIRGAP_GO (default
# /usr/local/go/bin/go, Go 1.26): NOT the `go` on PATH, which may be
# Debian's golang-go 1.19, too old for these modules. Go's caches are
# shared by every Go build of the project (scripts/lib/go.sh): GOMODCACHE
# and GOCACHE under /var/cache/airgap-snapshotter/go. Builds run under
# `nice -n 10`.
#
# Idempotent: a version whose bin directory is complete is not rebuilt
# (binaries are installed into a temporary directory renamed into place
# only once all three are there). Prints one line per version:
# `<version> <dir>`; exits non-zero, naming the version and the reason, if
# any version could not be built (no proxy, no such version, build error).
#
#   scripts/build-containerd.sh [VERSION...]
set -euo pipefail

cache=${AIRGAP_CONTAINERD_GO_CACHE:-/var/cache/airgap-snapshotter/containerd-go}
source "$(dirname "${BASH_SOURCE[0]}")/lib/go.sh"
module=github.com/containerd/containerd/v2
BINARIES=(containerd ctr containerd-shim-runc-v2)

versions=()
for arg in "$@"; do
    case $arg in
        -h | --help)
            sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'
            exit 0
            ;;
        -*)
            echo "build-containerd: unknown option $arg" >&2
            exit 2
            ;;
        *) versions+=("$arg") ;;
    esac
done
((${#versions[@]})) || versions=(2.3 2.4)

log() { printf 'build-containerd: %s\n' "$*" >&2; }

go_ready build-containerd || exit 1
mkdir -p "$cache" || {
    log "cannot create $cache (run as root?)"
    exit 1
}

complete() {
    local dir=$1 b
    for b in "${BINARIES[@]}"; do
        [[ -x $dir/$b ]] || return 1
    done
}

served=
# resolve VERSION: prints the full version (no leading v) the proxy serves.
resolve() {
    local want=${1#v}
    # A full version already built needs no proxy.
    if [[ $want == *.*.* ]] && complete "$cache/$want/bin"; then
        printf '%s\n' "$want"
        return 0
    fi
    if [[ -z $served ]]; then
        served=$("$go" list -m -versions "$module" 2>"$cache/.list.err") || {
            log "cannot list $module versions from the module proxy:"
            tail -n 3 "$cache/.list.err" >&2
            return 1
        }
        rm -f "$cache/.list.err"
    fi
    local v best=
    for v in ${served#"$module"}; do
        v=${v#v}
        [[ $v == *-* ]] && continue # pre-releases only when asked by full name
        if [[ $v == "$want" || $v == "$want".* ]]; then
            best=$v # the list is sorted, oldest first
        fi
    done
    if [[ -z $best && " ${served#"$module"} " == *" v$want "* ]]; then
        best=$want
    fi
    if [[ -z $best ]]; then
        log "$want: not served by the module proxy (served:${served#"$module"})"
        return 1
    fi
    printf '%s\n' "$best"
}

# build VERSION: prints `<version> <dir>` on success.
build() {
    local version
    version=$(resolve "$1") || return 1
    local dest=$cache/$version/bin
    if ! complete "$dest"; then
        local pkgs=() b
        for b in "${BINARIES[@]}"; do
            pkgs+=("$module/cmd/$b@v$version")
        done
        go_install_to "$dest" "${BINARIES[*]}" "${pkgs[@]}" || return 1
    fi
    # A minor asked for by name (2.3) names its newest build.
    [[ ${1#v} == *.*.* ]] || ln -sfn "$version" "$cache/${1#v}"
    printf '%s %s\n' "$version" "$dest"
}

failed=()
for v in "${versions[@]}"; do
    if ! build "$v"; then
        failed+=("$v")
    fi
done
if ((${#failed[@]})); then
    log "could not build containerd ${failed[*]}"
    exit 1
fi

#!/usr/bin/env bash
# Fetches other containerd releases for the end-to-end tests, without
# installing them and without touching the system's apt configuration:
# Debian's `containerd` package of each suite named on the command line
# (default: trixie = 1.7, sid = 2.x) is downloaded with apt-get using a
# private sources list, lists directory and cache, and unpacked with
# `dpkg-deb -x` into
#
#   $AIRGAP_CONTAINERD_CACHE/<upstream version>/usr/bin/{containerd,ctr,containerd-shim-runc-v2}
#   $AIRGAP_CONTAINERD_CACHE/<suite> -> <upstream version>
#
# (default cache: /var/cache/airgap-snapshotter/containerd, outside the
# repository). Point the tests at one with AIRGAP_CONTAINERD_DIR=<that dir>.
# The binaries need only libc and run with Debian 12's runc.
#
# Idempotent: a suite whose directory is already complete is not fetched
# again (--refresh asks apt for a newer package anyway). Prints one line per
# suite: `<suite> <version> <dir>`; exits non-zero, naming the suite and
# the reason, if any suite could not be fetched (e.g. no network).
#
#   scripts/fetch-containerd.sh [--refresh] [SUITE...]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib/private-apt.sh"

cache=${AIRGAP_CONTAINERD_CACHE:-/var/cache/airgap-snapshotter/containerd}
mirror=${AIRGAP_DEBIAN_MIRROR:-http://deb.debian.org/debian}
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
refresh=0
suites=()
for arg in "$@"; do
    case $arg in
        --refresh) refresh=1 ;;
        -h | --help)
            sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'
            exit 0
            ;;
        -*)
            echo "fetch-containerd: unknown option $arg" >&2
            exit 2
            ;;
        *) suites+=("$arg") ;;
    esac
done
((${#suites[@]})) || suites=(trixie sid)

log() { printf 'fetch-containerd: %s\n' "$*" >&2; }

if [[ $(id -u) -ne 0 ]]; then
    log "must run as root (it writes to $cache)"
    exit 1
fi

BINARIES=(containerd ctr containerd-shim-runc-v2)

complete() {
    local dir=$1 b
    for b in "${BINARIES[@]}"; do
        [[ -x $dir/usr/bin/$b ]] || return 1
    done
}

# fetch SUITE: prints `<suite> <version> <dir>` on success.
fetch() {
    local suite=$1
    local link=$cache/$suite
    if ((!refresh)) && [[ -L $link ]] && complete "$link"; then
        printf '%s %s %s\n' "$suite" "$(readlink "$link")" "$link"
        return 0
    fi
    local apt=$cache/.apt/$suite
    mkdir -p "$apt/lists/partial" "$apt/cache/archives/partial" "$apt/download" "$apt/empty.d"
    printf 'deb [signed-by=%s] %s %s main\n' "$keyring" "$mirror" "$suite" >"$apt/sources.list"
    private_apt_opts "$apt"
    local opts=("${apt_opts[@]}")
    log "$suite: apt-get update (private lists in $apt)"
    # --error-on=any: a mirror that cannot be reached is an error, not a
    # warning over stale (or no) lists.
    if ! apt-get "${opts[@]}" -qq --error-on=any update >"$apt/update.log" 2>&1; then
        log "$suite: apt-get update failed (no network?):"
        tail -n 5 "$apt/update.log" >&2
        return 1
    fi
    local version
    version=$(apt-cache "${opts[@]}" policy containerd 2>/dev/null |
        awk '$1 == "Candidate:" { print $2; exit }')
    if [[ -z $version || $version == "(none)" ]]; then
        log "$suite: no containerd package in $suite"
        return 1
    fi
    # 1.7.24~ds1-6+b1 -> 1.7.24
    local upstream=${version#*:}
    upstream=${upstream%%[~+-]*}
    local dest=$cache/$upstream
    if [[ -L $link && $(readlink "$link") == "$upstream" ]] && complete "$dest"; then
        printf '%s %s %s\n' "$suite" "$upstream" "$link"
        return 0
    fi
    log "$suite: apt-get download containerd=$version"
    rm -f "$apt/download/"*.deb
    if ! (cd "$apt/download" && apt-get "${opts[@]}" -qq download "containerd=$version") >"$apt/download.log" 2>&1; then
        log "$suite: apt-get download failed:"
        tail -n 5 "$apt/download.log" >&2
        return 1
    fi
    local deb
    deb=$(ls "$apt/download/"containerd_*.deb)
    local tmp
    tmp=$(mktemp -d "$cache/.unpack-XXXXXX")
    dpkg-deb -x "$deb" "$tmp"
    if ! complete "$tmp"; then
        log "$suite: $deb lacks one of ${BINARIES[*]} in usr/bin"
        rm -rf "$tmp"
        return 1
    fi
    printf '%s %s\n' "$suite" "$version" >"$tmp/DEBIAN-VERSION"
    rm -rf "$dest"
    mv "$tmp" "$dest"
    ln -sfn "$upstream" "$link"
    rm -f "$deb"
    printf '%s %s %s\n' "$suite" "$upstream" "$link"
}

mkdir -p "$cache"
failed=()
for suite in "${suites[@]}"; do
    if ! fetch "$suite"; then
        failed+=("$suite")
    fi
done
if ((${#failed[@]})); then
    log "could not fetch containerd for: ${failed[*]}"
    exit 1
fi

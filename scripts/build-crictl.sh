#!/usr/bin/env bash
# Builds crictl (sigs.k8s.io/cri-tools), the second CRI client of the
# end-to-end tests (integration/tests/crictl.rs), from the Go module proxy
# at VERSION (e.g. 1.37.0, v1.37.0, or a minor such as 1.37 = its newest
# patch release the proxy serves; default: the newest release served), into
#
#   $AIRGAP_CRICTL_CACHE/<version>/bin/crictl
#
# (default cache: /var/cache/airgap-snapshotter/crictl, outside the
# repository). Point the tests at it with AIRGAP_CRICTL=<that file>. The
# binary is static (CGO_ENABLED=0).
#
# Built with the ordinary Go client at $AIRGAP_GO (default
# /usr/local/go/bin/go, Go 1.26), whose caches are shared by every Go
# build of the project (scripts/lib/go.sh). Builds run under `nice -n 10`.
#
# Idempotent: a version whose binary is there is not rebuilt (the binary is
# installed into a temporary directory renamed into place once complete).
# Prints `<version> <path of crictl>`; exits non-zero, naming the version
# and the reason, if it could not be built (no proxy, no such version,
# build error).
#
#   scripts/build-crictl.sh [VERSION]
set -euo pipefail

cache=${AIRGAP_CRICTL_CACHE:-/var/cache/airgap-snapshotter/crictl}
source "$(dirname "${BASH_SOURCE[0]}")/lib/go.sh"
module=sigs.k8s.io/cri-tools

want=
for arg in "$@"; do
    case $arg in
        -h | --help)
            sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'
            exit 0
            ;;
        -*)
            echo "build-crictl: unknown option $arg" >&2
            exit 2
            ;;
        *)
            if [[ -n $want ]]; then
                echo "build-crictl: one VERSION at most (got $want and $arg)" >&2
                exit 2
            fi
            want=${arg#v}
            ;;
    esac
done

log() { printf 'build-crictl: %s\n' "$*" >&2; }

go_ready build-crictl || exit 1
mkdir -p "$cache" || {
    log "cannot create $cache (run as root?)"
    exit 1
}

# A full version already built needs no proxy.
if [[ $want == *.*.* && -x $cache/$want/bin/crictl ]]; then
    version=$want
else
    version=$(go_newest "$module" "$want" 2> >(sed 's/^/build-crictl: /' >&2)) || {
        log "cannot resolve crictl ${want:-(newest)}"
        exit 1
    }
fi

dest=$cache/$version/bin
if [[ ! -x $dest/crictl ]]; then
    # The version crictl reports (`crictl --version`), as cri-tools'
    # Makefile sets it.
    go_install_to "$dest" crictl -ldflags "-X $module/pkg/version.Version=$version" \
        "$module/cmd/crictl@v$version" || exit 1
fi
printf '%s %s\n' "$version" "$dest/crictl"

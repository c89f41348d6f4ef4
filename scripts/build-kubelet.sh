#!/usr/bin/env bash
# Builds a real kubelet for the end-to-end tests (integration/tests/kubelet.rs):
# `cmd/kubelet` of k8s.io/kubernetes at VERSION (e.g. 1.37.2, v1.37.2, or a
# minor such as 1.37 = its newest patch release the proxy serves; default:
# the newest release the Go module proxy serves), into
#
#   $AIRGAP_KUBELET_CACHE/<version>/bin/kubelet
#
# (default cache: /var/cache/airgap-snapshotter/kubelet, outside the
# repository). The tests take its path from AIRGAP_KUBELET.
#
# `go install k8s.io/kubernetes/cmd/kubelet@vX` is refused: kubernetes'
# go.mod replaces its staging modules (k8s.io/api, k8s.io/client-go, ...)
# with directories of its own tree, and `go install pkg@version` refuses a
# module with replace directives. So the kubelet is built from a small
# throwaway module, $AIRGAP_KUBELET_CACHE/<version>/mod (never in the
# repository), that requires k8s.io/kubernetes vX.Y.Z and pins every
# staging module kubernetes requires at v0.0.0 to its published release
# v0.Y.Z (the list is read from kubernetes' own go.mod in the module cache).
# The version kubelet reports (`kubelet --version`) is set the way
# kubernetes' own build does it (-X k8s.io/component-base/version.*).
#
# Built with the ordinary Go client at $AIRGAP_GO (default
# /usr/local/go/bin/go, Go 1.26) and the Go caches shared by every Go build
# of the project (scripts/lib/go.sh), static (CGO_ENABLED=0, as kubernetes
# releases the kubelet), under `nice -n 10`.
#
# Idempotent: a version whose binary is there is not rebuilt (the binary is
# built into a temporary directory renamed into place). Prints one line:
# `<version> <path of kubelet>`; exits non-zero, naming the version and
# the reason (no proxy, no such version, build error) otherwise.
#
#   scripts/build-kubelet.sh [VERSION]
set -euo pipefail

cache=${AIRGAP_KUBELET_CACHE:-/var/cache/airgap-snapshotter/kubelet}
source "$(dirname "${BASH_SOURCE[0]}")/lib/go.sh"
module=k8s.io/kubernetes

log() { printf 'build-kubelet: %s\n' "$*" >&2; }

go_tool_version build-kubelet "$cache" "$module" kubelet "$@"
dest=$cache/$version/bin
if [[ -x $dest/kubelet ]]; then
    printf '%s %s\n' "$version" "$dest/kubelet"
    exit 0
fi

fail() {
    log "$version: $*"
    exit 1
}

mkdir -p "$cache/$version" || fail "cannot create $cache/$version"
buildlog=$cache/$version/build.log
: >"$buildlog"

# kubernetes' go.mod: its staging modules are the ones it requires at v0.0.0
# (and replaces with ./staging/src/...); each is published as v0.<minor>.<patch>.
kmod=$("$go" mod download -json "$module@v$version" 2>>"$buildlog" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",$/\1/p') ||
    true
[[ -n $kmod && -f $kmod ]] || {
    tail -n 5 "$buildlog" >&2
    fail "cannot download the go.mod of $module v$version from the module proxy"
}
staging_version=v0.${version#*.}
mapfile -t staging < <(awk '$1 ~ /^k8s\.io\// && $2 == "v0.0.0" { print $1 }' "$kmod")
((${#staging[@]})) || fail "found no staging modules (k8s.io/* v0.0.0) in $kmod"
go_line=$(awk '$1 == "go" { print $2; exit }' "$kmod")

# The throwaway module: rebuilt from scratch each time (it is a few lines).
work=$cache/$version/mod
rm -rf "$work"
mkdir -p "$work"
{
    printf '// Throwaway module written by scripts/build-kubelet.sh to build\n'
    printf '// k8s.io/kubernetes/cmd/kubelet %s (go install refuses its replaces).\n' "v$version"
    printf 'module airgap-snapshotter.invalid/build-kubelet\n\ngo %s\n\n' "${go_line:-1.26.0}"
    printf 'require %s v%s\n\nreplace (\n' "$module" "$version"
    for m in "${staging[@]}"; do
        printf '\t%s => %s %s\n' "$m" "$m" "$staging_version"
    done
    printf ')\n'
} >"$work/go.mod"

# The version kubelet reports, set as kubernetes' hack/lib/version.sh does.
vpkg=k8s.io/component-base/version
minor=${version#*.}
minor=${minor%%.*}
ldflags="-s -w -X $vpkg.gitVersion=v$version -X $vpkg.gitMajor=${version%%.*} -X $vpkg.gitMinor=$minor"
ldflags+=" -X $vpkg.gitTreeState=clean -X $vpkg.buildDate=1970-01-01T00:00:00Z"
log "$version: $module/cmd/kubelet with ${#staging[@]} staging modules at $staging_version"
# From inside the throwaway module: `go install PACKAGE` (no @version) takes
# its requirements and replaces; -mod=mod writes its go.sum as it resolves.
(cd "$work" && go_install_to "$dest" kubelet -mod=mod -trimpath -ldflags "$ldflags" "$module/cmd/kubelet") ||
    fail "could not build $module/cmd/kubelet v$version (above; whole log: $buildlog)"
printf '%s %s\n' "$version" "$dest/kubelet"

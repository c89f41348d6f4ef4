# Sourced by every script that builds Go programs from the Go module proxy
# (scripts/build-containerd.sh, and the tools the tests drive: crictl,
# kubelet, the distribution-spec conformance suite, containerd's snapshotter
# suite). One Go client and one set of caches for all of them:
#
#   AIRGAP_GO        the Go client (default /usr/local/go/bin/go, Go 1.26):
#                    NOT the `go` on PATH, which may be Debian's golang-go
#                    1.19, too old for these modules
#   AIRGAP_GO_CACHE  GOMODCACHE and GOCACHE live under it
#                    (default /var/cache/airgap-snapshotter/go, outside the
#                    repository, shared across runs)
#
# After sourcing, `go_ready NAME` checks the client and creates the caches
# (it names NAME, the calling script, in its error), and "$go" is the
# client to run. Builds are static (CGO_ENABLED=0) unless a script says
# otherwise.

go=${AIRGAP_GO:-/usr/local/go/bin/go}
go_cache=${AIRGAP_GO_CACHE:-/var/cache/airgap-snapshotter/go}
export GOMODCACHE=$go_cache/mod GOCACHE=$go_cache/build
# Module files read-only by default would make the cache undeletable.
export GOFLAGS=-modcacherw CGO_ENABLED=0
# Toolchain switching would download another Go: the one at $go is the one.
export GOTOOLCHAIN=local

go_ready() {
    local who=$1
    if [[ ! -x $go ]]; then
        printf '%s: no Go client at %s (install Go >= 1.26 there, or set AIRGAP_GO)\n' "$who" "$go" >&2
        return 1
    fi
    mkdir -p "$GOMODCACHE" "$GOCACHE" || {
        printf '%s: cannot create the Go caches under %s (run as root?)\n' "$who" "$go_cache" >&2
        return 1
    }
}

# go_newest MODULE PREFIX: prints the newest release (no leading v, no
# pre-release) of MODULE the proxy serves whose version is PREFIX or starts
# with PREFIX. (empty PREFIX: the newest of all). Fails, naming the module,
# when the proxy cannot be reached or serves no such version.
go_newest() {
    local module=$1 want=${2#v} served v best=
    served=$("$go" list -m -versions "$module" 2>&1) || {
        printf 'cannot list the versions of %s from the module proxy: %s\n' "$module" "$(tail -n 2 <<<"$served")" >&2
        return 1
    }
    for v in ${served#"$module"}; do
        v=${v#v}
        [[ $v == *-* ]] && continue
        if [[ -z $want || $v == "$want" || $v == "$want".* ]]; then
            best=$v # the list is sorted, oldest first
        fi
    done
    if [[ -z $best ]]; then
        printf '%s %s: not served by the module proxy (served:%s)\n' "$module" "$want" "${served#"$module"}" >&2
        return 1
    fi
    printf '%s\n' "$best"
}

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

go_who=go
go_ready() {
    local who=$1
    go_who=$who
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

# go_install_to DEST "BIN..." ARGS...: `go install ARGS` (niced) into a
# temporary directory beside DEST, renamed to DEST only once every BIN is
# in it: a build cut short never leaves a half-filled DEST, and a complete
# DEST is what the callers test for to skip a build. The output goes to
# build.log beside DEST; a failure prints its tail and returns 1.
go_install_to() {
    local dest=$1 bins=$2
    shift 2
    local tmp=$dest.tmp log b start=$SECONDS
    log=$(dirname "$dest")/build.log
    rm -rf "$tmp"
    mkdir -p "$tmp" || return 1
    printf '%s: go install %s (log: %s)\n' "$go_who" "$*" "$log" >&2
    if ! GOBIN=$tmp nice -n 10 "$go" install "$@" >"$log" 2>&1; then
        printf '%s: go install failed:\n' "$go_who" >&2
        tail -n 10 "$log" >&2
        rm -rf "$tmp"
        return 1
    fi
    for b in $bins; do
        if [[ ! -x $tmp/$b ]]; then
            printf '%s: go install left no %s in %s\n' "$go_who" "$b" "$tmp" >&2
            rm -rf "$tmp"
            return 1
        fi
    done
    rm -rf "$dest"
    mv "$tmp" "$dest"
    printf '%s: built %s in %s s\n' "$go_who" "$dest" "$((SECONDS - start))" >&2
}

# go_tool_version NAME CACHE MODULE BIN [ARG...]: the command line of a
# script building one Go program (`[-h|--help] [VERSION]`), then which
# version to build: sets `version` to the full version, without v, of
# MODULE at VERSION (2.3 is its newest 2.3.x; none: the newest release)
# and creates CACHE. A full VERSION whose CACHE/VERSION/bin/BIN is already
# there needs no proxy. Exits the script on --help (printing its header),
# on a usage error (2) and when the Go client, CACHE or the version is
# missing (1, named).
go_tool_version() {
    local name=$1 cache=$2 module=$3 bin=$4 want= arg
    shift 4
    for arg in "$@"; do
        case $arg in
            -h | --help)
                sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'
                exit 0
                ;;
            -*)
                printf '%s: unknown option %s\n' "$name" "$arg" >&2
                exit 2
                ;;
            *)
                if [[ -n $want ]]; then
                    printf '%s: one VERSION at most (got %s and %s)\n' "$name" "$want" "$arg" >&2
                    exit 2
                fi
                want=${arg#v}
                ;;
        esac
    done
    go_ready "$name" || exit 1
    mkdir -p "$cache" || {
        printf '%s: cannot create %s (run as root?)\n' "$name" "$cache" >&2
        exit 1
    }
    if [[ $want == *.*.* && -x $cache/$want/bin/$bin ]]; then
        version=$want
        return 0
    fi
    version=$(go_newest "$module" "$want" 2> >(sed "s/^/$name: /" >&2)) || {
        printf '%s: cannot resolve %s %s\n' "$name" "$module" "${want:-(newest)}" >&2
        exit 1
    }
}

#!/usr/bin/env bash
# Builds (or finds cached) every Go program the test suite drives that
# Debian does not ship, from the Go module proxy with /usr/local/go (see
# scripts/lib/go.sh):
#
#   containerd 2.3 (LTS) and 2.4   scripts/build-containerd.sh
#   crictl                         scripts/build-crictl.sh
#   kubelet                        scripts/build-kubelet.sh
#   cosign 2.6                     scripts/build-cosign.sh
#   the distribution-spec suite    integration/distspec.sh --build-only
#                                  (built here so its step only runs it)
#
# each at the newest patch release the proxy serves, cached under
# /var/cache/airgap-snapshotter/ keyed by version (a cached build costs
# nothing). Writes what it built to ENV_FILE (default: stdout) as lines
# the tests read:
#
#   AIRGAP_CONTAINERD_2_3=<dir>   AIRGAP_CONTAINERD_2_4=<dir>
#   AIRGAP_CRICTL=<path>          AIRGAP_KUBELET=<path>
#   AIRGAP_COSIGN=<path>
#
# Every program is attempted even when another failed; the exit status is
# non-zero, naming each program that could not be built, if any failed.
#
#   scripts/build-test-tools.sh [ENV_FILE [NAME...]]
#
# NAMEs (containerd-2.3 containerd-2.4 crictl kubelet cosign distspec) pick some;
# default: all.
set -uo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
out=${1:-/dev/stdout}
shift || true
picked=" ${*:-containerd-2.3 containerd-2.4 crictl kubelet cosign distspec} "
lines=()
failed=()

# want NAME VAR SCRIPT [ARGS...]: runs SCRIPT, whose last line of output
# is `<version> <path>`, and records VAR=<path>.
want() {
    local name=$1 var=$2 script=$3 start=$SECONDS result
    shift 3
    [[ $picked == *" $name "* ]] || return 0
    if ! result=$("$here/$script" "$@" | tail -n 1) || [[ -z $result ]]; then
        failed+=("$name")
        return
    fi
    printf 'build-test-tools: %s %s (%s s)\n' "$name" "$result" "$((SECONDS - start))" >&2
    lines+=("$var=${result#* }")
}

# prebuild NAME COMMAND...: a build whose result its own step finds.
prebuild() {
    local name=$1 start=$SECONDS
    shift
    [[ $picked == *" $name "* ]] || return 0
    if "$@" >&2; then
        printf 'build-test-tools: %s (%s s)\n' "$name" "$((SECONDS - start))" >&2
    else
        failed+=("$name")
    fi
}

want containerd-2.3 AIRGAP_CONTAINERD_2_3 build-containerd.sh 2.3
want containerd-2.4 AIRGAP_CONTAINERD_2_4 build-containerd.sh 2.4
want crictl AIRGAP_CRICTL build-crictl.sh
want kubelet AIRGAP_KUBELET build-kubelet.sh
want cosign AIRGAP_COSIGN build-cosign.sh
prebuild distspec "$here/../integration/distspec.sh" --build-only

printf '%s\n' "${lines[@]}" >"$out"
if ((${#failed[@]})); then
    printf 'build-test-tools: could not build %s (the reason is above)\n' "${failed[*]}" >&2
    exit 1
fi

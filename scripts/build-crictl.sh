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

go_tool_version build-crictl "$cache" "$module" crictl "$@"

dest=$cache/$version/bin
if [[ ! -x $dest/crictl ]]; then
    # The version crictl reports (`crictl --version`), as cri-tools'
    # Makefile sets it.
    go_install_to "$dest" crictl -ldflags "-X $module/pkg/version.Version=$version" \
        "$module/cmd/crictl@v$version" || exit 1
fi
printf '%s %s\n' "$version" "$dest/crictl"

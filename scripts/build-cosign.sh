#!/usr/bin/env bash
# Builds cosign (github.com/sigstore/cosign/v2), the real signature client
# of the signed-bundle end-to-end tests (integration/tests/signing.rs),
# from the Go module proxy at VERSION (e.g. 2.6.1, v2.6.1, or a minor such
# as 2.6 = its newest patch release the proxy serves; default: 2.6, the
# newest v2 line: cosign v3 defaults to a bundle format instead of the
# `sha256-<hex>.sig` tags the archives carry), into
#
#   $AIRGAP_COSIGN_CACHE/<version>/bin/cosign
#
# (default cache: /var/cache/airgap-snapshotter/cosign, outside the
# repository). Point the tests at it with AIRGAP_COSIGN=<that file>. The
# binary is static (CGO_ENABLED=0).
#
# Built with the ordinary Go client at $AIRGAP_GO (default
# /usr/local/go/bin/go, Go 1.26), whose caches are shared by every Go
# build of the project (scripts/lib/go.sh). Builds run under `nice -n 10`.
#
# Idempotent: a version whose binary is there is not rebuilt (the binary is
# installed into a temporary directory renamed into place once complete).
# Prints `<version> <path of cosign>`; exits non-zero, naming the version
# and the reason, if it could not be built (no proxy, no such version,
# build error).
#
#   scripts/build-cosign.sh [VERSION]
set -euo pipefail

cache=${AIRGAP_COSIGN_CACHE:-/var/cache/airgap-snapshotter/cosign}
source "$(dirname "${BASH_SOURCE[0]}")/lib/go.sh"
module=github.com/sigstore/cosign/v2

(($#)) || set -- 2.6
go_tool_version build-cosign "$cache" "$module" cosign "$@"

dest=$cache/$version/bin
if [[ ! -x $dest/cosign ]]; then
    # The version `cosign version` reports, as cosign's Makefile sets it.
    go_install_to "$dest" cosign -ldflags "-X sigs.k8s.io/release-utils/version.gitVersion=v$version" \
        "$module/cmd/cosign@v$version" || exit 1
fi
printf '%s %s\n' "$version" "$dest/cosign"

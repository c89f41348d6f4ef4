#!/bin/sh
# Runs containerd's own snapshotter conformance suite
# (snapshots/testsuite.SnapshotterSuite, through snapshots/proxy) against
# airgap-snapshotter: a fresh `airgap-snapshotter serve` per test case.
#
# Needs root (the suite mounts). Installs golang-go and containerd's Go
# sources (Debian: golang-github-containerd-containerd-dev) when missing.
#
#   integration/conformance.sh            # builds the daemon (debug) first
#   AIRGAP_SNAPSHOTTER_BIN=/path/to/bin integration/conformance.sh
#   integration/conformance.sh -test.run 'TestAirgapSnapshotter/Basic'
set -eu

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
gocode=/usr/share/gocode
suite=$gocode/src/github.com/containerd/containerd/snapshots/testsuite

if [ "$(id -u)" -ne 0 ]; then
	echo "conformance.sh: must run as root (the suite mounts overlayfs)" >&2
	exit 2
fi

if ! command -v go >/dev/null 2>&1 || [ ! -d "$suite" ]; then
	echo "conformance.sh: installing golang-go and containerd sources" >&2
	export DEBIAN_FRONTEND=noninteractive
	apt-get update
	apt-get install -y golang-go golang-github-containerd-containerd-dev
fi

if [ -z "${AIRGAP_SNAPSHOTTER_BIN:-}" ]; then
	(cd "$repo" && cargo build -p airgap-snapshotter --bin airgap-snapshotter)
	target_dir=${CARGO_TARGET_DIR:-$repo/target}
	AIRGAP_SNAPSHOTTER_BIN=$target_dir/debug/airgap-snapshotter
fi
export AIRGAP_SNAPSHOTTER_BIN
[ -x "$AIRGAP_SNAPSHOTTER_BIN" ] || {
	echo "conformance.sh: no binary at $AIRGAP_SNAPSHOTTER_BIN" >&2
	exit 2
}

work=$(mktemp -d /tmp/airgap-conformance.XXXXXX)
trap 'rm -rf "$work"' EXIT INT TERM
# GOPATH mode against Debian's containerd 1.6 sources.
mkdir -p "$work/gopath/src/airgapconformance" "$work/cache"
cp "$here/conformance/conformance_test.go" "$work/gopath/src/airgapconformance/"
cd "$work/gopath/src/airgapconformance"
GO111MODULE=off GOPATH="$work/gopath:$gocode" GOCACHE="${GOCACHE:-$work/cache}" \
	go test -c -o "$work/conformance.test" .

cd "$work"
# -test.root enables the cases that mount; the exit status is the verdict.
"$work/conformance.test" -test.root -test.v "$@"

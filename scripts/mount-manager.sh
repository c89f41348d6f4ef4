#!/usr/bin/env bash
# The mount-manager experiment of docs/architecture.md ("containerd's mount
# manager"): starts a private containerd 2.2+ (CRI and NRI off, everything
# in a temporary directory), builds scripts/mount-manager (a Go client of
# that containerd's Mounts service) and has containerd's mount manager
# mount the given EROFS layers of the daemon's layer store (each DIR holds
# `layer.erofs` and its backing `layer.tar`, as `<root>/layers/<digest>`
# does) under a `format/overlay`, as a snapshotter's Mounts answer would
# make it; mounts the resulting overlay, lists it, and times Activate and
# Deactivate over ROUNDS (default 20) activations. Root only. Stops what it
# started, by pid, and removes its directory.
#
#   scripts/mount-manager.sh CONTAINERD_BIN_DIR LAYER_DIR...
#   e.g. scripts/mount-manager.sh /var/cache/airgap-snapshotter/containerd-go/2.3.7/bin /var/lib/airgap-snapshotter/layers/*/
set -euo pipefail

[[ $# -ge 2 ]] || { sed -n '2,14p' "$0" >&2; exit 2; }
bin=$1; shift
source "$(dirname "${BASH_SOURCE[0]}")/lib/go.sh"
go_ready mount-manager
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/mount-manager" && pwd)
tmp=$(mktemp -d /tmp/mount-manager.XXXXXX)
pid=
cleanup() {
    if [[ -n $pid ]]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
    rm -rf "$tmp"
}
trap cleanup EXIT

layers=()
for d in "$@"; do layers+=("$(cd "$d" && pwd)"); done
(cd "$here" && "$go" build -o "$tmp/mount-manager" .)
cat >"$tmp/config.toml" <<TOML
version = 3
root = "$tmp/root"
state = "$tmp/state"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.cri.v1.images", "io.containerd.cri.v1.runtime", "io.containerd.nri.v1.nri"]
[grpc]
  address = "$tmp/containerd.sock"
[ttrpc]
  address = "$tmp/containerd.sock.ttrpc"
[debug]
  address = "$tmp/debug.sock"
TOML
PATH=$bin:$PATH "$bin/containerd" --config "$tmp/config.toml" >"$tmp/containerd.log" 2>&1 &
pid=$!
for _ in $(seq 50); do [[ -S $tmp/containerd.sock ]] && break; sleep 0.2; done
"$tmp/mount-manager" "$tmp/containerd.sock" "$tmp/work" "${layers[@]}"

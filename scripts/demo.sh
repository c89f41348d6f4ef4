#!/usr/bin/env bash
# The demo, offline from end to end: installs what is needed, builds
# airgap-snapshotter, makes airgap archives from files on this machine (a
# static busybox), starts the daemon and a private containerd wired to it
# (its own root, state and sockets under the work dir; the system containerd
# is never used), pulls through CRI as kubelet does and with `ctr pull`, runs
# a container from the archive, and cleans everything up. No registry exists
# on this machine: every byte comes from the archives.
#
#   scripts/demo.sh [WORK_DIR]     (default: a temporary directory, removed at the end)
#
# AIRGAP_CONTAINERD_DIR=DIR runs the containerd and ctr in DIR (or DIR/usr/bin,
# e.g. /var/cache/airgap-snapshotter/containerd/sid from
# scripts/fetch-containerd.sh) instead of the system's 1.6; its config is
# built for its version as the end-to-end tests build it.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
repo=$(pwd)

# rustup installs cargo in ~/.cargo/bin, which a non-login shell may lack.
if ! command -v cargo >/dev/null 2>&1 && [[ -x ${CARGO_HOME:-$HOME/.cargo}/bin/cargo ]]; then
    export PATH=${CARGO_HOME:-$HOME/.cargo}/bin:$PATH
fi

say() { printf '\n==> %s\n' "$*"; }

# The containerd to run (AIRGAP_CONTAINERD_DIR, else the system's).
source scripts/lib/containerd-dir.sh

if [[ $(id -u) -eq 0 ]]; then
    say "installing dependencies"
    scripts/install-deps.sh
else
    say "not root: skipping scripts/install-deps.sh (run it as root once)"
fi

say "building airgap-snapshotter (release)"
cargo build --release -p airgap-snapshotter --bin airgap-snapshotter
target_dir=${CARGO_TARGET_DIR:-$repo/target}
bin=$target_dir/release/airgap-snapshotter

if [[ $# -ge 1 ]]; then
    work=$(realpath -m "$1")
    mkdir -p "$work"
else
    work=$(mktemp -d /tmp/airgap-demo-XXXXXX)
    trap 'rm -rf "$work"' EXIT
fi
archives=$work/archives
mkdir -p "$archives"

sha() { sha256sum "$1" | cut -d' ' -f1; }
size() { stat -c %s "$1"; }

case $(uname -m) in
    x86_64) arch=amd64 ;;
    aarch64) arch=arm64 ;;
    *) arch=$(uname -m) ;;
esac

# oci_archive NAME TAG MESSAGE OUT: a one-layer OCI image layout tar holding
# busybox and /hello.txt, named NAME:TAG.
oci_archive() {
    local name=$1 tag=$2 message=$3 out=$4
    local dir
    dir=$(mktemp -d "$work/build-XXXXXX")
    local rootfs=$dir/rootfs layout=$dir/layout
    mkdir -p "$rootfs/bin" "$layout/blobs/sha256"
    cp /bin/busybox "$rootfs/bin/busybox"
    for applet in sh ls cat echo; do ln -s busybox "$rootfs/bin/$applet"; done
    printf '%s\n' "$message" >"$rootfs/hello.txt"

    tar -C "$rootfs" --sort=name --owner=0 --group=0 --numeric-owner \
        --mtime=@1700000000 -cf "$dir/layer.tar" .
    local diff_id
    diff_id=$(sha "$dir/layer.tar")
    gzip -n -c "$dir/layer.tar" >"$dir/layer.tar.gz"
    local layer
    layer=$(sha "$dir/layer.tar.gz")
    mv "$dir/layer.tar.gz" "$layout/blobs/sha256/$layer"

    jq -cn --arg arch "$arch" --arg diff "sha256:$diff_id" \
        '{architecture: $arch, os: "linux",
          config: {Env: ["PATH=/bin"], Cmd: ["/bin/cat", "/hello.txt"]},
          rootfs: {type: "layers", diff_ids: [$diff]}}' >"$dir/config.json"
    local config
    config=$(sha "$dir/config.json")
    jq -cn --arg c "sha256:$config" --argjson cs "$(size "$dir/config.json")" \
        --arg l "sha256:$layer" --argjson ls "$(size "$layout/blobs/sha256/$layer")" \
        '{schemaVersion: 2, mediaType: "application/vnd.oci.image.manifest.v1+json",
          config: {mediaType: "application/vnd.oci.image.config.v1+json", digest: $c, size: $cs},
          layers: [{mediaType: "application/vnd.oci.image.layer.v1.tar+gzip", digest: $l, size: $ls}]}' \
        >"$dir/manifest.json"
    local manifest
    manifest=$(sha "$dir/manifest.json")
    mv "$dir/config.json" "$layout/blobs/sha256/$config"
    jq -cn --arg m "sha256:$manifest" --argjson ms "$(size "$dir/manifest.json")" \
        --arg name "$name:$tag" --arg tag "$tag" --arg arch "$arch" \
        '{schemaVersion: 2, mediaType: "application/vnd.oci.image.index.v1+json",
          manifests: [{mediaType: "application/vnd.oci.image.manifest.v1+json",
                       digest: $m, size: $ms,
                       annotations: {"io.containerd.image.name": $name,
                                     "org.opencontainers.image.ref.name": $tag},
                       platform: {architecture: $arch, os: "linux"}}]}' \
        >"$layout/index.json"
    mv "$dir/manifest.json" "$layout/blobs/sha256/$manifest"
    printf '{"imageLayoutVersion":"1.0.0"}' >"$layout/oci-layout"
    tar -C "$layout" --sort=name --owner=0 --group=0 --numeric-owner \
        --mtime=@1700000000 -cf "$out" oci-layout index.json blobs
    rm -rf "$dir"
}

say "building sample archives in $archives"
oci_archive docker.io/demo/hello 1.0 "hello from an airgap archive" "$archives/hello.tar"
oci_archive docker.io/demo/greeter 2.0 "greetings, compressed" "$work/greeter.tar"
zstd -q --rm -19 "$work/greeter.tar" -o "$archives/greeter.tar.zst"
ls -l "$archives"

say "$bin images --archives $archives"
"$bin" images --archives "$archives"

if [[ $(id -u) -ne 0 ]]; then
    say "not root: stopping here (the pull-and-run part needs root for containerd)"
    exit 0
fi

say "building the CRI client that plays kubelet, and the config writer of the tests"
cargo build --release -q -p airgap-integration --bin bench-cri --bin containerd-config
cri=$target_dir/release/bench-cri
containerd_config=$target_dir/release/containerd-config

# --- the daemon and a private containerd -------------------------------------
pids=()
cleanup() {
    local rc=$?
    set +e
    for pid in "${pids[@]}"; do
        kill "$pid" 2>/dev/null
    done
    for pid in "${pids[@]}"; do
        # wait reaps it; a child that ignores SIGTERM for 10 s is killed.
        ( sleep 10; kill -9 "$pid" 2>/dev/null ) &
        local killer=$!
        wait "$pid" 2>/dev/null
        kill "$killer" 2>/dev/null
    done
    # Unmount whatever is left under the work dir, deepest first.
    findmnt -rn -o TARGET | grep -F "$work/" | sort -r | while read -r m; do
        umount -l "$m"
    done
    [[ -n ${tmp_work:-} ]] && rm -rf "$work"
    exit "$rc"
}
trap cleanup EXIT
[[ $# -ge 1 ]] || tmp_work=1

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
mirror=127.0.0.1:$port
sock=$work/airgap/snapshotter.sock
t0=$(date +%s.%N)
elapsed() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f s", b - a }'; }

say "starting airgap-snapshotter (snapshotter on $sock, mirror on $mirror)"
step=$(date +%s.%N)
"$bin" serve --root "$work/airgap/root" --socket "$sock" --archives "$archives" \
    --mirror-listen "$mirror" --metrics-listen off --import-mode off >"$work/airgap.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do [[ -S $sock ]] && break; sleep 0.1; done
[[ -S $sock ]] || { cat "$work/airgap.log"; echo "daemon did not start" >&2; exit 1; }
echo "daemon up in $(elapsed "$step")"

say "writing a private containerd config and hosts.toml"
cd_dir=$work/containerd
mkdir -p "$cd_dir/root" "$cd_dir/state" "$cd_dir/certs.d"
"$bin" config --mirror "$mirror" --write "$cd_dir/certs.d" >/dev/null
# `containerd config default` with `airgap-snapshotter config --containerd
# <this containerd's version>` merged in, root, state and sockets moved into
# $cd_dir (checked: never the system containerd's), CRI pointed at the
# hosts directory; on 2.x NRI off.
AIRGAP_SNAPSHOTTER_BIN=$bin "$containerd_config" "$cd_dir" "$sock" "$cd_dir/certs.d" \
    >"$cd_dir/config.toml"
grep -q "address = \"$cd_dir/containerd.sock\"" "$cd_dir/config.toml"
grep -q "address = \"$sock\"" "$cd_dir/config.toml"
cat "$cd_dir/certs.d/_default/hosts.toml"

say "starting a private containerd (socket $cd_dir/containerd.sock)"
step=$(date +%s.%N)
containerd --config "$cd_dir/config.toml" >"$work/containerd.log" 2>&1 &
pids+=($!)
ctr() { command ctr --address "$cd_dir/containerd.sock" "$@"; }
for _ in $(seq 100); do ctr version >/dev/null 2>&1 && break; sleep 0.1; done
ctr version >/dev/null || { tail -20 "$work/containerd.log"; exit 1; }
echo "containerd up in $(elapsed "$step")"

say "CRI PullImage docker.io/demo/hello:1.0, as kubelet sends it"
step=$(date +%s.%N)
"$cri" "$cd_dir/containerd.sock" docker.io/demo/hello:1.0
echo "pulled in $(elapsed "$step"); the daemon took the layer straight from the archive (mounted where the kernel can, else extracted):"
grep -E "committed from archive|mounted from archive|extracted from archive" "$work/airgap.log" | sed "s/\x1b\[[0-9;]*m//g" | tail -3 || true

say "ctr pull docker.io/demo/greeter:2.0 through the mirror (zstd archive)"
step=$(date +%s.%N)
ctr -n demo images pull --hosts-dir "$cd_dir/certs.d" --snapshotter airgap docker.io/demo/greeter:2.0
echo "pulled in $(elapsed "$step")"

say "running containers from the archives (runc, snapshotter airgap)"
step=$(date +%s.%N)
ctr -n k8s.io run --rm --snapshotter airgap docker.io/demo/hello:1.0 demo-hello
ctr -n demo run --rm --snapshotter airgap docker.io/demo/greeter:2.0 demo-greeter
echo "ran in $(elapsed "$step")"

say "what containerd has"
ctr -n k8s.io images ls -q
ctr -n demo images ls -q
ctr -n k8s.io snapshots --snapshotter airgap ls

say "done in $(elapsed "$t0") after the build, with no registry anywhere: cleaning up"

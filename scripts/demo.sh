#!/usr/bin/env bash
# The demo: installs what is needed, builds airgap-snapshotter (release),
# builds sample airgap archives from files on this machine (a static busybox)
# and lists the images they hold.
#
#   scripts/demo.sh [WORK_DIR]     (default: a temporary directory, removed at the end)
#
# It grows into the full offline pull-and-run demo with the later issues.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
repo=$(pwd)

say() { printf '\n==> %s\n' "$*"; }

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
    work=$1
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

say "$bin images --archives $archives --json"
"$bin" images --archives "$archives" --json | jq .

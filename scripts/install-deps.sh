#!/usr/bin/env bash
# Installs, on a fresh Debian 12 and as root, everything the build and the
# tests need: containerd 1.6 and runc, docker-registry and skopeo (the test
# registry), Go and containerd's sources (the snapshotter conformance suite),
# busybox-static (test images), the compressors the archive formats use, a
# C toolchain for the -sys crates, rpm (the release test), cargo-nextest,
# cargo-generate-rpm and cargo-cyclonedx (the release's RPMs and SBOMs).
#
# Idempotent: packages already installed are not touched, and apt is not run
# at all when nothing is missing. It never starts, stops or configures the
# system containerd service.
set -euo pipefail

PACKAGES=(
    # containerd 1.6 (containerd, ctr) and the OCI runtime it uses
    containerd runc
    # the local registry of the end-to-end tests, and how images get into it
    docker-registry skopeo apache2-utils
    # containerd's snapshotter conformance suite (GOPATH mode, Debian's sources)
    golang-go golang-github-containerd-containerd-dev
    # the static busybox the test images run
    busybox-static
    # archive containers: gzip, zstd, lz4, bzip2
    pigz gzip zstd lz4 bzip2 tar
    # scripts
    jq curl ca-certificates openssl util-linux procps iproute2 python3
    # the layer store's reflink clones, tested on a loop-mounted xfs image
    xfsprogs
    # C toolchain for zstd-sys, bzip2-sys and friends
    build-essential pkg-config
    # scripts/release-test.sh installs the RPMs into a throwaway root
    rpm
)

# rustup installs cargo in ~/.cargo/bin, which a non-login shell may lack.
if ! command -v cargo >/dev/null 2>&1 && [[ -x ${CARGO_HOME:-$HOME/.cargo}/bin/cargo ]]; then
    export PATH=${CARGO_HOME:-$HOME/.cargo}/bin:$PATH
fi

log() { printf 'install-deps: %s\n' "$*" >&2; }

if [[ $(id -u) -ne 0 ]]; then
    log "must run as root (it installs Debian packages)"
    exit 1
fi

missing=()
for pkg in "${PACKAGES[@]}"; do
    status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
    if [[ $status != "install ok installed" ]]; then
        missing+=("$pkg")
    fi
done

if ((${#missing[@]})); then
    log "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update
    apt-get install -y --no-install-recommends "${missing[@]}"
else
    log "all ${#PACKAGES[@]} Debian packages present"
fi

# Rust: the workspace needs a recent stable toolchain (rust-version in
# Cargo.toml); Debian's cargo is too old, so it is not installed from apt.
# promtool checks and tests contrib/prometheus's alert rules. Debian ships it
# only in the `prometheus` package, whose installation would enable and start
# a Prometheus server on this machine: the package is downloaded and unpacked
# into the cache instead (promtool is a static binary), never installed.
promtool_dir=/var/cache/airgap-snapshotter/prometheus
if [[ ! -x $promtool_dir/usr/bin/promtool ]]; then
    log "fetching promtool (Debian's prometheus package, unpacked into $promtool_dir)"
    tmp=$(mktemp -d)
    if ! (cd "$tmp" && { apt-get download prometheus 2>/dev/null || { apt-get update && apt-get download prometheus; }; }) ||
        ! dpkg-deb -x "$tmp"/prometheus_*.deb "$tmp/root"; then
        rm -rf "$tmp"
        log "cannot download Debian's prometheus package for promtool"
        exit 1
    fi
    rm -rf "$promtool_dir"
    mkdir -p "$(dirname "$promtool_dir")"
    mv "$tmp/root" "$promtool_dir"
    rm -rf "$tmp"
fi

if ! command -v cargo >/dev/null 2>&1; then
    log "cargo not found: install a stable Rust toolchain (rustup) and put ~/.cargo/bin on PATH"
    exit 1
fi
for component in fmt clippy; do
    if ! cargo "$component" --version >/dev/null 2>&1; then
        if command -v rustup >/dev/null 2>&1; then
            log "adding the rust component for cargo $component"
            rustup component add "$([[ $component == fmt ]] && echo rustfmt || echo clippy)"
        else
            log "cargo $component is missing and rustup is not available"
            exit 1
        fi
    fi
done
if ! cargo nextest --version >/dev/null 2>&1; then
    log "installing cargo-nextest"
    cargo install --locked cargo-nextest
fi
# scripts/release.sh: the RPMs and the CycloneDX SBOMs (pinned: their output
# is part of the release artifacts).
for tool in cargo-generate-rpm@0.21.1 cargo-cyclonedx@0.5.9; do
    if ! command -v "${tool%@*}" >/dev/null 2>&1; then
        log "installing $tool"
        cargo install --locked "$tool"
    fi
done

# Overlayfs is what the snapshotter mounts; say so early if it is missing.
if ! grep -qw overlay /proc/filesystems 2>/dev/null; then
    modprobe overlay 2>/dev/null || log "warning: overlayfs is not available in this kernel"
fi

log "done"

#!/usr/bin/env bash
# Builds the release artifacts into dist/ (gitignored), on a fresh Debian 12
# as root, for linux-amd64 and linux-arm64:
#
#   airgap-snapshotter-<version>-linux-<arch>.tar.gz
#       airgap-snapshotter-<version>-linux-<arch>/
#         airgap-snapshotter          the binary (one name on every arch)
#         airgap-snapshotter.service  systemd unit (ExecStart /usr/local/bin)
#         airgap-snapshotter.toml     the default config, every key commented
#         INSTALL                     how to install and remove it on a node
#   airgap-snapshotter_<version>_<arch>.deb
#       /usr/bin/airgap-snapshotter
#       /lib/systemd/system/airgap-snapshotter.service
#       /etc/airgap-snapshotter/config.toml                (a conffile)
#       /var/lib/airgap-snapshotter/archives/
#       /usr/share/doc/airgap-snapshotter/copyright        (LICENSE)
#       maintainer scripts: scripts/packaging/deb/
#   airgap-snapshotter-<version>-1.<x86_64|aarch64>.rpm
#       /usr/bin/airgap-snapshotter
#       /usr/lib/systemd/system/airgap-snapshotter.service
#       /etc/airgap-snapshotter/config.toml  (%config(noreplace))
#       /usr/share/licenses/airgap-snapshotter/LICENSE
#       scriptlets: scripts/packaging/rpm/ (written by cargo-generate-rpm
#       from [package.metadata.generate-rpm] in plugin/Cargo.toml)
#   <each of the above>.cdx.json      its CycloneDX 1.5 SBOM (cargo-cyclonedx:
#                                     the crate and every crate compiled
#                                     into the arch's binary)
#   SHA256SUMS                        over all of the above
#
# The binaries are static (musl: x86_64-unknown-linux-musl and
# aarch64-unknown-linux-musl, the C code of the -sys crates compiled by
# musl-gcc and by Debian's aarch64 cross gcc, linked against the Rust
# target's self-contained musl): they need no libc on the node. It installs
# what it needs (Debian packages, rustup targets, cargo-generate-rpm and
# cargo-cyclonedx) when missing.
#
#   scripts/release.sh
#
# Environment: AIRGAP_RELEASE_ARCHES="amd64 arm64" (the default) picks the
# arches; AIRGAP_RELEASE_TARGET_DIR (else CARGO_TARGET_DIR, else target/)
# is cargo's target directory (cross builds go to <dir>/<triple>/release);
# AIRGAP_RELEASE_SKIP_DEPS=1 skips the installs.
# Every artifact is reproducible for a given commit, whatever the paths of
# the checkout, the target directory and cargo's home (mtimes and the SBOMs'
# timestamps from the commit, paths remapped, owner root, sorted).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
repo=$(pwd)

# rustup installs cargo in ~/.cargo/bin, which a non-login shell may lack.
if ! command -v cargo >/dev/null 2>&1 && [[ -x ${CARGO_HOME:-$HOME/.cargo}/bin/cargo ]]; then
    export PATH=${CARGO_HOME:-$HOME/.cargo}/bin:$PATH
fi

say() { printf 'release: %s\n' "$*" >&2; }
die() {
    say "$*"
    exit 1
}

read -r -a arches <<<"${AIRGAP_RELEASE_ARCHES:-amd64 arm64}"

triple() {
    case $1 in
    amd64) echo x86_64-unknown-linux-musl ;;
    arm64) echo aarch64-unknown-linux-musl ;;
    *) die "unknown arch $1 (amd64, arm64)" ;;
    esac
}

# --- what the build needs ----------------------------------------------------
install_deps() {
    local packages=(dpkg gzip tar coreutils git python3)
    local arch
    for arch in "${arches[@]}"; do
        case $arch in
        amd64) packages+=(musl-tools) ;;
        arm64) packages+=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross) ;;
        esac
    done
    local missing=() pkg status
    for pkg in "${packages[@]}"; do
        status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
        [[ $status == "install ok installed" ]] || missing+=("$pkg")
    done
    if ((${#missing[@]})); then
        [[ $(id -u) -eq 0 ]] || die "missing Debian packages (run as root to install them): ${missing[*]}"
        say "installing: ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update
        apt-get install -y --no-install-recommends "${missing[@]}"
    fi
    command -v cargo >/dev/null 2>&1 || die "cargo not found: install a stable Rust toolchain (rustup)"
    # The RPM writer and the SBOM generator, pinned (their output is part
    # of the artifacts).
    local tool
    for tool in cargo-generate-rpm@0.21.1 cargo-cyclonedx@0.5.9; do
        if ! command -v "${tool%@*}" >/dev/null 2>&1; then
            say "installing $tool"
            cargo install --locked "$tool"
        fi
    done
    local installed t
    installed=$(rustup target list --installed 2>/dev/null || true)
    for arch in "${arches[@]}"; do
        t=$(triple "$arch")
        if ! grep -qx "$t" <<<"$installed"; then
            command -v rustup >/dev/null 2>&1 || die "the Rust target $t is missing and rustup is not available"
            say "adding the Rust target $t"
            rustup target add "$t"
        fi
    done
}

if [[ ${AIRGAP_RELEASE_SKIP_DEPS:-0} != 1 ]]; then
    install_deps
fi

# --- version and commit ------------------------------------------------------
version=$(sed -nE 's/^version = "([^"]+)"/\1/p' plugin/Cargo.toml | head -n 1)
[[ -n $version ]] || die "no version in plugin/Cargo.toml"
if git rev-parse --git-dir >/dev/null 2>&1; then
    commit=$(git rev-parse --short HEAD)
    epoch=$(git log -1 --format=%ct HEAD)
    if [[ -n $(git status --porcelain --untracked-files=no) ]]; then
        say "warning: the work tree has uncommitted changes; the binaries say ${commit}"
    fi
else
    commit=${AIRGAP_COMMIT:-unknown}
    epoch=$(date +%s)
fi
# Not exported: the cc crate reruns the -sys crates' builds when it changes.
epoch=${SOURCE_DATE_EPOCH:-$epoch}
target_dir=${AIRGAP_RELEASE_TARGET_DIR:-${CARGO_TARGET_DIR:-$repo/target}}
export CARGO_TARGET_DIR=$target_dir
dist=$repo/dist
rm -rf "$dist"
mkdir -p "$dist"
stage=$(mktemp -d /tmp/airgap-release-XXXXXX)
# cargo-cyclonedx writes an SBOM beside the manifest of every workspace
# member (plugin/, integration/): under a name of its own, plugin's moved
# away at once, the others removed (also if the script stops between).
sbom_name=airgap-release-sbom
trap 'rm -rf "$stage"; rm -f "$repo"/*/"$sbom_name.json"' EXIT
say "airgap-snapshotter ${version} (${commit}) for: ${arches[*]}"

# --- build -------------------------------------------------------------------
# build ARCH: prints the path of the static binary.
build() {
    local arch=$1 t env_t
    t=$(triple "$arch")
    env_t=${t//-/_}
    local cargo_home=${CARGO_HOME:-$HOME/.cargo}
    local envs=(
        # Symbols stay (readable backtraces), debug info goes.
        CARGO_PROFILE_RELEASE_STRIP=debuginfo
        CARGO_PROFILE_RELEASE_DEBUG=false
        # Source paths in panic messages and generated code name no
        # directory of the build machine: the same bytes from any checkout,
        # target directory or cargo home.
        "CARGO_TARGET_${env_t^^}_RUSTFLAGS=--remap-path-prefix=${target_dir}=/target --remap-path-prefix=${cargo_home}=/cargo --remap-path-prefix=${repo}=/src"
    )
    case $arch in
    amd64)
        envs+=("CC_${env_t}=musl-gcc")
        ;;
    arm64)
        # Debian has no aarch64 musl-gcc: the cross gcc compiles the C code
        # of the -sys crates (zstd, bzip2, ring) into static libraries and
        # links; rustc passes the target's self-contained crt objects and
        # libc.a (musl), so glibc's libraries are never linked.
        envs+=(
            "CC_${env_t}=aarch64-linux-gnu-gcc"
            "AR_${env_t}=aarch64-linux-gnu-ar"
            "CARGO_TARGET_${env_t^^}_LINKER=aarch64-linux-gnu-gcc"
        )
        ;;
    esac
    local t0
    t0=$(date +%s)
    env "${envs[@]}" cargo build --release --locked --target "$t" \
        -p airgap-snapshotter --bin airgap-snapshotter >&2
    say "built $t in $(($(date +%s) - t0)) s"
    echo "$target_dir/$t/release/airgap-snapshotter"
}

# Static: no program interpreter, no NEEDED libraries.
check_static() {
    local bin=$1 headers
    headers=$(LC_ALL=C readelf -ld "$bin" 2>/dev/null) || die "readelf $bin failed"
    if grep -q 'INTERP' <<<"$headers" || grep -q '(NEEDED)' <<<"$headers"; then
        die "$bin is not static"
    fi
}

# --- packaging ---------------------------------------------------------------
config=/etc/airgap-snapshotter/config.toml

# The tarball's unit: the packages' (scripts/airgap-snapshotter.service),
# with the binary in /usr/local/bin.
tarball_unit() {
    sed -E \
        -e 's|^ExecStart=/usr/bin/|ExecStart=/usr/local/bin/|' \
        -e 's|^# The packages install the binary as .*|# This copy (from the tarball) starts /usr/local/bin/airgap-snapshotter;|' \
        -e 's|^# tarball.s copy of this unit names .*|# the .deb and the RPM ship it with /usr/bin/airgap-snapshotter.|' \
        scripts/airgap-snapshotter.service
}

install_text() {
    local arch=$1
    cat <<EOF
airgap-snapshotter ${version} (${commit}), linux-${arch}, static binary (musl):
runs on any Linux ${arch} node, whatever its libc.

As root on the node (no network needed):

  sha256sum -c --ignore-missing SHA256SUMS      # next to the tarball
  tar -xzf airgap-snapshotter-${version}-linux-${arch}.tar.gz
  cd airgap-snapshotter-${version}-linux-${arch}
  install -m 0755 airgap-snapshotter /usr/local/bin/airgap-snapshotter
  install -m 0644 airgap-snapshotter.service /etc/systemd/system/
  install -d -m 0755 /etc/airgap-snapshotter
  [ -e ${config} ] ||
      install -m 0644 airgap-snapshotter.toml ${config}
  install -d -m 0700 /var/lib/airgap-snapshotter
  install -d -m 0755 /var/lib/airgap-snapshotter/archives
  airgap-snapshotter --version

Settings: ${config} (every key is listed there with its default;
every command reads it). Then:

  # containerd's config: the proxy snapshotter, CRI's snapshotter, hosts.toml
  airgap-snapshotter config --merge /etc/containerd/config.toml
  airgap-snapshotter config --write /etc/containerd/certs.d   # [--upstream https://REGISTRY]
  # the airgap archives (docker save / OCI layout tarballs, any compression)
  cp /media/*.tar.zst /var/lib/airgap-snapshotter/archives/
  systemctl daemon-reload
  systemctl enable --now airgap-snapshotter.service
  systemctl restart containerd

The unit starts before containerd. Logs: journalctl -u airgap-snapshotter.

To remove it (docs/operations.md, "Uninstall", has every step):

  airgap-snapshotter config --merge /etc/containerd/config.toml --revert
  systemctl restart containerd
  systemctl disable --now airgap-snapshotter.service
  rm /etc/systemd/system/airgap-snapshotter.service /usr/local/bin/airgap-snapshotter
  systemctl daemon-reload

The .deb (dpkg -i airgap-snapshotter_${version}_${arch}.deb) and the RPM
install the same files under /usr/bin, the systemd unit directory and
/etc/airgap-snapshotter, and enable the unit; removing them disables it.
Each artifact's CycloneDX SBOM is beside it (<artifact>.cdx.json).
EOF
}

# tar_gz DIR NAME OUT: a reproducible tarball of DIR/NAME.
tar_gz() {
    tar -C "$1" --sort=name --owner=0 --group=0 --numeric-owner \
        --mtime="@${epoch}" -cf - "$2" | gzip -9n >"$3"
}

build_deb() {
    local arch=$1 bin=$2
    local deb=$stage/deb-$arch
    install -d -m 0755 "$deb/DEBIAN" "$deb/usr/bin" "$deb/lib/systemd/system" \
        "$deb/etc/airgap-snapshotter" "$deb/var/lib/airgap-snapshotter/archives" \
        "$deb/usr/share/doc/airgap-snapshotter"
    install -m 0755 "$bin" "$deb/usr/bin/airgap-snapshotter"
    install -m 0644 scripts/airgap-snapshotter.service "$deb/lib/systemd/system/airgap-snapshotter.service"
    install -m 0644 scripts/airgap-snapshotter.toml "$deb$config"
    install -m 0644 LICENSE "$deb/usr/share/doc/airgap-snapshotter/copyright"
    echo "$config" >"$deb/DEBIAN/conffiles"
    chmod 0644 "$deb/DEBIAN/conffiles"
    local script
    for script in preinst postinst prerm postrm; do
        install -m 0755 "scripts/packaging/deb/$script" "$deb/DEBIAN/$script"
    done
    local size
    size=$(du -sk --exclude=DEBIAN "$deb" | cut -f1)
    cat >"$deb/DEBIAN/control" <<EOF
Package: airgap-snapshotter
Version: ${version}
Architecture: ${arch}
Maintainer: airgap-snapshotter maintainers <root@localhost>
Installed-Size: ${size}
Section: admin
Priority: optional
Description: containerd snapshotter and registry mirror serving airgap archives
 airgap-snapshotter lets containerd pull images from airgap image archives
 (docker save and OCI layout tarballs) put into a directory: a proxy
 snapshotter that extracts layers straight from the archives, and a registry
 mirror on loopback. Static binary (${commit}).
EOF
    find "$deb" -exec touch -h -d "@${epoch}" {} +
    SOURCE_DATE_EPOCH=$epoch dpkg-deb --root-owner-group -Zgzip --build "$deb" \
        "$dist/airgap-snapshotter_${version}_${arch}.deb" >&2
}

# build_rpm ARCH: the RPM of the binary cargo built for ARCH, from
# [package.metadata.generate-rpm] in plugin/Cargo.toml. Its paths other than
# target/release/ are the repository's; cargo-generate-rpm runs in a copy of
# the manifests and those files whose mtimes are the commit's (SOURCE_DATE_EPOCH only lowers newer mtimes: the
# checkout's own would make the RPM differ per checkout).
build_rpm() {
    local arch=$1 t rpm_arch src=$stage/rpm-src-$1
    t=$(triple "$arch")
    rpm_arch=${t%%-*}
    mkdir -p "$src/scripts" "$src/plugin"
    cp Cargo.toml LICENSE "$src/"
    cp plugin/Cargo.toml "$src/plugin/"
    cp -r scripts/airgap-snapshotter.service scripts/airgap-snapshotter.toml scripts/packaging "$src/scripts/"
    find "$src" -exec touch -h -d "@${epoch}" {} +
    (cd "$src" && SOURCE_DATE_EPOCH=$epoch cargo generate-rpm -p plugin --target "$t" \
        --target-dir "$target_dir" --payload-compress zstd \
        -o "$dist/airgap-snapshotter-${version}-1.${rpm_arch}.rpm" >&2)
}

# sbom ARCH ARTIFACT...: one CycloneDX SBOM per artifact of ARCH,
# ARTIFACT.cdx.json: the crate and the crates compiled into the binary for
# the arch's target (not build-only or dev dependencies), timestamped with
# the commit (SOURCE_DATE_EPOCH), the checkout's path taken out of the
# bom-refs, the artifact, commit and target named in its properties.
sbom() {
    local arch=$1 t out
    shift
    t=$(triple "$arch")
    out=$stage/sbom-$arch
    SOURCE_DATE_EPOCH=$epoch cargo cyclonedx --manifest-path plugin/Cargo.toml \
        --format json --spec-version 1.5 --target "$t" --no-build-deps \
        --override-filename "$sbom_name" -q
    mv "plugin/$sbom_name.json" "$out.json"
    rm -f -- */"$sbom_name.json"
    local artifact
    for artifact in "$@"; do
        python3 - "$out.json" "$repo" "$artifact" "$commit" "$t" \
            >"$dist/$artifact.cdx.json" <<'EOF'
import json, sys
path, repo, artifact, commit, target = sys.argv[1:]
text = open(path).read().replace("path+file://" + repo + "/", "path+file:///")
bom = json.loads(text)
props = bom["metadata"].setdefault("properties", [])
props += [{"name": "airgap-snapshotter:artifact", "value": artifact},
          {"name": "airgap-snapshotter:commit", "value": commit},
          {"name": "airgap-snapshotter:target", "value": target}]
json.dump(bom, sys.stdout, indent=2, sort_keys=True)
sys.stdout.write("\n")
EOF
        touch -d "@${epoch}" "$dist/$artifact.cdx.json"
    done
}

package() {
    local arch=$1 bin=$2
    local name=airgap-snapshotter-${version}-linux-${arch}
    local dir=$stage/$name
    mkdir -p "$dir"
    install -m 0755 "$bin" "$dir/airgap-snapshotter"
    tarball_unit >"$dir/airgap-snapshotter.service"
    install -m 0644 scripts/airgap-snapshotter.toml "$dir/airgap-snapshotter.toml"
    install_text "$arch" >"$dir/INSTALL"
    chmod 0644 "$dir/airgap-snapshotter.service" "$dir/INSTALL"
    tar_gz "$stage" "$name" "$dist/$name.tar.gz"
    build_deb "$arch" "$bin"
    build_rpm "$arch"
    local t
    t=$(triple "$arch")
    sbom "$arch" "$name.tar.gz" "airgap-snapshotter_${version}_${arch}.deb" \
        "airgap-snapshotter-${version}-1.${t%%-*}.rpm"
}

declare -A seconds
for arch in "${arches[@]}"; do
    t0=$(date +%s)
    bin=$(build "$arch")
    seconds[$arch]=$(($(date +%s) - t0))
    check_static "$bin"
    package "$arch" "$bin"
done

(cd "$dist" && sha256sum -- *.tar.gz *.deb *.rpm *.cdx.json >SHA256SUMS)

say "done: $dist"
for arch in "${arches[@]}"; do
    say "  linux-${arch}: build ${seconds[$arch]} s"
done
(cd "$dist" && ls -l --time-style=+ -- *) >&2

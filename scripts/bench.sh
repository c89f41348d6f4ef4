#!/usr/bin/env bash
# The benchmark against what sites use today (issue 5). In one run, on this
# machine, caches dropped before each step, it pulls the largest image of a
# generated bundle in every way a site can, and measures the time until the
# image can run, the disk used (containerd's root plus the daemon's root)
# and the daemon's peak RSS:
#
#   1  ctr images import of the bundle (.tar.zst: OCI layout with gzip layers
#      as `ctr export | zstd` makes, and docker-save as k3s ships it)
#   2  CRI PullImage (as kubelet) from a local docker-registry
#   3  ctr pull from that registry
#   4  ctr pull through the daemon's registry mirror
#   5  CRI PullImage through mirror + snapshotter, from each kind of archive
#   6  the floor: pigz -dc | tar -x of the same layers, one process per layer
#      in parallel and one after the other (and tar -x of the uncompressed
#      layers: file creation alone)
#
# and also: a small image out of the large archive (bytes decompressed
# against the image's own bytes; single-frame and seekable), the daemon's
# start-up time with a persisted index, and its idle RSS with the bundle
# indexed. Prints a table; --write puts it into BENCHMARKS.md. Not a test:
# nothing here asserts a time.
#
#   scripts/bench.sh [--write] [--cache DIR] [--logs DIR] [--reps N] [--no-profile] [--pulls|--import|--mounts]
#
# --pulls runs only the pulls a site compares across containerd versions:
# (2), (3), (4) and (5) on the oci archive, `ctr pull --snapshotter airgap`
# through mirror + snapshotter (4b), and the parallel floor (6), and writes
# them into a section of their own per containerd version. With
# AIRGAP_CONTAINERD_DIR=DIR the private containerds are the one in DIR
# (e.g. /var/cache/airgap-snapshotter/containerd/sid, see
# scripts/fetch-containerd.sh), configured as the end-to-end tests do
# (`containerd config default` + `airgap-snapshotter config --containerd
# <version>`, written by integration's containerd-config).
#
# --import runs only what registration into containerd (import, issue 10)
# is compared with: (1) `ctr images import` of the bundle, (2), (5) on the
# oci archive, (7) `airgap-snapshotter import` of the bundle, lazy and
# eager, and (7b) the first `ctr run` of the largest image after a lazy
# registration; written into a section of its own per containerd version.
#
# --mounts runs only what layers mounted from the archive (EROFS, issue 12)
# are compared with, on the largest image: (2); CRI PullImage through mirror
# + snapshotter with `--layer-mounts extract` from the oci archive (as (5));
# with `--layer-mounts auto` from a docker-save archive left uncompressed
# (docker-plain.tar, as k3s and rke2 ship theirs: its layers are mounted in
# place); from the docker-save .tar.zst with `--prepare-layers on-arrival`,
# timed once the daemon has prepared every layer; from the docker-save
# .tar.zst and the oci archive prepared on pull; reading every file of the
# image in a container (`ctr run`), over mounted and over extracted layers;
# and the parallel floor (6). Written into a section of its own per containerd version. The
# rows that need `--prepare-layers` are left out with a daemon without it.
#
# --cache DIR keeps the generated bundle (debootstrap rootfs, archives) in
# DIR, so that a rerun skips generating it. --logs DIR keeps the logs of
# containerd, the registry and the daemon (kept anyway, under /tmp, when a
# step fails). --reps N runs every step N times (default 3) and reports
# the median. Unless --no-profile, one more pull of (5) runs under
# `perf record` and the hottest symbols go into the report. Needs root. Everything runs on
# loopback in a temporary directory: a private containerd (its root,
# state and sockets there; the system containerd is never used), a private
# docker-registry and the daemon, all stopped by pid at the end, also on
# failure. containerd runs take the e2e tests' lock (flock integration/).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
repo=$(pwd)

write=0
cache=
logs=
reps=3
profile=1
pulls=0
imports=0
mounts=0
while (($#)); do
    case $1 in
        --write) write=1 ;;
        --cache) cache=$2; shift ;;
        --logs) logs=$2; shift ;;
        --reps) reps=$2; shift ;;
        --no-profile) profile=0 ;;
        --pulls) pulls=1 profile=0 ;;
        --import) imports=1 profile=0 ;;
        --mounts) mounts=1 profile=0 ;;
        -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
[[ $(id -u) -eq 0 ]] || { echo "bench.sh needs root (containerd, mounts, drop_caches)" >&2; exit 1; }
# shellcheck source=scripts/lib/containerd-dir.sh disable=SC1091 # followed with -x
source scripts/lib/containerd-dir.sh

say() { printf '==> %s\n' "$*" >&2; }
need=(containerd ctr runc docker-registry skopeo pigz zstd tar python3 jq debootstrap flock)
missing=()
for c in "${need[@]}"; do command -v "$c" >/dev/null || missing+=("$c"); done
if ((${#missing[@]})); then
    say "installing what is missing: ${missing[*]}"
    scripts/install-deps.sh >/dev/null
    command -v debootstrap >/dev/null || apt-get install -y -q debootstrap >/dev/null
fi

load_start=$(cut -d' ' -f1-3 /proc/loadavg)
say "building (release)"
cargo build --release -q -p airgap-snapshotter --bin airgap-snapshotter --example bench-decompressed
cargo build --release -q -p airgap-integration --bin bench-cri --bin containerd-config
target=${CARGO_TARGET_DIR:-$repo/target}/release
bin=$target/airgap-snapshotter
containerd_config=$target/containerd-config
export AIRGAP_SNAPSHOTTER_BIN=$bin
containerd_version=$(containerd --version | awk '{ print $3 }')
cri=$target/bench-cri
decompressed=$target/examples/bench-decompressed

# ---------------------------------------------------------------- cleanup
work=$(mktemp -d /tmp/airgap-bench-XXXXXX)
pids=()         # every long-running process started here
lock_fd=
cleanup() {
    local status=$?
    set +e
    for pid in "${pids[@]}"; do stop_pid "$pid"; done
    if [[ -n $logs ]] || ((status != 0)); then
        local to=${logs:-/tmp/airgap-bench-logs-$$}
        mkdir -p "$to"
        (cd "$work" && find . -name '*.log' -exec cp --parents {} "$to/" \;) 2>/dev/null
        echo "logs of this run: $to" >&2
    fi
    kill_shims
    unmount_under "$work"
    rm -rf "$work"
    exit $status
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# stop_pid PID: SIGTERM, up to 10 s, then SIGKILL; only our own children.
stop_pid() {
    local pid=$1 i
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null
    for ((i = 0; i < 200; i++)); do
        kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null; return 0; }
        sleep 0.05
    done
    echo "warning: pid $pid ignored SIGTERM, killing it" >&2
    kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
    return 0
}
forget_pid() {
    local keep=() p
    for p in "${pids[@]}"; do [[ $p == "$1" ]] || keep+=("$p"); done
    pids=("${keep[@]}")
}
# Shims started by a containerd of ours outlive it: recognised by our temp
# dir on their command line, killed by pid.
kill_shims() {
    local p
    for p in /proc/[0-9]*; do
        { tr '\0' ' ' <"$p/cmdline"; } 2>/dev/null | grep -q "containerd-shim.*$work" || continue
        kill -KILL "${p#/proc/}" 2>/dev/null
    done
}
unmount_under() {
    local m
    awk -v d="$1" 'index($2, d) == 1 { print $2 }' /proc/self/mounts | sort -r | while read -r m; do
        umount "$m" 2>/dev/null || umount -l "$m"
    done
}
lock() { exec {lock_fd}<"$repo/integration"; flock "$lock_fd"; }
unlock() { flock -u "$lock_fd"; exec {lock_fd}<&-; }

drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
# wait_for WHAT SECONDS CMD...: polls CMD every 20 ms.
wait_for() {
    local what=$1 secs=$2 deadline
    shift 2
    deadline=$(($(date +%s) + secs))
    until "$@" >/dev/null 2>&1; do
        (($(date +%s) < deadline)) || { echo "timed out waiting for $what" >&2; return 1; }
        sleep 0.02
    done
}
http_ok() { curl -sf -o /dev/null --max-time 2 "$@"; }
du_bytes() { du -sxB1 "$@" 2>/dev/null | awk '{ s += $1 } END { printf "%d\n", s }'; }
# cpu_ticks PID: user and system clock ticks so far.
cpu_ticks() { awk '{ print $14, $15 }' "/proc/$1/stat"; }
cpu_since() { # PID "USER SYS" -> "user X s, sys Y s"
    local u0 s0 u1 s1 hz
    read -r u0 s0 <<<"$2"
    read -r u1 s1 < <(cpu_ticks "$1")
    hz=$(getconf CLK_TCK)
    awk -v u=$((u1 - u0)) -v s=$((s1 - s0)) -v hz="$hz" 'BEGIN { printf "daemon CPU: user %.1f s, sys %.1f s", u / hz, s / hz }'
}
hwm_kib() { awk '/^VmHWM:/ { print $2 }' "/proc/$1/status"; }
rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }

# ---------------------------------------------------------------- bundle
arch=$(dpkg --print-architecture 2>/dev/null || uname -m)
big=docker.io/bench/debian-go:1
small=docker.io/bench/busybox:1
go_tree=/=usr/lib/go-1.19,usr/share/go-1.19
llvm_tree=/=usr/lib/llvm-14
py_tree=/=usr/lib/python3
for d in /usr/lib/go-1.19 /usr/share/go-1.19 /usr/lib/llvm-14 /usr/lib/python3 /bin/busybox; do
    [[ -e $d ]] || { echo "needs $d (golang-1.19, llvm-14, python3, busybox-static: scripts/install-deps.sh)" >&2; exit 1; }
done
bundle=${cache:-$work/cache}
mkdir -p "$bundle"
bundle=$(cd "$bundle" && pwd)
spec="v3 $arch minbase+$go_tree minbase+$llvm_tree minbase+$py_tree busybox $(sha256sum scripts/make-archive.py | cut -c1-16) $($bin --version)"
if [[ -f $bundle/stamp && $(cat "$bundle/stamp") == "$spec" ]]; then
    say "reusing the bundle in $bundle"
else
    rm -f "$bundle/stamp" "$bundle/docker-plain.tar"
    if [[ ! -d $bundle/minbase ]]; then
        say "debootstrap --variant=minbase bookworm (the base layer)"
        rm -rf "$bundle/minbase.tmp"
        debootstrap --variant=minbase bookworm "$bundle/minbase.tmp" >"$bundle/debootstrap.log" 2>&1 ||
            { tail -20 "$bundle/debootstrap.log" >&2; exit 1; }
        mv "$bundle/minbase.tmp" "$bundle/minbase"
    fi
    mkdir -p "$bundle/busybox/bin"
    cp /bin/busybox "$bundle/busybox/bin/busybox"
    for a in sh ls cat echo true; do ln -sf busybox "$bundle/busybox/bin/$a"; done
    say "building the bundle: OCI layout with gzip layers in .tar.zst, and docker-save in .tar.zst"
    python3 scripts/make-archive.py --out "$bundle/oci.tar.zst" --wrap zstd \
        --docker-save-out "$bundle/docker.tar.zst" \
        --name "$big" --layer "$bundle/minbase" --layer-tree "$go_tree" \
        --name docker.io/bench/debian-llvm:1 --layer "$bundle/minbase" --layer-tree "$llvm_tree" \
        --name docker.io/bench/debian-python:1 --layer "$bundle/minbase" --layer-tree "$py_tree" \
        --name "$small" --layer "$bundle/busybox"
    say "airgap-snapshotter pack (seekable)"
    "$bin" pack -o "$bundle/packed.tar.zst" --from "$bundle/oci.tar.zst" \
        "$big" docker.io/bench/debian-llvm:1 docker.io/bench/debian-python:1 "$small" >/dev/null
    # The largest image alone: no other image shares its base layer, so the
    # daemon has nothing else to prefetch while it is pulled.
    "$bin" pack -o "$bundle/alone.tar.zst" --from "$bundle/oci.tar.zst" "$big" >/dev/null
    zstd -dc "$bundle/oci.tar.zst" >"$bundle/oci.tar" # for skopeo
    echo "$spec" >"$bundle/stamp"
fi
# --mounts: the docker-save archive uncompressed, as k3s and rke2 ship
# theirs (its layers are plain tars: mounted in place). Made from the
# bundle's docker.tar.zst once, dropped when the bundle is rebuilt.
kinds=(oci docker packed alone)
if ((mounts)); then
    kinds=(oci docker docker-plain)
    if [[ ! -f $bundle/docker-plain.tar ]]; then
        say "docker-plain.tar: the docker-save archive, uncompressed"
        zstd -dcq "$bundle/docker.tar.zst" >"$bundle/docker-plain.tar.tmp"
        mv "$bundle/docker-plain.tar.tmp" "$bundle/docker-plain.tar"
    fi
fi
archive_of() { # KIND
    case $1 in
        docker-plain) echo "$bundle/docker-plain.tar" ;;
        *) echo "$bundle/$1.tar.zst" ;;
    esac
}

# One archives directory per kind; hard links keep the (device, inode,
# size, mtime) the persisted indexes are keyed by.
for kind in "${kinds[@]}"; do
    mkdir -p "$work/archives-$kind"
    ln "$(archive_of "$kind")" "$work/archives-$kind/" 2>/dev/null ||
        cp -p "$(archive_of "$kind")" "$work/archives-$kind/"
done
"$bin" images --archives "$work/archives-oci" --json >"$work/images.json"
jq -r --arg r "$big" '.[] | select(.ref == $r) | .manifests[0].layers[].digest' "$work/images.json" >"$work/big-layers"
jq -r --arg r "$small" '.[] | select(.ref == $r) | .manifests[0].layers[].digest' "$work/images.json" >"$work/small-layers"
jq -r --arg r "$big" '.[] | select(.ref == $r) | .manifests[0].layers[].diff_id' "$work/images.json" >"$work/big-diff-ids"
big_layers=$(wc -l <"$work/big-layers")
bundle_layers=$(jq -r '[.[].manifests[].layers[].chain_id] | unique | length' "$work/images.json")
# The unpacked size and file count of the largest image, from its layers.
mkdir -p "$work/floor-blobs"
# shellcheck disable=SC2046 # one argument per layer
zstd -dc "$bundle/oci.tar.zst" | tar -x -C "$work/floor-blobs" --strip-components=2 \
    $(sed 's/^sha256:/blobs\/sha256\//' "$work/big-layers")
big_unpacked=0
big_files=0
while read -r d; do
    read -r n b < <(pigz -dc "$work/floor-blobs/${d#sha256:}" | tar -tv | awk '{ n++; s += $3 } END { print n, s }')
    big_files=$((big_files + n))
    big_unpacked=$((big_unpacked + b))
done <"$work/big-layers"
big_gz=$(jq -r --arg r "$big" '.[] | select(.ref == $r) | .size' "$work/images.json")

# ---------------------------------------------------------------- parts
reg_port=$(free_port)
reg_dir=$work/registry
start_registry() {
    mkdir -p "$reg_dir/storage"
    cat >"$reg_dir/config.yml" <<EOF
version: 0.1
log:
  level: warn
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: $reg_dir/storage
http:
  addr: 127.0.0.1:$reg_port
EOF
    docker-registry serve "$reg_dir/config.yml" >"$reg_dir/registry.log" 2>&1 &
    reg_pid=$!
    pids+=("$reg_pid")
    wait_for "docker-registry" 30 http_ok "http://127.0.0.1:$reg_port/v2/"
    skopeo copy --quiet --dest-tls-verify=false "oci-archive:$bundle/oci.tar:1" \
        "docker://127.0.0.1:$reg_port/bench/debian-go:1" 2>&1 |
        grep -v 'ref.name' >&2 || true
    http_ok "http://127.0.0.1:$reg_port/v2/bench/debian-go/manifests/1" -H 'Accept: application/vnd.oci.image.manifest.v1+json' ||
        { echo "the registry does not have bench/debian-go:1" >&2; exit 1; }
}
registry_blob_gets() { grep -c '"GET /v2/[^ ]*/blobs/' "$reg_dir/registry.log" || true; }

# The daemon, on one archives directory; its root starts from a copy of the
# persisted indexes (seeded once per kind), so a step measures the pull,
# not the first indexing.
mirror_port=$(free_port)
hosts=$work/certs.d
"$bin" config --mirror "127.0.0.1:$mirror_port" --upstream "http://127.0.0.1:$reg_port" --write "$hosts" >/dev/null 2>&1
# daemon_flags: more flags for the daemon (--mounts: --layer-mounts ...);
# metrics_listen: off, or where the daemon serves its metrics.
daemon_flags=()
metrics_listen=off
start_daemon() { # KIND ROOT
    local kind=$1 root=$2
    mkdir -p "$root" "$work/run"
    rm -f "$work/run/snap.sock"
    RUST_LOG=info NO_COLOR=1 "$bin" serve --root "$root" --socket "$work/run/snap.sock" \
        --archives "$work/archives-$kind" --mirror-listen "127.0.0.1:$mirror_port" --metrics-listen "$metrics_listen" \
        --import-mode off "${daemon_flags[@]}" >>"$root.log" 2>&1 &
    daemon_pid=$!
    pids+=("$daemon_pid")
    wait_for "the daemon's socket" 60 python3 -c "import socket,sys; socket.socket(socket.AF_UNIX).connect(sys.argv[1])" "$work/run/snap.sock"
    # Serving: the mirror resolves the big image (the index is loaded).
    wait_for "the daemon to index $kind" 600 http_ok -I "http://127.0.0.1:$mirror_port/v2/bench/debian-go/manifests/1?ns=docker.io" \
        -H 'Accept: application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json'
}
stop_daemon() {
    stop_pid "$daemon_pid"
    forget_pid "$daemon_pid"
    daemon_pid=
}
for kind in "${kinds[@]}"; do
    say "indexing the $kind archive once (persisted)"
    start_daemon "$kind" "$work/seed-$kind"
    stop_daemon
done
fresh_daemon_root() { # KIND; sets root
    root=$work/daemon-$((++daemon_seq))-$1
    mkdir -p "$root"
    cp -a "$work/seed-$1/catalog" "$root/"
}
daemon_seq=0

start_containerd() { # CRI_SNAPSHOTTER
    cdir=$work/containerd-$((++cd_seq))
    mkdir -p "$cdir"/{root,state,opt,cni}
    "$containerd_config" --cri-snapshotter "$1" "$cdir" "$work/run/snap.sock" "$hosts" >"$cdir/config.toml" 2>/dev/null
    containerd --config "$cdir/config.toml" --log-level warn >"$cdir/containerd.log" 2>&1 &
    cd_pid=$!
    pids+=("$cd_pid")
    wait_for "containerd" 60 ctr --address "$cdir/containerd.sock" version
}
cd_seq=0
ctrx() { ctr --address "$cdir/containerd.sock" -n k8s.io "$@"; }
stop_containerd() {
    local id
    for id in $(ctrx tasks ls -q 2>/dev/null); do ctrx tasks kill -s SIGKILL "$id"; sleep 0.2; ctrx tasks delete -f "$id"; done >/dev/null 2>&1
    for id in $(ctrx containers ls -q 2>/dev/null); do ctrx containers delete "$id"; done >/dev/null 2>&1
    stop_pid "$cd_pid"
    forget_pid "$cd_pid"
    kill_shims
    unmount_under "$cdir"
    rm -rf "$cdir"
}
# The image runs: a container of it runs the Go toolchain of layer 2 with
# the shell of layer 1.
check_runs() { # SNAPSHOTTER REF
    ctrx run --rm --snapshotter "$1" "$2" "bench-check-$cd_seq" /bin/sh -c \
        '/usr/lib/go-1.19/bin/go version >/dev/null && test -x /usr/bin/apt-get' >/dev/null 2>"$cdir/run.err" ||
        { echo "the pulled image does not run:" >&2; cat "$cdir/run.err" >&2; exit 1; }
}

human() { if [[ $1 == - ]]; then echo -; else numfmt --to=iec --suffix=B --format=%.1f "$1"; fi; }
kib() { if [[ $1 == - ]]; then echo -; else awk -v k="$1" 'BEGIN { printf "%.0f MiB", k / 1024 }'; fi; }

start_registry

# ---------------------------------------------------------------- the steps
# Each step sets t (seconds), disk (bytes), hwm (daemon VmHWM KiB or -) and
# note, then calls record ID LABEL. Rounds run every step once, in turn, so
# that load from elsewhere spreads over all of them; the report takes the
# median per step.
declare -A T D H N L
order=()
record() { # ID LABEL
    local id=$1
    [[ -n ${L[$id]:-} ]] || order+=("$id")
    L[$id]=$2
    T[$id]+="$t "
    D[$id]=$disk
    if [[ $hwm != - ]] && { [[ ${H[$id]:--} == - ]] || ((hwm > H[$id])); }; then H[$id]=$hwm; else H[$id]=${H[$id]:-$hwm}; fi
    N[$id]=${note:-}
    printf '    %-90s %7ss  disk %s  daemon peak %s\n' "$2" "$t" "$(human "$disk")" "$(kib "$hwm")" >&2
    note=
}

step_import() { # KIND
    local kind=$1
    lock
    start_containerd overlayfs
    drop_caches
    # containerd 1.6's ctr does not read zstd itself (k3s too decompresses
    # the .tar.zst before handing it to containerd).
    t0=$(now)
    zstd -dc "$work/archives-$kind/$kind.tar.zst" | ctrx images import - >/dev/null
    t=$(since "$t0")
    disk=$(du_bytes "$cdir/root")
    hwm=-
    check_runs overlayfs "$big"
    stop_containerd
    unlock
    record "import-$kind" "(1) \`zstd -dc | ctr images import -\` of the bundle, $kind (all 4 images)"
}

step_registry() { # cri|ctr
    lock
    start_containerd overlayfs
    drop_caches
    if [[ $1 == cri ]]; then
        t=$("$cri" "$cdir/containerd.sock" "127.0.0.1:$reg_port/bench/debian-go:1" | cut -d' ' -f1)
    else
        t0=$(now)
        ctrx images pull --plain-http "127.0.0.1:$reg_port/bench/debian-go:1" >/dev/null
        t=$(since "$t0")
    fi
    disk=$(du_bytes "$cdir/root")
    hwm=-
    check_runs overlayfs "127.0.0.1:$reg_port/bench/debian-go:1"
    stop_containerd
    unlock
    if [[ $1 == cri ]]; then
        record registry-cri "(2) CRI PullImage from docker-registry"
    else
        record registry-ctr "(3) \`ctr pull\` from docker-registry"
    fi
}

# step_daemon mirror|ctr-snap|snap KIND [profile]: (4) ctr pull through the
# mirror, (4b) ctr pull --snapshotter airgap through mirror + snapshotter, or
# (5) CRI PullImage through mirror + snapshotter.
step_daemon() {
    local how=$1 kind=$2 profile=${3:-} snapshotter=overlayfs gets cpu0 split perf_pid=
    [[ $how == mirror ]] || snapshotter=airgap
    lock
    fresh_daemon_root "$kind"
    start_daemon "$kind" "$root"
    start_containerd "$snapshotter"
    gets=$(registry_blob_gets)
    drop_caches
    if [[ -n $profile ]]; then
        perf record -q -F 999 -g -p "$daemon_pid" -o "$work/perf.data" >/dev/null 2>&1 &
        perf_pid=$!
        pids+=("$perf_pid")
        sleep 0.5
    fi
    cpu0=$(cpu_ticks "$daemon_pid")
    if [[ $how == snap ]]; then
        t=$("$cri" "$cdir/containerd.sock" "$big" | cut -d' ' -f1)
    else
        t0=$(now)
        ctrx images pull --hosts-dir "$hosts" --snapshotter "$snapshotter" "$big" >/dev/null
        t=$(since "$t0")
    fi
    if [[ -n $perf_pid ]]; then
        kill -INT "$perf_pid"
        wait "$perf_pid" || true
        forget_pid "$perf_pid"
    fi
    disk=$(du_bytes "$cdir/root" "$root")
    split="containerd $(human "$(du_bytes "$cdir/root")") + daemon $(human "$(du_bytes "$root")")"
    hwm=$(hwm_kib "$daemon_pid")
    note="disk: $split; registry blob GETs: $(($(registry_blob_gets) - gets)); $(cpu_since "$daemon_pid" "$cpu0")"
    if [[ $how != mirror ]]; then
        note="layers from the archive: $(grep -c 'layer committed from archive' "$root.log" || true)/$big_layers, layers extracted by then: $(grep -c 'layer extracted from archive' "$root.log" || true); $note"
    fi
    check_runs "$snapshotter" "$big"
    stop_containerd
    stop_daemon
    unlock
    [[ -z $profile ]] || return 0
    if [[ $how == snap ]]; then
        if [[ $kind == alone ]]; then
            record "snap-$kind" "(5) CRI PullImage, mirror + snapshotter, packed archive of this image alone"
        else
            record "snap-$kind" "(5) CRI PullImage, mirror + snapshotter, $kind archive"
        fi
    elif [[ $how == ctr-snap ]]; then
        record "ctr-snap-$kind" "(4b) \`ctr pull --snapshotter airgap\` through mirror + snapshotter, $kind archive"
    else
        record "mirror-$kind" "(4) \`ctr pull\` through the mirror, $kind archive"
    fi
}

# step_register lazy|eager KIND: (7) `airgap-snapshotter import` of the
# bundle into a containerd wired to the daemon (time until the command
# returns; for eager, until every layer of the bundle is extracted), and
# after a lazy one (7b) the first `ctr run` of the largest image, whose
# layers are filled from the archive then.
fills_at_least() { (($(grep -c 'imported layer extracted' "$1" || true) >= $2)); }
step_register() {
    local mode=$1 kind=$2 out
    lock
    fresh_daemon_root "$kind"
    start_daemon "$kind" "$root"
    start_containerd airgap
    drop_caches
    t0=$(now)
    out=$("$bin" import --archives "$work/archives-$kind" --root "$root" \
        --containerd-address "$cdir/containerd.sock" --import-mode "$mode" 2>&1) ||
        { echo "$out" >&2; exit 1; }
    [[ $mode == lazy ]] || wait_for "every layer of the bundle extracted" 600 fills_at_least "$root.log" "$bundle_layers"
    t=$(since "$t0")
    disk=$(du_bytes "$cdir/root" "$root")
    hwm=$(hwm_kib "$daemon_pid")
    note="disk: containerd $(human "$(du_bytes "$cdir/root")") + daemon $(human "$(du_bytes "$root")"); layers extracted by then: $(grep -c 'imported layer extracted' "$root.log" || true)/$bundle_layers; $(tail -1 <<<"$out")"
    record "register-$mode-$kind" "(7) \`airgap-snapshotter import --import-mode $mode\` of the bundle, $kind archive (all 4 images)"
    if [[ $mode == lazy ]]; then
        drop_caches
        t0=$(now)
        check_runs airgap "$big"
        t=$(since "$t0")
        disk=$(du_bytes "$cdir/root" "$root")
        hwm=$(hwm_kib "$daemon_pid")
        note="includes starting and stopping the container; layers extracted: $(grep -c 'imported layer extracted' "$root.log" || true)/$big_layers"
        record "first-run-$kind" "(7b) first \`ctr run\` of the largest image after a lazy registration (its layers filled then)"
    fi
    stop_containerd
    stop_daemon
    unlock
}

# --mounts: the daemon's metrics (summed over labels; empty when the daemon
# does not answer).
metric() { # NAME
    local text
    text=$(curl -sf --max-time 2 "http://$metrics_listen/metrics") || return 0
    awk -v n="$1" '$1 == n || index($1, n "{") == 1 { s += $NF; f = 1 } END { if (f) printf "%d\n", s }' <<<"$text"
}
# Every layer the daemon prepares on arrival is prepared: none pending, and
# some done (the gauge is 0 too before the first is queued).
layers_prepared() {
    local pending finished
    pending=$(metric airgap_layer_prepare_pending)
    finished=$(metric airgap_layers_prepared_total)
    [[ $pending == 0 && ${finished:-0} -gt 0 ]]
}
can_prepare=0
"$bin" serve --help 2>/dev/null | grep -q -- '--prepare-layers' && can_prepare=1
read_all='/usr/lib/go-1.19/bin/go version && find / -xdev -type f -exec cat {} + >/dev/null'

# step_mount ID LABEL KIND [--prepared] [--run LABEL] -- DAEMON_FLAGS...: CRI
# PullImage through mirror + snapshotter (as (5)), the daemon started with
# DAEMON_FLAGS and its metrics on. --prepared: the pull starts once the
# daemon has prepared what it prepares on arrival (not timed; its time and
# disk go into the note). --run: then (9) a container of the image reads
# every file of it, caches dropped first (recorded as ID-run, LABEL).
step_mount() {
    local id=$1 label=$2 kind=$3 prepared=0 run="" cpu0 base t_start prep="" split mounted built extracted failed m files bytes
    shift 3
    while [[ $1 != -- ]]; do
        case $1 in
            --prepared) prepared=1 ;;
            --run) run=$2; shift ;;
        esac
        shift
    done
    shift
    lock
    fresh_daemon_root "$kind"
    base=$(du_bytes "$root")
    daemon_flags=("$@")
    metrics_listen=127.0.0.1:$(free_port)
    t_start=$(now)
    start_daemon "$kind" "$root"
    if ((prepared)); then
        wait_for "the daemon to prepare the layers" 900 layers_prepared
        prep="prepared on arrival (not timed) in $(since "$t_start") s from the daemon's start, $(metric airgap_layers_prepared_total) layers of the bundle, $(human $(($(du_bytes "$root") - base))) in the daemon root; "
    fi
    start_containerd airgap
    drop_caches
    cpu0=$(cpu_ticks "$daemon_pid")
    t=$("$cri" "$cdir/containerd.sock" "$big" | cut -d' ' -f1)
    disk=$(du_bytes "$cdir/root" "$root")
    split="containerd $(human "$(du_bytes "$cdir/root")") + daemon $(human "$(du_bytes "$root")")"
    hwm=$(hwm_kib "$daemon_pid")
    mounted=$(grep -c 'layer mounted from archive (EROFS)' "$root.log" || true)
    built=$(grep 'layer mounted from archive (EROFS)' "$root.log" | grep -c 'prepared_now=true' || true)
    extracted=$(grep -c 'layer extracted from archive' "$root.log" || true)
    failed=$(grep -c 'mounting the layer from the archive failed' "$root.log" || true)
    m=$(metric airgap_layers_mounted_total)
    note="${prep}layers from the archive: $(grep -c 'layer committed from archive' "$root.log" || true)/$big_layers; mounted (EROFS) by then: $mounted (airgap_layers_mounted_total ${m:--}; prepared by the pull: $built), extracted: $extracted"
    ((failed == 0)) || note+=", mounts that failed (extracted instead): $failed"
    note+="; disk: $split; $(cpu_since "$daemon_pid" "$cpu0")"
    record "$id" "$label"
    if [[ -n $run ]]; then
        drop_caches
        t0=$(now)
        ctrx run --rm --snapshotter airgap "$big" "bench-read-$cd_seq" /bin/sh -c "$read_all" >"$cdir/run.out" 2>"$cdir/run.err" ||
            { echo "reading the image's files failed:" >&2; cat "$cdir/run.err" >&2; exit 1; }
        t=$(since "$t0")
        grep -q 'go1\.19' "$cdir/run.out" || { echo "go version printed: $(cat "$cdir/run.out")" >&2; exit 1; }
        disk=$(du_bytes "$cdir/root" "$root")
        hwm=$(hwm_kib "$daemon_pid")
        # Not timed: what the reading covered, the same over either kind of layers.
        read -r files bytes < <(ctrx run --rm --snapshotter airgap "$big" "bench-count-$cd_seq" /bin/sh -c \
            "find / -xdev -type f -printf '%s\\n' | awk '{ s += \$1 } END { print NR, s }'" 2>>"$cdir/run.err")
        note="includes starting and stopping the container; files read: $files, $(human "$bytes")"
        record "$id-run" "$run"
    fi
    check_runs airgap "$big"
    stop_containerd
    stop_daemon
    daemon_flags=()
    metrics_listen=off
    unlock
}

# step_floor MODE: (6) system tools on the same layers.
step_floor() {
    rm -rf "$work/floor"
    mkdir -p "$work/floor"
    local i=0 d diff_id fpids=()
    drop_caches
    t0=$(now)
    while read -r d; do
        i=$((i + 1))
        mkdir -p "$work/floor/$i"
        case $1 in
            parallel) (pigz -dc "$work/floor-blobs/${d#sha256:}" | tar -x -C "$work/floor/$i") & fpids+=($!) ;;
            sequential) pigz -dc "$work/floor-blobs/${d#sha256:}" | tar -x -C "$work/floor/$i" ;;
            tar) tar -x -C "$work/floor/$i" -f "$work/floor-raw/$i.tar" & fpids+=($!) ;;
            zstd)
                diff_id=$(sed -n "${i}p" "$work/big-diff-ids")
                (zstd -dc "$work/archives-docker/docker.tar.zst" | tar -xO "${diff_id#sha256:}/layer.tar" | tar -x -C "$work/floor/$i") &
                fpids+=($!)
                ;;
        esac
    done <"$work/big-layers"
    for d in "${fpids[@]}"; do wait "$d"; done
    t=$(since "$t0")
    disk=$(du_bytes "$work/floor")
    hwm=-
    rm -rf "$work/floor"
    case $1 in
        parallel) record floor-parallel "(6) floor: \`pigz -dc | tar -x\`, one process per layer in parallel" ;;
        sequential) record floor-sequential "(6) floor: \`pigz -dc | tar -x\`, layers one after the other" ;;
        tar) record floor-tar "(6) file creation alone: \`tar -x\` of the uncompressed layers, in parallel" ;;
        zstd) record floor-zstd "(6) floor for the docker-save archive: \`zstd -dc | tar -xO LAYER | tar -x\`, one per layer in parallel" ;;
    esac
}

mkdir -p "$work/floor-raw"
i=0
while read -r d; do i=$((i + 1)); pigz -dc "$work/floor-blobs/${d#sha256:}" >"$work/floor-raw/$i.tar"; done <"$work/big-layers"

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0 && a != "-") printf "%.2fx", a / b; else print "-" }'; }
# Prints $report and, with --write, puts it into BENCHMARKS.md as the
# section marked $1 (begin/end comments), titled $2.
print_section() {
    echo
    echo "$report"
    if ((write)); then
        printf '%s\n' "$report" | python3 scripts/bench/write-section.py "$1" "$2"
        echo "written to BENCHMARKS.md"
    fi
}
# Sets t (the median time of step $1), label and note (with the range of
# its rounds) for a table row; the caller declares them local.
row_fields() {
    local id=$1 range
    # shellcheck disable=SC2086 # one argument per round
    t=$(median ${T[$id]})
    # shellcheck disable=SC2086
    range=$(printf '%s\n' ${T[$id]} | sort -g | awk 'NR == 1 { lo = $1 } { hi = $1 } END { printf "%s-%s", lo, hi }')
    label=${L[$id]//|/\\|}
    note="${N[$id]}${N[$id]:+; }all runs: $range s"
}
# The steps recorded, median of the rounds, against (2) and the parallel floor.
results_table() {
    local id t label note
    echo "| step | time to runnable | vs (2) | vs (6) parallel | disk (containerd + daemon root) | daemon peak RSS | notes |"
    echo "|---|---:|---:|---:|---:|---:|---|"
    for id in "${order[@]}"; do
        row_fields "$id"
        echo "| $label | ${t} s | $(ratio "$t" "$t_registry_cri") | $(ratio "$t" "$t_floor") | $(human "${D[$id]}") | $(kib "${H[$id]}") | ${note//|/\\|} |"
    done
}
machine_line() {
    echo "$(nproc) cores ($(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)), $(free -g | awk '/Mem:/ { print $2 }') GiB RAM, $(uname -r), $(findmnt -no FSTYPE -T /tmp) on /tmp, containerd $containerd_version"
}
# --pulls: the version comparison, in a section per containerd version.
pulls_report() {
    local report
    report="Run $(date -u '+%Y-%m-%d %H:%M UTC') on $(machine_line).
Load average (1, 5, 15 min) at the start: $load_start; at the end: $(cut -d' ' -f1-3 /proc/loadavg) (other work was running: figures are noisy).

$(results_table)

The largest image of the bundle (\`$big\`, $big_layers layers, $(human "$big_unpacked") unpacked), median of $reps rounds, caches dropped before
each step, a fresh private containerd $containerd_version per step configured as the end-to-end tests do. (4b) is what a site
running \`ctr pull --snapshotter airgap\` sees: on 1.6 and 1.7 ctr fetches every blob itself (through the mirror) and unpacks;
on 2.x the transfer service passes \`snapshot.ref\` and the layers come from the archive (see \"layers from the archive\").

Reproduce: \`AIRGAP_CONTAINERD_DIR=DIR scripts/bench.sh --pulls --write [--cache DIR] [--reps N]\` as root (DIR from
\`scripts/fetch-containerd.sh\`; unset: the system's containerd)."
    print_section "bench-pulls-$containerd_version" \
        "Pulls on containerd $containerd_version (\`scripts/bench.sh --pulls --write\`)"
}

# --import: registration against import, in a section per containerd version.
import_report() {
    local report
    report="Run $(date -u '+%Y-%m-%d %H:%M UTC') on $(machine_line).
Load average (1, 5, 15 min) at the start: $load_start; at the end: $(cut -d' ' -f1-3 /proc/loadavg) (other work was running: figures are noisy).

$(results_table)

Median of $reps rounds, caches dropped before each step, a fresh private containerd $containerd_version and daemon root (holding only the
persisted indexes) per step. (1) and (7) register all 4 images of the bundle ($bundle_layers distinct layers); (2), (5) and (7b) are
about the largest (\`$big\`, $big_layers layers, $(human "$big_unpacked") unpacked). (7) lazy writes only the index, manifests
and configs into containerd and commits every layer without data: containerd lists the images, pinned, and records them unpacked;
(7) eager is timed until the daemon has extracted every layer (in the background, bounded by the cores). (7b) times \`ctr run\` of a
short command, container start and stop included, with the layers filled from the archive first.

Reproduce: \`[AIRGAP_CONTAINERD_DIR=DIR] scripts/bench.sh --import --write [--cache DIR] [--reps N]\` as root."
    print_section "bench-import-$containerd_version" \
        "Registering images into containerd on $containerd_version (\`scripts/bench.sh --import --write\`)"
}

# --mounts: issue 12's rows, their targets (against (2); for (9) over
# mounted layers, against (9) over extracted ones), the reads last.
mounts_table() {
    local id t label note r vs of want ids=()
    declare -A targets=([mount-plain]=0.05 [arrival-docker]=0.05 [pull-plain]=0.25 [pull-docker]=0.25 [pull-oci]=0.25 [mount-plain-run]=1.3)
    for id in "${order[@]}"; do [[ $id == *-run ]] || ids+=("$id"); done
    for id in "${order[@]}"; do [[ $id != *-run ]] || ids+=("$id"); done
    echo "| step | time to runnable | vs (2) | vs (6) parallel | issue 12's target | disk (containerd + daemon root) | daemon peak RSS | notes |"
    echo "|---|---:|---:|---:|---|---:|---:|---|"
    for id in "${ids[@]}"; do
        row_fields "$id"
        if [[ $id == *-run ]]; then
            # shellcheck disable=SC2086 # one argument per round
            r=$(ratio "$t" "$(median ${T[extract-oci-run]})")
            vs="| - | - |"
            of="(9) extracted"
        else
            r=$(ratio "$t" "$t_registry_cri")
            vs="| $r | $(ratio "$t" "$t_floor") |"
            of="(2)"
        fi
        want=-
        if [[ -n ${targets[$id]:-} ]]; then
            want="at most ${targets[$id]}x of $of: $r, $(awk -v r="${r%x}" -v w="${targets[$id]}" 'BEGIN { print (r <= w ? "met" : "not met") }')"
        fi
        echo "| $label | ${t} s $vs $want | $(human "${D[$id]}") | $(kib "${H[$id]}") | ${note//|/\\|} |"
    done
}
mounts_report() {
    local report prepare_rows
    prepare_rows="The rows prepared on arrival and on pull from the docker-save and oci \`.tar.zst\` archives are missing: this daemon
has no \`--prepare-layers\`."
    ((can_prepare)) && prepare_rows="\"Once prepared\": the daemon indexes the layers of the whole bundle in the background as soon as the
archive is indexed (uncompressed layers of an uncompressed archive always; compressed ones, decompressed into its layer store, with
\`--prepare-layers on-arrival\`); those rows start the pull when \`airgap_layer_prepare_pending\` is 0 and
\`airgap_layers_prepared_total\` above 0, and the note gives how long that took from the daemon's start and what it added to the
daemon root (neither is in the time). \"Prepared on pull\": the pull decompresses and indexes the image's layers itself."
    report="Run $(date -u '+%Y-%m-%d %H:%M UTC') on $(machine_line).
Load average (1, 5, 15 min) at the start: $load_start; at the end: $(cut -d' ' -f1-3 /proc/loadavg) (other work was running: figures are noisy).

$(mounts_table)

The largest image of the bundle (\`$big\`, $big_layers layers, $(human "$big_unpacked") unpacked, $big_files files), median of $reps rounds,
caches dropped before each step, a fresh private containerd $containerd_version and daemon root (holding only the persisted indexes) per
step. Time to runnable: until CRI \`PullImage\` answers, as in (5). (6) is the floor of the other sections (\`pigz -dc | tar -x\`, one
process per layer). Archives: oci.tar.zst $(human "$(stat -c %s "$bundle/oci.tar.zst")") (gzip layers), docker.tar.zst $(human "$(stat -c %s "$bundle/docker.tar.zst")") (docker-save) and
docker-plain.tar $(human "$(stat -c %s "$bundle/docker-plain.tar")") (the same, uncompressed: \`zstd -dc docker.tar.zst\`; plain-tar layers, as k3s and rke2 ship them).
Ratios are within this run; the target of (9) over mounted layers is against (9) over extracted ones.

\"Mounted (EROFS)\": the daemon's log lines \"layer mounted from archive (EROFS)\" (one per layer staged as a snapshot), and of those
\"prepared by the pull\" the ones whose index (and decompressed copy) the pull built; a mount that failed and fell back to extraction
(\"mounting the layer from the archive failed\") would be counted in the note.
$prepare_rows

(9) runs \`sh -c '$read_all'\` in a container of the pulled image with
\`ctr run\` (container start and stop included), caches dropped just before: once over the layers mounted by (8) from docker-plain.tar,
once over the layers extracted by (5); \"files read\" is counted afterwards, not timed.

Reproduce: \`[AIRGAP_CONTAINERD_DIR=DIR] scripts/bench.sh --mounts --write [--cache DIR] [--reps N]\` as root (kernel 6.12+ for EROFS)."
    print_section "bench-mounts-$containerd_version" \
        "Layers mounted from the archive on containerd $containerd_version (\`scripts/bench.sh --mounts --write\`)"
}

for ((round = 1; round <= reps; round++)); do
    say "round $round of $reps"
    if ((mounts)); then
        step_registry cri
        step_mount extract-oci "(5) CRI PullImage, mirror + snapshotter, oci archive, layers extracted (\`--layer-mounts extract\`)" oci \
            --run "(9) \`ctr run\` reading every file of the image, layers extracted (pulled by (5))" -- --layer-mounts extract
        if ((can_prepare)); then
            step_mount mount-plain "(8) CRI PullImage, mirror + snapshotter, docker-save \`.tar\` (uncompressed), private copies (the default) made on arrival, once prepared" \
                docker-plain --prepared --run "(9) \`ctr run\` reading every file of the image, layers mounted (pulled by (8) from the \`.tar\`)" -- --layer-mounts auto --prepare-layers on-arrival
            step_mount pull-plain "(8) CRI PullImage, mirror + snapshotter, docker-save \`.tar\` (uncompressed), private copies (the default) made on pull" \
                docker-plain -- --layer-mounts auto --prepare-layers on-pull
            step_mount archive-plain "(8) CRI PullImage, mirror + snapshotter, docker-save \`.tar\` (uncompressed), \`--layer-backing archive\` (in place, no copy), once prepared" \
                docker-plain --prepared -- --layer-mounts auto --layer-backing archive
            step_mount arrival-docker "(8) CRI PullImage, mirror + snapshotter, docker-save \`.tar.zst\`, \`--prepare-layers on-arrival\`, once prepared" \
                docker --prepared -- --layer-mounts auto --prepare-layers on-arrival
            step_mount pull-docker "(8) CRI PullImage, mirror + snapshotter, docker-save \`.tar.zst\`, prepared on pull" \
                docker -- --layer-mounts auto --prepare-layers on-pull
            step_mount pull-oci "(8) CRI PullImage, mirror + snapshotter, oci archive (gzip layers), prepared on pull" \
                oci -- --layer-mounts auto --prepare-layers on-pull
        else
            step_mount mount-plain "(8) CRI PullImage, mirror + snapshotter, docker-save \`.tar\` (uncompressed), \`--layer-mounts auto\`" \
                docker-plain --run "(9) \`ctr run\` reading every file of the image, layers mounted (pulled by (8) from the \`.tar\`)" -- --layer-mounts auto
        fi
        step_floor parallel
        continue
    fi
    if ((pulls)); then
        step_registry cri
        step_registry ctr
        step_daemon mirror oci
        step_daemon ctr-snap oci
        step_daemon snap oci
        step_floor parallel
        continue
    fi
    if ((imports)); then
        step_register lazy oci
        step_register eager oci
        step_import oci
        step_registry cri
        step_daemon snap oci
        step_floor parallel
        continue
    fi
    for kind in oci docker; do step_import "$kind"; done
    step_registry cri
    step_registry ctr
    for kind in oci packed; do step_daemon mirror "$kind"; done
    step_daemon ctr-snap oci
    for kind in oci packed docker alone; do step_daemon snap "$kind"; done
    for mode in parallel sequential tar zstd; do step_floor "$mode"; done
done
rm -rf "$work/floor-raw"

median() { printf '%s\n' "$@" | sort -g | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
# shellcheck disable=SC2086 # one argument per round
t_registry_cri=$(median ${T[registry-cri]})
# shellcheck disable=SC2086
t_floor=$(median ${T[floor-parallel]:-})

if ((pulls)); then
    pulls_report
    exit 0
fi
if ((imports)); then
    import_report
    exit 0
fi
if ((mounts)); then
    mounts_report
    exit 0
fi

profile_text=
if ((profile)) && command -v perf >/dev/null; then
    say "profiling the daemon during (5) on the oci archive (one more pull, not timed)"
    step_daemon snap oci profile
    # Self time per symbol, and which thread does what.
    profile_text=$(perf report -i "$work/perf.data" --stdio --no-children --sort comm,dso,symbol \
        --percent-limit 1.5 2>/dev/null | grep -E '^ +[0-9]' | head -25 | sed -E 's/( +-)+ *$//; s/ *$//')
fi

# ---------------------------------------------------------------- small image
declare -A small_rows
for kind in oci packed; do
    lock
    fresh_daemon_root "$kind"
    start_daemon "$kind" "$root"
    start_containerd airgap
    drop_caches
    say "small image out of the large archive ($kind)"
    io0=$(awk '/^read_bytes:/ { print $2 }' "/proc/$daemon_pid/io")
    t=$("$cri" "$cdir/containerd.sock" "$small" | cut -d' ' -f1)
    io1=$(awk '/^read_bytes:/ { print $2 }' "/proc/$daemon_pid/io")
    from_archive=$(grep -c 'layer committed from archive' "$root.log" || true)
    stop_containerd
    stop_daemon
    unlock
    # The counter the daemon keeps (bytes its decoders produced), read from
    # the same library calls in a process of its own.
    # shellcheck disable=SC2046 # one argument per layer
    read -r dec blobs < <("$decompressed" "$work/archives-$kind" "$root/catalog" $(cat "$work/small-layers") |
        sed 's/decompressed=\([0-9]*\) blobs=\([0-9]*\)/\1 \2/')
    small_rows[$kind]="$t|$dec|$blobs|$((io1 - io0))|$from_archive"
    printf '    %s: %ss, decompressed %s for %s of layers, read from disk %s\n' "$kind" "$t" \
        "$(human "$dec")" "$(human "$blobs")" "$(human $((io1 - io0)))" >&2
done

# ---------------------------------------------------------------- start-up, idle
say "daemon start-up with a persisted index of the whole bundle; idle RSS"
mkdir -p "$work/archives-all"
for kind in oci docker packed; do ln "$work/archives-$kind/$kind.tar.zst" "$work/archives-all/"; done
all_root=$work/daemon-all
manifest_path="/v2/bench/debian-go/manifests/1?ns=docker.io"
drop_caches
first=$(python3 scripts/bench/startup.py "$bin" "$work/archives-all" "$all_root" "127.0.0.1:$mirror_port" "$manifest_path" --idle 3)
restarts=()
for i in 1 2 3; do
    drop_caches
    restarts+=("$(python3 scripts/bench/startup.py "$bin" "$work/archives-all" "$all_root" "127.0.0.1:$mirror_port" "$manifest_path" --idle 2)")
done
# Each line: "socket_ms serving_ms idle_rss_kib hwm_kib"
read -r _ first_serving first_rss first_hwm <<<"$first"
median() { printf '%s\n' "$@" | sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
col() { printf '%s\n' "${restarts[@]}" | cut -d' ' -f"$1"; }
# shellcheck disable=SC2046 # one argument per restart
restart_socket=$(median $(col 1))
# shellcheck disable=SC2046
restart_serving=$(median $(col 2))
# shellcheck disable=SC2046
restart_rss=$(median $(col 3))
printf '    first start %s ms to serving (rss %s KiB); restarts: %s\n' "$first_serving" "$first_rss" "$(printf '[%s] ' "${restarts[@]}")" >&2

# ---------------------------------------------------------------- report
load_end=$(cut -d' ' -f1-3 /proc/loadavg)
table=$(results_table)
small_table="| archive | CRI pull | decompressed | image's own bytes | ratio | read from disk by the daemon |
|---|---:|---:|---:|---:|---:|"
for kind in oci packed; do
    IFS='|' read -r t dec blobs io _ <<<"${small_rows[$kind]}"
    name=$([[ $kind == oci ]] && echo "single frame (\`ctr export | zstd\`)" || echo "seekable (\`airgap-snapshotter pack\`)")
    name=${name//|/\\|}
    small_table+="
| $name, $(human "$(stat -c %s "$bundle/$kind.tar.zst")") | $t s | $(human "$dec") | $(human "$blobs") | $(ratio "$dec" "$blobs") | $(human "$io") |"
done
machine=$(machine_line)
sizes="oci.tar.zst $(human "$(stat -c %s "$bundle/oci.tar.zst")"), docker.tar.zst $(human "$(stat -c %s "$bundle/docker.tar.zst")"), packed.tar.zst $(human "$(stat -c %s "$bundle/packed.tar.zst")"), and alone.tar.zst (the largest image alone, packed) $(human "$(stat -c %s "$bundle/alone.tar.zst")")"
profile_block=
if [[ -n $profile_text ]]; then
    fence='```'
    profile_block="Where the daemon's CPU time goes during (5) on the oci archive (\`perf record -g\` on the daemon during one more
pull, not timed; self time by thread, object and symbol, entries above 1.5 %):

$fence
$profile_text
$fence

"
fi
report="Run $(date -u '+%Y-%m-%d %H:%M UTC') on $machine.
Load average (1, 5, 15 min) at the start: $load_start; at the end: $load_end (other work was running: figures are noisy).

Bundle: 4 images (\`$big\`: debootstrap minbase bookworm + Go 1.19 toolchain; debian-llvm: minbase + LLVM 14;
debian-python: minbase + Python 3 stdlib; \`$small\`: static busybox), the base layer shared. Archives: $sizes.
The largest image: $big_layers layers, $(human "$big_unpacked") unpacked, $big_files files, $(human "$big_gz") of gzip layers.

$table

Times are the median of $reps rounds (every step once per round, in turn); daemon peak RSS is the highest of the rounds, disk the last
round's. Time to runnable: until \`ctr\` returns or CRI \`PullImage\` answers (both unpack before returning); each pulled image is then run
once (\`ctr run\`, not timed) to check it. Caches dropped before each step. Every step starts a fresh private containerd $containerd_version and, for
(4) and (5), a fresh daemon root holding only the persisted indexes. Disk: \`du\` of containerd's root plus the daemon's root after the
step (for (6), the extracted layers). (1) imports all four images; every other step pulls \`$big\`. (6) does no fsync; the
snapshotter syncs each layer before committing it. \"Layers extracted by then\" in (5) counts what the daemon extracted until the
pull returned, including layers of the other bundle images that it prefetched because they share the base layer; those staged
layers are in the disk column until the daemon drops them, unclaimed. The last (5) row pulls from an archive holding only this
image: nothing else to prefetch.

Small image (\`$small\`, the last blobs of the stream) pulled alone with CRI through mirror + snapshotter out of the large archive:

$small_table

Decompressed: the bytes the archive's decoders produced to read the image's blobs (\`Catalog::open_blob\`, the call the snapshotter
makes per layer; measured by \`plugin/examples/bench-decompressed.rs\`, as the daemon does not export the counter).

Daemon start-up, the whole bundle (3 archives) in its directory: first start, indexing everything: serving after ${first_serving} ms;
restart with the persisted indexes (caches dropped, median of 3): socket answers after ${restart_socket} ms, mirror serves the largest
image's manifest after ${restart_serving} ms. Idle RSS with the bundle indexed: $(kib "$first_rss") after the first indexing (peak
$(kib "$first_hwm")), $(kib "$restart_rss") after a restart with the persisted indexes.

${profile_block}Reproduce: \`scripts/bench.sh --write [--cache DIR] [--reps N]\` as root on Debian 12 (installs what it needs; \`--cache\` keeps the generated
bundle for the next run)."
echo
echo "$report"
if ((write)); then
    # shellcheck disable=SC2016 # backquotes for Markdown
    printf '%s\n' "$report" | python3 scripts/bench/write-section.py --first bench \
        'Pulling an image, against what sites use today (`scripts/bench.sh --write`)'
    echo "written to BENCHMARKS.md"
fi

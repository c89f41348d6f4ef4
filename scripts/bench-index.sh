#!/usr/bin/env bash
# Indexing speed: how long `airgap-snapshotter images` takes to index an
# archive it has never seen, against `zstd -d` of the same archive to
# /dev/null (the floor: indexing is one decompressing pass), and how long a
# restart takes when the index was persisted. Not a test: prints a table
# and, with --write, puts it into BENCHMARKS.md.
#
#   scripts/bench-index.sh [--write] [DIR...]   (default DIRs: a few large
#                                              directories of this machine)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
repo=$(pwd)

write=0
if [[ ${1:-} == --write ]]; then write=1; shift; fi
dirs=("$@")
if ((${#dirs[@]} == 0)); then
    for d in /usr/lib/go-1.19 /usr/lib/llvm-14 /usr/share/gocode /usr/lib/python3; do
        [[ -d $d ]] && dirs+=("$d")
    done
fi
((${#dirs[@]})) || { echo "no input directories" >&2; exit 1; }

command -v zstd pigz python3 >/dev/null || { echo "needs zstd, pigz, python3 (scripts/install-deps.sh)" >&2; exit 1; }
cargo build --release -q -p airgap-snapshotter --bin airgap-snapshotter
bin=${CARGO_TARGET_DIR:-$repo/target}/release/airgap-snapshotter

work=$(mktemp -d /tmp/airgap-bench-index-XXXXXX)
trap 'rm -rf "$work"' EXIT
args=()
for d in "${dirs[@]}"; do args+=(--layer "$d"); done

drop() { sync; echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true; }
# secs CMD...: wall seconds of CMD, caches dropped first.
secs() {
    drop
    local t0 t1
    t0=$(date +%s.%N)
    "$@" >/dev/null
    t1=$(date +%s.%N)
    awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }'
}
div() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", a / b }'; }

table="| archive | tar stream | \`zstd -dc > /dev/null\` (floor) | first index | vs floor | persisted index | vs floor |
|---|---|---|---|---|---|---|"
# Two kinds of bundle: gzip layers in zstd (\`ctr export | zstd\`: the outer
# zstd has little to do) and plain layers in zstd (\`docker save | zstd\`).
for kind in gzip none; do
    dir=$work/$kind
    mkdir -p "$dir/archives" "$dir/root"
    archive=$dir/archives/bundle.tar.zst
    echo "building a bundle with $kind layers from ${dirs[*]} ..."
    python3 scripts/make-archive.py --out "$archive" --wrap zstd --layer-compression "$kind" \
        --name bench/big:1 "${args[@]}"
    size=$(stat -c %s "$archive")
    stream=$(zstd -dc "$archive" | wc -c)
    t_zstd=$(secs sh -c "zstd -dc '$archive' >/dev/null")
    t_index=$(secs "$bin" images --archives "$dir/archives")
    # A restart reads the persisted index: the first run writes it.
    "$bin" images --archives "$dir/archives" --root "$dir/root" >/dev/null
    t_restart=$(secs "$bin" images --archives "$dir/archives" --root "$dir/root")
    table+="
| $kind layers, $(numfmt --to=iec "$size") | $(numfmt --to=iec "$stream") | $(printf %.2f "$t_zstd") s | $(printf %.2f "$t_index") s | $(div "$t_index" "$t_zstd")x | $(printf %.3f "$t_restart") s | $(div "$t_restart" "$t_zstd")x |"
    rm -rf "$dir"
done
table+="

Times are whole commands (process start included); caches dropped before each.
Layers from ${dirs[*]}. Machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB,
kernel $(uname -r), load average $(cut -d' ' -f1-3 /proc/loadavg) at the end."
echo
echo "$table"
if ((write)); then
    printf '%s\n' "$table" | python3 scripts/bench/write-section.py bench-index \
        'Indexing an archive (`scripts/bench-index.sh --write`)'
    echo "written to BENCHMARKS.md"
fi

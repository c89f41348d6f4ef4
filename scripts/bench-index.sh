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
mkdir -p "$work/archives" "$work/root"

args=(--name bench/big:1)
for d in "${dirs[@]}"; do args+=(--layer "$d"); done
echo "building the archive from ${dirs[*]} ..."
python3 scripts/make-archive.py --out "$work/archives/bundle.tar.zst" --wrap zstd "${args[@]}"
archive=$work/archives/bundle.tar.zst
size=$(stat -c %s "$archive")
stream=$(zstd -dc "$archive" | wc -c)

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

t_zstd=$(secs sh -c "zstd -dc '$archive' >/dev/null")
t_index=$(secs "$bin" images --archives "$work/archives")
# A daemon restart reads the persisted index: first start indexes, the
# second only loads.
"$bin" images --archives "$work/archives" --root "$work/root" >/dev/null
t_restart=$(secs "$bin" images --archives "$work/archives" --root "$work/root")

div() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", a / b }'; }
ratio=$(div "$t_index" "$t_zstd")
table=$(cat <<TABLE
| step | seconds | vs \`zstd -d\` |
|---|---|---|
| \`zstd -dc bundle.tar.zst > /dev/null\` (floor) | $(printf %.2f "$t_zstd") | 1.00x |
| \`airgap-snapshotter images\`, first index | $(printf %.2f "$t_index") | $(printf %.2f "$ratio")x |
| \`airgap-snapshotter images\`, persisted index | $(printf %.3f "$t_restart") | $(div "$t_restart" "$t_zstd")x |

Archive: $(numfmt --to=iec "$size") zstd (single frame, gzip layers as \`ctr export | zstd\` makes),
$(numfmt --to=iec "$stream") tar stream, from ${dirs[*]}.
Machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB, $(uname -r). Caches dropped before each step.
TABLE
)
echo
echo "$table"
if ((write)); then
    python3 - "$table" <<'PY'
import re, sys
table = sys.argv[1]
path = "BENCHMARKS.md"
try:
    text = open(path).read()
except FileNotFoundError:
    text = "# Benchmarks\n"
begin, end = "<!-- bench-index:begin -->", "<!-- bench-index:end -->"
block = f"{begin}\n## Indexing an archive (`scripts/bench-index.sh --write`)\n\n{table}\n{end}"
if begin in text:
    text = re.sub(re.escape(begin) + ".*?" + re.escape(end), lambda _: block, text, flags=re.S)
else:
    text = text.rstrip("\n") + "\n\n" + block + "\n"
open(path, "w").write(text)
PY
    echo "written to BENCHMARKS.md"
fi

#!/usr/bin/env bash
# Cost of transport security and compression, in one run: the same cluster (1 metadata
# server + 2 storage nodes, R=2, sync=none so the disk does not hide the network path,
# real processes on loopback) is started four times: plain TCP, TLS, TLS + lz4, TLS +
# zstd (the client asks for the compression, servers accept it and use it between
# themselves too). Each run times, through the `distfs` CLI:
#   - a large write and read (`put` / `cat >/dev/null`) of SIZE MiB of random data
#     (incompressible: compression must stay out of the way) and of SIZE MiB of text-like
#     data (compressible);
#   - FILES small-file creates (`put` of 4 KiB each, one CLI process each, so every
#     create pays a new connection and handshake).
# It reports seconds, MB/s or files/s, the ratio to plain TCP, and the CPU seconds spent
# by the client and by the servers (user+sys from /proc) for each phase.
#
#   bench/transport.sh [SIZE_MiB=512] [FILES=500] [WORKDIR=/tmp/distfs-bench-transport]
set -euo pipefail
size_mib=${1:-512}
files=${2:-500}
work=${3:-/tmp/distfs-bench-transport}
here=$(cd "$(dirname "$0")/.." && pwd)
bin="$here/target/release"
[ -x "$bin/distfs" ] || (cd "$here" && cargo build --release --bins)

rm -rf "$work" && mkdir -p "$work"
tick=$(getconf CLK_TCK)
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", (b - a) / 1e9 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
# CPU seconds (user + sys) used so far by the given pids.
cpu_of() { local t=0; for p in "$@"; do t=$((t + $(awk '{ print $14 + $15 }' "/proc/$p/stat"))); done; awk -v t="$t" -v k="$tick" 'BEGIN { printf "%.2f", t / k }'; }

# Data: random, and text-like (ratio ~4:1 with lz4, more with zstd).
head -c $((size_mib << 20)) /dev/urandom >"$work/random.bin"
python3 - "$work/text.bin" "$size_mib" <<'PY'
import random, sys
path, mib = sys.argv[1], int(sys.argv[2])
words = [w.encode() for w in "the quick brown fox jumps over a lazy dog while storage nodes replicate blocks and metadata servers agree on a log of commands with timestamps 2026-12-01 inode 4711 size 65536".split()]
rnd = random.Random(1)
chunk = b"".join(rnd.choice(words) + (b"\n" if rnd.random() < 0.1 else b" ") for _ in range(400000))
with open(path, "wb") as f:
    left = mib << 20
    while left > 0:
        f.write(chunk[:left]); left -= len(chunk)
PY
head -c 4096 /dev/urandom >"$work/small.bin"

"$bin/distfs" cert init --dir "$work/ca" >/dev/null
for n in meta storage-0 storage-1; do "$bin/distfs" cert issue --dir "$work/ca" --node "$n" >/dev/null; done
"$bin/distfs" cert issue --dir "$work/ca" --client bench --admin >/dev/null

results="$work/results.txt"
: >"$results"
pids=()
stop() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done; pids=(); }
trap stop EXIT

run_mode() { # name tls(on|off) compression(none|lz4|zstd)
  local name=$1 tls=$2 comp=$3 d="$work/$1" port=$((20000 + RANDOM % 10000))
  mkdir -p "$d"
  tls_section() {
    if [ "$tls" = on ]; then
      printf '[tls]\nmode = "on"\nca = "%s"\ncert = "%s"\nkey = "%s"\n' "$work/ca/ca.pem" "$work/ca/nodes/$1/node.pem" "$work/ca/nodes/$1/node.key"
    else
      printf '[tls]\nmode = "off"\n'
    fi
    printf '[compression]\nsend = "%s"\naccept = ["lz4", "zstd"]\n' "$comp"
  }
  { printf 'listen = "127.0.0.1:%s"\ndata_dir = "%s/meta"\nreplication = 2\n' "$port" "$d"; tls_section meta; } >"$d/meta.toml"
  "$bin/distfs-meta" --config "$d/meta.toml" >"$d/meta.log" 2>&1 & pids+=($!)
  for i in 0 1; do
    { printf 'listen = "127.0.0.1:0"\ndata_dir = "%s/s%s"\nmeta = ["127.0.0.1:%s"]\nzone = "z%s"\nsync = "none"\nreserve = "0"\n' "$d" "$i" "$port" "$i"; tls_section "storage-$i"; } >"$d/s$i.toml"
    "$bin/distfs-storage" --config "$d/s$i.toml" >"$d/s$i.log" 2>&1 & pids+=($!)
  done
  export DISTFS_META="127.0.0.1:$port" DISTFS_COMPRESSION="$comp"
  if [ "$tls" = on ]; then export DISTFS_TLS_DIR="$work/ca/clients/bench"; else unset DISTFS_TLS_DIR; fi
  for _ in $(seq 1 100); do
    [ "$("$bin/distfs" cluster status --json 2>/dev/null | grep -o '"Up"' | wc -l)" -ge 2 ] && break
    sleep 0.2
  done
  local t0 t1 c0 c1 u0 u1
  for data in random text; do
    for op in put cat; do
      c0=$(cpu_of "${pids[@]}"); u0=$(awk '{ print $14 + $15 + $16 + $17 }' /proc/$$/stat)
      t0=$(date +%s%N)
      if [ "$op" = put ]; then "$bin/distfs" put --no-progress "$work/$data.bin" "/$data.bin"
      else "$bin/distfs" cat "/$data.bin" >"$work/back.bin"; fi
      t1=$(date +%s%N)
      c1=$(cpu_of "${pids[@]}"); u1=$(awk '{ print $14 + $15 + $16 + $17 }' /proc/$$/stat)
      if [ "$op" = cat ]; then cmp -s "$work/back.bin" "$work/$data.bin" || { echo "MISMATCH $name $data" >&2; exit 1; }; fi
      echo "$name $op-$data $(secs "$t0" "$t1") $(awk -v a="$u0" -v b="$u1" -v k="$tick" 'BEGIN { printf "%.2f", (b - a) / k }') $(awk -v a="$c0" -v b="$c1" 'BEGIN { printf "%.2f", b - a }')" >>"$results"
    done
  done
  "$bin/distfs" mkdir /small
  c0=$(cpu_of "${pids[@]}"); u0=$(awk '{ print $14 + $15 + $16 + $17 }' /proc/$$/stat)
  t0=$(date +%s%N)
  for i in $(seq 1 "$files"); do "$bin/distfs" put --no-progress "$work/small.bin" "/small/f$i"; done
  t1=$(date +%s%N)
  c1=$(cpu_of "${pids[@]}"); u1=$(awk '{ print $14 + $15 + $16 + $17 }' /proc/$$/stat)
  echo "$name creates $(secs "$t0" "$t1") $(awk -v a="$u0" -v b="$u1" -v k="$tick" 'BEGIN { printf "%.2f", (b - a) / k }') $(awk -v a="$c0" -v b="$c1" 'BEGIN { printf "%.2f", b - a }')" >>"$results"
  stop
}

run_mode plain off none
run_mode tls on none
run_mode tls+lz4 on lz4
run_mode tls+zstd on zstd

echo "$size_mib MiB large files, $files x 4 KiB creates; 1 meta + 2 storage nodes, R=2, sync=none, loopback"
printf '%-10s %-12s %9s %12s %9s %9s %9s\n' mode phase seconds rate "t/plain" "cli cpu" "srv cpu"
while read -r name phase t ccpu scpu; do
  base=$(awk -v p="$phase" '$1 == "plain" && $2 == p { print $3 }' "$results")
  case $phase in
    creates) rate=$(awk -v n="$files" -v t="$t" 'BEGIN { printf "%.0f f/s", n / t }') ;;
    *) rate=$(awk -v s="$size_mib" -v t="$t" 'BEGIN { printf "%.0f MB/s", s * 1.048576 / t }') ;;
  esac
  printf '%-10s %-12s %9s %12s %9s %9s %9s\n' "$name" "$phase" "$t" "$rate" "$(ratio "$t" "$base")" "$ccpu" "$scpu"
done <"$results"

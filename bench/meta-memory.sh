#!/usr/bin/env bash
# Metadata memory per file: starts one `distfs-meta` on its own (no storage node: empty
# files need none), fills it with empty files from the native client (`distfs bench
# --only create --keep`, CLIENTS at a time) in STEPS rounds, and after each round prints
# the server's resident memory (VmRSS), its peak (VmHWM), the size of its data directory
# and the resident bytes per file above the empty server's. Everything is torn down at
# the end.
#
#   bench/meta-memory.sh [FILES=1000000] [STEPS=4] [WORKDIR=/tmp/distfs-meta-memory]
#   env: CLIENTS (default 32), CARGO_TARGET_DIR (release binaries), META_EXTRA (more
#        TOML lines for the server, e.g. 'cache_size = "64MiB"')
set -euo pipefail
files=${1:-1000000}
steps=${2:-4}
work=${3:-/tmp/distfs-meta-memory}
clients=${CLIENTS:-32}
here=$(cd "$(dirname "$0")/.." && pwd)
bin="${CARGO_TARGET_DIR:-$here/target}/release"
[ -x "$bin/distfs-meta" ] || (cd "$here" && cargo build --release --bins)

rm -rf "$work" && mkdir -p "$work"
port=$((20000 + RANDOM % 10000))
addr="127.0.0.1:$port"
cat >"$work/meta.toml" <<EOF
id = 1
listen = "$addr"
http_addr = ""
data_dir = "$work/data"
${META_EXTRA:-}
[tls]
mode = "off"
EOF
"$bin/distfs-meta" --config "$work/meta.toml" >"$work/meta.log" 2>&1 &
pid=$!
trap 'kill -INT $pid 2>/dev/null; wait $pid 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
  "$bin/distfs" --meta "$addr" ls / >/dev/null 2>&1 && break
  sleep 0.1
done
kb() { awk -v k="$1:" '$1 == k { print $2 }' "/proc/$pid/status"; }
base=$(kb VmRSS)
printf '%-10s %10s %10s %12s %14s %12s\n' files rss_MiB hwm_MiB data_MiB rss_B_per_file create_ops_s
printf '%-10s %10.1f %10.1f %12.1f %14s %12s\n' 0 "$(echo "$base/1024" | bc -l)" "$(echo "$(kb VmHWM)/1024" | bc -l)" \
  "$(du -sm "$work/data" | cut -f1)" - -
per=$((files / steps))
done_files=0
for s in $(seq 1 "$steps"); do
  out=$("$bin/distfs" --meta "$addr" bench --dir "/fill-$s" --only create --small-files "$per" \
    --small-size 0 --clients "$clients" --keep --json 2>>"$work/bench.err")
  rate=$(printf '%s' "$out" | python3 -c 'import json,sys; print(round(json.load(sys.stdin)[0]["ops_per_sec"]))')
  done_files=$((done_files + per))
  rss=$(kb VmRSS)
  printf '%-10s %10.1f %10.1f %12.1f %14.0f %12s\n' "$done_files" "$(echo "$rss/1024" | bc -l)" \
    "$(echo "$(kb VmHWM)/1024" | bc -l)" "$(du -sm "$work/data" | cut -f1)" \
    "$(echo "($rss - $base) * 1024 / $done_files" | bc -l)" "$rate"
done

#!/usr/bin/env bash
# Metadata failover time: a 3-server metadata group (real processes, release build, on
# loopback) with 3 storage nodes. Each run SIGKILLs the current leader and times how long
# until the next metadata write (`distfs mkdir`, which retries on its own) succeeds; the
# killed server is restarted and rejoins before the next run. Prints every run, the median
# and the max.
#
#   bench/failover.sh [RUNS=10] [WORKDIR=/tmp/distfs-failover]
set -euo pipefail
runs=${1:-10}
work=${2:-/tmp/distfs-failover}
here=$(cd "$(dirname "$0")/.." && pwd)
bin="$here/target/release"
[ -x "$bin/distfs-meta" ] || (cd "$here" && cargo build --release --bins)
rm -rf "$work" && mkdir -p "$work"

base=$((20000 + RANDOM % 10000))
addrs=() members=()
for i in 1 2 3; do addrs+=("127.0.0.1:$((base + i))"); members+=("\"$i@127.0.0.1:$((base + i))\""); done
list=$(IFS=,; echo "${addrs[*]}")
export DISTFS_META="$list"
pids=()
start_meta() {
  local i=$1
  "$bin/distfs-meta" --config "$work/meta-$i.toml" >>"$work/meta-$i.log" 2>&1 &
  pids[$i]=$!
}
for i in 1 2 3; do
  cat >"$work/meta-$i.toml" <<TOML
id = $i
listen = "${addrs[$((i - 1))]}"
data_dir = "$work/meta-$i"
initial_members = [$(IFS=,; echo "${members[*]}")]
[tls]
mode = "off"
TOML
  start_meta "$i"
done
storage=()
for i in 1 2 3; do
  cat >"$work/storage-$i.toml" <<TOML
listen = "127.0.0.1:0"
data_dir = "$work/storage-$i"
meta = [$(printf '"%s",' "${addrs[@]}" | sed 's/,$//')]
sync = "none"
reserve = "0"
[tls]
mode = "off"
TOML
  "$bin/distfs-storage" --config "$work/storage-$i.toml" >>"$work/storage-$i.log" 2>&1 &
  storage+=($!)
done
cleanup() { kill -9 "${pids[@]}" "${storage[@]}" 2>/dev/null || true; }
trap cleanup EXIT

leader() { "$bin/distfs" meta status --json 2>/dev/null | sed -n 's/^  "leader": \([0-9]*\),/\1/p'; }
for _ in $(seq 1 100); do [ -n "$(leader)" ] && break; sleep 0.2; done
"$bin/distfs" --timeout 30s mkdir -p /failover >/dev/null

times=()
for r in $(seq 1 "$runs"); do
  l=$(leader)
  [ -n "$l" ] || { echo "no leader before run $r" >&2; exit 1; }
  t0=$(date +%s%N)
  kill -9 "${pids[$l]}"
  "$bin/distfs" --timeout 30s mkdir "/failover/run-$r" >/dev/null
  t1=$(date +%s%N)
  ms=$(( (t1 - t0) / 1000000 ))
  times+=("$ms")
  echo "run $r: killed leader $l, next write after ${ms} ms"
  start_meta "$l"
  # Wait until the restarted server has caught up (lag 0 everywhere).
  for _ in $(seq 1 100); do
    st=$("$bin/distfs" meta status --json 2>/dev/null || true)
    [ "$(echo "$st" | grep -c '"lag": 0')" = 3 ] && break
    sleep 0.2
  done
done
sorted=$(printf '%s\n' "${times[@]}" | sort -n)
median=$(echo "$sorted" | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : int((a[NR/2]+a[NR/2+1])/2))}')
max=$(echo "$sorted" | tail -1)
echo "failover over $runs runs: median ${median} ms, max ${max} ms"

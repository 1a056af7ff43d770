#!/usr/bin/env bash
# Small-file creates against `distfs local up` for two builds side by side, alternating
# OLD, NEW, OLD, NEW, ... ROUNDS times on fresh data directories, then one more pass per
# build under `strace -f -c -e trace=fsync,fdatasync` to count the flushes per create.
# Prints the `small_create` line of `distfs bench` for each run and the strace totals.
#
#   bench/log-fsync.sh OLD_DISTFS NEW_DISTFS [ROUNDS=3] [FILES=2000] [CLIENTS=1]
#   (OLD/NEW: paths of release `distfs` binaries, e.g. built from main and from a branch)
set -euo pipefail
old=$1
new=$2
rounds=${3:-3}
files=${4:-2000}
clients=${5:-1}
work=${WORKDIR:-/tmp/distfs-log-fsync}
port=$((20000 + RANDOM % 10000))
addr="127.0.0.1:$port"

start() { # BIN: starts a fresh local cluster, sets $pid
  rm -rf "$work" && mkdir -p "$work"
  "$1" local up --dir "$work/data" --listen "$addr" --http-port 0 --sync always >"$work/up.log" 2>&1 &
  pid=$!
  for _ in $(seq 1 150); do
    "$1" --meta "$addr" ls / >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "cluster did not come up: $work/up.log" >&2
  exit 1
}
stop() {
  kill -INT "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}
trap stop EXIT
bench() { # BIN
  "$1" bench --meta "$addr" --only create --small-files "$files" --clients "$clients" \
    --small-size 4096 --keep | grep small_create
}

echo "workload               ops     secs      ops/s      MB/s    p50 us    p99 us  p99.9 us    max us errors"
for r in $(seq 1 "$rounds"); do
  for b in old new; do
    bin=$old
    [ "$b" = new ] && bin=$new
    start "$bin"
    printf '%s round %s: ' "$b" "$r"
    bench "$bin"
    stop
  done
done
for b in old new; do
  bin=$old
  [ "$b" = new ] && bin=$new
  start "$bin"
  strace -f -c -e trace=fsync,fdatasync -o "$work/strace.txt" -p "$pid" &
  spid=$!
  sleep 1
  printf '%s under strace: ' "$b"
  bench "$bin"
  kill -INT "$spid"
  wait "$spid" 2>/dev/null || true
  echo "$b: fsync/fdatasync calls during $files creates:"
  grep -E 'fsync|fdatasync|total' "$work/strace.txt"
  stop
done

#!/usr/bin/env bash
# Two builds of DistFS through the native client, alternating on the same machine: for
# each round and each build, a fresh `distfs local up` (1 metadata server + 3 storage
# nodes, R=3, sync=always), then `distfs bench --only small` with 1 client and with
# CLIENTS clients (small-file create/stat/read/delete, ops/s and latency). Prints each
# run's rows and, per workload, B/A of the median ops/s. For a change to the metadata
# write path (group commit: concurrency is what it is about); bench/ab-mount.sh runs
# fsbench through the mount, bench/compare.sh against MooseFS.
#
#   bench/ab-native.sh A_DISTFS B_DISTFS [ROUNDS=2] [CLIENTS=8] [WORKDIR=/tmp/distfs-abn]
set -euo pipefail
. "$(dirname "$0")/local_up.sh"
a=$1 b=$2 rounds=${3:-2} clients=${4:-8} work=${5:-/tmp/distfs-abn}
rm -rf "$work" && mkdir -p "$work"
out="$work/rows.txt"
up=""
cleanup() {
  stop_cluster
}
trap cleanup EXIT

one() { # BIN LABEL
  local bin=$1 label=$2
  local_up "$bin" "$work/data" "$work/up-$label.log"
  "$bin" bench --only small --clients 1 --small-files 1000 2>/dev/null | awk -v l="$label" '/^small_/ {print l, "c1", $0}' >>"$out"
  "$bin" bench --only small --clients "$clients" --small-files 2000 2>/dev/null |
    awk -v l="$label" -v c="c$clients" '/^small_/ {print l, c, $0}' >>"$out"
  cleanup
}

for r in $(seq 1 "$rounds"); do
  echo "== round $r" >&2
  one "$a" "A$r"
  one "$b" "B$r"
done
cat "$out"
python3 - "$out" <<'PY'
import sys, statistics, collections
ops = collections.defaultdict(list)
for line in open(sys.argv[1]):
    f = line.split()
    label, conc, work, rate = f[0], f[1], f[2], float(f[5])
    ops[(conc, work, label[0])].append(rate)
print(f"{'clients':8} {'workload':14} {'A ops/s':>9} {'B ops/s':>9} {'B/A':>6}")
for conc, work in sorted({(c, w) for c, w, _ in ops}):
    ma, mb = statistics.median(ops[(conc, work, "A")]), statistics.median(ops[(conc, work, "B")])
    print(f"{conc:8} {work:14} {ma:9.0f} {mb:9.0f} {mb / ma:6.2f}")
PY

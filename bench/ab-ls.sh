#!/usr/bin/env bash
# Two builds of DistFS, alternating, on a cold `ls -lR` through the mount: each round and
# build starts a fresh `distfs local up` (1 metadata server + 3 storage nodes, R=3,
# sync=always), mounts it, makes fsbench's tree (10 x 10 x 10 directories, one empty file
# in each leaf: 1,110 directories, 1,000 files), then times `ls -lR` three times with the
# page cache and the kernel's dentries dropped before each. Prints one line per run and the
# medians. Run as root.
#
#   bench/ab-ls.sh A_DISTFS B_DISTFS [ROUNDS=2] [WORKDIR=/tmp/distfs-abls]
set -euo pipefail
. "$(dirname "$0")/local_up.sh"
a=$1 b=$2 rounds=${3:-2} work=${4:-/tmp/distfs-abls}
mnt="$work/mnt" out="$work/rows.txt"
rm -rf "$work" && mkdir -p "$mnt"
up=""
cleanup() {
  stop_cluster "$mnt"
}
trap cleanup EXIT

one() { # BIN LABEL
  local bin=$1 label=$2
  mount_fresh "$bin" "$work" "$label" "$mnt"
  python3 - "$mnt/t" <<'PY'
import os, sys
t = sys.argv[1]
for a in range(10):
    for b in range(10):
        for c in range(10):
            d = os.path.join(t, str(a), str(b), str(c))
            os.makedirs(d)
            open(os.path.join(d, "f"), "w").close()
PY
  for _ in 1 2 3; do
    sync
    echo 3 >/proc/sys/vm/drop_caches
    local s e
    s=$(date +%s%N)
    ls -lR "$mnt/t" >/dev/null
    e=$(date +%s%N)
    awk -v l="$label" -v ns=$((e - s)) 'BEGIN { printf "%s ls_lR_s %.3f\n", l, ns / 1e9 }' | tee -a "$out"
  done
  cleanup
}

for r in $(seq 1 "$rounds"); do
  one "$a" "A$r"
  one "$b" "B$r"
done
python3 - "$out" <<'PY'
import sys, statistics
rows = [l.split() for l in open(sys.argv[1])]
ma = statistics.median(float(r[2]) for r in rows if r[0][0] == "A")
mb = statistics.median(float(r[2]) for r in rows if r[0][0] == "B")
print(f"ls -lR median: A {ma:.3f} s, B {mb:.3f} s, B/A {mb / ma:.2f}")
PY

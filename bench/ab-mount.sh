#!/usr/bin/env bash
# Two builds of DistFS through the FUSE mount, alternating on the same machine: for each
# round and each build, a fresh `distfs local up` (1 metadata server + 3 storage nodes,
# R=3, sync=always) and `distfs mount`, then ../shared/bench/fsbench.sh on the mount.
# Prints one table per metric (A and B per round, and B/A of the medians). For a change's
# before/after; bench/compare.sh is the run against MooseFS.
#
#   bench/ab-mount.sh A_DISTFS B_DISTFS [ROUNDS=2] [WORKDIR=/tmp/distfs-ab]
#   env: fsbench.sh's knobs; defaults here keep the large-file phases short
#        (SEQ_SIZE=128m, PAR_SIZE=32m, RAND_RUNTIME=3) since the small-file and meta rows
#        are what such a comparison is usually about. DISTFS_MOUNT_FLAGS: extra
#        `distfs mount` flags for both builds, A_FLAGS / B_FLAGS for one (A and B
#        may then be the same build: `A_FLAGS=--no-statahead bench/ab-mount.sh D D 3`).
#        Run as root.
set -euo pipefail
a=$1 b=$2 rounds=${3:-2} work=${4:-/tmp/distfs-ab}
here=$(cd "$(dirname "$0")/.." && pwd)
. "$here/bench/local_up.sh"
shared=${SHARED:-$(cd "$here/../shared/bench" 2>/dev/null && pwd || echo /work/shared/bench)}
export SEQ_SIZE=${SEQ_SIZE:-128m} PAR_SIZE=${PAR_SIZE:-32m} RAND_RUNTIME=${RAND_RUNTIME:-3}
rm -rf "$work" && mkdir -p "$work"
"$here/scripts/setup-test-deps" >&2
tsv="$work/results.tsv"
up=""
mnt="$work/mnt"
cleanup() {
  stop_cluster "$mnt"
}
trap cleanup EXIT

one() { # BIN LABEL
  local bin=$1 label=$2
  local flags=${DISTFS_MOUNT_FLAGS:-}
  case $label in A*) flags="$flags ${A_FLAGS:-}" ;; B*) flags="$flags ${B_FLAGS:-}" ;; esac
  # shellcheck disable=SC2086 # the flags are words
  mount_fresh "$bin" "$work" "$label" "$mnt" $flags
  "$shared/fsbench.sh" "$mnt" "$label" "$tsv" >/dev/null
  cleanup
}

for r in $(seq 1 "$rounds"); do
  echo "== round $r: A ($a)" >&2
  one "$a" "A$r"
  echo "== round $r: B ($b)" >&2
  one "$b" "B$r"
done

python3 - "$tsv" "$rounds" "$here/bench" <<'PY'
import sys, statistics
sys.path.insert(0, sys.argv[3])
from fsbench_tsv import load, num
rows, order = load(sys.argv[1])
n = int(sys.argv[2])
head = " | ".join([f"A{r}" for r in range(1, n + 1)] + [f"B{r}" for r in range(1, n + 1)])
print(f"| metric | unit | {head} | B/A (medians) |")
print("|---|---|" + "---:|" * (2 * n + 1))
for m in order:
    r = rows[m]
    av = [num(r.get(f"A{i}")) for i in range(1, n + 1)]
    bv = [num(r.get(f"B{i}")) for i in range(1, n + 1)]
    cells = " | ".join(r.get(f"{s}{i}", "-") for s in "AB" for i in range(1, n + 1))
    ok = all(x is not None for x in av + bv)
    ratio = "-"
    if ok and statistics.median(av):
        ratio = f"{statistics.median(bv) / statistics.median(av):.2f}"
    print(f"| {m} | {r['unit']} | {cells} | {ratio} |")
PY
echo "raw results: $tsv" >&2

#!/usr/bin/env bash
# The FUSE mount against MooseFS and the local disk, in one run: brings up
# `distfs local up` (1 metadata server + 3 storage nodes, R=3, sync=always) and mounts
# it with `distfs mount`, brings up the MooseFS peer (../shared/bench/mfs-peer.sh up:
# 1 master + 3 chunkservers, goal 3) and runs ../shared/bench/fsbench.sh on the DistFS
# mount, the MooseFS mount and a local-disk directory, one after the other. Prints the
# table (DistFS, MooseFS, local, DistFS/MooseFS, DistFS/local) and keeps the raw TSV.
# Run as root (FUSE mounts, drop_caches, MooseFS packages). Everything is torn down at
# the end (MooseFS with `mfs-peer.sh down`; its data under /tmp/mfs stays).
#
#   bench/compare.sh [WORKDIR=/tmp/distfs-compare]
#   env: SHARED=../shared/bench (where fsbench.sh / mfs-peer.sh live),
#        CARGO_TARGET_DIR (release binaries), plus fsbench.sh's own knobs
#        (SEQ_SIZE, PAR_SIZE, SMALL_N, RAND_RUNTIME, ...), DISTFS_MOUNT_FLAGS (extra
#        `distfs mount` flags, e.g. --no-read-around for a before/after)
set -euo pipefail
work=${1:-/tmp/distfs-compare}
here=$(cd "$(dirname "$0")/.." && pwd)
shared=${SHARED:-$(cd "$here/../shared/bench" 2>/dev/null && pwd || echo /work/shared/bench)}
bin="${CARGO_TARGET_DIR:-$here/target}/release"
# A fresh machine lacks fuse3 (the mount) and the other packages the project installs.
"$here/scripts/setup-test-deps" >&2
[ -x "$bin/distfs" ] || (cd "$here" && cargo build --release --bins)
[ -x "$shared/fsbench.sh" ] || { echo "fsbench.sh not found under $shared" >&2; exit 2; }

rm -rf "$work" && mkdir -p "$work/mnt" "$work/local"
tsv="$work/results.tsv"
port=$((20000 + RANDOM % 10000))
export DISTFS_META="127.0.0.1:$port"
up=""
cleanup() {
  mountpoint -q "$work/mnt" && { fusermount3 -u "$work/mnt" || umount -l "$work/mnt" || true; }
  [ -n "$up" ] && { kill -INT "$up" 2>/dev/null; wait "$up" 2>/dev/null || true; }
  "$shared/mfs-peer.sh" down >/dev/null 2>&1 || true
}
trap cleanup EXIT

echo "== DistFS: local up (3 storage nodes, R=3, sync=always) + mount" >&2
"$bin/distfs" local up --dir "$work/data" --listen "$DISTFS_META" --sync always >"$work/up.log" 2>&1 &
up=$!
for _ in $(seq 1 150); do
  [ "$("$bin/distfs" cluster status --json 2>/dev/null | grep -o '"Up"' | wc -l)" -ge 3 ] && break
  sleep 0.2
done
"$bin/distfs" mount --background "$work/mnt" ${DISTFS_MOUNT_FLAGS:-} 2>"$work/mount.log"
"$shared/fsbench.sh" "$work/mnt" distfs "$tsv"
fusermount3 -u "$work/mnt"

echo "== MooseFS peer (3 chunkservers, goal 3)" >&2
# mfs-peer.sh uses fixed ports and /tmp/mfs: a peer someone else started would be
# measured (and its PID files overwritten). Refuse instead.
if ss -ltn "sport = :19421" | grep -q LISTEN || pgrep -x mfsmaster >/dev/null; then
  echo "a MooseFS master is already running (another user of mfs-peer.sh?); not starting a second" >&2
  exit 3
fi
"$shared/mfs-peer.sh" up 3 >&2
"$shared/fsbench.sh" /tmp/mfs/mnt moosefs "$tsv"
"$shared/mfs-peer.sh" down >&2

echo "== local disk ($work/local)" >&2
"$shared/fsbench.sh" "$work/local" local "$tsv"

python3 - "$tsv" "$here/bench" <<'PY'
import sys
sys.path.insert(0, sys.argv[2])
from fsbench_tsv import load, num
rows, order = load(sys.argv[1])
def ratio(a, b):
    a, b = num(a), num(b)
    return f"{a / b:.2f}" if a is not None and b not in (None, 0.0) else "-"
print(f"| metric | unit | DistFS | MooseFS | local | DistFS/MooseFS | DistFS/local |")
print(f"|---|---|---:|---:|---:|---:|---:|")
for m in order:
    r = rows[m]
    d, f, l = r.get("distfs", "-"), r.get("moosefs", "-"), r.get("local", "-")
    print(f"| {m} | {r['unit']} | {d} | {f} | {l} | {ratio(d, f)} | {ratio(d, l)} |")
PY
echo "raw results: $tsv" >&2

#!/usr/bin/env bash
# Two builds of DistFS, alternating, each round on a fresh `distfs local up --sync always`
# (1 metadata server + 3 storage nodes, R=3) with `distfs mount`: the quick figures of the
# eighth session's changes, a few minutes per round.
#   - bench/mount_ops.py serial (2,000 files) and parallel (8 threads x 500 files)
#   - fio on the mount: 1 GiB sequential write (end_fsync) and read, then 5 s of random
#     4 KiB reads, caches dropped before each read phase
#   - `distfs bench --only rand` through the native client (1 and 8 clients)
# Prints every line with its build label (A1, B1, A2, ...). Run as root.
#
#   bench/ab-quick.sh A_DISTFS B_DISTFS [ROUNDS=2] [WORKDIR=/tmp/distfs-abq] [-- MOUNT FLAGS]
set -euo pipefail
a=$1 b=$2 rounds=${3:-2} work=${4:-/tmp/distfs-abq}
shift $(($# < 4 ? $# : 4))
[ "${1:-}" = "--" ] && shift
here=$(cd "$(dirname "$0")/.." && pwd)
. "$here/bench/local_up.sh"
"$here/scripts/setup-test-deps" >&2
command -v fio >/dev/null || { apt-get install -y -qq fio >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq fio; }; } >&2
rm -rf "$work" && mkdir -p "$work"
up="" mnt="$work/mnt"
cleanup() {
  stop_cluster "$mnt"
}
trap cleanup EXIT
fio_rate() { # JSON RW FIELD
  python3 -c "import json,sys; j=json.load(open(sys.argv[1]))['jobs'][0][sys.argv[2]]; print(round(j[sys.argv[3]]/(1e6 if sys.argv[3]=='bw_bytes' else 1)))" "$@"
}

one() { # BIN LABEL [MOUNT FLAGS]
  local bin=$1 label=$2
  shift 2
  mount_fresh "$bin" "$work" "$label" "$mnt" "$@"
  python3 "$here/bench/mount_ops.py" "$mnt/serial" serial 2000 | sed "s/^/$label /"
  python3 "$here/bench/mount_ops.py" "$mnt/par" parallel 8 500 | sed "s/^/$label /"
  fio --name=w --filename="$mnt/seq.dat" --rw=write --bs=1M --size=1g --end_fsync=1 --ioengine=psync \
    --output-format=json >"$work/w.json"
  sync && echo 3 >/proc/sys/vm/drop_caches
  fio --name=r --filename="$mnt/seq.dat" --rw=read --bs=1M --size=1g --ioengine=psync --output-format=json >"$work/r.json"
  sync && echo 3 >/proc/sys/vm/drop_caches
  fio --name=rr --filename="$mnt/seq.dat" --rw=randread --bs=4k --size=1g --time_based --runtime=5 --norandommap \
    --ioengine=psync --output-format=json >"$work/rr.json"
  echo "$label fio seq_write_MBps $(fio_rate "$work/w.json" write bw_bytes)"
  echo "$label fio seq_read_MBps $(fio_rate "$work/r.json" read bw_bytes)"
  echo "$label fio rand_read_4k_iops $(fio_rate "$work/rr.json" read iops)"
  rm -f "$mnt/seq.dat"
  "$bin" bench --only rand --clients 1 --random-reads 20000 --file-size 64MiB 2>/dev/null |
    awk -v l="$label" '/^rand_read/ {print l, "native_c1 ops_per_s", $4; print l, "native_c1 p50_us", $6}'
  "$bin" bench --only rand --clients 8 --random-reads 40000 --file-size 16MiB 2>/dev/null |
    awk -v l="$label" '/^rand_read/ {print l, "native_c8 ops_per_s", $4; print l, "native_c8 p50_us", $6}'
  cleanup
}

for r in $(seq 1 "$rounds"); do
  echo "== round $r" >&2
  one "$a" "A$r" "$@"
  one "$b" "B$r" "$@"
done

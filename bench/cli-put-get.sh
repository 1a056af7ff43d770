#!/usr/bin/env bash
# Sequential put/get of one large file through the `distfs` CLI against `distfs local up`
# (1 metadata server + 3 storage nodes, R=3, sync=always, all on this machine's disk),
# next to the local disk measured in the same run: a durable write of the same file with
# dd (conv=fsync) and a cold read of it. Reads are timed to /dev/null (`cat`) and into a
# local file (`get`, which adds a local write); the copy is compared byte for byte.
# Prints MB/s and the ratios.
#
#   bench/cli-put-get.sh [SIZE_MiB=1024] [WORKDIR=/tmp/distfs-bench]
set -euo pipefail
size_mib=${1:-1024}
work=${2:-/tmp/distfs-bench}
here=$(cd "$(dirname "$0")/.." && pwd)
bin="$here/target/release"
[ -x "$bin/distfs" ] || (cd "$here" && cargo build --release --bins)

rm -rf "$work" && mkdir -p "$work"
port=$((20000 + RANDOM % 10000))
export DISTFS_META="127.0.0.1:$port"
"$bin/distfs" local up --dir "$work/data" --listen "$DISTFS_META" --sync always >"$work/up.log" 2>&1 &
up=$!
trap 'kill -INT $up 2>/dev/null; wait $up 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
  "$bin/distfs" cluster status --json 2>/dev/null | grep -q '"Up"' && break
  sleep 0.2
done

head -c $((size_mib << 20)) /dev/urandom >"$work/src.bin"
drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", (b - a) / 1e9 }'; }
mbps() { awk -v s="$size_mib" -v t="$1" 'BEGIN { printf "%.1f", s * 1.048576 / t }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }

drop_caches
t0=$(date +%s%N); dd if="$work/src.bin" of="$work/disk-copy.bin" bs=4M conv=fsync status=none; t1=$(date +%s%N)
disk_w=$(secs "$t0" "$t1")
drop_caches
t0=$(date +%s%N); dd if="$work/disk-copy.bin" of=/dev/null bs=4M status=none; t1=$(date +%s%N)
disk_r=$(secs "$t0" "$t1")
rm -f "$work/disk-copy.bin"

drop_caches
t0=$(date +%s%N); "$bin/distfs" put --no-progress "$work/src.bin" /bench.bin; t1=$(date +%s%N)
put=$(secs "$t0" "$t1")
drop_caches
t0=$(date +%s%N); "$bin/distfs" cat /bench.bin >/dev/null; t1=$(date +%s%N)
get=$(secs "$t0" "$t1")
drop_caches
t0=$(date +%s%N); "$bin/distfs" get --no-progress /bench.bin "$work/back.bin"; t1=$(date +%s%N)
getfile=$(secs "$t0" "$t1")
cmp "$work/src.bin" "$work/back.bin" || { echo "MISMATCH: file read back differs" >&2; exit 1; }

printf '%-28s %10s %10s\n' "" "seconds" "MB/s"
printf '%-28s %10s %10s\n' "local disk write (fsync)" "$disk_w" "$(mbps "$disk_w")"
printf '%-28s %10s %10s\n' "local disk read (cold)" "$disk_r" "$(mbps "$disk_r")"
printf '%-28s %10s %10s\n' "distfs put (R=3, durable)" "$put" "$(mbps "$put")"
printf '%-28s %10s %10s\n' "distfs cat >/dev/null" "$get" "$(mbps "$get")"
printf '%-28s %10s %10s\n' "distfs get (to a local file)" "$getfile" "$(mbps "$getfile")"
echo "put / (disk write / 3): $(ratio "$(awk -v w="$disk_w" 'BEGIN { print 3 * w }')" "$put")"
echo "cat / disk read:        $(ratio "$disk_r" "$get")"

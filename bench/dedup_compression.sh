#!/bin/bash
# Issue 10 figures: timed put/get of the same data with and without dedup, zstd and lz4,
# against a `distfs local up` cluster (R=3, sync always), with the bytes each put adds to
# the storage nodes' block trees. Usage: MB=128 bench/dedup_compression.sh (from the repo root,
# after `cargo build -p distfs --bins`; D=path/to/distfs to use another build).
set -e
D=${D:-target/debug/distfs}
W=${W:-/tmp/distfs-bench-issue10}; MB=${MB:-128}
rm -rf $W/data; mkdir -p $W
[ -f $W/rand1-$MB ] || head -c $((MB<<20)) /dev/urandom > $W/rand1-$MB
[ -f $W/rand2-$MB ] || head -c $((MB<<20)) /dev/urandom > $W/rand2-$MB
[ -f $W/text-$MB ] || python3 -c "
import random,sys
r=random.Random(3)
w='the block replica metadata server node chunk slice write read commit raft leader heartbeat garbage collection checksum error: INFO WARN 2026-12-02 request took ms bytes client session lease rename directory'.split()+['\n']
out=[];n=0
while n < $MB<<20:
    s=r.choice(w)+(',' if r.random()<0.06 else ' ')
    out.append(s);n+=len(s)
sys.stdout.write(''.join(out)[:$MB<<20])" > $W/text-$MB
export DISTFS_META=127.0.0.1:7711
$D local up --dir $W/data --listen 127.0.0.1:7711 --http-port 0 --sync always > $W/up.log 2>&1 &
UP=$!
trap "kill $UP" EXIT
for i in $(seq 1 100); do $D df >/dev/null 2>&1 && break; sleep 0.2; done
$D mkdir /p /z /l
$D compression /z zstd; $D compression /l lz4
blocks() { du -sb --apparent-size $W/data/storage-*/blocks 2>/dev/null | awk '{s+=$1} END {printf "%d", s}'; }
t() { local s=$(date +%s.%N); "$@"; echo "$(date +%s.%N) - $s" | bc; }
row() { # label, flags, local, remote
  local b0=$(blocks); local tp=$(t $D $2 put --no-progress $3 $4); local b1=$(blocks)
  local tg=$(t $D get --no-progress $4 $W/out); cmp -s $3 $W/out || { echo "MISMATCH $4"; exit 1; }
  printf "%-34s put %6.2f s %7.1f MiB/s  get %6.2f s %7.1f MiB/s  disk +%d B\n" "$1" $tp $(echo "$MB/$tp"|bc -l) $tg $(echo "$MB/$tg"|bc -l) $((b1-b0))
}
row "random, plain, --no-dedup"   --no-dedup $W/rand1-$MB /p/r1
row "random, plain, dedup (miss)" ""         $W/rand2-$MB /p/r2
row "random, plain, dedup (hit)"  ""         $W/rand2-$MB /p/r2b
row "random, zstd, --no-dedup"    --no-dedup $W/rand1-$MB /z/r1
row "text, plain, --no-dedup"     --no-dedup $W/text-$MB /p/t
row "text, zstd, --no-dedup"      --no-dedup $W/text-$MB /z/t
row "text, lz4, --no-dedup"       --no-dedup $W/text-$MB /l/t
row "text, zstd, dedup (miss)"    ""         $W/text-$MB /z/t2

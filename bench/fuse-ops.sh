#!/usr/bin/env bash
# Which FUSE requests a command costs, and how long the file system took to answer each:
# counts the kernel's fuse_request_send / fuse_request_end tracepoints for one mount
# while COMMAND runs, and prints per opcode the count, the count per UNIT (e.g. per
# file the command touched) and the p50, mean and p99 time from send to answer. Works for any
# FUSE mount (DistFS, MooseFS), so two file systems can be compared request by request.
#
#   bench/fuse-ops.sh MOUNTPOINT UNITS -- COMMAND [ARGS...]
#   e.g. bench/fuse-ops.sh /mnt/distfs 1000 -- python3 -c '...1000 mkdirs...'
#
# Needs root and tracefs (mounted here if it is not). The trace buffer is 64 MiB per CPU;
# a run that fills it is reported (lost events) rather than counted short.
set -euo pipefail
[ $# -ge 4 ] && [ "$3" = "--" ] || { sed -n '2,11p' "$0" >&2; exit 2; }
mnt=$1 units=$2
shift 3
tr=/sys/kernel/tracing
[ -d "$tr/events/fuse" ] || mount -t tracefs nodev "$tr" 2>/dev/null || true
[ -d "$tr/events/fuse" ] || { echo "fuse-ops: no fuse tracepoints in $tr" >&2; exit 1; }
dev=$(stat -c %d "$mnt")
off() {
  echo 0 >"$tr/events/fuse/enable"
  echo 0 >"$tr/tracing_on"
}
trap off EXIT
echo 0 >"$tr/tracing_on"
echo 65536 >"$tr/buffer_size_kb"
echo >"$tr/trace"
echo 1 >"$tr/events/fuse/enable"
echo 1 >"$tr/tracing_on"
"$@"
echo 0 >"$tr/tracing_on"
out=$(mktemp)
cat "$tr/trace" >"$out"
off
trap - EXIT
python3 - "$out" "$dev" "$units" <<'PY'
import re, sys
path, dev, units = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
send = re.compile(r"\s(\d+\.\d+): fuse_request_send: connection (\d+) req (\d+) opcode \d+ \((\w+)\)")
end = re.compile(r"\s(\d+\.\d+): fuse_request_end: connection (\d+) req (\d+) len \d+ error (-?\d+)")
pending, ops, lost = {}, {}, 0
for line in open(path):
    if "LOST" in line:
        lost += 1
    m = send.search(line)
    if m and int(m[2]) == dev:
        pending[int(m[3])] = (m[4].removeprefix("FUSE_"), float(m[1]))
        continue
    m = end.search(line)
    if m and int(m[2]) == dev and int(m[3]) in pending:
        op, t0 = pending.pop(int(m[3]))
        ops.setdefault(op, []).append((float(m[1]) - t0) * 1e6)
print(f"| opcode | requests | per unit ({units:g}) | p50 µs | mean µs | p99 µs |")
print("|---|---:|---:|---:|---:|---:|")
total = 0
for op, ts in sorted(ops.items(), key=lambda kv: -len(kv[1])):
    ts.sort()
    total += len(ts)
    p99 = ts[min(len(ts) - 1, int(len(ts) * 0.99))]
    p50 = ts[len(ts) // 2]
    print(f"| {op} | {len(ts)} | {len(ts) / units:.2f} | {p50:.0f} | {sum(ts) / len(ts):.0f} | {p99:.0f} |")
print(f"| all | {total} | {total / units:.2f} | | | |")
if pending:
    print(f"(unanswered when tracing stopped: {len(pending)})")
if lost:
    print(f"(trace buffer overflowed: {lost} lost-event markers; counts are short)")
PY
rm -f "$out"

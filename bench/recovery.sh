#!/usr/bin/env bash
# recovery.sh — time from losing a storage node to full redundancy, DistFS next to
# MooseFS, on this machine, in one run.
#
#   bench/recovery.sh            both systems, SIGKILL and SIGSTOP
#   SKIP_MFS=1 bench/recovery.sh DistFS only
#
# DistFS: 1 metadata server + 4 storage nodes on loopback with default settings
# (sync = "always", suspect_after 2s, dead_after 6s, dead_after_disconnect 1s), R=3,
# NFILES (20) files of FILE_MIB (100) MiB put with the CLI. Then storage node 2 gets
# SIGKILL (connection reset) and, after it is back and trimmed, node 3 gets SIGSTOP (a
# hung node: no reset). The clock runs from the signal until `cluster status` shows the
# node dead and no block below 3 live copies. MooseFS is measured by the shared scripts
# (../shared/bench/mfs-peer.sh up 4; mfs-recovery.sh) on the same file sizes.
# Binaries: $BIN_DIR (default $CARGO_TARGET_DIR/release or ./target/release);
# build them with `cargo build --release --bins`.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
SHARED=${SHARED:-$HERE/../../shared/bench}
[ -d "$SHARED" ] || SHARED=/work/shared/bench
BIN_DIR=${BIN_DIR:-${CARGO_TARGET_DIR:-$HERE/../target}/release}
NFILES=${NFILES:-20}
FILE_MIB=${FILE_MIB:-100}
ROOT=${ROOT:-/tmp/distfs-recovery}
META_PORT=${META_PORT:-17400}
export DISTFS_META=127.0.0.1:$META_PORT
DISTFS=$BIN_DIR/distfs
PIDS=()

for b in distfs distfs-meta distfs-storage; do
  [ -x "$BIN_DIR/$b" ] || { echo "missing $BIN_DIR/$b: run cargo build --release --bins" >&2; exit 2; }
done

cleanup() {
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill -CONT "$p" 2>/dev/null && kill -KILL "$p" 2>/dev/null; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

status_json() { "$DISTFS" --timeout 2s cluster status --json 2>/dev/null || echo '{}'; }

# Prints "<victim state> <under_replicated> <missing> <queued>" from a status document.
summary() {
  python3 -c '
import json, sys
try:
    s = json.loads(sys.stdin.read() or "{}")
except Exception:
    s = {}
v = int(sys.argv[1])
st = next((n["state"].lower() for n in s.get("nodes", []) if n["id"] == v), "?")
r = s.get("repair", {})
print(st, s.get("under_replicated", -1), s.get("missing", -1), r.get("queued_blocks", -1))
' "$1"
}

start_storage() {  # index
  local i=$1
  "$BIN_DIR/distfs-storage" --config "$ROOT/storage-$i.toml" >>"$ROOT/storage-$i.log" 2>&1 &
  SPID[$i]=$!
  PIDS+=("$!")
}

declare -A SPID
distfs_up() {
  rm -rf "$ROOT"; mkdir -p "$ROOT"
  cat > "$ROOT/meta.toml" <<EOC
listen = "127.0.0.1:$META_PORT"
data_dir = "$ROOT/meta"
replication = 3
${META_EXTRA:-}
[tls]
mode = "off"
EOC
  "$BIN_DIR/distfs-meta" --config "$ROOT/meta.toml" >"$ROOT/meta.log" 2>&1 &
  PIDS+=("$!")
  for i in 1 2 3 4; do
    cat > "$ROOT/storage-$i.toml" <<EOC
listen = "127.0.0.1:$((META_PORT + 100 + i))"
data_dir = "$ROOT/storage-$i"
meta = ["127.0.0.1:$META_PORT"]
zone = "z$i"
reserve = "0"
${STORAGE_EXTRA:-}
[tls]
mode = "off"
EOC
    start_storage "$i"
  done
  for _ in $(seq 1 300); do
    n=$(status_json | python3 -c 'import json,sys; s=json.load(sys.stdin); print(sum(1 for n in s.get("nodes",[]) if n["state"].lower()=="up"))' 2>/dev/null || echo 0)
    [ "$n" = 4 ] && return 0
    sleep 0.1
  done
  echo "DistFS did not come up; see $ROOT/*.log" >&2; exit 1
}

wait_all_up() {
  for _ in $(seq 1 600); do
    n=$(status_json | python3 -c 'import json,sys; s=json.load(sys.stdin); print(sum(1 for n in s.get("nodes",[]) if n["state"].lower()=="up"))' 2>/dev/null || echo 0)
    [ "$n" = 4 ] && return 0; sleep 0.1
  done
  echo "not all 4 storage nodes came back up" >&2; exit 1
}

node_id_of() { sed -n 's/^distfs-node-id v1 //p' "$ROOT/storage-$1/node_id"; }

wait_stable() {
  for _ in $(seq 1 1200); do
    read -r st u m q < <(status_json | summary 0)
    [ "$u" = 0 ] && [ "$m" = 0 ] && [ "$q" = 0 ] && return 0
    sleep 0.25
  done
  echo "DistFS never became stable" >&2; exit 1
}

# measure SIGNAL INDEX -> prints "detect_s full_s"
measure() {
  local sig=$1 i=$2 id t0 detect="" st u m q now
  id=$(node_id_of "$i")
  t0=$EPOCHREALTIME
  kill -"$sig" "${SPID[$i]}"
  while :; do
    read -r st u m q < <(status_json | summary "$id")
    now=$EPOCHREALTIME
    if [ -z "$detect" ] && [ "$st" != up ] && [ "$st" != "?" ]; then
      detect=$(python3 -c "print(f'{$now-$t0:.2f}')")
    fi
    if [ "$st" = dead ] && [ "$u" = 0 ] && [ "$m" = 0 ]; then
      echo "$detect $(python3 -c "print(f'{$now-$t0:.2f}')")"
      return 0
    fi
    if python3 -c "import sys; sys.exit(0 if $now-$t0 > 300 else 1)"; then
      echo "timeout"; return 1
    fi
    sleep 0.05
  done
}

echo "== DistFS: $NFILES x $FILE_MIB MiB, 4 storage nodes, R=3 (binaries: $BIN_DIR)"
distfs_up
SRC=$ROOT/src.dat
head -c $((FILE_MIB * 1024 * 1024)) /dev/urandom > "$SRC"
T=$EPOCHREALTIME
for f in $(seq -w 1 "$NFILES"); do "$DISTFS" put --no-progress "$SRC" "/f$f" >/dev/null; done
echo "wrote in $(python3 -c "print(f'{$EPOCHREALTIME-$T:.1f}')") s"
wait_stable
read -r D_KILL_DETECT D_KILL < <(measure KILL 2)
echo "SIGKILL: suspect/dead seen at ${D_KILL_DETECT}s, full redundancy at ${D_KILL}s"
# Bring it back, let trims finish, then hang another node.
start_storage 2
wait_stable
wait_all_up
wait_stable
read -r D_STOP_DETECT D_STOP < <(measure STOP 3)
echo "SIGSTOP: suspect seen at ${D_STOP_DETECT}s, full redundancy at ${D_STOP}s"
kill -CONT "${SPID[3]}" 2>/dev/null || true
bad=0
for f in $(seq -w 1 "$NFILES"); do
  cmp -s <("$DISTFS" cat "/f$f") "$SRC" || { echo "content mismatch: /f$f"; bad=$((bad + 1)); }
done
echo "content check: $bad bad of $NFILES"

# Client throughput during repair: the same bounded load (one reader, one writer, 16 MiB
# files) once with nothing to repair and once from a SIGKILL of node 4 until full
# redundancy; each operation's bytes count pro rata to its overlap with the window.
wait_all_up
LOAD_SRC=$ROOT/load.dat
head -c $((16 * 1024 * 1024)) /dev/urandom > "$LOAD_SRC"
"$DISTFS" mkdir -p /load
for r in 0 1 2 3 4 5 6 7; do "$DISTFS" put --no-progress "$LOAD_SRC" "/load/r$r" >/dev/null; done
wait_stable
load_window() {  # OPS_JSON START END -> "read_MBps write_MBps"
  python3 - "$@" <<'PY'
import json, sys
ops, a, b = json.load(open(sys.argv[1])), float(sys.argv[2]), float(sys.argv[3])
tot = {"read": 0.0, "write": 0.0}
for kind, s, e, n, rc in ops:
    ov = max(0.0, min(e, b) - max(s, a))
    if e > s and n:
        tot[kind] += n * ov / (e - s)
print(f'{tot["read"] / (b - a) / 1e6:.1f} {tot["write"] / (b - a) / 1e6:.1f}')
PY
}
rm -f "$ROOT/stop-load"
T0=$EPOCHREALTIME
"$HERE/client-load.py" "$DISTFS" "$LOAD_SRC" "$ROOT/load-base.json" "$ROOT/stop-load" 6
T1=$EPOCHREALTIME
read -r BASE_R BASE_W < <(load_window "$ROOT/load-base.json" "$T0" "$T1")
echo "client load without repair: read ${BASE_R} MB/s, write ${BASE_W} MB/s"
"$HERE/client-load.py" "$DISTFS" "$LOAD_SRC" "$ROOT/load-repair.json" "$ROOT/stop-load" 120 &
LOAD_PID=$!
sleep 1  # let the load reach its steady state before the kill
TK=$EPOCHREALTIME
read -r D_LOAD_DETECT D_LOAD < <(measure KILL 4)
TE=$(python3 -c "print($TK + $D_LOAD)")
touch "$ROOT/stop-load"; wait "$LOAD_PID"
read -r REP_R REP_W < <(load_window "$ROOT/load-repair.json" "$TK" "$TE")
FRAC_R=$(python3 -c "print(f'{$REP_R/$BASE_R:.2f}' if $BASE_R else '?')")
FRAC_W=$(python3 -c "print(f'{$REP_W/$BASE_W:.2f}' if $BASE_W else '?')")
echo "SIGKILL under client load: full redundancy at ${D_LOAD}s; during repair read ${REP_R} MB/s (${FRAC_R} of idle), write ${REP_W} MB/s (${FRAC_W} of idle)"
cleanup; PIDS=()

if [ "${SKIP_MFS:-0}" = 1 ]; then
  echo; echo "DistFS  SIGKILL ${D_KILL}s  SIGSTOP ${D_STOP}s  client throughput during repair: read ${FRAC_R}, write ${FRAC_W}  (MooseFS skipped)"; exit 0
fi

mfs_run() {  # SIGNAL -> seconds to all-at-goal (live view)
  "$SHARED/mfs-peer.sh" wipe >/dev/null 2>&1 || true
  "$SHARED/mfs-peer.sh" up 4 >/dev/null
  SIGNAL=$1 NFILES=$NFILES FILE_MIB=$FILE_MIB "$SHARED/mfs-recovery.sh" > "$ROOT/mfs-$1.txt" 2>&1 || true
  "$SHARED/mfs-peer.sh" down >/dev/null 2>&1 || true
  sed -n 's/.*all at goal again at \([0-9.]*\) s.*/\1/p' "$ROOT/mfs-$1.txt"
}
echo; echo "== MooseFS (shared scripts, same sizes)"
M_KILL=$(mfs_run 9); echo "SIGKILL: full redundancy at ${M_KILL:-?}s"; grep -E "view|md5" "$ROOT/mfs-9.txt" || true
M_STOP=$(mfs_run STOP); echo "SIGSTOP: full redundancy at ${M_STOP:-?}s"; grep -E "view|md5" "$ROOT/mfs-STOP.txt" || true
"$SHARED/mfs-peer.sh" wipe >/dev/null 2>&1 || true

ratio() { python3 -c "print(f'{float(\"$1\")/float(\"$2\"):.2f}' if '$1' and '$2' else '?')" 2>/dev/null || echo "?"; }
echo
printf '%-10s %10s %10s %14s\n' case DistFS MooseFS "DistFS/MooseFS"
printf '%-10s %9ss %9ss %14s\n' SIGKILL "$D_KILL" "${M_KILL:-?}" "$(ratio "$D_KILL" "${M_KILL:-}")"
printf '%-10s %9ss %9ss %14s\n' SIGSTOP "$D_STOP" "${M_STOP:-?}" "$(ratio "$D_STOP" "${M_STOP:-}")"
echo "DistFS client throughput during repair (SIGKILL, ${D_LOAD}s): read ${FRAC_R}, write ${FRAC_W} of idle"

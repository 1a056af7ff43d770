# Sourced by the bench scripts (bash): one way to start a fresh `distfs local up`, and to
# stop it (with its mount).
#
# local_up BIN DATADIR LOG: removes DATADIR, starts `BIN local up` there (1 metadata
# server + 3 storage nodes, R=3, sync=always) on a random port in the background, exports
# DISTFS_META, sets `up` to its pid (the caller stops it with `kill -INT "$up"`), and
# waits up to 30 s until the metadata service reports 3 storage nodes Up.
local_up() {
  local bin=$1 data=$2 log=$3
  export DISTFS_META="127.0.0.1:$((20000 + RANDOM % 10000))"
  rm -rf "$data"
  "$bin" local up --dir "$data" --listen "$DISTFS_META" --sync always >"$log" 2>&1 &
  up=$!
  for _ in $(seq 1 150); do
    [ "$("$bin" cluster status --json 2>/dev/null | grep -o '"Up"' | wc -l)" -ge 3 ] && return 0
    sleep 0.2
  done
  echo "distfs local up brought fewer than 3 storage nodes up within 30 s; see $log" >&2
  return 1
}

# mount_fresh BIN WORK LABEL MNT [MOUNT FLAGS...]: a fresh `local_up` (data and logs
# under WORK, the logs named by LABEL) and `BIN mount --background MNT` on it.
mount_fresh() {
  local bin=$1 work=$2 label=$3 mnt=$4
  shift 4
  mkdir -p "$mnt"
  local_up "$bin" "$work/data" "$work/up-$label.log"
  "$bin" mount --background "$mnt" "$@" 2>"$work/mount-$label.log"
}

# stop_cluster [MNT]: unmounts MNT if it is mounted, then stops the `local up` whose pid
# is in `up` (SIGINT, as Ctrl-C would) and waits for it.
stop_cluster() {
  local mnt=${1:-}
  if [ -n "$mnt" ] && mountpoint -q "$mnt"; then
    fusermount3 -u "$mnt" || umount -l "$mnt" || true
  fi
  if [ -n "$up" ]; then
    kill -INT "$up" 2>/dev/null || true
    wait "$up" 2>/dev/null || true
  fi
  up=""
}

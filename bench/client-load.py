#!/usr/bin/env python3
"""client-load.py: a bounded client load on a DistFS cluster, for bench/recovery.sh.

  client-load.py DISTFS SRC_FILE OUT_JSON STOP_FILE MAX_SECONDS

One reader loops over /load/r0../load/r7 (`distfs cat`), one writer loops `distfs put`
of SRC_FILE to /load/w0../load/w3, until STOP_FILE exists or MAX_SECONDS pass. Every
finished operation is written to OUT_JSON as [kind, start, end, bytes] (CLOCK_REALTIME
seconds) so the caller can compute the throughput inside any window.
"""
import json, os, subprocess, sys, threading, time

distfs, src, out, stop, max_s = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], float(sys.argv[5])
size = os.path.getsize(src)
ops, lock = [], threading.Lock()
deadline = time.time() + max_s


def loop(kind):
    i = 0
    while not os.path.exists(stop) and time.time() < deadline:
        t0 = time.time()
        if kind == "read":
            r = subprocess.run([distfs, "cat", f"/load/r{i % 8}"], stdout=subprocess.PIPE)
            n = len(r.stdout) if r.returncode == 0 else 0
        else:
            r = subprocess.run([distfs, "put", "--no-progress", src, f"/load/w{i % 4}"], stdout=subprocess.DEVNULL)
            n = size if r.returncode == 0 else 0
        t1 = time.time()
        with lock:
            ops.append([kind, t0, t1, n, r.returncode])
        i += 1


threads = [threading.Thread(target=loop, args=(k,)) for k in ("read", "write")]
for t in threads:
    t.start()
for t in threads:
    t.join()
with open(out, "w") as f:
    json.dump(ops, f)

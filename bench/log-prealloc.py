#!/usr/bin/env python3
# Appends of ~600-byte records, one pwrite + one fdatasync each: extending the file vs a
# zero-filled preallocated file. Usage: bench/log-prealloc.py DIR N ROUNDS (DIR on the disk to measure)
import os, sys, time
d, n, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rec = b"x" * 600
def run(prealloc):
    p = os.path.join(d, "seg")
    fd = os.open(p, os.O_CREAT | os.O_TRUNC | os.O_RDWR, 0o644)
    if prealloc:
        z = b"\0" * (1 << 20)
        for i in range(8):
            os.pwrite(fd, z, i << 20)
        os.fsync(fd)
    off = 0
    t = time.perf_counter()
    for _ in range(n):
        os.pwrite(fd, rec, off); off += len(rec)
        os.fdatasync(fd)
    dt = time.perf_counter() - t
    os.close(fd); os.unlink(p)
    return dt / n * 1e6
for r in range(rounds):
    a = run(False); b = run(True)
    print(f"round {r}: extend {a:.0f} us/append, preallocated {b:.0f} us/append")

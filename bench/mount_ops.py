#!/usr/bin/env python3
"""Small-file operations on a mounted directory, as DistFS's A/B runs use them.

  mount_ops.py DIR serial N        create / stat / open+read+close / unlink of N files,
                                   one at a time: p50 p90 p99 per operation
  mount_ops.py DIR parallel T N    T threads, N files each: create, open+read+close,
                                   unlink; ops/s per phase

Creates are O_CREAT|O_EXCL + a 4 KiB write + close (as fsbench.sh does). The page cache
is dropped (root) before every phase that reads. Output: one line per figure,
`phase metric value`.
"""
import os
import sys
import threading
import time


def drop():
    os.sync()
    try:
        with open('/proc/sys/vm/drop_caches', 'w') as f:
            f.write('3')
    except OSError:
        pass


def create(p):
    fd = os.open(p, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    os.write(fd, b'x' * 4096)
    os.close(fd)


def read(p):
    fd = os.open(p, os.O_RDONLY)
    os.read(fd, 8192)
    os.close(fd)


PHASES = [('create', create, False), ('stat', os.stat, True), ('read', read, True), ('unlink', os.unlink, True)]


def serial(d, n):
    os.makedirs(d, exist_ok=True)
    for name, op, cold in PHASES:
        if cold:
            drop()
        ts = []
        for i in range(n):
            t = time.perf_counter()
            op(f'{d}/f{i}')
            ts.append(time.perf_counter() - t)
        ts.sort()
        for q in (50, 90, 99):
            print(f'{name} p{q}_us {ts[min(len(ts) - 1, len(ts) * q // 100)] * 1e6:.0f}')
    os.rmdir(d)


def parallel(d, threads, n):
    for t in range(threads):
        os.makedirs(f'{d}/t{t}', exist_ok=True)
    for name, op, cold in PHASES:
        if name == 'stat':
            continue
        if cold:
            drop()

        def work(t):
            for i in range(n):
                op(f'{d}/t{t}/f{i}')

        ths = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
        t0 = time.perf_counter()
        for th in ths:
            th.start()
        for th in ths:
            th.join()
        print(f'{name}_x{threads} ops_per_s {threads * n / (time.perf_counter() - t0):.0f}')
    for t in range(threads):
        os.rmdir(f'{d}/t{t}')
    os.rmdir(d)


if __name__ == '__main__':
    if len(sys.argv) == 4 and sys.argv[2] == 'serial':
        serial(sys.argv[1], int(sys.argv[3]))
    elif len(sys.argv) == 5 and sys.argv[2] == 'parallel':
        parallel(sys.argv[1], int(sys.argv[3]), int(sys.argv[4]))
    else:
        sys.exit(__doc__)

#!/usr/bin/env python3
"""CPython's peer of examples/start_methods.rs: Pool start time, fork vs forkserver, for a small
parent and for a parent with GIB GiB resident (touched).

Usage: python3 benches/py/start_methods.py [GIB] [WORKERS] [REPS]   (default 4 16 5)

A pool start is Pool(WORKERS) plus a first map of one input per worker, timed until it returns;
the pool is terminated and joined outside the timing. The forkserver is started (by a first,
untimed pool) before the timed runs, as in the Rust example.
"""

import multiprocessing as mp
import statistics
import sys
import time


def echo(x):
    return x


def start_ms(ctx, workers):
    t = time.perf_counter()
    pool = ctx.Pool(workers)
    got = pool.map(echo, range(workers))
    ms = (time.perf_counter() - t) * 1e3
    assert got == list(range(workers))
    pool.terminate()
    pool.join()
    return ms


def row(label, workers, reps):
    fork = statistics.median(start_ms(mp.get_context("fork"), workers) for _ in range(reps))
    server = statistics.median(
        start_ms(mp.get_context("forkserver"), workers) for _ in range(reps)
    )
    print(f"| {label} | {workers} | {fork:.2f} | {server:.2f} | {server / fork:.2f} |")


def main():
    args = [int(a) for a in sys.argv[1:]]
    gib = args[0] if len(args) > 0 else 4
    workers = args[1] if len(args) > 1 else 16
    reps = args[2] if len(args) > 2 else 5
    t = time.perf_counter()
    start_ms(mp.get_context("forkserver"), 1)
    print(f"forkserver started (with a first 1-worker pool) in {(time.perf_counter() - t) * 1e3:.2f} ms")
    print("| parent (CPython 3.11) | workers | fork ms | forkserver ms | forkserver / fork |")
    print("|---|---|---|---|---|")
    row("small (no ballast)", workers, reps)
    ballast = bytearray(b"\x01") * (gib << 30)  # every page written
    row(f"{gib} GiB resident", workers, reps)
    del ballast


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""CPython peer of benches/chunked.rs: `Pool(2).map(sq, range(N))` with the default chunksize.

Usage:  python3 benches/py/chunked.py [N] [REPS]     (default 100000 20)

Prints one line to stdout: the median maps per second over REPS timed maps (after one warm-up),
as `{"name": "map_default_u64", "value": <inputs/s>}`. Start method fork, standard library only.
Every map's result is checked.
"""

import json
import multiprocessing
import statistics
import sys
import time


def sq(x):
    return x * x


def main(argv):
    n = int(argv[0]) if argv else 100_000
    reps = int(argv[1]) if len(argv) > 1 else 20
    want = sum(x * x for x in range(n))
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(2) as pool:
        pool.map(sq, range(100))
        times = []
        for i in range(reps + 1):
            t0 = time.perf_counter()
            r = pool.map(sq, range(n))
            t1 = time.perf_counter()
            if len(r) != n or sum(r) != want:
                raise SystemExit("chunked.py: wrong result")
            if i > 0:
                times.append(t1 - t0)
    print(json.dumps({"name": "map_default_u64", "value": n / statistics.median(times)}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

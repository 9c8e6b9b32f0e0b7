#!/usr/bin/env python3
"""CPython `multiprocessing` peer benchmarks for the `multiproc` crate.

Usage:  python3 benches/py/peer.py {foundation|pool|shm|scale|all} [--quick] [--cpu-iters N]

stdout: one JSON object per line, exactly
    {"group": str, "name": str, "value": float, "unit": str, "iters": int}
`value` is the median over the timed repetitions; `iters` is the number of
operations (items, tasks, round trips, ...) inside ONE timed repetition.
Everything else (per-repetition samples, calibration, progress) goes to stderr.

Standard library only.  Start method is always "fork".  Every measurement
verifies its result; any mismatch, child failure or timeout raises, and the
script exits non-zero.  See benches/py/README.md for exact definitions.
"""

import argparse
import json
import multiprocessing
import os
import random
import statistics
import sys
import time
import traceback
import zlib
from array import array
from multiprocessing import resource_tracker
from multiprocessing.shared_memory import SharedMemory

CTX = multiprocessing.get_context("fork")
MB = 1_000_000  # MB/s uses decimal megabytes (10^6 bytes)
MiB = 1 << 20
TIMEOUT = 60.0  # seconds; any blocking get/recv longer than this = failure
now = time.perf_counter


class BenchError(RuntimeError):
    pass


def check(cond, msg):
    if not cond:
        raise BenchError("CHECK FAILED: " + msg)


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def emit(group, name, value, unit, iters):
    value = float(value)
    check(value == value and value > 0, f"{name}: bad value {value!r}")
    print(json.dumps({"group": group, "name": name, "value": value,
                      "unit": unit, "iters": int(iters)}), flush=True)


def measure(name, sample, reps, warmup):
    """Run sample() warmup+reps times; sample returns elapsed seconds of its
    timed region (it does its own checks).  Returns the median elapsed time."""
    for _ in range(warmup):
        sample()
    ts = [sample() for _ in range(reps)]
    for t in ts:
        check(t > 0, f"{name}: non-positive elapsed time {t}")
    med = statistics.median(ts)
    log(f"  {name}: median {med * 1e3:.3f} ms  min {min(ts) * 1e3:.3f}  "
        f"max {max(ts) * 1e3:.3f}  (n={reps}, warmup={warmup})")
    return med


def join_ok(p, what):
    p.join(TIMEOUT)
    check(p.exitcode == 0, f"{what}: child exitcode {p.exitcode}")


def payload_bytes(n, seed):
    return random.Random(seed).randbytes(n)


# --------------------------------------------------------------------------
# Worker-side functions (module level: picklable by reference for Pool)

def noop():
    pass


def sq(x):
    return x * x


def arr_sum(a):
    return sum(a)


def echo(x):
    return x


def burn(n):
    """Pure-Python CPU work: deterministic in the number of loop iterations."""
    s = 0
    for i in range(n):
        s = (s + i * i) % 1000003
    return s


# --------------------------------------------------------------------------
# GROUP foundation

def _q_producer(q, ready, go, n):
    ready.set()
    if not go.wait(TIMEOUT):
        sys.exit(3)
    for i in range(n):
        q.put(i)
    q.close()
    q.join_thread()


def _q_big_producer(q, ready, go, payload, count):
    ready.set()
    if not go.wait(TIMEOUT):
        sys.exit(3)
    for _ in range(count):
        q.put(payload)
    q.close()
    q.join_thread()


def _q_consumer(q, res):
    res.put("ready")
    cnt = 0
    tot = 0
    while True:
        x = q.get(timeout=TIMEOUT)
        if x is None:
            break
        cnt += 1
        tot += x
    res.put((cnt, tot))


def group_foundation(cfg):
    G = "foundation"
    reps, warm = cfg.reps, cfg.warmup

    # process_start_join -------------------------------------------------
    k = 20 if cfg.quick else 200

    def s_proc():
        t0 = now()
        for _ in range(k):
            p = CTX.Process(target=noop)
            p.start()
            p.join()
            check(p.exitcode == 0, f"process_start_join: exitcode {p.exitcode}")
        return now() - t0

    t = measure("process_start_join", s_proc, reps, warm)
    emit(G, "process_start_join", t / k * 1e6, "us", k)

    # queue_small_1p1c ---------------------------------------------------
    n = 20_000 if cfg.quick else 200_000
    expect = n * (n - 1) // 2

    def s_1p1c():
        q = CTX.Queue()
        ready, go = CTX.Event(), CTX.Event()
        p = CTX.Process(target=_q_producer, args=(q, ready, go, n), daemon=True)
        p.start()
        check(ready.wait(TIMEOUT), "queue_small_1p1c: producer not ready")
        get = q.get
        tot = 0
        t0 = now()
        go.set()
        for _ in range(n):
            tot += get(timeout=TIMEOUT)
        t1 = now()
        check(tot == expect, f"queue_small_1p1c: sum {tot} != {expect}")
        join_ok(p, "queue_small_1p1c")
        q.close()
        return t1 - t0

    t = measure("queue_small_1p1c", s_1p1c, reps, warm)
    emit(G, "queue_small_1p1c", n / t, "items/s", n)

    # queue_small_1p4c ---------------------------------------------------
    ncons = 4

    def s_1p4c():
        q, res = CTX.Queue(), CTX.Queue()
        ps = [CTX.Process(target=_q_consumer, args=(q, res), daemon=True)
              for _ in range(ncons)]
        for p in ps:
            p.start()
        for _ in range(ncons):
            check(res.get(timeout=TIMEOUT) == "ready", "1p4c: bad ready msg")
        put = q.put
        t0 = now()
        for i in range(n):
            put(i)
        for _ in range(ncons):
            put(None)
        counts = [res.get(timeout=TIMEOUT) for _ in range(ncons)]
        t1 = now()
        c = sum(x[0] for x in counts)
        s = sum(x[1] for x in counts)
        check(c == n and s == expect,
              f"queue_small_1p4c: got count {c} sum {s}, want {n} {expect}")
        for p in ps:
            join_ok(p, "queue_small_1p4c")
        q.close()
        res.close()
        log(f"    1p4c per-consumer counts: {[x[0] for x in counts]}")
        return t1 - t0

    t = measure("queue_small_1p4c", s_1p4c, reps, warm)
    emit(G, "queue_small_1p4c", n / t, "items/s", n)

    # queue_1mib / queue_64mib ------------------------------------------
    for name, size, count in (
            ("queue_1mib", MiB, 20 if cfg.quick else 200),
            ("queue_64mib", 64 * MiB, 1 if cfg.quick else 4)):
        payload = payload_bytes(size, 1234)

        def s_big(size=size, count=count, payload=payload, name=name):
            q = CTX.Queue()
            ready, go = CTX.Event(), CTX.Event()
            p = CTX.Process(target=_q_big_producer,
                            args=(q, ready, go, payload, count), daemon=True)
            p.start()
            check(ready.wait(TIMEOUT), f"{name}: producer not ready")
            got = []
            t0 = now()
            go.set()
            for _ in range(count):
                got.append(q.get(timeout=TIMEOUT))
            t1 = now()
            check(all(x == payload for x in got), f"{name}: payload mismatch")
            del got
            join_ok(p, name)
            q.close()
            return t1 - t0

        t = measure(name, s_big, reps, warm)
        emit(G, name, size * count / MB / t, "MB/s", count)
        del payload


# --------------------------------------------------------------------------
# GROUP pool

def calibrate_burn(target_s=0.010):
    probe = 50_000
    burn(probe)
    ts = []
    for _ in range(7):
        t0 = now()
        burn(probe)
        ts.append(now() - t0)
    per_iter = min(ts) / probe  # min: least disturbed by other load
    return max(1000, int(round(target_s / per_iter, -3)))


def group_pool(cfg):
    G = "pool"
    reps, warm = cfg.reps, cfg.warmup

    # pool_start_map_join ------------------------------------------------
    want10 = [x * x for x in range(10)]

    def s_start():
        t0 = now()
        p = CTX.Pool(2)
        r = p.map(sq, range(10))
        p.close()
        p.join()
        t1 = now()
        check(r == want10, f"pool_start_map_join: bad result {r}")
        return t1 - t0

    k = 3 if cfg.quick else 11
    t = measure("pool_start_map_join", s_start, k, warm)
    emit(G, "pool_start_map_join", t * 1e3, "ms", 1)

    pool = CTX.Pool(2)
    try:
        pool.map(sq, range(100))  # both workers up

        # map_100k_default / map_100k_chunk1 -----------------------------
        n = 10_000 if cfg.quick else 100_000
        want = sum(x * x for x in range(n))
        for name, chunk, r_ in (("map_100k_default", None, reps),
                                ("map_100k_chunk1", 1, 3 if not cfg.quick else reps)):
            def s_map(chunk=chunk, name=name):
                t0 = now()
                r = pool.map(sq, range(n), chunk)
                t1 = now()
                check(len(r) == n and sum(r) == want, f"{name}: wrong result")
                return t1 - t0
            t = measure(name, s_map, r_, warm)
            emit(G, name, n / t, "tasks/s", n)

        # apply_latency --------------------------------------------------
        k = 200 if cfg.quick else 2000

        def s_apply():
            acc = 0
            t0 = now()
            for i in range(k):
                acc += pool.apply(sq, (i,))
            t1 = now()
            check(acc == sum(i * i for i in range(k)), "apply_latency: bad sum")
            return t1 - t0

        t = measure("apply_latency", s_apply, reps, warm)
        emit(G, "apply_latency", t / k * 1e6, "us", k)

        # array_80mb_sum / array_80mb_echo -------------------------------
        nd = 1_000_000 if cfg.quick else 10_000_000
        t0 = now()
        arr = array("d", range(nd))
        log(f"    built array('d') of {nd} in {now() - t0:.2f} s")
        nbytes = nd * arr.itemsize
        want_sum = float(nd * (nd - 1) // 2)  # exact: all partial sums < 2**53
        t0 = now()
        check(arr_sum(arr) == want_sum, "local sum mismatch")
        log(f"    (worker-side pure-Python sum(array) of {nd} doubles alone: "
            f"{(now() - t0) * 1e3:.1f} ms, included in array_80mb_sum)")

        def s_asum():
            t0 = now()
            s = pool.apply(arr_sum, (arr,))
            t1 = now()
            check(s == want_sum, f"array_80mb_sum: {s} != {want_sum}")
            return t1 - t0

        t = measure("array_80mb_sum", s_asum, reps, warm)
        emit(G, "array_80mb_sum", nbytes / MB / t, "MB/s", nd)

        ab = memoryview(arr).cast("B")

        def s_aecho():
            t0 = now()
            r = pool.apply(echo, (arr,))
            t1 = now()
            check(isinstance(r, array) and r.typecode == "d" and len(r) == nd
                  and memoryview(r).cast("B") == ab, "array_80mb_echo: mismatch")
            return t1 - t0

        t = measure("array_80mb_echo", s_aecho, reps, warm)
        emit(G, "array_80mb_echo", nbytes / MB / t, "MB/s", nd)
        ab.release()
        del arr
    finally:
        pool.terminate()
        pool.join()

    # cpu_200x10ms_p1 / _p2 / cpu_speedup --------------------------------
    iters = cfg.cpu_iters or calibrate_burn()
    t0 = now()
    want_v = burn(iters)
    log(f"    cpu task: burn({iters}) = {want_v}, takes {(now() - t0) * 1e3:.2f} ms here"
        + (" (fixed by --cpu-iters)" if cfg.cpu_iters else " (calibrated)"))
    emit(G, "cpu_task_loop_iters", iters, "loop_iters", 1)
    ntask = 20 if cfg.quick else 200
    p1, p2 = CTX.Pool(1), CTX.Pool(2)
    try:
        for p in (p1, p2):
            p.map(sq, range(10))

        def runner(pool, name):
            def s():
                t0 = now()
                r = pool.map(burn, [iters] * ntask, 1)
                t1 = now()
                check(len(r) == ntask and all(v == want_v for v in r),
                      f"{name}: wrong results")
                return t1 - t0
            return s

        s1, s2 = runner(p1, "cpu_200x10ms_p1"), runner(p2, "cpu_200x10ms_p2")
        s1(), s2()  # warm-up
        creps = 3
        t1s, t2s = [], []
        for _ in range(creps):  # interleave to share the machine's noise
            t1s.append(s1())
            t2s.append(s2())
        m1, m2 = statistics.median(t1s), statistics.median(t2s)
        log(f"  cpu p1 samples {['%.3f' % x for x in t1s]}  "
            f"p2 samples {['%.3f' % x for x in t2s]}")
    finally:
        for p in (p1, p2):
            p.terminate()
            p.join()
    emit(G, "cpu_200x10ms_p1", m1, "s", ntask)
    emit(G, "cpu_200x10ms_p2", m2, "s", ntask)
    emit(G, "cpu_speedup", m1 / m2, "ratio", ntask)


# --------------------------------------------------------------------------
# GROUP shm

def _shm_copy_worker(conn):
    """Receives (name, size); attaches, copies the whole segment out into a
    private bytes, acks; then sends crc32 of the copy for verification."""
    while True:
        msg = conn.recv()
        if msg is None:
            break
        name, size = msg
        sm = SharedMemory(name=name)
        data = bytes(sm.buf[:size])
        conn.send(len(data))  # ack: ends the timed region
        conn.send(zlib.crc32(data))
        del data
        sm.close()
        conn.send("closed")


def _shm_attach_worker(conn):
    """Receives (name, offset, k); k times: attach, read buf[offset], close.
    Time is measured in the worker around attach + one-byte read."""
    while True:
        msg = conn.recv()
        if msg is None:
            break
        name, off, k = msg
        tot = 0.0
        vals = set()
        for _ in range(k):
            t0 = now()
            sm = SharedMemory(name=name)
            b = sm.buf[off]
            t1 = now()
            tot += t1 - t0
            vals.add(b)
            sm.close()
        conn.send((tot, sorted(vals)))


def _bcast_worker(inq, ackq, wid, nd):
    """Receives ("pickle", array) or ("shm", name); checks length/endpoints,
    acks (ends the timed region), then on "verify" sends crc32 of the data."""
    while True:
        msg = inq.get(timeout=TIMEOUT)
        if msg is None:
            break
        kind, obj = msg
        if kind == "pickle":
            a = obj
            ok = (isinstance(a, array) and len(a) == nd and a[0] == 0.0
                  and a[-1] == nd - 1)
            ackq.put((wid, "ack", ok))
            check(inq.get(timeout=TIMEOUT) == "verify", "expected verify")
            c = zlib.crc32(memoryview(a).cast("B"))
            del a, obj
        else:  # shm
            sm = SharedMemory(name=obj)
            v = sm.buf.cast("d")  # zero-copy view (like np.ndarray(buffer=...))
            ok = len(v) >= nd and v[0] == 0.0 and v[nd - 1] == nd - 1
            ackq.put((wid, "ack", ok))
            check(inq.get(timeout=TIMEOUT) == "verify", "expected verify")
            c = zlib.crc32(sm.buf[:nd * 8])
            v.release()
            sm.close()
        ackq.put((wid, "crc", c))  # sent after the worker dropped the data


def group_shm(cfg):
    G = "shm"
    reps, warm = cfg.reps, cfg.warmup
    resource_tracker.ensure_running()  # start before forking: children share it

    # pool_apply_80mb ----------------------------------------------------
    nb = 8 * MB if cfg.quick else 80 * MB
    payload = payload_bytes(nb, 42)
    want_crc = zlib.crc32(payload)
    pool = CTX.Pool(2)
    try:
        pool.map(sq, range(10))

        def s_papply():
            t0 = now()
            r = pool.apply(echo, (payload,))
            t1 = now()
            check(r == payload, "pool_apply_80mb: echo mismatch")
            return t1 - t0

        t = measure("pool_apply_80mb", s_papply, reps, warm)
        emit(G, "pool_apply_80mb", nb / MB / t, "MB/s", 1)
    finally:
        pool.terminate()
        pool.join()

    # shared_memory_80mb -------------------------------------------------
    a, b = CTX.Pipe()
    w = CTX.Process(target=_shm_copy_worker, args=(b,), daemon=True)
    w.start()
    try:
        def s_shm():
            t0 = now()
            sm = SharedMemory(create=True, size=nb)
            sm.buf[:nb] = payload
            a.send((sm.name, nb))
            check(a.poll(TIMEOUT), "shared_memory_80mb: worker timeout")
            n = a.recv()
            t1 = now()
            check(n == nb, f"shared_memory_80mb: worker copied {n} bytes")
            check(a.poll(TIMEOUT) and a.recv() == want_crc,
                  "shared_memory_80mb: crc mismatch")
            check(a.poll(TIMEOUT) and a.recv() == "closed", "worker close")
            sm.close()
            sm.unlink()
            return t1 - t0

        k = reps if cfg.quick else 11
        t = measure("shared_memory_80mb", s_shm, k, warm)
        emit(G, "shared_memory_80mb", nb / MB / t, "MB/s", 1)
    finally:
        a.send(None)
        join_ok(w, "shm copy worker")

    # shared_memory_attach_1mb / _1gb ------------------------------------
    a, b = CTX.Pipe()
    w = CTX.Process(target=_shm_attach_worker, args=(b,), daemon=True)
    w.start()
    k = 20 if cfg.quick else 200
    try:
        for name, size in (("shared_memory_attach_1mb", MiB),
                           ("shared_memory_attach_1gb", 1 << 30)):
            sm = SharedMemory(create=True, size=size)  # sparse on tmpfs
            off = size // 2 + 123
            sm.buf[off] = 0xA5
            sm.buf[0] = 0x5A

            def s_att(sm=sm, off=off, name=name):
                a.send((sm.name, off, k))
                check(a.poll(TIMEOUT), f"{name}: worker timeout")
                tot, vals = a.recv()
                check(vals == [0xA5], f"{name}: read {vals}, want [0xA5]")
                return tot

            try:
                t = measure(name, s_att, reps, warm)
                emit(G, name, t / k * 1e6, "us", k)
            finally:
                sm.close()
                sm.unlink()
    finally:
        a.send(None)
        join_ok(w, "shm attach worker")

    del payload

    # bcast_pickle_10m / bcast_shm_10m / bcast_ratio ---------------------
    nd = 1_000_000 if cfg.quick else 10_000_000
    arr = array("d", range(nd))
    ab = memoryview(arr).cast("B")
    arr_crc = zlib.crc32(ab)
    nw = 2
    inqs = [CTX.Queue() for _ in range(nw)]
    ackq = CTX.Queue()
    ws = [CTX.Process(target=_bcast_worker, args=(inqs[i], ackq, i, nd),
                      daemon=True) for i in range(nw)]
    for x in ws:
        x.start()

    def expect_all(kind, tag):
        msgs = [ackq.get(timeout=TIMEOUT) for _ in range(nw)]
        check(sorted(m[0] for m in msgs) == list(range(nw))
              and all(m[1] == kind for m in msgs), f"{tag}: bad {kind} {msgs}")
        return [m[2] for m in msgs]

    def collect(tag):
        oks = expect_all("ack", tag)
        t1 = now()
        check(all(ok is True for ok in oks), f"{tag}: worker check failed")
        for q in inqs:
            q.put("verify")
        check(all(c == arr_crc for c in expect_all("crc", tag)),
              f"{tag}: crc mismatch")
        return t1

    def s_pickle():
        t0 = now()
        for q in inqs:
            q.put(("pickle", arr))
        return collect("bcast_pickle_10m") - t0

    def s_shm_b():
        t0 = now()
        sm = SharedMemory(create=True, size=nd * 8)
        sm.buf[:nd * 8] = ab
        for q in inqs:
            q.put(("shm", sm.name))
        t1 = collect("bcast_shm_10m")
        sm.close()
        sm.unlink()
        return t1 - t0

    try:
        for _ in range(warm):
            s_pickle()
            s_shm_b()
        tp, ts = [], []
        for _ in range(reps):  # interleaved
            tp.append(s_pickle())
            ts.append(s_shm_b())
        mp_, ms_ = statistics.median(tp), statistics.median(ts)
        log(f"  bcast pickle samples {['%.4f' % x for x in tp]}  "
            f"shm samples {['%.4f' % x for x in ts]}")
    finally:
        for q in inqs:
            q.put(None)
        for x in ws:
            join_ok(x, "bcast worker")
        ab.release()
    emit(G, "bcast_pickle_10m", mp_, "s", nd)
    emit(G, "bcast_shm_10m", ms_, "s", nd)
    emit(G, "bcast_ratio", mp_ / ms_, "ratio", nd)


# --------------------------------------------------------------------------
# GROUP scale: pools of 2/8/32/128 workers

SCALE_WORKERS = (2, 8, 32, 128)


def group_scale(cfg):
    """Per worker count: pool start (Pool(n) + a first map of n inputs, chunksize 1, so every
    worker answers once), per worker; then a map of 200k inputs, chunksize 1, on that pool."""
    G = "scale"
    n_map = 20_000 if cfg.quick else 200_000
    want = sum(x * x for x in range(n_map))
    reps = 3
    workers = cfg.workers or SCALE_WORKERS
    for w in workers:
        starts, maps = [], []
        for _ in range(reps):
            t0 = now()
            p = CTX.Pool(w)
            r = p.map(sq, range(w), 1)
            t1 = now()
            check(r == [x * x for x in range(w)], f"scale start {w}: bad result")
            starts.append(t1 - t0)
            t0 = now()
            r = p.map(sq, range(n_map), 1)
            t1 = now()
            check(len(r) == n_map and sum(r) == want, f"scale map {w}: wrong result")
            maps.append(t1 - t0)
            p.close()
            p.join()
        log(f"  scale w={w}: start {['%.1f ms' % (t * 1e3) for t in starts]}  "
            f"map {['%.0f/s' % (n_map / t) for t in maps]}")
        emit(G, f"scale_start_per_worker_w{w}", statistics.median(starts) / w * 1e3, "ms", w)
        emit(G, f"scale_map_200k_chunk1_w{w}", n_map / statistics.median(maps), "tasks/s", n_map)


# --------------------------------------------------------------------------

GROUPS = {"foundation": group_foundation, "pool": group_pool, "shm": group_shm,
          "scale": group_scale}


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("group", choices=sorted(GROUPS) + ["all"])
    ap.add_argument("--quick", action="store_true",
                    help="~10x fewer repetitions/smaller sizes (CI smoke)")
    ap.add_argument("--cpu-iters", type=int, default=0,
                    help="fix the loop count of the ~10 ms CPU task "
                         "(default: calibrate once at start-up)")
    ap.add_argument("--workers", type=int, nargs="*", default=None,
                    help="scale group: the worker counts (default 2 8 32 128)")
    cfg = ap.parse_args(argv)
    cfg.reps = 3 if cfg.quick else 5
    cfg.warmup = 1
    groups = sorted(set(GROUPS) - {"scale"}) if cfg.group == "all" else [cfg.group]
    for g in groups:
        log(f"[peer.py] group {g} (quick={cfg.quick}, pid {os.getpid()}, "
            f"python {sys.version.split()[0]}, start method fork, "
            f"loadavg {os.getloadavg()})")
        t0 = now()
        GROUPS[g](cfg)
        log(f"[peer.py] group {g} done in {now() - t0:.1f} s; "
            f"loadavg {os.getloadavg()} on {os.cpu_count()} cpus")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except Exception:
        traceback.print_exc()
        log("[peer.py] FAILED")
        sys.stdout.flush()
        for c in multiprocessing.active_children():
            c.terminate()
        os._exit(1)  # do not hang on non-daemon children/queue threads

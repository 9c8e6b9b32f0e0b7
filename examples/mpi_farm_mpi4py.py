"""The task farm of examples/mpi_farm.rs with mpi4py.futures.MPIPoolExecutor (static mode).

Run: mpirun -n 3 python3 -m mpi4py.futures examples/mpi_farm_mpi4py.py tiny 100000 [chunksize]
     mpirun -n 3 python3 -m mpi4py.futures examples/mpi_farm_mpi4py.py big 300
"""
import sys
import time

from mpi4py.futures import MPIPoolExecutor

MIB = 1 << 20


def tiny(x):
    return ((x * 2654435761) & 0xFFFFFFFFFFFFFFFF) >> 7


def byte_sum(b):
    return sum(b)


def main():
    kind = sys.argv[1] if len(sys.argv) > 1 else "tiny"
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 10000
    chunksize = int(sys.argv[3]) if len(sys.argv) > 3 else 1
    with MPIPoolExecutor() as ex:
        workers = ex.num_workers
        # Every rank up and answering before the clock starts (as the Rust twin does).
        list(ex.map(tiny, range(4 * workers)))
        if kind == "tiny":
            t = time.perf_counter()
            out = list(ex.map(tiny, range(n), chunksize=chunksize))
            secs = time.perf_counter() - t
            assert out == [tiny(x) for x in range(n)]
        else:
            inputs = [bytes([i % 251]) * MIB for i in range(n)]
            t = time.perf_counter()
            out = list(ex.map(len, inputs, chunksize=chunksize))
            secs = time.perf_counter() - t
            assert out == [MIB] * n
    print(f"mpi4py.futures {kind} (chunksize {chunksize}): {n} tasks on {workers} worker ranks "
          f"in {secs:.4f} s: {secs * 1e6 / n:.3f} us/task")


if __name__ == "__main__":
    main()

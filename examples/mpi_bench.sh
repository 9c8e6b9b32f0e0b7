#!/usr/bin/env bash
# The MPI benchmarks of docs/benchmarks.md in one command, side by side in one run:
# MpiPool (examples/mpi_farm.rs) against a raw rsmpi farm (the limit) and
# mpi4py.futures.MPIPoolExecutor (examples/mpi_farm_mpi4py.py), same ranks, interleaved,
# REPS repetitions; then the broadcast of examples/mpi_bcast.rs. Prints every run, then the
# medians and the ratios.
#
#   bash examples/mpi_bench.sh [REPS=3] [RANKS=3]
#
# Needs mpirun (OpenMPI) and `pip install mpi4py`. Run it alone: waiting ranks spin.
set -euo pipefail
REPS=${1:-3}
RANKS=${2:-3}
cd "$(dirname "$0")/.."
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
cargo build --release --features mpi --example mpi_farm --example mpi_bcast >&2
python3 -c 'import mpi4py.futures' || { echo "mpi4py is missing: pip install mpi4py" >&2; exit 1; }
M=(mpirun --timeout 300 --oversubscribe -n "$RANKS")
FARM=target/release/examples/mpi_farm
PY=(python3 -m mpi4py.futures examples/mpi_farm_mpi4py.py)
out=$(mktemp)
trap 'rm -f "$out"' EXIT
echo "load before: $(uptime)"
for rep in $(seq "$REPS"); do
  for a in "pool tiny 100000" "pool tiny 1000000" "pool1 tiny 20000" "raw tiny 100000" \
           "pool big 300" "pool1 big 300" "raw big 300"; do
    # shellcheck disable=SC2086
    "${M[@]}" "$FARM" $a | tee -a "$out"
  done
  "${M[@]}" "${PY[@]}" tiny 100000 12500 | tee -a "$out"
  "${M[@]}" "${PY[@]}" tiny 1000000 125000 | tee -a "$out"
  "${M[@]}" "${PY[@]}" tiny 20000 1 | tee -a "$out"
  "${M[@]}" "${PY[@]}" big 300 1 | tee -a "$out"
  "${M[@]}" target/release/examples/mpi_bcast | tee -a "$out"
done
echo "load after: $(uptime)"
python3 - "$out" <<'EOF'
import re, statistics, sys
runs = {}
for line in open(sys.argv[1]):
    m = re.match(r"(.+?): (\d+) tasks on \d+ worker ranks in [\d.]+ s: ([\d.]+) us/task", line)
    if m:
        runs.setdefault(f"{m.group(1)} n={m.group(2)}", []).append(float(m.group(3)))
    m = re.match(r"(Vec<f64>|PodVec<f64>).*: ([\d.]+) s", line)
    if m:
        runs.setdefault("bcast " + m.group(1), []).append(float(m.group(2)))
med = {k: statistics.median(v) for k, v in runs.items()}
print("\nmedian of %d runs (us/task; bcast: s):" % max(len(v) for v in runs.values()))
for k, v in runs.items():
    print(f"  {k:42} {med[k]:10.3f}   runs: {', '.join(f'{x:.3f}' for x in v)}")
def ratio(name, a, b):
    if a in med and b in med:
        per = [x / y for x, y in zip(runs[a], runs[b])]
        print(f"  {name:55} {med[a] / med[b]:6.2f}x  (per run: {', '.join(f'{r:.2f}' for r in per)})")
print("\nratios (time / time):")
ratio("1 MiB, MpiPool chunksize 1 / raw farm (goal <= 2)", "pool1 big n=300", "raw big n=300")
ratio("1 MiB, MpiPool default chunks / raw farm", "pool big n=300", "raw big n=300")
ratio("tiny 10^5, mpi4py chunks 12500 / MpiPool default (goal >= 10)",
      "mpi4py.futures tiny (chunksize 12500) n=100000", "pool tiny n=100000")
ratio("tiny 10^6, mpi4py chunks 125000 / MpiPool default (goal >= 10)",
      "mpi4py.futures tiny (chunksize 125000) n=1000000", "pool tiny n=1000000")
ratio("tiny, mpi4py chunksize 1 / MpiPool chunksize 1",
      "mpi4py.futures tiny (chunksize 1) n=20000", "pool1 tiny n=20000")
ratio("tiny, raw farm / MpiPool chunksize 1", "raw tiny n=100000", "pool1 tiny n=20000")
ratio("1 MiB, mpi4py chunksize 1 (len only) / MpiPool chunksize 1",
      "mpi4py.futures big (chunksize 1) n=300", "pool1 big n=300")
ratio("bcast Vec<f64> / PodVec<f64> (goal >= 2.9)", "bcast Vec<f64>", "bcast PodVec<f64>")
EOF

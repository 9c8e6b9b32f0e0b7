#!/usr/bin/env bash
# The whole test suite: what README.md names and .ci/run runs.
# Unit and integration tests run under nextest (one process per test) and again under the plain
# multi-threaded libtest harness, which is the harder case for code that forks; then doctests;
# then every example; then the benches are compiled (not run).
set -euo pipefail
cd "$(dirname "$0")/.."

# cargo-nextest: installed once when missing (as .ci/run does; a few minutes of compiling, see
# README.md). MULTIPROC_NO_NEXTEST_INSTALL=1 skips the install; without nextest the tests run
# under the plain harness only (the line after), which covers every test too.
if ! cargo nextest --version >/dev/null 2>&1 && [ -z "${MULTIPROC_NO_NEXTEST_INSTALL:-}" ]; then
  echo "== cargo-nextest is missing: installing it (once)"
  cargo install --locked cargo-nextest ||
    echo "WARNING: could not install cargo-nextest; running the tests under cargo test only" >&2
fi
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --release --no-fail-fast
else
  echo "== no cargo-nextest: skipping the nextest pass (cargo test below runs every test)"
fi
cargo test --release --lib --tests
cargo test --release --doc
for f in examples/*.rs; do
  ex=$(basename "$f" .rs)
  args=()
  case "$ex" in
    mmul) continue ;;                 # a batch binary that reads stdin; mmul_queue runs it
    mpi_*) continue ;;                # feature `mpi`, under mpirun: .ci/run's MPI step
    start_methods) args=(1 4 1) ;;    # a 1 GiB parent, 4 workers, 1 round (default: 4 GiB, 16, 5)
    threaded_parent) args=(10 500) ;; # 10 pools per method (default 100)
  esac
  echo "== example $ex ${args[*]}"
  timeout 300 cargo run --release --quiet --example "$ex" -- "${args[@]}"
done
# The multiproc command under SLURM, including the job that hits its time limit (~2-3 min);
# only where a SLURM node is up (.ci/run starts one), else it prints why it skipped.
MULTIPROC_SLURM_SLOW=1 cargo test --release --test slurm -- --nocapture
# Across two nodes (start.sh --nodes 2), with the two-node time-limit-then-resume case (~2 min).
MULTIPROC_SLURM_SLOW=1 cargo test --release --test slurm_multi -- --nocapture
cargo bench --no-run

#!/bin/bash
# A SLURM job script: multiply the matrices of many input files with a batch binary, one job per
# input, `mmul < inK > inK.out`, as many at once as the allocation has CPUs.
#
#   sbatch examples/slurm/mmul_job.sh                       # inputs listed in inputs.txt
#   sbatch --cpus-per-task=8 --export=ALL,INPUTS=list.txt examples/slurm/mmul_job.sh
#
# - `multiproc` picks `-j` from the allocation (SLURM_CPUS_PER_TASK here) and, with --verbose,
#   says so on stderr: "multiproc: 2 jobs at once (2 CPUs (SLURM_CPUS_PER_TASK)), ...". Each job
#   gets OMP_NUM_THREADS=MKL_NUM_THREADS=OPENBLAS_NUM_THREADS=CPUs/jobs, so a threaded BLAS in the
#   binary does not oversubscribe the allocation (`--threads-per-job K` for K threads each).
# - No shell runs the jobs: `--stdin {}` and `--stdout {}.out` do the redirections.
# - The joblog is written and flushed as each job ends. When the job hits its time limit, SLURM
#   sends SIGTERM: multiproc stops starting jobs, ends the running ones (their whole process
#   groups), and exits; the jobs it ended are not in the joblog. Submit the same script again and
#   `--resume` runs only what is left: no input is lost and none runs twice.
# - Exit status: 0 if every input succeeded, else the number that failed (at most 101).
#
# Build the binary first: `cargo build --release --example mmul` (it reads N and two N×N matrices
# as text on stdin and writes their product to stdout).
#
#SBATCH --job-name=mmul
#SBATCH --cpus-per-task=2
#SBATCH --time=0:10:00
#SBATCH --output=mmul-%j.log
set -euo pipefail

MULTIPROC="${MULTIPROC:-multiproc}"                     # the multiproc command
MMUL="${MMUL:-./target/release/examples/mmul}"          # the batch binary
INPUTS="${INPUTS:-inputs.txt}"                          # input files, one per line
JOBLOG="${JOBLOG:-mmul.joblog}"                         # kept across resubmissions

exec "$MULTIPROC" --verbose --joblog "$JOBLOG" --resume \
    --stdin {} --stdout {}.out "$MMUL" :::: "$INPUTS"

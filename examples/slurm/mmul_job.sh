#!/bin/bash
# A SLURM job farm: multiply the matrices of many input files with a batch binary, one job per
# input, `mmul < inK > inK.out`, one job per task of the allocation.
#
# From the root of a clone, with nothing built or prepared first:
#
#   sbatch examples/slurm/mmul_job.sh
#
# - It uses $MULTIPROC, else `multiproc` on PATH, else target/release/multiproc, and $MMUL, else
#   target/release/examples/mmul (a binary that reads N and two N×N matrices as text on stdin and
#   writes their product); what is missing is built first with `cargo build --release` (in the
#   job, so cargo must be on PATH; build beforehand to save the job's time).
# - Inputs: the files listed in $INPUTS (one per line), default inputs.txt; when that file does
#   not exist, 20 demo inputs are written to mmul-demo/ and listed in mmul-demo/inputs.txt.
#   Other inputs: `sbatch --export=ALL,INPUTS=list.txt examples/slurm/mmul_job.sh`.
# - Sizing: `--ntasks=2 --cpus-per-task=1` asks for 2 tasks of 1 CPU; in the batch script
#   multiproc runs one job per task on this node (SLURM_TASKS_PER_NODE) with SLURM_CPUS_PER_TASK
#   threads each (OMP/MKL/OPENBLAS_NUM_THREADS), and with --verbose says so on stderr:
#   "multiproc: 2 jobs at once (2 CPUs (SLURM_CPUS_ON_NODE); SLURM_TASKS_PER_NODE=2,
#   SLURM_CPUS_PER_TASK=1), 1 thread per job, ...". For a threaded binary ask for e.g.
#   `--ntasks=4 --cpus-per-task=8`: 4 jobs of 8 threads.
# - No shell runs the jobs: `--stdin {}` and `--stdout {}.out` do the redirections, and the
#   joblog's Command column reads `mmul < in1 > in1.out`, pasteable into a shell.
# - The joblog is written and flushed as each job ends. When the job hits its time limit, SLURM
#   sends SIGTERM: multiproc stops starting jobs, ends the running ones (their whole process
#   groups), and exits; the jobs it ended are not in the joblog. Submit the same script again and
#   `--resume` runs only what is left: no input is lost and none runs twice.
# - Exit status: 0 if every input succeeded, else the number that failed (at most 101).
#
#SBATCH --job-name=mmul
#SBATCH --ntasks=2
#SBATCH --cpus-per-task=1
#SBATCH --time=0:10:00
#SBATCH --output=mmul-%j.log
set -euo pipefail
cd "${SLURM_SUBMIT_DIR:-.}"

TARGET="${CARGO_TARGET_DIR:-target}"
INPUTS="${INPUTS:-inputs.txt}"                          # input files, one per line
JOBLOG="${JOBLOG:-mmul.joblog}"                         # kept across resubmissions

MULTIPROC="${MULTIPROC:-$(command -v multiproc || echo "$TARGET/release/multiproc")}"
MMUL="${MMUL:-$TARGET/release/examples/mmul}"
if [ ! -x "$MULTIPROC" ]; then
    echo "mmul_job: building multiproc ($MULTIPROC is missing)" >&2
    cargo build --release --quiet --bin multiproc
fi
if [ ! -x "$MMUL" ]; then
    echo "mmul_job: building the mmul example ($MMUL is missing)" >&2
    cargo build --release --quiet --example mmul
fi

if [ ! -e "$INPUTS" ]; then
    INPUTS=mmul-demo/inputs.txt
    if [ ! -e "$INPUTS" ]; then
        echo "mmul_job: no inputs.txt: writing 20 demo inputs to mmul-demo/" >&2
        mkdir -p mmul-demo
        awk 'BEGIN {
            srand(7); n = 40;
            for (f = 1; f <= 20; f++) {
                file = "mmul-demo/in" f; printf "%d\n", n > file;
                for (m = 0; m < 2; m++) for (i = 0; i < n; i++) {
                    line = ""; for (j = 0; j < n; j++) line = line sprintf("%.4f ", rand());
                    print line > file
                }
                close(file); print file > "mmul-demo/inputs.txt"
            }
        }'
    fi
fi

exec "$MULTIPROC" --verbose --joblog "$JOBLOG" --resume \
    --stdin {} --stdout {}.out "$MMUL" :::: "$INPUTS"

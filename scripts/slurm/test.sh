#!/usr/bin/env bash
# The multiproc command under a real (one-node) SLURM: see scripts/slurm/README.md to start one.
#
#   scripts/slurm/test.sh [--slow] [MULTIPROC_BIN]
#
#   1. sbatch --cpus-per-task=2 of examples/slurm/mmul_job.sh over 20 inputs with the mmul example
#      binary: multiproc must pick 2 jobs from SLURM_CPUS_PER_TASK and say so; every product is
#      right; the joblog has 20 successful lines.
#   2. srun -c 1 inside an sbatch job: 1 job at once, from SLURM_CPUS_PER_TASK, and
#      OMP_NUM_THREADS=1 in the jobs.
#   3. (--slow, or MULTIPROC_SLURM_SLOW=1; ~2-3 min) a job that hits its --time limit (SLURM's
#      minimum, 1 minute, enforced 60-90 s after the start): it must end TIMEOUT with some jobs
#      done; then `srun ... --resume` finishes the rest, and every input ran exactly once.
#
# Exits 0 and prints "SKIP: <reason>" when no SLURM node is up; 1 with "FAIL: ..." on a failure.
# MULTIPROC_BIN defaults to target/release/multiproc (built if missing); MMUL_BIN to the mmul
# example next to it (built if missing). Every wait is bounded.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
# shellcheck source=common.sh
. "$here/common.sh"

slow="${MULTIPROC_SLURM_SLOW:-0}"
if [ "${1:-}" = --slow ]; then
    slow=1
    shift
fi

skip() {
    # CI sets MULTIPROC_SLURM_REQUIRED=1 once it has started SLURM: then a skip is a failure.
    if [ "${MULTIPROC_SLURM_REQUIRED:-0}" = 1 ]; then
        echo "FAIL: SLURM is required here but: $*" >&2
        exit 1
    fi
    echo "SKIP: $*"
    exit 0
}
fail() {
    echo "FAIL: $*" >&2
    exit 1
}

command -v sbatch >/dev/null 2>&1 || skip "SLURM is not installed (scripts/slurm/install.sh)"
sinfo -h -o '%T' 2>/dev/null | grep -Eq 'idle|mixed|allocated' ||
    skip "no SLURM node is up (scripts/slurm/start.sh starts one)"
[ "$(nproc)" -ge 2 ] || skip "the tests ask for 2 CPUs; this machine has $(nproc)"

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}"
MP="${1:-${MULTIPROC_BIN:-$CARGO_TARGET_DIR/release/multiproc}}"
if [ ! -x "$MP" ]; then
    (cd "$root" && cargo build --release --quiet --bin multiproc)
fi
MMUL="${MMUL_BIN:-$(dirname "$MP")/examples/mmul}"
if [ ! -x "$MMUL" ]; then
    MMUL="$CARGO_TARGET_DIR/release/examples/mmul"
    [ -x "$MMUL" ] || (cd "$root" && cargo build --release --quiet --example mmul)
fi

work="$(mktemp -d /tmp/multiproc-slurm-test.XXXXXX)"
cleanup() {
    # Jobs still queued or running (a failed test) are cancelled.
    if [ -s "$work/submitted" ]; then
        while read -r j; do scancel "$j" 2>/dev/null || true; done <"$work/submitted"
    fi
    rm -rf "$work"
}
trap cleanup EXIT

job_gone() {
    local out
    if out="$(squeue -h -j "$1" 2>&1)"; then [ -z "$out" ]; else grep -q 'Invalid job id' <<<"$out"; fi
}
wait_job() {
    wait_until "$2" job_gone "$1" || {
        scancel "$1" 2>/dev/null || true
        fail "job $1 still queued/running after $2 s: $(squeue -h -j "$1" -o '%T %R' 2>&1)"
    }
}
job_field() { scontrol show job "$1" 2>/dev/null | tr ' ' '\n' | sed -n "s/^$2=//p" | head -n1; }
submit() { # submit NAME SBATCH-ARGS... : prints the job id
    local name="$1" id
    shift
    id="$(sbatch --parsable -J "multiproc-test-$name" -D "$work" "$@")" || fail "sbatch $* failed"
    echo "$id" >>"$work/submitted"
    echo "$id"
}
# rows LOG: the joblog's job lines.
rows() { tail -n +2 "$1"; }

# --- 1. sbatch --cpus-per-task=2 over 20 inputs ---------------------------------------------
N=40
awk -v n="$N" -v dir="$work" 'BEGIN {
    srand(7);
    for (f = 1; f <= 20; f++) {
        file = dir "/in" f; printf "%d\n", n > file;
        for (m = 0; m < 2; m++) for (i = 0; i < n; i++) {
            line = ""; for (j = 0; j < n; j++) line = line sprintf("%.4f ", rand()); print line > file
        }
        close(file); print file > (dir "/inputs.txt")
    }
}'
t0="$(now_ms)"
id="$(submit mmul --cpus-per-task=2 --time=0:05 -o "$work/mmul.log" \
    --export="ALL,MULTIPROC=$MP,MMUL=$MMUL,INPUTS=$work/inputs.txt,JOBLOG=$work/mmul.joblog" \
    "$root/examples/slurm/mmul_job.sh")"
wait_job "$id" 120
state="$(job_field "$id" JobState)"
[ "$state" = COMPLETED ] || fail "mmul job $id ended $state: $(cat "$work/mmul.log")"
grep -qF 'multiproc: 2 jobs at once (2 CPUs (SLURM_CPUS_PER_TASK))' "$work/mmul.log" ||
    fail "the job did not pick 2 jobs from SLURM_CPUS_PER_TASK: $(cat "$work/mmul.log")"
for f in $(seq 20); do
    "$MMUL" <"$work/in$f" | cmp -s - "$work/in$f.out" || fail "in$f.out is not the product"
done
[ "$(rows "$work/mmul.joblog" | wc -l)" -eq 20 ] || fail "joblog: $(cat "$work/mmul.joblog")"
[ "$(rows "$work/mmul.joblog" | awk -F'\t' '$7 == 0 && $8 == 0' | wc -l)" -eq 20 ] ||
    fail "joblog has failed jobs: $(cat "$work/mmul.joblog")"
echo "ok   sbatch --cpus-per-task=2: 20 mmul jobs, 2 at once from SLURM_CPUS_PER_TASK, $(($(now_ms) - t0)) ms"

# --- 2. srun -c 1 inside an sbatch job ---------------------------------------------------------
cat >"$work/step.sh" <<JOB
#!/bin/bash
srun --immediate=30 -n 1 -c 1 "$MP" -v --shell 'echo threads=\$OMP_NUM_THREADS {}' ::: a b
JOB
t0="$(now_ms)"
id="$(submit step --cpus-per-task=2 --time=0:05 -o "$work/step.log" "$work/step.sh")"
wait_job "$id" 120
grep -qF 'multiproc: 1 job at once (1 CPU (SLURM_CPUS_PER_TASK))' "$work/step.log" ||
    fail "srun -c 1: $(cat "$work/step.log")"
[ "$(grep -c '^threads=1 [ab]$' "$work/step.log")" -eq 2 ] || fail "srun -c 1 output: $(cat "$work/step.log")"
echo "ok   srun -c 1 inside sbatch: 1 job at once from SLURM_CPUS_PER_TASK, $(($(now_ms) - t0)) ms"

if [ "$slow" != 1 ]; then
    echo "skip time-limit test (~2-3 min): run with --slow or MULTIPROC_SLURM_SLOW=1"
    echo "test.sh: passed"
    exit 0
fi

# --- 3. a job that hits its time limit, then --resume -----------------------------------------
# 100 jobs of 2 s, 2 at once: 100 s of work, more than the 1-minute limit (enforced at 60-90 s).
mkdir "$work/out"
seq 100 >"$work/ids"
ARGS=(-v --joblog "$work/limit.joblog" --shell 'sleep 2; echo done >> out/{}' :::: "$work/ids")
CMD=("$MP" "${ARGS[@]}")
printf '#!/bin/bash\nexec' >"$work/limit.sh"
printf ' %q' "${CMD[@]}" >>"$work/limit.sh"
echo >>"$work/limit.sh"
t0="$(now_ms)"
id="$(submit limit --cpus-per-task=2 --time=0:01 -o "$work/limit.log" "$work/limit.sh")"
wait_job "$id" 180
state="$(job_field "$id" JobState)"
[ "$state" = TIMEOUT ] || fail "time-limit job $id ended $state: $(cat "$work/limit.log")"
done_before="$(rows "$work/limit.joblog" | wc -l)"
[ "$done_before" -gt 0 ] && [ "$done_before" -lt 100 ] || fail "$done_before jobs logged before the limit"
grep -q 'stopped by signal 15' "$work/limit.log" || fail "no clean stop on SIGTERM: $(cat "$work/limit.log")"
if pgrep -f "out/[0-9]" >/dev/null; then fail "job processes outlived the time limit: $(pgrep -af 'out/[0-9]')"; fi
echo "ok   --time limit: TIMEOUT after $(($(now_ms) - t0)) ms with $done_before/100 jobs done; runner stopped on SIGTERM"
t0="$(now_ms)"
srun --immediate=30 -n 1 -D "$work" -c 2 --time=0:05 "$MP" --resume "${ARGS[@]}" >"$work/resume.log" 2>&1 ||
    fail "--resume run failed: $(cat "$work/resume.log")"
[ "$(rows "$work/limit.joblog" | wc -l)" -eq 100 ] || fail "joblog has $(rows "$work/limit.joblog" | wc -l) lines"
[ "$(rows "$work/limit.joblog" | cut -f1 | sort -u | wc -l)" -eq 100 ] || fail "a seq is logged twice"
for k in $(seq 100); do
    n="$(wc -l <"$work/out/$k" 2>/dev/null || echo 0)"
    [ "$n" -eq 1 ] || fail "input $k ran $n times"
done
echo "ok   --resume after the limit: the other $((100 - done_before)) jobs ran, every input exactly once ($(($(now_ms) - t0)) ms)"
echo "test.sh: passed"

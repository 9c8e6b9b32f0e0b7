#!/usr/bin/env bash
# The multiproc command under a real (one-node) SLURM: see scripts/slurm/README.md to start one.
#
#   scripts/slurm/test.sh [--slow] [MULTIPROC_BIN]
#
#   1. `sbatch examples/slurm/mmul_job.sh` from the repository root, exactly as the example says
#      (--ntasks=2 --cpus-per-task=1, demo inputs): 2 jobs at once, one per task, and it says so;
#      every product is right; the joblog has 20 successful lines with pasteable commands.
#   1b. `sbatch -n 2 -c 1` (2 jobs x 1 thread) and `sbatch -n 1 -c 2` (1 job x 2 threads).
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
# shellcheck source=jobs.sh
. "$here/jobs.sh"
JOB_PREFIX=multiproc-test

parse_slow "$@"
shift "$shift_by"

command -v sbatch >/dev/null 2>&1 || skip "SLURM is not installed (scripts/slurm/install.sh)"
sinfo -h -o '%T' 2>/dev/null | grep -Eq 'idle|mixed|allocated' ||
    skip "no SLURM node is up (scripts/slurm/start.sh starts one)"
[ "$(nproc)" -ge 2 ] || skip "the tests ask for 2 CPUs; this machine has $(nproc)"

find_multiproc "$root" "${1:-}"
# The example finds $CARGO_TARGET_DIR/release/{multiproc,examples/mmul} or builds them; build the
# missing ones here so that the job does not (cargo inside a 2-CPU job is slow).
[ -x "$CARGO_TARGET_DIR/release/examples/mmul" ] || (cd "$root" && cargo build --release --quiet --example mmul)
[ -x "$CARGO_TARGET_DIR/release/multiproc" ] || (cd "$root" && cargo build --release --quiet --bin multiproc)

work="$(mktemp -d /tmp/multiproc-slurm-test.XXXXXX)"
own_example=0
cleanup() {
    # Jobs still queued or running (a failed test) are cancelled.
    if [ -s "$work/submitted" ]; then
        while read -r j; do
            scancel "$j" 2>/dev/null || true
            [ "$own_example" != 1 ] || rm -f "$root/mmul-$j.log"
        done <"$work/submitted"
    fi
    # What the example wrote into the clone (test 1 checked that none of it was there before).
    [ "$own_example" != 1 ] || rm -rf "$root/mmul-demo" "$root/mmul.joblog"
    rm -rf "$work"
}
trap cleanup EXIT

# rows LOG: the joblog's job lines.
rows() { tail -n +2 "$1"; }

# --- 1. examples/slurm/mmul_job.sh, run exactly as its comment says -------------------------
# "From the root of a clone: sbatch examples/slurm/mmul_job.sh" (it finds or builds multiproc
# and mmul, and writes 20 demo inputs to mmul-demo/ when there is no inputs.txt).
cd "$root"
for f in mmul-demo mmul.joblog inputs.txt; do
    [ ! -e "$f" ] || fail "$root/$f exists (left from an earlier run?): remove it, the example would use it"
done
own_example=1
t0="$(now_ms)"
id="$(sbatch --parsable examples/slurm/mmul_job.sh)" || fail "sbatch examples/slurm/mmul_job.sh failed"
echo "$id" >>"$work/submitted"
wait_job "$id" 300
log="$root/mmul-$id.log"
state="$(job_field "$id" JobState)"
[ "$state" = COMPLETED ] || fail "mmul job $id ended $state: $(cat "$log")"
grep -qF 'multiproc: 2 jobs at once (2 CPUs (SLURM_CPUS_ON_NODE); SLURM_TASKS_PER_NODE=2, SLURM_CPUS_PER_TASK=1), 1 thread per job' "$log" ||
    fail "the example did not run one job per task: $(cat "$log")"
MMUL="${MMUL_BIN:-$CARGO_TARGET_DIR/release/examples/mmul}"
for f in $(seq 20); do
    "$MMUL" <"mmul-demo/in$f" | cmp -s - "mmul-demo/in$f.out" || fail "mmul-demo/in$f.out is not the product"
done
[ "$(rows mmul.joblog | wc -l)" -eq 20 ] || fail "joblog: $(cat mmul.joblog)"
[ "$(rows mmul.joblog | awk -F'\t' '$7 == 0 && $8 == 0' | wc -l)" -eq 20 ] ||
    fail "joblog has failed jobs: $(cat mmul.joblog)"
rows mmul.joblog | cut -f9 | grep -qE '^[^ ]*release/examples/mmul < mmul-demo/in7 > mmul-demo/in7.out$' ||
    fail "joblog Command is not the pasteable command line: $(rows mmul.joblog | cut -f9 | head -3)"
echo "ok   sbatch examples/slurm/mmul_job.sh from the clone: 20 mmul jobs, 2 at once (one per task), $(($(now_ms) - t0)) ms"
cd "$work"

# --- 1b. the sizing rule in a batch script: -n 2 -c 1 and -n 1 -c 2 ---------------------------
t0="$(now_ms)"
id="$(submit n2c1 -n 2 -c 1 --time=0:05 -o "$work/n2c1.log" \
    --wrap "'$MP' -v sh -c 'echo job \$1 threads=\$OMP_NUM_THREADS' _ ::: 1 2 3 4")"
id2="$(submit n1c2 -n 1 -c 2 --time=0:05 -o "$work/n1c2.log" \
    --wrap "'$MP' -v sh -c 'echo job \$1 threads=\$OMP_NUM_THREADS' _ ::: 1 2 3 4")"
wait_job "$id" 120
wait_job "$id2" 120
grep -qF 'multiproc: 2 jobs at once (2 CPUs (SLURM_CPUS_ON_NODE); SLURM_TASKS_PER_NODE=2, SLURM_CPUS_PER_TASK=1), 1 thread per job' "$work/n2c1.log" ||
    fail "sbatch -n 2 -c 1: $(cat "$work/n2c1.log")"
[ "$(grep -c '^job [1-4] threads=1$' "$work/n2c1.log")" -eq 4 ] || fail "sbatch -n 2 -c 1 output: $(cat "$work/n2c1.log")"
grep -qF 'multiproc: 1 job at once (2 CPUs (SLURM_CPUS_ON_NODE); SLURM_TASKS_PER_NODE=1, SLURM_CPUS_PER_TASK=2), 2 threads per job' "$work/n1c2.log" ||
    fail "sbatch -n 1 -c 2: $(cat "$work/n1c2.log")"
[ "$(grep -c '^job [1-4] threads=2$' "$work/n1c2.log")" -eq 4 ] || fail "sbatch -n 1 -c 2 output: $(cat "$work/n1c2.log")"
echo "ok   sbatch -n 2 -c 1: 2 jobs x 1 thread; sbatch -n 1 -c 2: 1 job x 2 threads, $(($(now_ms) - t0)) ms"

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
# Up to 100 jobs of 2 s, 2 at once in the step: give it minutes (0:05 is 5 s, rounded up to 1 min).
srun --immediate=30 -n 1 -D "$work" -c 2 --time=5 "$MP" --resume "${ARGS[@]}" >"$work/resume.log" 2>&1 ||
    fail "--resume run failed: $(cat "$work/resume.log")"
[ "$(rows "$work/limit.joblog" | wc -l)" -eq 100 ] || fail "joblog has $(rows "$work/limit.joblog" | wc -l) lines"
[ "$(rows "$work/limit.joblog" | cut -f1 | sort -u | wc -l)" -eq 100 ] || fail "a seq is logged twice"
for k in $(seq 100); do
    n="$(wc -l <"$work/out/$k" 2>/dev/null || echo 0)"
    [ "$n" -eq 1 ] || fail "input $k ran $n times"
done
echo "ok   --resume after the limit: the other $((100 - done_before)) jobs ran, every input exactly once ($(($(now_ms) - t0)) ms)"
echo "test.sh: passed"

#!/usr/bin/env bash
# Smoke test of the test cluster started by start.sh. Prints measured times; exits non-zero on failure.
#   check.sh          everything, including two time-limit jobs (~80 s: SLURM's minimum limit is 1 min)
#   check.sh --quick  skip the time-limit jobs (~1 s)
# Every wait is bounded; jobs are polled with `squeue -h -j ID` every 0.1 s (sbatch --wait is 2-10 s late).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source-path=SCRIPTDIR source=common.sh
. "$here/common.sh"

quick=0
case "${1:-}" in
--quick) quick=1 ;;
"") ;;
*) die "usage: check.sh [--quick]" ;;
esac

work="$(mktemp -d /tmp/multiproc-slurm-check.XXXXXX)"
jobs_submitted=()
cleanup() {
    for j in "${jobs_submitted[@]}"; do scancel "$j" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT
fail() {
    echo "check.sh: FAIL: $*" >&2
    exit 1
}

# job_gone ID: true once squeue no longer lists the job as pending/running/completing.
job_gone() {
    local out
    if out="$(squeue -h -j "$1" 2>&1)"; then
        [ -z "$out" ]
    else
        # Purged after MinJobAge: "Invalid job id specified". Any other error: not known yet.
        grep -q 'Invalid job id' <<<"$out"
    fi
}
# wait_job ID LIMIT_SECONDS: poll every 0.1 s; fail on timeout (and cancel the job).
wait_job() {
    wait_until "$2" job_gone "$1" || {
        scancel "$1" 2>/dev/null || true
        fail "job $1 still queued/running after $2 s: $(squeue -h -j "$1" -o '%T %R' 2>&1)"
    }
}
job_field() { scontrol show job "$1" 2>/dev/null | tr ' ' '\n' | sed -n "s/^$2=//p" | head -n1; }

sinfo -h -o '%T' 2>/dev/null | grep -Eq 'idle|mixed|allocated' || fail "no usable node; run start.sh first"

# --- 1. srun -----------------------------------------------------------------------
times=()
for _ in 1 2 3 4 5; do
    t="$(now_ms)"
    srun --immediate=10 -c 1 true || fail "srun -c 1 true failed"
    times+=($(($(now_ms) - t)))
done
echo "ok   srun -c 1 true: ${times[*]} ms (5 runs)"

# --- 2. sbatch --cpus-per-task=2 ------------------------------------------------------
cat >"$work/cpus.sh" <<'JOB'
#!/bin/bash
echo "SLURM_CPUS_PER_TASK=${SLURM_CPUS_PER_TASK:-unset}"
echo "affinity=$(grep Cpus_allowed_list /proc/self/status | cut -f2)"
JOB
t="$(now_ms)"
id="$(sbatch --parsable --cpus-per-task=2 --time=0:01 -o "$work/cpus.out" "$work/cpus.sh")" || fail "sbatch failed"
jobs_submitted+=("$id")
wait_job "$id" 30
dt=$(($(now_ms) - t))
grep -qx 'SLURM_CPUS_PER_TASK=2' "$work/cpus.out" || fail "job $id output lacks SLURM_CPUS_PER_TASK=2: $(cat "$work/cpus.out")"
state="$(job_field "$id" JobState)"
[ "$state" = COMPLETED ] || fail "job $id state $state, want COMPLETED"
echo "ok   sbatch --cpus-per-task=2: SLURM_CPUS_PER_TASK=2, $(grep affinity "$work/cpus.out"), submit->gone ${dt} ms"

[ "$quick" -eq 1 ] && {
    echo "check.sh: passed (quick)"
    exit 0
}

# --- 3. time limits and signals -----------------------------------------------------
# The job logs every catchable signal it gets (bash runs traps between the 0.1 s sleeps) and never
# exits on its own: SLURM must end it. SIGKILL cannot be logged; its arrival is the end of the job.
cat >"$work/traps.sh" <<'JOB'
# Sourced: log each catchable signal as "ROLE sig NAME EPOCH_MS"; then loop forever.
echo "$who start $(date +%s%3N)"
for s in TERM USR1 USR2 CONT INT HUP XCPU ALRM; do
    trap "echo $who sig $s \$(date +%s%3N)" "$s"
done
JOB
cat >"$work/sig.sh" <<JOB
#!/bin/bash
who="\${1:-batch}"
. "$work/traps.sh"
while true; do sleep 0.1; done
JOB
chmod +x "$work/sig.sh"
# Job A: a 10 s limit (rounded up?) with an early warning to the batch shell (B:).
# Job B: a 1 min limit with an early warning to the steps only (no B:). The batch shell logs too,
# and runs the step with srun in the background. (No other background children: with
# proctrack/linuxproc a child that outlives the batch shell is reparented to PID 1 and escapes
# the SIGKILL at the time limit; see README.md.)
cat >"$work/stepjob.sh" <<JOB
#!/bin/bash
who=batch
. "$work/traps.sh"
srun -c 1 "$work/sig.sh" step &
while true; do sleep 0.1; done
JOB
t_submit="$(now_ms)"
ida="$(sbatch --parsable -c 1 --time=0:0:10 --signal=B:USR1@30 -o "$work/a.out" "$work/sig.sh")"
jobs_submitted+=("$ida")
idb="$(sbatch --parsable -c 1 --time=0:01 --signal=USR1@30 -o "$work/b.out" "$work/stepjob.sh")"
jobs_submitted+=("$idb")
echo "info --time=0:0:10 gives TimeLimit=$(job_field "$ida" TimeLimit); --time=0:01 gives TimeLimit=$(job_field "$idb" TimeLimit)"
declare -A end_ms=()
deadline=$((SECONDS + 150))
while [ "${#end_ms[@]}" -lt 2 ]; do
    [ "$SECONDS" -lt "$deadline" ] || fail "time-limit jobs still running after 150 s"
    for j in "$ida" "$idb"; do
        if [ -z "${end_ms[$j]:-}" ] && job_gone "$j"; then end_ms[$j]="$(now_ms)"; fi
    done
    sleep 0.1
done

# report JOB OUTFILE: signal arrival times relative to the job's start line.
report() {
    local id="$1" out="$2" start
    start="$(awk '$2 == "start" { print $3; exit }' "$out")"
    [ -n "$start" ] || fail "job $id printed no start line: $(cat "$out")"
    echo "info job $id: state $(job_field "$id" JobState), limit $(job_field "$id" TimeLimit), queued $((start - t_submit)) ms after submit"
    awk -v s="$start" '$2 == "sig" { printf "info   %-5s got SIG%-4s at %7.1f s\n", $1, $3, ($4 - s) / 1000 }' "$out"
    grep -h 'CANCELLED' "$out" | sed 's/^/info   /' || true
    echo "info   gone from squeue at $(awk -v e="${end_ms[$id]}" -v s="$start" 'BEGIN { printf "%.1f", (e - s) / 1000 }') s"
}
report "$ida" "$work/a.out"
report "$idb" "$work/b.out"
for j in "$ida" "$idb"; do
    [ "$(job_field "$j" JobState)" = TIMEOUT ] || fail "job $j state $(job_field "$j" JobState), want TIMEOUT"
done
grep -q '^batch sig TERM' "$work/a.out" || fail "job $ida: batch shell got no SIGTERM"
grep -q '^batch sig USR1' "$work/a.out" || fail "job $ida: batch shell got no early SIGUSR1 (--signal=B:USR1@30)"
grep -q '^step sig USR1' "$work/b.out" || fail "job $idb: step got no early SIGUSR1 (--signal=USR1@30)"
echo "ok   time-limit jobs ended with TIMEOUT"
# Nothing of the jobs may survive them (bounded: the step's slurmstepd may still be reaping).
leftover() { pgrep -f "$work/" >/dev/null; }
if wait_until 10 eval '! leftover'; then
    echo "ok   no job process outlived its job"
else
    ps -o pid,ppid,stat,args -p "$(pgrep -d, -f "$work/")" >&2 || true
    for p in $(pgrep -f "$work/"); do kill -KILL "$p" 2>/dev/null || true; done
    fail "job processes outlived their job (killed them)"
fi
sinfo -h -o '%T' | grep -Eq 'idle|mixed' || fail "node not idle after the time-limit jobs: $(sinfo -h -o '%T %E')"
echo "check.sh: passed"

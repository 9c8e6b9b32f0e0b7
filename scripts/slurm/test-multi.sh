#!/usr/bin/env bash
# The multiproc command across two SLURM nodes (the two-node cluster of `start.sh --nodes 2`).
#
#   scripts/slurm/test-multi.sh [--slow] [MULTIPROC_BIN]
#
#   1. sbatch -N 2 -n 2 -c 1 of a script running multiproc over 40 inputs: jobs ran on both
#      nodes (the joblog's Host column; MULTIPROC_NODE and {host} in the jobs agree with it), {%} is per
#      node (1 here), every input exactly once, every output right.
#   2. The same with the agent on n2 SIGKILLed mid-run (once n2 has started 3 jobs): the run
#      completes on n1, the lost job runs again there (--retries 2), no input is lost or run
#      twice to completion, and no agent or job process is left behind.
#   3. (--slow, or MULTIPROC_SLURM_SLOW=1; ~2 min) a two-node job that hits its --time limit:
#      it ends TIMEOUT with jobs done on both nodes; then a one-node `srun ... --resume` (a run of
#      another size) runs the rest, and every input ran exactly once.
#
# Exits 0 and prints "SKIP: <reason>" when the two-node cluster is not up (a failure when
# MULTIPROC_SLURM_REQUIRED=1); 1 with "FAIL: ..." on a failure. Every wait is bounded.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
# shellcheck source=common.sh
. "$here/common.sh"
# shellcheck source=jobs.sh
. "$here/jobs.sh"
JOB_PREFIX=multiproc-multi

parse_slow "$@"
shift "$shift_by"

command -v sbatch >/dev/null 2>&1 || skip "SLURM is not installed (scripts/slurm/install.sh)"
export SLURM_CONF="$MULTI_BASE/slurm.conf"
[ -s "$SLURM_CONF" ] || skip "no two-node cluster ($SLURM_CONF missing; scripts/slurm/start.sh --nodes 2)"
up="$(sinfo -h -N -n n1,n2 -o '%N %T' 2>/dev/null | grep -Ec '^n[12] (idle|mixed|allocated)' || true)"
[ "$up" -eq 2 ] || skip "nodes n1 and n2 are not both up (scripts/slurm/start.sh --nodes 2)"

find_multiproc "$root" "${1:-}"

work="$(mktemp -d /tmp/multiproc-slurm-multi.XXXXXX)"
cleanup() {
    if [ -s "$work/submitted" ]; then
        while read -r j; do scancel "$j" 2>/dev/null || true; done <"$work/submitted"
    fi
    rm -rf "$work"
}
trap cleanup EXIT

rows() { tail -n +2 "$1"; }
# script FILE ARGS...: a batch script that runs multiproc ARGS (quoted) and reports its status.
script() {
    local f="$1"
    shift
    printf '#!/bin/bash\n' >"$f"
    printf '%q ' "$MP" "$@" >>"$f"
    printf '\necho "multiproc exit status $?"\n' >>"$f"
}
# check_outputs DIR N: out/K holds K*K, for every K in 1..N.
check_outputs() {
    for k in $(seq "$2"); do
        [ "$(cat "$1/out/$k" 2>/dev/null)" = "$((k * k))" ] || fail "out/$k is '$(cat "$1/out/$k" 2>/dev/null)', want $((k * k))"
    done
}
# agents_left JOBID: agent processes of that job still alive.
agents_left() { pgrep -f "multiproc __agent .*$1" || true; }

# --- 1. sbatch -N 2 -n 2 -c 1 over 40 inputs ----------------------------------------------------
mkdir -p "$work/t1/out"
script "$work/t1.sh" -v --joblog "$work/t1/run.log" --shell \
    'echo $(( {} * {} )) > out/{}; echo "job {} node $MULTIPROC_NODE host {host} slot {%}"' ::: $(seq 40)
t0="$(now_ms)"
id="$(submit t1 -N 2 -n 2 -c 1 --time=5 -D "$work/t1" -o "$work/t1/slurm.out" "$work/t1.sh")"
wait_job "$id" 120
log="$work/t1/run.log"
out="$work/t1/slurm.out"
grep -q 'multiproc exit status 0' "$out" || fail "t1: $(cat "$out")"
grep -qF 'multiproc: 2 nodes: n1 (1 CPU), n2 (1 CPU)' "$out" || fail "t1 did not run on 2 nodes: $(cat "$out")"
[ "$(rows "$log" | wc -l)" -eq 40 ] || fail "t1 joblog has $(rows "$log" | wc -l) lines: $(cat "$log")"
[ "$(rows "$log" | cut -f1 | sort -u | wc -l)" -eq 40 ] || fail "t1: a seq is logged twice"
[ "$(rows "$log" | awk -F'\t' '$7 == 0 && $8 == 0' | wc -l)" -eq 40 ] || fail "t1: failed jobs: $(cat "$log")"
n1="$(rows "$log" | awk -F'\t' '$2 == "n1"' | wc -l)"
n2="$(rows "$log" | awk -F'\t' '$2 == "n2"' | wc -l)"
[ "$n1" -gt 0 ] && [ "$n2" -gt 0 ] && [ $((n1 + n2)) -eq 40 ] || fail "t1 hosts: n1 $n1, n2 $n2: $(cut -f2 "$log" | sort | uniq -c)"
# Each job saw the node its joblog line names, and slot 1 (one CPU per node).
while IFS=$'\t' read -r seq host _; do
    grep -qx "job $seq node $host host $host slot 1" "$out" || fail "t1: job $seq logged on $host: $(grep "^job $seq " "$out")"
done < <(rows "$log")
check_outputs "$work/t1" 40
[ -z "$(agents_left "$id")" ] || fail "t1: agents left: $(agents_left "$id")"
echo "ok   sbatch -N 2 -n 2 -c 1: 40 jobs, n1 $n1 + n2 $n2, each once, outputs right, $(($(now_ms) - t0)) ms"

# --- 2. the agent on n2 SIGKILLed mid-run --------------------------------------------------------
mkdir -p "$work/t2/out" "$work/t2/started"
script "$work/t2.sh" -v --retries 2 --joblog "$work/t2/run.log" --shell \
    'touch started/{}.$MULTIPROC_NODE; sleep 0.2; echo $(( {} * {} )) > out/{}' ::: $(seq 40)
t0="$(now_ms)"
id="$(submit t2 -N 2 -n 2 -c 1 --time=5 -D "$work/t2" -o "$work/t2/slurm.out" "$work/t2.sh")"
n2_started() { [ "$(find "$work/t2/started" -name '*.n2' | wc -l)" -ge 3 ]; }
wait_until 60 n2_started || fail "t2: n2 never started 3 jobs: $(cat "$work/t2/slurm.out")"
victim=""
for p in $(pgrep -f 'multiproc __agent'); do
    # The agent itself, not one of its forked workers (same command line, parent an agent).
    ppid="$(awk '/^PPid:/ {print $2}' "/proc/$p/status" 2>/dev/null || echo 0)"
    if tr '\0' ' ' <"/proc/$ppid/cmdline" 2>/dev/null | grep -q '__agent'; then continue; fi
    if tr '\0' '\n' <"/proc/$p/environ" 2>/dev/null | grep -qx 'SLURMD_NODENAME=n2' &&
        tr '\0' '\n' <"/proc/$p/environ" 2>/dev/null | grep -qx "SLURM_JOB_ID=$id"; then
        victim="$p"
    fi
done
[ -n "$victim" ] || fail "t2: no agent process on n2 for job $id"
kill -KILL "$victim"
started_at_kill="$(find "$work/t2/started" -type f | wc -l)"
wait_job "$id" 120
log="$work/t2/run.log"
out="$work/t2/slurm.out"
grep -q 'multiproc exit status 0' "$out" || fail "t2: $(cat "$out")"
grep -q 'node n2: the agent is gone' "$out" || fail "t2: the loss of n2 was not noticed: $(cat "$out")"
[ "$started_at_kill" -lt 40 ] || fail "t2: the kill came after every job had started"
[ "$(rows "$log" | wc -l)" -eq 40 ] || fail "t2 joblog has $(rows "$log" | wc -l) lines: $(cat "$log")"
[ "$(rows "$log" | cut -f1 | sort -u | wc -l)" -eq 40 ] || fail "t2: a seq is logged twice"
[ "$(rows "$log" | awk -F'\t' '$7 == 0 && $8 == 0' | wc -l)" -eq 40 ] || fail "t2: failed jobs: $(cat "$log")"
n2="$(rows "$log" | awk -F'\t' '$2 == "n2"' | wc -l)"
[ "$n2" -ge 2 ] && [ "$n2" -lt 40 ] || fail "t2: $n2 jobs logged on n2"
check_outputs "$work/t2" 40
[ -z "$(agents_left "$id")" ] || fail "t2: agents left: $(agents_left "$id")"
if pgrep -f 'touch started/' >/dev/null; then fail "t2: job processes left behind"; fi
echo "ok   agent on n2 SIGKILLed after $started_at_kill/40 jobs started: the run completed on n1, every input once (n2 logged $n2), $(($(now_ms) - t0)) ms"

if [ "$slow" != 1 ]; then
    echo "skip two-node time-limit test (~2 min): run with --slow or MULTIPROC_SLURM_SLOW=1"
    echo "test-multi.sh: passed"
    exit 0
fi

# --- 3. a two-node job that hits its time limit, then a one-node --resume --------------------------
mkdir -p "$work/t3/out"
seq 100 >"$work/t3/ids"
ARGS=(-v --joblog "$work/t3/run.log" --shell 'sleep 2; echo done >> out/{}' :::: "$work/t3/ids")
script "$work/t3.sh" "${ARGS[@]}"
t0="$(now_ms)"
id="$(submit t3 -N 2 -n 2 -c 1 --time=0:01 -D "$work/t3" -o "$work/t3/slurm.out" "$work/t3.sh")"
wait_job "$id" 180
state="$(job_field "$id" JobState)"
[ "$state" = TIMEOUT ] || fail "t3: job $id ended $state: $(cat "$work/t3/slurm.out")"
log="$work/t3/run.log"
before="$(rows "$log" | wc -l)"
[ "$before" -gt 0 ] && [ "$before" -lt 100 ] || fail "t3: $before jobs logged before the limit"
for h in n1 n2; do
    rows "$log" | awk -F'\t' -v h="$h" '$2 == h' | grep -q . || fail "t3: no job logged on $h"
done
[ -z "$(agents_left "$id")" ] || fail "t3: agents outlived the time limit: $(agents_left "$id")"
if pgrep -f 'echo done >> out/' >/dev/null; then fail "t3: job processes outlived the time limit"; fi
echo "ok   two-node --time limit: TIMEOUT after $(($(now_ms) - t0)) ms with $before/100 jobs logged on n1 and n2"
t0="$(now_ms)"
srun --immediate=30 -N 1 -n 1 -c 1 -D "$work/t3" --time=5 "$MP" --resume "${ARGS[@]}" >"$work/t3/resume.log" 2>&1 ||
    fail "t3: --resume run failed: $(cat "$work/t3/resume.log")"
[ "$(rows "$log" | wc -l)" -eq 100 ] || fail "t3: joblog has $(rows "$log" | wc -l) lines"
[ "$(rows "$log" | cut -f1 | sort -u | wc -l)" -eq 100 ] || fail "t3: a seq is logged twice"
for k in $(seq 100); do
    n="$(wc -l <"$work/t3/out/$k" 2>/dev/null || echo 0)"
    [ "$n" -eq 1 ] || fail "t3: input $k ran $n times; its joblog lines: $(awk -F'\t' -v k="$k" '$1 == k' "$log"); the run's output: $(cat "$work/t3/slurm.out")"
done
echo "ok   one-node --resume after the two-node limit: the other $((100 - before)) ran, every input exactly once ($(($(now_ms) - t0)) ms)"
echo "test-multi.sh: passed"

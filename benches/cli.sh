#!/usr/bin/env bash
# Per-job overhead of the `multiproc` command against GNU parallel and `xargs -P`, side by side in
# one run on the same inputs:
#   1. N_TRUE runs of `true` (default 2000): the job itself costs only its fork+exec;
#   2. N_MMUL runs of the mmul example binary (default 200), `mmul < inK > inK.out`, on small
#      matrices (MMUL_N, default 60), so that the runner's overhead still shows.
# Every tool runs once per round, REPS rounds (default 3), interleaved so that load changes on a
# shared machine hit all alike; the table shows the best and median wall time and the best CPU
# time (user+sys of the runner and all it waited for: workers, jobs), per run and per job.
#
#   benches/cli.sh                      # builds what it needs (release), prints the table
#   JOBS=2 N_TRUE=2000 N_MMUL=200 REPS=5 benches/cli.sh
set -euo pipefail
cd "$(dirname "$0")/.."

JOBS="${JOBS:-2}"
N_TRUE="${N_TRUE:-2000}"
N_MMUL="${N_MMUL:-200}"
MMUL_N="${MMUL_N:-60}"
REPS="${REPS:-3}"

command -v parallel >/dev/null || { echo "cli.sh: GNU parallel not found (apt-get install -y parallel)" >&2; exit 1; }
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
cargo build --release --quiet --bin multiproc --example mmul
MP="$CARGO_TARGET_DIR/release/multiproc"
MMUL="$CARGO_TARGET_DIR/release/examples/mmul"

work="$(mktemp -d /tmp/multiproc-bench.XXXXXX)"
trap 'rm -rf "$work"' EXIT
seq "$N_TRUE" >"$work/true.in"
# mmul inputs: N, then two N×N matrices.
awk -v n="$MMUL_N" -v k="$N_MMUL" -v dir="$work" 'BEGIN {
    srand(1);
    for (f = 1; f <= k; f++) {
        file = dir "/in" f; printf "%d\n", n > file;
        for (m = 0; m < 2; m++) for (i = 0; i < n; i++) {
            line = ""; for (j = 0; j < n; j++) line = line sprintf("%.6f ", rand()); print line > file
        }
        close(file); print file > (dir "/mmul.in")
    }
}'

# One measurement: wall and CPU (user+sys of the runner and everything it waited for) in seconds.
measure() {
    rm -f "$work"/in*.out
    /usr/bin/time -f "%e %U %S" -o "$work/time" "$@" >/dev/null 2>&1 || { echo "cli.sh: failed: $*" >&2; exit 1; }
    awk '{ printf "%s %.3f\n", $1, $2 + $3 }' "$work/time"
}
TOOLS=(mp_true par_true xargs_true serial_true mp_mmul par_mmul xargs_mmul serial_mmul)
run_tool() {
    case "$1" in
    mp_true) measure "$MP" -j "$JOBS" true :::: "$work/true.in" ;;
    par_true) measure parallel -j "$JOBS" true :::: "$work/true.in" ;;
    xargs_true) measure xargs -a "$work/true.in" -P "$JOBS" -n 1 true ;;
    serial_true) measure sh -c "while read -r x; do /bin/true; done < $work/true.in" ;;
    mp_mmul) measure "$MP" -j "$JOBS" --stdin {} --stdout {}.out "$MMUL" :::: "$work/mmul.in" ;;
    par_mmul) measure parallel -j "$JOBS" "$MMUL < {} > {}.out" :::: "$work/mmul.in" ;;
    xargs_mmul) measure xargs -a "$work/mmul.in" -P "$JOBS" -I{} sh -c "$MMUL < {} > {}.out" ;;
    serial_mmul) measure sh -c "while read -r f; do $MMUL < \$f > \$f.out; done < $work/mmul.in" ;;
    esac
}
# Round-robin: each repetition runs every tool once, so load changes on the shared machine hit
# all of them alike.
for rep in $(seq "$REPS"); do
    for t in "${TOOLS[@]}"; do run_tool "$t" >>"$work/$t.times"; done
done
# stats TOOL: "best_wall median_wall best_cpu"
stats() {
    local cpu
    cpu="$(sort -n -k2 "$work/$1.times" | head -n1 | cut -d' ' -f2)"
    sort -n "$work/$1.times" | awk -v c="$cpu" '{ w[NR] = $1 } END {
        printf "%.3f %.3f %.3f", w[1], w[int((NR + 1) / 2)], c }'
}
declare -A R
for t in "${TOOLS[@]}"; do R[$t]="$(stats "$t")"; done

row() { # row LABEL N "best median cpu"
    local label="$1" n="$2" best med cpu
    read -r best med cpu <<<"$3"
    awk -v l="$label" -v n="$n" -v b="$best" -v m="$med" -v c="$cpu" \
        'BEGIN { printf "| %-34s | %8.3f | %8.3f | %8.0f | %8.0f |\n", l, b, m, b / n * 1e6, c / n * 1e6 }'
}
echo "multiproc command benchmark: -j $JOBS, $REPS rounds (tools interleaved), $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg), $(parallel --version | head -n1)"
echo
echo "| workload | best wall (s) | median wall (s) | wall µs/job | CPU µs/job |"
echo "|---|---|---|---|---|"
row "$N_TRUE × true: multiproc" "$N_TRUE" "${R[mp_true]}"
row "$N_TRUE × true: GNU parallel" "$N_TRUE" "${R[par_true]}"
row "$N_TRUE × true: xargs -P" "$N_TRUE" "${R[xargs_true]}"
row "$N_TRUE × true: sh loop, serial" "$N_TRUE" "${R[serial_true]}"
row "$N_MMUL × mmul ${MMUL_N}²: multiproc" "$N_MMUL" "${R[mp_mmul]}"
row "$N_MMUL × mmul ${MMUL_N}²: GNU parallel" "$N_MMUL" "${R[par_mmul]}"
row "$N_MMUL × mmul ${MMUL_N}²: xargs -P sh -c" "$N_MMUL" "${R[xargs_mmul]}"
row "$N_MMUL × mmul ${MMUL_N}²: sh loop, serial" "$N_MMUL" "${R[serial_mmul]}"
echo
# Per-job overhead against xargs -P at the same -j (the leanest parallel runner: C, one
# fork+exec per job, no capture, no log): CPU and wall per job beyond xargs's.
val() { # val TOOL FIELD(1 best wall, 3 best cpu)
    cut -d' ' -f"$2" <<<"${R[$1]}"
}
awk -v nt="$N_TRUE" -v nm="$N_MMUL" \
    -v mtc="$(val mp_true 3)" -v ptc="$(val par_true 3)" -v xtc="$(val xargs_true 3)" \
    -v mtw="$(val mp_true 1)" -v ptw="$(val par_true 1)" -v xtw="$(val xargs_true 1)" \
    -v mmc="$(val mp_mmul 3)" -v pmc="$(val par_mmul 3)" -v xmc="$(val xargs_mmul 3)" \
    -v mmw="$(val mp_mmul 1)" -v pmw="$(val par_mmul 1)" -v xmw="$(val xargs_mmul 1)" '
function us(x, n) { return x / n * 1e6 }
BEGIN {
    printf "per-job overhead beyond xargs -P (CPU; wall):\n"
    printf "  true: multiproc %+.0f µs; %+.0f µs   GNU parallel %+.0f µs; %+.0f µs\n", us(mtc - xtc, nt), us(mtw - xtw, nt), us(ptc - xtc, nt), us(ptw - xtw, nt)
    printf "  mmul: multiproc %+.0f µs; %+.0f µs   GNU parallel %+.0f µs; %+.0f µs   (xargs runs sh -c for the redirections)\n", us(mmc - xmc, nm), us(mmw - xmw, nm), us(pmc - xmc, nm), us(pmw - xmw, nm)
    printf "per-job wall time, GNU parallel / multiproc: true %.1fx, mmul %.1fx\n", ptw / mtw, pmw / mmw
}'

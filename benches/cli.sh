#!/usr/bin/env bash
# Per-job overhead of the `multiproc` command against GNU parallel and `xargs -P`, side by side in
# one run on the same inputs:
#   1. N_TRUE runs of `true` (default 2000): the wall time per job is nearly all runner overhead;
#   2. N_MMUL runs of the mmul example binary (default 200), `mmul < inK > inK.out`, on small
#      matrices (MMUL_N, default 60), so that the runner's overhead still shows.
# Each tool runs REPS times (default 3); the table shows the best and the median wall time.
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

now_ns() { date +%s%N; }
# time_it OUTVAR CMD...: best and median seconds over REPS runs, as "best median".
time_it() {
    local -n out=$1
    shift
    local ts=()
    for _ in $(seq "$REPS"); do
        rm -f "$work"/in*.out
        local t0
        t0=$(now_ns)
        "$@" >/dev/null 2>&1 || { echo "cli.sh: failed: $*" >&2; exit 1; }
        ts+=($(($(now_ns) - t0)))
    done
    out="$(printf '%s\n' "${ts[@]}" | sort -n | awk '{ a[NR] = $1 } END { printf "%.3f %.3f", a[1] / 1e9, a[int((NR + 1) / 2)] / 1e9 }')"
}

declare -A R
run_true() {
    time_it R[mp_true] "$MP" -j "$JOBS" true :::: "$work/true.in"
    time_it R[par_true] parallel -j "$JOBS" true :::: "$work/true.in"
    time_it R[xargs_true] xargs -a "$work/true.in" -P "$JOBS" -n 1 true
}
run_mmul() {
    time_it R[mp_mmul] "$MP" -j "$JOBS" --stdin {} --stdout {}.out "$MMUL" :::: "$work/mmul.in"
    time_it R[par_mmul] parallel -j "$JOBS" "$MMUL < {} > {}.out" :::: "$work/mmul.in"
    time_it R[xargs_mmul] xargs -a "$work/mmul.in" -P "$JOBS" -I{} sh -c "$MMUL < {} > {}.out"
    # The binary alone, one after another: the work itself, for reference.
    time_it R[serial_mmul] sh -c "while read -r f; do $MMUL < \$f > \$f.out; done < $work/mmul.in"
}
run_true
run_mmul

row() { # row LABEL N "best median"
    local label="$1" n="$2" best med
    read -r best med <<<"$3"
    awk -v l="$label" -v n="$n" -v b="$best" -v m="$med" \
        'BEGIN { printf "| %-36s | %8.3f | %8.3f | %10.0f |\n", l, b, m, b / n * 1e6 }'
}
echo "multiproc command benchmark: -j $JOBS, best and median of $REPS runs, $(nproc) CPUs, $(parallel --version | head -n1)"
echo
echo "| workload                             | best (s) | median (s) | µs per job (best) |"
echo "|--------------------------------------|----------|----------|------------|"
row "$N_TRUE × true: multiproc" "$N_TRUE" "${R[mp_true]}"
row "$N_TRUE × true: GNU parallel" "$N_TRUE" "${R[par_true]}"
row "$N_TRUE × true: xargs -P" "$N_TRUE" "${R[xargs_true]}"
row "$N_MMUL × mmul ${MMUL_N}²: multiproc" "$N_MMUL" "${R[mp_mmul]}"
row "$N_MMUL × mmul ${MMUL_N}²: GNU parallel" "$N_MMUL" "${R[par_mmul]}"
row "$N_MMUL × mmul ${MMUL_N}²: xargs -P (sh -c)" "$N_MMUL" "${R[xargs_mmul]}"
row "$N_MMUL × mmul ${MMUL_N}²: serial, no runner" "$N_MMUL" "${R[serial_mmul]}"
echo
# Overhead per job: wall time × jobs at once / N, minus the work (the serial time per job).
awk -v j="$JOBS" -v nt="$N_TRUE" -v nm="$N_MMUL" \
    -v mt="${R[mp_true]%% *}" -v pt="${R[par_true]%% *}" -v xt="${R[xargs_true]%% *}" \
    -v mm="${R[mp_mmul]%% *}" -v pm="${R[par_mmul]%% *}" -v xm="${R[xargs_mmul]%% *}" -v sm="${R[serial_mmul]%% *}" '
BEGIN {
    w = sm / nm
    printf "per-job overhead (wall × %d / N, mmul minus its serial time per job):\n", j
    printf "  true: multiproc %.0f µs, GNU parallel %.0f µs (%.1fx), xargs -P %.0f µs\n", mt*j/nt*1e6, pt*j/nt*1e6, pt/mt, xt*j/nt*1e6
    printf "  mmul: multiproc %.0f µs, GNU parallel %.0f µs (%.1fx), xargs -P sh -c %.0f µs\n", (mm*j/nm-w)*1e6, (pm*j/nm-w)*1e6, (pm*j/nm-w)/(mm*j/nm-w), (xm*j/nm-w)*1e6
}'

#!/usr/bin/env bash
# The multiproc command at scale (issue 17 §4), side by side in one run:
#   1. N_TRUE (default 100000) jobs of `true`: multiproc, `xargs -P`, and GNU parallel (N_PAR
#      jobs, default N_TRUE: at ~4-10 ms per job it takes 7-17 minutes a round for 100k on a
#      2-core machine); wall and CPU (user+sys of the runner and all it waited for) per job, and
#      each runner's peak RSS.
#   2. multiproc's peak RSS (and time per job) at 1k, 10k and N_TRUE jobs, with --joblog and -k:
#      flat memory means nothing is kept per job; flat time per job means the joblog costs O(1).
#   3. From start to the first new job with --resume / --resume-failed over a LOG_LINES-line
#      (default 1000000) joblog and LOG_LINES+10 inputs, against the same run with no joblog (the
#      floor: starting the runner and the job). The job prints `date +%s%N`.
# Every measurement runs REPS times (default 3), rounds interleaved so that load changes on a
# shared machine hit all alike; the table gives the best and the median.
#
#   benches/cli_scale.sh                                # the run in docs/benchmarks.md
#   JOBS=2 N_TRUE=100000 N_PAR=10000 LOG_LINES=1000000 REPS=3 benches/cli_scale.sh
set -euo pipefail
cd "$(dirname "$0")/.."

JOBS="${JOBS:-2}"
N_TRUE="${N_TRUE:-100000}"
N_PAR="${N_PAR:-$N_TRUE}"
LOG_LINES="${LOG_LINES:-1000000}"
REPS="${REPS:-3}"

command -v parallel >/dev/null || { echo "cli_scale.sh: GNU parallel not found (apt-get install -y parallel)" >&2; exit 1; }
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
cargo build --release --quiet -p multiproc-cli --bin multiproc
work="$(mktemp -d /tmp/multiproc-scale.XXXXXX)"
trap 'rm -rf "$work"' EXIT
# A copy: a rebuild while the benchmark runs does not change what it measures.
cp "$CARGO_TARGET_DIR/release/multiproc" "$work/multiproc"
MP="$work/multiproc"
load() { cut -d' ' -f1-3 /proc/loadavg; }
echo "multiproc at scale: -j $JOBS, $REPS rounds, $(nproc) CPUs, load at start $(load), $(parallel --version | head -n1)"

seq "$N_TRUE" >"$work/true.in"
seq "$N_PAR" >"$work/par.in"
seq 1000 >"$work/1k.in"
seq 10000 >"$work/10k.in"
# A joblog of LOG_LINES finished jobs, as a run of -j 2 writes it (pairs finishing out of order),
# one in 1000 failed; the input has 10 jobs more.
awk -v n="$LOG_LINES" 'BEGIN {
    print "Seq\tHost\tStarttime\tJobRuntime\tSend\tReceive\tExitval\tSignal\tCommand"
    for (i = 1; i <= n; i += 2) {
        for (k = 1; k >= 0; k--) { s = i + k; if (s > n) continue
            printf "%d\t:\t1795319212.%03d\t     0.002\t0\t0\t%d\t0\tsh -c '\''date +%%s%%N'\'' %d\n", s, s % 1000, (s % 1000 == 0), s }
    }
}' >"$work/log.base"
seq $((LOG_LINES + 10)) >"$work/resume.in"
seq 10 >"$work/floor.in"

# measure OUT CMD...: appends "wall cpu maxrss_kB" of one run to OUT.
measure() {
    local out="$1"
    shift
    /usr/bin/time -f "%e %U %S %M" -o "$work/time" "$@" >/dev/null 2>"$work/err" || {
        echo "cli_scale.sh: failed: $*" >&2
        cat "$work/err" >&2
        exit 1
    }
    awk '{ printf "%s %.3f %s\n", $1, $2 + $3, $4 }' "$work/time" >>"$out"
}
# first_job OUT INPUT ARGS...: appends the ms from just before the start to the first job's `date`.
first_job() {
    local out="$1" input="$2"
    shift 2
    cp "$work/log.base" "$work/log"
    local t0
    t0="$(date +%s%N)"
    "$MP" "$@" -j "$JOBS" sh -c 'date +%s%N' :::: "$input" >"$work/first" 2>"$work/err" || {
        echo "cli_scale.sh: failed: $MP $*" >&2
        cat "$work/err" >&2
        exit 1
    }
    sort -n "$work/first" | head -n1 | awk -v t0="$t0" '{ printf "%.1f\n", ($1 - t0) / 1e6 }' >>"$out"
}

for rep in $(seq "$REPS"); do
    measure "$work/mp_true" "$MP" -j "$JOBS" true :::: "$work/true.in"
    measure "$work/xargs_true" xargs -a "$work/true.in" -P "$JOBS" -n 1 true
    measure "$work/par_true" parallel --will-cite -j "$JOBS" true :::: "$work/par.in"
    for n in 1k 10k; do
        rm -f "$work/jl"
        measure "$work/rss_$n" "$MP" -k --joblog "$work/jl" -j "$JOBS" true :::: "$work/$n.in"
    done
    rm -f "$work/jl"
    measure "$work/rss_big" "$MP" -k --joblog "$work/jl" -j "$JOBS" true :::: "$work/true.in"
    first_job "$work/first_resume" "$work/resume.in" --resume --joblog "$work/log"
    first_job "$work/first_failed" "$work/resume.in" --resume-failed --joblog "$work/log"
    first_job "$work/first_floor" "$work/floor.in"
done

# stats FILE COLUMN: "best median" of that column.
stats() {
    cut -d' ' -f"$2" "$1" | sort -n | awk '{ v[NR] = $1 } END { printf "%s %s", v[1], v[int((NR + 1) / 2)] }'
}
row() { # row LABEL FILE N
    local wb wm cb rb
    read -r wb wm <<<"$(stats "$2" 1)"
    read -r cb _ <<<"$(stats "$2" 2)"
    read -r rb _ <<<"$(stats "$2" 3)"
    awk -v l="$1" -v n="$3" -v wb="$wb" -v wm="$wm" -v cb="$cb" -v rb="$rb" \
        'BEGIN { printf "| %-36s | %8.2f | %8.2f | %6.0f | %6.0f | %7.1f |\n", l, wb, wm, wb / n * 1e6, cb / n * 1e6, rb / 1024 }'
}
echo
echo "| run | best wall (s) | median wall (s) | wall µs/job | CPU µs/job | peak RSS (MB) |"
echo "|---|---|---|---|---|---|"
row "$N_TRUE × true: multiproc" "$work/mp_true" "$N_TRUE"
row "$N_TRUE × true: xargs -P" "$work/xargs_true" "$N_TRUE"
row "$N_PAR × true: GNU parallel" "$work/par_true" "$N_PAR"
row "1000 × true: multiproc -k --joblog" "$work/rss_1k" 1000
row "10000 × true: multiproc -k --joblog" "$work/rss_10k" 10000
row "$N_TRUE × true: multiproc -k --joblog" "$work/rss_big" "$N_TRUE"
echo
best() { stats "$1" "$2" | cut -d' ' -f1; }
awk -v np="$N_PAR" -v m="$(best "$work/mp_true" 1)" -v x="$(best "$work/xargs_true" 1)" -v p="$(best "$work/par_true" 1)" \
    -v mc="$(best "$work/mp_true" 2)" -v xc="$(best "$work/xargs_true" 2)" -v pc="$(best "$work/par_true" 2)" \
    -v r1="$(best "$work/rss_1k" 3)" -v r2="$(best "$work/rss_10k" 3)" -v r3="$(best "$work/rss_big" 3)" -v n="$N_TRUE" 'BEGIN {
    printf "per-job wall: multiproc / xargs -P %.2fx, GNU parallel / multiproc %.2fx (CPU: %.2fx, %.2fx)\n", m / x, (p / np) / (m / n), mc / xc, (pc / np) / (mc / n)
    printf "peak RSS with -k --joblog: %d jobs / 1000 jobs %.2fx (10000: %.2fx)\n", n, r3 / r1, r2 / r1
}'
echo
echo "| first new job after start (ms) | best | median |"
echo "|---|---|---|"
for t in resume failed floor; do
    case "$t" in
    resume) label="--resume, $LOG_LINES-line joblog" ;;
    failed) label="--resume-failed, $LOG_LINES-line joblog" ;;
    floor) label="no joblog, 10 inputs (the floor)" ;;
    esac
    read -r b m <<<"$(stats "$work/first_$t" 1)"
    echo "| $label | $b | $m |"
done
echo
echo "load at end $(load)"

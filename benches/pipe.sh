#!/usr/bin/env bash
# --pipe throughput: a file of SIZE_MB (default 1024) of text lines through `wc -l`, side by side in
# one run, REPS rounds (default 3) interleaved: GNU parallel --pipe (stdin), GNU --pipepart -a,
# multiproc --pipe, multiproc --pipepart -a, and `wc -l` alone. Every tool must count the same
# lines. Block size BLOCK (default 1M), -j JOBS (default 2).
#
#   benches/pipe.sh                   # builds multiproc (release), prints the table
#   SIZE_MB=256 REPS=5 benches/pipe.sh
set -euo pipefail
cd "$(dirname "$0")/.."

SIZE_MB="${SIZE_MB:-1024}"
REPS="${REPS:-3}"
BLOCK="${BLOCK:-1M}"
JOBS="${JOBS:-2}"
command -v parallel >/dev/null || { echo "pipe.sh: GNU parallel not found (apt-get install -y parallel)" >&2; exit 1; }
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
cargo build --release --quiet --bin multiproc
MP="$CARGO_TARGET_DIR/release/multiproc"

work="$(mktemp -d "${TMPDIR:-/tmp}/multiproc-pipe.XXXXXX")"
trap 'rm -rf "$work"' EXIT
f="$work/lines.txt"
# Lines of 10-60 bytes until SIZE_MB.
awk -v mb="$SIZE_MB" 'BEGIN { srand(3); target = mb * 1048576; n = 0;
    while (n < target) { l = sprintf("%d %s", NR++, substr("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", 1, 1 + int(rand() * 50))); print l; n += length(l) + 1 } }' >"$f"
bytes="$(stat -c %s "$f")"
want="$(wc -l <"$f")"

measure() { # measure NAME CMD... : prints wall seconds; checks the line count
    local name="$1" t0 t1 got
    shift
    t0="$(date +%s.%N)"
    got="$("$@" | awk '{ s += $1 } END { print s }')"
    t1="$(date +%s.%N)"
    [ "$got" = "$want" ] || { echo "pipe.sh: $name counted $got lines, want $want" >&2; exit 1; }
    awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f\n", b - a }'
}
TOOLS=(wc gnu_pipe gnu_pipepart mp_pipe mp_pipepart)
run_tool() {
    case "$1" in
    wc) measure wc sh -c "wc -l < '$f'" ;;
    gnu_pipe) measure gnu_pipe sh -c "parallel --will-cite -j $JOBS --pipe --block $BLOCK wc -l < '$f'" ;;
    gnu_pipepart) measure gnu_pipepart parallel --will-cite -j "$JOBS" --pipepart -a "$f" --block "$BLOCK" wc -l ;;
    mp_pipe) measure mp_pipe sh -c "'$MP' -j $JOBS --pipe --block $BLOCK wc -l < '$f'" ;;
    mp_pipepart) measure mp_pipepart "$MP" -j "$JOBS" --pipepart -a "$f" --block "$BLOCK" wc -l ;;
    esac
}
for _ in $(seq "$REPS"); do
    for t in "${TOOLS[@]}"; do run_tool "$t" >>"$work/$t.times"; done
done
best() { sort -n "$work/$1.times" | head -n1; }
echo "--pipe throughput: $((bytes / 1048576)) MiB ($want lines) through wc -l, --block $BLOCK, -j $JOBS, best of $REPS (interleaved), $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg), $(parallel --version | head -n1)"
echo
echo "| tool | best wall (s) | MB/s |"
echo "|---|---|---|"
for t in "${TOOLS[@]}"; do
    awk -v t="$t" -v s="$(best "$t")" -v b="$bytes" 'BEGIN { printf "| %s | %.3f | %.0f |\n", t, s, b / s / 1e6 }'
done
echo
awk -v gp="$(best gnu_pipe)" -v gpp="$(best gnu_pipepart)" -v mp="$(best mp_pipe)" -v mpp="$(best mp_pipepart)" 'BEGIN {
    printf "multiproc --pipe vs GNU --pipe: %.1fx faster; multiproc --pipe vs GNU --pipepart: %.2fx the time\n", gp / mp, mp / gpp
    printf "multiproc --pipepart vs GNU --pipepart: %.1fx faster\n", gpp / mpp
}'

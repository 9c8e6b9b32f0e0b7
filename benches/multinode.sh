#!/usr/bin/env bash
# Multi-node figures for docs/benchmarks.md, on the two-node test cluster (start.sh --nodes 2):
#
#   benches/multinode.sh [ROUNDS] [MULTIPROC_BIN]
#
# 1. Per-job overhead, two nodes against one, same total slots: in one `sbatch -N 2 -n 2 -c 1`
#    allocation, 500 jobs of `true` run (a) across both nodes (1 slot each, one agent per node)
#    and (b) on the first node only (MULTIPROC_NODES=1 -j 2), alternating, ROUNDS (default 3)
#    times each; wall time of the multiproc command / 500 = time per job.
# 2. Time from `sbatch` (just before it runs) to the first job running on n2 (its Starttime in the
#    joblog), and on n1, for a two-node job of 4 x `sleep 0.2` (1 slot per node), ROUNDS times.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
# shellcheck source=../scripts/slurm/common.sh
. "$root/scripts/slurm/common.sh"
ROUNDS="${1:-3}"
export SLURM_CONF="$MULTI_BASE/slurm.conf"
[ -s "$SLURM_CONF" ] || die "no two-node cluster: scripts/slurm/start.sh --nodes 2"
MP="${2:-$root/target/release/multiproc}"
[ -x "$MP" ] || (cd "$root" && cargo build --release --quiet --bin multiproc)
work="$(mktemp -d /tmp/multiproc-bench-multi.XXXXXX)"
trap 'rm -rf "$work"' EXIT

job_gone() { [ -z "$(squeue -h -j "$1" 2>/dev/null)" ]; }
run_job() { # run_job SCRIPT SBATCH-ARGS...: submit, wait (bounded), print the id
    local id
    id="$(sbatch --parsable -D "$work" -o "$work/slurm-%j.out" "${@:2}" "$1")"
    wait_until 600 job_gone "$id" || {
        scancel "$id"
        die "job $id did not end"
    }
    echo "$id"
}

# --- 1. 500 short jobs, two nodes vs one ----------------------------------------------------------
cat >"$work/overhead.sh" <<EOF
#!/bin/bash
for r in \$(seq $ROUNDS); do
    t0=\$(date +%s%N); "$MP" true ::: \$(seq 500) || exit 1; t1=\$(date +%s%N)
    echo "two-nodes \$(( (t1 - t0) / 1000 ))"
    t0=\$(date +%s%N); MULTIPROC_NODES=1 "$MP" -j 2 true ::: \$(seq 500) || exit 1; t1=\$(date +%s%N)
    echo "one-node \$(( (t1 - t0) / 1000 ))"
done
EOF
id="$(run_job "$work/overhead.sh" -N 2 -n 2 -c 1 --time=10)"
echo "== 500 jobs of 'true', 2 slots in all (wall time of the multiproc command; per job = /500)"
awk '$1 == "two-nodes" || $1 == "one-node" { printf "%-10s %8.1f ms  %6.3f ms/job\n", $1, $2 / 1000, $2 / 500000 }' "$work/slurm-$id.out"
awk '$1 == "two-nodes" { t += $2; n++ } $1 == "one-node" { o += $2; m++ }
     END { if (n && m) printf "ratio two-nodes / one-node (means): %.2f\n", (t / n) / (o / m) }' "$work/slurm-$id.out"

# --- 2. sbatch to the first job on each node -------------------------------------------------------
cat >"$work/first.sh" <<EOF
#!/bin/bash
"$MP" --joblog "$work/first.\$SLURM_JOB_ID.log" sleep 0.2 ::: 1 2 3 4
EOF
echo "== from sbatch to the first job on each node (4 jobs of sleep 0.2, 1 slot per node)"
for r in $(seq "$ROUNDS"); do
    t0="$(now_ms)"
    id="$(run_job "$work/first.sh" -N 2 -n 2 -c 1 --time=5)"
    log="$work/first.$id.log"
    for h in n1 n2; do
        s="$(tail -n +2 "$log" | awk -F'\t' -v h="$h" '$2 == h { print $3 }' | sort -n | head -n1)"
        if [ -n "$s" ]; then
            awk -v s="$s" -v t="$t0" -v h="$h" 'BEGIN { printf "round %s: %s first job %.0f ms after sbatch\n", "'"$r"'", h, s * 1000 - t }'
        else
            echo "round $r: no job ran on $h"
        fi
    done
done

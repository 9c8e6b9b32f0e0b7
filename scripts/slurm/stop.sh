#!/usr/bin/env bash
# Stop the test cluster's daemons (slurmd, slurmctld, munged) by their pid files.
# Bounded: SIGTERM, wait up to 10 s, then SIGKILL. Idempotent. Leaves state and logs in place.
# Set MULTIPROC_SLURM_KEEP_MUNGE=1 to leave munged running. Also stops the two-node cluster of
# `start.sh --nodes 2`; `stop.sh --nodes 2` stops only that one (and leaves munged).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source-path=SCRIPTDIR source=common.sh
. "$here/common.sh"
need_root

# stop_by_pidfile NAME PIDFILE
stop_by_pidfile() {
    local name="$1" f="$2" pid
    if ! pid_alive "$f"; then
        rm -f "$f"
        echo "stop.sh: $name not running"
        return 0
    fi
    pid="$(pid_of "$f")"
    kill -TERM "$pid" 2>/dev/null || true
    if ! wait_until 10 eval "! pid_alive '$f'"; then
        echo "stop.sh: $name (pid $pid) still alive after 10 s; sending SIGKILL" >&2
        kill -KILL "$pid" 2>/dev/null || true
        wait_until 5 eval "! pid_alive '$f'" || die "$name (pid $pid) survived SIGKILL"
    fi
    rm -f "$f"
    echo "stop.sh: stopped $name (pid $pid)"
}

t0="$(now_ms)"
# The two-node cluster of `start.sh --nodes 2`, if it runs: `stop.sh --nodes 2` stops only it.
for n in n1 n2; do
    if [ -e "$(multi_slurmd_pid "$n")" ]; then stop_by_pidfile "slurmd $n" "$(multi_slurmd_pid "$n")"; fi
done
if [ -e "$MULTI_CTLD_PID" ]; then stop_by_pidfile "slurmctld (two-node)" "$MULTI_CTLD_PID"; fi
if [ "${1:-}" = --nodes ]; then
    echo "stop.sh --nodes: done in $(($(now_ms) - t0)) ms"
    exit 0
fi
stop_by_pidfile slurmd "$SLURMD_PID"
stop_by_pidfile slurmctld "$CTLD_PID"
if [ "${MULTIPROC_SLURM_KEEP_MUNGE:-0}" != 1 ]; then
    stop_by_pidfile munged "$MUNGE_PID"
fi
echo "stop.sh: done in $(($(now_ms) - t0)) ms"

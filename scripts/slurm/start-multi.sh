#!/usr/bin/env bash
# Start a two-node SLURM cluster on this one machine, for the multi-node tests: `start.sh --nodes 2`
# runs this. Two slurmd named n1 and n2 (own ports, spool, pid and log files) under their own
# slurmctld, with their own slurm.conf; it runs beside the one-node cluster of start.sh (other
# ports, other state directory), so both can be up at once. Clients reach it with
#   export SLURM_CONF=/var/lib/multiproc-slurm/multi/slurm.conf      (printed at the end)
# Idempotent; needs root; waits at most MULTIPROC_SLURM_WAIT seconds (default 30) for both nodes.
# Each fake node has MULTIPROC_SLURM_NODE_CPUS CPUs (default 1); TaskPlugin=task/none (with
# task/affinity both nodes would pin their tasks to the same physical CPU 0).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source-path=SCRIPTDIR source=common.sh
. "$here/common.sh"
need_root

NODES="${1:-2}"
[ "$NODES" = 2 ] || die "--nodes: only 2 is supported (got '$NODES')"
WAIT="${MULTIPROC_SLURM_WAIT:-30}"
NODE_CPUS="${MULTIPROC_SLURM_NODE_CPUS:-1}"
t0="$(now_ms)"
PATH="$PATH:/usr/sbin:/sbin"
for c in slurmctld slurmd sinfo munged; do
    command -v "$c" >/dev/null 2>&1 || die "$c not found; run scripts/slurm/install.sh first"
done

# munged is shared with the one-node cluster.
start_munge

MULTI_CONF="$MULTI_BASE/slurm.conf"
export SLURM_CONF="$MULTI_CONF"
MEM="$(slurmd -C | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' | head -n1)"
[ -n "$MEM" ] || die "could not read RealMemory from 'slurmd -C'"
NODE_MEM=$((MEM / 2))
install -d -m 0755 "$MULTI_BASE" "$MULTI_RUN" "$MULTI_LOG" "$MULTI_BASE/ctld" \
    "$MULTI_BASE/spool-n1" "$MULTI_BASE/spool-n2"
new_conf="$(mktemp)"
trap 'rm -f "$new_conf"' EXIT
cat >"$new_conf" <<CONF
# Written by scripts/slurm/start-multi.sh (multiproc): two nodes on one host, for tests.
ClusterName=multiproc2
SlurmctldHost=${NODE_NAME}(127.0.0.1)
$(conf_common task/none)
SlurmctldPort=${MULTI_CTLD_PORT}
StateSaveLocation=${MULTI_BASE}/ctld
SlurmdSpoolDir=${MULTI_BASE}/spool-%n
SlurmctldPidFile=${MULTI_RUN}/slurmctld.pid
SlurmdPidFile=${MULTI_RUN}/slurmd-%n.pid
SlurmctldLogFile=${MULTI_LOG}/slurmctld.log
SlurmdLogFile=${MULTI_LOG}/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
NodeName=n1 NodeHostname=localhost NodeAddr=127.0.0.1 Port=17001 CPUs=${NODE_CPUS} RealMemory=${NODE_MEM} State=UNKNOWN
NodeName=n2 NodeHostname=localhost NodeAddr=127.0.0.1 Port=17002 CPUs=${NODE_CPUS} RealMemory=${NODE_MEM} State=UNKNOWN
PartitionName=multi Nodes=n1,n2 Default=YES MaxTime=INFINITE State=UP
CONF
if ! cmp -s "$new_conf" "$MULTI_CONF"; then
    if pid_alive "$MULTI_CTLD_PID" || pid_alive "$(multi_slurmd_pid n1)" || pid_alive "$(multi_slurmd_pid n2)"; then
        echo "start.sh --nodes 2: slurm.conf changed; restarting the two-node daemons"
        "$here/stop.sh" --nodes 2
    fi
    install -m 0644 "$new_conf" "$MULTI_CONF"
fi

if ! pid_alive "$MULTI_CTLD_PID"; then
    rm -f "$MULTI_CTLD_PID"
    slurmctld -f "$MULTI_CONF" -i || die "slurmctld did not start (see $MULTI_LOG/slurmctld.log)"
fi
for n in n1 n2; do
    if ! pid_alive "$(multi_slurmd_pid "$n")"; then
        rm -f "$(multi_slurmd_pid "$n")"
        slurmd -f "$MULTI_CONF" -N "$n" || die "slurmd $n did not start (see $MULTI_LOG/slurmd-$n.log)"
    fi
done

node_ready() {
    local n="$1"
    case "$(sinfo -h -N -n "$n" -o '%T' 2>/dev/null | head -n1)" in
    idle | mixed | allocated) return 0 ;;
    drain* | down*)
        scontrol update NodeName="$n" State=RESUME >/dev/null 2>&1 || true
        return 1
        ;;
    *) return 1 ;;
    esac
}
both_ready() { node_ready n1 && node_ready n2; }
if ! wait_until "$WAIT" both_ready; then
    die "nodes n1/n2 not idle after ${WAIT}s: $(sinfo -h -N -o '%N %T %E' 2>&1 | tr '\n' ';'); see $MULTI_LOG/"
fi
echo "start.sh --nodes 2: nodes n1, n2 up (${NODE_CPUS} CPU each) after $(($(now_ms) - t0)) ms; use: export SLURM_CONF=$MULTI_CONF"

#!/usr/bin/env bash
# Start a one-node SLURM cluster on this machine (munged, slurmctld, slurmd), for tests.
# Idempotent: daemons that already run are left alone. Needs root; no systemd needed.
# Waits at most MULTIPROC_SLURM_WAIT seconds (default 30) for the node to become idle.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source-path=SCRIPTDIR source=common.sh
. "$here/common.sh"
need_root

# `start.sh --nodes 2`: the two-node cluster (n1, n2) of start-multi.sh, beside this one.
if [ "${1:-}" = --nodes ]; then
    exec "$here/start-multi.sh" "${2:-}"
fi

WAIT="${MULTIPROC_SLURM_WAIT:-30}"
t0="$(now_ms)"

for c in slurmctld slurmd sinfo munged; do
    command -v "$c" >/dev/null 2>&1 || [ -x "/usr/sbin/$c" ] ||
        die "$c not found; run scripts/slurm/install.sh first"
done
PATH="$PATH:/usr/sbin:/sbin"

# --- munge -------------------------------------------------------------------
start_munge

# --- slurm.conf ----------------------------------------------------------------
# Node line from the hardware as slurmd sees it, so the node is never drained for "low resources".
hw="$(slurmd -C | head -n1)"
field() { sed -n "s/.*[[:space:]]$1=\([0-9]*\).*/\1/p" <<<"$hw"; }
CPUS="$(field CPUs)"
BOARDS="$(field Boards)"
SOCKETS="$(field SocketsPerBoard)"
CORES="$(field CoresPerSocket)"
THREADS="$(field ThreadsPerCore)"
MEM="$(field RealMemory)"
if [ -z "$CPUS" ] || [ -z "$SOCKETS" ] || [ -z "$CORES" ] || [ -z "$THREADS" ] || [ -z "$MEM" ]; then
    die "could not parse 'slurmd -C' output: $hw"
fi

install -d -m 0755 "$SLURM_BASE" "$RUN_DIR" "$LOG_DIR" "$SLURM_BASE/ctld" "$SLURM_BASE/spool" "$(dirname "$SLURM_CONF")"
new_conf="$(mktemp)"
trap 'rm -f "$new_conf"' EXIT
cat >"$new_conf" <<CONF
# Written by scripts/slurm/start.sh (multiproc): a one-node cluster for tests. Rewritten on start.
ClusterName=multiproc
SlurmctldHost=${NODE_NAME}(127.0.0.1)
$(conf_common task/affinity)
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=${SLURM_BASE}/ctld
SlurmdSpoolDir=${SLURM_BASE}/spool
SlurmctldPidFile=${CTLD_PID}
SlurmdPidFile=${SLURMD_PID}
SlurmctldLogFile=${LOG_DIR}/slurmctld.log
SlurmdLogFile=${LOG_DIR}/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
NodeName=${NODE_NAME} NodeAddr=127.0.0.1 CPUs=${CPUS} Boards=${BOARDS:-1} SocketsPerBoard=${SOCKETS} CoresPerSocket=${CORES} ThreadsPerCore=${THREADS} RealMemory=${MEM} State=UNKNOWN
PartitionName=debug Nodes=${NODE_NAME} Default=YES MaxTime=INFINITE State=UP
CONF

if ! cmp -s "$new_conf" "$SLURM_CONF"; then
    if pid_alive "$CTLD_PID" || pid_alive "$SLURMD_PID"; then
        echo "start.sh: slurm.conf changed; restarting the daemons"
        "$here/stop.sh"
    fi
    install -m 0644 "$new_conf" "$SLURM_CONF"
fi

# --- daemons -------------------------------------------------------------------
# Each daemon forks and writes its pid file. Check the pid file first: a second slurmd kills the
# running one, and a second slurmctld fights the first over the state directory.
if ! pid_alive "$CTLD_PID"; then
    rm -f "$CTLD_PID"
    # -i: ignore state files that do not match this config (e.g. left from an older node line).
    slurmctld -i || die "slurmctld did not start (see $LOG_DIR/slurmctld.log)"
fi
if ! pid_alive "$SLURMD_PID"; then
    rm -f "$SLURMD_PID"
    slurmd -N "$NODE_NAME" || die "slurmd did not start (see $LOG_DIR/slurmd.log)"
fi

# --- wait for an idle node ------------------------------------------------------
node_state() { sinfo -h -N -n "$NODE_NAME" -o '%T' 2>/dev/null | head -n1; }
node_idle() {
    case "$(node_state)" in
    idle | mixed | allocated) return 0 ;; # usable (mixed/allocated: jobs already running)
    drain* | down*)
        # Left drained/down by an earlier run (e.g. "Kill task failed"): put it back in service.
        scontrol update NodeName="$NODE_NAME" State=RESUME >/dev/null 2>&1 || true
        return 1
        ;;
    *) return 1 ;;
    esac
}
if ! wait_until "$WAIT" node_idle; then
    state="$(node_state || true)"
    reason="$(sinfo -h -N -n "$NODE_NAME" -o '%E' 2>/dev/null || true)"
    die "node $NODE_NAME not idle after ${WAIT}s (state '${state:-no answer}', reason '${reason}'); see $LOG_DIR/"
fi
echo "start.sh: node $NODE_NAME $(node_state) (CPUs=$CPUS RealMemory=$MEM) after $(($(now_ms) - t0)) ms"

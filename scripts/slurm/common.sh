# Shared settings and helpers for start.sh, start-multi.sh, stop.sh and check.sh. Sourced, not run.
# shellcheck shell=bash disable=SC2034  # the variables are used by the scripts that source this

# Everything the test cluster writes (state, spool, pid files, logs) lives under one directory,
# so stop.sh + `rm -rf` gives a clean slate. Override with MULTIPROC_SLURM_DIR.
SLURM_BASE="${MULTIPROC_SLURM_DIR:-/var/lib/multiproc-slurm}"
SLURM_CONF="${SLURM_CONF:-/etc/slurm/slurm.conf}"
export SLURM_CONF
RUN_DIR="$SLURM_BASE/run"
LOG_DIR="$SLURM_BASE/log"
CTLD_PID="$RUN_DIR/slurmctld.pid"
SLURMD_PID="$RUN_DIR/slurmd.pid"
MUNGE_PID="/run/munge/munged.pid"
NODE_NAME="$(hostname -s)"

# pid_alive PIDFILE: true if the pid file names a live, non-zombie process.
# Daemons reparented to PID 1 can stay zombies for seconds after they exit; state Z counts as gone.
pid_alive() {
    local f="$1" pid state
    [ -s "$f" ] || return 1
    pid="$(tr -dc '0-9' 2>/dev/null <"$f")" || return 1
    [ -n "$pid" ] || return 1
    [ -r "/proc/$pid/stat" ] || return 1
    # Field 3 of /proc/PID/stat is the state; the comm field (2) may contain spaces, so cut after ')'.
    state="$(sed -e 's/^.*) //' "/proc/$pid/stat" 2>/dev/null | cut -d' ' -f1)"
    [ -n "$state" ] && [ "$state" != "Z" ] && [ "$state" != "X" ]
}

# pid_of PIDFILE: print the pid in the file (digits only).
pid_of() { tr -dc '0-9' 2>/dev/null <"$1" || true; }

# wait_until SECONDS CMD...: run CMD every 0.1 s until it succeeds; false on timeout.
wait_until() {
    local limit="$1"
    shift
    local deadline=$((SECONDS + limit))
    # SECONDS has 1 s resolution; count tries too so short limits stay bounded.
    local tries=$((limit * 10 + 1))
    while [ "$tries" -gt 0 ]; do
        if "$@"; then return 0; fi
        [ "$SECONDS" -le "$deadline" ] || return 1
        sleep 0.1
        tries=$((tries - 1))
    done
    return 1
}

# now_ms: wall-clock milliseconds.
now_ms() { date +%s%3N; }

die() {
    echo "$(basename "$0"): error: $*" >&2
    exit 1
}

need_root() {
    [ "$(id -u)" -eq 0 ] || die "must run as root (the daemons run as root and write under /etc and /run)"
}

# The two-node cluster (start.sh --nodes 2, in start-multi.sh): its own slurm.conf, state, pid
# files and ports, beside the one-node cluster.
MULTI_BASE="$SLURM_BASE/multi"
MULTI_RUN="$MULTI_BASE/run"
MULTI_LOG="$MULTI_BASE/log"
MULTI_CTLD_PID="$MULTI_RUN/slurmctld.pid"
MULTI_CTLD_PORT=6827
# multi_slurmd_pid NODE: the pid file of that node's slurmd.
multi_slurmd_pid() { echo "$MULTI_RUN/slurmd-$1.pid"; }

# start_munge: starts munged if it is not running (creating its key on first use) and waits (10 s
# at most) until it answers. Shared by both clusters.
start_munge() {
    install -d -o munge -g munge -m 0700 /etc/munge
    if [ ! -s /etc/munge/munge.key ]; then
        if command -v mungekey >/dev/null 2>&1; then
            runuser -u munge -- mungekey --create --keyfile=/etc/munge/munge.key
        else
            dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
        fi
        chown munge:munge /etc/munge/munge.key
        chmod 0400 /etc/munge/munge.key
        echo "$(basename "$0"): created /etc/munge/munge.key"
    fi
    install -d -o munge -g munge -m 0755 /run/munge
    install -d -o munge -g munge -m 0700 /var/lib/munge /var/log/munge
    if ! pid_alive "$MUNGE_PID"; then
        rm -f "$MUNGE_PID" /run/munge/munge.socket.2 /run/munge/munge.socket.2.lock
        runuser -u munge -- munged || die "munged did not start (see /var/log/munge/munged.log)"
    fi
    wait_until 10 sh -c 'munge -n </dev/null | unmunge >/dev/null 2>&1' ||
        die "munge does not answer after 10 s (see /var/log/munge/munged.log)"
}

# conf_common TASKPLUGIN: the slurm.conf lines both clusters share (users, plugins, scheduling,
# timeouts), with TaskPlugin=TASKPLUGIN.
conf_common() {
    cat <<CONF
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=$1
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0
ReturnToService=2
KillWait=5
MinJobAge=300
InactiveLimit=0
Waittime=0
CONF
}

# Shared helpers of the SLURM test scripts (test.sh, test-multi.sh): skipping and failing, the
# --slow flag, building the command, and submitting and waiting for jobs. Sourced after
# common.sh, not run. The sourcing script sets JOB_PREFIX (job names) and, before submitting,
# `work` (its scratch directory; submitted job ids go to $work/submitted for its cleanup).
# shellcheck shell=bash disable=SC2034  # `slow` and `MP` are used by the scripts that source this

# skip REASON: prints "SKIP: REASON" and exits 0; a failure when CI set MULTIPROC_SLURM_REQUIRED=1
# (it started SLURM, so a skip means the cluster is broken).
skip() {
    if [ "${MULTIPROC_SLURM_REQUIRED:-0}" = 1 ]; then
        echo "FAIL: SLURM is required here but: $*" >&2
        exit 1
    fi
    echo "SKIP: $*"
    exit 0
}
fail() {
    echo "FAIL: $*" >&2
    exit 1
}

# parse_slow ARGS...: sets `slow` (1 with --slow or MULTIPROC_SLURM_SLOW=1) and `shift_by` (1
# when the first argument was --slow).
parse_slow() {
    slow="${MULTIPROC_SLURM_SLOW:-0}"
    shift_by=0
    if [ "${1:-}" = --slow ]; then
        slow=1
        shift_by=1
    fi
}

# find_multiproc ROOT [BIN]: sets MP to BIN, $MULTIPROC_BIN or the release build (built if
# missing) and exports CARGO_TARGET_DIR.
find_multiproc() {
    export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$1/target}"
    MP="${2:-${MULTIPROC_BIN:-$CARGO_TARGET_DIR/release/multiproc}}"
    if [ ! -x "$MP" ]; then
        (cd "$1" && cargo build --release --quiet --bin multiproc)
    fi
}

job_gone() {
    local out
    if out="$(squeue -h -j "$1" 2>&1)"; then [ -z "$out" ]; else grep -q 'Invalid job id' <<<"$out"; fi
}
# wait_job ID SECONDS: waits for the job to leave the queue; cancels it and fails after SECONDS.
wait_job() {
    wait_until "$2" job_gone "$1" || {
        scancel "$1" 2>/dev/null || true
        fail "job $1 still queued/running after $2 s: $(squeue -h -j "$1" -o '%T %R' 2>&1)"
    }
}
job_field() { scontrol show job "$1" 2>/dev/null | tr ' ' '\n' | sed -n "s/^$2=//p" | head -n1; }
submit() { # submit NAME SBATCH-ARGS... : prints the job id
    local name="$1" id
    shift
    id="$(sbatch --parsable -J "$JOB_PREFIX-$name" -D "$work" "$@")" || fail "sbatch $* failed"
    echo "$id" >>"$work/submitted"
    echo "$id"
}

//! The pool's `tracing` events, all with target `multiproc`: one function per event, called from
//! one line at the place where the event happens (src/pool/sched.rs).
//!
//! | event message | level | fields |
//! |---|---|---|
//! | `pool started` | INFO | `pool`, `processes` |
//! | `pool finished` | INFO | `pool`, `replaced` (workers replaced over the pool's life) |
//! | `worker started` | DEBUG | `pool`, `slot`, `pid` |
//! | `worker exited` | DEBUG | `pool`, `slot`, `pid`, `code` |
//! | `worker killed` | WARN | `pool`, `slot`, `pid`, `signal` |
//! | `worker replaced` | INFO | `pool`, `slot`, `pid` (the one that ended), `new_pid` |
//! | `task retried` | WARN | `pool`, `pid` (the worker that died running it), `item`, `attempt` |
//! | `task timed out` | WARN | `pool`, `pid`, `item`, `timeout_ms` |
//!
//! `pool` is a number unique within the process, `item` the input's index in the call (0 for
//! the first input of a `map`). The fields are integers, recorded only when a subscriber is
//! interested in the event: without one, each call site costs one relaxed atomic load (tracing's
//! cached callsite interest) and nothing is formatted.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::sys::{ExitStatus, Pid};

/// The target of every event.
const TARGET: &str = "multiproc";

/// A pool's number in `tracing` events: each `Default` is a new one (1, 2, ...).
#[derive(Debug, Clone, Copy)]
pub(crate) struct PoolId(u64);

impl Default for PoolId {
    fn default() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        PoolId(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

pub(crate) fn pool_started(pool: PoolId, processes: usize) {
    tracing::info!(target: TARGET, pool = pool.0, processes, "pool started");
}

pub(crate) fn pool_finished(pool: PoolId, replaced: u64) {
    tracing::info!(target: TARGET, pool = pool.0, replaced, "pool finished");
}

pub(crate) fn worker_started(pool: PoolId, slot: usize, pid: Pid) {
    tracing::debug!(target: TARGET, pool = pool.0, slot, pid = pid.as_raw(), "worker started");
}

/// `worker exited` for an exit code, `worker killed` for a signal.
pub(crate) fn worker_ended(pool: PoolId, slot: usize, pid: Pid, status: ExitStatus) {
    let (pool, pid) = (pool.0, pid.as_raw());
    match status {
        ExitStatus::Exited(code) => {
            tracing::debug!(target: TARGET, pool, slot, pid, code, "worker exited");
        }
        ExitStatus::Signaled(signal) => {
            tracing::warn!(target: TARGET, pool, slot, pid, signal, "worker killed");
        }
    }
}

/// `new` is `None` when the replacement could not be forked (the slot stays empty for now).
pub(crate) fn worker_replaced(pool: PoolId, slot: usize, pid: Pid, new: Option<Pid>) {
    let new_pid = new.map(Pid::as_raw);
    tracing::info!(target: TARGET, pool = pool.0, slot, pid = pid.as_raw(), new_pid, "worker replaced");
}

/// Input `item` goes back to the queue after its worker `pid` died running it; `attempt` is
/// the number of the run to come (2 for the first retry).
pub(crate) fn task_retried(pool: PoolId, pid: Pid, item: usize, attempt: u32) {
    tracing::warn!(target: TARGET, pool = pool.0, pid = pid.as_raw(), item, attempt, "task retried");
}

pub(crate) fn task_timed_out(pool: PoolId, pid: Pid, item: usize, timeout: Duration) {
    let timeout_ms = timeout.as_millis() as u64;
    tracing::warn!(target: TARGET, pool = pool.0, pid = pid.as_raw(), item, timeout_ms, "task timed out");
}

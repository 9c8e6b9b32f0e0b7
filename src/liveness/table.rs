//! The holder table: who could still put on (or get from) a queue, kept in the queue's shared
//! mapping.
//!
//! Every process that holds a queue has a slot in the queue's shared table: its pid, its start
//! time (so that a reused pid is not mistaken for it) and what it is doing: running user code,
//! waiting in `get`, waiting in `put`, or joining a child. The creator registers itself; every
//! child forked through the crate is registered by its parent right after the fork, before any
//! join can start. A process that ended (gone, or a zombie) no longer counts.
//!
//! A `get` that finds the queue empty and sees that no live holder is running user code (all wait
//! in `get`, or join without a bound a child that is itself in such a state) knows that nobody
//! can ever put again, and returns `Disconnected`. A holder counts as live unless its process is
//! gone, a zombie, exiting, or has a SIGKILL pending ([`super::will_run_again`]): a killed child
//! that has not finished dying neither waits nor makes the parent joining it look stuck. To rule
//! out a holder that changes state in between, a slot's state and generation are one atomic word
//! (each transition to "running" bumps the generation), and the check is made twice around a
//! second look at the queue: both looks must find the same words.
//!
//! Each slot also names the one thread that uses the queue in that process (the creator's thread,
//! or a child's main thread). A process whose queue is used from more than one thread is always
//! counted as running: one of its threads may put while another waits.

use std::sync::atomic::{AtomicI32, AtomicU32, AtomicU64, AtomicUsize, Ordering::SeqCst};

use crate::sys;

use super::current_tid;

/// How many processes one queue tracks; past that, disconnection is not detected for it.
pub(crate) const MAX_HOLDERS: usize = 1024;

const RUNNING: u64 = 0;
const WAIT_GET: u64 = 1;
const WAIT_PUT: u64 = 2;
const JOINING: u64 = 3;
const STATE_BITS: u32 = 8;
const STATE_MASK: u64 = (1 << STATE_BITS) - 1;

/// Sets a slot's state, keeping its generation (only the slot's own process writes it).
fn set_state(slot: &Slot, state: u64) {
    let word = slot.state.load(SeqCst);
    slot.state.store((word & !STATE_MASK) | state, SeqCst);
}

/// Sets a slot's state to `RUNNING` and bumps its generation, in one store.
fn set_running(slot: &Slot) {
    let word = slot.state.load(SeqCst);
    let next = ((word >> STATE_BITS) + 1) << STATE_BITS;
    slot.state.store(next | RUNNING, SeqCst);
}

/// A slot's pid while its registration is being written: it counts as running, and no process
/// finds it as its own until every other field is in place.
const CLAIMING: i32 = -1;

const TID_NONE: i32 = 0;
const TID_MANY: i32 = -1;

/// What a holder is waiting for, when it waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Waiting {
    Get,
    Put,
}

#[repr(C)]
struct Slot {
    pid: AtomicI32,
    tid: AtomicI32,
    start: AtomicU64,
    /// What the holder does (low 8 bits) and its generation (the rest), bumped by every
    /// transition to `RUNNING`: one word, so that a reader never pairs a state with the
    /// generation of another.
    state: AtomicU64,
    /// The child this holder is joining, while its state is `JOINING`.
    join_target: AtomicI32,
}

/// The shared table; lives inside the queue's mapping (all zero = empty).
#[repr(C)]
pub(crate) struct HolderTable {
    overflow: AtomicU32,
    slots: [Slot; MAX_HOLDERS],
}

impl HolderTable {
    /// Registers `pid` as a running holder used by thread `tid` (idempotent).
    ///
    /// The fields are written while the slot's pid reads [`CLAIMING`] and the pid is published
    /// last, so the registered process never sees (nor races with) a half-written slot.
    pub(crate) fn register(&self, pid: i32, start: u64, tid: i32) {
        if let Some(slot) = self.find(pid) {
            if slot.start.load(SeqCst) != start
                && slot
                    .pid
                    .compare_exchange(pid, CLAIMING, SeqCst, SeqCst)
                    .is_ok()
            {
                // A slot left by an earlier process with the same (reused) pid: take it over.
                Self::fill(slot, pid, start, tid);
            }
            return;
        }
        for pass in 0..2 {
            for slot in &self.slots {
                if slot.pid.load(SeqCst) == 0
                    && slot
                        .pid
                        .compare_exchange(0, CLAIMING, SeqCst, SeqCst)
                        .is_ok()
                {
                    Self::fill(slot, pid, start, tid);
                    return;
                }
            }
            if pass == 0 {
                self.reclaim_dead();
            }
        }
        // Full: from now on this queue never reports disconnection (conservative, never wrong).
        self.overflow.store(1, SeqCst);
    }

    fn fill(slot: &Slot, pid: i32, start: u64, tid: i32) {
        slot.start.store(start, SeqCst);
        slot.tid.store(tid, SeqCst);
        set_running(slot);
        slot.pid.store(pid, SeqCst);
    }

    /// Whether `pid` has a (fully written) slot.
    pub(crate) fn is_registered(&self, pid: i32) -> bool {
        self.find(pid).is_some()
    }

    fn find(&self, pid: i32) -> Option<&Slot> {
        self.slots.iter().find(|s| s.pid.load(SeqCst) == pid)
    }

    fn reclaim_dead(&self) {
        for slot in &self.slots {
            let pid = slot.pid.load(SeqCst);
            if pid > 0 && !sys::process_alive(pid, slot.start.load(SeqCst)) {
                let _ = slot.pid.compare_exchange(pid, 0, SeqCst, SeqCst);
            }
        }
    }

    /// Removes the calling process (it dropped its last handle).
    pub(crate) fn unregister_self(&self) {
        let pid = sys::getpid().as_raw();
        if let Some(slot) = self.find(pid) {
            let _ = slot.pid.compare_exchange(pid, 0, SeqCst, SeqCst);
        }
    }

    fn my_slot(&self) -> Option<&Slot> {
        self.find(sys::getpid().as_raw())
    }

    /// Marks the calling process as waiting (`Some`) or running (`None`), and notes which thread
    /// uses the queue. `slot_hint` caches where this process's slot is.
    pub(crate) fn set_waiting(&self, waiting: Option<Waiting>, slot_hint: &AtomicUsize) {
        let pid = sys::getpid().as_raw();
        let hinted = self
            .slots
            .get(slot_hint.load(SeqCst))
            .filter(|s| s.pid.load(SeqCst) == pid);
        let slot = match hinted {
            Some(s) => s,
            None => match self.slots.iter().position(|s| s.pid.load(SeqCst) == pid) {
                Some(i) => {
                    slot_hint.store(i, SeqCst);
                    &self.slots[i]
                }
                None => return,
            },
        };
        let tid = current_tid();
        let owner = slot.tid.load(SeqCst);
        if owner == TID_NONE {
            let _ = slot.tid.compare_exchange(TID_NONE, tid, SeqCst, SeqCst);
        } else if owner != tid && owner != TID_MANY {
            slot.tid.store(TID_MANY, SeqCst);
        }
        match waiting {
            Some(Waiting::Get) => set_state(slot, WAIT_GET),
            Some(Waiting::Put) => set_state(slot, WAIT_PUT),
            None => set_running(slot),
        }
    }

    /// Marks process `pid` as joining its child `target`, if `tid` is the thread that uses the
    /// table in that process (another thread's join says nothing about whether that one will
    /// put). Whether it did.
    pub(super) fn mark_joining(&self, pid: i32, tid: i32, target: i32) -> bool {
        let Some(slot) = self.find(pid) else {
            return false;
        };
        if slot.tid.load(SeqCst) != tid {
            return false;
        }
        slot.join_target.store(target, SeqCst);
        set_state(slot, JOINING);
        true
    }

    /// Marks the calling process as running again after [`mark_joining`](Self::mark_joining).
    pub(super) fn mark_joined(&self) {
        if let Some(slot) = self.my_slot() {
            set_running(slot);
        }
    }

    /// A snapshot of every live holder's state word if none of them can make progress for
    /// `blocked`: each waits in that direction, or joins without a bound a child that is itself
    /// such a holder (a process joining a child that can still run, or that is dying, will run
    /// again once the child ends). `None` as soon as one can make progress.
    pub(crate) fn stuck_snapshot(&self, blocked: Waiting) -> Option<Vec<(i32, u64)>> {
        if self.overflow.load(SeqCst) != 0 {
            return None;
        }
        let same = match blocked {
            Waiting::Get => WAIT_GET,
            Waiting::Put => WAIT_PUT,
        };
        // pid -> (state word, join target) of every live holder. The word is read before the
        // target: a target written for a later join comes with a later word.
        let mut live = std::collections::HashMap::new();
        for slot in &self.slots {
            let pid = slot.pid.load(SeqCst);
            if pid == 0 {
                continue;
            }
            if pid == CLAIMING || slot.tid.load(SeqCst) == TID_MANY {
                // Being registered, or used from several threads: it may well put.
                return None;
            }
            let word = slot.state.load(SeqCst);
            let target = slot.join_target.load(SeqCst);
            if super::will_run_again(pid, slot.start.load(SeqCst)) {
                live.insert(pid, (word, target));
            }
        }
        let stuck = |pid: i32| {
            let mut pid = pid;
            // Follow the chain of joins (a parent joining a child joining a grandchild...).
            for _ in 0..MAX_HOLDERS {
                match live
                    .get(&pid)
                    .map(|&(word, target)| (word & STATE_MASK, target))
                {
                    Some((state, _)) if state == same => return true,
                    Some((JOINING, target)) => pid = target,
                    _ => return false,
                }
            }
            false
        };
        let mut snapshot = Vec::with_capacity(live.len());
        for (&pid, &(word, _)) in &live {
            if !stuck(pid) {
                return None;
            }
            snapshot.push((pid, word));
        }
        snapshot.sort_unstable();
        Some(snapshot)
    }
}

//! Liveness: which processes could still act on a shared object, so that a blocked wait can
//! answer [`Disconnected`](crate::Error::Disconnected) instead of waiting forever.
//!
//! - The identity of the calling process: its start time ([`own_start_time`], so that a reused
//!   pid is never mistaken for it) and the calling thread's id, both cached per process and made
//!   stale by every fork.
//! - [`HolderTable`] (in `table`): a table in an object's shared mapping with one slot per process
//!   that holds the object and what it is doing. Queues use it.
//! - A per-process registry of the tables this process holds, so that a fork registers the child
//!   in each ([`adopt`]), and [`JoiningGuard`], which marks this process as joining a child in
//!   each.
//!
//! This module sits below queue, pipe and process: it knows no object type, only tables
//! ([`HasHolders`]). It runs around forks through a hook registered with
//! [`crate::fork::register_fork_hook`] the first time it caches anything per process.

mod table;

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex, Weak};
use std::time::Instant;

use crate::fork::{ForkHook, register_fork_hook};
use crate::sys::{self, Pid};

pub(crate) use table::{HolderTable, Waiting};

/// An object that keeps a [`HolderTable`] in its shared mapping.
pub(crate) trait HasHolders: Send + Sync + std::fmt::Debug {
    /// The object's table.
    fn holders(&self) -> &HolderTable;
}

static FORK_HOOK: ForkHook = ForkHook {
    prepare: || None,
    parent: on_fork_parent,
    child: on_fork_child,
};

/// Registers this module's fork hook (cheap after the first call of each process's life).
fn ensure_fork_hook() {
    static DONE: AtomicBool = AtomicBool::new(false);
    if !DONE.load(SeqCst) {
        register_fork_hook(&FORK_HOOK);
        DONE.store(true, SeqCst);
    }
}

/// Bumped in every child right after the fork, so per-process caches made before it are stale.
static FORK_EPOCH: AtomicU64 = AtomicU64::new(1);

thread_local! {
    /// (fork epoch, thread id) of the calling thread.
    static TID: Cell<(u64, i32)> = const { Cell::new((0, 0)) };
}

pub(crate) fn current_tid() -> i32 {
    let epoch = FORK_EPOCH.load(SeqCst);
    TID.with(|c| {
        let (e, tid) = c.get();
        if e == epoch {
            tid
        } else {
            ensure_fork_hook();
            let tid = sys::gettid();
            c.set((epoch, tid));
            tid
        }
    })
}

/// The start time of the calling process (cached per process).
///
/// Lock-free, so that a child forked while another thread of the parent was here cannot inherit
/// a held lock: every thread of one process (one fork epoch) computes the same value, so racing
/// writers are harmless; the epoch is published after the value it stands for.
pub(crate) fn own_start_time() -> u64 {
    static START: AtomicU64 = AtomicU64::new(0);
    static START_EPOCH: AtomicU64 = AtomicU64::new(0);
    let epoch = FORK_EPOCH.load(SeqCst);
    if START_EPOCH.load(SeqCst) == epoch {
        return START.load(SeqCst);
    }
    ensure_fork_hook();
    let start = start_time_of(sys::getpid().as_raw());
    START.store(start, SeqCst);
    START_EPOCH.store(epoch, SeqCst);
    start
}

/// Start time of a process even if it is already a zombie (0 if unknown).
pub(crate) fn start_time_of(pid: i32) -> u64 {
    sys::proc_stat(pid).map_or(0, |(_, start)| start)
}

/// Whether the process `pid` that started at `start` may still run user code: it exists (same
/// start time, so not a reused pid), is not a zombie, is not exiting (`PF_EXITING`), and has no
/// SIGKILL pending. A child just SIGKILLed is none of these for a moment before it becomes a
/// zombie; counting it as waiting would make the process joining it look stuck too. When `/proc`
/// cannot be read for another reason the answer is "yes" (never decide wrongly that nobody is
/// left).
pub(crate) fn will_run_again(pid: i32, start: u64) -> bool {
    const PF_EXITING: u64 = 0x4;
    const SIGKILL_BIT: u64 = 1 << (libc::SIGKILL - 1);
    if !sys::process_alive(pid, start) {
        return false;
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Field 9 (flags) is the 7th after the command name's closing parenthesis.
    let flags = stat
        .rfind(')')
        .and_then(|i| stat[i + 1..].split_ascii_whitespace().nth(6))
        .and_then(|f| f.parse::<u64>().ok())
        .unwrap_or(0);
    if flags & PF_EXITING != 0 {
        return false;
    }
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kill_pending = status.lines().any(|line| {
        ["SigPnd:", "ShdPnd:"].iter().any(|key| {
            line.strip_prefix(key)
                .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
                .is_some_and(|set| set & SIGKILL_BIT != 0)
        })
    });
    // Read last: the same process still (its stat was read before its status).
    !kill_pending && sys::process_alive(pid, start)
}

/// The objects this process holds, so that a fork can register the child in each.
static REGISTRY: Mutex<Vec<Weak<dyn HasHolders>>> = Mutex::new(Vec::new());

/// Whether this process ever made such an object (so forks with none skip the registry).
static ANY_TABLE: AtomicBool = AtomicBool::new(false);

/// Adds a newly made object to this process's registry and registers the process in its table.
pub(crate) fn adopt<S: HasHolders + 'static>(shared: &Arc<S>) {
    ensure_fork_hook();
    shared
        .holders()
        .register(sys::getpid().as_raw(), own_start_time(), current_tid());
    let mut reg = REGISTRY.lock().unwrap_or_else(|e| e.into_inner());
    reg.retain(|w| w.strong_count() > 0);
    let weak: Weak<dyn HasHolders> = Arc::downgrade(shared) as Weak<dyn HasHolders>;
    reg.push(weak);
    ANY_TABLE.store(true, SeqCst);
}

fn live_tables() -> Vec<Arc<dyn HasHolders>> {
    if !ANY_TABLE.load(SeqCst) {
        return Vec::new();
    }
    let reg = REGISTRY.lock().unwrap_or_else(|e| e.into_inner());
    reg.iter().filter_map(Weak::upgrade).collect()
}

/// Run in the parent right after a fork: the child holds every queue this process holds.
fn on_fork_parent(child: Pid) {
    let queues = live_tables();
    if queues.is_empty() {
        return;
    }
    let start = start_time_of(child.as_raw());
    for q in queues {
        // The forking thread becomes the child's only thread, whose tid is the child's pid.
        q.holders().register(child.as_raw(), start, child.as_raw());
    }
}

/// Run in the child right after a fork: waits (a few microseconds, at most 2 s) until the
/// parent has registered this process in every queue it holds, so that no `get` or `put` of the
/// child runs unregistered (and so unseen by the disconnection check).
fn on_fork_child() {
    FORK_EPOCH.fetch_add(1, SeqCst);
    if !ANY_TABLE.load(SeqCst) {
        return;
    }
    // Another thread of the parent may have held the registry lock at the fork: then skip the
    // wait rather than deadlock (the child is still registered, just maybe a little later).
    let queues: Vec<Arc<dyn HasHolders>> = match REGISTRY.try_lock() {
        Ok(reg) => reg.iter().filter_map(Weak::upgrade).collect(),
        Err(_) => return,
    };
    let me = sys::getpid().as_raw();
    let deadline = Instant::now() + std::time::Duration::from_secs(2);
    for q in &queues {
        while !q.holders().is_registered(me) && Instant::now() < deadline {
            std::thread::yield_now();
        }
    }
}

/// While alive, marks the calling process as joining the child `target` in every queue it holds,
/// for a join without a bound. A process joining a child that is itself stuck on the queue cannot
/// put any more, so it does not keep consumers waiting; one joining a child that can still run
/// does. A bounded join (`deadline` given) marks nothing: the process comes back from it and may
/// put again, so it counts as running.
#[derive(Debug)]
pub(crate) struct JoiningGuard {
    queues: Vec<Arc<dyn HasHolders>>,
}

impl JoiningGuard {
    pub(crate) fn new(target: Pid, deadline: Option<Instant>) -> Self {
        if deadline.is_some() {
            return JoiningGuard { queues: Vec::new() };
        }
        let (pid, tid) = (sys::getpid().as_raw(), current_tid());
        let queues = live_tables()
            .into_iter()
            .filter(|q| q.holders().mark_joining(pid, tid, target.as_raw()))
            .collect();
        JoiningGuard { queues }
    }
}

impl Drop for JoiningGuard {
    fn drop(&mut self) {
        for q in &self.queues {
            q.holders().mark_joined();
        }
    }
}

//! The children of this process: who is running, who is waited for at exit, and how a child
//! dies with its parent.
//!
//! # Python's rule for `Process` and `spawn` children
//!
//! Every child started by [`Process::start`](crate::Process::start) (and so by
//! [`spawn`](crate::spawn)) is entered here with its daemon flag. Dropping a started non-daemon
//! `Process` *detaches* it: the child runs on, and the program waits for it when it ends
//! normally. That wait is an `atexit` handler registered once, on the first start: it runs on a
//! return from `main`, on `std::process::exit` and after a panic that ends `main`. It kills the
//! daemon children (with their process groups, `SIGKILL`) and then waits for every non-daemon
//! child, detached or still held by a `Process` value. A forked child does the same before it
//! `_exit`s, so a child's own non-daemon children are waited for too.
//!
//! Detached children that end early are reaped without waiting for the end: each
//! [`Process::start`](crate::Process::start) and each [`active_children`] call reaps the
//! detached children that have ended (one `waitpid(WNOHANG)` per detached child still listed),
//! so a long program that drops thousands of finished processes keeps no zombie beyond those
//! that ended since its last start. No `SIGCHLD` handler is installed (the program's own
//! handling of `SIGCHLD` is left alone).
//!
//! # Nothing outlives its parent
//!
//! Every child forked through `fork::fork_child` (pool workers, `Process` and `spawn` children)
//! leads its own process group, and what it starts by ordinary means (`std::process::Command`,
//! a fork) is in that group. Three lines of defence end the group when the parent dies:
//!
//! 1. The parent-death signal (`PR_SET_PDEATHSIG`, a real-time signal): its handler, in
//!    `sys::lineage`, checks `getppid()` against the recorded parent and, if the parent is
//!    gone, `SIGKILL`s the child's whole group. The kernel also sends it when only the thread
//!    that forked the child ends; the handler then sees the same parent and ignores it (the
//!    signal comes again when the parent process dies).
//! 2. The race before the signal was armed (the parent died between the fork and the `prctl`):
//!    the child checks `getppid()` once armed and ends at once.
//! 3. The parent's channel closing: each child has a *watch pipe* whose only write end the
//!    parent holds (siblings close their copies right after their fork; it is close-on-exec).
//!    The child's read end is `O_ASYNC`, owned by the child, with the same real-time signal
//!    (`F_SETSIG`): when the parent dies the kernel closes the write end and signals the child,
//!    whatever happened to its parent-death setting (cleared by a change of credentials or a
//!    set-user-ID `exec`, or by the task). The handler kills the group on that signal, unless the
//!    task set a parent-death signal of its own (the `multiproc` command's workers do, to log a
//!    finished job before they go). Also, a child that ends on its own after its parent died (it
//!    saw a pool socket, a result pipe or a queue disconnect) kills its group on the way out.
//!
//! After a `SIGKILL` of the parent every descendant is gone within milliseconds
//! (`tests/outlive.rs`, also with the parent-death setting cleared). What a crash still leaves
//! behind: processes that left the group (a task that calls `setsid` or `setpgid`, like the
//! `multiproc` command's jobs, which it ends itself), a child whose task replaced the handler of
//! or blocked the real-time signal and never ends on its own, and processes started by the
//! parent other than through multiproc. A parent that `exec`s, or closes every descriptor,
//! closes the watch pipes too: its children end.
//!
//! Being in its own group, a child does not receive the terminal's `Ctrl-C` (the parent does,
//! dies, and takes the children with it), and it is a background group for the terminal: reading
//! the terminal stops it (`SIGTTIN`). Python's children read `/dev/null` as stdin anyway.

use std::os::fd::{OwnedFd, RawFd};
use std::sync::{Mutex, MutexGuard, Once};

use nix::sys::signal::Signal;

use crate::sys::{self, Pid, lineage};

/// One child started by a `Process`.
struct Entry {
    /// Names this entry (a pid may be reused once reaped).
    token: u64,
    pid: Pid,
    daemon: bool,
    /// The `Process` value was dropped: the registry reaps the child.
    detached: bool,
}

/// What this process knows of its children and of itself.
struct Registry {
    entries: Vec<Entry>,
    next_token: u64,
    /// Set in a child started by a `Process` or a pool: its name and daemon flag.
    current: Option<(ChildName, bool)>,
    /// Whether this process was forked by multiproc.
    forked: bool,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    entries: Vec::new(),
    next_token: 1,
    current: None,
    forked: false,
});
static AT_EXIT: Once = Once::new();

fn registry() -> MutexGuard<'static, Registry> {
    REGISTRY.lock().unwrap_or_else(|e| e.into_inner())
}

/// Enters the child `pid` just started by a `Process`; returns the token that names it.
pub(crate) fn add(pid: Pid, daemon: bool) -> u64 {
    AT_EXIT.call_once(|| {
        // Without the handler, children are still killed or waited for by their `Process`;
        // failing to register it (atexit's table is full) is not worth failing a start for.
        let _ = lineage::at_exit(end_of_program);
    });
    let mut reg = registry();
    let token = reg.next_token;
    reg.next_token += 1;
    reg.entries.push(Entry {
        token,
        pid,
        daemon,
        detached: false,
    });
    token
}

/// Forgets the child named `token` (its `Process` reaped it).
pub(crate) fn forget(token: u64) {
    registry().entries.retain(|e| e.token != token);
}

/// Hands the child named `token` over to the registry: its `Process` was dropped while it ran.
pub(crate) fn detach(token: u64) {
    if let Some(e) = registry().entries.iter_mut().find(|e| e.token == token) {
        e.detached = true;
    }
}

/// Reaps the detached children that have ended.
pub(crate) fn reap_detached() {
    registry()
        .entries
        .retain(|e| !e.detached || matches!(sys::try_wait(e.pid), Ok(None)));
}

/// The pids of this process's live children started by [`Process`](crate::Process) or
/// [`spawn`](crate::spawn), daemon or not, held by a value or detached: Python's
/// `multiprocessing.active_children()`. Like Python's, it reaps the children that have ended
/// (those whose `Process` was dropped; a child still held by a `Process` is reaped by it).
/// Pool workers are not listed (the [`Pool`](crate::Pool) manages them).
///
/// # Examples
///
/// ```
/// use multiproc::{Event, Process};
///
/// let go = Event::new()?;
/// let waiting = go.clone();
/// let p = Process::new(move || {
///     waiting.wait();
/// });
/// p.start()?;
/// assert!(multiproc::active_children().contains(&p.pid().unwrap()));
/// go.set();
/// p.join()?;
/// assert!(!multiproc::active_children().contains(&p.pid().unwrap()));
/// # Ok::<(), multiproc::Error>(())
/// ```
pub fn active_children() -> Vec<i32> {
    reap_detached();
    let reg = registry();
    reg.entries
        .iter()
        .filter(|e| !lineage::has_ended(e.pid, false))
        .map(|e| e.pid.as_raw())
        .collect()
}

/// The calling process as Python's `multiprocessing.current_process()` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CurrentProcess {
    name: String,
    pid: i32,
    daemon: bool,
}

impl CurrentProcess {
    /// `"MainProcess"` in a program's own process; in a child, the name of its
    /// [`Process`](crate::Process) (a [`spawn`](crate::spawn) child is `Process-N`), or
    /// `PoolWorker-N` in the `N`th worker slot of a [`Pool`](crate::Pool).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The process id.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Whether this process is a daemon child ([`Process::daemon`](crate::Process::daemon)).
    pub fn daemon(&self) -> bool {
        self.daemon
    }
}

/// The name and pid of the calling process, inside a child too: Python's
/// `multiprocessing.current_process()`.
///
/// # Examples
///
/// ```
/// use multiproc::Process;
///
/// assert_eq!(multiproc::current_process().name(), "MainProcess");
/// let p = Process::new(|| {
///     let me = multiproc::current_process();
///     assert_eq!(me.name(), "worker-1");
///     assert_eq!(me.pid(), std::process::id() as i32);
/// })
/// .name("worker-1");
/// p.start()?;
/// p.join()?;
/// assert_eq!(p.exitcode(), Some(0)); // the asserts held in the child
/// # Ok::<(), multiproc::Error>(())
/// ```
pub fn current_process() -> CurrentProcess {
    let pid = sys::getpid().as_raw();
    let reg = registry();
    let (name, daemon) = match (&reg.current, reg.forked) {
        (Some((ChildName::Given(name), daemon)), _) => (name.clone(), *daemon),
        (Some((ChildName::PoolWorker(n), daemon)), _) => (format!("PoolWorker-{n}"), *daemon),
        (None, true) => (format!("Child-{pid}"), false),
        (None, false) => ("MainProcess".to_string(), false),
    };
    CurrentProcess { name, pid, daemon }
}

/// The name of a child, as [`current_process`] reports it.
pub(crate) enum ChildName {
    /// A `Process`'s name.
    Given(String),
    /// The worker of this slot number (from 1) of a pool: `PoolWorker-N`, formatted when asked
    /// (a worker that never asks allocates nothing for it).
    PoolWorker(usize),
}

/// In a child started by a `Process` or a pool: records its name and daemon flag.
pub(crate) fn set_current(name: ChildName, daemon: bool) {
    registry().current = Some((name, daemon));
}

/// The registry and the watch table, locked across a fork so that no other thread holds them at
/// that moment, and the new child's watch pipe (read end, write end).
pub(crate) struct ForkGuard(
    MutexGuard<'static, Registry>,
    lineage::Watches,
    Option<(OwnedFd, OwnedFd)>,
);

/// Taken by the forking thread just before the fork.
pub(crate) fn fork_guard() -> ForkGuard {
    // Without the pipe (no descriptor left) the child still has the parent-death signal.
    let pipe = sys::pipe().ok();
    ForkGuard(registry(), lineage::watches(), pipe)
}

/// In the parent right after the fork: the child leads its own process group, and the parent
/// keeps the write end of its watch pipe (closed when the parent dies, or when the child is
/// reaped).
pub(crate) fn on_fork_parent(mut guard: ForkGuard, child: Pid) {
    if let Some((_, write)) = guard.2.take() {
        guard.1.add(child, write);
    }
    drop(guard);
    lineage::put_in_own_group(child);
}

/// In the child right after the fork: forgets the parent's children (they are not ours) and
/// closes the write ends of its siblings' watch pipes, leads its own process group and arms the
/// parent-death signal and its watch pipe. Returns `false` when the parent `parent` already
/// died: the child must end at once.
pub(crate) fn on_fork_child(mut guard: ForkGuard, parent: Pid, close: &[RawFd]) -> bool {
    guard.0.entries.clear();
    guard.1.clear(close);
    guard.0.current = None;
    guard.0.forked = true;
    let watch = guard.2.take().map(|(read, write)| {
        drop(write);
        read
    });
    drop(guard);
    lineage::die_with_parent(parent, watch)
}

/// In a child whose closure returned, before it `_exit`s: the same end as a program's (daemon
/// children killed, the others waited for), and, if its parent died meanwhile, its process group
/// killed (what it started must not outlive it).
pub(crate) fn on_child_end() {
    end_of_program();
    if lineage::orphaned() {
        sys::flush_stdio();
        lineage::kill_own_group();
    }
}

/// The `atexit` handler.
extern "C" fn end_of_program() {
    // Taken out of the registry, so that no lock is held while waiting.
    let children: Vec<Entry> = std::mem::take(&mut registry().entries);
    for e in children.iter().filter(|e| e.daemon) {
        let _ = lineage::kill_group(e.pid, libc::SIGKILL);
        let _ = sys::kill(e.pid, Signal::SIGKILL);
    }
    for e in &children {
        if e.detached {
            let _ = sys::wait_blocking(e.pid);
        } else {
            // Held by a `Process` value that may still reap it: wait without reaping.
            lineage::has_ended(e.pid, true);
        }
    }
}

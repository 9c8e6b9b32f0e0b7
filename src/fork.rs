//! Starting a child process: the one place that forks.
//!
//! [`fork_child`] forks, runs a closure in the child, and ends the child with `_exit`, never
//! returning into the caller's stack there. Modules that must act around every fork (the
//! liveness registry registers the child in each queue; shared memory holds its lock across the
//! fork) register a [`ForkHook`] once, the first time they need it: this module knows none of
//! them, it only calls what was registered. The one exception is `children` (called directly):
//! every child leads its own process group and dies with its parent, and the parent waits for a
//! child's own non-daemon children before it exits.

use std::sync::{Mutex, MutexGuard};

use crate::error::Result;
use crate::panic::AbortOnUnwind;
use crate::sys::{self, Forked, Pid};

/// What a module runs around every fork made by [`fork_child`].
pub(crate) struct ForkHook {
    /// In the forking thread just before the fork: takes what must be held across it (a lock
    /// that no other thread may hold at the moment of the fork). Dropped in both processes right
    /// after the fork, before `parent` and `child` run.
    pub(crate) prepare: fn() -> Option<Box<dyn std::any::Any>>,
    /// In the parent after the fork, with the child's pid.
    pub(crate) parent: fn(Pid),
    /// In the child after the fork, before the child's closure.
    pub(crate) child: fn(),
}

/// The registered hooks. Held by a forking thread across the fork, so that no other thread
/// holds it at that moment and a registration never races with a fork that would miss it.
static HOOKS: Mutex<Vec<&'static ForkHook>> = Mutex::new(Vec::new());

fn hooks_locked() -> MutexGuard<'static, Vec<&'static ForkHook>> {
    HOOKS.lock().unwrap_or_else(|e| e.into_inner())
}

/// Registers `hook` to run around every later fork (idempotent: registering it again is a no-op).
/// A module registers before its first use of what the hook protects, so no fork that started
/// earlier can miss it (the registration waits for a fork under way).
pub(crate) fn register_fork_hook(hook: &'static ForkHook) {
    let mut hooks = hooks_locked();
    if !hooks.iter().any(|h| std::ptr::eq(*h, hook)) {
        hooks.push(hook);
    }
}

/// Forks; in the child runs `child` and exits with the code it returns. Returns the child's pid.
///
/// The child ends with `_exit` after flushing Rust's stdout and stderr once: no destructor of
/// the parent's copied state runs in it, and no `atexit` handler runs twice.
pub(crate) fn fork_child(child: impl FnOnce() -> i32) -> Result<Pid> {
    fork_child_closing(&[], child)
}

/// [`fork_child`], the child first closing `close`, descriptors of the parent it inherits and
/// must not keep, together with its siblings' watch pipes (one pass over both: sorted lists
/// close in runs, see `sys::close_all_inherited`).
pub(crate) fn fork_child_closing(
    close: &[std::os::fd::RawFd],
    child: impl FnOnce() -> i32,
) -> Result<Pid> {
    // Done in the parent, once: every page the child writes costs it a copy-on-write fault, so
    // the child should find the panic hook already in place.
    crate::panic::install_hook();
    // Hold Rust's stdout and stderr locks across the fork (flushed, so the child inherits empty
    // buffers): had another thread of the parent held one at the fork, the child, whose only
    // thread is a copy of this one, would wait forever on its first print or on the final flush.
    // Held by the forking thread, the locks are released by that thread's copy in the child.
    let stdio = sys::StdioLocks::flushed();
    let (parent, children) = (sys::getpid(), crate::children::fork_guard());
    let registry = hooks_locked();
    let hooks = registry.clone();
    let held: Vec<_> = hooks.iter().map(|h| (h.prepare)()).collect();
    // SAFETY: the child runs `child` and then `_exit`s; it never returns into the caller's frames.
    // The multi-threaded-parent hazard is the crate's documented fork contract (`# Fork safety`).
    let forked = unsafe { sys::fork() };
    let release = move || {
        held.into_iter().rev().for_each(drop);
        drop(registry);
        drop(stdio);
    };
    match forked {
        Err(e) => {
            release();
            drop(children);
            Err(e)
        }
        Ok(Forked::Parent(pid)) => {
            release();
            crate::children::on_fork_parent(children, pid);
            hooks.iter().for_each(|h| (h.parent)(pid));
            Ok(pid)
        }
        Ok(Forked::Child) => {
            let guard = AbortOnUnwind;
            release();
            if !crate::children::on_fork_child(children, parent, close) {
                sys::exit_now(1); // the parent died before the child could arm its death signal
            }
            hooks.iter().for_each(|h| (h.child)());
            let code = child();
            crate::children::on_child_end();
            sys::flush_stdio();
            std::mem::forget(guard);
            sys::exit_now(code)
        }
    }
}

//! Starting a child process: the one place that forks.
//!
//! [`fork_child`] forks, runs a closure in the child, and ends the child with `_exit`, never
//! returning into the caller's stack there. It also tells the queues of this process about the new
//! child (see `queue::holders`), so that every process that could put on a queue is known.
//! Every child leads its own process group and dies with its parent (see `children`).

use crate::error::Result;
use crate::panic::AbortOnUnwind;
use crate::queue;
use crate::sys::{self, Forked, Pid};

/// Forks; in the child runs `child` and exits with the code it returns. Returns the child's pid.
///
/// The child ends with `_exit` after flushing Rust's stdout and stderr once: no destructor of
/// the parent's copied state runs in it, and no `atexit` handler runs twice.
pub(crate) fn fork_child(child: impl FnOnce() -> i32) -> Result<Pid> {
    // Done in the parent, once: every page the child writes costs it a copy-on-write fault, so
    // the child should find the panic hook already in place.
    crate::panic::install_hook();
    // Hold Rust's stdout and stderr locks across the fork (flushed, so the child inherits empty
    // buffers): had another thread of the parent held one at the fork, the child, whose only
    // thread is a copy of this one, would wait forever on its first print or on the final flush.
    // Held by the forking thread, the locks are released by that thread's copy in the child.
    let stdio = sys::StdioLocks::flushed();
    // Likewise the crate's own lock that a child may take (the memory files PodVec keeps).
    let kept = crate::shm::fork_guard();
    let (parent, children) = (sys::getpid(), crate::children::fork_guard());
    // SAFETY: the child runs `child` and then `_exit`s; it never returns into the caller's frames.
    // The multi-threaded-parent hazard is the crate's documented fork contract (`# Fork safety`).
    let forked = unsafe { sys::fork() };
    match forked? {
        Forked::Parent(pid) => {
            drop(kept);
            drop(stdio);
            crate::children::on_fork_parent(children, pid);
            queue::holders::on_fork_parent(pid);
            Ok(pid)
        }
        Forked::Child => {
            let guard = AbortOnUnwind;
            drop(kept);
            drop(stdio);
            if !crate::children::on_fork_child(children, parent) {
                sys::exit_now(1); // the parent died before the child could arm its death signal
            }
            queue::holders::on_fork_child();
            let code = child();
            crate::children::on_child_end();
            sys::flush_stdio();
            std::mem::forget(guard);
            sys::exit_now(code)
        }
    }
}

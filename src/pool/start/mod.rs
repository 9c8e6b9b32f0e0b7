//! The seam for starting pool workers: the [`Starter`] trait and its implementations.
//!
//! The scheduler (`sched`) never forks. It asks its [`Starter`] for a worker and gets back a
//! [`Worker`], a small handle that is all the scheduler knows of the process:
//!
//! ```text
//!   Scheduler ──start(spec)──▶ Starter ──▶ Box<dyn Worker>
//!                                │           pid()        which process (for messages)
//!                                │           death_fd()   readable once it has ended (a pidfd)
//!                                │           signal(sig)  SIGTERM / SIGKILL
//!                                │           wait()       its exit status, once it has ended
//!                                ├─ Fork        forks the calling process (`fork_child`)
//!                                └─ ForkServer  asks the fork server (`server`) to fork one
//! ```
//!
//! The frames to and from a worker go over the socket in [`WorkerSpec::end`] (see
//! `transport`), the same for every starter. Another backend (MPI ranks) is one more
//! implementation of these two traits.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::Arc;

use nix::sys::signal::Signal;

use crate::error::Result;
use crate::fork::fork_child;
use crate::sys::{self, ExitStatus, Pid};

use super::fnref::FnRef;
use super::transport::WorkerEnd;
use super::worker::{self, Progress, Setup};

/// What a new worker needs: its end of the socket, its progress slot and the pool's settings.
pub(crate) struct WorkerSpec {
    pub(crate) end: WorkerEnd,
    pub(crate) progress: Arc<Progress>,
    pub(crate) slot: usize,
    pub(crate) max_tasks: Option<u64>,
    /// Whether the pool has a task timeout (then each input's start time is recorded).
    pub(crate) timed: bool,
    pub(crate) initializer: Option<Initializer>,
    pub(crate) thread_env: Option<String>,
}

/// A pool's initializer: the closure (run by forked workers) and, when it is a fn item or a
/// closure that captures nothing, its reference by offset (what a fork server can run).
#[derive(Clone)]
pub(crate) struct Initializer {
    pub(crate) run: Arc<dyn Fn() + Send + Sync>,
    #[allow(dead_code, reason = "the fork server's, in the next commit")]
    pub(crate) fn_ref: Option<FnRef>,
}

/// The handle of one started worker: all the scheduler knows of the process.
pub(crate) trait Worker: Send {
    /// The worker's process id.
    fn pid(&self) -> Pid;
    /// A descriptor that becomes readable once the worker has ended.
    fn death_fd(&self) -> BorrowedFd<'_>;
    /// Sends `sig` to the worker (nothing if it is gone).
    fn signal(&self, sig: Signal);
    /// How the worker ended; blocks until it has. Call once.
    fn wait(&mut self) -> ExitStatus;
}

/// Starts pool workers.
pub(crate) trait Starter: Send {
    /// Starts a worker running the pool's worker loop with `spec`. `close` lists the parent's
    /// descriptors of the other workers, which a forked child must not keep.
    fn start(&mut self, spec: WorkerSpec, close: &[RawFd]) -> Result<Box<dyn Worker>>;
}

/// The `fork` start method: workers are forked from the calling thread of this process.
#[derive(Debug, Default)]
pub(crate) struct Fork;

impl Starter for Fork {
    fn start(&mut self, spec: WorkerSpec, close: &[RawFd]) -> Result<Box<dyn Worker>> {
        let setup = Setup {
            end: spec.end,
            progress: spec.progress,
            slot: spec.slot,
            parent: sys::getpid(),
            max_tasks: spec.max_tasks,
            timed: spec.timed,
            initializer: spec.initializer.map(|i| i.run),
            thread_env: spec.thread_env,
            close: close.to_vec(),
        };
        let pid = fork_child(move || worker::run(setup))?;
        match sys::pidfd_open(pid) {
            Ok(pidfd) => Ok(Box::new(Forked { pid, pidfd })),
            Err(e) => {
                let _ = sys::kill(pid, Signal::SIGKILL);
                let _ = sys::wait_blocking(pid);
                Err(e)
            }
        }
    }
}

/// A worker forked by this process: it is our child, we reap it.
struct Forked {
    pid: Pid,
    pidfd: OwnedFd,
}

impl Worker for Forked {
    fn pid(&self) -> Pid {
        self.pid
    }

    fn death_fd(&self) -> BorrowedFd<'_> {
        self.pidfd.as_fd()
    }

    fn signal(&self, sig: Signal) {
        let _ = sys::pidfd_send_signal(self.pidfd.as_fd(), sig);
    }

    fn wait(&mut self) -> ExitStatus {
        // Our own child, not reaped by anyone else: waitpid fails only if it was never started.
        sys::wait_blocking(self.pid).unwrap_or(ExitStatus::Signaled(Signal::SIGKILL as i32))
    }
}

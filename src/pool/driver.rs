//! The pool's driver thread: asynchronous work makes progress while the caller does something
//! else (Python's result-handler thread).
//!
//! Started on the first asynchronous call of a pool ([`Pool::apply_async`](super::Pool::apply_async),
//! `map_async`, `starmap_async`, `imap`, `imap_unordered`, or an [`AsyncResult`](super::AsyncResult)
//! awaited as a future), never by the synchronous calls: a pool used only through `map`,
//! `apply`, `starmap` starts no thread, and its calls keep their fast path. Once started, it
//! lives until the pool is dropped.
//!
//! The thread sleeps (parked) while the pool has no task queued or running and no unfinished
//! asynchronous job. Otherwise it takes the pool's lock and drives it (sends tasks, polls the
//! workers' sockets and pidfds, reads the outcomes, completes [`AsyncResult`]s, replaces dead
//! workers), then runs the callbacks of what completed, without the lock. A thread that wants
//! the lock while the driver waits in `poll` rings a doorbell (a socket in the poll set), and
//! the driver steps aside until that thread has the lock: a synchronous call made while async
//! work runs is not delayed by the driver's wait.
//!
//! Replacement workers forked by the driver die with it (`PR_SET_PDEATHSIG` follows the forking
//! thread), and it lives as long as the pool.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::{JoinHandle, Thread};
use std::time::Duration;

use crate::error::{Error, Result};
use crate::sys;

use super::Shared;
use super::result::run_deferred;

/// The driver thread of one pool, and how other threads reach it.
#[derive(Debug)]
pub(crate) struct Driver {
    /// The thread, once started.
    thread: OnceLock<Thread>,
    handle: Mutex<Option<JoinHandle<()>>>,
    /// Set once the thread is (being) started.
    started: AtomicBool,
    /// Set when the pool is dropped: the thread ends.
    stop: AtomicBool,
    /// Threads waiting for the pool's lock (other than the driver).
    contenders: AtomicUsize,
    /// The doorbell: a byte written to `ring` makes `bell` readable in the driver's poll.
    ring: OwnedFd,
    bell: OwnedFd,
}

impl Driver {
    pub(crate) fn new() -> Result<Driver> {
        let (ring, bell) = sys::socketpair()?;
        Ok(Driver {
            thread: OnceLock::new(),
            handle: Mutex::new(None),
            started: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            contenders: AtomicUsize::new(0),
            ring,
            bell,
        })
    }

    /// Whether the driver thread was started (then lock takers must ring the doorbell).
    #[inline]
    pub(crate) fn is_started(&self) -> bool {
        self.started.load(Ordering::Acquire)
    }

    /// Wakes the driver: it looks at the pool again (new work, a new waker).
    pub(crate) fn notify(&self) {
        if let Some(t) = self.thread.get() {
            t.unpark();
        }
    }

    /// Tells the driver that this thread is about to wait for the pool's lock; the returned
    /// guard says when it has it.
    pub(crate) fn contend(&self) -> Contending<'_> {
        self.contenders.fetch_add(1, Ordering::SeqCst);
        // A full socket buffer (Ok(0)) still leaves the bell readable.
        let _ = sys::send(self.ring.as_fd(), &[1], true);
        Contending(self)
    }

    /// Empties the doorbell.
    fn drain(&self) {
        let mut buf = [0u8; 64];
        let mut space = sys::socket::fd_space();
        while let Ok(Some(n)) =
            sys::socket::recv_once(self.bell.as_fd(), &mut buf, true, &mut space, drop)
        {
            if n == 0 {
                break;
            }
        }
    }

    /// Stops the thread and waits for it (unless this is the driver thread itself: a callback
    /// that dropped the last handle to its pool; then the thread ends after that callback).
    pub(crate) fn shut_down(&self) {
        self.stop.store(true, Ordering::SeqCst);
        self.notify();
        let _ = sys::send(self.ring.as_fd(), &[1], true);
        let handle = self.handle.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(h) = handle {
            if h.thread().id() != std::thread::current().id() {
                let _ = h.join();
            }
        }
    }
}

/// A thread waiting for the pool's lock (see [`Driver::contend`]).
pub(crate) struct Contending<'a>(&'a Driver);

impl Drop for Contending<'_> {
    fn drop(&mut self) {
        self.0.contenders.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Starts the driver thread of `shared` unless it runs already, and wakes it.
///
/// # Errors
///
/// [`Error::Io`] when the thread cannot be started.
pub(crate) fn ensure(shared: &Arc<Shared>) -> Result<()> {
    let d = &shared.driver;
    if !d.started.swap(true, Ordering::AcqRel) {
        let s = shared.clone();
        let handle = std::thread::Builder::new()
            .name("multiproc-pool".into())
            .spawn(move || run(s))
            .map_err(|e| {
                d.started.store(false, Ordering::Release);
                Error::io("starting the pool's driver thread", e)
            })?;
        let _ = d.thread.set(handle.thread().clone());
        *d.handle.lock().unwrap_or_else(|e| e.into_inner()) = Some(handle);
    }
    d.notify();
    Ok(())
}

/// The driver thread's loop.
fn run(shared: Arc<Shared>) {
    let d = &shared.driver;
    // Wait until `ensure` recorded this thread, so that `notify` reaches it.
    while d.thread.get().is_none() && !d.stop.load(Ordering::SeqCst) {
        std::thread::yield_now();
    }
    loop {
        if d.stop.load(Ordering::SeqCst) {
            return;
        }
        let mut core = shared.core.lock().unwrap_or_else(|e| e.into_inner());
        d.drain();
        if d.stop.load(Ordering::SeqCst) {
            return;
        }
        if core.is_terminated() || !core.busy() {
            drop(core);
            std::thread::park();
            continue;
        }
        if d.contenders.load(Ordering::SeqCst) > 0 {
            // Another thread wants the lock: let it have it first.
            drop(core);
            while d.contenders.load(Ordering::SeqCst) > 0 && !d.stop.load(Ordering::SeqCst) {
                std::thread::yield_now();
            }
            continue;
        }
        let status = core.drive_woken(None, Some(d.bell.as_fd()));
        let deferred = core.take_deferred();
        drop(core);
        run_deferred(deferred);
        if status.is_err() {
            // The caller that drives next gets the error; look again a little later.
            std::thread::park_timeout(Duration::from_millis(10));
        }
    }
}

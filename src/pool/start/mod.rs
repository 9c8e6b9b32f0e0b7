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
//!                                │   (start_many: a pool's first workers at once, each
//!                                │    with the parent's end of the socket it made)
//!                                ├─ Fork        forks the calling process (`fork_child`);
//!                                │              a pool's first workers back to back, each
//!                                │              socket made just before its fork
//!                                └─ ForkServer  asks the fork server (`server`) to fork one
//!                                               (or all of a pool's first in one request)
//! ```
//!
//! The frames to and from a worker go over the socket in [`WorkerSpec::end`] (see
//! `transport`), the same for every starter. Another backend (MPI ranks) is one more
//! implementation of these two traits.

#[cfg(feature = "mpi")]
pub(crate) mod mpi;
#[cfg(feature = "mpi")]
mod mpi_bridge;
#[cfg(feature = "mpi")]
mod mpi_rank;

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};

use nix::sys::signal::Signal;

use crate::error::{Error, Result};
use crate::fork::{fork_child, fork_child_closing};
use crate::sys::{self, ExitStatus, Pid};

use super::fnref::FnRef;
use super::transport::{self, Link, WorkerEnd};
use super::worker::{self, EnvMemo, Progress, Setup};

pub(crate) mod server;

/// How a [`Pool`](crate::Pool) starts its workers: Python's start methods.
///
/// - [`Fork`](StartMethod::Fork) (the default): each worker is a fork of the program at the
///   moment the pool needs it (when it is built, and when a worker is replaced). It sees the
///   program's memory as it is then, shared copy-on-write: big data loaded before the pool
///   reaches the workers without a copy, and an initializer may capture anything. But forking
///   copies the page tables of the whole program (slow for a program with many GiB resident),
///   and a lock that another thread holds at the fork (a global `Mutex`, a logger) stays locked
///   forever in the worker, which hangs on it.
/// - [`ForkServer`](StartMethod::ForkServer): workers are forked by the program's fork server,
///   a fresh execution of the program's own binary (`/proc/self/exe`) that is started once,
///   before it runs any of your code (see [`init`]), and serves every pool of the
///   program. Its workers start fast whatever the size of the program, and never inherit a lock
///   held by a thread of the program. They see the program's **globals as freshly started**
///   (statics at their initial values, nothing your `main` loaded), so everything a task needs
///   comes in its inputs or a `map_with` context; the initializer must be a fn item (or a
///   closure that captures nothing).
///
/// Choose `ForkServer` when the program has threads when it builds pools (or replaces workers),
/// or is big; keep `Fork` when workers should share data the program loaded, without sending it.
///
/// ```
/// use multiproc::{Pool, StartMethod};
///
/// fn square(x: u64) -> u64 { x * x }
///
/// let pool = Pool::builder()
///     .processes(2)
///     .start_method(StartMethod::ForkServer)
///     .build()?;
/// assert_eq!(pool.map(square, 0..4)?, [0, 1, 4, 9]);
/// # Ok::<(), multiproc::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum StartMethod {
    /// Workers are forks of the program (copy-on-write): Python's `"fork"`.
    #[default]
    Fork,
    /// Workers are forks of a fresh, single-threaded execution of the program's binary:
    /// Python's `"forkserver"`.
    ForkServer,
}

impl std::str::FromStr for StartMethod {
    type Err = Error;

    /// `"fork"` or `"forkserver"` (Python's names); anything else is
    /// [`Error::InvalidArgument`].
    fn from_str(s: &str) -> Result<StartMethod> {
        match s {
            "fork" => Ok(StartMethod::Fork),
            "forkserver" => Ok(StartMethod::ForkServer),
            _ => Err(Error::invalid_arg(
                "start method",
                s,
                "must be \"fork\" or \"forkserver\"",
            )),
        }
    }
}

/// The variable that chooses the start method of pools that do not choose one.
pub(crate) const METHOD_VAR: &str = "MULTIPROC_START_METHOD";
/// `0` silences the warning about forking a threaded program.
const WARN_VAR: &str = "MULTIPROC_WARN_THREADS";

/// The program's default set by [`set_start_method`]: 0 none, 1 `Fork`, 2 `ForkServer`.
static DEFAULT_METHOD: AtomicU8 = AtomicU8::new(0);

/// Sets the start method of the pools built after it that do not choose one with
/// [`PoolBuilder::start_method`](crate::PoolBuilder::start_method): Python's
/// `multiprocessing.set_start_method`. The environment variable `MULTIPROC_START_METHOD`
/// (`fork` or `forkserver`), when set, wins over it, so that a job script can switch without a
/// rebuild; a pool's own `start_method` wins over both. Without any of them: `Fork`.
///
/// ```
/// multiproc::set_start_method(multiproc::StartMethod::Fork);
/// ```
pub fn set_start_method(method: StartMethod) {
    let v = match method {
        StartMethod::Fork => 1,
        StartMethod::ForkServer => 2,
    };
    DEFAULT_METHOD.store(v, Ordering::SeqCst);
}

/// The start method of a pool: its own choice, else `MULTIPROC_START_METHOD`, else the
/// program's default, else `Fork`.
pub(crate) fn resolve(chosen: Option<StartMethod>) -> Result<StartMethod> {
    if let Some(m) = chosen {
        return Ok(m);
    }
    if let Some(v) = std::env::var_os(METHOD_VAR) {
        let text = v.to_string_lossy();
        return text.parse().map_err(|_| Error::InvalidEnv {
            var: METHOD_VAR.into(),
            value: text.into_owned(),
            reason: "must be \"fork\" or \"forkserver\"".into(),
        });
    }
    Ok(match DEFAULT_METHOD.load(Ordering::SeqCst) {
        2 => StartMethod::ForkServer,
        _ => StartMethod::Fork,
    })
}

/// The starter of a start method (for `ForkServer`, connected to the program's server).
pub(crate) fn starter(method: StartMethod) -> Result<Box<dyn Starter>> {
    Ok(match method {
        StartMethod::Fork => Box::new(Fork::default()),
        StartMethod::ForkServer => Box::new(server::ForkServer::connect()?),
    })
}

/// Prepares the program for pools: call it as the first line of `main`.
///
/// It checks `MULTIPROC_START_METHOD`, and when the program's start method (see
/// [`set_start_method`]) is [`StartMethod::ForkServer`] it starts the fork server now rather
/// than at the first pool. The fork server itself does not need it: a hook that runs before
/// `main` (an ELF constructor, also in `cargo test` and `nextest` test binaries and in examples)
/// turns the server's process into the server before any of your code runs. Calling it again,
/// late, or never is harmless.
///
/// ```
/// fn main() -> multiproc::Result<()> {
///     multiproc::init()?;
///     // ... the program, its threads, its pools
///     # Ok(())
/// }
/// ```
///
/// # Errors
///
/// [`Error::InvalidEnv`] for a `MULTIPROC_START_METHOD` other than `fork` or `forkserver`;
/// [`Error::Io`] or [`Error::InvalidState`] if the fork server cannot be started.
pub fn init() -> Result<()> {
    crate::sys::early::keep();
    if resolve(None)? == StartMethod::ForkServer {
        server::ensure_started()?;
    }
    Ok(())
}

/// Warns once per program, on stderr, when a pool forks while the program has several threads
/// (unless `MULTIPROC_WARN_THREADS=0`), as Python 3.12 does.
fn warn_if_threaded() {
    static WARNED: AtomicBool = AtomicBool::new(false);
    if WARNED.load(Ordering::Relaxed) {
        return;
    }
    let threads = std::fs::read_dir("/proc/self/task").map_or(1, |d| d.count());
    if threads <= 1 || std::env::var_os(WARN_VAR).is_some_and(|v| v == "0") {
        return;
    }
    if !WARNED.swap(true, Ordering::SeqCst) {
        eprintln!(
            "multiproc: warning: this process has {threads} threads and a Pool forks its workers \
             from it (start method Fork): a lock another thread holds at the fork (a Mutex, a \
             logger) stays locked forever in the worker, which can hang. Use \
             PoolBuilder::start_method(StartMethod::ForkServer) or \
             MULTIPROC_START_METHOD=forkserver; MULTIPROC_WARN_THREADS=0 silences this warning."
        );
    }
}

/// What a new worker needs: its end of the socket (`End`: `()` until the socket is made, see
/// [`Starter::start_many`]), its progress slot and the pool's settings.
pub(crate) struct WorkerSpec<End = WorkerEnd> {
    pub(crate) end: End,
    pub(crate) progress: Arc<Progress>,
    pub(crate) slot: usize,
    pub(crate) max_tasks: Option<u64>,
    /// Whether the pool has a task timeout (then each input's start time is recorded).
    pub(crate) timed: bool,
    pub(crate) initializer: Option<Initializer>,
    pub(crate) thread_env: Option<String>,
}

impl<E> WorkerSpec<E> {
    /// The same spec with `end` for its end of the socket.
    pub(crate) fn with_end<F>(self, end: F) -> WorkerSpec<F> {
        WorkerSpec {
            end,
            progress: self.progress,
            slot: self.slot,
            max_tasks: self.max_tasks,
            timed: self.timed,
            initializer: self.initializer,
            thread_env: self.thread_env,
        }
    }
}

impl WorkerSpec<()> {
    /// The spec with a new socket: the worker's end in it, and the parent's end.
    pub(crate) fn connect(self) -> Result<(WorkerSpec, Link)> {
        let (link, end) = transport::pair()?;
        Ok((self.with_end(end), link))
    }
}

/// A pool's initializer: the closure (run by forked workers) and, when it is a fn item or a
/// closure that captures nothing, its reference by offset (what a fork server can run).
#[derive(Clone)]
pub(crate) struct Initializer {
    pub(crate) run: Arc<dyn Fn() + Send + Sync>,
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
    /// Where the frames for this worker go instead of its socket, if anywhere (an MPI rank's:
    /// to the MPI bridge, without a copy).
    #[cfg(feature = "mpi")]
    fn frame_sink(&self) -> Option<Box<dyn super::transport::FrameSink>> {
        None
    }
}

/// Starts pool workers.
pub(crate) trait Starter: Send {
    /// Starts a worker running the pool's worker loop with `spec`. `close` lists the parent's
    /// descriptors of the other workers, which a forked child must not keep.
    fn start(&mut self, spec: WorkerSpec, close: &[RawFd]) -> Result<Box<dyn Worker>>;

    /// Whether [`start_many`](Starter::start_many) is worth calling (it is for a starter that
    /// asks another process: one round trip for all).
    fn starts_many(&self) -> bool {
        false
    }

    /// Starts one worker per spec, all or none (a pool's first workers), each with the
    /// parent's end of its new socket. The starter makes the sockets (`WorkerSpec::connect`),
    /// when it likes: a forking one makes each just before its fork, so that a worker inherits
    /// the parent's ends of the workers before it only. `close` lists the parent's other
    /// descriptors that a forked child must not keep. Only called when
    /// [`starts_many`](Starter::starts_many) says so; the default starts them one by one, which
    /// is right only for a starter that does not fork this process.
    fn start_many(
        &mut self,
        specs: Vec<WorkerSpec<()>>,
        close: &[RawFd],
    ) -> Result<Vec<(Box<dyn Worker>, Link)>> {
        let _ = close;
        specs
            .into_iter()
            .map(|s| {
                let (spec, link) = s.connect()?;
                Ok((self.start(spec, &[])?, link))
            })
            .collect()
    }
}

/// The `fork` start method: workers are forked from the calling thread of this process.
#[derive(Debug, Default)]
pub(crate) struct Fork {
    /// When the program's threads were last counted (for the warning): a pool's workers are
    /// forked in a burst, and counting costs a directory read, so a burst counts once.
    counted: Option<std::time::Instant>,
}

/// How long a count of the program's threads stands for the warning.
const COUNT_FOR: std::time::Duration = std::time::Duration::from_millis(5);

/// From how many workers in one burst the heap's free pages are given back before forking:
/// giving back a page costs about what 4 forks spend copying its mapping. Measured after three
/// 200k maps left ~15 MB of freed heap, start per worker with and without the trim: 1 worker
/// 1.75 / 1.06 ms, 2: 0.94 / 0.75, 4: 0.60 / 0.61, 8: 0.38 / 0.52.
const TRIM_FROM: usize = 4;

impl Fork {
    fn setup<E>(spec: WorkerSpec<E>, mut close: Vec<RawFd>, env: &mut EnvMemo) -> Setup<E> {
        close.sort_unstable();
        Setup {
            env: env.get(spec.thread_env.as_deref()),
            end: spec.end,
            progress: spec.progress,
            slot: spec.slot,
            parent: sys::getpid(),
            max_tasks: spec.max_tasks,
            timed: spec.timed,
            initializer: spec.initializer.map(|i| i.run),
            close,
        }
    }

    fn count_threads(&mut self) {
        if self.counted.is_none_or(|t| t.elapsed() > COUNT_FOR) {
            warn_if_threaded();
            self.counted = Some(std::time::Instant::now());
        }
    }
}

/// The watched handle of a worker just forked (see [`watch_forked`]).
fn forked_child(pid: Pid) -> Result<Box<dyn Worker>> {
    let pidfd = watch_forked(pid)?;
    Ok(Box::new(Child::new(pid, pidfd, Reaper::Parent)))
}

/// The pidfd of a worker just forked, opened before anyone could reap it, so that it names
/// exactly that worker; a worker whose pidfd cannot be opened is killed and reaped.
pub(super) fn watch_forked(pid: Pid) -> Result<OwnedFd> {
    sys::pidfd_open(pid).inspect_err(|_| {
        let _ = sys::kill(pid, Signal::SIGKILL);
        let _ = sys::wait_blocking(pid);
    })
}

impl Starter for Fork {
    fn start(&mut self, spec: WorkerSpec, close: &[RawFd]) -> Result<Box<dyn Worker>> {
        let setup = Self::setup(spec, close.to_vec(), &mut EnvMemo::default());
        self.count_threads();
        let pid = fork_child(move || worker::run(setup))?;
        forked_child(pid)
    }

    fn starts_many(&self) -> bool {
        true
    }

    /// Forks the workers back to back, everything but their sockets prepared first: between
    /// two forks the parent writes as few pages as it can, since each fork makes every page of
    /// the parent copy-on-write again and each page written then costs a fault and a copy
    /// (allocating and freeing between forks cost ~25 such faults per worker). Each socket is
    /// made just before its fork and its worker end closed just after, with raw calls only: a
    /// worker inherits the parent's ends of the workers before it and nothing of those after
    /// (it closes what it inherits, and each descriptor closed costs it). The heap's free pages
    /// are given back first (see `sys::mem::release_free_heap`), so that each fork copies the
    /// mappings of live memory only.
    fn start_many(
        &mut self,
        specs: Vec<WorkerSpec<()>>,
        close: &[RawFd],
    ) -> Result<Vec<(Box<dyn Worker>, Link)>> {
        let n = specs.len();
        let mut env = EnvMemo::default();
        let mut held: Vec<Option<Setup<()>>> = specs
            .into_iter()
            .map(|spec| Some(Self::setup(spec, Vec::new(), &mut env)))
            .collect();
        // What the next child must close: `close` and the parent's ends made so far, sorted
        // (room for all, so that no push reallocates between forks).
        let mut shut: Vec<RawFd> = Vec::with_capacity(close.len() + n);
        shut.extend_from_slice(close);
        shut.sort_unstable();
        // Each worker forked, with the parent's end of its socket.
        let mut forked: Vec<(Pid, OwnedFd)> = Vec::with_capacity(n);
        if n >= TRIM_FROM {
            crate::sys::mem::release_free_heap();
        }
        self.count_threads();
        let mut failed = None;
        for setup in held.iter_mut() {
            let (parent_end, worker_end) = match sys::socketpair() {
                Ok(pair) => pair,
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            };
            insert_sorted(&mut shut, parent_end.as_raw_fd());
            // The parent drops `worker_end` with the closure, right after the fork.
            let pid = fork_child_closing(&shut, move || {
                let end = WorkerEnd::from_fd(worker_end);
                setup.take().map_or(1, |s| worker::run(s.with_end(end)))
            });
            match pid {
                Ok(pid) => forked.push((pid, parent_end)),
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        drop(held);
        let mut started = Vec::with_capacity(n);
        for (pid, end) in forked {
            match forked_child(pid) {
                Ok(w) => started.push((w, Link::from_fd(end))),
                Err(e) => {
                    failed.get_or_insert(e);
                }
            }
        }
        if let Some(e) = failed {
            // All or none: the ones that started go.
            for (mut w, _) in started {
                w.signal(Signal::SIGKILL);
                let _ = w.wait();
            }
            return Err(e);
        }
        Ok(started)
    }
}

/// Inserts `fd` into the ascending `fds` (at the end, mostly: descriptors are numbered upwards),
/// within its capacity.
fn insert_sorted(fds: &mut Vec<RawFd>, fd: RawFd) {
    let at = fds.partition_point(|&x| x < fd);
    fds.insert(at, fd);
}

/// A started worker process, known by its pidfd (which names exactly it, also after it has
/// been reaped).
pub(crate) struct Child {
    pid: Pid,
    pidfd: OwnedFd,
    reaper: Reaper,
}

/// Who reaps a worker and knows its exit status.
pub(crate) enum Reaper {
    /// This process forked it.
    Parent,
    /// The fork server forked it and reports its exit status.
    Server(Arc<server::Server>),
}

impl Child {
    pub(crate) fn new(pid: Pid, pidfd: OwnedFd, reaper: Reaper) -> Child {
        Child { pid, pidfd, reaper }
    }
}

impl Worker for Child {
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
        let killed = ExitStatus::Signaled(Signal::SIGKILL as i32);
        match &self.reaper {
            // Our own child, reaped by no one else: waitpid fails only if it never started.
            Reaper::Parent => sys::wait_blocking(self.pid).unwrap_or(killed),
            Reaper::Server(server) => {
                // Bounded: the worker has ended or was just killed, and the server reaps it at
                // once.
                let deadline = std::time::Instant::now() + server::PATIENCE;
                let _ = sys::wait_readable(self.pidfd.as_fd(), Some(deadline));
                server.exit_status(self.pid)
            }
        }
    }
}

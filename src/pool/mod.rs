//! [`Pool`]: Python's `multiprocessing.Pool` over forked worker processes that survive crashes.
//!
//! Layout: `fnref` names functions across processes, `chunk` says what a task's inputs and
//! outcomes are as bytes, `transport` moves frames, `worker` is the
//! child's loop, `journal` keeps a worker's finished outcomes through its death, `sched` is the
//! parent's scheduler, `settle` its failure policy, `start` starts workers (the `Starter` seam:
//! fork, or the fork server in `start::server`), `driver` is the scheduler's background thread
//! for asynchronous calls, `result` and `completed` hold what callers wait on.
//!
//! # Caveats
//!
//! - **Dropping a pool terminates it**, like leaving Python's `with Pool() as p:` block: work
//!   still queued or running is discarded, every worker is killed (`SIGKILL`) and reaped, and an
//!   [`AsyncResult`] still pending gives [`Error::Disconnected`]. Call [`Pool::close`] then
//!   [`Pool::join`] to let queued work finish first. Drop never blocks on a worker.
//! - With [`StartMethod::Fork`], workers are killed by the kernel when the *thread* that forked
//!   them ends (`PR_SET_PDEATHSIG`), and exit when the pool's socket closes, so they never
//!   outlive the parent. Replacement workers are forked by whichever thread drives the pool when
//!   a worker dies; keep the pool on a thread that lives as long as the pool.
//! - Replacement workers come from the pool's start method: with `Fork` they are forked from
//!   the parent as it is then (see the crate's fork-safety contract); with
//!   [`StartMethod::ForkServer`] from the fork server, which dies with the parent process (not
//!   with a thread) and takes its workers with it. The pool starts one thread, its driver, on
//!   its first asynchronous call (see `driver`); a pool used only synchronously starts none.

mod bar;
mod chunk;
mod completed;
mod driver;
mod fnref;
mod journal;
mod result;
mod sched;
mod settle;
mod star;
pub(crate) mod start;
mod trace;
mod transport;
mod worker;

#[cfg(feature = "mpi")]
pub(crate) use self::start::mpi as mpi_start;

#[cfg(test)]
mod chunk_fuzz;
#[cfg(test)]
mod test;

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};
use crate::wire::MAX_MESSAGE_BYTES;

pub use self::completed::{AsCompleted, as_completed};
pub use self::result::{AsyncResult, IMap};
pub use self::star::StarFn;
pub use self::start::{StartMethod, init, set_start_method};

use self::chunk::Codec;
use self::fnref::{FnRef, Trampoline};
use self::result::{
    AsyncState, Chunker, InOrder, Inputs, PlainChunks, Seen, Tasks, run_deferred, terminated,
};
use self::sched::{Book, Config, EndsFn, Event, Items, JobId, Scheduler, Sink, Task};
use self::transport::{Encoded, MAX_FDS};

/// A progress callback: `(inputs done, total if known)`.
type ProgressHook = Arc<dyn Fn(usize, Option<usize>) + Send + Sync>;

pub(crate) struct Shared {
    core: Mutex<Scheduler>,
    book: Arc<Book>,
    driver: driver::Driver,
}

impl Shared {
    /// The pool's lock. While the driver thread runs, a thread that has to wait for the lock
    /// rings the driver's doorbell, so that the driver leaves its `poll` and lets it in.
    fn lock(&self) -> MutexGuard<'_, Scheduler> {
        match self.core.try_lock() {
            Ok(core) => return core,
            Err(std::sync::TryLockError::Poisoned(e)) => return e.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => {}
        }
        let _waiting = self.driver.is_started().then(|| self.driver.contend());
        self.core.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Fails to compile unless `F` is zero-sized: a fn item or a closure that captures nothing.
fn assert_zst<F>() {
    let () = fnref::ZeroSized::<F>::CHECK;
}

/// A pool of worker processes: Python's `multiprocessing.Pool`.
///
/// Workers are forked once, when the pool is built, and reused. Only *code* travels by address
/// (the function must be a `fn` item or a closure that captures nothing; a capturing closure
/// does not compile); inputs and results travel serialized with the crate's wire format, so
/// `T` and `R` implement `Serialize` and `DeserializeOwned`. Plain data (numbers, and tuples,
/// arrays and structs of numbers, e.g. `f64`, `(u32, f64)`, `[f32; 3]`) travels as the bytes
/// of its numbers, a chunk of inputs written in one pass: a map of them costs about a copy. For what a capture would carry, use
/// [`map_with`](Pool::map_with): the context is sent once per worker per call.
///
/// # Examples
///
/// ```
/// use multiproc::Pool;
///
/// fn square(x: u64) -> u64 { x * x }
///
/// let pool = Pool::with_processes(2)?;
/// assert_eq!(pool.map(square, 0..5)?, vec![0, 1, 4, 9, 16]);
/// assert_eq!(pool.map(|x: u64| x + 1, vec![1, 2])?, vec![2, 3]);
/// # Ok::<(), multiproc::Error>(())
/// ```
///
/// A closure that captures does not compile, and the message says what to use instead:
///
/// ```compile_fail,E0080
/// # let pool = multiproc::Pool::with_processes(2)?;
/// let k = 3u64;
/// pool.map(move |x: u64| x * k, 0..5)?; // error: ... pass what it would capture with map_with
/// # Ok::<(), multiproc::Error>(())
/// ```
///
/// That is one error (E0080, "evaluation panicked: Pool's function must be a fn item or a
/// closure that captures nothing: pass what it would capture with map_with(&ctx, f, items)"),
/// reported by `cargo build`: `cargo check` does not evaluate it. The fix:
///
/// ```
/// # let pool = multiproc::Pool::with_processes(2)?;
/// let k = 3u64;
/// assert_eq!(pool.map_with(&k, |k: &u64, x: u64| x * k, 0..3)?, vec![0, 3, 6]);
/// # Ok::<(), multiproc::Error>(())
/// ```
///
/// # Failures
///
/// A task that panics fails alone ([`Error::TaskPanicked`]). A worker that dies mid-task
/// (killed, segfault, abort, OOM) never hangs the pool: the input it was running gets
/// [`Error::WorkerDied`] naming it (`task: Some("item #17")`), the inputs it had finished keep
/// their results, those it had not started run elsewhere, and a new worker takes its place. With [`retries`](PoolBuilder::retries)
/// the failed input is re-run instead; with [`task_timeout`](PoolBuilder::task_timeout) an input
/// that runs too long gets [`Error::Timeout`] and its worker is killed and replaced.
///
/// # Threads and forks
///
/// The synchronous calls (`map`, `apply`, `starmap`, `imap`'s `next`, [`AsyncResult::get`],
/// `join`...) drive the pool from the calling thread: it sends the tasks, polls every worker's
/// socket and pidfd, and reads the results. The first asynchronous call (`apply_async`,
/// `map_async`, `starmap_async`, `imap`, or an [`AsyncResult`] awaited as a future) starts the
/// pool's driver thread (`multiproc-pool`), which from then on drives the pool whenever work is
/// queued or running and no caller is driving it, so asynchronous work progresses while the
/// caller does something else (Python's result-handler thread); it sleeps when there is no work
/// and ends when the pool is dropped. [`AsyncResult`] callbacks run in the thread that read the
/// result: usually the driver, never a worker. Several threads may share a pool; they take
/// turns, and a caller that needs the pool while the driver waits on the workers gets it at
/// once. While a synchronous call runs, it drives the whole pool: asynchronous results keep
/// coming in, and their callbacks run when that call returns.
///
/// With [`StartMethod::Fork`] (the default), a worker that dies is replaced by a fork made by
/// the thread that noticed. If the program has other threads at that moment, the crate's
/// fork-safety contract applies to the new worker (a lock held by another thread stays locked in
/// the child; the crate warns once on stderr, see [`StartMethod`]). Workers are also killed by
/// the kernel when the thread that forked them ends (`PR_SET_PDEATHSIG`), so keep a pool on a
/// thread that outlives it. [`StartMethod::ForkServer`] avoids both: workers and their
/// replacements are forked by a single-threaded fork server that lives as long as the program.
///
/// # Big arrays and shared objects
///
/// Inputs, contexts and results that live in shared memory travel by descriptor, not byte by
/// byte: a [`PodVec`](crate::PodVec) over 256 KiB (copied once into a memory file, or not at all
/// when it already lives in one, for example a result sent on as an input), a
/// [`SharedArray`](crate::SharedArray) or [`SharedValue`](crate::SharedValue) (even one made
/// after the workers started: they map the same memory), a sync primitive. A task stops taking
/// inputs once they carry 64 descriptors; one message carries at most 253, so an input or a
/// task's results carrying more give an error that says so. A worker owns the `PodVec` it
/// receives and may change it in place; if it then dies and the task is sent again, the new
/// worker sees those changes.
///
/// # Limits
///
/// A task (a chunk of encoded inputs) or a context larger than
/// [`max_message_bytes`](PoolBuilder::max_message_bytes) gives [`Error::TooLarge`]. Functions are
/// named by their offset from an anchor in the binary: the workers must run the same binary as
/// the parent (always true for forked workers). To spare page faults on large transfers, the
/// pool keeps the encode buffer of its largest task, and each worker its largest input and
/// reply buffers (replies up to 256 MiB), for reuse.
///
/// # Caveats
///
/// Dropping a pool terminates it: queued and running work is discarded, every worker is killed
/// and reaped (no zombie, no orphan), and pending [`AsyncResult`]s give
/// [`Error::Disconnected`]. Use [`close`](Pool::close) and [`join`](Pool::join) to finish the
/// work first. When a worker dies, only the input it was running is lost (and re-run with
/// [`retries`](PoolBuilder::retries)): the outcomes of the inputs it had finished are kept in a
/// shared journal until they are sent, and its chunk resumes after them. Two exceptions run
/// again: results that carry descriptors (a big `PodVec`, a `SharedArray`), which die with the
/// worker, and unsent results beyond the journal's 4 MiB per worker.
pub struct Pool {
    shared: Arc<Shared>,
    processes: usize,
    chunksize: AtomicUsize,
    limit: usize,
    on_progress: Option<ProgressHook>,
    /// Its workers are MPI ranks: a big `PodVec` context goes as an MPI attachment.
    mpi_ranks: bool,
}

impl fmt::Debug for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool")
            .field("processes", &self.processes)
            .finish_non_exhaustive()
    }
}

/// Settings of a [`Pool`]; made by [`Pool::builder`].
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use multiproc::Pool;
///
/// let pool = Pool::builder()
///     .processes(2)
///     .initializer(|| { /* open a file, seed an RNG... once per worker */ })
///     .max_tasks_per_child(1000)
///     .retries(1)
///     .task_timeout(Duration::from_secs(60))
///     .build()?;
/// assert_eq!(pool.processes(), 2);
/// # Ok::<(), multiproc::Error>(())
/// ```
#[must_use]
pub struct PoolBuilder {
    processes: Option<usize>,
    initializer: Option<self::start::Initializer>,
    max_tasks_per_child: Option<u64>,
    retries: u32,
    task_timeout: Option<Duration>,
    chunksize: Option<usize>,
    limit_threads: bool,
    max_message_bytes: usize,
    on_progress: Option<ProgressHook>,
    start_method: Option<StartMethod>,
    progress_bar: bool,
}

impl fmt::Debug for PoolBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoolBuilder")
            .field("processes", &self.processes)
            .field("max_tasks_per_child", &self.max_tasks_per_child)
            .field("retries", &self.retries)
            .field("task_timeout", &self.task_timeout)
            .field("chunksize", &self.chunksize)
            .field("start_method", &self.start_method)
            .finish_non_exhaustive()
    }
}

impl PoolBuilder {
    /// The number of worker processes. Without it, [`cpu_count`](crate::cpu_count) (which reads
    /// SLURM's variables first, then the usable CPUs). `0` is refused by
    /// [`build`](PoolBuilder::build).
    pub fn processes(mut self, n: usize) -> Self {
        self.processes = Some(n);
        self
    }

    /// Runs `f` once in each worker when it starts (and in each replacement). With
    /// [`StartMethod::Fork`] it may capture anything: a worker is a copy of the parent's memory.
    /// With [`StartMethod::ForkServer`] it must be a fn item or a closure that captures nothing
    /// (`build` refuses a capturing one; [`initializer_fn`](PoolBuilder::initializer_fn) says
    /// so at compile time). If it panics, the worker exits and the tasks sent to
    /// it fail with [`Error::WorkerDied`].
    pub fn initializer<F: Fn() + Send + Sync + 'static>(mut self, f: F) -> Self {
        self.initializer = Some(self::start::Initializer {
            fn_ref: fnref::init_ref::<F>(),
            run: Arc::new(f),
        });
        self
    }

    /// Like [`initializer`](PoolBuilder::initializer), for a function pointer: a fn item or a
    /// closure that captures nothing, so that it works under every start method, checked at
    /// compile time (a closure that captures does not compile).
    ///
    /// ```
    /// use multiproc::{Pool, StartMethod};
    ///
    /// fn setup() { /* seed an RNG, open a log... once per worker */ }
    ///
    /// let pool = Pool::builder()
    ///     .processes(1)
    ///     .start_method(StartMethod::ForkServer)
    ///     .initializer_fn(setup)
    ///     .build()?;
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    ///
    /// ```compile_fail
    /// let name = String::from("worker");
    /// let b = multiproc::Pool::builder().initializer_fn(move || println!("{name}"));
    /// ```
    pub fn initializer_fn(mut self, f: fn()) -> Self {
        self.initializer = Some(self::start::Initializer {
            fn_ref: Some(FnRef::of_init(f)),
            run: Arc::new(f),
        });
        self
    }

    /// Each worker exits after `k` tasks (chunks) and a fresh one takes its place (Python's
    /// `maxtasksperchild`). `0` is refused by `build`.
    pub fn max_tasks_per_child(mut self, k: u64) -> Self {
        self.max_tasks_per_child = Some(k);
        self
    }

    /// Re-runs an input up to `n` times when the worker running it dies (default 0: the input
    /// fails with [`Error::WorkerDied`]). Panics and timeouts are not retried.
    pub fn retries(mut self, n: u32) -> Self {
        self.retries = n;
        self
    }

    /// Kills (`SIGTERM`, then `SIGKILL` 100 ms later) the worker of an input that has run longer
    /// than `d`; that input gets [`Error::Timeout`], the worker is replaced. A zero duration is
    /// refused by `build`.
    pub fn task_timeout(mut self, d: Duration) -> Self {
        self.task_timeout = Some(d);
        self
    }

    /// The number of inputs per task for `map`, `imap` and friends, instead of the default
    /// (Python's: `ceil(len / (4 × processes))` for `map`, 1 for `imap`). `0` is refused.
    pub fn chunksize(mut self, n: usize) -> Self {
        self.chunksize = Some(n);
        self
    }

    /// Whether to set `OMP_NUM_THREADS`, `MKL_NUM_THREADS` and `OPENBLAS_NUM_THREADS` in the
    /// workers to `max(1, cpus / processes)` (default `true`), so that numerical libraries
    /// called from tasks do not oversubscribe the CPUs. A variable already set in the parent's
    /// environment is never changed.
    pub fn limit_thread_env(mut self, yes: bool) -> Self {
        self.limit_threads = yes;
        self
    }

    /// The largest encoded task (a chunk of inputs, or a context) accepted, in bytes; larger
    /// ones give [`Error::TooLarge`]. Default and maximum:
    /// [`MAX_MESSAGE_BYTES`].
    pub fn max_message_bytes(mut self, n: usize) -> Self {
        self.max_message_bytes = n;
        self
    }

    /// Calls `f(done, total)` as results of `map`-like calls and `imap` come in (`total` is
    /// `None` for `imap`). It runs in the parent with the pool's lock held: it must not call the
    /// pool.
    pub fn on_progress(mut self, f: impl Fn(usize, Option<usize>) + Send + Sync + 'static) -> Self {
        self.on_progress = Some(Arc::new(f));
        self
    }

    /// How the workers are started: [`StartMethod::Fork`] (forks of this program) or
    /// [`StartMethod::ForkServer`] (forks of a fresh execution of its binary, for threaded and
    /// big programs). Without it: `MULTIPROC_START_METHOD`, else
    /// [`set_start_method`]'s, else `Fork`. Replacement workers come
    /// from the same start method.
    pub fn start_method(mut self, method: StartMethod) -> Self {
        self.start_method = Some(method);
        self
    }

    /// Draws a progress bar on stderr for each map-like call, as tqdm's `process_map` does:
    /// done/total, rate and ETA (for `imap`, whose total is unknown, the count and rate). Only
    /// when stderr is a terminal: in a batch job or a pipe nothing is drawn. The parent draws it
    /// from the pool's progress reports (after an [`on_progress`](Self::on_progress) hook);
    /// workers never write to the terminal. Needs the `progress` feature (indicatif).
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = multiproc::Pool::builder().processes(2).progress_bar(true).build()?;
    /// let squares = pool.map(|x: u64| x * x, 0..1000)?;
    /// assert_eq!(squares[999], 998_001);
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    #[cfg(feature = "progress")]
    pub fn progress_bar(mut self, yes: bool) -> Self {
        self.progress_bar = yes;
        self
    }

    /// Starts the workers.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] for `processes(0)`, `max_tasks_per_child(0)`,
    /// `task_timeout(0)`, `chunksize(0)` or a `max_message_bytes` of 0 or over the maximum;
    /// [`Error::InvalidEnv`] from [`cpu_count`](crate::cpu_count); [`Error::Io`] if a fork fails.
    pub fn build(self) -> Result<Pool> {
        self.build_with(None)
    }

    /// [`build`](PoolBuilder::build), with workers started by `starter` (the MPI ranks of
    /// `crate::mpi`) instead of the pool's start method.
    pub(crate) fn build_with(self, starter: Option<Box<dyn self::start::Starter>>) -> Result<Pool> {
        let processes = match self.processes {
            Some(0) => {
                return Err(Error::invalid_arg(
                    "processes",
                    0,
                    "a pool needs at least one process",
                ));
            }
            Some(n) => n,
            None => crate::sizing::cpu_count()?,
        };
        if self.max_tasks_per_child == Some(0) {
            return Err(Error::invalid_arg(
                "max_tasks_per_child",
                0,
                "must be at least 1",
            ));
        }
        if self.task_timeout == Some(Duration::ZERO) {
            return Err(Error::invalid_arg(
                "task_timeout",
                "0s",
                "must be longer than zero",
            ));
        }
        if self.chunksize == Some(0) {
            return Err(Error::invalid_arg("chunksize", 0, "must be at least 1"));
        }
        if self.max_message_bytes == 0 || self.max_message_bytes > MAX_MESSAGE_BYTES {
            return Err(Error::invalid_arg(
                "max_message_bytes",
                self.max_message_bytes,
                format!("must be between 1 and {MAX_MESSAGE_BYTES}"),
            ));
        }
        let thread_env = if self.limit_threads {
            let cpus = crate::sizing::cpu_count().unwrap_or(1);
            Some((cpus / processes).max(1).to_string())
        } else {
            None
        };
        let mpi_ranks = starter.is_some();
        let method = match starter {
            Some(_) => StartMethod::Fork,
            None => self::start::resolve(self.start_method)?,
        };
        if method == StartMethod::ForkServer
            && self
                .initializer
                .as_ref()
                .is_some_and(|i| i.fn_ref.is_none())
        {
            return Err(Error::invalid_arg(
                "initializer",
                "a closure that captures",
                "a ForkServer pool runs its initializer in a fresh process, which cannot \
                 receive a capture: pass a fn item or a closure that captures nothing",
            ));
        }
        let book = Arc::new(Book::default());
        let core = Scheduler::start(
            Config {
                processes,
                max_tasks_per_child: self.max_tasks_per_child,
                retries: self.retries,
                task_timeout: self.task_timeout,
                initializer: self.initializer,
                thread_env,
            },
            match starter {
                Some(starter) => starter,
                None => self::start::starter(method)?,
            },
            book.clone(),
        )?;
        Ok(Pool {
            shared: Arc::new(Shared {
                core: Mutex::new(core),
                book,
                driver: driver::Driver::new()?,
            }),
            processes,
            chunksize: AtomicUsize::new(self.chunksize.unwrap_or(0)),
            limit: self.max_message_bytes,
            on_progress: bar::with_bar(self.on_progress, self.progress_bar),
            mpi_ranks,
        })
    }
}

/// What a map-like call runs: the trampoline, how to split its inputs, and its context.
struct Plan {
    fn_ref: FnRef,
    ends: EndsFn,
    ctx: Option<Encoded>,
    /// This call's chunk size, instead of the pool's ([`Pool::map_chunked`]).
    chunksize: Option<usize>,
}

impl Plan {
    fn new(t: Trampoline, ends: EndsFn, ctx: Option<Encoded>) -> Plan {
        Plan {
            fn_ref: FnRef::of(t),
            ends,
            ctx,
            chunksize: None,
        }
    }
}

impl Pool {
    /// A pool of [`cpu_count`](crate::cpu_count) workers.
    ///
    /// # Errors
    ///
    /// As [`PoolBuilder::build`].
    pub fn new() -> Result<Pool> {
        Pool::builder().build()
    }

    /// A pool of `n` workers.
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = multiproc::Pool::with_processes(2)?;
    /// assert_eq!(pool.processes(), 2);
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] for `0`; as [`PoolBuilder::build`].
    pub fn with_processes(n: usize) -> Result<Pool> {
        Pool::builder().processes(n).build()
    }

    /// A builder for the other settings.
    pub fn builder() -> PoolBuilder {
        PoolBuilder {
            processes: None,
            initializer: None,
            max_tasks_per_child: None,
            retries: 0,
            task_timeout: None,
            chunksize: None,
            limit_threads: true,
            max_message_bytes: MAX_MESSAGE_BYTES,
            on_progress: None,
            start_method: None,
            progress_bar: false,
        }
    }

    /// The number of worker processes.
    pub fn processes(&self) -> usize {
        self.processes
    }

    /// The pids of the workers alive now (they change when workers are replaced).
    pub fn pids(&self) -> Vec<i32> {
        self.shared.lock().pids()
    }

    /// How many workers were replaced (after a death or `max_tasks_per_child`) so far.
    pub fn replaced_workers(&self) -> u64 {
        self.shared.lock().replaced()
    }

    /// Sets the number of inputs per task for later calls; `None` restores the default.
    ///
    /// # Examples
    ///
    /// ```
    /// # let pool = multiproc::Pool::with_processes(2)?;
    /// pool.set_chunksize(Some(7))?;
    /// assert_eq!(pool.map(|x: u32| x, 0..20)?, (0..20).collect::<Vec<_>>());
    /// assert!(pool.set_chunksize(Some(0)).is_err());
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] for `Some(0)`.
    pub fn set_chunksize(&self, n: Option<usize>) -> Result<()> {
        if n == Some(0) {
            return Err(Error::invalid_arg("chunksize", 0, "must be at least 1"));
        }
        self.chunksize.store(n.unwrap_or(0), Ordering::Relaxed);
        Ok(())
    }

    /// The pool's chunk size for [`map`](Pool::map) and friends: `None` for the default
    /// (`ceil(len / (4 × processes))`).
    ///
    /// ```
    /// let pool = multiproc::Pool::builder().processes(1).chunksize(5).build()?;
    /// assert_eq!(pool.chunksize(), Some(5));
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    pub fn chunksize(&self) -> Option<usize> {
        match self.chunksize.load(Ordering::Relaxed) {
            0 => None,
            n => Some(n),
        }
    }

    fn chunksize_for(&self, len: Option<usize>) -> usize {
        match self.chunksize.load(Ordering::Relaxed) {
            0 => len.map_or(1, |n| n.div_ceil(4 * self.processes).max(1)),
            n => n,
        }
    }

    fn report(&self, done: usize, total: Option<usize>) {
        if let Some(f) = &self.on_progress {
            f(done, total);
        }
    }

    fn open(&self) -> Result<MutexGuard<'_, Scheduler>> {
        let core = self.shared.lock();
        if core.is_terminated() {
            return Err(Error::InvalidState("the pool was terminated".into()));
        }
        if core.is_closed() {
            return Err(Error::InvalidState("the pool is closed".into()));
        }
        Ok(core)
    }

    fn encode_ctx<C: Serialize>(&self, ctx: &C) -> Result<Encoded> {
        let mut fds = Vec::new();
        let mut encode =
            || crate::fdpass::encoding_into(&mut fds, false, || crate::wire::encode(ctx));
        // Only a pool of MPI ranks carries attachments (a local pool of an MPI process sends
        // the bytes inline).
        let (bytes, mpi) = if self.mpi_ranks {
            crate::fdpass::collecting_mpi(encode)
        } else {
            (encode(), Vec::new())
        };
        let bytes = bytes?;
        if bytes.len() > self.limit {
            return Err(Error::TooLarge {
                size: bytes.len(),
                limit: self.limit,
            });
        }
        if fds.len() > MAX_FDS {
            return Err(Error::invalid_arg(
                "descriptors of a pool context",
                fds.len(),
                format!("a context can carry at most {MAX_FDS} shared-memory values"),
            ));
        }
        Ok(Encoded {
            bytes: Arc::new(bytes),
            fds: (!fds.is_empty()).then(|| Arc::new(fds)),
            mpi: (!mpi.is_empty()).then(|| Arc::new(mpi)),
        })
    }

    /// The inputs of a call run from this thread. Plain-data inputs (see `chunk`) from an
    /// iterator that knows its length are encoded at once into their tasks' bytes (`chunksize`,
    /// or the pool's, for that length); other inputs are collected as values.
    fn inputs<T: Serialize + DeserializeOwned>(
        &self,
        items: impl IntoIterator<Item = T>,
        chunksize: Option<usize>,
    ) -> Result<Inputs<T>> {
        let iter = items.into_iter();
        match (Codec::of::<T>(), iter.size_hint()) {
            (Codec::Fixed(size), (lo, Some(hi))) if lo == hi => {
                let chunk = chunksize.unwrap_or_else(|| self.chunksize_for(Some(lo)));
                PlainChunks::encode(iter, size, chunk, self.limit).map(Inputs::Plain)
            }
            _ => Ok(Inputs::Values(iter.collect())),
        }
    }

    /// Runs a job over all of `items` from this thread, handing each input's outcome to
    /// `put(index, result)` (exactly once per input) as it arrives.
    fn run<T: Serialize + DeserializeOwned, R: DeserializeOwned>(
        &self,
        plan: Plan,
        items: Inputs<T>,
        mut put: impl FnMut(usize, Result<R>),
    ) -> Result<()> {
        let n = items.len();
        let mut core = self.open()?;
        if n == 0 {
            return Ok(());
        }
        let mut chunks = Tasks::new(
            items,
            plan.chunksize
                .unwrap_or_else(|| self.chunksize_for(Some(n))),
            self.limit,
            core.take_spare(),
        );
        let mut seen = Seen::new(n);
        let got = std::cell::Cell::new(0usize);
        let mut take = |i: usize, r: Result<R>| {
            if seen.first(i) {
                got.set(got.get() + 1);
                put(i, r);
            }
        };
        let job = core.new_job(plan.fn_ref, plan.ends, plan.ctx, None);
        let status = loop {
            while core.wants_tasks() {
                match chunks.next_task(job) {
                    Ok(Some(t)) => core.submit(t),
                    Ok(None) => break,
                    Err(e) => {
                        core.finish_job(job);
                        return Err(e);
                    }
                }
            }
            let before = got.get();
            while let Some(ev) = core.take_event(job) {
                match ev {
                    Event::Done(done) => done.decode::<R>(&mut take),
                    Event::Failed { index, error } => take(index, Err(error)),
                    Event::Aborted => {}
                }
            }
            if got.get() != before {
                self.report(got.get(), Some(n));
            }
            if got.get() == n {
                break Ok(());
            }
            if core.is_terminated() {
                break Err(terminated());
            }
            if let Err(e) = core.drive(None) {
                break Err(e);
            }
        };
        core.finish_job(job);
        let deferred = core.take_deferred();
        drop(core);
        run_deferred(deferred);
        status
    }

    /// [`run`](Pool::run) collecting every input's `Result`.
    fn run_results<T: Serialize + DeserializeOwned, R: DeserializeOwned>(
        &self,
        plan: Plan,
        items: Inputs<T>,
    ) -> Result<Vec<Result<R>>> {
        let mut out: Vec<Option<Result<R>>> = (0..items.len()).map(|_| None).collect();
        self.run(plan, items, |i, r| out[i] = Some(r))?;
        Ok(out
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(terminated())))
            .collect())
    }

    /// [`run`](Pool::run) collecting the values, or the first error in input order.
    fn run_values<T: Serialize + DeserializeOwned, R: DeserializeOwned>(
        &self,
        plan: Plan,
        items: Inputs<T>,
    ) -> Result<Vec<R>> {
        let n = items.len();
        let run = plan
            .chunksize
            .unwrap_or_else(|| self.chunksize_for(Some(n)));
        let mut out = InOrder::new(n, run);
        let mut first_err: Option<(usize, Error)> = None;
        self.run(plan, items, |i, r| match r {
            Ok(v) => out.put(i, v),
            Err(e) => {
                if first_err.as_ref().is_none_or(|(j, _)| i < *j) {
                    first_err = Some((i, e));
                }
            }
        })?;
        if let Some((_, e)) = first_err {
            return Err(e);
        }
        out.finish(n).ok_or_else(terminated)
    }

    /// `f` applied to every input, in input order: Python's `Pool.map`.
    ///
    /// Inputs are sent in chunks of [`chunksize`](PoolBuilder::chunksize) (default
    /// `ceil(len / (4 × processes))`, as Python's); several chunks are in flight per worker.
    ///
    /// # Examples
    ///
    /// ```
    /// # let pool = multiproc::Pool::with_processes(2)?;
    /// let lens = pool.map(|s: String| s.len(), ["a", "bb", "ccc"].map(String::from))?;
    /// assert_eq!(lens, vec![1, 2, 3]);
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    ///
    /// # Inputs are owned values
    ///
    /// Each input is encoded, sent to a worker and decoded there into a value that `f` owns, so
    /// `T` is `DeserializeOwned`: `String`, not `&str`; `Vec<u8>`, not `&[u8]`. A function of a
    /// borrowed type does not compile, with "implementation of `Deserialize` is not general
    /// enough" (the worker has no buffer of the parent's that the `&str` could point into):
    ///
    /// ```compile_fail
    /// # let pool = multiproc::Pool::with_processes(2)?;
    /// fn len(s: &str) -> usize { s.len() }
    /// pool.map(len, vec!["a", "bb"])?; // error: implementation of `Deserialize` is not general enough
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    ///
    /// The fix: take the owned type, and give owned inputs (or borrow inside `f`):
    ///
    /// ```
    /// # let pool = multiproc::Pool::with_processes(2)?;
    /// fn len(s: String) -> usize { s.len() }
    /// assert_eq!(pool.map(len, ["a", "bb"].map(String::from))?, vec![1, 2]);
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// The first failed input's error, in input order ([`Error::TaskPanicked`],
    /// [`Error::WorkerDied`], [`Error::Timeout`]); use [`map_results`](Pool::map_results) for
    /// every input's outcome. [`Error::InvalidState`] on a closed or terminated pool,
    /// [`Error::Disconnected`] if it is terminated meanwhile, [`Error::TooLarge`] for an input
    /// chunk over the limit.
    pub fn map<F, T, R>(&self, f: F, items: impl IntoIterator<Item = T>) -> Result<Vec<R>>
    where
        F: Fn(T) -> R + Copy + Send + 'static,
        T: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned,
    {
        let _ = f;
        assert_zst::<F>();
        let plan = Plan::new(fnref::call::<F, T, R>, fnref::item_ends::<T>, None);
        self.run_values(plan, self.inputs(items, None)?)
    }

    /// Like [`map`](Pool::map), but every input's own `Result`: one failure does not hide the
    /// other results.
    ///
    /// # Examples
    ///
    /// ```
    /// # let pool = multiproc::Pool::with_processes(2)?;
    /// let out = pool.map_results(|x: u32| if x == 2 { panic!("two") } else { x }, 0..4)?;
    /// assert!(out[2].as_ref().unwrap_err().panic().unwrap().message.contains("two"));
    /// assert_eq!(*out[3].as_ref().unwrap(), 3);
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// The outer error is the pool's: closed, terminated, or an input chunk too large.
    pub fn map_results<F, T, R>(
        &self,
        f: F,
        items: impl IntoIterator<Item = T>,
    ) -> Result<Vec<Result<R>>>
    where
        F: Fn(T) -> R + Copy + Send + 'static,
        T: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned,
    {
        let _ = f;
        assert_zst::<F>();
        let plan = Plan::new(fnref::call::<F, T, R>, fnref::item_ends::<T>, None);
        self.run_results(plan, self.inputs(items, None)?)
    }

    /// `f(a, b, …)` for every tuple `(a, b, …)` of 1 to 6 fields: Python's `Pool.starmap`.
    /// `f` is any function of that many arguments ([`StarFn`]); closures need their argument
    /// types written out.
    ///
    /// # Examples
    ///
    /// ```
    /// # let pool = multiproc::Pool::with_processes(2)?;
    /// fn pow(base: u64, exp: u32) -> u64 { base.pow(exp) }
    /// assert_eq!(pool.starmap(pow, vec![(2, 3), (3, 2)])?, vec![8, 9]);
    ///
    /// fn clamp(x: i32, lo: i32, hi: i32) -> i32 { x.clamp(lo, hi) }
    /// assert_eq!(pool.starmap(clamp, [(5, 0, 3), (-1, 0, 3)])?, vec![3, 0]);
    ///
    /// let labels = pool.starmap(|n: u8| format!("#{n}"), [(1,), (2,)])?;
    /// assert_eq!(labels, ["#1", "#2"]);
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// As [`map`](Pool::map).
    pub fn starmap<F, Args, R>(&self, f: F, items: impl IntoIterator<Item = Args>) -> Result<Vec<R>>
    where
        F: StarFn<Args, Output = R> + Copy + Send + 'static,
        Args: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned,
    {
        let _ = f;
        assert_zst::<F>();
        let plan = Plan::new(
            fnref::call_star::<F, Args, R>,
            fnref::item_ends::<Args>,
            None,
        );
        self.run_values(plan, self.inputs(items, None)?)
    }

    /// [`map`](Pool::map) with chunks of `chunksize` inputs for this call only (Python's
    /// `Pool.map(f, xs, chunksize)`); the pool's own chunk size
    /// ([`set_chunksize`](Pool::set_chunksize)) is left as it is for other calls.
    ///
    /// # Examples
    ///
    /// ```
    /// # let pool = multiproc::Pool::with_processes(2)?;
    /// let squares = pool.map_chunked(|x: u64| x * x, 0..1000, 1)?; // one input per task
    /// assert_eq!(squares[999], 998_001);
    /// assert!(pool.map_chunked(|x: u64| x, 0..10, 0).is_err());
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] for a `chunksize` of 0; otherwise as [`map`](Pool::map).
    pub fn map_chunked<F, T, R>(
        &self,
        f: F,
        items: impl IntoIterator<Item = T>,
        chunksize: usize,
    ) -> Result<Vec<R>>
    where
        F: Fn(T) -> R + Copy + Send + 'static,
        T: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned,
    {
        if chunksize == 0 {
            return Err(Error::invalid_arg("chunksize", 0, "must be at least 1"));
        }
        let _ = f;
        assert_zst::<F>();
        let mut plan = Plan::new(fnref::call::<F, T, R>, fnref::item_ends::<T>, None);
        plan.chunksize = Some(chunksize);
        self.run_values(plan, self.inputs(items, Some(chunksize))?)
    }

    /// `f(&ctx, x)` for every input: what a capturing closure would do. `ctx` is encoded once
    /// and sent once to each worker that runs part of this call.
    ///
    /// # Examples
    ///
    /// ```
    /// # let pool = multiproc::Pool::with_processes(2)?;
    /// let offsets = vec![10u64, 20, 30];
    /// let out = pool.map_with(&offsets, |o: &Vec<u64>, i: usize| o[i] + 1, 0..3)?;
    /// assert_eq!(out, vec![11, 21, 31]);
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// As [`map`](Pool::map); [`Error::TooLarge`] for a context over the limit.
    pub fn map_with<C, F, T, R>(
        &self,
        ctx: &C,
        f: F,
        items: impl IntoIterator<Item = T>,
    ) -> Result<Vec<R>>
    where
        C: Serialize + DeserializeOwned + 'static,
        F: Fn(&C, T) -> R + Copy + Send + 'static,
        T: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned,
    {
        let _ = f;
        assert_zst::<F>();
        let plan = Plan::new(
            fnref::call_with::<F, C, T, R>,
            fnref::item_ends::<T>,
            Some(self.encode_ctx(ctx)?),
        );
        self.run_values(plan, self.inputs(items, None)?)
    }

    /// `f(x)` in a worker, waiting for the result: Python's `Pool.apply`.
    ///
    /// # Examples
    ///
    /// ```
    /// # let pool = multiproc::Pool::with_processes(2)?;
    /// assert_eq!(pool.apply(|x: u64| x * x, 12)?, 144);
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// The task's error, as for [`map`](Pool::map).
    pub fn apply<F, T, R>(&self, f: F, x: T) -> Result<R>
    where
        F: Fn(T) -> R + Copy + Send + 'static,
        T: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned,
    {
        let _ = f;
        assert_zst::<F>();
        let plan = Plan::new(fnref::call::<F, T, R>, fnref::item_ends::<T>, None);
        self.run_values(plan, self.inputs([x], None)?)?
            .pop()
            .ok_or_else(terminated)
    }

    /// `f(&ctx, x)` in a worker, waiting for the result.
    ///
    /// # Examples
    ///
    /// ```
    /// # let pool = multiproc::Pool::with_processes(2)?;
    /// let greeting = "hello".to_string();
    /// let s = pool.apply_with(&greeting, |g: &String, name: String| format!("{g} {name}"), "you".into())?;
    /// assert_eq!(s, "hello you");
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// As [`map_with`](Pool::map_with).
    pub fn apply_with<C, F, T, R>(&self, ctx: &C, f: F, x: T) -> Result<R>
    where
        C: Serialize + DeserializeOwned + 'static,
        F: Fn(&C, T) -> R + Copy + Send + 'static,
        T: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned,
    {
        self.map_with(ctx, f, [x])?.pop().ok_or_else(terminated)
    }

    /// An iterator of `f(x)` in input order, pulling `items` lazily with a bounded number of
    /// inputs in flight: an endless input works in flat memory (Python's `imap` reads its whole
    /// input first). Default chunksize 1.
    ///
    /// # Examples
    ///
    /// ```
    /// # let pool = multiproc::Pool::with_processes(2)?;
    /// let firsts: Vec<u64> = pool
    ///     .imap(|x: u64| x * x, 0..)? // endless input
    ///     .take(5)
    ///     .collect::<Result<_, _>>()?;
    /// assert_eq!(firsts, vec![0, 1, 4, 9, 16]);
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::InvalidState`] on a closed or terminated pool; each item is the input's own
    /// `Result`.
    pub fn imap<F, T, R, I>(&self, f: F, items: I) -> Result<IMap<'_, I::IntoIter, R>>
    where
        F: Fn(T) -> R + Copy + Send + 'static,
        T: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned,
        I: IntoIterator<Item = T>,
    {
        self.imap_impl(f, items, true)
    }

    /// Like [`imap`](Pool::imap), but results come as they finish, not in input order.
    ///
    /// # Examples
    ///
    /// ```
    /// # let pool = multiproc::Pool::with_processes(2)?;
    /// let mut v: Vec<u64> = pool.imap_unordered(|x: u64| x + 1, 0..10)?.collect::<Result<_, _>>()?;
    /// v.sort();
    /// assert_eq!(v, (1..11).collect::<Vec<_>>());
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// As [`imap`](Pool::imap).
    pub fn imap_unordered<F, T, R, I>(&self, f: F, items: I) -> Result<IMap<'_, I::IntoIter, R>>
    where
        F: Fn(T) -> R + Copy + Send + 'static,
        T: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned,
        I: IntoIterator<Item = T>,
    {
        self.imap_impl(f, items, false)
    }

    fn imap_impl<F, T, R, I>(
        &self,
        _f: F,
        items: I,
        ordered: bool,
    ) -> Result<IMap<'_, I::IntoIter, R>>
    where
        F: Fn(T) -> R + Copy + Send + 'static,
        T: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned,
        I: IntoIterator<Item = T>,
    {
        assert_zst::<F>();
        let chunksize = self.chunksize_for(None);
        let plan = Plan::new(fnref::call::<F, T, R>, fnref::item_ends::<T>, None);
        driver::ensure(&self.shared)?;
        let job = self.open()?.new_job(plan.fn_ref, plan.ends, None, None);
        let mut imap = IMap {
            pool: self,
            job,
            chunks: Chunker::new(items.into_iter(), chunksize, self.limit),
            ordered,
            window: (self.processes * chunksize * 32).max(64),
            next_out: 0,
            yielded: 0,
            buffer: Default::default(),
            ready: Default::default(),
            aborted: false,
            fused: false,
        };
        // The first window of inputs runs in the background until the first `next`.
        imap.start()?;
        Ok(imap)
    }

    fn submit_async<R, T>(&self, plan: Plan, items: Vec<T>, sink: Sink) -> Result<()>
    where
        T: Serialize + DeserializeOwned,
    {
        let n = items.len();
        let chunksize = self.chunksize_for(Some(n));
        let mut chunks = Chunker::from_vec(items, chunksize, self.limit, Vec::new());
        let mut tasks = Vec::new();
        while let Some(t) = chunks.next_task(0, usize::MAX)? {
            tasks.push(t);
        }
        driver::ensure(&self.shared)?;
        let mut core = self.open()?;
        let job = core.new_job(plan.fn_ref, plan.ends, plan.ctx, Some(sink));
        for t in tasks {
            core.submit(Task { job, ..t });
        }
        // Hand the tasks to the workers now; the answers are read by the next caller.
        core.drive(Some(Instant::now()))?;
        let deferred = core.take_deferred();
        drop(core);
        // The driver thread reads the answers (and runs the callbacks) from now on.
        self.shared.driver.notify();
        run_deferred(deferred);
        let _ = std::marker::PhantomData::<R>;
        Ok(())
    }

    /// Starts `f(x)` in a worker and returns at once: Python's `Pool.apply_async`. Attach
    /// callbacks with [`AsyncResult::callback`] and [`AsyncResult::error_callback`].
    ///
    /// # Examples
    ///
    /// ```
    /// # let pool = multiproc::Pool::with_processes(2)?;
    /// let results: Vec<_> = (0..4u64)
    ///     .map(|x| pool.apply_async(|x: u64| x * 10, x))
    ///     .collect::<Result<_, _>>()?;
    /// let values: Vec<u64> = results.into_iter().map(|r| r.get()).collect::<Result<_, _>>()?;
    /// assert_eq!(values, vec![0, 10, 20, 30]);
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::InvalidState`] on a closed or terminated pool; the task's own error comes from
    /// [`AsyncResult::get`].
    pub fn apply_async<F, T, R>(&self, f: F, x: T) -> Result<AsyncResult<R>>
    where
        F: Fn(T) -> R + Copy + Send + 'static,
        T: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        let _ = f;
        assert_zst::<F>();
        let state = AsyncState::<R>::new();
        let st = state.clone();
        let sink: Sink = Box::new(move |ev, deferred| {
            let mut res = None;
            match ev {
                Event::Done(done) => done.decode::<R>(|_, r| res = Some(r)),
                Event::Failed { error, .. } => res = Some(Err(error)),
                Event::Aborted => res = Some(Err(terminated())),
            }
            st.complete(res.unwrap_or_else(|| Err(terminated())), deferred);
            true
        });
        let plan = Plan::new(fnref::call::<F, T, R>, fnref::item_ends::<T>, None);
        self.submit_async::<R, T>(plan, vec![x], sink)?;
        Ok(AsyncResult {
            shared: self.shared.clone(),
            state,
        })
    }

    /// Starts a [`map`](Pool::map) and returns at once: Python's `Pool.map_async`.
    ///
    /// # Examples
    ///
    /// ```
    /// # let pool = multiproc::Pool::with_processes(2)?;
    /// let r = pool.map_async(|x: u32| x + 1, 0..100)?;
    /// assert_eq!(r.get()?.len(), 100);
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// As [`apply_async`](Pool::apply_async); the value is the first failed input's error.
    pub fn map_async<F, T, R>(
        &self,
        f: F,
        items: impl IntoIterator<Item = T>,
    ) -> Result<AsyncResult<Vec<R>>>
    where
        F: Fn(T) -> R + Copy + Send + 'static,
        T: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        let _ = f;
        assert_zst::<F>();
        let plan = Plan::new(fnref::call::<F, T, R>, fnref::item_ends::<T>, None);
        self.run_async(plan, items.into_iter().collect())
    }

    /// Starts a [`starmap`](Pool::starmap) and returns at once: Python's `Pool.starmap_async`.
    ///
    /// # Examples
    ///
    /// ```
    /// # let pool = multiproc::Pool::with_processes(2)?;
    /// let r = pool.starmap_async(|a: u32, b: u32| a * b, [(2, 3), (4, 5)])?;
    /// assert_eq!(r.get()?, vec![6, 20]);
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// As [`map_async`](Pool::map_async).
    pub fn starmap_async<F, Args, R>(
        &self,
        f: F,
        items: impl IntoIterator<Item = Args>,
    ) -> Result<AsyncResult<Vec<R>>>
    where
        F: StarFn<Args, Output = R> + Copy + Send + 'static,
        Args: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        let _ = f;
        assert_zst::<F>();
        let plan = Plan::new(
            fnref::call_star::<F, Args, R>,
            fnref::item_ends::<Args>,
            None,
        );
        self.run_async(plan, items.into_iter().collect())
    }

    /// Submits a map-like job over `items` and returns its [`AsyncResult`] (all outcomes, in
    /// order; the first failed input's error if any failed).
    fn run_async<T, R>(&self, plan: Plan, items: Vec<T>) -> Result<AsyncResult<Vec<R>>>
    where
        T: Serialize + DeserializeOwned,
        R: DeserializeOwned + Send + 'static,
    {
        let n = items.len();
        let state = AsyncState::<Vec<R>>::new();
        let st = state.clone();
        let mut out: Vec<Option<Result<R>>> = (0..n).map(|_| None).collect();
        let mut got = 0usize;
        let sink: Sink = Box::new(move |ev, deferred| {
            match ev {
                Event::Done(done) => done.decode::<R>(|i, r| {
                    got += usize::from(out[i].is_none());
                    out[i] = Some(r);
                }),
                Event::Failed { index, error } => {
                    got += usize::from(out[index].is_none());
                    out[index] = Some(Err(error));
                }
                Event::Aborted => {
                    st.complete(Err(terminated()), deferred);
                    return true;
                }
            }
            if got < n {
                return false;
            }
            let all = std::mem::take(&mut out)
                .into_iter()
                .map(|r| r.unwrap_or_else(|| Err(terminated())))
                .collect();
            st.complete(all, deferred);
            true
        });
        if n == 0 {
            let mut deferred = Vec::new();
            state.complete(Ok(Vec::new()), &mut deferred);
            run_deferred(deferred);
        } else {
            self.submit_async::<R, T>(plan, items, sink)?;
        }
        Ok(AsyncResult {
            shared: self.shared.clone(),
            state,
        })
    }

    /// Accepts no more work: Python's `Pool.close`. Work already submitted still runs.
    pub fn close(&self) {
        self.shared.lock().close();
    }

    /// Waits for the submitted work to finish (running the callbacks of [`AsyncResult`]s), then
    /// stops the workers and reaps them: Python's `Pool.join`. Call [`close`](Pool::close) or
    /// [`terminate`](Pool::terminate) first.
    ///
    /// # Examples
    ///
    /// ```
    /// # let pool = multiproc::Pool::with_processes(2)?;
    /// let r = pool.apply_async(|x: u8| x, 7)?;
    /// pool.close();
    /// pool.join()?;
    /// assert_eq!(r.get()?, 7);
    /// assert!(pool.pids().is_empty());
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::InvalidState`] if the pool is neither closed nor terminated.
    pub fn join(&self) -> Result<()> {
        {
            let core = self.shared.lock();
            if !core.is_closed() && !core.is_terminated() {
                return Err(Error::InvalidState(
                    "join needs close() or terminate() first".into(),
                ));
            }
        }
        loop {
            let mut core = self.shared.lock();
            if core.is_terminated() {
                core.abort_all();
            }
            if !core.busy() {
                break;
            }
            core.drive(None)?;
            let deferred = core.take_deferred();
            drop(core);
            run_deferred(deferred);
        }
        // Callbacks the driver thread took are run before join returns (as in Python).
        self.shared.driver.wait_callbacks();
        let mut core = self.shared.lock();
        core.stop_workers();
        let patience = Instant::now() + Duration::from_secs(10);
        while !core.all_exited() && Instant::now() < patience {
            if let Err(e) = core.drive(Some(patience)) {
                core.kill_remaining();
                return Err(e);
            }
        }
        core.kill_remaining();
        Ok(())
    }

    /// Stops at once: every worker is killed (`SIGKILL`) and reaped, queued work is discarded,
    /// and calls running on other threads return [`Error::Disconnected`] promptly: Python's
    /// `Pool.terminate`. Works while another thread is inside `map`.
    pub fn terminate(&self) {
        self.shared.book.kill_all();
        let mut core = self.shared.lock();
        core.abort_all();
        let deferred = core.take_deferred();
        drop(core);
        self.shared.driver.notify();
        run_deferred(deferred);
    }
}

impl Drop for Pool {
    /// Terminates the pool (see the type's `# Caveats`) and ends its driver thread.
    fn drop(&mut self) {
        self.terminate();
        self.shared.driver.shut_down();
    }
}

#[allow(dead_code)]
fn _items_used(_: Items, _: JobId) {}

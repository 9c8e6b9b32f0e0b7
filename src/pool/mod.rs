//! [`Pool`]: Python's `multiprocessing.Pool` over forked worker processes that survive crashes.
//!
//! Layout: `fnref` names functions across processes, `chunk` says what a task's inputs and
//! outcomes are as bytes, `transport` moves frames, `worker` is the child's loop, `progress`
//! the memory it shares with the parent (which input it runs; its journal region), `journal`
//! keeps a worker's finished outcomes through its death, `order` assembles them, `sched` is the
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

mod async_calls;
mod bar;
mod builder;
mod calls;
mod chunk;
mod chunker;
mod completed;
mod driver;
mod fnref;
mod imap;
mod journal;
mod order;
mod progress;
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

pub use self::builder::PoolBuilder;
pub use self::completed::{AsCompleted, as_completed};
pub use self::result::{AsyncResult, IMap};
pub use self::star::StarFn;
pub use self::start::{StartMethod, init, set_start_method};

use self::chunk::Codec;
use self::fnref::{FnRef, Trampoline};
use self::result::{
    AsyncState, Chunker, Collect, FirstOnly, InOrder, Inputs, PlainChunks, Seen, Tasks, Values,
    run_deferred, terminated,
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

/// What a map-like call runs: the trampoline, how to split its inputs, and its context.
struct Plan {
    fn_ref: FnRef,
    ends: EndsFn,
    ctx: Option<Encoded>,
    /// This call's chunk size, instead of the pool's ([`Pool::map_chunked`]).
    chunksize: Option<usize>,
}

impl Plan {
    /// The plan of `f(x)` for each input `x` (`F` checked to capture nothing).
    fn of_fn<F, T, R>() -> Plan
    where
        F: Fn(T) -> R + Copy,
        T: DeserializeOwned,
        R: Serialize + DeserializeOwned,
    {
        assert_zst::<F>();
        Plan::new(fnref::call::<F, T, R>, fnref::item_ends::<T>, None)
    }

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
        PoolBuilder::new()
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
        put: &mut impl Collect<R>,
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
        let mut take = FirstOnly {
            seen: Seen::new(n),
            got: 0,
            put,
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
            let before = take.got;
            while let Some(ev) = core.take_event(job) {
                match ev {
                    Event::Done(done) => done.decode::<R>(&mut take),
                    Event::Failed { index, error } => take.put(index, Err(error)),
                    Event::Aborted => {}
                }
            }
            if take.got != before {
                self.report(take.got, Some(n));
            }
            if take.got == n {
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
        self.run(plan, items, &mut |i: usize, r: Result<R>| out[i] = Some(r))?;
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
        let mut out = Values {
            values: InOrder::new(n, run),
            first_err: None,
        };
        self.run(plan, items, &mut out)?;
        if let Some((_, e)) = out.first_err {
            return Err(e);
        }
        out.values.finish(n).ok_or_else(terminated)
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

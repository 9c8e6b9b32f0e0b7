//! multiproc: Python's `multiprocessing` model for Rust.
//!
//! Forked processes that run your closures ([`Process`], [`spawn`]), a queue that any number of
//! them share ([`Queue`], stopped by poison pills), and CPU sizing that knows SLURM
//! ([`cpu_count`]). Linux only.
//!
//! # A tour
//!
//! A [`Process`] runs a closure in a forked child, like Python's
//! `Process(target=square, args=(5,))`. The closure may capture anything: the child is a copy
//! of the parent.
//!
//! ```
//! use multiproc::Process;
//!
//! let x = 5;
//! let p = Process::new(move || println!("{}", x * x));
//! p.start()?;
//! p.join()?;
//! assert_eq!(p.exitcode(), Some(0)); // 1 if it panicked, -9 if SIGKILLed
//! # Ok::<(), multiproc::Error>(())
//! ```
//!
//! [`spawn`] is the typed form: the child's return value comes back serialized, a panic comes
//! back as [`Error::TaskPanicked`] with its message, a crash as [`Error::WorkerDied`].
//!
//! ```
//! let h = multiproc::spawn(|| (1..=10u64).product::<u64>())?;
//! assert_eq!(h.join()?, 3_628_800);
//! # Ok::<(), multiproc::Error>(())
//! ```
//!
//! A [`Queue`] carries items between processes: many producers, many consumers, each item
//! delivered once. Workers loop with [`Queue::iter`] until they take a poison pill:
//!
//! ```
//! use multiproc::{Process, Queue};
//!
//! let jobs: Queue<u64> = Queue::new()?;
//! let squares: Queue<u64> = Queue::new()?;
//! let workers: Vec<Process> = (0..2)
//!     .map(|_| {
//!         let (jobs, squares) = (jobs.clone(), squares.clone());
//!         Process::new(move || {
//!             for x in jobs.iter() {
//!                 squares.put(&(x * x)).unwrap();
//!             }
//!         })
//!     })
//!     .collect();
//! for w in &workers {
//!     w.start()?;
//! }
//! for x in 1..=4 {
//!     jobs.put(&x)?;
//! }
//! for _ in &workers {
//!     jobs.put_pill()?; // one pill per worker
//! }
//! let mut got: Vec<u64> = (0..4).map(|_| squares.get()).collect::<Result<_, _>>()?;
//! got.sort();
//! assert_eq!(got, [1, 4, 9, 16]);
//! for w in &workers {
//!     w.join()?;
//! }
//! # Ok::<(), multiproc::Error>(())
//! ```
//!
//! Size a pool of workers from the job's allocation: [`cpu_budget`] reads the task's share
//! (`SLURM_CPUS_PER_TASK`) inside a job step, the job's CPUs on this node (`SLURM_CPUS_ON_NODE`,
//! ...) in the batch script, capped by the CPUs the process may really use.
//!
//! ```
//! let budget = multiproc::cpu_budget()?;
//! println!("{budget}"); // "4 CPUs (SLURM_CPUS_PER_TASK)"
//! # Ok::<(), multiproc::Error>(())
//! ```
//!
//! Every name of Python's `multiprocessing`, its multiproc counterpart, and what is
//! deliberately different (owned inputs, `fn` items for pools, fork only) are in the
//! repository's `docs/python.md`; running under SLURM is in `docs/hpc.md`, and how the crate is
//! built in `docs/architecture.md`.
//!
//! A [`Pool`] of workers forked once and reused maps a function over inputs; a panicking input
//! or a killed worker fails only that input, and the pool goes on:
//!
//! ```
//! use multiproc::Pool;
//!
//! fn square(x: u64) -> u64 { x * x }
//!
//! let pool = Pool::with_processes(2)?;
//! assert_eq!(pool.map(square, 0..4)?, [0, 1, 4, 9]);
//! # Ok::<(), multiproc::Error>(())
//! ```
//!
//! # Errors
//!
//! One error type, [`Error`], for everything; a panic in a child travels back as data
//! ([`RemotePanic`]). Bad input (a malformed `SLURM_*` value, a zero capacity, starting a process
//! twice) is an error that names the variable, the value and the limit, never a panic.
//!
//! # Fork safety
//!
//! Children are made with `fork` (Python's "fork" start method): the child is a copy of the
//! parent's memory at that moment, with **only the thread that called fork**.
//!
//! - **What runs in the child**: your closure, then `_exit`. Rust's stdout and stderr are
//!   flushed once before the fork (so buffered output is not printed twice) and once before the
//!   child exits; their locks are held by the forking thread across the fork, so a child never
//!   inherits them held by another thread (printing in the child is safe). No destructor of the parent's copied state and no `atexit` handler runs in the
//!   child: a temp file, a lock file or a network session owned by the parent is not closed
//!   twice. A panic in the closure is caught (exit code 1); it never unwinds into the parent's
//!   copied frames.
//! - **A multi-threaded parent**: any lock that another thread held at the moment of the fork
//!   (inside a `Mutex` of yours, a logger, an allocator other than glibc's `malloc`, which resets
//!   its own locks; Rust's stdio locks are handled as said above) stays locked forever in the child, and a child that takes it hangs. Start
//!   processes before you start threads, or make sure the child touches no lock other threads use.
//!   A [`Pool`] that forks while the program has several threads prints one warning on stderr
//!   (`MULTIPROC_WARN_THREADS=0` silences it); a pool built with
//!   [`StartMethod::ForkServer`] forks its workers from a fresh, single-threaded execution of
//!   the program instead (see [`init`]).
//!   The test harness of `cargo test` is multi-threaded, and the crate's own tests pass under it.
//! - **Descriptors**: the child inherits the parent's open files and sockets. The crate's own
//!   descriptors are close-on-exec, so programs the child runs do not inherit them.
//! - **Reaping and exit**: every child is reaped by its [`Process`] or [`JoinHandle`], or, once
//!   that was dropped while the child ran (a non-daemon child is then detached, Python's rule),
//!   by the next [`Process::start`] or [`active_children`] call; a normal end of the program waits
//!   for every non-daemon child and kills the daemon ones. Nothing is left as a zombie.
//! - **Parent death**: each child leads its own process group and is killed, with what it
//!   started, when its parent dies (see [`Process`]).
//!
//! # Tracing
//!
//! Pools report through [`tracing`](https://docs.rs/tracing) events with target `multiproc`,
//! emitted in the parent (never in a worker); install any subscriber to see them (for example
//! `tracing_subscriber::fmt().with_env_filter("multiproc=debug").init()`):
//!
//! | event message | level | fields |
//! |---|---|---|
//! | `pool started` | INFO | `pool`, `processes` |
//! | `pool finished` | INFO | `pool`, `replaced` (workers replaced over the pool's life) |
//! | `worker started` | DEBUG | `pool`, `slot`, `pid` |
//! | `worker exited` | DEBUG | `pool`, `slot`, `pid`, `code` |
//! | `worker killed` | WARN | `pool`, `slot`, `pid`, `signal` |
//! | `worker replaced` | INFO | `pool`, `slot`, `pid` (the one that ended), `new_pid` |
//! | `task retried` | WARN | `pool`, `pid` (the worker that died running it), `item`, `attempt` |
//! | `task timed out` | WARN | `pool`, `pid`, `item`, `timeout_ms` |
//!
//! `pool` is a number unique within the process, `pid` a worker's pid, `item` the input's index
//! in the call. Without a subscriber an event costs one atomic load; nothing is formatted.
//!
//! # Codec limits
//!
//! Values cross processes encoded with [postcard](https://docs.rs/postcard), which is compact
//! but not self-describing: serde attributes that need the format to describe itself
//! (`#[serde(flatten)]`, `#[serde(untagged)]`, `skip_serializing_if`) do not round-trip. A
//! message is at most [`MAX_MESSAGE_BYTES`]. Closures given to [`Process`] and [`spawn`] are not
//! encoded at all: the child already has them.
//!
//! # Testing
//!
//! Tests that fork work under both `cargo test` and `cargo nextest run`. Bound every wait in a
//! test ([`Queue::get_timeout`], [`Process::join_timeout`]) so that a bug fails the test instead
//! of hanging it.
//!
//! # Platform support
//!
//! Linux (it uses `pidfd_open`, futexes and `/proc`), kernel 5.3 or later.

mod children;
mod error;
mod fdpass;
mod fork;
mod liveness;
#[cfg(feature = "mpi")]
pub mod mpi;
mod panic;
mod pipe;
mod pool;
mod process;
mod queue;
mod shm;
mod sizing;
mod sync;
mod sys;
mod wire;

#[cfg(test)]
mod fuzz;

pub use crate::children::{CurrentProcess, active_children, current_process};
pub use crate::error::{CodecError, Error, RemotePanic, Result};
pub use crate::pipe::{Connection, PipeReceiver, PipeSender, pipe, pipe_oneway};
pub use crate::pool::{
    AsCompleted, AsyncResult, IMap, Pool, PoolBuilder, StarFn, StartMethod, as_completed, init,
    set_start_method,
};
pub use crate::process::{JoinHandle, Process, spawn};
pub use crate::queue::{DEFAULT_QUEUE_CAPACITY, JoinableQueue, Queue, QueueIter};
pub use crate::shm::{
    ArrayGuard, KeptStats, Pod, PodVec, SharedArray, SharedValue, ValueGuard, Zeroable,
};
pub use crate::sizing::{CpuBudget, CpuSource, cpu_budget, cpu_budget_with, cpu_count};
pub use crate::sync::{
    AcquireError, AcquireResult, Barrier, Condition, ConditionGuard, Event, Lock, LockGuard, RLock,
    RLockGuard, Semaphore, SemaphoreGuard,
};
pub use crate::wire::MAX_MESSAGE_BYTES;
/// The `bytemuck` crate that [`Pod`] and [`Zeroable`] come from, for its casts and for
/// `#[bytemuck(crate = "multiproc::bytemuck")]` on a derive in a crate that does not depend on it.
pub use bytemuck;

// The README's tour is compiled and run as a doctest.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

// docs/guide.md's Rust blocks are compiled and run as doctests.
#[doc = include_str!("../docs/guide.md")]
#[cfg(doctest)]
pub struct GuideDoctests;

// So are those of docs/python.md, docs/hpc.md and docs/architecture.md.
#[doc = include_str!("../docs/python.md")]
#[cfg(doctest)]
pub struct PythonDoctests;

#[doc = include_str!("../docs/hpc.md")]
#[cfg(doctest)]
pub struct HpcDoctests;

#[doc = include_str!("../docs/architecture.md")]
#[cfg(doctest)]
pub struct ArchitectureDoctests;

//! The [`Pool`] over MPI ranks (feature `mpi`): launched by `mpirun -n N` or `srun -n N`, rank 0
//! runs the program and the other ranks are its workers, on every node of the allocation.
//!
//! ```no_run
//! use multiproc::mpi::MpiPool;
//!
//! fn square(x: u64) -> u64 {
//!     x * x
//! }
//!
//! fn main() -> multiproc::Result<()> {
//!     // First thing in main: on ranks >= 1 this runs the worker loop and never returns.
//!     let pool = MpiPool::init()?; // instead of `Pool::new()?`
//!     let squares = pool.map(square, 0..1000u64)?;
//!     assert_eq!(squares[999], 999 * 999);
//!     Ok(())
//! }
//! ```
//!
//! An [`MpiPool`] *is* a [`Pool`] (it dereferences to one): `map`, `map_with`, `starmap`,
//! `imap`, `imap_unordered`, `apply`, `apply_async`, `map_async`, `close`/`join`, progress
//! callbacks, the chunking rule and the dynamic load balancing are the same code; only the
//! workers differ. A function taking `&Pool` takes `&mpi_pool` unchanged.
//!
//! # What differs from a local pool
//!
//! - **Separate processes, maybe on other nodes**: a worker rank is a new execution of the same
//!   binary, not a fork. Globals are per rank; whatever `main` did before `init` ran on every
//!   rank; what it did after ran only on rank 0. Functions travel as offsets in the binary, so
//!   all ranks must run the same binary (mpirun and srun do).
//! - **Values travel as bytes**: a [`PodVec`](crate::PodVec) crosses as its bytes (one MPI
//!   message, no per-element encoding); a [`SharedArray`](crate::SharedArray), `SharedValue`
//!   or a sync primitive cannot cross (ranks share no memory): sending one to a rank fails with
//!   [`Error::NotSendable`](crate::Error::NotSendable). Once `init` has run, this process sends
//!   every `PodVec` as bytes, also through its local pipes and queues.
//! - **Ranks are not replaced**: a rank that dies ends the MPI job, as MPI does (mpirun or srun
//!   stop the other ranks and exit non-zero). A task that panics is caught on its rank and gives
//!   [`Error::TaskPanicked`](crate::Error::TaskPanicked); the rank keeps working.
//! - **No task timeout, no `max_tasks_per_child`, no initializer** (a rank cannot be killed and
//!   restarted alone). [`Pool::terminate`] and dropping the pool stop the worker ranks: each
//!   finalizes MPI and exits 0, even in the middle of a task.
//! - **Worker ids**: [`Pool::pids`] and [`Error::WorkerDied`](crate::Error::WorkerDied) show
//!   `4194304 + rank` (2^22 + rank), an id no Linux process can have, not a pid.
//! - **MPI belongs to the pool**: `init` initializes MPI (`MPI_THREAD_SERIALIZED`, on a thread of
//!   its own) and finalizes it when the pool and every result handle are dropped; the program
//!   must not call MPI itself. Leave `main` normally: `std::process::exit` while the pool lives
//!   skips the finalization, and the launcher reports the job as failed.
//!
//! See `docs/mpi.md` for launching (`mpirun`, `srun`, `sbatch` on several nodes).

use std::fmt;
use std::ops::Deref;

use crate::error::Result;
use crate::pool::Pool;
use crate::pool::mpi_start;

/// A [`Pool`] whose workers are the ranks 1..N of an MPI job; made by [`MpiPool::init`] on
/// rank 0. It dereferences to [`Pool`] for every call. See the [module docs](self).
pub struct MpiPool {
    pool: Pool,
    world_size: usize,
}

impl fmt::Debug for MpiPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MpiPool")
            .field("world_size", &self.world_size)
            .finish_non_exhaustive()
    }
}

/// The launcher variables that announce the world size: OpenMPI's `mpirun`, and the PMI of
/// MPICH's `mpiexec` and of `srun --mpi=pmi2`.
const SIZE_VARS: [&str; 2] = ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE"];

/// The world size the launcher announced, if any.
fn announced_size() -> Option<(String, i32)> {
    SIZE_VARS.iter().find_map(|var| {
        let n = std::env::var(var).ok()?.trim().parse().ok()?;
        Some((var.to_string(), n))
    })
}

impl MpiPool {
    /// Initializes MPI and, on rank 0, returns the pool of the `N - 1` other ranks. On every
    /// other rank it runs the worker loop and **never returns**: the process exits (code 0)
    /// when rank 0's pool is done with it, or non-zero if the worker loop itself fails.
    ///
    /// Call it first thing in `main`, before anything that should run only once.
    ///
    /// # Errors
    ///
    /// [`Error::Mpi`](crate::Error::Mpi) (on every rank) when the world has fewer than 2 ranks
    /// (the program was not started by `mpirun -n N`/`srun -n N` with N >= 2), when its size
    /// differs from the one the launcher announced (`OMPI_COMM_WORLD_SIZE`, `PMI_SIZE`: the
    /// binary was built against another MPI than the launcher's), when MPI was initialized
    /// already, or when the MPI library lacks `MPI_THREAD_SERIALIZED`.
    /// [`Error::Io`](crate::Error::Io) if a socket or thread cannot be made.
    pub fn init() -> Result<MpiPool> {
        let (starter, world) = mpi_start::init(announced_size())?;
        let world_size = world.size as usize;
        let pool = Pool::builder()
            .processes(world_size - 1)
            .limit_thread_env(false)
            .build_with(Some(Box::new(starter)))?;
        Ok(MpiPool { pool, world_size })
    }

    /// The number of ranks in the MPI job, rank 0 (this process) included: one more than
    /// [`Pool::processes`].
    pub fn world_size(&self) -> usize {
        self.world_size
    }

    /// The pool itself (MPI is finalized when it and its result handles are dropped).
    pub fn into_pool(self) -> Pool {
        self.pool
    }
}

impl Deref for MpiPool {
    type Target = Pool;

    fn deref(&self) -> &Pool {
        &self.pool
    }
}

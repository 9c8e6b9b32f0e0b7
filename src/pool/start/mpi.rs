//! The MPI starter: pool workers that are the ranks of an MPI job (feature `mpi`).
//!
//! Every rank runs the same binary and calls [`init`] first. It starts MPI
//! (`MPI_THREAD_SERIALIZED`) on a thread of its own, the *bridge*, which also finalizes it.
//! Then:
//!
//! - **rank 0** gets an [`MpiStarter`]: each worker it "starts" is the next rank. The
//!   scheduler's link to it is an ordinary socket pair whose worker end goes to the bridge (the
//!   hub, `mpi_bridge`, the only thread of rank 0 that calls MPI), which carries its frames to
//!   and from the rank; the [`Worker`] handle's death descriptor is a socket the hub writes the
//!   rank's exit code to once the rank has ended.
//! - **a rank ≥ 1** runs the pool's worker loop (`worker::serve`) on its main thread, talking
//!   MPI to rank 0 itself (`mpi_rank`), and never returns: when the worker loop ends (or rank 0
//!   stops the rank, which the bridge thread sees even mid-task), the bridge says goodbye,
//!   finalizes MPI and the process exits.
//!
//! Differences from forked workers, all forced by separate processes on other nodes: values
//! cross as bytes (the process encodes inline only: a `PodVec` travels as its bytes, a
//! `SharedArray` or sync primitive cannot travel), the progress slots are not shared (no task
//! timeout), a rank cannot be restarted (no `max_tasks_per_child`; a rank that dies ends the
//! whole MPI job, as MPI does), and a worker's "pid" is [`rank_pid`], outside the kernel's range
//! so that no signal ever reaches a local process by mistake.

use std::os::fd::{AsFd, BorrowedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use mpi::Threading;
use mpi::traits::*;
use nix::sys::signal::Signal;

use crate::error::{Error, Result};
use crate::panic;
use crate::sys::{ExitStatus, Pid};

use super::super::transport::{FrameSink, WorkerEnd};
use super::super::worker::{self, Progress, Setup};
use super::mpi_bridge::{self, Cmd};
use super::mpi_rank::{self, RankLink, RankShared};
use super::{Starter, Worker, WorkerSpec};

/// The first id past the kernel's largest pid (`PID_MAX_LIMIT`, 2^22 on 64-bit Linux).
const PID_BASE: i32 = 1 << 22;
/// How long [`Worker::wait`] waits for a rank's end before it reports the rank killed.
const WAIT_LIMIT: Duration = Duration::from_secs(60);
/// Exit code of a worker rank whose worker loop panicked outside a task.
const ESCAPED_PANIC: i32 = 70;

/// The id standing for worker rank `rank` where the pool shows a worker's pid
/// ([`Pool::pids`](crate::Pool::pids), [`Error::WorkerDied`]): `2^22 + rank`, which no Linux
/// process can have.
pub(crate) fn rank_pid(rank: i32) -> i32 {
    PID_BASE + rank
}

/// Where this process stands in the MPI job.
#[derive(Debug, Clone, Copy)]
pub(crate) struct World {
    /// The number of ranks.
    pub(crate) size: i32,
}

/// The rank-0 side of the bridge thread: how to talk to it, and the thread to join.
struct Bridge {
    cmds: Mutex<Sender<Cmd>>,
    wake: UnixStream,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Bridge {
    fn send(&self, cmd: Cmd) {
        use std::io::Write;
        let _ = self
            .cmds
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send(cmd);
        // One byte wakes the bridge (a full socket has woken it already).
        let _ = (&self.wake).write(&[1]);
    }
}

/// Starts MPI (on the bridge thread). Returns the starter and the world on rank 0; on any other
/// rank runs the worker loop and exits the process when it is done, never returning.
///
/// # Errors
///
/// [`Error::Mpi`] if MPI was initialized already in this process, gives less than
/// `MPI_THREAD_SERIALIZED`, or the world has fewer than 2 ranks (`expected`: the world size the
/// launcher announced, if any, for the message).
pub(crate) fn init(expected: Option<(String, i32)>) -> Result<(MpiStarter, World)> {
    let (hello_tx, hello_rx) = mpsc::sync_channel::<Result<(i32, i32)>>(1);
    let (cmd_tx, cmd_rx) = mpsc::channel::<Cmd>();
    let (ended_tx, ended_rx) = mpsc::channel::<i32>();
    let shared = RankShared::new();
    let rank_shared = shared.clone();
    let (wake_tx, wake_rx) = UnixStream::pair().map_err(|e| Error::io("socketpair", e))?;
    wake_rx
        .set_nonblocking(true)
        .and_then(|()| wake_tx.set_nonblocking(true))
        .map_err(|e| Error::io("set_nonblocking", e))?;
    let thread = std::thread::Builder::new()
        .name("multiproc-mpi".into())
        .spawn(move || bridge_main(expected, hello_tx, cmd_rx, wake_rx, (rank_shared, ended_rx)))
        .map_err(|e| Error::io("spawning the MPI bridge thread", e))?;
    let hello = hello_rx.recv().unwrap_or_else(|_| {
        Err(Error::Mpi(
            "the MPI bridge thread ended before MPI was initialized".into(),
        ))
    });
    let (rank, size) = match hello {
        Ok(rs) => rs,
        Err(e) => {
            let _ = thread.join();
            return Err(e);
        }
    };
    // From here on, values cross nodes: no descriptor can travel with them.
    crate::fdpass::set_inline_only();
    if rank != 0 {
        run_worker_rank(rank, shared, &ended_tx, thread);
    }
    let bridge = Arc::new(Bridge {
        cmds: Mutex::new(cmd_tx),
        wake: wake_tx,
        thread: Mutex::new(Some(thread)),
    });
    Ok((
        MpiStarter {
            size,
            next_rank: 1,
            bridge,
        },
        World { size },
    ))
}

/// The bridge thread: initializes MPI, says hello, runs the hub (rank 0) or watches the worker
/// loop (other ranks, see `mpi_rank`), and finalizes MPI. A panic here aborts the MPI job
/// rather than hang it.
fn bridge_main(
    expected: Option<(String, i32)>,
    hello: SyncSender<Result<(i32, i32)>>,
    cmds: Receiver<Cmd>,
    wake: UnixStream,
    (shared, ended): (RankShared, Receiver<i32>),
) {
    let Some((universe, threading)) = mpi::initialize_with_threading(Threading::Serialized) else {
        let _ = hello.send(Err(Error::Mpi(
            "MPI is initialized already in this process: MpiPool::init must be the only \
             initialization of MPI (call it first thing in main)"
                .into(),
        )));
        return;
    };
    let world = universe.world();
    let (rank, size) = (world.rank(), world.size());
    if let Some(problem) = world_problem(threading, size, expected) {
        let _ = hello.send(Err(Error::Mpi(problem)));
        return;
    }
    let _ = hello.send(Ok((rank, size)));
    let run = || {
        if rank == 0 {
            mpi_bridge::hub(&world, cmds, wake);
            None
        } else {
            Some(mpi_rank::watch(&world, &shared, &ended))
        }
    };
    match panic::catch(run) {
        Err(p) => {
            eprintln!("multiproc: the MPI bridge of rank {rank} panicked ({p}); aborting the job");
            world.abort(ESCAPED_PANIC);
        }
        Ok(None) => drop(universe),
        Ok(Some(code)) => {
            drop(universe);
            std::process::exit(code.max(0));
        }
    }
}

/// What is wrong with this MPI world for a pool, if anything.
fn world_problem(
    threading: Threading,
    size: i32,
    expected: Option<(String, i32)>,
) -> Option<String> {
    if !matches!(threading, Threading::Serialized | Threading::Multiple) {
        return Some(format!(
            "the MPI library gives thread support {threading:?}; an MpiPool needs at least \
             MPI_THREAD_SERIALIZED (an MPI built with thread support)"
        ));
    }
    match expected {
        Some((var, n)) if n != size => Some(format!(
            "the MPI world has {size} rank(s) but the launcher started {n} ({var}={n}): the \
             program was built against another MPI than the one of the launcher (mpirun, \
             mpiexec, srun --mpi=...); rebuild against the launcher's MPI"
        )),
        _ if size < 2 => Some(format!(
            "the MPI world has {size} rank: an MpiPool needs rank 0 and at least one worker \
             rank; run the program with `mpirun -n N` or `srun -n N`, N >= 2"
        )),
        _ => None,
    }
}

/// A worker rank: runs the worker loop over MPI (`mpi_rank`), then hands its end code to the
/// bridge thread, which says goodbye, finalizes MPI and exits the process.
fn run_worker_rank(
    rank: i32,
    shared: RankShared,
    ended: &Sender<i32>,
    bridge: JoinHandle<()>,
) -> ! {
    let outcome = panic::catch(|| -> Result<()> {
        // The socket of a `WorkerEnd`, unused: the frames go over MPI.
        let (unused, _) = crate::sys::socketpair()?;
        let link = RankLink::new(shared.clone());
        let mut setup = Setup {
            end: WorkerEnd::from_link(unused, Box::new(link)),
            progress: Arc::new(Progress::new(1)?),
            slot: 0,
            parent: crate::sys::getpid(),
            max_tasks: None,
            timed: false,
            initializer: None,
            env: None,
            close: Vec::new(),
        };
        worker::serve(&mut setup)
    });
    let code = match outcome {
        Ok(Ok(())) => 0,
        Ok(Err(e)) => {
            eprintln!("multiproc: MPI worker rank {rank}: {e}");
            2
        }
        Err(p) => {
            eprintln!("multiproc: MPI worker rank {rank}: panic outside a task: {p}");
            ESCAPED_PANIC
        }
    };
    if code != 0 {
        // Ends the job as MPI does when a rank dies: mpirun/srun stop the other ranks.
        std::process::exit(code);
    }
    // The worker loop is done: the bridge says goodbye, finalizes and exits.
    let _ = ended.send(shared.end_code());
    let _ = bridge.join();
    std::process::exit(0)
}

/// Starts pool workers as the ranks 1, 2, ... of the MPI job (rank 0 is this process).
pub(crate) struct MpiStarter {
    size: i32,
    next_rank: i32,
    bridge: Arc<Bridge>,
}

impl Starter for MpiStarter {
    fn start(&mut self, spec: WorkerSpec, _close: &[RawFd]) -> Result<Box<dyn Worker>> {
        if self.next_rank >= self.size {
            return Err(Error::Mpi(format!(
                "no MPI rank is left for a new worker: all {} worker ranks were started, and a \
                 rank that ended cannot be started again",
                self.size - 1
            )));
        }
        let rank = self.next_rank;
        let sock = UnixStream::from(spec.end.into_fd());
        sock.set_nonblocking(true)
            .map_err(|e| Error::io("set_nonblocking", e))?;
        let (death_tx, death_rx) = UnixStream::pair().map_err(|e| Error::io("socketpair", e))?;
        death_rx
            .set_read_timeout(Some(WAIT_LIMIT))
            .map_err(|e| Error::io("set_read_timeout", e))?;
        self.next_rank += 1;
        self.bridge.send(Cmd::Attach {
            rank,
            sock,
            death: death_tx,
        });
        Ok(Box::new(Rank {
            rank,
            pid: Pid::from_raw(rank_pid(rank)),
            death: death_rx,
            bridge: self.bridge.clone(),
        }))
    }
}

impl Drop for MpiStarter {
    /// Ends every rank and finalizes MPI (on the bridge thread), waiting for both.
    fn drop(&mut self) {
        self.bridge.send(Cmd::Shutdown);
        let thread = self
            .bridge
            .thread
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(t) = thread {
            let _ = t.join();
        }
    }
}

/// The handle of one worker rank.
struct Rank {
    rank: i32,
    pid: Pid,
    /// Readable once the rank has ended: its exit code (4 bytes), then the end of the stream.
    death: UnixStream,
    bridge: Arc<Bridge>,
}

impl Worker for Rank {
    fn pid(&self) -> Pid {
        self.pid
    }

    fn death_fd(&self) -> BorrowedFd<'_> {
        self.death.as_fd()
    }

    fn signal(&self, sig: Signal) {
        self.bridge.send(Cmd::Stop {
            rank: self.rank,
            signal: sig as i32,
        });
    }

    fn frame_sink(&self) -> Option<Box<dyn FrameSink>> {
        let bridge = self.bridge.clone();
        Some(Box::new(mpi_bridge::RankSink {
            rank: self.rank,
            send: move |cmd| bridge.send(cmd),
            queued: Vec::new(),
        }))
    }

    fn wait(&mut self) -> ExitStatus {
        use std::io::Read;
        let mut code = [0u8; 4];
        match self.death.read_exact(&mut code) {
            Ok(()) => match i32::from_le_bytes(code) {
                c if c < 0 => ExitStatus::Signaled(-c),
                c => ExitStatus::Exited(c),
            },
            // The bridge is gone, or the rank did not answer in time.
            Err(_) => ExitStatus::Signaled(Signal::SIGKILL as i32),
        }
    }
}

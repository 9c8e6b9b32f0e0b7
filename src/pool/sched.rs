//! The scheduler: the parent's side of a pool, driven by whichever thread calls into it.
//!
//! It knows no types: tasks are encoded inputs, results are encoded outcomes. It keeps a queue of
//! pending tasks, hands them to workers with several in flight per worker (pipelining; the depth
//! adapts to the observed task time), watches every worker's socket and death descriptor, and
//! turns a worker's death or an overdue task into per-input errors, re-queueing the innocent
//! inputs and replacing the worker. Nothing here blocks except the wait for readiness, and no
//! helper thread exists.
//!
//! Cost per task and per wake-up is flat in the number of workers (a node-sized pool has
//! 64–192): the descriptors sit in one `epoll` set, registered when a worker starts, so a wake-up
//! costs what is ready, not what is watched; tasks are handed out by water-filling (each goes to
//! a worker with the fewest in flight, `sched/shares.rs`) from one sorted pass over the workers
//! per wake-up, not per task, each worker's share as one block of consecutive tasks, and tiny
//! tasks to as few workers as full pipelines allow; and the parent spins before it sleeps only when the pool has no more workers than the
//! machine has CPUs (spinning beside more runnable workers than CPUs takes the CPU they need).
//!
//! It does not know how workers are started: it holds a [`Starter`] (fork, fork server, ...) and
//! sees each worker through the small [`Worker`] handle (pid, death descriptor, signal, exit
//! status) plus the worker's socket ([`Link`]); see `super::start`. Which inputs of an ended
//! worker fail and which run again is decided by the pure function [`settle`] (`super::settle`).
//!
//! Files: this one holds the state, the dispatch and the wake-up loop; `sched/workers.rs` starts,
//! replaces, stops and reaps workers; `sched/recovery.rs` handles a worker's exit and overdue
//! tasks; `sched/shares.rs` decides how many tasks each worker takes; `sched/units.rs` holds
//! the tasks, outcomes and events it moves.

use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::error::{Error, Result};
use crate::sys::epoll::{Epoll, Ready};
use crate::sys::{self, ExitStatus, Interest, Pid};

use super::fnref::FnRef;
use super::journal;
use super::settle::{Ending, Fate, InFlight, Why, settle};
use super::start::{Initializer, Starter, Worker, WorkerSpec};
use super::transport::{self, Bytes, Encoded, Link, Reply};
use super::worker::{self, IDLE, Progress};
use crate::fdpass::{self, FdTable};

mod recovery;
mod shares;
mod units;
mod workers;

pub(crate) use units::{Deferred, Done, EndsFn, Event, Items, JobHasher, JobId, Sink, Task};

type Jobs = HashMap<JobId, Job, std::hash::BuildHasherDefault<JobHasher>>;
/// How long the parent spins on its workers before it sleeps in `poll`.
const SPIN: Duration = Duration::from_micros(60);
/// Time between `SIGTERM` and `SIGKILL` for an overdue task's worker.
const GRACE: Duration = Duration::from_millis(100);
/// How long the pipeline of one worker should be, in task time.
const PIPE_NS: f64 = 2_000_000.0;
const MAX_DEPTH: usize = 512;
/// The most tasks in flight over all workers: a pool of 128 workers does not buffer 128 × 512
/// tasks (the parent's memory, which every later fork copies the page tables of, grows with it).
/// Tasks so short that full pipelines would pass it go to as few workers as full pipelines allow
/// (8 × 512 for `x * x`; see `sched::shares`). Measured with the scale rows, 3 alternating
/// rounds: a 128-worker chunksize-1 map ran at 2.42–2.73 M/s (Fork) and 3.12–3.49 M/s
/// (ForkServer) with 16,384, at 2.80–3.12 and 3.62–4.13 M/s with 4,096; 2-worker maps alike.
const MAX_IN_FLIGHT: usize = 4_096;

/// The pool's settings, fixed at build time.
pub(crate) struct Config {
    pub(crate) processes: usize,
    pub(crate) max_tasks_per_child: Option<u64>,
    pub(crate) retries: u32,
    pub(crate) task_timeout: Option<Duration>,
    pub(crate) initializer: Option<Initializer>,
    pub(crate) thread_env: Option<String>,
}

/// What `terminate` needs without the scheduler's lock: the live pids and a flag.
#[derive(Debug, Default)]
pub(crate) struct Book {
    pids: Mutex<Vec<Pid>>,
    terminating: AtomicBool,
    pub(crate) id: super::trace::PoolId,
}

impl Book {
    /// Marks the pool terminating and kills every worker now (no fork can follow: forks check
    /// the flag under the same lock).
    pub(crate) fn kill_all(&self) {
        self.terminating.store(true, Ordering::SeqCst);
        let pids = self.pids.lock().unwrap_or_else(|e| e.into_inner());
        for &pid in pids.iter() {
            let _ = sys::kill(pid, Signal::SIGKILL);
        }
    }

    pub(crate) fn is_terminating(&self) -> bool {
        self.terminating.load(Ordering::SeqCst)
    }
}

struct Job {
    fn_ref: FnRef,
    ends: EndsFn,
    ctx: Option<Encoded>,
    events: VecDeque<Event>,
    sink: Option<Sink>,
}

struct Kill {
    culprit: (u64, u64),
    term_at: Instant,
    killed: bool,
}

struct Slot {
    pid: Pid,
    /// This worker's generation in its slot index (part of its epoll tokens, so that a late
    /// event of a replaced worker is not taken for its successor's).
    generation: u32,
    /// Whether the socket is watched for writing.
    out_armed: bool,
    worker: Box<dyn Worker>,
    link: Link,
    inflight: VecDeque<(u64, Task)>,
    sent: u64,
    ctx_job: Option<JobId>,
    kill: Option<Kill>,
    stopping: bool,
}

impl Slot {
    fn new(worker: Box<dyn Worker>, link: Link, generation: u32) -> Slot {
        // An MPI rank takes its frames from the link directly (mpi issue 15, small edit).
        #[cfg(feature = "mpi")]
        let link = link.with_sink(worker.frame_sink());
        Slot {
            pid: worker.pid(),
            generation,
            out_armed: false,
            worker,
            link,
            inflight: VecDeque::new(),
            sent: 0,
            ctx_job: None,
            kill: None,
            stopping: false,
        }
    }
}

/// The parent's state of one pool: its workers, its queued tasks and its jobs.
pub(crate) struct Scheduler {
    cfg: Config,
    starter: Box<dyn Starter>,
    book: Arc<Book>,
    progress: Arc<Progress>,
    slots: Vec<Option<Slot>>,
    pending: VecDeque<Task>,
    jobs: Jobs,
    next_job: JobId,
    next_seq: u64,
    ema_ns: f64,
    closed: bool,
    terminated: bool,
    deferred: Vec<Deferred>,
    replaced: u64,
    stopped: bool,
    /// A large encode buffer whose task is done, for the next large task.
    spare: Vec<u8>,
    /// The workers' sockets and death descriptors (see [`token`]).
    ep: Epoll,
    /// The last generation given to a worker (see [`Slot::generation`]).
    gens: u32,
    /// How many slots hold a worker.
    live: usize,
    /// Whether the parent spins briefly before it sleeps (see [`spins`]).
    spin: bool,
    ready: Vec<Ready>,
}

/// The epoll token of a worker's socket (`death` false) or death descriptor.
fn token(slot: usize, generation: u32, death: bool) -> u64 {
    (u64::from(generation) << 32) | ((slot as u64) << 1) | u64::from(death)
}

/// (slot, generation, death) of a [`token`].
fn untoken(t: u64) -> (usize, u32, bool) {
    (
        ((t & 0xffff_ffff) >> 1) as usize,
        (t >> 32) as u32,
        t & 1 == 1,
    )
}

/// Whether a pool of `processes` workers should spin (parent and workers) before sleeping: only
/// when there are no more workers than CPUs this process may use. Beyond that, a spinning
/// process takes the CPU from a worker (or the parent) that has work.
pub(crate) fn spins(processes: usize) -> bool {
    processes <= worker::cpus()
}

impl std::fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scheduler")
            .field("processes", &self.cfg.processes)
            .field("pending", &self.pending.len())
            .field("jobs", &self.jobs.len())
            .finish()
    }
}

impl Scheduler {
    /// The pids of the live workers.
    pub(crate) fn pids(&self) -> Vec<i32> {
        self.slots
            .iter()
            .flatten()
            .map(|s| s.pid.as_raw())
            .collect()
    }

    /// How many workers were replaced since the start.
    pub(crate) fn replaced(&self) -> u64 {
        self.replaced
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed
    }

    pub(crate) fn is_terminated(&self) -> bool {
        self.terminated || self.book.is_terminating()
    }

    pub(crate) fn close(&mut self) {
        self.closed = true;
    }

    /// A new job running `fn_ref` (with `ctx`, sent once per worker).
    pub(crate) fn new_job(
        &mut self,
        fn_ref: FnRef,
        ends: EndsFn,
        ctx: Option<Encoded>,
        sink: Option<Sink>,
    ) -> JobId {
        let id = self.next_job;
        self.next_job += 1;
        self.jobs.insert(
            id,
            Job {
                fn_ref,
                ends,
                ctx,
                events: VecDeque::new(),
                sink,
            },
        );
        id
    }

    /// A large recycled buffer to encode into (empty when there is none).
    pub(crate) fn take_spare(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.spare)
    }

    /// Queues a task.
    pub(crate) fn submit(&mut self, task: Task) {
        self.pending.push_back(task);
    }

    /// Whether a lazy feeder should add tasks now.
    pub(crate) fn wants_tasks(&self) -> bool {
        let live = self.live.max(1);
        self.pending.len() < (live * self.depth()).min(self.cap()) + live
    }

    /// The job's next event, if any.
    pub(crate) fn take_event(&mut self, job: JobId) -> Option<Event> {
        self.jobs.get_mut(&job)?.events.pop_front()
    }

    /// Forgets a job: its queued tasks are dropped, outcomes still in flight are discarded.
    pub(crate) fn finish_job(&mut self, job: JobId) {
        self.jobs.remove(&job);
        self.pending.retain(|t| t.job != job);
    }

    /// Callbacks to run once the lock is released.
    pub(crate) fn take_deferred(&mut self) -> Vec<Deferred> {
        std::mem::take(&mut self.deferred)
    }

    /// Whether any task is queued or running, or any callback job is unfinished.
    pub(crate) fn busy(&self) -> bool {
        !self.pending.is_empty()
            || self.slots.iter().flatten().any(|s| !s.inflight.is_empty())
            || self.jobs.values().any(|j| j.sink.is_some())
    }

    /// How many tasks a worker should have in flight: [`PIPE_NS`] of work, 2 to [`MAX_DEPTH`].
    fn depth(&self) -> usize {
        ((PIPE_NS / self.ema_ns.max(1.0)) as usize).clamp(2, MAX_DEPTH)
    }

    /// The most tasks in flight over all workers: [`MAX_IN_FLIGHT`], but at least 2 per worker.
    fn cap(&self) -> usize {
        MAX_IN_FLIGHT.max(2 * self.live)
    }

    /// Hands the pending tasks to the workers, each to one with the fewest in flight (at most
    /// `depth` each), and writes what the sockets take. One sorted pass over the workers per
    /// call, then constant work per task.
    ///
    /// Each worker's share is handed as one block of consecutive tasks (not one task per worker
    /// in turn): the same counts, but a worker's results come back as runs in input order, which
    /// a map's collector appends instead of setting each aside (with 128 workers and chunksize
    /// 1, interleaved tasks made every result a run of its own).
    ///
    /// When the tasks are so short that full pipelines for every worker would pass the cap on
    /// tasks in flight (128 workers × 512 tiny tasks), the tasks go to as few workers as full
    /// pipelines allow, not a thin pipeline to each: a worker then wakes once per [`PIPE_NS`] of
    /// work, not once per 128 tasks, which on an oversubscribed node is what costs (the other
    /// workers sleep; the parent, not the workers, limits the rate of such tasks anyway).
    fn dispatch(&mut self) {
        let mut touched = Vec::new();
        if !self.pending.is_empty() {
            let depth = self.depth();
            let max = self.cfg.max_tasks_per_child.unwrap_or(u64::MAX);
            // (in flight, slot, room) of the workers that can take a task, fewest first.
            let mut open: Vec<shares::Open> = self
                .slots
                .iter()
                .enumerate()
                .filter_map(|(i, s)| s.as_ref().map(|s| (i, s)))
                .filter(|(_, s)| {
                    s.kill.is_none() && !s.stopping && s.sent < max && s.inflight.len() < depth
                })
                .map(|(i, s)| {
                    let left = usize::try_from(max - s.sent).unwrap_or(usize::MAX);
                    (s.inflight.len(), i, (depth - s.inflight.len()).min(left))
                })
                .collect();
            let in_flight: usize = self.slots.iter().flatten().map(|s| s.inflight.len()).sum();
            let limits = shares::Limits {
                depth,
                cap: self.cap(),
                live: self.live,
            };
            let shares = shares::plan(&mut open, self.pending.len(), in_flight, limits);
            for (&(_, i, _), share) in open.iter().zip(shares) {
                let mut gave = false;
                for _ in 0..share {
                    gave |= self.hand_one(i);
                }
                if gave {
                    touched.push(i);
                }
            }
        }
        for i in touched {
            if let Some(slot) = self.slots[i].as_mut() {
                // A failure means the worker is gone; its pidfd will say so.
                let _ = slot.link.flush();
            }
            self.sync_out(i);
        }
    }

    /// Queues the next pending task on the worker in slot `i` (with its job's context first
    /// when the worker lacks it). `false` when the task's job is gone (the task is dropped).
    fn hand_one(&mut self, i: usize) -> bool {
        let Some(task) = self.pending.pop_front() else {
            return false;
        };
        let Some(job) = self.jobs.get(&task.job) else {
            return false;
        };
        let slot = self.slots[i].as_mut().expect("chosen slot is live");
        if let Some(ctx) = &job.ctx {
            if slot.ctx_job != Some(task.job) {
                slot.link.queue_ctx(task.job, ctx);
                slot.ctx_job = Some(task.job);
            }
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        slot.link.queue_task(
            seq,
            job.fn_ref.offset(),
            task.job,
            task.items.count(),
            &task.bytes,
            &task.fds,
        );
        slot.inflight.push_back((seq, task));
        slot.sent += 1;
        true
    }

    /// Runs the pool for a while: hands out tasks, then waits until something happens or
    /// `deadline` passes, and processes it. Returns at once when the pool was terminated.
    pub(crate) fn drive(&mut self, deadline: Option<Instant>) -> Result<()> {
        self.drive_woken(deadline, None)
    }

    /// [`drive`](Core::drive), also returning when `bell` becomes readable (the driver
    /// thread's doorbell, rung by a thread that wants the pool's lock).
    pub(crate) fn drive_woken(
        &mut self,
        deadline: Option<Instant>,
        bell: Option<BorrowedFd<'_>>,
    ) -> Result<()> {
        if self.book.is_terminating() {
            self.abort_all();
        }
        if self.terminated {
            return Ok(());
        }
        if self.slots.iter().all(Option::is_none) {
            if self.stopped {
                return Err(Error::InvalidState(
                    "the pool was joined: no worker is left".into(),
                ));
            }
            // Every replacement failed earlier: try again, so that queued work can run.
            for i in 0..self.slots.len() {
                self.spawn(i)?;
            }
        }
        self.dispatch();
        let now = Instant::now();
        let wake = match (self.check_timeouts(now), deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let waiting = self.spin && self.slots.iter().flatten().any(|s| !s.inflight.is_empty());
        let spin_until = if waiting { now + SPIN } else { now };
        let mut ready = std::mem::take(&mut self.ready);
        ready.clear();
        loop {
            let spinning = Instant::now() < spin_until;
            let until = if spinning { Some(Instant::now()) } else { wake };
            match bell {
                None => self.ep.wait(&mut ready, until)?,
                Some(bell) => {
                    // The doorbell is the caller's: wait on the set and on it, then take the
                    // set's events (a rung bell only ends the wait).
                    let set = [(self.ep.as_fd(), Interest::Read), (bell, Interest::Read)];
                    let woke = sys::poll_many(&set, until)?;
                    if woke[0].0 {
                        self.ep.wait(&mut ready, Some(Instant::now()))?;
                    }
                    if woke[1].0 {
                        break;
                    }
                }
            }
            if !spinning || !ready.is_empty() {
                break;
            }
            // Yield rather than spin hard: if the worker we wait for shares this CPU, it runs.
            std::thread::yield_now();
        }
        let result = self.handle_ready(&ready);
        self.ready = ready;
        result
    }

    /// Acts on ready descriptors: flushes writable sockets, takes the replies of readable ones,
    /// and settles workers that ended. Events of a worker already replaced are ignored.
    fn handle_ready(&mut self, ready: &[Ready]) -> Result<()> {
        for r in ready {
            let (i, generation, death) = untoken(r.token);
            if self
                .slots
                .get(i)
                .and_then(Option::as_ref)
                .map(|s| s.generation)
                != Some(generation)
            {
                continue;
            }
            if death {
                self.on_exit(i)?;
                continue;
            }
            if r.write {
                if let Some(s) = self.slots[i].as_mut() {
                    let _ = s.link.flush();
                }
                self.sync_out(i);
            }
            if r.read {
                let mut replies = Vec::new();
                let mut slot = self.slots[i].take().expect("live slot");
                let _ = slot.link.receive(&mut replies);
                self.handle_replies(&mut slot, replies);
                self.slots[i] = Some(slot);
            }
        }
        Ok(())
    }

    fn handle_replies(&mut self, slot: &mut Slot, replies: Vec<Reply>) {
        for reply in replies {
            let Some((seq, task)) = slot.inflight.pop_front() else {
                slot.worker.signal(Signal::SIGKILL);
                return;
            };
            let rseq = match &reply {
                Reply::Done { seq, .. } | Reply::Failed { seq, .. } => *seq,
            };
            if rseq != seq {
                slot.worker.signal(Signal::SIGKILL);
                return;
            }
            let job = task.job;
            match reply {
                Reply::Done {
                    elapsed_ns,
                    data,
                    fds,
                    ..
                } => {
                    let per = elapsed_ns as f64;
                    self.ema_ns = 0.8 * self.ema_ns + 0.2 * per.max(50.0);
                    let done = Done {
                        items: task.items,
                        data,
                        pid: slot.pid.as_raw(),
                        fds: FdTable::new(fds),
                    };
                    self.deliver(job, Event::Done(done));
                    self.recycle(task.bytes);
                }
                Reply::Failed { message, .. } => {
                    for i in 0..task.items.count() as usize {
                        let error = Error::InvalidState(format!(
                            "worker {} could not run {}: {message}",
                            slot.pid,
                            task.items.label(i)
                        ));
                        let index = task.items.index(i);
                        self.deliver(job, Event::Failed { index, error });
                    }
                    self.recycle(task.bytes);
                }
            }
        }
    }

    /// Keeps the buffer of a large finished task for the next large task.
    fn recycle(&mut self, bytes: Bytes) {
        if bytes.len() > 1 << 20 {
            if let Ok(mut buf) = Arc::try_unwrap(bytes) {
                if buf.capacity() > self.spare.capacity() {
                    buf.clear();
                    self.spare = buf;
                }
            }
        }
    }

    fn deliver(&mut self, job: JobId, event: Event) {
        let Some(j) = self.jobs.get_mut(&job) else {
            return;
        };
        match &mut j.sink {
            Some(sink) => {
                if sink(event, &mut self.deferred) {
                    self.jobs.remove(&job);
                }
            }
            None => j.events.push_back(event),
        }
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        self.reap_all();
        super::trace::pool_finished(self.book.id, self.replaced);
    }
}

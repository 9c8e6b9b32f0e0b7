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
//! a worker with the fewest in flight) from one sorted pass over the workers per wake-up, not per
//! task; and the parent spins before it sleeps only when the pool has no more workers than the
//! machine has CPUs (spinning beside more runnable workers than CPUs takes the CPU they need).
//!
//! It does not know how workers are started: it holds a [`Starter`] (fork, fork server, ...) and
//! sees each worker through the small [`Worker`] handle (pid, death descriptor, signal, exit
//! status) plus the worker's socket ([`Link`]); see `super::start`. Which inputs of an ended
//! worker fail and which run again is decided by the pure function [`settle`] (`super::settle`).

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
use super::transport::{self, Body, Bytes, Encoded, Fds, Link, Reply};
use super::worker::{self, IDLE, Progress};
use crate::fdpass::{self, FdTable};

pub(crate) type JobId = u64;

/// Hashes a [`JobId`] with one multiplication: job ids are small counters of our own (no
/// untrusted keys), and a job is looked up several times per task (SipHash was 5% of the
/// parent's time in a chunksize-1 map).
#[derive(Default, Clone, Copy)]
pub(crate) struct JobHasher(u64);

impl std::hash::Hasher for JobHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0 ^ n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

type Jobs = HashMap<JobId, Job, std::hash::BuildHasherDefault<JobHasher>>;
/// Work to run in the parent after the pool's lock is released (user callbacks).
pub(crate) type Deferred = Box<dyn FnOnce() + Send>;
/// Receives a job's events as they happen; returns `true` when the job is complete.
pub(crate) type Sink = Box<dyn FnMut(Event, &mut Vec<Deferred>) -> bool + Send>;
/// Finds the end offsets of `count` encoded inputs (to split a task).
pub(crate) type EndsFn = fn(&[u8], u32) -> Option<Vec<usize>>;

/// How long the parent spins on its workers before it sleeps in `poll`.
const SPIN: Duration = Duration::from_micros(60);
/// Time between `SIGTERM` and `SIGKILL` for an overdue task's worker.
const GRACE: Duration = Duration::from_millis(100);
/// How long the pipeline of one worker should be, in task time.
const PIPE_NS: f64 = 2_000_000.0;
const MAX_DEPTH: usize = 512;
/// The most tasks in flight over all workers: a pool of 128 workers does not buffer 128 × 512
/// tasks (the parent's memory, which every later fork copies the page tables of, grows with it).
const MAX_IN_FLIGHT: usize = 16_384;

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

/// Which inputs of a job a task holds.
#[derive(Debug, Clone)]
pub(crate) enum Items {
    /// `count` consecutive inputs from `first`.
    Range(usize, u32),
    /// These inputs (after a split).
    List(Box<[usize]>),
}

impl Items {
    pub(crate) fn count(&self) -> u32 {
        match self {
            Items::Range(_, n) => *n,
            Items::List(l) => l.len() as u32,
        }
    }

    pub(crate) fn index(&self, i: usize) -> usize {
        match self {
            Items::Range(first, _) => first + i,
            Items::List(l) => l[i],
        }
    }

    pub(crate) fn label(&self, i: usize) -> String {
        format!("item #{}", self.index(i))
    }
}

/// Encoded inputs of one job, sent to one worker as one frame.
#[derive(Debug)]
pub(crate) struct Task {
    pub(crate) job: JobId,
    pub(crate) items: Items,
    pub(crate) bytes: Bytes,
    /// The descriptors the inputs refer to (indices into this table are in `bytes`).
    pub(crate) fds: Fds,
    /// How many times a worker died running it.
    pub(crate) died: u32,
}

/// The outcomes of inputs that ran: `data` holds one encoded outcome per input, in order, and
/// `fds` the descriptors they refer to; `pid` is the worker that ran them.
#[derive(Debug)]
pub(crate) struct Done {
    pub(crate) items: Items,
    pub(crate) data: Body,
    pub(crate) pid: i32,
    pub(crate) fds: FdTable,
}

/// What happened to a job's inputs.
#[derive(Debug)]
pub(crate) enum Event {
    /// These inputs ran.
    Done(Done),
    /// This input has no outcome.
    Failed { index: usize, error: Error },
    /// The pool was terminated: no further event will come.
    Aborted,
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
    /// Starts the workers with `starter`.
    pub(crate) fn start(
        cfg: Config,
        starter: Box<dyn Starter>,
        book: Arc<Book>,
    ) -> Result<Scheduler> {
        let n = cfg.processes;
        // Read once here, inherited by every forked worker (see `fnref::text_range`).
        let _ = super::fnref::text_range();
        let spin = spins(n);
        let mut core = Scheduler {
            ep: Epoll::new()?,
            gens: 0,
            live: 0,
            spin,
            ready: Vec::new(),
            progress: Arc::new(Progress::new(n)?),
            cfg,
            starter,
            book,
            slots: (0..n).map(|_| None).collect(),
            pending: VecDeque::new(),
            jobs: Jobs::default(),
            next_job: 1,
            next_seq: 1,
            ema_ns: 1_000_000.0,
            closed: false,
            terminated: false,
            deferred: Vec::new(),
            replaced: 0,
            stopped: false,
            spare: Vec::new(),
        };
        core.spawn_all()?;
        super::trace::pool_started(core.book.id, n);
        Ok(core)
    }

    /// Starts a worker in every slot: all at once if the starter can (one round trip to a fork
    /// server), else one by one.
    fn spawn_all(&mut self) -> Result<()> {
        if !self.starter.starts_many() {
            for i in 0..self.slots.len() {
                self.spawn(i)?;
            }
            return Ok(());
        }
        let mut links = Vec::new();
        let mut specs = Vec::new();
        for i in 0..self.slots.len() {
            let (link, end) = transport::pair()?;
            self.progress.reset(i);
            specs.push(self.spec(i, end));
            links.push(link);
        }
        let book = self.book.clone();
        let mut pids = book.pids.lock().unwrap_or_else(|e| e.into_inner());
        if self.book.is_terminating() {
            return Ok(());
        }
        let workers = self.starter.start_many(specs)?;
        pids.extend(workers.iter().map(|w| w.pid()));
        drop(pids);
        let mut started = workers.into_iter().zip(links).enumerate();
        while let Some((i, (worker, link))) = started.next() {
            let pid = worker.pid();
            if let Err(e) = self.install(i, worker, link) {
                // Not watched, so never reaped by `drive`: end the rest here.
                for (_, (mut w, _)) in started {
                    w.signal(Signal::SIGKILL);
                    let _ = w.wait();
                    self.forget_pid(w.pid());
                }
                return Err(e);
            }
            super::trace::worker_started(self.book.id, i, pid);
        }
        Ok(())
    }

    /// Puts a started worker in slot `i` and watches its descriptors. On failure the worker is
    /// killed and reaped.
    fn install(&mut self, i: usize, mut worker: Box<dyn Worker>, link: Link) -> Result<()> {
        self.gens = self.gens.wrapping_add(1);
        let generation = self.gens;
        let watched = self
            .ep
            .add(link.fd(), token(i, generation, false), false)
            .and_then(|()| {
                self.ep
                    .add(worker.death_fd(), token(i, generation, true), false)
            });
        if let Err(e) = watched {
            self.ep.delete(link.fd());
            worker.signal(Signal::SIGKILL);
            let _ = worker.wait();
            self.forget_pid(worker.pid());
            return Err(e);
        }
        self.slots[i] = Some(Slot::new(worker, link, generation));
        self.live = self.slots.iter().flatten().count();
        Ok(())
    }

    /// Takes the worker out of slot `i` and stops watching its descriptors.
    fn uninstall(&mut self, i: usize) -> Option<Slot> {
        let slot = self.slots[i].take()?;
        self.ep.delete(slot.link.fd());
        self.ep.delete(slot.worker.death_fd());
        self.live = self.slots.iter().flatten().count();
        Some(slot)
    }

    /// Watches the socket of slot `i` for writing exactly while it has bytes queued.
    fn sync_out(&mut self, i: usize) {
        let Some(slot) = self.slots[i].as_mut() else {
            return;
        };
        let want = slot.link.wants_write();
        if want != slot.out_armed
            && self
                .ep
                .modify(slot.link.fd(), token(i, slot.generation, false), want)
                .is_ok()
        {
            slot.out_armed = want;
        }
    }

    fn spec(&self, i: usize, end: transport::WorkerEnd) -> WorkerSpec {
        WorkerSpec {
            end,
            progress: self.progress.clone(),
            slot: i,
            max_tasks: self.cfg.max_tasks_per_child,
            timed: self.cfg.task_timeout.is_some(),
            initializer: self.cfg.initializer.clone(),
            thread_env: self.cfg.thread_env.clone(),
        }
    }

    fn spawn(&mut self, i: usize) -> Result<()> {
        let (link, end) = transport::pair()?;
        self.progress.reset(i);
        let close: Vec<_> = self
            .slots
            .iter()
            .flatten()
            .flat_map(|s| [s.link.fd().as_raw_fd(), s.worker.death_fd().as_raw_fd()])
            .chain([self.ep.as_fd().as_raw_fd()])
            .collect();
        let spec = self.spec(i, end);
        let book = self.book.clone();
        let mut pids = book.pids.lock().unwrap_or_else(|e| e.into_inner());
        if self.book.is_terminating() {
            return Ok(());
        }
        let worker = self.starter.start(spec, &close)?;
        pids.push(worker.pid());
        drop(pids);
        let pid = worker.pid();
        self.install(i, worker, link)?;
        super::trace::worker_started(self.book.id, i, pid);
        Ok(())
    }

    fn forget_pid(&self, pid: Pid) {
        self.book
            .pids
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|&p| p != pid);
    }

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
        self.pending.len() < live * self.depth() + live
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

    fn depth(&self) -> usize {
        let share = (MAX_IN_FLIGHT / self.live.max(1)).max(2);
        ((PIPE_NS / self.ema_ns.max(1.0)) as usize).clamp(2, MAX_DEPTH.min(share))
    }

    /// Hands the pending tasks to the workers, each to one with the fewest in flight (at most
    /// `depth` each), and writes what the sockets take. One sorted pass over the workers per
    /// call, then constant work per task.
    fn dispatch(&mut self) {
        let mut touched = Vec::new();
        if !self.pending.is_empty() {
            let depth = self.depth();
            let max = self.cfg.max_tasks_per_child.unwrap_or(u64::MAX);
            // (in flight, slot) of the workers that can take a task, fewest first.
            let mut open: Vec<(usize, usize)> = self
                .slots
                .iter()
                .enumerate()
                .filter_map(|(i, s)| s.as_ref().map(|s| (i, s)))
                .filter(|(_, s)| {
                    s.kill.is_none() && !s.stopping && s.sent < max && s.inflight.len() < depth
                })
                .map(|(i, s)| (s.inflight.len(), i))
                .collect();
            open.sort_unstable();
            // Water-filling: `level` is the load of the first `k` workers; each round gives
            // them one task each, then the workers at the next level join.
            let mut level = open.first().map_or(depth, |o| o.0);
            let mut k = 0;
            'fill: while level < depth {
                while k < open.len() && open[k].0 <= level {
                    k += 1;
                }
                let mut gave = false;
                for &(_, i) in &open[..k] {
                    if self.pending.is_empty() {
                        break 'fill;
                    }
                    if self.slots[i].as_ref().is_some_and(|s| s.sent < max) && self.hand_one(i) {
                        gave = true;
                        if touched.last() != Some(&i) {
                            touched.push(i);
                        }
                    }
                }
                if !gave && k == open.len() {
                    break;
                }
                level += 1;
            }
            touched.sort_unstable();
            touched.dedup();
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

    /// A worker's pidfd became readable: collect its last replies, reap it, settle its tasks,
    /// and start a replacement.
    fn on_exit(&mut self, i: usize) -> Result<()> {
        let Some(mut slot) = self.uninstall(i) else {
            return Ok(());
        };
        loop {
            let mut replies = Vec::new();
            if slot.link.receive(&mut replies).is_err() || replies.is_empty() {
                break;
            }
            self.handle_replies(&mut slot, replies);
        }
        let status = slot.worker.wait();
        super::trace::worker_ended(self.book.id, i, slot.pid, status);
        self.forget_pid(slot.pid);
        if !slot.inflight.is_empty() && !self.book.is_terminating() {
            // The input that was running: the one the timeout named, else the progress slot's.
            let snap = self.progress.get(i);
            let running = match &slot.kill {
                Some(k) => Some(k.culprit),
                None => (snap.item != IDLE).then_some((snap.seq, snap.item)),
            };
            // Inputs that finished but whose reply died with the worker: from its journal.
            let entries = self.progress.journal_entries(i);
            let saved = journal::salvage(&entries, &mut slot.inflight, running, slot.pid.as_raw());
            for (job, event) in saved.events {
                self.deliver(job, event);
            }
            if !slot.inflight.is_empty() {
                self.settle(&mut slot, status, saved.running, saved.inputs > 0);
            }
        }
        if !slot.stopping && !self.book.is_terminating() {
            self.replaced += 1;
            if let Err(e) = self.spawn(i) {
                // Leave the slot empty; `drive` tries again when no worker is left.
                if self.slots.iter().all(Option::is_none) {
                    return Err(e);
                }
            }
            super::trace::worker_replaced(
                self.book.id,
                i,
                slot.pid,
                self.slots[i].as_ref().map(|s| s.pid),
            );
        }
        Ok(())
    }

    /// Applies the failure policy ([`settle`]) to the tasks of a worker that ended with tasks in
    /// flight (their finished inputs already taken out, see `journal::salvage`): `running` is
    /// the input that was running, `progressed` whether any input of them had finished. Delivers
    /// the failures, re-queues the rest at the front.
    fn settle(
        &mut self,
        slot: &mut Slot,
        status: ExitStatus,
        running: Option<(u64, u64)>,
        progressed: bool,
    ) {
        let (signal, code) = match status {
            ExitStatus::Signaled(s) => (Some(s), None),
            ExitStatus::Exited(c) => (None, Some(c)),
        };
        let tasks: Vec<(u64, Task)> = std::mem::take(&mut slot.inflight).into();
        let ending = Ending {
            running,
            progressed,
            timed_out: slot.kill.is_some(),
            init_failed: code == Some(worker::INIT_FAILED),
            retries: self.cfg.retries,
        };
        let inflight: Vec<InFlight> = tasks
            .iter()
            .map(|(seq, t)| InFlight {
                seq: *seq,
                count: t.items.count(),
                died: t.died,
            })
            .collect();
        let fates = settle(&inflight, &ending);
        let pid = slot.pid.as_raw();
        let mut requeue: Vec<Task> = Vec::new();
        let after = self.cfg.task_timeout.unwrap_or_default();
        for ((_, task), fate) in tasks.into_iter().zip(fates) {
            let error = |why: Why, label: String| match why {
                Why::TimedOut => Error::Timeout {
                    operation: "running a pool task",
                    after,
                    task: Some(label),
                },
                Why::Died => Error::WorkerDied {
                    pid,
                    signal,
                    code,
                    task: Some(label),
                },
                Why::InitFailed => Error::WorkerDied {
                    pid,
                    signal,
                    code,
                    task: Some(format!("{label} (the initializer panicked)")),
                },
            };
            match fate {
                Fate::Requeue { died } => requeue.push(Task { died, ..task }),
                Fate::FailAll { why } => self.fail_inputs(&task, |l| error(why, l)),
                Fate::FailOne { item, why } => {
                    let (one, rest) = self.split(task, item);
                    if why == Why::TimedOut {
                        let index = one.items.index(0);
                        super::trace::task_timed_out(self.book.id, slot.pid, index, after);
                    }
                    // `one` holds more than the input only when the task could not be split.
                    self.fail_inputs(&one, |l| error(why, l));
                    requeue.extend(rest);
                }
                Fate::RetryOne { item, died } => {
                    let (one, rest) = self.split(task, item);
                    let index = one.items.index(0);
                    super::trace::task_retried(self.book.id, slot.pid, index, died + 1);
                    requeue.push(Task { died, ..one });
                    requeue.extend(rest);
                }
            }
        }
        for t in requeue.into_iter().rev() {
            self.pending.push_front(t);
        }
    }

    /// Fails every input of `task` with the error `error` makes from its label.
    fn fail_inputs(&mut self, task: &Task, error: impl Fn(String) -> Error) {
        for k in 0..task.items.count() as usize {
            let event = Event::Failed {
                index: task.items.index(k),
                error: error(task.items.label(k)),
            };
            self.deliver(task.job, event);
        }
    }

    /// Splits input `c` out of `task`: (the task of just that input, the task of the others).
    fn split(&self, task: Task, c: u32) -> (Task, Option<Task>) {
        let n = task.items.count();
        if n == 1 {
            return (task, None);
        }
        // Finding where each input ends means decoding them: with duplicates of the task's
        // descriptors (the task keeps its own, to send again).
        let mut dups = FdTable::new(
            task.fds
                .iter()
                .flat_map(|f| f.iter())
                .filter_map(|fd| fd.try_clone().ok())
                .collect(),
        );
        let ends = self
            .jobs
            .get(&task.job)
            .and_then(|j| fdpass::decoding_with(&mut dups, || (j.ends)(&task.bytes, n)));
        let Some(ends) = ends else {
            return (task, None);
        };
        let start = |k: usize| if k == 0 { 0 } else { ends[k - 1] };
        let c = c as usize;
        let one = Task {
            job: task.job,
            items: Items::List(vec![task.items.index(c)].into()),
            bytes: Arc::new(task.bytes[start(c)..ends[c]].to_vec()),
            // Both parts keep the whole table: the indices in their bytes stay valid.
            fds: task.fds.clone(),
            died: task.died,
        };
        let mut bytes = Vec::with_capacity(task.bytes.len());
        let mut list = Vec::with_capacity(n as usize - 1);
        for k in (0..n as usize).filter(|&k| k != c) {
            bytes.extend_from_slice(&task.bytes[start(k)..ends[k]]);
            list.push(task.items.index(k));
        }
        let rest = Task {
            job: task.job,
            items: Items::List(list.into()),
            bytes: Arc::new(bytes),
            fds: task.fds,
            died: 0,
        };
        (one, Some(rest))
    }

    /// Signals workers whose current input is overdue; returns when to look again.
    fn check_timeouts(&mut self, now: Instant) -> Option<Instant> {
        let limit = self.cfg.task_timeout?;
        let now_ns = sys::monotonic_ns();
        let mut next: Option<Instant> = None;
        let mut soonest = |t: Instant| next = Some(next.map_or(t, |n: Instant| n.min(t)));
        for (i, slot) in self.slots.iter_mut().enumerate() {
            let Some(slot) = slot else { continue };
            if slot.inflight.is_empty() {
                continue;
            }
            if let Some(k) = &mut slot.kill {
                if !k.killed {
                    if now >= k.term_at + GRACE {
                        slot.worker.signal(Signal::SIGKILL);
                        k.killed = true;
                    } else {
                        soonest(k.term_at + GRACE);
                    }
                }
                continue;
            }
            let snap = self.progress.get(i);
            // The running task need not be the head: the worker may not have flushed the
            // replies of the tasks it finished before (it batches them while orders wait).
            let running = slot.inflight.iter().any(|(seq, _)| *seq == snap.seq);
            if running && snap.item != IDLE {
                let ran = Duration::from_nanos(now_ns.saturating_sub(snap.started_ns));
                if ran >= limit {
                    slot.worker.signal(Signal::SIGTERM);
                    slot.kill = Some(Kill {
                        culprit: (snap.seq, snap.item),
                        term_at: now,
                        killed: false,
                    });
                    soonest(now + GRACE);
                } else {
                    soonest(now + (limit - ran));
                }
            } else {
                soonest(now + limit.min(Duration::from_millis(10)));
            }
        }
        next
    }

    /// After `terminate`: reap every worker, drop every task, tell every job.
    pub(crate) fn abort_all(&mut self) {
        if self.terminated {
            return;
        }
        self.terminated = true;
        self.book.kill_all();
        self.reap_all();
        self.pending.clear();
        let ids: Vec<JobId> = self.jobs.keys().copied().collect();
        for id in ids {
            self.deliver(id, Event::Aborted);
        }
        self.jobs.retain(|_, j| j.sink.is_none());
    }

    fn reap_all(&mut self) {
        let mut live: Vec<Slot> = (0..self.slots.len())
            .filter_map(|i| self.uninstall(i))
            .collect();
        // Kill them all first, then wait: they die together.
        for s in &live {
            s.worker.signal(Signal::SIGKILL);
        }
        for s in &mut live {
            let _ = s.worker.wait();
            self.forget_pid(s.pid);
        }
    }

    /// Asks every worker to exit once its queue is empty.
    pub(crate) fn stop_workers(&mut self) {
        self.stopped = true;
        for i in 0..self.slots.len() {
            if let Some(slot) = self.slots[i].as_mut() {
                if !slot.stopping {
                    slot.stopping = true;
                    slot.link.queue_stop();
                    let _ = slot.link.flush();
                    self.sync_out(i);
                }
            }
        }
    }

    /// Whether every worker has exited and been reaped.
    pub(crate) fn all_exited(&self) -> bool {
        self.slots.iter().all(Option::is_none)
    }

    /// Kills and reaps the workers that are left (the end of `join`'s patience).
    pub(crate) fn kill_remaining(&mut self) {
        self.reap_all();
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        self.reap_all();
        super::trace::pool_finished(self.book.id, self.replaced);
    }
}

//! The worker process: its loop (receive a task, run it, send the outcomes back), and what a
//! trampoline sees of it ([`Exec`]). The progress slots and journal it writes are in
//! `progress`.

use std::any::Any;
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::os::fd::OwnedFd;

use crate::fdpass::{self, FdTable};
use crate::panic;
use crate::sys::environ::ChildEnv;
use crate::sys::{self, Pid};

use serde::Serialize;

use super::chunk::Codec;
use super::fnref::{FnRef, ItemError, ItemOut, push_outcome};
use super::progress::OpenRun;
pub(crate) use super::progress::{IDLE, Progress};
use super::transport::{Body, MAX_FDS, Order, WorkerEnd};

/// How long a worker spins for its next order before it sleeps, in a pool that spins at all
/// (no more workers than CPUs, see [`cpus`]); in a larger one a worker sleeps at once.
const SPIN: Duration = Duration::from_micros(60);

/// The CPUs this process may run on (its affinity and CPU quota), read once: the parent reads
/// it before it forks workers, who inherit it (as do a fork server's).
pub(crate) fn cpus() -> usize {
    static CPUS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CPUS.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}
/// Exit code of a worker whose initializer panicked.
pub(crate) const INIT_FAILED: i32 = 70;
/// Replies buffered beyond this are sent even if more orders are queued.
const REPLY_BATCH: usize = 1 << 16;

/// What a trampoline sees of its worker: the progress slot, the cached context, and the
/// descriptor tables of the task's inputs and outcomes.
pub(crate) struct Exec<'a> {
    progress: &'a Progress,
    slot: usize,
    seq: u64,
    timed: bool,
    ctx: &'a mut CtxCache,
    in_fds: FdTable,
    /// Whether the task's inputs came with descriptors at all.
    in_any: bool,
    out_fds: Vec<OwnedFd>,
    /// The journal run being written (plain-data outcomes), and where its head is.
    run: Option<(usize, OpenRun)>,
}

/// Appends the encoding of `outcome` to `out` and drops it: a panic in the result's `Drop`
/// makes the encoding that input's [`ItemError::Panicked`] instead.
#[inline]
fn push_and_drop<R: Serialize>(codec: Codec, outcome: ItemOut<R>, out: &mut Vec<u8>) {
    let start = out.len();
    push_outcome(codec, &outcome, out);
    if std::mem::needs_drop::<R>() {
        if let Err(p) = panic::catch(move || drop(outcome)) {
            out.truncate(start);
            push_outcome(codec, &ItemOut::<()>::Err(ItemError::Panicked(p)), out);
        }
    }
}

impl Drop for Exec<'_> {
    fn drop(&mut self) {
        self.close_run();
    }
}

impl Exec<'_> {
    /// Runs `f`, which decodes inputs of the task: values in shared memory take the task's
    /// descriptors.
    pub(crate) fn decoding<R>(&mut self, f: impl FnOnce() -> R) -> R {
        if !self.in_any {
            f()
        } else {
            fdpass::decoding_with(&mut self.in_fds, f)
        }
    }

    /// Runs `f`, which encodes outcomes that are dropped right after: values in shared memory
    /// attach their descriptors (a `PodVec` in shared memory goes as it is, without a copy).
    pub(crate) fn encoding<R>(&mut self, f: impl FnOnce(&mut Self) -> R) -> R {
        let mut fds = std::mem::take(&mut self.out_fds);
        let r = fdpass::encoding_into(&mut fds, true, || f(self));
        self.out_fds = fds;
        r
    }

    /// Records that input `i` of the current task starts now.
    #[inline]
    pub(crate) fn item_started(&mut self, i: u32) {
        if self.timed {
            self.progress.set(self.slot, self.seq, u64::from(i), true);
        } else {
            self.progress.set_item(self.slot, u64::from(i));
        }
    }

    /// Records the outcome of input `i` of the current task, which ended at byte `input_end`
    /// of the task's inputs: appends its encoding (values in `codec`) to `out`, drops it (a panic in the result's
    /// `Drop` makes it that input's [`ItemError::Panicked`], not the worker's death), and
    /// journals the encoding unless it attached descriptors (see [`super::journal`]).
    #[inline]
    pub(crate) fn item_done<R: Serialize>(
        &mut self,
        i: u32,
        input_end: usize,
        outcome: ItemOut<R>,
        out: &mut Vec<u8>,
        codec: Codec,
    ) {
        let start = out.len();
        let attached = fdpass::attached();
        push_and_drop(codec, outcome, out);
        if fdpass::attached() == attached {
            self.progress
                .journal_append(self.slot, self.seq, i, input_end, &out[start..]);
        }
    }

    /// [`item_done`](Exec::item_done) for a task of plain data (inputs of `input_size` bytes
    /// each, no descriptors): the outcome is journaled in a run, one head per chunk, and only
    /// its bytes per input.
    #[inline]
    pub(crate) fn item_done_plain<R: Serialize>(
        &mut self,
        i: u32,
        input_size: usize,
        outcome: ItemOut<R>,
        out: &mut Vec<u8>,
        codec: Codec,
    ) {
        let start = out.len();
        push_and_drop(codec, outcome, out);
        let bytes = &out[start..];
        if let Some((_, run)) = &mut self.run {
            if run.size == bytes.len() && run.item + run.count == i {
                if self.progress.journal_run_push(self.slot, bytes) {
                    run.count += 1;
                }
                return;
            }
            self.close_run();
        }
        let opened =
            self.progress
                .journal_run_open(self.slot, self.seq, i, bytes.len(), input_size);
        if let Some(at) = opened {
            let count = u32::from(self.progress.journal_run_push(self.slot, bytes));
            let run = OpenRun {
                seq: self.seq,
                item: i,
                count,
                size: bytes.len(),
                input_size,
            };
            self.run = Some((at, run));
        }
    }

    /// Closes the open journal run, if any (before any other entry, and at the task's end).
    fn close_run(&mut self) {
        if let Some((at, run)) = self.run.take() {
            self.progress.journal_run_close(self.slot, at, &run);
        }
    }

    /// Decodes the current job's context unless it is decoded already.
    pub(crate) fn ctx_decode(
        &mut self,
        decode: impl FnOnce(&[u8]) -> Result<Box<dyn Any>, String>,
    ) -> Result<(), String> {
        if self.ctx.decoded.is_none() {
            let bytes = self
                .ctx
                .bytes
                .as_ref()
                .map(Body::bytes)
                .ok_or("the context of this job did not arrive")?;
            let fds = &mut self.ctx.fds;
            self.ctx.decoded = Some(fdpass::decoding_with(fds, || decode(bytes))?);
        }
        Ok(())
    }

    /// The decoded context.
    pub(crate) fn ctx_ref(&self) -> Option<&dyn Any> {
        self.ctx.decoded.as_deref()
    }
}

#[derive(Default)]
pub(crate) struct CtxCache {
    job: u64,
    /// The encoded context as it arrived (kept, not copied: it may be big).
    bytes: Option<Body>,
    fds: FdTable,
    decoded: Option<Box<dyn Any>>,
}

/// Everything a new worker needs, captured before the fork (`End`: `()` until its socket is made,
/// see `Fork::start_many`).
pub(crate) struct Setup<End = WorkerEnd> {
    pub(crate) end: End,
    pub(crate) progress: Arc<Progress>,
    pub(crate) slot: usize,
    pub(crate) parent: Pid,
    pub(crate) max_tasks: Option<u64>,
    /// Whether the pool has a task timeout (then each input's start time is recorded).
    pub(crate) timed: bool,
    pub(crate) initializer: Option<Arc<dyn Fn() + Send + Sync>>,
    /// The environment to install (the pool limits the worker's threads), made before the fork.
    pub(crate) env: Option<Arc<ChildEnv>>,
    /// Descriptors of the other workers, inherited through the fork, to close at once; sorted
    /// by the parent (see `sys::close_all_inherited`).
    pub(crate) close: Vec<std::os::fd::RawFd>,
}

impl Setup<()> {
    /// The setup with `end` for its socket.
    pub(crate) fn with_end(self, end: WorkerEnd) -> Setup {
        Setup {
            end,
            progress: self.progress,
            slot: self.slot,
            parent: self.parent,
            max_tasks: self.max_tasks,
            timed: self.timed,
            initializer: self.initializer,
            env: self.env,
            close: self.close,
        }
    }
}

/// The variables set to the per-worker thread count.
pub(crate) const THREAD_VARS: [&str; 3] =
    ["OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"];

/// The environments of one burst of new workers, made once per thread count: the forking
/// process's environment with [`THREAD_VARS`] set to the count where unset.
#[derive(Default)]
pub(crate) struct EnvMemo(Option<(String, Arc<ChildEnv>)>);

impl EnvMemo {
    /// The environment of a worker whose pool limits its threads to `threads` (`None`: the
    /// worker keeps the environment it inherits).
    pub(crate) fn get(&mut self, threads: Option<&str>) -> Option<Arc<ChildEnv>> {
        let n = threads?;
        match &self.0 {
            Some((made_for, env)) if made_for == n => Some(env.clone()),
            _ => {
                let env = Arc::new(ChildEnv::with_defaults(&THREAD_VARS, n));
                self.0 = Some((n.to_string(), env.clone()));
                Some(env)
            }
        }
    }
}

/// The worker's main function, run in the child right after the fork; returns its exit code.
pub(crate) fn run(mut s: Setup) -> i32 {
    // `fork_child` made us die with the parent (with our process group); if the parent is
    // already gone, leave now.
    if sys::getppid() != s.parent {
        return 1;
    }
    // What `current_process()` says here: Python names its pool workers like this (daemons).
    crate::children::set_current(crate::children::ChildName::PoolWorker(s.slot + 1), true);
    sys::close_all_inherited(s.close.iter().copied());
    if let Some(env) = &s.env {
        // SAFETY: this is a child right after fork: the calling thread is its only one.
        unsafe { ChildEnv::install(env) };
    }
    if let Some(init) = &s.initializer {
        if panic::catch(|| init()).is_err() {
            return INIT_FAILED;
        }
    }
    match serve(&mut s) {
        Ok(()) => 0,
        Err(_) => 2,
    }
}

/// The worker loop proper: runs the orders that come over `s.end` until a stop order or the end
/// of the socket (also the loop of an MPI worker rank, which is no forked child).
pub(crate) fn serve(s: &mut Setup) -> crate::Result<()> {
    let mut ctx = CtxCache::default();
    let mut done = 0u64;
    let spin = if super::sched::spins(s.progress.slots()) {
        SPIN
    } else {
        Duration::ZERO
    };
    let mut clock: Option<Instant> = None;
    while let Some(order) = s.end.next_order(spin)? {
        match order {
            Order::Stop => break,
            Order::Ctx {
                job,
                ctx: bytes,
                fds,
            } => {
                ctx.job = job;
                if let Some(old) = ctx.bytes.replace(bytes) {
                    s.end.recycle(old);
                }
                ctx.fds = FdTable::new(fds);
                ctx.decoded = None;
            }
            Order::Task {
                seq,
                fn_offset,
                job,
                count,
                inputs,
                fds,
            } => {
                // The previous task's end when this order was already waiting: one clock read
                // per task, not two.
                let started = clock.take().unwrap_or_else(Instant::now);
                if s.end.reply_bytes() == 0 {
                    // Every reply written so far was sent: the parent has them.
                    s.progress.journal_clear(s.slot);
                }
                s.progress.set(s.slot, seq, 0, s.timed);
                let (mark, out) = s.end.begin_done(seq);
                if ctx.job != job {
                    ctx.bytes = None;
                    ctx.decoded = None;
                }
                let mut ex = Exec {
                    progress: &s.progress,
                    slot: s.slot,
                    seq,
                    timed: s.timed,
                    ctx: &mut ctx,
                    in_any: !fds.is_empty(),
                    in_fds: FdTable::new(fds),
                    out_fds: Vec::new(),
                    run: None,
                };
                let outcome = FnRef::from_offset(fn_offset)
                    .resolve()
                    .and_then(|t| t(&mut ex, inputs.bytes(), count, out));
                let out_fds = std::mem::take(&mut ex.out_fds);
                drop(ex);
                s.progress.set(s.slot, seq, IDLE, false);
                s.end.recycle(inputs);
                let outcome = outcome.and_then(|()| {
                    if out_fds.len() > MAX_FDS {
                        Err(format!(
                            "the results of this task carry {} shared-memory values \
                             (SharedArray, PodVec, sync objects), more than the {MAX_FDS} one \
                             reply can carry; use a smaller chunksize",
                            out_fds.len()
                        ))
                    } else {
                        Ok(())
                    }
                });
                let ended = Instant::now();
                match outcome {
                    Ok(()) => {
                        let ns = ended.duration_since(started).as_nanos() as u64;
                        s.end.finish_done(mark, ns, out_fds);
                    }
                    Err(message) => s.end.fail(mark, seq, &message),
                }
                if s.end.has_order() {
                    clock = Some(ended);
                }
                done += 1;
                if s.max_tasks.is_some_and(|k| done >= k) {
                    break;
                }
                if !s.end.has_order() || s.end.reply_bytes() > REPLY_BATCH {
                    s.end.flush()?;
                }
            }
        }
    }
    s.end.flush()
}

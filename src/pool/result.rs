//! What the caller holds while work runs: [`AsyncResult`] and the [`IMap`] iterator, plus the
//! decoding of outcomes and the reordering of results.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Condvar, Mutex};
use std::task::Waker;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{CodecError, Error, Result};
use crate::wire::MAX_MESSAGE_BYTES;

use super::chunk::Codec;
use super::fnref::{ItemError, ItemOut};
use super::sched::{Deferred, Done, Event, Items, JobId, Scheduler, Task};
use super::transport::MAX_FDS;
use crate::fdpass::{self, FdTable};

use super::{Pool, Shared};

/// The error of every input left unfinished by [`Pool::terminate`].
pub(crate) fn terminated() -> Error {
    Error::Disconnected("the pool was terminated before this task finished".into())
}

/// Decodes one outcome from the front of `bytes` (its value in `codec`, the codec of `R`: see
/// `chunk`); returns it and the rest.
///
/// postcard writes `Ok(v)` as the variant index 0 (a one-byte varint) followed by `v`, so a
/// value is decoded as it is, without the `Result` around it (which costs a third of the
/// parent's time per tiny result).
#[inline]
pub(crate) fn take_outcome<R: DeserializeOwned>(
    codec: Codec,
    bytes: &[u8],
) -> postcard::Result<(ItemOut<R>, &[u8])> {
    match bytes.split_first() {
        Some((0, rest)) => codec.take::<R>(rest).map(|(v, r)| (Ok(v), r)),
        _ => postcard::take_from_bytes::<ItemOut<()>>(bytes).and_then(|(o, r)| match o {
            Err(e) => Ok((Err(e), r)),
            Ok(()) => Err(postcard::Error::DeserializeBadEnum),
        }),
    }
}

/// Decodes the outcomes of `items` from `data`, handing each to `put(index, result)`.
///
/// `fds` are the descriptors the outcomes refer to (values in shared memory); those no outcome
/// takes are closed.
pub(crate) fn decode_outcomes<R: DeserializeOwned>(
    items: &Items,
    data: &[u8],
    mut fds: FdTable,
    pid: i32,
    mut put: impl FnMut(usize, Result<R>),
) {
    let codec = Codec::of::<R>();
    let mut rest = data;
    // Outcomes that brought no descriptor (the common case) skip the table altogether.
    let with_fds = !fds.is_empty();
    for k in 0..items.count() as usize {
        let decoded = if !with_fds {
            take_outcome::<R>(codec, rest)
        } else {
            fdpass::decoding_with(&mut fds, || take_outcome::<R>(codec, rest))
        };
        match decoded {
            Ok((Ok(v), r)) => {
                rest = r;
                put(items.index(k), Ok(v));
            }
            Ok((Err(e), r)) => {
                rest = r;
                put(items.index(k), Err(item_error(e, items, k, pid)));
            }
            Err(e) => {
                for j in k..items.count() as usize {
                    put(items.index(j), Err(Error::Codec(CodecError(e.clone()))));
                }
                return;
            }
        }
    }
}

/// The error of input `k` of `items`, which failed in worker `pid`.
#[cold]
fn item_error(e: ItemError, items: &Items, k: usize, pid: i32) -> Error {
    match e {
        ItemError::Panicked(panic) => Error::TaskPanicked { pid, panic },
        ItemError::Codec(m) => Error::InvalidState(format!(
            "the result of {} could not be encoded: {m}",
            items.label(k)
        )),
        ItemError::TooLarge(size) => Error::TooLarge {
            size: size as usize,
            limit: MAX_MESSAGE_BYTES,
        },
    }
}

impl Done {
    /// Decodes the outcomes, handing each to `put(index, result)`.
    pub(crate) fn decode<R: DeserializeOwned>(self, put: impl FnMut(usize, Result<R>)) {
        decode_outcomes(&self.items, self.data.bytes(), self.fds, self.pid, put);
        crate::wire::give_back(self.data);
    }
}

/// A task stops taking inputs once they brought this many descriptors (each input may bring up
/// to [`MAX_FDS`] minus this many more).
const FDS_PER_TASK: usize = 64;

/// Cuts an input iterator into encoded tasks of `chunksize` inputs (fewer when the inputs carry
/// shared-memory descriptors, see [`FDS_PER_TASK`]).
pub(crate) struct Chunker<I> {
    iter: I,
    chunksize: usize,
    limit: usize,
    /// Whether no caller code runs in `iter.next()` (the inputs of a `Vec`), so that one
    /// descriptor frame can serve a whole task.
    whole_frames: bool,
    /// Inputs taken from `iter` so far.
    pub(crate) pulled: usize,
    /// Whether `iter` is exhausted.
    pub(crate) done: bool,
    scratch: Vec<u8>,
    /// How the inputs are encoded (see `chunk`).
    codec: Codec,
}

impl<T: Serialize + DeserializeOwned> Chunker<std::vec::IntoIter<T>> {
    /// A chunker over the inputs of a `Vec`, encoding into `scratch` (a recycled buffer).
    pub(crate) fn from_vec(
        items: Vec<T>,
        chunksize: usize,
        limit: usize,
        scratch: Vec<u8>,
    ) -> Self {
        Chunker {
            whole_frames: true,
            ..Self::with_scratch(items.into_iter(), chunksize, limit, scratch)
        }
    }
}

impl<I: Iterator> Chunker<I>
where
    I::Item: Serialize + DeserializeOwned,
{
    /// A chunker over a caller's iterator.
    pub(crate) fn new(iter: I, chunksize: usize, limit: usize) -> Self {
        Self::with_scratch(iter, chunksize, limit, Vec::new())
    }

    fn with_scratch(iter: I, chunksize: usize, limit: usize, scratch: Vec<u8>) -> Self {
        Chunker {
            iter,
            chunksize: chunksize.max(1),
            limit,
            whole_frames: false,
            pulled: 0,
            done: false,
            scratch,
            codec: Codec::of::<I::Item>(),
        }
    }
}

impl<I: Iterator> Chunker<I>
where
    I::Item: Serialize,
{
    /// The next task of `job`, at most `max` inputs; `None` when the input is exhausted.
    pub(crate) fn next_task(&mut self, job: JobId, max: usize) -> Result<Option<Task>> {
        if self.done {
            return Ok(None);
        }
        self.scratch.clear();
        let first = self.pulled;
        let cap = self.chunksize.min(max.max(1));
        let mut n = 0usize;
        let mut fds = Vec::new();
        if let Codec::Fixed(size) = self.codec {
            n = self.fill_plain(cap, size)?;
        } else if self.whole_frames {
            // Each input is given up once encoded (it is dropped right after), so a `PodVec` in
            // shared memory goes as it is, without a copy. No caller code runs between the
            // inputs: one frame for the task.
            fdpass::encoding_into(&mut fds, true, || -> Result<()> {
                while n < cap {
                    let Some(x) = self.iter.next() else {
                        self.done = true;
                        break;
                    };
                    self.encode(x)?;
                    n += 1;
                    if self.task_full(fdpass::attached(), first + n - 1)? {
                        break;
                    }
                }
                Ok(())
            })?;
        } else {
            // The caller's iterator runs between the inputs: a frame for each, so that what
            // the iterator encodes cannot attach to the task.
            while n < cap {
                let Some(x) = self.iter.next() else {
                    self.done = true;
                    break;
                };
                fdpass::encoding_into(&mut fds, true, || self.encode(x))?;
                n += 1;
                if self.task_full(fds.len(), first + n - 1)? {
                    break;
                }
            }
        }
        self.pulled += n;
        if n == 0 {
            return Ok(None);
        }
        Ok(Some(Task {
            job,
            items: Items::Range(first, n as u32),
            bytes: if self.scratch.len() > 1 << 16 {
                Arc::new(std::mem::take(&mut self.scratch))
            } else {
                Arc::new(self.scratch.clone())
            },
            fds: (!fds.is_empty()).then(|| Arc::new(fds)),
            died: 0,
        }))
    }

    /// Appends the encoding of input `x` to the task being made, and drops `x`.
    #[inline]
    fn encode(&mut self, x: I::Item) -> Result<()> {
        self.codec
            .encode(&x, &mut self.scratch)
            .map_err(crate::fdpass::encode_error)?;
        Ok(())
    }

    /// Encodes up to `cap` plain-data inputs of `size` bytes (see `chunk`), which carry no
    /// descriptor: no descriptor frame, and the task's size is known before it is made.
    fn fill_plain(&mut self, cap: usize, size: usize) -> Result<usize> {
        let want = cap.min(self.iter.size_hint().0.max(1));
        if want.saturating_mul(size) > self.limit {
            self.done = true;
            return Err(Error::TooLarge {
                size: want.saturating_mul(size),
                limit: self.limit,
            });
        }
        self.scratch.reserve(want * size);
        let mut n = 0;
        while n < cap {
            let Some(x) = self.iter.next() else {
                self.done = true;
                break;
            };
            self.encode(x)?;
            n += 1;
        }
        if self.scratch.len() > self.limit {
            self.done = true;
            return Err(Error::TooLarge {
                size: self.scratch.len(),
                limit: self.limit,
            });
        }
        Ok(n)
    }

    /// Whether the task being made must take no more inputs, now that it holds input `#input`
    /// and `fds` descriptors; an error (which ends the input) when it is over a limit.
    #[inline]
    fn task_full(&mut self, fds: usize, input: usize) -> Result<bool> {
        if fds > MAX_FDS {
            return Err(self.too_many_fds(fds, input));
        }
        if self.scratch.len() > self.limit {
            self.done = true;
            return Err(Error::TooLarge {
                size: self.scratch.len(),
                limit: self.limit,
            });
        }
        // Close the task early, so that the next input cannot take it past the limit.
        Ok(fds >= FDS_PER_TASK)
    }

    /// The error of a task whose input `#input` brought its descriptors to `fds`.
    #[cold]
    fn too_many_fds(&mut self, fds: usize, input: usize) -> Error {
        self.done = true;
        Error::invalid_arg(
            "descriptors of one pool task",
            fds,
            format!(
                "input #{input} brings the task's shared-memory values (SharedArray, \
                 PodVec, sync objects) to more than {MAX_FDS}; pass fewer per input"
            ),
        )
    }
}

/// The inputs of a map-like call run from this thread (see `Pool::run`): kept as values, or,
/// for plain data (see `chunk`), already encoded into the bytes of their tasks.
#[derive(Debug)]
pub(crate) enum Inputs<T> {
    /// The inputs, cut and encoded as tasks are needed ([`Chunker`]).
    Values(Vec<T>),
    /// Plain-data inputs encoded straight from the caller's iterator into chunks.
    Plain(PlainChunks),
}

impl<T> Inputs<T> {
    /// How many inputs there are.
    pub(crate) fn len(&self) -> usize {
        match self {
            Inputs::Values(v) => v.len(),
            Inputs::Plain(p) => p.n,
        }
    }
}

/// The tasks of a job run from this thread.
pub(crate) enum Tasks<T> {
    Values(Chunker<std::vec::IntoIter<T>>),
    Plain(PlainChunks),
}

impl<T: Serialize + DeserializeOwned> Tasks<T> {
    /// The tasks of `inputs`, `chunksize` inputs each; `scratch` is a recycled encode buffer.
    pub(crate) fn new(inputs: Inputs<T>, chunksize: usize, limit: usize, scratch: Vec<u8>) -> Self {
        match inputs {
            Inputs::Values(v) => Tasks::Values(Chunker::from_vec(v, chunksize, limit, scratch)),
            Inputs::Plain(p) => Tasks::Plain(p),
        }
    }

    /// The next task of `job`; `None` when every input has been handed out.
    pub(crate) fn next_task(&mut self, job: JobId) -> Result<Option<Task>> {
        match self {
            Tasks::Values(c) => c.next_task(job, usize::MAX),
            Tasks::Plain(p) => Ok(p.next_task(job)),
        }
    }
}

/// Plain-data inputs (see `chunk`) encoded into the bytes of their tasks as they are taken from
/// the caller's iterator: no vector of the inputs is made, and each chunk's buffer becomes its
/// task's bytes as it is (one write of each input, no copy).
#[derive(Debug)]
pub(crate) struct PlainChunks {
    /// Each task's bytes and input count, in input order.
    chunks: VecDeque<(Vec<u8>, u32)>,
    /// How many inputs in all.
    n: usize,
    /// The first input of the next task.
    next: usize,
}

impl PlainChunks {
    /// Encodes every input of `iter` (plain data of `size` bytes) into chunks of `chunksize`;
    /// a chunk over `limit` bytes is [`Error::TooLarge`].
    pub(crate) fn encode<I: Iterator>(
        mut iter: I,
        size: usize,
        chunksize: usize,
        limit: usize,
    ) -> Result<PlainChunks>
    where
        I::Item: Serialize,
    {
        let codec = Codec::Fixed(size);
        let chunksize = chunksize.clamp(1, u32::MAX as usize);
        if chunksize.saturating_mul(size) > limit && iter.size_hint().0 >= chunksize {
            return Err(Error::TooLarge {
                size: chunksize.saturating_mul(size),
                limit,
            });
        }
        let mut chunks = VecDeque::new();
        let mut n = 0usize;
        loop {
            let k = chunksize.min(iter.size_hint().0.max(1));
            let mut bytes = Vec::with_capacity(k.saturating_mul(size).min(limit));
            let mut count = 0usize;
            while count < chunksize {
                let Some(x) = iter.next() else { break };
                codec.encode(&x, &mut bytes).map_err(CodecError)?;
                count += 1;
            }
            if bytes.len() > limit {
                return Err(Error::TooLarge {
                    size: bytes.len(),
                    limit,
                });
            }
            if count == 0 {
                break;
            }
            chunks.push_back((bytes, count as u32));
            n += count;
            if count < chunksize {
                break;
            }
        }
        Ok(PlainChunks { chunks, n, next: 0 })
    }

    fn next_task(&mut self, job: JobId) -> Option<Task> {
        let (bytes, count) = self.chunks.pop_front()?;
        let first = self.next;
        self.next += count as usize;
        Some(Task {
            job,
            items: Items::Range(first, count),
            bytes: Arc::new(bytes),
            fds: None,
            died: 0,
        })
    }
}

/// Which inputs of a job have an outcome already: one bit per input (a map of 100,000 inputs
/// costs 12.5 KB, not 100 KB).
#[derive(Debug)]
pub(crate) struct Seen(Vec<u64>);

impl Seen {
    pub(crate) fn new(n: usize) -> Seen {
        Seen(vec![0; n.div_ceil(64)])
    }

    /// Marks input `i`; whether it was not marked before.
    #[inline]
    pub(crate) fn first(&mut self, i: usize) -> bool {
        let (word, bit) = (&mut self.0[i / 64], 1u64 << (i % 64));
        let fresh = *word & bit == 0;
        *word |= bit;
        fresh
    }
}

/// The values of a map in input order, as they arrive in any order: the prefix in order is the
/// result vector itself; a run of values that arrives ahead of it (another worker's chunk)
/// waits, keyed by its first input, and is appended (one copy) when the prefix reaches it. So a
/// map's values take one vector of `R` and the chunks that arrived early, instead of an
/// `Option<R>` per input and a second vector at the end.
#[derive(Debug)]
pub(crate) struct InOrder<R> {
    out: Vec<R>,
    /// The run being added to: its first input and its values.
    run: Option<(usize, Vec<R>)>,
    /// Runs set aside, by first input.
    early: BTreeMap<usize, Vec<R>>,
    /// The first input of the earliest run waiting (`usize::MAX`: none).
    wait_at: usize,
    /// Room to reserve for a new run (the chunk size).
    run_hint: usize,
}

impl<R> InOrder<R> {
    /// A collector of `n` values that arrive in runs of about `run_hint`.
    pub(crate) fn new(n: usize, run_hint: usize) -> InOrder<R> {
        InOrder {
            out: Vec::with_capacity(n),
            run: None,
            early: BTreeMap::new(),
            wait_at: usize::MAX,
            run_hint: run_hint.clamp(1, n.max(1)),
        }
    }

    /// Input `i`'s value (each input at most once).
    #[inline]
    pub(crate) fn put(&mut self, i: usize, v: R) {
        if i == self.out.len() {
            self.out.push(v);
            if self.out.len() == self.wait_at {
                self.catch_up();
            }
            return;
        }
        if let Some((start, run)) = &mut self.run {
            if *start + run.len() == i {
                run.push(v);
                return;
            }
        }
        self.start_run(i, v);
    }

    /// Sets the current run aside and starts one at input `i`.
    #[cold]
    fn start_run(&mut self, i: usize, v: R) {
        if let Some((start, run)) = self.run.take() {
            self.early.insert(start, run);
        }
        let mut run = Vec::with_capacity(self.run_hint);
        run.push(v);
        self.run = Some((i, run));
        self.wait_at = self.wait_at.min(i);
    }

    /// Appends the runs that start where the prefix ends.
    #[cold]
    fn catch_up(&mut self) {
        loop {
            let at = self.out.len();
            if let Some(mut run) = self.early.remove(&at) {
                self.out.append(&mut run);
            } else if self.run.as_ref().is_some_and(|(start, _)| *start == at) {
                if let Some((_, mut run)) = self.run.take() {
                    self.out.append(&mut run);
                }
            } else {
                break;
            }
        }
        let first_early = self.early.keys().next().copied().unwrap_or(usize::MAX);
        let run_start = self.run.as_ref().map_or(usize::MAX, |(start, _)| *start);
        self.wait_at = first_early.min(run_start);
    }

    /// The values in input order, or `None` when some input has none.
    pub(crate) fn finish(self, n: usize) -> Option<Vec<R>> {
        (self.out.len() == n).then_some(self.out)
    }
}

/// Runs callbacks collected under the pool's lock, after it is released. A callback that panics
/// is reported by the panic hook and does not unwind into the caller.
pub(crate) fn run_deferred(deferred: Vec<Deferred>) {
    for d in deferred {
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(d));
    }
}

type Callback<R> = Box<dyn FnOnce(&R) + Send>;
type ErrCallback = Box<dyn FnOnce(&Error) + Send>;

enum Slot<R> {
    Waiting,
    Ready(Result<R>),
    Taken,
}

/// Work to run once a result is in (see [`AsyncState::on_ready`]).
pub(crate) type Watcher = Box<dyn FnOnce() + Send>;

pub(crate) struct AsyncState<R> {
    slot: Mutex<Slot<R>>,
    callbacks: Mutex<(Option<Callback<R>>, Option<ErrCallback>)>,
    /// The task of the last `poll` of the result as a future.
    pub(crate) waker: Mutex<Option<Waker>>,
    /// What runs once the result is in ([`as_completed`](super::as_completed)'s notices).
    watchers: Mutex<Vec<Watcher>>,
    /// Set once the result is in and its callback has run: what waiters wait for.
    settled: Mutex<bool>,
    settled_cv: Condvar,
}

impl<R: Send + 'static> AsyncState<R> {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(AsyncState {
            slot: Mutex::new(Slot::Waiting),
            callbacks: Mutex::new((None, None)),
            waker: Mutex::new(None),
            watchers: Mutex::new(Vec::new()),
            settled: Mutex::new(false),
            settled_cv: Condvar::new(),
        })
    }

    /// Stores the result and queues, for after the pool's lock, the callback that applies,
    /// then the settling: waiters return (as in Python, after the callback ran), a task
    /// awaiting it is woken, the watchers run. A callback that panics is reported by the panic
    /// hook and does not stop the settling.
    pub(crate) fn complete(self: &Arc<Self>, res: Result<R>, deferred: &mut Vec<Deferred>) {
        *self.slot.lock().unwrap_or_else(|e| e.into_inner()) = Slot::Ready(res);
        let me = self.clone();
        deferred.push(Box::new(move || {
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| me.fire()));
            me.settle();
        }));
    }

    fn settle(&self) {
        *self.settled.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.settled_cv.notify_all();
        let waker = self.waker.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(w) = waker {
            w.wake();
        }
        let watchers =
            std::mem::take(&mut *self.watchers.lock().unwrap_or_else(|e| e.into_inner()));
        for w in watchers {
            w();
        }
    }

    /// Waits until the result is settled or `deadline` passes (the result is in already: its
    /// callback runs in another thread).
    fn wait_settled(&self, deadline: Option<Instant>) {
        let mut settled = self.settled.lock().unwrap_or_else(|e| e.into_inner());
        while !*settled {
            settled = match deadline {
                None => self
                    .settled_cv
                    .wait(settled)
                    .unwrap_or_else(|e| e.into_inner()),
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return;
                    }
                    self.settled_cv
                        .wait_timeout(settled, left)
                        .unwrap_or_else(|e| e.into_inner())
                        .0
                }
            };
        }
    }

    /// Runs `f` once the result is in: now if it is, else after [`complete`](Self::complete).
    pub(crate) fn on_ready(&self, f: Watcher) {
        let mut watchers = self.watchers.lock().unwrap_or_else(|e| e.into_inner());
        if self.is_ready() {
            drop(watchers);
            f();
        } else {
            watchers.push(f);
        }
    }

    fn fire(&self) {
        let (cb, ecb) =
            std::mem::take(&mut *self.callbacks.lock().unwrap_or_else(|e| e.into_inner()));
        let slot = self.slot.lock().unwrap_or_else(|e| e.into_inner());
        match (&*slot, cb, ecb) {
            (Slot::Ready(Ok(v)), Some(cb), _) => cb(v),
            (Slot::Ready(Err(e)), _, Some(ecb)) => ecb(e),
            _ => {}
        }
    }

    /// Whether the result is in and its callback has run.
    pub(crate) fn is_ready(&self) -> bool {
        *self.settled.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the result is in (its callback may not have run yet).
    pub(crate) fn is_stored(&self) -> bool {
        !matches!(
            *self.slot.lock().unwrap_or_else(|e| e.into_inner()),
            Slot::Waiting
        )
    }
}

/// The result of [`Pool::apply_async`] or [`Pool::map_async`], to collect later: Python's
/// `AsyncResult`.
///
/// The work progresses in the background: the pool's driver thread (started by the first
/// asynchronous call) reads the workers' answers as they come, so [`ready`](AsyncResult::ready)
/// turns true and the callbacks run while the caller does something else. Callbacks run in the
/// parent, in the thread that read the result (the driver, or a caller inside
/// [`get`](AsyncResult::get), [`map`](Pool::map)...), after the pool's internal lock is released;
/// a callback that panics is reported and ignored. As in Python, [`get`](AsyncResult::get) and
/// [`wait`](AsyncResult::wait) return once the callback has run, so a callback must not wait for
/// another result of its pool. An `AsyncResult` is also a
/// [`Future`](std::future::Future) (`.await` it under any executor) and can be collected in
/// completion order with [`as_completed`](crate::as_completed).
///
/// # Examples
///
/// ```
/// use multiproc::Pool;
///
/// let pool = Pool::with_processes(2)?;
/// let r = pool.apply_async(|x: u64| x * 2, 21)?;
/// assert_eq!(r.get()?, 42);
/// # Ok::<(), multiproc::Error>(())
/// ```
pub struct AsyncResult<R> {
    pub(crate) shared: Arc<Shared>,
    pub(crate) state: Arc<AsyncState<R>>,
}

impl<R> fmt::Debug for AsyncResult<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ready = !matches!(
            *self.state.slot.lock().unwrap_or_else(|e| e.into_inner()),
            Slot::Waiting
        );
        f.debug_struct("AsyncResult")
            .field("ready", &ready)
            .finish()
    }
}

impl<R: Send + 'static> AsyncResult<R> {
    /// Runs `f` with the value when the task succeeds (right away, on this thread, if it already
    /// has). Python's `callback=`.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::{Arc, atomic::{AtomicU64, Ordering}};
    /// # let pool = multiproc::Pool::with_processes(2)?;
    /// let seen = Arc::new(AtomicU64::new(0));
    /// let s = seen.clone();
    /// let r = pool.apply_async(|x: u64| x + 1, 1)?.callback(move |v| s.store(*v, Ordering::SeqCst));
    /// r.wait()?;
    /// assert_eq!(seen.load(Ordering::SeqCst), 2);
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    pub fn callback(self, f: impl FnOnce(&R) + Send + 'static) -> Self {
        self.state
            .callbacks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .0 = Some(Box::new(f));
        if self.state.is_stored() {
            self.state.fire();
        }
        self
    }

    /// Runs `f` with the error when the task fails (right away if it already has). Python's
    /// `error_callback=`.
    ///
    /// # Examples
    ///
    /// ```
    /// # let pool = multiproc::Pool::with_processes(2)?;
    /// let r = pool
    ///     .apply_async(|x: u64| if x == 0 { panic!("zero") } else { x }, 0)?
    ///     .error_callback(|e| eprintln!("task failed: {e}"));
    /// assert!(r.get().is_err());
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    pub fn error_callback(self, f: impl FnOnce(&Error) + Send + 'static) -> Self {
        self.state
            .callbacks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .1 = Some(Box::new(f));
        if self.state.is_stored() {
            self.state.fire();
        }
        self
    }

    /// Drives the pool until the result is in or `deadline` passes; `true` when it is in.
    fn wait_until(&self, deadline: Option<Instant>) -> Result<bool> {
        loop {
            if self.state.is_ready() {
                return Ok(true);
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(false);
            }
            let mut core = self.shared.lock();
            // The result is stored under the pool's lock, so this cannot miss it.
            if self.state.is_stored() {
                drop(core);
                self.state.wait_settled(deadline);
                continue;
            }
            core.drive(deadline)?;
            let deferred = core.take_deferred();
            drop(core);
            run_deferred(deferred);
        }
    }

    /// Waits for the result and returns it.
    ///
    /// # Errors
    ///
    /// The task's own error ([`Error::TaskPanicked`], [`Error::WorkerDied`], [`Error::Timeout`]
    /// with `task_timeout`), [`Error::Disconnected`] if the pool was terminated first, or
    /// [`Error::InvalidState`] if [`get_timeout`](AsyncResult::get_timeout) took it already.
    pub fn get(self) -> Result<R> {
        self.wait_until(None)?;
        self.take()
    }

    /// Waits at most `timeout` for the result. After a success the value is taken: a later call
    /// gives [`Error::InvalidState`].
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// # let pool = multiproc::Pool::with_processes(2)?;
    /// let r = pool.apply_async(|ms: u64| { std::thread::sleep(Duration::from_millis(ms)); ms }, 300)?;
    /// assert!(r.get_timeout(Duration::from_millis(10)).unwrap_err().is_timeout());
    /// assert_eq!(r.get_timeout(Duration::from_secs(30))?, 300);
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::Timeout`] if the result is not in by then, else as [`get`](AsyncResult::get).
    pub fn get_timeout(&self, timeout: Duration) -> Result<R> {
        if !self.wait_until(Some(Instant::now() + timeout))? {
            return Err(Error::Timeout {
                operation: "AsyncResult::get_timeout",
                after: timeout,
                task: None,
            });
        }
        self.take()
    }

    pub(crate) fn take(&self) -> Result<R> {
        let mut slot = self.state.slot.lock().unwrap_or_else(|e| e.into_inner());
        match std::mem::replace(&mut *slot, Slot::Taken) {
            Slot::Ready(r) => r,
            Slot::Taken => Err(Error::InvalidState(
                "the result of this AsyncResult was already taken".into(),
            )),
            Slot::Waiting => {
                *slot = Slot::Waiting;
                Err(Error::InvalidState("the result is not ready".into()))
            }
        }
    }

    /// Waits until the result is in.
    ///
    /// # Errors
    ///
    /// Only an operating-system failure of the pool itself; the task's own error is for `get`.
    pub fn wait(&self) -> Result<()> {
        self.wait_until(None).map(|_| ())
    }

    /// Waits at most `timeout`; `true` when the result is in.
    ///
    /// # Errors
    ///
    /// As [`wait`](AsyncResult::wait).
    pub fn wait_timeout(&self, timeout: Duration) -> Result<bool> {
        self.wait_until(Some(Instant::now() + timeout))
    }

    /// Whether the result is in. It does not wait: the pool's driver thread reads the
    /// workers' answers in the background.
    pub fn ready(&self) -> bool {
        self.state.is_ready()
    }

    /// Whether the task succeeded.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidState`] while the result is not in (Python raises `ValueError`).
    pub fn successful(&self) -> Result<bool> {
        if !self.ready() {
            return Err(Error::InvalidState("the result is not ready".into()));
        }
        let slot = self.state.slot.lock().unwrap_or_else(|e| e.into_inner());
        Ok(matches!(*slot, Slot::Ready(Ok(_))))
    }
}

/// The iterator of [`Pool::imap`] and [`Pool::imap_unordered`]: one `Result` per input.
///
/// It pulls the input lazily: at most a bounded number of inputs are taken from the input
/// iterator and not yet yielded (a few tasks per worker), so an endless input runs in flat
/// memory. The inputs taken run in the background (the pool's driver thread) between calls to
/// `next`; further inputs are taken from the caller's iterator only by `next` (it may not be
/// `Send`). Dropping it early discards the work in flight. It borrows the pool.
pub struct IMap<'p, I: Iterator, R> {
    pub(crate) pool: &'p Pool,
    pub(crate) job: JobId,
    pub(crate) chunks: Chunker<I>,
    pub(crate) ordered: bool,
    pub(crate) window: usize,
    pub(crate) next_out: usize,
    pub(crate) yielded: usize,
    pub(crate) buffer: HashMap<usize, Result<R>>,
    pub(crate) ready: VecDeque<Result<R>>,
    pub(crate) aborted: bool,
    pub(crate) fused: bool,
}

impl<I: Iterator, R> fmt::Debug for IMap<'_, I, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IMap")
            .field("ordered", &self.ordered)
            .field("pulled", &self.chunks.pulled)
            .field("yielded", &self.yielded)
            .finish()
    }
}

impl<I, R> IMap<'_, I, R>
where
    I: Iterator,
    I::Item: Serialize,
    R: DeserializeOwned,
{
    /// How many inputs were taken from the input iterator so far.
    pub fn pulled(&self) -> usize {
        self.chunks.pulled
    }

    /// Queues tasks of the next inputs while the window has room and the pool wants them.
    fn feed(&mut self, core: &mut Scheduler) -> Result<()> {
        while core.wants_tasks() && self.chunks.pulled - self.yielded < self.window {
            let room = self.window - (self.chunks.pulled - self.yielded);
            match self.chunks.next_task(self.job, room)? {
                Some(t) => core.submit(t),
                None => break,
            }
        }
        Ok(())
    }

    /// Queues the first window of inputs and hands them to the driver thread, so that they run
    /// while the caller does something else.
    pub(crate) fn start(&mut self) -> Result<()> {
        let pool = self.pool;
        let mut core = pool.shared.lock();
        self.feed(&mut core)?;
        drop(core);
        pool.shared.driver.notify();
        Ok(())
    }

    fn pop(&mut self) -> Option<Result<R>> {
        let r = if self.ordered {
            self.buffer
                .remove(&self.next_out)
                .inspect(|_| self.next_out += 1)
        } else {
            self.ready.pop_front()
        };
        if r.is_some() {
            self.yielded += 1;
        }
        r
    }
}

impl<I, R> Iterator for IMap<'_, I, R>
where
    I: Iterator,
    I::Item: Serialize,
    R: DeserializeOwned,
{
    type Item = Result<R>;

    fn next(&mut self) -> Option<Result<R>> {
        if self.fused {
            return None;
        }
        if let Some(r) = self.pop() {
            return Some(r);
        }
        let pool = self.pool;
        let mut core = pool.shared.lock();
        let out = loop {
            while let Some(ev) = core.take_event(self.job) {
                match ev {
                    Event::Done(done) => done.decode::<R>(|i, r| {
                        if self.ordered {
                            self.buffer.insert(i, r);
                        } else {
                            self.ready.push_back(r);
                        }
                    }),
                    Event::Failed { index, error } => {
                        if self.ordered {
                            self.buffer.insert(index, Err(error));
                        } else {
                            self.ready.push_back(Err(error));
                        }
                    }
                    Event::Aborted => self.aborted = true,
                }
            }
            pool.report(self.yielded, None);
            if let Some(r) = self.pop() {
                break Some(r);
            }
            if self.aborted || core.is_terminated() {
                self.fused = true;
                break Some(Err(terminated()));
            }
            if self.chunks.done && self.yielded == self.chunks.pulled {
                self.fused = true;
                break None;
            }
            if let Err(e) = self.feed(&mut core) {
                self.fused = true;
                return Some(Err(e));
            }
            if self.chunks.done && self.yielded == self.chunks.pulled {
                continue;
            }
            if let Err(e) = core.drive(None) {
                self.fused = true;
                break Some(Err(e));
            }
        };
        let deferred = core.take_deferred();
        drop(core);
        // Inputs queued by this call run on in the background.
        pool.shared.driver.notify();
        run_deferred(deferred);
        out
    }
}

impl<I: Iterator, R> Drop for IMap<'_, I, R> {
    fn drop(&mut self) {
        let mut core = self.pool.shared.lock();
        core.finish_job(self.job);
    }
}

//! What the caller holds while work runs: [`AsyncResult`] (and its shared state), plus the
//! decoding of outcomes. The [`IMap`] iterator is in `imap`, the cutting of inputs into tasks in
//! `chunker`, the ordering of results in `order`; their names are re-exported here.

use std::fmt;
use std::sync::{Arc, Condvar, Mutex};
use std::task::Waker;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;

use crate::error::{CodecError, Error, Result};
use crate::wire::MAX_MESSAGE_BYTES;

use super::chunk::Codec;
use super::fnref::{ItemError, ItemOut};
use super::sched::{Deferred, Done, Items};
use crate::fdpass::{self, FdTable};

use super::Shared;

pub(crate) use super::chunker::{Chunker, Inputs, PlainChunks, Tasks};
pub use super::imap::IMap;
pub(crate) use super::order::{FirstOnly, InOrder, Seen, Values};

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

/// Where decoded outcomes go: one at a time, or a run of consecutive inputs' values at once
/// (a chunk of plain data whose inputs all succeeded), which a map's collector appends in bulk.
pub(crate) trait Collect<R> {
    /// Input `i`'s outcome.
    fn put(&mut self, i: usize, r: Result<R>);

    /// The values of inputs `first, first + 1, …`: at most `n`, as many as `values` yields.
    fn put_run(&mut self, first: usize, n: usize, values: impl Iterator<Item = R>) {
        let _ = n;
        for (k, v) in values.enumerate() {
            self.put(first + k, Ok(v));
        }
    }
}

impl<R, F: FnMut(usize, Result<R>)> Collect<R> for F {
    fn put(&mut self, i: usize, r: Result<R>) {
        self(i, r)
    }
}

/// Decodes the outcomes of `items` from `data`, handing each to `put` (see [`Collect`]).
///
/// `fds` are the descriptors the outcomes refer to (values in shared memory); those no outcome
/// takes are closed.
pub(crate) fn decode_outcomes<R: DeserializeOwned>(
    items: &Items,
    data: &[u8],
    fds: FdTable,
    pid: i32,
    put: &mut impl Collect<R>,
) {
    let codec = Codec::of::<R>();
    if let (Codec::Fixed(size), Items::Range(first, n), true) = (codec, items, fds.is_empty()) {
        // A chunk of plain data whose inputs all succeeded: `0` and the value's bytes each.
        let each = data.chunks_exact(size + 1);
        if data.len() == *n as usize * (size + 1) && each.clone().all(|o| o[0] == 0) {
            let mut done = 0usize;
            let values = each.map_while(|o| {
                let v = codec.take::<R>(&o[1..]).ok()?.0;
                done += 1;
                Some(v)
            });
            put.put_run(*first, *n as usize, values);
            // A value that did not decode: it and the rest go the general way (an error each).
            if done < *n as usize {
                decode_each(
                    codec,
                    items,
                    done,
                    &data[done * (size + 1)..],
                    fds,
                    pid,
                    put,
                );
            }
            return;
        }
    }
    decode_each(codec, items, 0, data, fds, pid, put)
}

/// [`decode_outcomes`] one by one, from input `from` of `items` (whose outcomes start `data`),
/// values in `codec` (the codec of `R`).
fn decode_each<R: DeserializeOwned>(
    codec: Codec,
    items: &Items,
    from: usize,
    data: &[u8],
    mut fds: FdTable,
    pid: i32,
    put: &mut impl Collect<R>,
) {
    let mut rest = data;
    // Outcomes that brought no descriptor (the common case) skip the table altogether.
    let with_fds = !fds.is_empty();
    for k in from..items.count() as usize {
        let decoded = if !with_fds {
            take_outcome::<R>(codec, rest)
        } else {
            fdpass::decoding_with(&mut fds, || take_outcome::<R>(codec, rest))
        };
        match decoded {
            Ok((Ok(v), r)) => {
                rest = r;
                put.put(items.index(k), Ok(v));
            }
            Ok((Err(e), r)) => {
                rest = r;
                put.put(items.index(k), Err(item_error(e, items, k, pid)));
            }
            Err(e) => {
                for j in k..items.count() as usize {
                    put.put(items.index(j), Err(Error::Codec(CodecError(e.clone()))));
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
    pub(crate) fn decode<R: DeserializeOwned>(self, put: &mut impl Collect<R>) {
        decode_outcomes(&self.items, self.data.bytes(), self.fds, self.pid, put);
        crate::wire::give_back(self.data);
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

/// The result of [`Pool::apply_async`](super::Pool::apply_async) or
/// [`Pool::map_async`](super::Pool::map_async), to collect later: Python's `AsyncResult`.
///
/// The work progresses in the background: the pool's driver thread (started by the first
/// asynchronous call) reads the workers' answers as they come, so [`ready`](AsyncResult::ready)
/// turns true and the callbacks run while the caller does something else. Callbacks run in the
/// parent, in the thread that read the result (the driver, or a caller inside
/// [`get`](AsyncResult::get), [`map`](super::Pool::map)...), after the pool's internal lock is released;
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

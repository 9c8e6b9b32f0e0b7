//! Waiting for asynchronous results without blocking in `get`: [`AsyncResult`] as a
//! [`Future`], and [`as_completed`], the results of several calls in the order they finish
//! (Python's `concurrent.futures.as_completed`).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use std::sync::mpsc::{Receiver, channel};

use crate::error::Result;

use super::result::AsyncResult;

/// `pool.apply_async(f, x)?.await`: the result, without blocking a thread. The pool's driver
/// thread wakes the task when the result is in (no polling in between), so it works under any
/// executor (tokio, async-std, `futures::executor::block_on`...).
///
/// # Examples
///
/// ```
/// # let pool = multiproc::Pool::with_processes(2)?;
/// let fut = pool.apply_async(|x: u64| x * 3, 14)?;
/// // Any executor; here a minimal one that parks the thread until the driver wakes it.
/// struct Unpark(std::thread::Thread);
/// impl std::task::Wake for Unpark {
///     fn wake(self: std::sync::Arc<Self>) { self.0.unpark() }
/// }
/// let waker = std::sync::Arc::new(Unpark(std::thread::current())).into();
/// let mut cx = std::task::Context::from_waker(&waker);
/// let mut fut = std::pin::pin!(fut);
/// let value = loop {
///     match std::future::Future::poll(fut.as_mut(), &mut cx) {
///         std::task::Poll::Ready(v) => break v?,
///         std::task::Poll::Pending => std::thread::park(),
///     }
/// };
/// assert_eq!(value, 42);
/// # Ok::<(), multiproc::Error>(())
/// ```
impl<R: Send + 'static> Future for AsyncResult<R> {
    type Output = Result<R>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<R>> {
        if self.state.is_ready() {
            return Poll::Ready(self.take());
        }
        *self.state.waker.lock().unwrap_or_else(|e| e.into_inner()) = Some(cx.waker().clone());
        // The result may have come in before the waker was stored.
        if self.state.is_ready() {
            return Poll::Ready(self.take());
        }
        if let Err(e) = super::driver::ensure(&self.shared) {
            return Poll::Ready(Err(e));
        }
        Poll::Pending
    }
}

/// The iterator of [`as_completed`].
pub struct AsCompleted<R> {
    results: Vec<Option<AsyncResult<R>>>,
    finished: Receiver<usize>,
    left: usize,
}

impl<R> fmt::Debug for AsCompleted<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsCompleted")
            .field("left", &self.left)
            .finish_non_exhaustive()
    }
}

/// Yields `(index, result)` for each of `results` as it finishes, in completion order: `index`
/// is its position in `results`. Python's `concurrent.futures.as_completed`.
///
/// The results come in as the pools' driver threads read them; `next` blocks until one is in.
/// A result taken already (by [`AsyncResult::get_timeout`]) gives
/// [`Error::InvalidState`](crate::Error::InvalidState).
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// # let pool = multiproc::Pool::with_processes(2)?;
/// fn nap(ms: u64) -> u64 { std::thread::sleep(Duration::from_millis(ms)); ms }
/// let results = [300u64, 1].map(|ms| pool.apply_async(nap, ms)).into_iter().collect::<Result<Vec<_>, _>>()?;
/// let order: Vec<(usize, u64)> = multiproc::as_completed(results)
///     .map(|(i, r)| r.map(|v| (i, v)))
///     .collect::<Result<_, _>>()?;
/// assert_eq!(order.len(), 2);
/// # Ok::<(), multiproc::Error>(())
/// ```
pub fn as_completed<R: Send + 'static>(
    results: impl IntoIterator<Item = AsyncResult<R>>,
) -> AsCompleted<R> {
    let (tx, finished) = channel();
    let results: Vec<Option<AsyncResult<R>>> = results.into_iter().map(Some).collect();
    for (i, r) in results.iter().flatten().enumerate() {
        let tx = tx.clone();
        r.state.on_ready(Box::new(move || {
            let _ = tx.send(i);
        }));
    }
    AsCompleted {
        left: results.len(),
        results,
        finished,
    }
}

impl<R: Send + 'static> Iterator for AsCompleted<R> {
    type Item = (usize, Result<R>);

    fn next(&mut self) -> Option<(usize, Result<R>)> {
        if self.left == 0 {
            return None;
        }
        // Every result completes (with its value, its error, or Disconnected when its pool is
        // terminated or dropped), and the sender of each notice lives in its result until then.
        let i = self.finished.recv().ok()?;
        let r = self.results.get_mut(i)?.take()?;
        self.left -= 1;
        Some((i, r.take()))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left, Some(self.left))
    }
}

//! [`as_completed`]: the results of several asynchronous calls in the order they finish
//! (Python's `concurrent.futures.as_completed`).

use std::fmt;

use std::sync::mpsc::{Receiver, channel};

use crate::error::Result;

use super::result::AsyncResult;

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

//! [`Semaphore`]: a process-shared counting semaphore on a futex word.

use std::fmt;
use std::sync::atomic::{AtomicU32, Ordering::SeqCst};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::TICK;
use crate::error::{Error, Result};
use crate::shm::SharedCell;
use crate::sys::futex;

#[repr(C)]
struct SemCtl {
    value: AtomicU32,
    max: u32,
}

/// A counting semaphore shared by processes: Python's `multiprocessing.BoundedSemaphore` (or
/// `Semaphore` when made with [`unbounded`](Semaphore::unbounded)).
///
/// [`acquire`](Semaphore::acquire) gives a guard that releases on drop. A bounded semaphore's
/// value never exceeds its initial value: an extra [`release`](Semaphore::release) is an error.
///
/// # Examples
///
/// ```
/// let sem = multiproc::Semaphore::new(2)?;
/// let a = sem.acquire()?;
/// let b = sem.acquire()?;
/// assert!(sem.try_acquire().is_none());
/// drop(a);
/// assert_eq!(sem.value(), 1);
/// drop(b);
/// assert!(sem.release().is_err()); // would exceed the bound
/// # Ok::<(), multiproc::Error>(())
/// ```
#[derive(Clone, Serialize, Deserialize)]
pub struct Semaphore {
    cell: SharedCell<SemCtl>,
}

impl fmt::Debug for Semaphore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Semaphore")
            .field("value", &self.value())
            .finish()
    }
}

/// One unit of a [`Semaphore`]; dropping it releases the unit.
pub struct SemaphoreGuard<'a> {
    sem: &'a Semaphore,
}

impl fmt::Debug for SemaphoreGuard<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SemaphoreGuard")
    }
}

impl SemaphoreGuard<'_> {
    /// Keeps the unit taken: someone calls [`Semaphore::release`](crate::Semaphore::release) later
    /// (maybe in another
    /// process).
    pub fn forget(self) {
        std::mem::forget(self);
    }
}

impl Drop for SemaphoreGuard<'_> {
    fn drop(&mut self) {
        let _ = self.sem.release();
    }
}

impl Semaphore {
    /// A bounded semaphore with `value` units: the value stays within `0..=value`.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] if the shared memory cannot be made;
    /// [`Error::InvalidArgument`] if `value`
    /// is `u32::MAX`.
    pub fn new(value: u32) -> Result<Self> {
        if value == u32::MAX {
            return Err(Error::invalid_arg("value", value, "at most u32::MAX - 1"));
        }
        Self::make(value, value)
    }

    /// A semaphore with `value` units and no upper bound (Python's plain `Semaphore`).
    ///
    /// # Errors
    ///
    /// [`Error::Io`] if the shared memory cannot be made.
    ///
    /// # Examples
    ///
    /// ```
    /// let s = multiproc::Semaphore::unbounded(0)?;
    /// s.release()?;
    /// s.release()?;
    /// assert_eq!(s.value(), 2);
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    pub fn unbounded(value: u32) -> Result<Self> {
        Self::make(value, u32::MAX)
    }

    fn make(value: u32, max: u32) -> Result<Self> {
        Ok(Semaphore {
            cell: SharedCell::new(|c: *mut SemCtl| {
                // SAFETY: `c` points into a fresh, unshared segment.
                unsafe {
                    c.write(SemCtl {
                        value: AtomicU32::new(value),
                        max,
                    })
                };
                Ok(())
            })?,
        })
    }

    fn ctl(&self) -> &SemCtl {
        self.cell.get()
    }

    /// The number of free units now.
    pub fn value(&self) -> u32 {
        self.ctl().value.load(SeqCst)
    }

    /// Takes a unit if one is free now.
    pub fn try_acquire(&self) -> Option<SemaphoreGuard<'_>> {
        let v = &self.ctl().value;
        v.fetch_update(SeqCst, SeqCst, |x| x.checked_sub(1))
            .ok()
            .map(|_| SemaphoreGuard { sem: self })
    }

    /// Takes a unit, blocking until one is free.
    ///
    /// # Errors
    ///
    /// None in practice; the signature matches [`acquire_timeout`](Semaphore::acquire_timeout).
    pub fn acquire(&self) -> Result<SemaphoreGuard<'_>> {
        self.acquire_deadline(None)
    }

    /// Takes a unit, waiting at most `timeout`.
    ///
    /// # Errors
    ///
    /// [`Error::Timeout`] when none came free in time.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let s = multiproc::Semaphore::new(1)?;
    /// let unit = s.acquire_timeout(Duration::from_secs(1))?;
    /// assert!(s.acquire_timeout(Duration::from_millis(5)).unwrap_err().is_timeout());
    /// drop(unit);
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    pub fn acquire_timeout(&self, timeout: Duration) -> Result<SemaphoreGuard<'_>> {
        self.acquire_deadline(Some(Instant::now() + timeout))
    }

    fn acquire_deadline(&self, deadline: Option<Instant>) -> Result<SemaphoreGuard<'_>> {
        let started = Instant::now();
        loop {
            if let Some(g) = self.try_acquire() {
                return Ok(g);
            }
            let nap = match deadline {
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(Error::Timeout {
                            operation: "Semaphore::acquire",
                            after: started.elapsed(),
                            task: None,
                        });
                    }
                    left.min(TICK)
                }
                None => TICK,
            };
            futex::wait(&self.ctl().value, 0, Some(nap));
        }
    }

    /// Gives a unit back (for a guard that was [`forget`](SemaphoreGuard::forget)-ed).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidState`] if that would exceed the bound (the
    /// value is left unchanged).
    ///
    /// # Examples
    ///
    /// ```
    /// let s = multiproc::Semaphore::new(1)?;
    /// s.acquire()?.forget(); // taken, to be released elsewhere
    /// assert_eq!(s.value(), 0);
    /// s.release()?;
    /// assert_eq!(s.value(), 1);
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    pub fn release(&self) -> Result<()> {
        let ctl = self.ctl();
        ctl.value
            .fetch_update(SeqCst, SeqCst, |x| (x < ctl.max).then_some(x + 1))
            .map_err(|_| {
                Error::InvalidState("Semaphore released more times than it was acquired".into())
            })?;
        futex::wake(&ctl.value, 1);
        Ok(())
    }
}

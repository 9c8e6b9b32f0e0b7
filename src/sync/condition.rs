//! [`Condition`]: a process-shared condition variable with its own robust lock.

use std::fmt;
use std::marker::PhantomData;
use std::ptr::addr_of_mut;
use std::sync::atomic::{AtomicU32, Ordering::SeqCst};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::{AcquireResult, TICK, acquire_robust};
use crate::error::{Error, Result};
use crate::shm::SharedCell;
use crate::sys::futex::{self, Locked, RobustMutex};

#[repr(C)]
struct CondCtl {
    mutex: RobustMutex,
    seq: AtomicU32,
}

/// A condition variable with its own lock, shared by processes: Python's
/// `multiprocessing.Condition`.
///
/// Acquire it, check the shared state, and [`wait`](Condition::wait) (which releases the lock
/// while sleeping) until another process changes the state and calls
/// [`notify_all`](Condition::notify_all). Wake-ups may be spurious: re-check in a loop, or use
/// [`wait_while`](Condition::wait_while).
///
/// # Examples
///
/// ```
/// use multiproc::{Condition, Process, SharedValue};
/// use std::time::Duration;
///
/// let cond = Condition::new()?;
/// let ready = SharedValue::new(0u32)?;
/// let (c, r) = (cond.clone(), ready.clone());
/// let p = Process::new(move || {
///     let _g = c.acquire().unwrap();
///     r.store(1).unwrap();
///     c.notify_all();
/// });
/// p.start()?;
/// let mut g = cond.acquire()?;
/// let ok = cond.wait_while(&mut g, Duration::from_secs(10), || ready.load().unwrap() == 0)?;
/// assert!(ok);
/// drop(g);
/// p.join()?;
/// # Ok::<(), multiproc::Error>(())
/// ```
#[derive(Clone, Serialize, Deserialize)]
pub struct Condition {
    cell: SharedCell<CondCtl>,
}

impl fmt::Debug for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Condition").finish_non_exhaustive()
    }
}

/// Holds a [`Condition`]'s lock; dropping it releases the lock.
pub struct ConditionGuard<'a> {
    mutex: &'a RobustMutex,
    _not_send: PhantomData<*mut ()>,
}

impl fmt::Debug for ConditionGuard<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ConditionGuard")
    }
}

impl Drop for ConditionGuard<'_> {
    fn drop(&mut self) {
        self.mutex.unlock();
    }
}

impl Condition {
    /// A new condition with its own (non-re-entrant, robust) lock.
    ///
    /// # Errors
    ///
    /// [`Error::Io`](crate::Error::Io) if the shared memory cannot be made.
    pub fn new() -> Result<Self> {
        Ok(Condition {
            cell: SharedCell::new(|c: *mut CondCtl| {
                // SAFETY: `c` points into a fresh, unshared segment.
                unsafe { RobustMutex::init(addr_of_mut!((*c).mutex)) }
            })?,
        })
    }

    fn ctl(&self) -> &CondCtl {
        self.cell.get()
    }

    fn guard(&self) -> ConditionGuard<'_> {
        ConditionGuard {
            mutex: &self.ctl().mutex,
            _not_send: PhantomData,
        }
    }

    /// Takes the condition's lock.
    ///
    /// # Errors
    ///
    /// As for [`Lock::acquire`](crate::Lock::acquire).
    pub fn acquire(&self) -> AcquireResult<ConditionGuard<'_>> {
        acquire_robust(&self.ctl().mutex, None, || self.guard())
    }

    /// Takes the condition's lock, waiting at most `timeout`.
    ///
    /// # Errors
    ///
    /// As for [`Lock::acquire_timeout`](crate::Lock::acquire_timeout).
    pub fn acquire_timeout(&self, timeout: Duration) -> AcquireResult<ConditionGuard<'_>> {
        let timeout = timeout.max(Duration::from_nanos(1));
        acquire_robust(&self.ctl().mutex, Some(timeout), || self.guard())
    }

    /// Releases the lock, sleeps until notified (or spuriously woken), and re-takes the lock.
    ///
    /// # Errors
    ///
    /// [`Error::OwnerDied`](crate::Error::OwnerDied) when re-taking the lock found its holder dead;
    /// the guard still holds
    /// the lock.
    pub fn wait(&self, guard: &mut ConditionGuard<'_>) -> Result<()> {
        self.wait_inner(guard, None)
    }

    /// Like [`wait`](Condition::wait), sleeping at most `timeout`.
    ///
    /// # Errors
    ///
    /// As for `wait`.
    pub fn wait_timeout(&self, guard: &mut ConditionGuard<'_>, timeout: Duration) -> Result<()> {
        self.wait_inner(guard, Some(timeout))
    }

    fn wait_inner(&self, guard: &mut ConditionGuard<'_>, timeout: Option<Duration>) -> Result<()> {
        let ctl = self.ctl();
        debug_assert!(
            std::ptr::eq(guard.mutex, &ctl.mutex),
            "guard of another condition"
        );
        let seen = ctl.seq.load(SeqCst);
        ctl.mutex.unlock();
        futex::wait(&ctl.seq, seen, timeout);
        match ctl.mutex.lock()? {
            Locked::Clean => Ok(()),
            Locked::OwnerDied => Err(Error::OwnerDied { what: "Condition" }),
        }
    }

    /// Waits while `condition()` holds (checked under the lock), at most `timeout` in all.
    /// `Ok(true)` once it no longer holds, `Ok(false)` on timeout.
    ///
    /// # Errors
    ///
    /// As for [`wait`](Condition::wait).
    pub fn wait_while(
        &self,
        guard: &mut ConditionGuard<'_>,
        timeout: Duration,
        mut condition: impl FnMut() -> bool,
    ) -> Result<bool> {
        let deadline = Instant::now() + timeout;
        while condition() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(false);
            }
            self.wait_timeout(guard, left.min(TICK))?;
        }
        Ok(true)
    }

    /// Wakes one waiter (if any). Call it holding the lock, as in Python.
    pub fn notify(&self) {
        self.ctl().seq.fetch_add(1, SeqCst);
        futex::wake(&self.ctl().seq, 1);
    }

    /// Wakes every waiter.
    pub fn notify_all(&self) {
        self.ctl().seq.fetch_add(1, SeqCst);
        futex::wake(&self.ctl().seq, i32::MAX);
    }
}

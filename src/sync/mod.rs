//! Process-shared synchronization: [`Lock`], [`RLock`], [`Condition`], [`Semaphore`], [`Event`],
//! [`Barrier`] — Python's `multiprocessing` primitives.
//!
//! Each lives in its own small shared-memory segment (a memory file, see [`crate::SharedArray`]).
//! Make it before forking and every child shares it (clones are the same primitive); or send it
//! through a [`Pipe`](crate::pipe()) to a process already running. Locks are glibc robust mutexes
//! (`PTHREAD_PROCESS_SHARED`, `PTHREAD_MUTEX_ROBUST`); the others are futex words.
//!
//! # When a holder dies
//!
//! A process killed while holding a [`Lock`] (or [`RLock`], [`Condition`], the lock of a
//! [`SharedArray`](crate::SharedArray)) does not block the others: the kernel hands the lock to
//! the next acquirer, which gets [`AcquireError::OwnerDied`]
//! *holding the guard*. The lock is
//! theirs and usable again; the error says that the data it protected may be half-updated.
//! - `lock.acquire()?` turns it into [`Error::OwnerDied`] and releases the
//!   lock (the guard is
//!   dropped), so a careless caller fails loudly instead of using torn data;
//! - `lock.acquire().or_else(AcquireError::recover)?` keeps the guard: repair the data, go on.
//!
//! Only the first acquirer after the death is told; later ones acquire normally.
//! [`Semaphore`] counts, [`Event`] flags and [`Barrier`] arrivals are not owned, so a dead
//! process's count stays taken (as in Python): use timeouts there.

mod barrier;
mod condition;
mod event;
mod lock;
mod semaphore;

use std::fmt;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::sys::futex::{Locked, RobustMutex};

pub use barrier::Barrier;
pub use condition::{Condition, ConditionGuard};
pub use event::Event;
pub use lock::{Lock, LockGuard, RLock, RLockGuard};
pub use semaphore::{Semaphore, SemaphoreGuard};

/// The longest a waiter sleeps before it re-checks its condition.
pub(crate) const TICK: Duration = Duration::from_millis(50);

/// Why a lock was not simply acquired. `G` is the guard type.
///
/// Converts into [`Error`] with `?` (for [`OwnerDied`](AcquireError::OwnerDied) that releases
/// the lock first).
pub enum AcquireError<G> {
    /// The previous holder died while holding the lock. The lock now belongs to the caller: here
    /// is the guard. The data it protects may be half-updated.
    OwnerDied(G),
    /// The timeout ran out (the wait took this long).
    Timeout(Duration),
    /// [`try_acquire`](Lock::try_acquire): another thread or process holds the lock.
    WouldBlock,
    /// The operating system failed.
    Failed(Error),
}

/// The result of acquiring a lock: its guard, or why not.
pub type AcquireResult<G> = std::result::Result<G, AcquireError<G>>;

impl<G> AcquireError<G> {
    /// Takes the guard out of [`OwnerDied`](AcquireError::OwnerDied) (the caller repairs the
    /// data); every other case becomes an [`Error`].
    ///
    /// # Errors
    ///
    /// [`Error::Timeout`] for `Timeout` and `WouldBlock`; the OS error for
    /// `Failed`.
    ///
    /// # Examples
    ///
    /// ```
    /// use multiproc::{AcquireError, Lock};
    ///
    /// let lock = Lock::new()?;
    /// let guard = lock.acquire().or_else(AcquireError::recover)?;
    /// drop(guard);
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    pub fn recover(self) -> Result<G> {
        match self {
            AcquireError::OwnerDied(g) => Ok(g),
            e => Err(e.into()),
        }
    }

    /// The same error around another guard type.
    pub(crate) fn map<H>(self, f: impl FnOnce(G) -> H) -> AcquireError<H> {
        match self {
            AcquireError::OwnerDied(g) => AcquireError::OwnerDied(f(g)),
            AcquireError::Timeout(d) => AcquireError::Timeout(d),
            AcquireError::WouldBlock => AcquireError::WouldBlock,
            AcquireError::Failed(e) => AcquireError::Failed(e),
        }
    }

    /// Whether the previous holder died (the caller holds the lock).
    ///
    /// # Examples
    ///
    /// ```
    /// let lock = multiproc::Lock::new()?;
    /// let _held = lock.acquire()?;
    /// let e = lock.try_acquire().unwrap_err();
    /// assert!(e.is_timeout() && !e.is_owner_died());
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    pub fn is_owner_died(&self) -> bool {
        matches!(self, AcquireError::OwnerDied(_))
    }

    /// Whether the lock could not be had in time ([`Timeout`](AcquireError::Timeout) or
    /// [`WouldBlock`](AcquireError::WouldBlock)).
    pub fn is_timeout(&self) -> bool {
        matches!(self, AcquireError::Timeout(_) | AcquireError::WouldBlock)
    }
}

impl<G> fmt::Debug for AcquireError<G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AcquireError::OwnerDied(_) => f.write_str("OwnerDied(..)"),
            AcquireError::Timeout(d) => f.debug_tuple("Timeout").field(d).finish(),
            AcquireError::WouldBlock => f.write_str("WouldBlock"),
            AcquireError::Failed(e) => f.debug_tuple("Failed").field(e).finish(),
        }
    }
}

impl<G> fmt::Display for AcquireError<G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AcquireError::OwnerDied(_) => f.write_str(
                "the lock's previous holder died while holding it; the data it protects may be \
                 half-updated (the lock is now held by the caller)",
            ),
            AcquireError::Timeout(d) => write!(f, "acquiring the lock timed out after {d:?}"),
            AcquireError::WouldBlock => f.write_str("the lock is held elsewhere"),
            AcquireError::Failed(e) => write!(f, "acquiring the lock failed: {e}"),
        }
    }
}

impl<G> std::error::Error for AcquireError<G> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            AcquireError::Failed(e) => Some(e),
            _ => None,
        }
    }
}

impl<G> From<AcquireError<G>> for Error {
    fn from(e: AcquireError<G>) -> Error {
        match e {
            AcquireError::OwnerDied(guard) => {
                drop(guard);
                Error::OwnerDied { what: "lock" }
            }
            AcquireError::Timeout(after) => Error::Timeout {
                operation: "acquiring a lock",
                after,
                task: None,
            },
            AcquireError::WouldBlock => Error::Timeout {
                operation: "try_acquire",
                after: Duration::ZERO,
                task: None,
            },
            AcquireError::Failed(e) => e,
        }
    }
}

/// Locks `m` (blocking, with a timeout, or only trying when `timeout` is `Some(ZERO)`) and wraps
/// the result in the guard made by `guard`.
pub(crate) fn acquire_robust<G>(
    m: &RobustMutex,
    timeout: Option<Duration>,
    guard: impl FnOnce() -> G,
) -> AcquireResult<G> {
    let started = Instant::now();
    let r = match timeout {
        None => m.lock().map(Some),
        Some(Duration::ZERO) => m.try_lock(),
        Some(d) => m.lock_timeout(d),
    };
    match r {
        Ok(Some(Locked::Clean)) => Ok(guard()),
        Ok(Some(Locked::OwnerDied)) => Err(AcquireError::OwnerDied(guard())),
        Ok(None) if timeout == Some(Duration::ZERO) => Err(AcquireError::WouldBlock),
        Ok(None) => Err(AcquireError::Timeout(started.elapsed())),
        Err(e) => Err(AcquireError::Failed(e)),
    }
}

//! [`Lock`] and [`RLock`]: process-shared robust mutexes with guards.

use std::fmt;
use std::marker::PhantomData;
use std::ptr::addr_of_mut;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{AcquireResult, acquire_robust};
use crate::error::Result;
use crate::shm::SharedCell;
use crate::sys::futex::RobustMutex;

#[repr(C)]
struct LockCtl {
    mutex: RobustMutex,
}

fn init_lock(c: *mut LockCtl, recursive: bool) -> Result<()> {
    // SAFETY: `c` points into a fresh, unshared segment.
    unsafe { RobustMutex::init_with(addr_of_mut!((*c).mutex), recursive) }
}

macro_rules! lock_type {
    ($(#[$m:meta])* $name:ident, $guard:ident, $recursive:expr, $what:literal) => {
        $(#[$m])*
        #[derive(Clone, Serialize, Deserialize)]
        pub struct $name {
            cell: SharedCell<LockCtl>,
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_struct(stringify!($name)).finish_non_exhaustive()
            }
        }

        impl $name {
            #[doc = concat!("A new, unlocked ", $what, ".")]
            ///
            /// # Errors
            ///
            /// [`Error::Io`](crate::Error::Io) if the shared memory cannot be made.
            pub fn new() -> Result<Self> {
                Ok($name {
                    cell: SharedCell::new(|c| init_lock(c, $recursive))?,
                })
            }

            fn mutex(&self) -> &RobustMutex {
                &self.cell.get().mutex
            }

            fn guard(&self) -> $guard<'_> {
                $guard {
                    mutex: self.mutex(),
                    _not_send: PhantomData,
                }
            }

            /// Takes the lock, blocking until it is free; the guard releases it.
            ///
            /// # Errors
            ///
            /// [`AcquireError::OwnerDied`](crate::AcquireError::OwnerDied) (with the guard: the
            /// lock is yours) when the previous
            /// holder died holding it; see the [module docs](crate::Lock#when-a-holder-dies).
            pub fn acquire(&self) -> AcquireResult<$guard<'_>> {
                acquire_robust(self.mutex(), None, || self.guard())
            }

            /// Takes the lock, waiting at most `timeout`.
            ///
            /// # Errors
            ///
            /// [`AcquireError::Timeout`](crate::AcquireError::Timeout) when the time runs out;
            /// otherwise as for `acquire`.
            pub fn acquire_timeout(&self, timeout: Duration) -> AcquireResult<$guard<'_>> {
                let timeout = timeout.max(Duration::from_nanos(1));
                acquire_robust(self.mutex(), Some(timeout), || self.guard())
            }

            /// Takes the lock only if it is free now.
            ///
            /// # Errors
            ///
            /// [`AcquireError::WouldBlock`](crate::AcquireError::WouldBlock) when it is held;
            /// otherwise as for `acquire`.
            pub fn try_acquire(&self) -> AcquireResult<$guard<'_>> {
                acquire_robust(self.mutex(), Some(Duration::ZERO), || self.guard())
            }
        }

        #[doc = concat!("Holds a [`", stringify!($name), "`]; dropping it releases the lock.")]
        ///
        /// Not `Send`: the thread that acquired must release.
        pub struct $guard<'a> {
            mutex: &'a RobustMutex,
            _not_send: PhantomData<*mut ()>,
        }

        impl fmt::Debug for $guard<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(stringify!($guard))
            }
        }

        impl Drop for $guard<'_> {
            fn drop(&mut self) {
                self.mutex.unlock();
            }
        }
    };
}

lock_type!(
    /// A lock shared by processes: Python's `multiprocessing.Lock`.
    ///
    /// Not re-entrant: a thread that acquires it twice deadlocks (glibc may also report
    /// `EDEADLK` as [`AcquireError::Failed`](crate::AcquireError::Failed)); see [`RLock`].
    ///
    /// # When a holder dies
    ///
    /// A process killed while holding the lock does not block the others: the kernel hands the
    /// lock to the next acquirer (robust mutex, `EOWNERDEAD`), which gets
    /// [`AcquireError::OwnerDied`](crate::AcquireError::OwnerDied) *holding the guard*. The lock
    /// is theirs and usable again; the error says the data it protected may be half-updated.
    /// - `lock.acquire()?` turns it into [`Error::OwnerDied`](crate::Error::OwnerDied) and
    ///   releases the lock, so a careless caller fails loudly instead of using torn data;
    /// - `lock.acquire().or_else(AcquireError::recover)?` keeps the guard: repair, go on.
    ///
    /// Only the first acquirer after the death is told; later ones acquire normally. The same
    /// holds for [`RLock`], [`Condition`](crate::Condition) and the lock of a
    /// [`SharedArray`](crate::SharedArray). [`Semaphore`](crate::Semaphore) units,
    /// [`Event`](crate::Event) flags and [`Barrier`](crate::Barrier) arrivals have no owner: a
    /// dead process's unit stays taken (as in Python), so use their timeouts.
    ///
    /// # Examples
    ///
    /// ```
    /// use multiproc::{Lock, Process, SharedValue};
    ///
    /// let lock = Lock::new()?;
    /// let total = SharedValue::new(0u64)?;
    /// let (l, t) = (lock.clone(), total.clone());
    /// let p = Process::new(move || {
    ///     for _ in 0..500 {
    ///         let _g = l.acquire().unwrap();
    ///         t.store(t.load().unwrap() + 1).unwrap();
    ///     }
    /// });
    /// p.start()?;
    /// for _ in 0..500 {
    ///     let _g = lock.acquire()?;
    ///     total.store(total.load()? + 1)?;
    /// }
    /// p.join()?;
    /// assert_eq!(total.load()?, 1000);
    /// assert!(lock.try_acquire().is_ok());
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    Lock,
    LockGuard,
    false,
    "lock"
);

lock_type!(
    /// A re-entrant lock shared by processes: Python's `multiprocessing.RLock`. The thread that
    /// holds it may acquire it again; it is free once every guard is dropped.
    ///
    /// A holder that dies is reported as for [`Lock`].
    ///
    /// # Examples
    ///
    /// ```
    /// let lock = multiproc::RLock::new()?;
    /// let outer = lock.acquire()?;
    /// let inner = lock.acquire()?;
    /// drop(inner);
    /// drop(outer);
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    RLock,
    RLockGuard,
    true,
    "re-entrant lock"
);

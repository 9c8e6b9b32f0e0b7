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
//! the next acquirer, which gets [`AcquireError::OwnerDied`] *holding the guard*. The lock is
//! theirs and usable again; the error says that the data it protected may be half-updated.
//! - `lock.acquire()?` turns it into [`Error::OwnerDied`] and releases the lock (the guard is
//!   dropped), so a careless caller fails loudly instead of using torn data;
//! - `lock.acquire().or_else(AcquireError::recover)?` keeps the guard: repair the data, go on.
//!
//! Only the first acquirer after the death is told; later ones acquire normally.
//! [`Semaphore`] counts, [`Event`] flags and [`Barrier`] arrivals are not owned, so a dead
//! process's count stays taken (as in Python): use timeouts there.

use std::fmt;
use std::marker::PhantomData;
use std::ptr::addr_of_mut;
use std::sync::atomic::{AtomicU32, Ordering::SeqCst};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::shm::SharedCell;
use crate::sys::futex::{self, Locked, RobustMutex};

/// The longest a waiter sleeps before it re-checks its condition.
const TICK: Duration = Duration::from_millis(50);

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
    /// [`Error::Timeout`] for `Timeout` and `WouldBlock`; the OS error for `Failed`.
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
            },
            AcquireError::WouldBlock => Error::Timeout {
                operation: "try_acquire",
                after: Duration::ZERO,
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
            /// [`Error::Io`] if the shared memory cannot be made.
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
            /// [`AcquireError::OwnerDied`] (with the guard: the lock is yours) when the previous
            /// holder died holding it; see the [module docs](crate::Lock#when-a-holder-dies).
            pub fn acquire(&self) -> AcquireResult<$guard<'_>> {
                acquire_robust(self.mutex(), None, || self.guard())
            }

            /// Takes the lock, waiting at most `timeout`.
            ///
            /// # Errors
            ///
            /// [`AcquireError::Timeout`] when the time runs out; otherwise as for `acquire`.
            pub fn acquire_timeout(&self, timeout: Duration) -> AcquireResult<$guard<'_>> {
                let timeout = timeout.max(Duration::from_nanos(1));
                acquire_robust(self.mutex(), Some(timeout), || self.guard())
            }

            /// Takes the lock only if it is free now.
            ///
            /// # Errors
            ///
            /// [`AcquireError::WouldBlock`] when it is held; otherwise as for `acquire`.
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
    /// `EDEADLK` as [`AcquireError::Failed`]); see [`RLock`].
    ///
    /// # When a holder dies
    ///
    /// The next acquirer gets [`AcquireError::OwnerDied`] holding the guard; `?` turns it into
    /// [`Error::OwnerDied`] and releases the lock. See the [`sync` docs](crate::Lock).
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
    /// [`Error::Io`] if the shared memory cannot be made.
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
    /// As for [`Lock::acquire`].
    pub fn acquire(&self) -> AcquireResult<ConditionGuard<'_>> {
        acquire_robust(&self.ctl().mutex, None, || self.guard())
    }

    /// Takes the condition's lock, waiting at most `timeout`.
    ///
    /// # Errors
    ///
    /// As for [`Lock::acquire_timeout`].
    pub fn acquire_timeout(&self, timeout: Duration) -> AcquireResult<ConditionGuard<'_>> {
        let timeout = timeout.max(Duration::from_nanos(1));
        acquire_robust(&self.ctl().mutex, Some(timeout), || self.guard())
    }

    /// Releases the lock, sleeps until notified (or spuriously woken), and re-takes the lock.
    ///
    /// # Errors
    ///
    /// [`Error::OwnerDied`] when re-taking the lock found its holder dead; the guard still holds
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
    /// Keeps the unit taken: someone calls [`Semaphore::release`] later (maybe in another
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
    /// [`Error::Io`] if the shared memory cannot be made; [`Error::InvalidArgument`] if `value`
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
    /// [`Error::InvalidState`] if that would exceed the bound (the value is left unchanged).
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

#[repr(C)]
struct EventCtl {
    flag: AtomicU32,
}

/// A flag processes can wait for: Python's `multiprocessing.Event`.
///
/// # Examples
///
/// ```
/// use multiproc::{Event, Process};
/// use std::time::Duration;
///
/// let go = Event::new()?;
/// let g = go.clone();
/// let p = Process::new(move || assert!(g.wait_timeout(Duration::from_secs(10))));
/// p.start()?;
/// go.set();
/// p.join()?;
/// assert_eq!(p.exitcode(), Some(0));
/// assert!(go.is_set());
/// # Ok::<(), multiproc::Error>(())
/// ```
#[derive(Clone, Serialize, Deserialize)]
pub struct Event {
    cell: SharedCell<EventCtl>,
}

impl fmt::Debug for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Event")
            .field("set", &self.is_set())
            .finish()
    }
}

impl Event {
    /// A new, clear event.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] if the shared memory cannot be made.
    pub fn new() -> Result<Self> {
        Ok(Event {
            cell: SharedCell::new(|_| Ok(()))?,
        })
    }

    fn flag(&self) -> &AtomicU32 {
        &self.cell.get().flag
    }

    /// Sets the flag and wakes every waiter.
    pub fn set(&self) {
        self.flag().store(1, SeqCst);
        futex::wake(self.flag(), i32::MAX);
    }

    /// Clears the flag.
    pub fn clear(&self) {
        self.flag().store(0, SeqCst);
    }

    /// Whether the flag is set.
    pub fn is_set(&self) -> bool {
        self.flag().load(SeqCst) != 0
    }

    /// Waits until the flag is set.
    pub fn wait(&self) {
        while !self.is_set() {
            futex::wait(self.flag(), 0, Some(TICK));
        }
    }

    /// Waits at most `timeout` for the flag; returns whether it is set (Python's `wait(timeout)`).
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while !self.is_set() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            futex::wait(self.flag(), 0, Some(left.min(TICK)));
        }
        true
    }
}

#[repr(C)]
struct BarrierCtl {
    mutex: RobustMutex,
    parties: u32,
    /// Arrived in the current round (under `mutex`).
    count: AtomicU32,
    /// The round number; bumped when a round completes or is reset.
    generation: AtomicU32,
    /// 1 while the current round is broken.
    broken: AtomicU32,
    /// `g + 1` when round `g` ended by a reset (its waiters fail), else 0.
    reset_round: AtomicU32,
    /// Bumped on every change waiters must see; the futex word.
    seq: AtomicU32,
}

/// A reusable barrier for a fixed number of processes: Python's `multiprocessing.Barrier`.
///
/// Every party calls [`wait`](Barrier::wait); all are released once the last arrives, and the
/// barrier is ready for the next round. A party that times out (or calls
/// [`abort`](Barrier::abort)) breaks it: the waiting parties, and later arrivals, get
/// [`Error::BrokenBarrier`] until [`reset`](Barrier::reset).
///
/// # Examples
///
/// ```
/// use multiproc::{Barrier, Process};
/// use std::time::Duration;
///
/// let barrier = Barrier::new(2)?;
/// let b = barrier.clone();
/// let p = Process::new(move || {
///     for _ in 0..3 {
///         b.wait_timeout(Duration::from_secs(10)).unwrap();
///     }
/// });
/// p.start()?;
/// for _ in 0..3 {
///     barrier.wait_timeout(Duration::from_secs(10))?;
/// }
/// p.join()?;
/// assert_eq!(p.exitcode(), Some(0));
/// # Ok::<(), multiproc::Error>(())
/// ```
#[derive(Clone, Serialize, Deserialize)]
pub struct Barrier {
    cell: SharedCell<BarrierCtl>,
}

impl fmt::Debug for Barrier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Barrier")
            .field("parties", &self.parties())
            .field("broken", &self.is_broken())
            .finish()
    }
}

/// Holds a barrier's internal mutex; a holder that died only left counters, which stay
/// consistent, so `OwnerDied` is ignored.
struct BarrierLock<'a>(&'a RobustMutex);

impl Drop for BarrierLock<'_> {
    fn drop(&mut self) {
        self.0.unlock();
    }
}

impl Barrier {
    /// A barrier for `parties` processes (or threads).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] if `parties` is 0; [`Error::Io`] if the shared memory cannot
    /// be made.
    pub fn new(parties: u32) -> Result<Self> {
        if parties == 0 {
            return Err(Error::invalid_arg("parties", 0, "a barrier needs a party"));
        }
        Ok(Barrier {
            cell: SharedCell::new(|c: *mut BarrierCtl| {
                // SAFETY: `c` points into a fresh, zeroed, unshared segment (zero is a valid
                // value of every atomic).
                unsafe {
                    addr_of_mut!((*c).parties).write(parties);
                    RobustMutex::init(addr_of_mut!((*c).mutex))
                }
            })?,
        })
    }

    fn ctl(&self) -> &BarrierCtl {
        self.cell.get()
    }

    fn lock(&self) -> Result<BarrierLock<'_>> {
        self.ctl().mutex.lock()?;
        Ok(BarrierLock(&self.ctl().mutex))
    }

    fn bump(&self) {
        self.ctl().seq.fetch_add(1, SeqCst);
        futex::wake(&self.ctl().seq, i32::MAX);
    }

    /// The number of parties.
    pub fn parties(&self) -> u32 {
        self.ctl().parties
    }

    /// The number of parties waiting in the current round.
    pub fn n_waiting(&self) -> u32 {
        self.ctl().count.load(SeqCst)
    }

    /// Whether the barrier is broken.
    pub fn is_broken(&self) -> bool {
        self.ctl().broken.load(SeqCst) != 0
    }

    /// Waits for every party. Returns the arrival index, `0..parties` (the last to arrive gets
    /// `parties - 1`), as Python does.
    ///
    /// # Errors
    ///
    /// [`Error::BrokenBarrier`] if the barrier is or gets broken.
    pub fn wait(&self) -> Result<u32> {
        self.wait_deadline(None)
    }

    /// Like [`wait`](Barrier::wait), for at most `timeout`; on timeout the barrier breaks.
    ///
    /// # Errors
    ///
    /// [`Error::Timeout`] for the party that timed out, [`Error::BrokenBarrier`] for the others.
    pub fn wait_timeout(&self, timeout: Duration) -> Result<u32> {
        self.wait_deadline(Some(Instant::now() + timeout))
    }

    fn wait_deadline(&self, deadline: Option<Instant>) -> Result<u32> {
        let started = Instant::now();
        let ctl = self.ctl();
        let (round, index) = {
            let _g = self.lock()?;
            if self.is_broken() {
                return Err(Error::BrokenBarrier);
            }
            let round = ctl.generation.load(SeqCst);
            let index = ctl.count.load(SeqCst);
            if index + 1 == ctl.parties {
                ctl.count.store(0, SeqCst);
                ctl.generation.store(round.wrapping_add(1), SeqCst);
                self.bump();
                return Ok(index);
            }
            ctl.count.store(index + 1, SeqCst);
            (round, index)
        };
        loop {
            let seen = ctl.seq.load(SeqCst);
            if ctl.generation.load(SeqCst) != round {
                if ctl.reset_round.load(SeqCst) == round.wrapping_add(1) {
                    return Err(Error::BrokenBarrier);
                }
                return Ok(index);
            }
            if self.is_broken() {
                return Err(Error::BrokenBarrier);
            }
            let mut nap = TICK;
            if let Some(d) = deadline {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    let _g = self.lock()?;
                    if ctl.generation.load(SeqCst) != round {
                        continue; // released just now
                    }
                    ctl.broken.store(1, SeqCst);
                    self.bump();
                    return Err(Error::Timeout {
                        operation: "Barrier::wait",
                        after: started.elapsed(),
                    });
                }
                nap = nap.min(left);
            }
            futex::wait(&ctl.seq, seen, Some(nap));
        }
    }

    /// Breaks the barrier: current and future waiters get [`Error::BrokenBarrier`] until
    /// [`reset`](Barrier::reset).
    ///
    /// # Errors
    ///
    /// [`Error::Io`] if the internal lock fails.
    pub fn abort(&self) -> Result<()> {
        let _g = self.lock()?;
        self.ctl().broken.store(1, SeqCst);
        self.bump();
        Ok(())
    }

    /// Returns the barrier to its initial state; parties waiting now get
    /// [`Error::BrokenBarrier`].
    ///
    /// # Errors
    ///
    /// [`Error::Io`] if the internal lock fails.
    pub fn reset(&self) -> Result<()> {
        let ctl = self.ctl();
        let _g = self.lock()?;
        let round = ctl.generation.load(SeqCst);
        if ctl.count.load(SeqCst) > 0 {
            ctl.reset_round.store(round.wrapping_add(1), SeqCst);
            ctl.generation.store(round.wrapping_add(1), SeqCst);
        }
        ctl.count.store(0, SeqCst);
        ctl.broken.store(0, SeqCst);
        self.bump();
        Ok(())
    }
}

//! Futex waits and wakes on shared memory, and a process-shared robust mutex.
//!
//! Both work across processes: the futex calls use the shared (non-`PRIVATE`) operations, and the
//! mutex is a glibc `pthread_mutex_t` made `PTHREAD_PROCESS_SHARED` and `PTHREAD_MUTEX_ROBUST`, so
//! that the kernel hands it to a waiter with `EOWNERDEAD` when its owner dies while holding it.

use std::cell::UnsafeCell;
use std::io;
use std::ptr;
use std::sync::atomic::AtomicU32;
use std::time::Duration;

use crate::error::{Error, Result};

/// Blocks while `*word == expected`, for at most `timeout` (`None`: no limit). Returns on a wake,
/// a changed value, a timeout or a signal; the caller re-checks its condition in every case.
pub(crate) fn wait(word: &AtomicU32, expected: u32, timeout: Option<Duration>) {
    let ts = timeout.map(|d| libc::timespec {
        tv_sec: d.as_secs().min(i64::MAX as u64) as libc::time_t,
        tv_nsec: d.subsec_nanos() as libc::c_long,
    });
    let ts_ptr = ts
        .as_ref()
        .map_or(ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: `word` is a valid, aligned u32 for the duration of the call; FUTEX_WAIT only reads
    // it and `ts_ptr` is null or points to a live timespec. Errors (EAGAIN, ETIMEDOUT, EINTR) all
    // mean "re-check", so the return value is deliberately ignored.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            expected,
            ts_ptr,
            ptr::null::<u32>(),
            0,
        );
    }
}

/// Wakes up to `n` processes blocked in [`wait`] on `word`.
pub(crate) fn wake(word: &AtomicU32, n: i32) {
    // SAFETY: `word` is a valid, aligned u32; FUTEX_WAKE does not access it beyond hashing its
    // address.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE,
            n,
            ptr::null::<libc::timespec>(),
            ptr::null::<u32>(),
            0,
        );
    }
}

// glibc ≥ 2.30 exports this, but the `libc` crate does not declare it: like
// `pthread_mutex_timedlock`, but the deadline is on the given clock (we use CLOCK_MONOTONIC,
// immune to wall-clock jumps). `pthread_mutexattr_setrobust`, `pthread_mutex_consistent` and
// `PTHREAD_MUTEX_ROBUST` come from `libc`.
unsafe extern "C" {
    fn pthread_mutex_clocklock(
        mutex: *mut libc::pthread_mutex_t,
        clock: libc::clockid_t,
        abstime: *const libc::timespec,
    ) -> libc::c_int;
}

/// How long one timed wait for a [`RobustMutex`] lasts before it tries again.
pub(crate) const LOCK_TICK: Duration = Duration::from_millis(50);

/// What [`RobustMutex::lock`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Locked {
    /// Taken normally.
    Clean,
    /// Taken from an owner that died while holding it; the protected state may be half-updated.
    /// The mutex has already been marked consistent again.
    OwnerDied,
}

/// A process-shared robust mutex, meant to live inside a shared mapping.
///
/// It has no guard type: the owner of the shared structure pairs `lock` and `unlock` itself,
/// because the structure, not the mutex, knows how to repair state after [`Locked::OwnerDied`].
#[repr(C)]
pub(crate) struct RobustMutex {
    inner: UnsafeCell<libc::pthread_mutex_t>,
}

// SAFETY: the pthread mutex is designed to be used from many threads and processes at once; all
// access goes through the pthread functions.
unsafe impl Sync for RobustMutex {}
// SAFETY: as above; the mutex holds no thread-affine state.
unsafe impl Send for RobustMutex {}

impl RobustMutex {
    /// Initializes a mutex in place, in memory that other processes will map.
    ///
    /// # Safety
    ///
    /// `this` must point to writable memory of the right size and alignment that no other thread
    /// or process uses yet.
    pub(crate) unsafe fn init(this: *mut RobustMutex) -> Result<()> {
        // SAFETY: forwarded contract.
        unsafe { Self::init_with(this, false) }
    }

    /// Like [`init`](Self::init); with `recursive`, the thread that holds the mutex may lock it
    /// again (it must then unlock it as many times).
    ///
    /// # Safety
    ///
    /// As for [`init`](Self::init).
    pub(crate) unsafe fn init_with(this: *mut RobustMutex, recursive: bool) -> Result<()> {
        let mut attr = std::mem::MaybeUninit::<libc::pthread_mutexattr_t>::uninit();
        // SAFETY: `attr` is initialized by pthread_mutexattr_init before any other use and
        // destroyed at the end; `this` is valid and unshared per the function's contract.
        unsafe {
            check(
                libc::pthread_mutexattr_init(attr.as_mut_ptr()),
                "pthread_mutexattr_init",
            )?;
            let attr_ptr = attr.as_mut_ptr();
            let r = check(
                libc::pthread_mutexattr_setpshared(attr_ptr, libc::PTHREAD_PROCESS_SHARED),
                "pthread_mutexattr_setpshared",
            )
            .and_then(|()| {
                check(
                    libc::pthread_mutexattr_setrobust(attr_ptr, libc::PTHREAD_MUTEX_ROBUST),
                    "pthread_mutexattr_setrobust",
                )
            })
            .and_then(|()| {
                if recursive {
                    check(
                        libc::pthread_mutexattr_settype(attr_ptr, libc::PTHREAD_MUTEX_RECURSIVE),
                        "pthread_mutexattr_settype",
                    )
                } else {
                    Ok(())
                }
            })
            .and_then(|()| {
                check(
                    libc::pthread_mutex_init((*this).inner.get(), attr_ptr),
                    "pthread_mutex_init",
                )
            });
            libc::pthread_mutexattr_destroy(attr_ptr);
            r
        }
    }

    /// Takes the mutex, blocking; reports whether the previous owner died holding it.
    ///
    /// The wait is made of timed waits of [`LOCK_TICK`]: should a wake-up ever be lost (an owner
    /// killed at the instant it released the mutex), the next try still takes a free mutex, or
    /// one whose owner the kernel marked dead, instead of sleeping forever.
    pub(crate) fn lock(&self) -> Result<Locked> {
        loop {
            if let Some(locked) = self.lock_until(None)? {
                return Ok(locked);
            }
        }
    }

    /// Takes the mutex if it is free; `Ok(None)` if another thread or process holds it.
    pub(crate) fn try_lock(&self) -> Result<Option<Locked>> {
        self.lock_until(Some(std::time::Instant::now()))
    }

    /// Takes the mutex, waiting at most `timeout`; `Ok(None)` when the time ran out.
    pub(crate) fn lock_timeout(&self, timeout: Duration) -> Result<Option<Locked>> {
        match std::time::Instant::now().checked_add(timeout) {
            Some(deadline) => self.lock_until(Some(deadline)),
            None => self.lock().map(Some),
        }
    }

    /// As [`lock`](RobustMutex::lock), but gives up at `deadline`: `Ok(None)` then. Waits in
    /// [`LOCK_TICK`] slices, like `lock`, so a lost wake-up costs at most one slice.
    pub(crate) fn lock_until(
        &self,
        deadline: Option<std::time::Instant>,
    ) -> Result<Option<Locked>> {
        loop {
            let mut slice = LOCK_TICK;
            if let Some(d) = deadline {
                let left = d.saturating_duration_since(std::time::Instant::now());
                if left.is_zero() {
                    // One last try without waiting.
                    // SAFETY: the mutex was initialized by `init` and lives as long as `self`.
                    let rc = unsafe { libc::pthread_mutex_trylock(self.inner.get()) };
                    if rc == libc::EBUSY {
                        return Ok(None);
                    }
                    return self.after_lock(rc, "pthread_mutex_trylock").map(Some);
                }
                slice = slice.min(left);
            }
            let mut now = libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            // SAFETY: clock_gettime writes one timespec into `now`, which we own.
            unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
            let nanos = now.tv_nsec + slice.as_nanos() as libc::c_long;
            let until = libc::timespec {
                tv_sec: now.tv_sec + (nanos / 1_000_000_000) as libc::time_t,
                tv_nsec: (nanos % 1_000_000_000) as libc::c_long,
            };
            // SAFETY: the mutex was initialized by `init` and lives as long as `self`; `until`
            // is a valid timespec on CLOCK_MONOTONIC (immune to wall-clock jumps).
            let rc =
                unsafe { pthread_mutex_clocklock(self.inner.get(), libc::CLOCK_MONOTONIC, &until) };
            if rc == libc::EINTR {
                continue;
            }
            if rc != libc::ETIMEDOUT {
                return self.after_lock(rc, "pthread_mutex_clocklock").map(Some);
            }
        }
    }

    fn after_lock(&self, rc: libc::c_int, what: &'static str) -> Result<Locked> {
        match rc {
            0 => Ok(Locked::Clean),
            libc::EOWNERDEAD => {
                // SAFETY: we own the mutex now (EOWNERDEAD hands it over); marking it consistent
                // is allowed exactly in this state.
                let rc = unsafe { libc::pthread_mutex_consistent(self.inner.get()) };
                check(rc, "pthread_mutex_consistent")?;
                Ok(Locked::OwnerDied)
            }
            rc => Err(Error::io(what, io::Error::from_raw_os_error(rc))),
        }
    }

    /// Releases the mutex. Must be called by the thread that locked it.
    pub(crate) fn unlock(&self) {
        // SAFETY: the caller holds the mutex (paired with a successful lock on this thread).
        let rc = unsafe { libc::pthread_mutex_unlock(self.inner.get()) };
        debug_assert_eq!(rc, 0, "pthread_mutex_unlock failed");
    }
}

fn check(rc: libc::c_int, what: &'static str) -> Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(Error::io(what, io::Error::from_raw_os_error(rc)))
    }
}

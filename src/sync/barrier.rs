//! [`Barrier`]: a reusable, breakable process-shared barrier.

use std::fmt;
use std::ptr::addr_of_mut;
use std::sync::atomic::{AtomicU32, Ordering::SeqCst};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::TICK;
use crate::error::{Error, Result};
use crate::shm::SharedCell;
use crate::sys::futex::{self, RobustMutex};

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
/// A party that dies before arriving leaves the others waiting: use
/// [`wait_timeout`](Barrier::wait_timeout) when parties may crash.
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
    /// [`Error::InvalidArgument`] if `parties` is 0;
    /// [`Error::Io`] if the shared memory cannot
    /// be made.
    ///
    /// # Examples
    ///
    /// ```
    /// let b = multiproc::Barrier::new(1)?;
    /// assert_eq!(b.parties(), 1);
    /// assert_eq!(b.wait()?, 0); // one party: passes at once
    /// # Ok::<(), multiproc::Error>(())
    /// ```
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
    ///
    /// # Examples
    ///
    /// ```
    /// let b = multiproc::Barrier::new(3)?;
    /// assert_eq!(b.n_waiting(), 0);
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    pub fn n_waiting(&self) -> u32 {
        self.ctl().count.load(SeqCst)
    }

    /// Whether the barrier is broken.
    ///
    /// # Examples
    ///
    /// ```
    /// let b = multiproc::Barrier::new(2)?;
    /// b.abort()?;
    /// assert!(b.is_broken());
    /// # Ok::<(), multiproc::Error>(())
    /// ```
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
    /// [`Error::Timeout`] for the party that timed out,
    /// [`Error::BrokenBarrier`] for the others.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let b = multiproc::Barrier::new(2)?;
    /// // Nobody else comes: the wait times out and breaks the barrier.
    /// assert!(b.wait_timeout(Duration::from_millis(10)).unwrap_err().is_timeout());
    /// assert!(b.is_broken());
    /// # Ok::<(), multiproc::Error>(())
    /// ```
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
                        task: None,
                    });
                }
                nap = nap.min(left);
            }
            futex::wait(&ctl.seq, seen, Some(nap));
        }
    }

    /// Breaks the barrier: current and future waiters get
    /// [`Error::BrokenBarrier`] until
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
    ///
    /// # Examples
    ///
    /// ```
    /// let b = multiproc::Barrier::new(2)?;
    /// b.abort()?;
    /// b.reset()?;
    /// assert!(!b.is_broken());
    /// # Ok::<(), multiproc::Error>(())
    /// ```
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

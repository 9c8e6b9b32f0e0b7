//! [`Event`]: a process-shared flag on a futex word.

use std::fmt;
use std::sync::atomic::{AtomicU32, Ordering::SeqCst};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::TICK;
use crate::error::Result;
use crate::shm::SharedCell;
use crate::sys::futex;

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
    /// [`Error::Io`](crate::Error::Io) if the shared memory cannot be made.
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

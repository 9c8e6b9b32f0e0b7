//! The one waiting loop of the ring: spin, then sleep on a futex, waking every [`TICK`] to check
//! the deadline and whether any process can still help (disconnection).

use std::sync::atomic::Ordering::*;
use std::time::Instant;

use crate::error::{Error, Result};
use crate::liveness::{HasHolders, Waiting};
use crate::sys;
use crate::sys::futex;

use super::{SPIN, Shared, TICK};

impl Shared {
    /// Waits until the ring has a record. `Ok(false)` when `mid_item` and the producer streaming
    /// that item has died.
    pub(super) fn wait_for_data(&self, deadline: Option<Instant>, mid_item: bool) -> Result<bool> {
        let h = self.header();
        let mut dead_producer = false;
        let r = self.wait_until_with(Waiting::Get, deadline, !mid_item, &mut || {
            if h.head.0.load(Acquire) != h.tail.0.load(Relaxed) {
                return true;
            }
            if mid_item {
                let owner = h.put_owner.0.load(SeqCst);
                if owner == 0 || !sys::process_alive(owner, h.put_owner_start.load(SeqCst)) {
                    // Re-check: the owner may have finished the item just now.
                    if h.head.0.load(Acquire) == h.tail.0.load(Relaxed) {
                        dead_producer = true;
                        return true;
                    }
                }
            }
            false
        });
        r.map(|()| !dead_producer)
    }

    pub(super) fn wait_until(&self, dir: Waiting, ready: impl FnMut() -> bool) -> Result<()> {
        let mut ready = ready;
        self.wait_until_with(dir, None, true, &mut ready)
    }

    /// The one waiting loop: spin for [`SPIN`], then sleep on the futex of `dir`, waking every
    /// [`TICK`] to re-check `ready`, the deadline and (if `detect`) disconnection.
    pub(super) fn wait_until_with(
        &self,
        dir: Waiting,
        deadline: Option<Instant>,
        detect: bool,
        ready: &mut dyn FnMut() -> bool,
    ) -> Result<()> {
        if ready() {
            return Ok(());
        }
        let h = self.header();
        let (seq, waiters) = match dir {
            Waiting::Get => (&h.data_seq.0, &h.data_waiters),
            Waiting::Put => (&h.space_seq.0, &h.space_waiters),
        };
        let started = Instant::now();
        while started.elapsed() < SPIN {
            for _ in 0..64 {
                std::hint::spin_loop();
            }
            if ready() {
                return Ok(());
            }
        }
        let mut last_check = Instant::now();
        loop {
            let observed = seq.load(SeqCst);
            waiters.fetch_add(1, SeqCst);
            if ready() {
                waiters.fetch_sub(1, SeqCst);
                return Ok(());
            }
            let mut nap = TICK;
            if let Some(d) = deadline {
                nap = nap.min(d.saturating_duration_since(Instant::now()));
            }
            futex::wait(seq, observed, Some(nap));
            waiters.fetch_sub(1, SeqCst);
            if ready() {
                return Ok(());
            }
            if let Some(d) = deadline
                && Instant::now() >= d
            {
                return Err(Error::Timeout {
                    operation: match dir {
                        Waiting::Get => "Queue::get",
                        Waiting::Put => "Queue::put",
                    },
                    after: started.elapsed(),
                    task: None,
                });
            }
            if detect && last_check.elapsed() >= TICK {
                last_check = Instant::now();
                // Re-assert what this process is doing (idempotent), in case its slot was found
                // only after the wait began.
                self.set_waiting(Some(dir));
                if self.nobody_can_help(dir, ready) {
                    return Err(Error::Disconnected(match dir {
                        Waiting::Get => "the queue is empty and every process that holds it \
                                         is waiting in get or joining: nothing can be put any more"
                            .into(),
                        Waiting::Put => "the queue is full and every process that holds it is \
                                         waiting in put or joining: nothing can be taken any more"
                            .into(),
                    }));
                }
            }
        }
    }

    /// Whether every live holder waits in the same direction (or joins), checked twice around
    /// a last look at `ready`, so that a holder changing state in between is noticed.
    fn nobody_can_help(&self, dir: Waiting, ready: &mut dyn FnMut() -> bool) -> bool {
        let Some(before) = self.holders().stuck_snapshot(dir) else {
            return false;
        };
        if ready() {
            return false;
        }
        self.holders()
            .stuck_snapshot(dir)
            .is_some_and(|after| after == before)
    }
}

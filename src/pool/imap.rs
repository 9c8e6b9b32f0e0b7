//! [`IMap`]: the lazy iterator of `imap` and `imap_unordered`.

use std::collections::{HashMap, VecDeque};
use std::fmt;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::Result;

use super::sched::{Event, JobId, Scheduler};

use super::Pool;
use super::chunker::Chunker;
use super::result::{run_deferred, terminated};

/// The iterator of [`Pool::imap`] and [`Pool::imap_unordered`]: one `Result` per input.
///
/// It pulls the input lazily: at most a bounded number of inputs are taken from the input
/// iterator and not yet yielded (a few tasks per worker), so an endless input runs in flat
/// memory. The inputs taken run in the background (the pool's driver thread) between calls to
/// `next`; further inputs are taken from the caller's iterator only by `next` (it may not be
/// `Send`). Dropping it early discards the work in flight. It borrows the pool.
pub struct IMap<'p, I: Iterator, R> {
    pub(crate) pool: &'p Pool,
    pub(crate) job: JobId,
    pub(crate) chunks: Chunker<I>,
    pub(crate) ordered: bool,
    pub(crate) window: usize,
    pub(crate) next_out: usize,
    pub(crate) yielded: usize,
    pub(crate) buffer: HashMap<usize, Result<R>>,
    pub(crate) ready: VecDeque<Result<R>>,
    pub(crate) aborted: bool,
    pub(crate) fused: bool,
}

impl<I: Iterator, R> fmt::Debug for IMap<'_, I, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IMap")
            .field("ordered", &self.ordered)
            .field("pulled", &self.chunks.pulled)
            .field("yielded", &self.yielded)
            .finish()
    }
}

impl<I, R> IMap<'_, I, R>
where
    I: Iterator,
    I::Item: Serialize,
    R: DeserializeOwned,
{
    /// How many inputs were taken from the input iterator so far.
    pub fn pulled(&self) -> usize {
        self.chunks.pulled
    }

    /// Queues tasks of the next inputs while the window has room and the pool wants them.
    fn feed(&mut self, core: &mut Scheduler) -> Result<()> {
        while core.wants_tasks() && self.chunks.pulled - self.yielded < self.window {
            let room = self.window - (self.chunks.pulled - self.yielded);
            match self.chunks.next_task(self.job, room)? {
                Some(t) => core.submit(t),
                None => break,
            }
        }
        Ok(())
    }

    /// Queues the first window of inputs and hands them to the driver thread, so that they run
    /// while the caller does something else.
    pub(crate) fn start(&mut self) -> Result<()> {
        let pool = self.pool;
        let mut core = pool.shared.lock();
        self.feed(&mut core)?;
        drop(core);
        pool.shared.driver.notify();
        Ok(())
    }

    fn pop(&mut self) -> Option<Result<R>> {
        let r = if self.ordered {
            self.buffer
                .remove(&self.next_out)
                .inspect(|_| self.next_out += 1)
        } else {
            self.ready.pop_front()
        };
        if r.is_some() {
            self.yielded += 1;
        }
        r
    }
}

impl<I, R> Iterator for IMap<'_, I, R>
where
    I: Iterator,
    I::Item: Serialize,
    R: DeserializeOwned,
{
    type Item = Result<R>;

    fn next(&mut self) -> Option<Result<R>> {
        if self.fused {
            return None;
        }
        if let Some(r) = self.pop() {
            return Some(r);
        }
        let pool = self.pool;
        let mut core = pool.shared.lock();
        let out = loop {
            while let Some(ev) = core.take_event(self.job) {
                match ev {
                    Event::Done(done) => done.decode::<R>(&mut |i: usize, r: Result<R>| {
                        if self.ordered {
                            self.buffer.insert(i, r);
                        } else {
                            self.ready.push_back(r);
                        }
                    }),
                    Event::Failed { index, error } => {
                        if self.ordered {
                            self.buffer.insert(index, Err(error));
                        } else {
                            self.ready.push_back(Err(error));
                        }
                    }
                    Event::Aborted => self.aborted = true,
                }
            }
            pool.report(self.yielded, None);
            if let Some(r) = self.pop() {
                break Some(r);
            }
            if self.aborted || core.is_terminated() {
                self.fused = true;
                break Some(Err(terminated()));
            }
            if self.chunks.done && self.yielded == self.chunks.pulled {
                self.fused = true;
                break None;
            }
            if let Err(e) = self.feed(&mut core) {
                self.fused = true;
                return Some(Err(e));
            }
            if self.chunks.done && self.yielded == self.chunks.pulled {
                continue;
            }
            if let Err(e) = core.drive(None) {
                self.fused = true;
                break Some(Err(e));
            }
        };
        let deferred = core.take_deferred();
        drop(core);
        // Inputs queued by this call run on in the background.
        pool.shared.driver.notify();
        run_deferred(deferred);
        out
    }
}

impl<I: Iterator, R> Drop for IMap<'_, I, R> {
    fn drop(&mut self) {
        let mut core = self.pool.shared.lock();
        core.finish_job(self.job);
    }
}

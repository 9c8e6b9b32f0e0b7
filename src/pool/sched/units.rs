//! What the scheduler moves: tasks (a job's encoded inputs), their outcomes, and the events a
//! job's caller receives; the types every other part of the pool names.

use crate::error::Error;
use crate::fdpass::FdTable;

use super::super::transport::{Body, Bytes, Fds};

pub(crate) type JobId = u64;

/// Hashes a [`JobId`] with one multiplication: job ids are small counters of our own (no
/// untrusted keys), and a job is looked up several times per task (SipHash was 5% of the
/// parent's time in a chunksize-1 map).
#[derive(Default, Clone, Copy)]
pub(crate) struct JobHasher(u64);

impl std::hash::Hasher for JobHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0 ^ n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// Work to run in the parent after the pool's lock is released (user callbacks).
pub(crate) type Deferred = Box<dyn FnOnce() + Send>;
/// Receives a job's events as they happen; returns `true` when the job is complete.
pub(crate) type Sink = Box<dyn FnMut(Event, &mut Vec<Deferred>) -> bool + Send>;
/// Finds the end offsets of `count` encoded inputs (to split a task).
pub(crate) type EndsFn = fn(&[u8], u32) -> Option<Vec<usize>>;

/// Which inputs of a job a task holds.
#[derive(Debug, Clone)]
pub(crate) enum Items {
    /// `count` consecutive inputs from `first`.
    Range(usize, u32),
    /// These inputs (after a split).
    List(Box<[usize]>),
}

impl Items {
    pub(crate) fn count(&self) -> u32 {
        match self {
            Items::Range(_, n) => *n,
            Items::List(l) => l.len() as u32,
        }
    }

    pub(crate) fn index(&self, i: usize) -> usize {
        match self {
            Items::Range(first, _) => first + i,
            Items::List(l) => l[i],
        }
    }

    pub(crate) fn label(&self, i: usize) -> String {
        format!("item #{}", self.index(i))
    }
}

/// Encoded inputs of one job, sent to one worker as one frame.
#[derive(Debug)]
pub(crate) struct Task {
    pub(crate) job: JobId,
    pub(crate) items: Items,
    pub(crate) bytes: Bytes,
    /// The descriptors the inputs refer to (indices into this table are in `bytes`).
    pub(crate) fds: Fds,
    /// How many times a worker died running it.
    pub(crate) died: u32,
}

/// The outcomes of inputs that ran: `data` holds one encoded outcome per input, in order, and
/// `fds` the descriptors they refer to; `pid` is the worker that ran them.
#[derive(Debug)]
pub(crate) struct Done {
    pub(crate) items: Items,
    pub(crate) data: Body,
    pub(crate) pid: i32,
    pub(crate) fds: FdTable,
}

/// What happened to a job's inputs.
#[derive(Debug)]
pub(crate) enum Event {
    /// These inputs ran.
    Done(Done),
    /// This input has no outcome.
    Failed { index: usize, error: Error },
    /// The pool was terminated: no further event will come.
    Aborted,
}

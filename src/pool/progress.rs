//! The progress slots a pool shares with its workers (which input each is running, and since
//! when) and each worker's region of the outcome journal (see `journal`): the memory through
//! which the parent learns what a worker that died was doing and had finished.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering, fence};

use crate::sys;
use crate::sys::mem::SharedMapping;

use super::journal::{ENTRY_HEAD, Entry, JOURNAL_BYTES, OPEN, entry_head, parse, run_head};

/// Words per progress slot (one cache line).
const WORDS: usize = 8;
/// `item` value meaning "between tasks".
pub(crate) const IDLE: u64 = u64::MAX;
/// One progress slot per worker, in memory shared with the workers: the task sequence number and
/// the input index it is running, and when that input started (`CLOCK_MONOTONIC` ns). A
/// sequence lock (`ver`, odd while writing) keeps the three consistent for the reader.
///
/// Word 4 of a slot is the committed length of the worker's region of the outcome journal
/// (see [`super::journal`]), which lives in a second shared mapping.
///
/// Both are memory files, so that a worker that is not a fork of the parent (a fork server's)
/// can map them from their descriptors.
#[derive(Debug)]
pub(crate) struct Progress {
    map: SharedMapping,
    journal: SharedMapping,
    fd: OwnedFd,
    journal_fd: OwnedFd,
    slots: usize,
}

/// The word of a progress slot that holds the journal's committed length.
const JOURNAL_LEN: usize = 4;

/// What a worker was doing, read from its slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Snapshot {
    pub(crate) seq: u64,
    pub(crate) item: u64,
    pub(crate) started_ns: u64,
}

impl Progress {
    pub(crate) fn new(slots: usize) -> crate::Result<Progress> {
        let len = Self::bytes(slots);
        let fd = sys::mem::memfd(len)?;
        let journal_len = Self::journal_bytes(slots);
        let journal_fd = sys::mem::memfd(journal_len)?;
        let p = Progress {
            map: SharedMapping::from_fd(fd.as_fd(), len, false)?,
            journal: SharedMapping::from_fd(journal_fd.as_fd(), journal_len, false)?,
            fd,
            journal_fd,
            slots,
        };
        for i in 0..slots {
            p.reset(i);
        }
        Ok(p)
    }

    fn bytes(slots: usize) -> usize {
        (slots * WORDS * 8).max(4096)
    }

    fn journal_bytes(slots: usize) -> usize {
        slots.max(1) * JOURNAL_BYTES
    }

    /// The slots and journal of another process's [`Progress`] of `slots` slots, from its
    /// memory files (checked to be large enough).
    pub(crate) fn from_fds(
        fd: OwnedFd,
        journal_fd: OwnedFd,
        slots: usize,
    ) -> crate::Result<Progress> {
        let len = Self::bytes(slots);
        let journal_len = Self::journal_bytes(slots);
        if sys::mem::fd_size(fd.as_fd())? < len
            || sys::mem::fd_size(journal_fd.as_fd())? < journal_len
        {
            return Err(crate::Error::invalid_arg(
                "progress file",
                len,
                "smaller than the pool's slots",
            ));
        }
        Ok(Progress {
            map: SharedMapping::from_fd(fd.as_fd(), len, false)?,
            journal: SharedMapping::from_fd(journal_fd.as_fd(), journal_len, false)?,
            fd,
            journal_fd,
            slots,
        })
    }

    /// How many slots it has.
    pub(crate) fn slots(&self) -> usize {
        self.slots
    }

    /// The memory files of the slots and of the journal (to hand to a worker that is not a
    /// fork of this process).
    pub(crate) fn fds(&self) -> [BorrowedFd<'_>; 2] {
        [self.fd.as_fd(), self.journal_fd.as_fd()]
    }

    #[inline]
    fn words(&self, slot: usize) -> &[AtomicU64] {
        &self.map.as_atomic_u64s()[slot * WORDS..(slot + 1) * WORDS]
    }

    /// Clears a slot before a (replacement) worker starts in it.
    pub(crate) fn reset(&self, slot: usize) {
        let w = self.words(slot);
        w[0].store(0, Ordering::Relaxed);
        w[1].store(0, Ordering::Relaxed);
        w[2].store(IDLE, Ordering::Relaxed);
        w[JOURNAL_LEN].store(0, Ordering::Relaxed);
        w[3].store(0, Ordering::Release);
    }

    /// Empties the journal of `slot` (worker side, when every reply it wrote has been sent).
    #[inline]
    pub(crate) fn journal_clear(&self, slot: usize) {
        self.words(slot)[JOURNAL_LEN].store(0, Ordering::Release);
    }

    /// Appends the outcome of input `item` of task `seq` to the journal of `slot` (worker
    /// side); `input_end` is where that input ended in the task's bytes. An outcome that does
    /// not fit is left out.
    #[inline]
    pub(crate) fn journal_append(
        &self,
        slot: usize,
        seq: u64,
        item: u32,
        input_end: usize,
        outcome: &[u8],
    ) {
        let len = &self.words(slot)[JOURNAL_LEN];
        let used = len.load(Ordering::Relaxed) as usize;
        let end = used + ENTRY_HEAD + outcome.len();
        if end > JOURNAL_BYTES {
            return;
        }
        let base = slot * JOURNAL_BYTES + used;
        let head = entry_head(seq, item, outcome.len(), input_end);
        if self.journal.write_bytes(base, &head)
            && self.journal.write_bytes(base + ENTRY_HEAD, outcome)
        {
            len.store(end as u64, Ordering::Release);
        }
    }

    /// Opens a run in the journal of `slot` (worker side): the outcomes of inputs `item, item +
    /// 1, …` of task `seq`, `size` bytes each, inputs of `input_size` bytes (see
    /// [`journal::run_head`](super::journal::run_head)). Returns where its head is, or `None`
    /// when the head does not fit.
    pub(crate) fn journal_run_open(
        &self,
        slot: usize,
        seq: u64,
        item: u32,
        size: usize,
        input_size: usize,
    ) -> Option<usize> {
        let len = &self.words(slot)[JOURNAL_LEN];
        let used = len.load(Ordering::Relaxed) as usize;
        if used + ENTRY_HEAD > JOURNAL_BYTES {
            return None;
        }
        let head = run_head(seq, item, size, input_size, OPEN);
        self.journal
            .write_bytes(slot * JOURNAL_BYTES + used, &head)
            .then(|| {
                len.store((used + ENTRY_HEAD) as u64, Ordering::Release);
                used
            })
    }

    /// Appends one outcome to the run open in the journal of `slot`; `false` when it does not
    /// fit (it is left out, and so are the run's later ones).
    #[inline]
    pub(crate) fn journal_run_push(&self, slot: usize, outcome: &[u8]) -> bool {
        let len = &self.words(slot)[JOURNAL_LEN];
        let used = len.load(Ordering::Relaxed) as usize;
        let end = used + outcome.len();
        if end > JOURNAL_BYTES
            || !self
                .journal
                .write_bytes(slot * JOURNAL_BYTES + used, outcome)
        {
            return false;
        }
        len.store(end as u64, Ordering::Release);
        true
    }

    /// Closes the run whose head is at `at` with its final `count` (the head of `run`), so that
    /// entries can follow it.
    pub(crate) fn journal_run_close(&self, slot: usize, at: usize, run: &OpenRun) {
        let head = run_head(run.seq, run.item, run.size, run.input_size, run.count);
        let _ = self.journal.write_bytes(slot * JOURNAL_BYTES + at, &head);
    }

    /// The journal of `slot` (parent side, after its worker was reaped).
    pub(crate) fn journal_entries(&self, slot: usize) -> Vec<Entry> {
        let used =
            (self.words(slot)[JOURNAL_LEN].load(Ordering::Acquire) as usize).min(JOURNAL_BYTES);
        self.journal
            .read_bytes(slot * JOURNAL_BYTES, used)
            .map(|b| parse(&b))
            .unwrap_or_default()
    }

    /// Records that the worker in `slot` starts input `item` of task `seq` (worker side). The
    /// start time is read only when `timed` (a pool with a task timeout).
    pub(crate) fn set(&self, slot: usize, seq: u64, item: u64, timed: bool) {
        let w = self.words(slot);
        let v = w[0].load(Ordering::Relaxed);
        w[0].store(v + 1, Ordering::Relaxed);
        fence(Ordering::Release);
        w[1].store(seq, Ordering::Relaxed);
        w[2].store(item, Ordering::Relaxed);
        if timed {
            w[3].store(sys::monotonic_ns(), Ordering::Relaxed);
        }
        w[0].store(v + 2, Ordering::Release);
    }

    /// Records that the worker in `slot` starts input `item` of the task it started last with
    /// [`set`](Progress::set) (worker side, for a pool without a task timeout): the task does
    /// not change, so one store keeps the slot consistent for a reader.
    #[inline]
    pub(crate) fn set_item(&self, slot: usize, item: u64) {
        self.words(slot)[2].store(item, Ordering::Release);
    }

    /// Reads a slot (parent side). A writer killed mid-update leaves the version odd; after a
    /// few tries the fields are taken as they are.
    pub(crate) fn get(&self, slot: usize) -> Snapshot {
        let w = self.words(slot);
        let mut tries = 0;
        loop {
            let v1 = w[0].load(Ordering::Acquire);
            let snap = Snapshot {
                seq: w[1].load(Ordering::Relaxed),
                item: w[2].load(Ordering::Relaxed),
                started_ns: w[3].load(Ordering::Relaxed),
            };
            fence(Ordering::Acquire);
            let v2 = w[0].load(Ordering::Relaxed);
            tries += 1;
            if (v1 == v2 && v1 % 2 == 0) || tries > 1000 {
                return snap;
            }
            std::hint::spin_loop();
        }
    }
}

/// A run of plain-data outcomes in a worker's journal, still open.
#[derive(Debug, Clone, Copy)]
pub(crate) struct OpenRun {
    pub(crate) seq: u64,
    /// Its first input.
    pub(crate) item: u32,
    /// Outcomes in it so far.
    pub(crate) count: u32,
    /// Bytes of each outcome.
    pub(crate) size: usize,
    /// Bytes of each input.
    pub(crate) input_size: usize,
}

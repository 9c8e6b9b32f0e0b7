//! The queue's transport: a byte ring in a shared mapping, with one robust lock for producers
//! and one for consumers.
//!
//! A producer holds the put lock for a whole item, so items never interleave; a consumer holds
//! the get lock for a whole item, so each item goes to exactly one consumer. Between the two lock
//! holders the ring is single-producer single-consumer: the producer publishes `head` after
//! writing a record, the consumer publishes `tail` after reading one. Waits spin briefly, then
//! sleep on a futex, waking every [`TICK`] to check for dead peers.
//!
//! An item that fits goes as one `WHOLE` record; a larger one streams as `FIRST`, `MORE`...,
//! `LAST` records of at most a quarter of the ring each, so items of any size up to
//! [`MAX_MESSAGE_BYTES`](crate::wire::MAX_MESSAGE_BYTES) pass through a small ring. Crashes leave
//! the ring consistent, because `head` and `tail` only ever move by whole records:
//! - a consumer killed mid-item leaves `MORE`/`LAST` records that belong to no item: the next
//!   consumer skips them (the item was taken by the one that died);
//! - a producer killed mid-item leaves a `FIRST` with no `LAST`: the consumer drops the partial
//!   item when the next `FIRST`/`WHOLE`/`PILL` arrives, or when it sees the producer is dead.

use std::ptr;
use std::sync::atomic::{AtomicI32, AtomicU32, AtomicU64, AtomicUsize, Ordering::*};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::sys;
use crate::sys::futex::{self, RobustMutex};
use crate::sys::mem::SharedMapping;

use super::holders::{HolderTable, Waiting};

/// How often a sleeping waiter wakes to look for dead peers and disconnection.
pub(crate) const TICK: Duration = Duration::from_millis(50);
/// How long a waiter spins before it sleeps (a cross-CPU wake-up costs tens of microseconds).
const SPIN: Duration = Duration::from_micros(50);

const WHOLE: u32 = 1;
const FIRST: u32 = 2;
const MORE: u32 = 3;
const LAST: u32 = 4;
const PILL: u32 = 5;

const RECORD_HEADER: usize = 16;

#[repr(C, align(64))]
struct Line<T>(T);

#[repr(C)]
struct Header {
    put_lock: Line<RobustMutex>,
    get_lock: Line<RobustMutex>,
    head: Line<AtomicU64>,
    tail: Line<AtomicU64>,
    data_seq: Line<AtomicU32>,
    data_waiters: AtomicU32,
    space_seq: Line<AtomicU32>,
    space_waiters: AtomicU32,
    /// The producer streaming a multi-record item (0 when none), and its start time.
    put_owner: Line<AtomicI32>,
    put_owner_start: AtomicU64,
    /// Items put and not yet marked done ([`JoinableQueue`](crate::JoinableQueue)).
    unfinished: Line<AtomicU64>,
    unfinished_seq: AtomicU32,
    capacity: u64,
    holders: HolderTable,
}

const DATA_OFFSET: usize = std::mem::size_of::<Header>().next_multiple_of(64);

/// What a consumer took.
#[derive(Debug)]
pub(crate) enum Taken {
    /// An item's bytes.
    Item(Vec<u8>),
    /// A poison pill.
    Pill,
}

/// One queue's shared state, as mapped in this process.
#[derive(Debug)]
pub(crate) struct Shared {
    map: SharedMapping,
    slot_hint: AtomicUsize,
}

impl Shared {
    /// A new ring with `capacity` bytes of data space.
    pub(crate) fn new(capacity: usize) -> Result<Self> {
        let map = SharedMapping::anonymous(DATA_OFFSET + capacity)?;
        let header = map.as_ptr().cast::<Header>();
        // SAFETY: the mapping is fresh, zero-filled, large enough and page-aligned, and no other
        // process maps it yet. Zero is a valid state for every atomic and the holder table; the
        // two mutexes are initialized in place before first use.
        unsafe {
            RobustMutex::init(ptr::addr_of_mut!((*header).put_lock.0))?;
            RobustMutex::init(ptr::addr_of_mut!((*header).get_lock.0))?;
            ptr::addr_of_mut!((*header).capacity).write(capacity as u64);
        }
        Ok(Shared {
            map,
            slot_hint: AtomicUsize::new(0),
        })
    }

    fn header(&self) -> &Header {
        // SAFETY: the mapping starts with a `Header` initialized in `new`, lives as long as
        // `self`, and all its shared fields are atomics or process-shared mutexes.
        unsafe { &*self.map.as_ptr().cast::<Header>() }
    }

    pub(crate) fn holders(&self) -> &HolderTable {
        &self.header().holders
    }

    fn capacity(&self) -> u64 {
        self.header().capacity
    }

    /// The largest payload of one record.
    fn max_chunk(&self) -> usize {
        (self.capacity() as usize / 4 - RECORD_HEADER) & !7
    }

    /// Copies `src` into the ring at stream position `pos`, wrapping at the end.
    fn copy_in(&self, pos: u64, src: &[u8]) {
        let cap = self.capacity() as usize;
        let off = (pos % cap as u64) as usize;
        let first = src.len().min(cap - off);
        // SAFETY: both ranges lie inside the data area (`off + first <= cap` and the rest starts
        // at 0 with `src.len() - first <= cap`); the bytes between tail and head+free space are
        // owned by the producer holding the put lock until `head` is published.
        unsafe {
            let data = self.map.as_ptr().add(DATA_OFFSET);
            ptr::copy_nonoverlapping(src.as_ptr(), data.add(off), first);
            ptr::copy_nonoverlapping(src.as_ptr().add(first), data, src.len() - first);
        }
    }

    /// Appends `len` bytes of the ring from stream position `pos` to `dst`, wrapping at the end
    /// (no zero-filling of `dst` first).
    fn extend_from_ring(&self, pos: u64, len: usize, dst: &mut Vec<u8>) {
        let cap = self.capacity() as usize;
        let off = (pos % cap as u64) as usize;
        let first = len.min(cap - off);
        // SAFETY: both ranges lie inside the data area (see `copy_in`); they hold a published
        // record that only the consumer holding the get lock reads, and that no producer writes
        // until this consumer publishes `tail` past it, so nothing mutates them while borrowed.
        let (a, b) = unsafe {
            let data = self.map.as_ptr().add(DATA_OFFSET);
            (
                std::slice::from_raw_parts(data.add(off), first),
                std::slice::from_raw_parts(data, len - first),
            )
        };
        dst.extend_from_slice(a);
        dst.extend_from_slice(b);
    }

    /// Copies out of the ring from stream position `pos` into `dst`, wrapping at the end.
    fn copy_out(&self, pos: u64, dst: &mut [u8]) {
        let cap = self.capacity() as usize;
        let off = (pos % cap as u64) as usize;
        let first = dst.len().min(cap - off);
        // SAFETY: as in `copy_in`; the bytes between tail and head are published records owned by
        // the consumer holding the get lock until it publishes `tail`.
        unsafe {
            let data = self.map.as_ptr().add(DATA_OFFSET);
            ptr::copy_nonoverlapping(data.add(off), dst.as_mut_ptr(), first);
            ptr::copy_nonoverlapping(data, dst.as_mut_ptr().add(first), dst.len() - first);
        }
    }

    fn set_waiting(&self, w: Option<Waiting>) {
        self.holders().set_waiting(w, &self.slot_hint);
    }

    /// Puts one item (its encoded bytes), or a pill when `bytes` is `None`.
    pub(crate) fn put(&self, bytes: Option<&[u8]>) -> Result<()> {
        self.set_waiting(Some(Waiting::Put));
        let r = self.put_locked(bytes);
        self.set_waiting(None);
        r
    }

    fn put_locked(&self, bytes: Option<&[u8]>) -> Result<()> {
        let h = self.header();
        h.put_lock.0.lock()?;
        let r = (|| {
            let Some(bytes) = bytes else {
                return self.write_record(PILL, 0, &[]);
            };
            let total = bytes.len() as u64;
            let chunk = self.max_chunk();
            if bytes.len() <= chunk {
                return self.write_record(WHOLE, total, bytes);
            }
            h.put_owner_start
                .store(super::holders::own_start_time(), SeqCst);
            h.put_owner.0.store(sys::getpid().as_raw(), SeqCst);
            let mut chunks = bytes.chunks(chunk).peekable();
            let mut kind = FIRST;
            while let Some(c) = chunks.next() {
                if chunks.peek().is_none() {
                    kind = LAST;
                }
                self.write_record(kind, total, c)?;
                kind = MORE;
            }
            Ok(())
        })();
        h.put_owner.0.store(0, SeqCst);
        h.put_lock.0.unlock();
        r
    }

    /// Writes one record once there is room, then publishes it.
    fn write_record(&self, kind: u32, total: u64, payload: &[u8]) -> Result<()> {
        let h = self.header();
        let size = (RECORD_HEADER + payload.len()).next_multiple_of(8) as u64;
        let head = h.head.0.load(Relaxed);
        self.wait_until(Waiting::Put, || {
            self.capacity() - (head - h.tail.0.load(Acquire)) >= size
        })?;
        let mut rh = [0u8; RECORD_HEADER];
        rh[0..4].copy_from_slice(&kind.to_le_bytes());
        rh[4..8].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        rh[8..16].copy_from_slice(&total.to_le_bytes());
        self.copy_in(head, &rh);
        self.copy_in(head + RECORD_HEADER as u64, payload);
        if kind == WHOLE || kind == LAST {
            // Counted before it is published, so a task_done for it can never come first.
            h.unfinished.0.fetch_add(1, SeqCst);
        }
        h.head.0.store(head + size, SeqCst);
        if h.data_waiters.load(SeqCst) > 0 {
            h.data_seq.0.fetch_add(1, SeqCst);
            futex::wake(&h.data_seq.0, i32::MAX);
        }
        Ok(())
    }

    /// Takes one item or pill. `deadline` bounds the wait for an item to begin; an item whose
    /// records have begun to arrive is received whole.
    pub(crate) fn get(&self, deadline: Option<Instant>) -> Result<Taken> {
        self.set_waiting(Some(Waiting::Get));
        let r = self.get_locked(deadline);
        self.set_waiting(None);
        r
    }

    fn get_locked(&self, deadline: Option<Instant>) -> Result<Taken> {
        let h = self.header();
        // A consumer that died holding the lock may have left the rest of its item in the ring:
        // the loop below skips such orphan records, so nothing needs repair here.
        h.get_lock.0.lock()?;
        let r = self.take(deadline);
        h.get_lock.0.unlock();
        r
    }

    fn take(&self, deadline: Option<Instant>) -> Result<Taken> {
        let h = self.header();
        let mut partial: Option<Vec<u8>> = None;
        loop {
            let tail = h.tail.0.load(Relaxed);
            if h.head.0.load(Acquire) == tail {
                let mid_item = partial.is_some();
                match self.wait_for_data(if mid_item { None } else { deadline }, mid_item) {
                    Ok(true) => {}
                    Ok(false) => {
                        // The producer of the partial item died: drop it and wait anew.
                        partial = None;
                        continue;
                    }
                    Err(e) => return Err(e),
                }
                continue;
            }
            let mut rh = [0u8; RECORD_HEADER];
            self.copy_out(tail, &mut rh);
            let kind = u32::from_le_bytes(rh[0..4].try_into().expect("4 bytes"));
            let len = u32::from_le_bytes(rh[4..8].try_into().expect("4 bytes")) as usize;
            let total = u64::from_le_bytes(rh[8..16].try_into().expect("8 bytes"));
            let size = (RECORD_HEADER + len).next_multiple_of(8) as u64;
            let body_pos = tail + RECORD_HEADER as u64;
            let mut done = None;
            match kind {
                WHOLE => {
                    let mut item = Vec::with_capacity(len);
                    self.extend_from_ring(body_pos, len, &mut item);
                    done = Some(Taken::Item(item));
                }
                PILL => done = Some(Taken::Pill),
                FIRST => {
                    if total > crate::wire::MAX_MESSAGE_BYTES as u64 {
                        return Err(Error::InvalidState(format!(
                            "queue ring corrupted: item of {total} bytes at position {tail}"
                        )));
                    }
                    let mut item = Vec::with_capacity(total as usize);
                    crate::sys::mem::advise_huge_pages(&mut item);
                    self.extend_from_ring(body_pos, len, &mut item);
                    partial = Some(item);
                }
                MORE | LAST => {
                    if let Some(item) = partial.as_mut() {
                        self.extend_from_ring(body_pos, len, item);
                        if kind == LAST {
                            done = partial.take().map(Taken::Item);
                        }
                    }
                    // else: the rest of an item whose consumer died; skip it.
                }
                _ => {
                    return Err(Error::InvalidState(format!(
                        "queue ring corrupted: record kind {kind} at position {tail}"
                    )));
                }
            }
            h.tail.0.store(tail + size, SeqCst);
            if h.space_waiters.load(SeqCst) > 0 {
                h.space_seq.0.fetch_add(1, SeqCst);
                futex::wake(&h.space_seq.0, i32::MAX);
            }
            if let Some(taken) = done {
                return Ok(taken);
            }
        }
    }

    /// Waits until the ring has a record. `Ok(false)` when `mid_item` and the producer streaming
    /// that item has died.
    fn wait_for_data(&self, deadline: Option<Instant>, mid_item: bool) -> Result<bool> {
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

    fn wait_until(&self, dir: Waiting, ready: impl FnMut() -> bool) -> Result<()> {
        let mut ready = ready;
        self.wait_until_with(dir, None, true, &mut ready)
    }

    /// The one waiting loop: spin for [`SPIN`], then sleep on the futex of `dir`, waking every
    /// [`TICK`] to re-check `ready`, the deadline and (if `detect`) disconnection.
    fn wait_until_with(
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

    /// Marks one item done (for [`JoinableQueue`](crate::JoinableQueue)).
    pub(crate) fn task_done(&self) -> Result<()> {
        let h = self.header();
        let prev = h
            .unfinished
            .0
            .fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1))
            .map_err(|_| {
                Error::InvalidState("task_done() called more times than items were put".into())
            })?;
        if prev == 1 {
            h.unfinished_seq.fetch_add(1, SeqCst);
            futex::wake(&h.unfinished_seq, i32::MAX);
        }
        Ok(())
    }

    /// Items put (pills not counted) and not yet marked done.
    pub(crate) fn unfinished(&self) -> u64 {
        self.header().unfinished.0.load(SeqCst)
    }

    /// Waits until every item put has been marked done.
    pub(crate) fn join_tasks(&self, deadline: Option<Instant>) -> Result<()> {
        let h = self.header();
        let started = Instant::now();
        loop {
            let observed = h.unfinished_seq.load(SeqCst);
            if h.unfinished.0.load(SeqCst) == 0 {
                return Ok(());
            }
            let mut nap = TICK;
            if let Some(d) = deadline {
                if Instant::now() >= d {
                    return Err(Error::Timeout {
                        operation: "JoinableQueue::join",
                        after: started.elapsed(),
                    });
                }
                nap = nap.min(d.saturating_duration_since(Instant::now()));
            }
            futex::wait(&h.unfinished_seq, observed, Some(nap));
        }
    }

    /// Whether the ring holds no record right now.
    pub(crate) fn is_empty(&self) -> bool {
        let h = self.header();
        h.head.0.load(SeqCst) == h.tail.0.load(SeqCst)
    }
}

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
//!
//! A growing ring ([`Storage::Growing`], what `Queue::new` makes) is the same ring over a
//! [`GROWING_RESERVATION`] of address space mapped with `MAP_NORESERVE`: a page costs memory only
//! once written, and the consumer that moves the tail returns the pages behind it
//! (`MADV_REMOVE`, every [`RELEASE_BATCH`] bytes), after publishing the tail. Producers stop
//! [`RELEASE_SLACK`] bytes short of the tail, so no producer ever writes into a page being
//! returned (the pages returned lag the tail by less than a batch and two records, records being
//! at most [`GROWING_MAX_CHUNK`] there). Nothing else changes, so the crash properties below hold
//! for both kinds. `items_in`/`items_out` count items (and pills) published and passed, for
//! `len` and `maxsize`.
//!
//! Items with descriptors: the high bits of the kind word of their first record count the
//! descriptors, and its payload starts with the item's tag; the descriptors went, before the
//! record, as one message on the side channel (see [`Shared`]). A producer killed between the two
//! leaves a message with no record: the consumer drops messages older than the record's tag. A
//! consumer killed after taking the message leaves a record whose message is gone: `fd_taken`
//! says so, and the next consumer skips the record. Any other mismatch is an error for that one
//! item, which is skipped.

use std::os::fd::OwnedFd;
use std::ptr;
use std::sync::atomic::{AtomicI32, AtomicU32, AtomicU64, AtomicUsize, Ordering::*};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::sys;
use crate::sys::futex::{self, RobustMutex};
use crate::sys::mem::SharedMapping;
use crate::sys::socket;

use crate::liveness::{self, HasHolders, HolderTable, Waiting};

mod side;
mod wait;

/// How often a sleeping waiter wakes to look for dead peers and disconnection.
pub(crate) const TICK: Duration = Duration::from_millis(50);
/// How long a waiter spins before it sleeps (a cross-CPU wake-up costs tens of microseconds).
const SPIN: Duration = Duration::from_micros(50);

const WHOLE: u32 = 1;
const FIRST: u32 = 2;
const MORE: u32 = 3;
const LAST: u32 = 4;
const PILL: u32 = 5;
/// The low bits of a record's kind word hold the kind; the high bits of the first record of an
/// item (`WHOLE` or `FIRST`) hold how many descriptors travel with the item on the side channel.
const KIND_MASK: u32 = 0xffff;
const FDS_SHIFT: u32 = 16;

/// Bytes in front of an item that has descriptors: its tag (little-endian `u64`), the sequence
/// number of its message on the side channel. Part of the item's first record, not of the item.
pub(crate) const TAG_BYTES: usize = 8;
/// A side-channel message: the tag (`u64`), then the descriptor count (`u32`), little-endian.
const SIDE_MSG: usize = 12;

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
    /// The last tag given to an item with descriptors (written under the put lock).
    fd_seq: Line<AtomicU64>,
    /// The tag of the last side-channel message a consumer took (written under the get lock):
    /// when it equals the tag of the record at the tail, the consumer that took the descriptors
    /// died before moving past the record.
    fd_taken: Line<AtomicU64>,
    /// Items and pills published (written under the put lock) and passed by consumers (under
    /// the get lock): [`Shared::len`] is the difference.
    items_in: Line<AtomicU64>,
    items_out: Line<AtomicU64>,
    /// A growing ring: the stream position below which its pages were returned to the kernel.
    released: Line<AtomicU64>,
    capacity: u64,
    /// Bytes producers may fill: `capacity`, less a growing ring's [`RELEASE_SLACK`].
    usable: u64,
    /// The largest payload of one record.
    max_chunk: u64,
    /// At most this many items at once (0: no limit), Python's `maxsize`.
    maxsize: u64,
    /// Whether the ring is a large reservation whose consumed pages are returned (1) or a fixed
    /// ring (0).
    growing: u64,
    holders: HolderTable,
}

/// Page-aligned, so that a growing ring returns whole pages of data.
const DATA_OFFSET: usize = std::mem::size_of::<Header>().next_multiple_of(4096);

/// The address range a growing ring reserves: memory is committed as items are written and
/// returned as they are taken, so only the unconsumed bytes cost memory.
pub(crate) const GROWING_RESERVATION: usize = 64 << 30;
/// A growing ring's records carry at most this much (larger items stream in several).
const GROWING_MAX_CHUNK: usize = 16 << 20;
/// A consumer returns consumed pages once this many bytes have been consumed since the last time.
const RELEASE_BATCH: u64 = 1 << 20;
/// Room a growing ring's producers leave free behind the tail, so that they never write into the
/// pages a consumer is returning: more than [`RELEASE_BATCH`] and two records.
const RELEASE_SLACK: u64 = 64 << 20;

/// How a queue stores its items.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Storage {
    /// A fixed ring of this many bytes: `put` waits while it is full.
    Bounded(usize),
    /// A ring over a [`GROWING_RESERVATION`] of address space, committed as used.
    Growing,
}

impl HasHolders for Shared {
    fn holders(&self) -> &HolderTable {
        &self.header().holders
    }
}

/// Whether a record of kind `kind` ends an item (or is a pill): what `len` counts.
fn ends_item(kind: u32) -> bool {
    matches!(kind & KIND_MASK, WHOLE | LAST | PILL)
}

/// What a consumer took.
#[derive(Debug)]
pub(crate) enum Taken {
    /// An item's bytes, and the descriptors that came with it on the side channel.
    Item(Vec<u8>, Vec<OwnedFd>),
    /// A poison pill.
    Pill,
}

/// What a producer puts.
pub(crate) enum PutItem<'a> {
    /// A poison pill.
    Pill,
    /// An item's encoded bytes.
    Bytes(&'a [u8]),
    /// An item with descriptors: [`TAG_BYTES`] bytes of room for its tag, then its encoded bytes;
    /// and the descriptors (at most [`socket::MAX_FDS`]).
    WithFds(&'a mut [u8], &'a [OwnedFd]),
}

/// One queue's shared state, as mapped in this process.
///
/// Besides the mapping, every holder has the two ends of the queue's side channel, a unix
/// `SOCK_SEQPACKET` socket pair made with the queue and inherited by fork: producers send the
/// descriptors of an item on `side_tx` (one message per item, tagged with a sequence number)
/// before they write its records, both under the put lock, so the messages are in the order of
/// the records; consumers take them from `side_rx` under the get lock.
#[derive(Debug)]
pub(crate) struct Shared {
    map: SharedMapping,
    slot_hint: AtomicUsize,
    side_tx: OwnedFd,
    side_rx: OwnedFd,
}

impl Shared {
    /// A new queue stored as `storage` says, holding at most `maxsize` items (0: no limit).
    pub(crate) fn new(storage: Storage, maxsize: u64) -> Result<Self> {
        let (map, capacity, max_chunk, slack) = match storage {
            Storage::Bounded(capacity) => (
                SharedMapping::anonymous(DATA_OFFSET + capacity)?,
                capacity,
                (capacity / 4 - RECORD_HEADER) & !7,
                0,
            ),
            Storage::Growing => (
                SharedMapping::reserve(DATA_OFFSET + GROWING_RESERVATION)?,
                GROWING_RESERVATION,
                GROWING_MAX_CHUNK - RECORD_HEADER,
                RELEASE_SLACK,
            ),
        };
        let header = map.as_ptr().cast::<Header>();
        // SAFETY: the mapping is fresh, zero-filled, large enough and page-aligned, and no other
        // process maps it yet. Zero is a valid state for every atomic and the holder table; the
        // two mutexes are initialized in place before first use.
        unsafe {
            RobustMutex::init(ptr::addr_of_mut!((*header).put_lock.0))?;
            RobustMutex::init(ptr::addr_of_mut!((*header).get_lock.0))?;
            ptr::addr_of_mut!((*header).capacity).write(capacity as u64);
            ptr::addr_of_mut!((*header).usable).write((capacity as u64) - slack);
            ptr::addr_of_mut!((*header).max_chunk).write(max_chunk as u64);
            ptr::addr_of_mut!((*header).maxsize).write(maxsize);
            ptr::addr_of_mut!((*header).growing).write(u64::from(slack > 0));
        }
        let (side_tx, side_rx) = socket::seqpacket_pair()?;
        Ok(Shared {
            map,
            slot_hint: AtomicUsize::new(0),
            side_tx,
            side_rx,
        })
    }

    fn header(&self) -> &Header {
        // SAFETY: the mapping starts with a `Header` initialized in `new`, lives as long as
        // `self`, and all its shared fields are atomics or process-shared mutexes.
        unsafe { &*self.map.as_ptr().cast::<Header>() }
    }

    fn capacity(&self) -> u64 {
        self.header().capacity
    }

    /// The largest payload of one record.
    fn max_chunk(&self) -> usize {
        self.header().max_chunk as usize
    }

    /// Whether a record of `size` bytes fits behind `head` now.
    fn has_room(&self, head: u64, size: u64) -> bool {
        let h = self.header();
        h.usable - (head - h.tail.0.load(Acquire)) >= size
    }

    /// Items (and pills) in the queue now.
    pub(crate) fn len(&self) -> u64 {
        let h = self.header();
        let out = h.items_out.0.load(SeqCst);
        h.items_in.0.load(SeqCst).saturating_sub(out)
    }

    /// Whether another item may go in now as far as `maxsize` is concerned.
    fn below_maxsize(&self) -> bool {
        let maxsize = self.header().maxsize;
        maxsize == 0 || self.len() < maxsize
    }

    /// Whether a put of a small item would have to wait now (`maxsize` items in the queue, or
    /// no room in the ring for one more record).
    pub(crate) fn is_full(&self) -> bool {
        let head = self.header().head.0.load(SeqCst);
        !self.below_maxsize() || !self.has_room(head, (RECORD_HEADER + 8) as u64)
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

    /// Puts one item or a pill. `deadline` bounds the wait for room (for a record and under
    /// `maxsize`): [`Error::Timeout`] then, with nothing put. The wait for another producer to
    /// finish its item is bounded by the deadline or one [`TICK`], whichever is later. An item
    /// that has begun to go in is put whole.
    pub(crate) fn put(&self, item: PutItem<'_>, deadline: Option<Instant>) -> Result<()> {
        self.set_waiting(Some(Waiting::Put));
        let r = self.put_locked(item, deadline);
        self.set_waiting(None);
        r
    }

    fn put_locked(&self, item: PutItem<'_>, deadline: Option<Instant>) -> Result<()> {
        let h = self.header();
        if let PutItem::WithFds(buf, fds) = &item {
            if fds.len() > socket::MAX_FDS {
                return Err(Error::invalid_arg(
                    "item",
                    format!("{} descriptors", fds.len()),
                    format!(
                        "one Queue item can carry at most {} shared objects that travel by \
                         descriptor",
                        socket::MAX_FDS
                    ),
                ));
            }
            assert!(buf.len() >= TAG_BYTES, "no room for the tag");
        }
        let lock_deadline = deadline.map(|d| d.max(Instant::now() + TICK));
        if h.put_lock.0.lock_until(lock_deadline)?.is_none() {
            return Err(Error::Timeout {
                operation: "Queue::put (another producer is putting an item)",
                after: TICK,
                task: None,
            });
        }
        let r = (|| {
            // Room for the first record (and under maxsize) before anything goes out, so that a
            // put that times out leaves no trace. Room only grows while the put lock is held.
            // (A blocking put with no maxsize just waits in `write_record`.)
            if deadline.is_some() || h.maxsize != 0 {
                self.wait_first_room(&item, deadline)?;
            }
            let (bytes, first_kind_bits) = match item {
                PutItem::Pill => return self.write_record(PILL, 0, &[]),
                PutItem::Bytes(bytes) => (bytes, 0),
                PutItem::WithFds(buf, fds) => {
                    // The message goes first: once the record is published a consumer may look
                    // for it at once.
                    let tag = h.fd_seq.0.fetch_add(1, SeqCst) + 1;
                    buf[..TAG_BYTES].copy_from_slice(&tag.to_le_bytes());
                    self.send_fds(tag, fds)?;
                    (&*buf, (fds.len() as u32) << FDS_SHIFT)
                }
            };
            let total = bytes.len() as u64;
            let chunk = self.max_chunk();
            if bytes.len() <= chunk {
                return self.write_record(WHOLE | first_kind_bits, total, bytes);
            }
            h.put_owner_start.store(liveness::own_start_time(), SeqCst);
            h.put_owner.0.store(sys::getpid().as_raw(), SeqCst);
            let mut chunks = bytes.chunks(chunk).peekable();
            let mut kind = FIRST | first_kind_bits;
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

    /// Waits (until `deadline`) for room for `item`'s first record, and under `maxsize`.
    fn wait_first_room(&self, item: &PutItem<'_>, deadline: Option<Instant>) -> Result<()> {
        let first = match item {
            PutItem::Pill => 0,
            PutItem::Bytes(b) => b.len(),
            PutItem::WithFds(b, _) => b.len(),
        };
        let first_size = (RECORD_HEADER + first.min(self.max_chunk())).next_multiple_of(8);
        let head = self.header().head.0.load(Relaxed);
        self.wait_until_with(Waiting::Put, deadline, true, &mut || {
            self.has_room(head, first_size as u64) && self.below_maxsize()
        })
    }

    /// Writes one record once there is room, then publishes it.
    fn write_record(&self, kind: u32, total: u64, payload: &[u8]) -> Result<()> {
        let h = self.header();
        let size = (RECORD_HEADER + payload.len()).next_multiple_of(8) as u64;
        let head = h.head.0.load(Relaxed);
        self.wait_until(Waiting::Put, || self.has_room(head, size))?;
        let mut rh = [0u8; RECORD_HEADER];
        rh[0..4].copy_from_slice(&kind.to_le_bytes());
        rh[4..8].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        rh[8..16].copy_from_slice(&total.to_le_bytes());
        self.copy_in(head, &rh);
        self.copy_in(head + RECORD_HEADER as u64, payload);
        if kind & KIND_MASK == WHOLE || kind == LAST {
            // Counted before it is published, so a task_done for it can never come first.
            h.unfinished.0.fetch_add(1, SeqCst);
        }
        if ends_item(kind) {
            // Under the put lock: only this producer writes it. Before the record is published,
            // so that `len` never sees it taken before it was put.
            h.items_in.0.store(h.items_in.0.load(Relaxed) + 1, SeqCst);
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
        // Another consumer may hold the lock while it waits for an item: the deadline bounds
        // the wait for the lock too.
        if h.get_lock.0.lock_until(deadline)?.is_none() {
            return Err(Error::Timeout {
                operation: "Queue::get (another consumer is taking an item)",
                after: Duration::ZERO,
                task: None,
            });
        }
        let r = self.take(deadline);
        h.get_lock.0.unlock();
        r
    }

    fn take(&self, deadline: Option<Instant>) -> Result<Taken> {
        let h = self.header();
        let mut partial: Option<(Vec<u8>, Vec<OwnedFd>)> = None;
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
            let word = u32::from_le_bytes(rh[0..4].try_into().expect("4 bytes"));
            let (kind, nfds) = (word & KIND_MASK, (word >> FDS_SHIFT) as usize);
            let len = u32::from_le_bytes(rh[4..8].try_into().expect("4 bytes")) as usize;
            let total = u64::from_le_bytes(rh[8..16].try_into().expect("8 bytes"));
            let size = (RECORD_HEADER + len).next_multiple_of(8) as u64;
            let published = h.head.0.load(Acquire) - tail;
            if size > published {
                // Garbage from a broken writer (found by fuzzing: reading it overran the
                // mapping): record boundaries are lost, so skip every byte published.
                self.pass_record(0, tail + published); // kind 0: no item is counted out
                return Err(Error::InvalidState(format!(
                    "queue ring corrupted: a record of {len} bytes at position {tail}, but only \
                     {published} bytes were put; skipped them"
                )));
            }
            let mut body_pos = tail + RECORD_HEADER as u64;
            let mut body_len = len;
            let mut fds = Vec::new();
            if nfds > 0 && (kind == WHOLE || kind == FIRST) {
                if len < TAG_BYTES {
                    return Err(Error::InvalidState(format!(
                        "queue ring corrupted: record of {len} bytes with descriptors at \
                         position {tail}"
                    )));
                }
                let mut tag = [0u8; TAG_BYTES];
                self.copy_out(body_pos, &mut tag);
                body_pos += TAG_BYTES as u64;
                body_len -= TAG_BYTES;
                match self.recv_fds(u64::from_le_bytes(tag), nfds) {
                    Ok(Some(got)) => fds = got,
                    Ok(None) => {
                        // Taken by a consumer that died: the item went with it. Skip the record
                        // (and, for a streamed item, the rest of it: orphan records below).
                        partial = None;
                        self.pass_record(kind, tail + size);
                        continue;
                    }
                    Err(e) => {
                        // Skip the item, so that the queue goes on with the next one.
                        self.pass_record(kind, tail + size);
                        return Err(e);
                    }
                }
            }
            let mut done = None;
            match kind {
                WHOLE => {
                    let mut item = Vec::with_capacity(body_len);
                    self.extend_from_ring(body_pos, body_len, &mut item);
                    done = Some(Taken::Item(item, fds));
                }
                PILL => done = Some(Taken::Pill),
                FIRST => {
                    if total > crate::wire::MAX_MESSAGE_BYTES as u64 + TAG_BYTES as u64 {
                        return Err(Error::InvalidState(format!(
                            "queue ring corrupted: item of {total} bytes at position {tail}"
                        )));
                    }
                    let mut item = Vec::with_capacity(total as usize);
                    crate::sys::mem::advise_huge_pages(&mut item);
                    self.extend_from_ring(body_pos, body_len, &mut item);
                    partial = Some((item, fds));
                }
                MORE | LAST => {
                    if let Some((item, _)) = partial.as_mut() {
                        self.extend_from_ring(body_pos, body_len, item);
                        if kind == LAST {
                            done = partial.take().map(|(item, fds)| Taken::Item(item, fds));
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
            self.pass_record(kind, tail + size);
            if let Some(taken) = done {
                return Ok(taken);
            }
        }
    }

    /// Moves past a record of kind `kind` (delivered or skipped) to `tail`: counts the item out
    /// if the record ends one, publishes `tail`, wakes producers waiting for room, and in a
    /// growing ring returns the pages consumed.
    fn pass_record(&self, kind: u32, tail: u64) {
        let h = self.header();
        if ends_item(kind) {
            // Under the get lock: only this consumer writes it.
            h.items_out.0.store(h.items_out.0.load(Relaxed) + 1, SeqCst);
        }
        h.tail.0.store(tail, SeqCst);
        if h.space_waiters.load(SeqCst) > 0 {
            h.space_seq.0.fetch_add(1, SeqCst);
            futex::wake(&h.space_seq.0, i32::MAX);
        }
        if h.growing != 0 && tail - h.released.0.load(Relaxed) >= RELEASE_BATCH {
            self.release_consumed(tail);
        }
    }

    /// Returns the whole pages of a growing ring below stream position `tail` (consumed) to the
    /// kernel. Called under the get lock, after `tail` was published: producers stay
    /// [`RELEASE_SLACK`] bytes behind the tail, so none writes into these pages meanwhile.
    fn release_consumed(&self, tail: u64) {
        let h = self.header();
        let page = sys::mem::page_size() as u64;
        let from = h.released.0.load(Relaxed);
        let to = tail / page * page;
        let cap = self.capacity();
        let mut pos = from;
        while pos < to {
            let off = pos % cap;
            let len = (to - pos).min(cap - off);
            self.map.release(DATA_OFFSET + off as usize, len as usize);
            pos += len;
        }
        h.released.0.store(to, SeqCst);
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
                        task: None,
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

#[cfg(test)]
#[path = "ring_fuzz.rs"]
mod fuzz;

#[cfg(test)]
mod tests;

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
//! Items with descriptors: the high bits of the kind word of their first record count the
//! descriptors, and its payload starts with the item's tag; the descriptors went, before the
//! record, as one message on the side channel (see [`Shared`]). A producer killed between the two
//! leaves a message with no record: the consumer drops messages older than the record's tag. A
//! consumer killed after taking the message leaves a record whose message is gone: `fd_taken`
//! says so, and the next consumer skips the record. Any other mismatch is an error for that one
//! item, which is skipped.

use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::ptr;
use std::sync::atomic::{AtomicI32, AtomicU32, AtomicU64, AtomicUsize, Ordering::*};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::sys;
use crate::sys::futex::{self, RobustMutex};
use crate::sys::mem::SharedMapping;
use crate::sys::socket;

use crate::liveness::{self, HasHolders, HolderTable, Waiting};

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
    capacity: u64,
    holders: HolderTable,
}

const DATA_OFFSET: usize = std::mem::size_of::<Header>().next_multiple_of(64);

impl HasHolders for Shared {
    fn holders(&self) -> &HolderTable {
        &self.header().holders
    }
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

    /// Puts one item or a pill.
    pub(crate) fn put(&self, item: PutItem<'_>) -> Result<()> {
        self.set_waiting(Some(Waiting::Put));
        let r = self.put_locked(item);
        self.set_waiting(None);
        r
    }

    fn put_locked(&self, item: PutItem<'_>) -> Result<()> {
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
        h.put_lock.0.lock()?;
        let r = (|| {
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

    /// Sends the side-channel message of the item tagged `tag`, carrying `fds`, waiting while
    /// the socket has no room (as a put waits for ring space: disconnection is detected).
    fn send_fds(&self, tag: u64, fds: &[OwnedFd]) -> Result<()> {
        let mut msg = [0u8; SIDE_MSG];
        msg[..8].copy_from_slice(&tag.to_le_bytes());
        msg[8..].copy_from_slice(&(fds.len() as u32).to_le_bytes());
        let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
        let mut sent: Option<Result<()>> = None;
        // The waiting loop may call `ready` again after it said yes: send once only.
        self.wait_until(Waiting::Put, || {
            if sent.is_none() {
                match socket::try_send_message(self.side_tx.as_fd(), &msg, &raw) {
                    Ok(false) => return false,
                    Ok(true) => sent = Some(Ok(())),
                    Err(e) => sent = Some(Err(e)),
                }
            }
            true
        })?;
        sent.unwrap_or(Ok(()))
    }

    /// Takes the side-channel message of the item tagged `tag`, which should carry `count`
    /// descriptors. Messages with a smaller tag come first if a producer died between sending
    /// its message and writing its record: they are dropped (closing their descriptors).
    /// `Ok(None)` when a consumer took the message and died before moving past the record (the
    /// item went with it).
    fn recv_fds(&self, tag: u64, count: usize) -> Result<Option<Vec<OwnedFd>>> {
        let h = self.header();
        let rx = self.side_rx.as_fd();
        loop {
            let mut msg = [0u8; SIDE_MSG];
            let queued = match socket::peek_message(rx, &mut msg)? {
                Some(SIDE_MSG) => Some(u64::from_le_bytes(msg[..8].try_into().expect("8 bytes"))),
                Some(n) => {
                    // Not one of ours: drop it, and the item with it.
                    let _ = socket::try_recv_message(rx, &mut msg, &mut Vec::new());
                    return Err(Error::InvalidState(format!(
                        "queue side channel corrupted: a message of {n} bytes"
                    )));
                }
                None => None,
            };
            match queued {
                Some(t) if t <= tag => {
                    let mut fds = Vec::new();
                    socket::try_recv_message(rx, &mut msg, &mut fds)?;
                    if t < tag {
                        continue; // its producer died before writing the record
                    }
                    let sent = u32::from_le_bytes(msg[8..].try_into().expect("4 bytes")) as usize;
                    if fds.len() != count || sent != count {
                        return Err(Error::InvalidState(format!(
                            "queue item {tag}: {} descriptors came on the side channel, the \
                             record says {count}",
                            fds.len()
                        )));
                    }
                    h.fd_taken.0.store(tag, SeqCst);
                    return Ok(Some(fds));
                }
                _ if h.fd_taken.0.load(SeqCst) == tag => return Ok(None),
                _ => {
                    return Err(Error::InvalidState(format!(
                        "queue item {tag}: its {count} descriptors are missing from the side \
                         channel (next message: {queued:?})"
                    )));
                }
            }
        }
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
        if kind & KIND_MASK == WHOLE || kind == LAST {
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
                self.advance_tail(tail + published);
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
                        self.advance_tail(tail + size);
                        continue;
                    }
                    Err(e) => {
                        // Skip the item, so that the queue goes on with the next one.
                        self.advance_tail(tail + size);
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
            self.advance_tail(tail + size);
            if let Some(taken) = done {
                return Ok(taken);
            }
        }
    }

    /// Publishes `tail` (a consumer has moved past a record) and wakes producers waiting for room.
    fn advance_tail(&self, tail: u64) {
        let h = self.header();
        h.tail.0.store(tail, SeqCst);
        if h.space_waiters.load(SeqCst) > 0 {
            h.space_seq.0.fetch_add(1, SeqCst);
            futex::wake(&h.space_seq.0, i32::MAX);
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
mod tests {
    use super::*;
    use crate::sys::mem::{fd_inode, memfd};

    fn inode(fd: &OwnedFd) -> u64 {
        fd_inode(fd.as_fd()).unwrap()
    }

    /// Puts `body` with one fresh memory file; returns that file's inode.
    fn put_with_memfd(q: &Shared, body: &[u8]) -> u64 {
        let fd = memfd(4096).unwrap();
        let ino = inode(&fd);
        let mut buf = vec![0u8; TAG_BYTES];
        buf.extend_from_slice(body);
        q.put(PutItem::WithFds(&mut buf, &[fd])).unwrap();
        ino
    }

    fn take_item(q: &Shared) -> (Vec<u8>, Vec<OwnedFd>) {
        match q
            .get(Some(Instant::now() + Duration::from_secs(10)))
            .unwrap()
        {
            Taken::Item(bytes, fds) => (bytes, fds),
            Taken::Pill => panic!("a pill"),
        }
    }

    fn side_channel_empty(q: &Shared) -> bool {
        socket::peek_message(q.side_rx.as_fd(), &mut [0u8; SIDE_MSG])
            .unwrap()
            .is_none()
    }

    #[test]
    fn items_with_and_without_descriptors_keep_their_order() {
        let q = Shared::new(1 << 16).unwrap();
        q.put(PutItem::Bytes(b"plain")).unwrap();
        let ino = put_with_memfd(&q, b"with");
        // Streamed through the ring in several records, with descriptors.
        let big: Vec<u8> = (0..40_000u32).map(|i| i as u8).collect();
        let ino_big = put_with_memfd(&q, &big);
        q.put(PutItem::Pill).unwrap();
        let (bytes, fds) = take_item(&q);
        assert_eq!((bytes.as_slice(), fds.len()), (&b"plain"[..], 0));
        let (bytes, fds) = take_item(&q);
        assert_eq!((bytes.as_slice(), fds.len()), (&b"with"[..], 1));
        assert_eq!(inode(&fds[0]), ino);
        let (bytes, fds) = take_item(&q);
        assert_eq!(bytes, big);
        assert_eq!(inode(&fds[0]), ino_big);
        assert!(matches!(q.get(None).unwrap(), Taken::Pill));
        assert!(side_channel_empty(&q));
    }

    /// A producer that died between sending its descriptors and writing its record leaves a
    /// message with no record: the next item's consumer drops it and gets its own.
    #[test]
    fn a_message_without_a_record_is_skipped() {
        let q = Shared::new(1 << 16).unwrap();
        let h = q.header();
        h.put_lock.0.lock().unwrap();
        let tag = h.fd_seq.0.fetch_add(1, SeqCst) + 1;
        q.send_fds(tag, &[memfd(4096).unwrap()]).unwrap();
        h.put_lock.0.unlock(); // "died" here, before its record
        let ino = put_with_memfd(&q, b"next");
        let (bytes, fds) = take_item(&q);
        assert_eq!((bytes.as_slice(), fds.len()), (&b"next"[..], 1));
        assert_eq!(inode(&fds[0]), ino);
        assert!(side_channel_empty(&q));
    }

    /// A consumer that died after taking an item's descriptors, before moving past its record:
    /// the item is lost (as for any consumer killed while taking an item); the next consumer
    /// skips it without taking the next item's descriptors.
    #[test]
    fn a_record_whose_descriptors_a_dead_consumer_took_is_skipped() {
        let q = Shared::new(1 << 16).unwrap();
        put_with_memfd(&q, b"lost");
        let ino = put_with_memfd(&q, b"kept");
        let h = q.header();
        h.get_lock.0.lock().unwrap();
        let taken = q.recv_fds(1, 1).unwrap().unwrap();
        h.get_lock.0.unlock(); // "died" here, before moving the tail
        drop(taken);
        let (bytes, fds) = take_item(&q);
        assert_eq!(bytes, b"kept");
        assert_eq!(inode(&fds[0]), ino);
        assert!(q.is_empty());
    }

    /// Descriptors missing for another reason: a typed error, and the queue goes on.
    #[test]
    fn missing_descriptors_are_an_error_not_a_hang() {
        let q = Shared::new(1 << 16).unwrap();
        put_with_memfd(&q, b"robbed");
        put_with_memfd(&q, b"fine");
        let mut msg = [0u8; SIDE_MSG];
        socket::try_recv_message(q.side_rx.as_fd(), &mut msg, &mut Vec::new())
            .unwrap()
            .unwrap();
        // The first record's message is gone: the second's is next (tag 2 > 1).
        let err = q.get(Some(Instant::now())).unwrap_err();
        assert!(matches!(err, Error::InvalidState(_)), "{err}");
        assert!(err.to_string().contains("missing"), "{err}");
        let (bytes, fds) = take_item(&q);
        assert_eq!((bytes.as_slice(), fds.len()), (&b"fine"[..], 1));
        // And with no message at all.
        put_with_memfd(&q, b"robbed");
        socket::try_recv_message(q.side_rx.as_fd(), &mut msg, &mut Vec::new())
            .unwrap()
            .unwrap();
        assert!(matches!(
            q.get(Some(Instant::now())),
            Err(Error::InvalidState(_))
        ));
        assert!(q.is_empty());
    }

    #[test]
    fn more_descriptors_than_one_message_carries_is_an_error() {
        let q = Shared::new(1 << 16).unwrap();
        let fds: Vec<OwnedFd> = (0..=socket::MAX_FDS)
            .map(|_| q.side_tx.try_clone().unwrap())
            .collect();
        let mut buf = vec![0u8; TAG_BYTES + 1];
        let err = q.put(PutItem::WithFds(&mut buf, &fds)).unwrap_err();
        assert!(matches!(err, Error::InvalidArgument { .. }), "{err}");
        assert!(
            err.to_string().contains("254") && err.to_string().contains("253"),
            "{err}"
        );
        assert!(q.is_empty() && side_channel_empty(&q));
    }
}

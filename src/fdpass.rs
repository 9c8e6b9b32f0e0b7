//! Descriptors that travel inside messages: the crate-internal API behind sending a
//! [`SharedArray`](crate::SharedArray), a [`PodVec`](crate::PodVec) or a sync primitive through a
//! [`Pipe`](crate::pipe()) or a [`Queue`](crate::Queue).
//!
//! A value whose `Serialize` needs to pass a descriptor calls [`attach`], which stores the
//! descriptor in a per-thread table and returns its index; the index is what gets serialized.
//! The transport sends the table along with the bytes (`SCM_RIGHTS`), and on the other side
//! `Deserialize` calls [`take`] with the index. The table exists only inside [`encode_with_fds`]
//! / [`encode_append_with_fds`] and [`decode_with_fds`]. Elsewhere ([`wire::encode`]) [`can_attach`]
//! is false and the types fall back: a `PodVec` to inline bytes, a `SharedArray` or sync
//! primitive to its segment id, which resolves only in a process that already maps the segment.
//!
//! # The transports
//!
//! - A **pipe** (`pipe.rs`) sends the descriptors attached to the first byte of the message's
//!   frame on its stream socket.
//! - A **queue** (`queue/ring.rs`) moves bytes through a shared ring, which cannot carry
//!   descriptors; each queue also has a side channel, a `SOCK_SEQPACKET` socket pair made with the
//!   queue and inherited by every holder through fork. An item whose encoding attached
//!   descriptors gets, under the put lock, a sequence number (its tag); the producer sends one
//!   message on the side channel (the tag, the count, the descriptors) and then writes the item's
//!   records, whose first one says "tag N, k descriptors". The consumer that takes the record
//!   (under the get lock) takes the matching message, dropping older ones left by a producer that
//!   died between the two steps. Items without descriptors cost what they did before. While a
//!   message waits on the side channel the kernel keeps its descriptors alive, even after the
//!   producer has exited; they are freed when the last holder of the queue closes it.
//!
//! - A **pool** (`pool/transport.rs`) encodes a task's inputs one by one into one table
//!   ([`encoding_into`], moving: the inputs are given up), sends the table with the task frame's
//!   first byte, and the worker decodes each input with [`decoding_with`] over that table; the
//!   worker's outcomes come back the same way (moving), and a context too (not moving: the
//!   caller keeps it). A frame carries at most 253 descriptors (`SCM_MAX_FD`).
//! - A channel without descriptors ([`wire::encode`]) still carries `SharedArray`s made before
//!   its processes forked, by id.

use std::cell::{Cell, RefCell};
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::Result;
use crate::wire;

// The tables are stacks shared by nested encodes and decodes on one thread; a frame (an
// encode or decode in progress) owns the entries from its base up. Entering and leaving a frame
// whose values carry no descriptor touches only `Cell`s (the common case: a pool encodes and
// decodes every tiny input and result in a frame of its own).
thread_local! {
    static OUTGOING: RefCell<Vec<OwnedFd>> = const { RefCell::new(Vec::new()) };
    /// `OUTGOING`'s length, kept beside it so a frame can see whether it attached anything
    /// without borrowing the table.
    static OUT_LEN: Cell<usize> = const { Cell::new(0) };
    /// The frame values encoded now attach to: its base in `OUTGOING` and the index its first
    /// descriptor takes in the message; `None`: nothing can be attached here.
    static OUT_FRAME: Cell<Option<Frame>> = const { Cell::new(None) };
    static INCOMING: RefCell<Vec<Option<OwnedFd>>> = const { RefCell::new(Vec::new()) };
    /// The frame values decoded now take descriptors from: its base in `INCOMING` and its
    /// length; `None`: the message being decoded came without descriptors.
    static IN_FRAME: Cell<Option<Frame>> = const { Cell::new(None) };
    static MOVING: Cell<bool> = const { Cell::new(false) };
}

/// A frame of one of the tables: `base` is where its entries start, `n` the index its first
/// entry has in the message (outgoing) or the number of its entries (incoming).
#[derive(Clone, Copy)]
struct Frame {
    base: usize,
    n: usize,
}

/// Encodes `value`; the descriptors its parts attached come back in order of their indices.
pub(crate) fn encode_with_fds<T: Serialize + ?Sized>(value: &T) -> Result<(Vec<u8>, Vec<OwnedFd>)> {
    let mut fds = Vec::new();
    let bytes = encoding_into(&mut fds, false, || wire::encode(value))?;
    Ok((bytes, fds))
}

/// Encodes `value`, appending to `buf` (as [`wire::encode_append`]); returns the descriptors its
/// parts attached, in order of their indices. The buffer is sized first, with no descriptor
/// table installed (that pass has no side effects; a part that will attach a descriptor is
/// sized as its inline form, an over-estimate of address space only), so that a big item
/// without descriptors is not grown by doubling.
pub(crate) fn encode_append_with_fds<T: Serialize + ?Sized>(
    value: &T,
    buf: &mut Vec<u8>,
) -> Result<Vec<OwnedFd>> {
    encode_append(value, buf, false)
}

/// As [`encode_append_with_fds`], for a value the caller gives up once it is sent (see
/// [`encode_moving_with_fds`]).
pub(crate) fn encode_append_moving_with_fds<T: Serialize + ?Sized>(
    value: &T,
    buf: &mut Vec<u8>,
) -> Result<Vec<OwnedFd>> {
    encode_append(value, buf, true)
}

fn encode_append<T: Serialize + ?Sized>(
    value: &T,
    buf: &mut Vec<u8>,
    moving: bool,
) -> Result<Vec<OwnedFd>> {
    if !can_attach() {
        wire::reserve_for(value, buf)?;
    }
    let mut fds = Vec::new();
    encoding_into(&mut fds, moving, || wire::encode_append(value, buf))?;
    Ok(fds)
}

/// Like [`encode_with_fds`], for a value the caller gives up once it is sent: parts that own
/// their shared memory alone (a received [`PodVec`](crate::PodVec)) may then attach it as is,
/// without copying, see [`moving`]. The caller must drop `value` after sending, without using
/// it again.
pub(crate) fn encode_moving_with_fds<T: Serialize + ?Sized>(
    value: &T,
) -> Result<(Vec<u8>, Vec<OwnedFd>)> {
    let mut fds = Vec::new();
    let bytes = encoding_into(&mut fds, true, || wire::encode(value))?;
    Ok((bytes, fds))
}

/// Whether the value being encoded on this thread is given up by its sender.
#[inline]
pub(crate) fn moving() -> bool {
    MOVING.with(Cell::get) && can_attach()
}

/// Decodes a value from `bytes`, letting its parts [`take`] the descriptors `fds` that came with
/// it. Descriptors no part took are closed.
pub(crate) fn decode_with_fds<T: DeserializeOwned>(bytes: &[u8], fds: Vec<OwnedFd>) -> Result<T> {
    let mut table = FdTable::new(fds);
    decoding_with(&mut table, || wire::decode(bytes))
}

/// Descriptors that came with a message, for [`decoding_with`]: each is taken at most once,
/// by index; the ones no value took are closed when the table is dropped.
#[derive(Debug, Default)]
pub(crate) struct FdTable(Vec<Option<OwnedFd>>);

impl FdTable {
    /// A table of the descriptors of one message, in the order of their indices.
    pub(crate) fn new(fds: Vec<OwnedFd>) -> Self {
        FdTable(fds.into_iter().map(Some).collect())
    }

    /// Whether the table holds no descriptor at all.
    pub(crate) fn is_empty(&self) -> bool {
        self.0.iter().all(Option::is_none)
    }
}

/// Runs `f`, in which values decoded on this thread may [`take`] descriptors of `table` (for a
/// message decoded piece by piece: the table keeps what the pieces did not take).
pub(crate) fn decoding_with<R>(table: &mut FdTable, f: impl FnOnce() -> R) -> R {
    let frame = (!table.0.is_empty()).then(|| {
        INCOMING.with(|t| {
            let mut t = t.borrow_mut();
            let frame = Frame {
                base: t.len(),
                n: table.0.len(),
            };
            t.append(&mut table.0);
            frame
        })
    });
    let prev = IN_FRAME.with(|c| c.replace(frame));
    /// Gives the frame's entries back to the table, also when `f` panics.
    struct Back<'a>(&'a mut FdTable, Option<Frame>, Option<Frame>);
    impl Drop for Back<'_> {
        #[inline]
        fn drop(&mut self) {
            IN_FRAME.with(|c| c.set(self.2));
            if let Some(frame) = self.1 {
                INCOMING.with(|t| self.0.0.extend(t.borrow_mut().drain(frame.base..)));
            }
        }
    }
    let _back = Back(table, frame, prev);
    f()
}

/// Runs `f`, in which values encoded on this thread may [`attach`] descriptors, appended to
/// `fds` (for a message encoded piece by piece: the indices continue after the descriptors
/// already in `fds`). With `moving`, the values encoded in `f` are given up by the caller right
/// after (see [`encode_moving_with_fds`]).
pub(crate) fn encoding_into<R>(fds: &mut Vec<OwnedFd>, moving: bool, f: impl FnOnce() -> R) -> R {
    let base = OUT_LEN.with(Cell::get);
    let prev = OUT_FRAME.with(|c| c.replace(Some(Frame { base, n: fds.len() })));
    let prev_moving = MOVING.with(|m| m.replace(moving));
    /// Moves what `f` attached into `fds` and restores the outer frame, also when `f` panics.
    struct Back<'a>(&'a mut Vec<OwnedFd>, usize, Option<Frame>, bool);
    impl Drop for Back<'_> {
        #[inline]
        fn drop(&mut self) {
            OUT_FRAME.with(|c| c.set(self.2));
            MOVING.with(|m| m.set(self.3));
            if OUT_LEN.with(Cell::get) > self.1 {
                OUTGOING.with(|t| {
                    let mut t = t.borrow_mut();
                    self.0.extend(t.drain(self.1..));
                    OUT_LEN.with(|l| l.set(t.len()));
                });
            }
        }
    }
    let _back = Back(fds, base, prev, prev_moving);
    f()
}

/// Runs `f` outside the frame being encoded on this thread: nothing `f` encodes attaches to it
/// (`f` may open frames of its own).
#[inline]
pub(crate) fn suspended<R>(f: impl FnOnce() -> R) -> R {
    /// Puts the frame back, also when `f` panics.
    struct Back(Option<Frame>, bool);
    impl Drop for Back {
        #[inline]
        fn drop(&mut self) {
            OUT_FRAME.with(|c| c.set(self.0));
            MOVING.with(|m| m.set(self.1));
        }
    }
    let _back = Back(
        OUT_FRAME.with(|c| c.replace(None)),
        MOVING.with(|m| m.replace(false)),
    );
    f()
}

/// How many descriptors the message being encoded on this thread has so far (those given to
/// [`encoding_into`] and those attached since); 0 outside an encode.
#[inline]
pub(crate) fn attached() -> usize {
    OUT_FRAME
        .with(Cell::get)
        .map_or(0, |f| f.n + OUT_LEN.with(Cell::get) - f.base)
}

/// Set once this process is part of an MPI job (`crate::mpi`): messages may then cross nodes,
/// where no descriptor can go, so no value attaches one (a `PodVec` travels as its bytes).
static INLINE_ONLY: AtomicBool = AtomicBool::new(false);

/// From now on, no value encoded by this process attaches a descriptor (see `INLINE_ONLY`).
#[cfg_attr(not(feature = "mpi"), allow(dead_code))]
pub(crate) fn set_inline_only() {
    INLINE_ONLY.store(true, Ordering::Relaxed);
}

/// Whether this process is part of an MPI job (see `INLINE_ONLY`): shared memory cannot go with
/// its messages.
#[inline]
pub(crate) fn inline_only() -> bool {
    INLINE_ONLY.load(Ordering::Relaxed)
}

thread_local! {
    /// The value whose `Serialize` refused to go inline (see [`refuse_inline`]), for the error.
    static REFUSED: Cell<Option<&'static str>> = const { Cell::new(None) };
}

/// Called by the `Serialize` of a value that lives in shared memory when this process is part of
/// an MPI job ([`inline_only`]): records `type_name` so that the encode fails with
/// [`Error::NotSendable`](crate::Error::NotSendable) naming it (a serde error carries no text
/// through postcard); returns the message for the serde error.
pub(crate) fn refuse_inline(type_name: &'static str) -> &'static str {
    REFUSED.with(|r| r.set(Some(type_name)));
    NOT_SENDABLE_REASON
}

/// Why a shared-memory value cannot go to an MPI rank.
pub(crate) const NOT_SENDABLE_REASON: &str = "MPI ranks share no memory with this process (they \
    may run on other nodes), so a value that lives in shared memory cannot reach them; send its \
    contents as a PodVec (its bytes travel) or as plain data";

/// The error of an encode that failed with `e`: [`Error::NotSendable`](crate::Error::NotSendable)
/// if a shared-memory value refused to go inline during it, else the codec's error.
pub(crate) fn encode_error(e: postcard::Error) -> crate::Error {
    match REFUSED.with(Cell::take) {
        Some(type_name) => crate::Error::NotSendable {
            type_name,
            reason: NOT_SENDABLE_REASON,
        },
        None => crate::Error::Codec(crate::error::CodecError(e)),
    }
}

/// Bytes that go to MPI ranks as messages of their own, sent from the memory of the value that
/// attached them (a big [`PodVec`](crate::PodVec)), which they keep alive.
pub(crate) trait MpiBytes: Send + Sync {
    /// The bytes to send.
    fn bytes(&self) -> &[u8];
}

impl std::fmt::Debug for dyn MpiBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MpiBytes({} bytes)", self.bytes().len())
    }
}

/// One MPI attachment: its id (what the encoded value refers to) and its bytes.
pub(crate) type MpiAttachment = (u64, Arc<dyn MpiBytes>);

/// The MPI attachments of an encoded context, shared like its bytes (`None`: none).
pub(crate) type MpiAtts = Option<Arc<Vec<MpiAttachment>>>;

thread_local! {
    /// The MPI attachments of the value encoded now on this thread (`None`: not collecting).
    static MPI_OUT: RefCell<Option<Vec<MpiAttachment>>> = const { RefCell::new(None) };
}

/// Ids of MPI attachments: unique in this process (rank 0 makes them all).
static NEXT_MPI_ID: AtomicU64 = AtomicU64::new(1);

/// Runs `f`, in which, if this process is part of an MPI job ([`inline_only`]), a big
/// `PodVec` encoded on this thread may [`attach_mpi`] its memory instead of copying its bytes;
/// returns what `f` returned and the attachments.
pub(crate) fn collecting_mpi<R>(f: impl FnOnce() -> R) -> (R, Vec<MpiAttachment>) {
    if !inline_only() {
        return (f(), Vec::new());
    }
    let prev = MPI_OUT.with(|t| t.replace(Some(Vec::new())));
    /// Restores the outer table, also when `f` panics; keeps what `f` attached.
    struct Back(Option<Option<Vec<MpiAttachment>>>);
    impl Drop for Back {
        fn drop(&mut self) {
            if let Some(prev) = self.0.take() {
                MPI_OUT.with(|t| t.replace(prev));
            }
        }
    }
    let mut back = Back(Some(prev));
    let r = f();
    let prev = back.0.take().unwrap_or_default();
    let atts = MPI_OUT.with(|t| t.replace(prev)).unwrap_or_default();
    (r, atts)
}

/// Attaches `bytes` to the MPI message being encoded on this thread; its id, or `None` when
/// nothing collects attachments here (the value then goes inline).
pub(crate) fn attach_mpi(bytes: Arc<dyn MpiBytes>) -> Option<u64> {
    MPI_OUT.with(|t| {
        let mut t = t.borrow_mut();
        let table = t.as_mut()?;
        if SIZING.with(Cell::get) {
            // A sizing pass: the value is serialized again for real; only the size counts.
            return Some(0);
        }
        let id = NEXT_MPI_ID.fetch_add(1, Ordering::Relaxed);
        table.push((id, bytes));
        Some(id)
    })
}

thread_local! {
    /// A sizing pass runs on this thread (see [`sizing`]).
    static SIZING: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f`, a pass that only sizes an encoding: values attach nothing in it (they attach
/// when the value is encoded for real), but encode as they will then.
pub(crate) fn sizing<R>(f: impl FnOnce() -> R) -> R {
    /// Restores the flag, also when `f` panics.
    struct Back(bool);
    impl Drop for Back {
        fn drop(&mut self) {
            SIZING.with(|c| c.set(self.0));
        }
    }
    let _back = Back(SIZING.with(|c| c.replace(true)));
    f()
}

/// Whether a value encoded now on this thread may [`attach_mpi`].
pub(crate) fn can_attach_mpi() -> bool {
    MPI_OUT.with(|t| t.borrow().is_some())
}

/// Whether a descriptor can be attached to the message being encoded on this thread.
#[inline]
pub(crate) fn can_attach() -> bool {
    OUT_FRAME.with(Cell::get).is_some() && !INLINE_ONLY.load(Ordering::Relaxed)
}

/// Attaches `fd` to the message being encoded on this thread; returns its index.
pub(crate) fn attach(fd: OwnedFd) -> std::result::Result<u32, &'static str> {
    let Some(frame) = OUT_FRAME.with(Cell::get) else {
        return Err(
            "this value carries a file descriptor: it can be sent through a \
                    multiproc::Pipe (or inherited by fork), not through this channel",
        );
    };
    OUTGOING.with(|t| {
        let mut t = t.borrow_mut();
        t.push(fd);
        OUT_LEN.with(|l| l.set(t.len()));
        Ok((frame.n + t.len() - 1 - frame.base) as u32)
    })
}

/// Takes the descriptor at `index` of the message being decoded on this thread.
pub(crate) fn take(index: u32) -> std::result::Result<OwnedFd, &'static str> {
    let frame = IN_FRAME
        .with(Cell::get)
        .ok_or("this value carries a file descriptor, but the message came without any")?;
    let missing = "the message lacks the file descriptor this value refers to";
    if index as usize >= frame.n {
        return Err(missing);
    }
    INCOMING.with(|t| {
        t.borrow_mut()
            .get_mut(frame.base + index as usize)
            .and_then(Option::take)
            .ok_or(missing)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shm::PodVec;
    use crate::{Event, SharedArray};

    /// Tests of this module that make memory files run one at a time.
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

    /// Open descriptors of this process on the file `id` (device, inode): other tests' memory
    /// files, made meanwhile by the multi-threaded harness, do not count.
    fn open_fds_on(id: (u64, u64)) -> usize {
        use std::os::unix::fs::MetadataExt;
        std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .filter_map(|e| std::fs::metadata(e.ok()?.path()).ok())
            .filter(|m| (m.dev(), m.ino()) == id)
            .count()
    }

    #[test]
    fn attach_only_inside_an_encode() {
        let _s = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        assert!(!can_attach());
        assert!(attach(crate::sys::mem::memfd(8).unwrap()).is_err());
        let (bytes, fds) = encode_with_fds(&1u32).unwrap();
        assert!(fds.is_empty());
        assert_eq!(decode_with_fds::<u32>(&bytes, fds).unwrap(), 1);
        assert!(!can_attach());
    }

    #[test]
    fn shared_objects_round_trip_in_one_process() {
        let _s = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let a = SharedArray::from_slice(&[1u16, 2, 3]).unwrap();
        let e = Event::new().unwrap();
        let v: PodVec<u64> = vec![7u64; 1 << 16].into();
        let (bytes, fds) = encode_with_fds(&(a.clone(), e.clone(), v)).unwrap();
        assert_eq!(fds.len(), 3);
        let (a2, e2, v2): (SharedArray<u16>, Event, PodVec<u64>) =
            decode_with_fds(&bytes, fds).unwrap();
        a2.set(0, 9).unwrap();
        assert_eq!(a.get(0).unwrap(), 9);
        e2.set();
        assert!(e.is_set());
        assert!(v2.iter().all(|&x| x == 7));
    }

    #[test]
    fn wrong_type_or_missing_descriptor_fails_and_leaks_nothing() {
        let _s = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let a = SharedArray::<u32>::new(4).unwrap();
        let (bytes, fds) = encode_with_fds(&a).unwrap();
        assert_eq!(fds.len(), 1);
        let file = crate::sys::mem::fd_identity(std::os::fd::AsFd::as_fd(&fds[0])).unwrap();
        let before = open_fds_on(file);
        assert!(before >= 2, "the array's own and the encoded copy");
        assert!(decode_with_fds::<SharedArray<f32>>(&bytes, fds).is_err());
        assert!(decode_with_fds::<SharedArray<u32>>(&bytes, Vec::new()).is_err());
        // The encoded copy was consumed by the failed decode and closed, nothing else stays.
        assert_eq!(open_fds_on(file), before - 1);
    }
}

//! [`PodVec`]: a vector of plain-old-data that crosses a pipe through shared memory.

use std::fmt;
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::ser::{self, SerializeTuple, Serializer};
use serde::{Deserialize, Serialize};

use super::segment::{Segment, kind_of};
use super::{Pod, pod_bytes};
use crate::fdpass;

/// Below this many bytes a [`PodVec`] travels inline even through a pipe: making and mapping a
/// memory file costs more than copying.
pub(crate) const POD_VEC_INLINE_MAX: usize = 256 << 10;

/// A vector of plain-old-data that crosses processes fast: Python's pickle-protocol-5
/// out-of-band buffers, mpi4py's buffer sends.
///
/// Through a [`Pipe`](crate::pipe()), a [`Queue`](crate::Queue) or a [`Pool`](crate::Pool) (as
/// an input, a context, or a result) a `PodVec` larger than 256 KiB is copied once into a memory
/// file whose descriptor travels (a queue sends it on its side channel, not through its ring);
/// the receiver maps it and reads the elements in place (no second copy;
/// [`into_vec`](PodVec::into_vec) copies if you need a `Vec`). A `PodVec` that already lives in
/// a memory file (one received) travels with no copy at all when it is given up: sent on with
/// [`Connection::send_owned`](crate::Connection::send_owned) or
/// [`Queue::put_owned`](crate::Queue::put_owned), passed by value to a pool task, or returned by
/// one. Through a channel that carries no descriptors it is encoded as one block of bytes, still
/// far faster than a `Vec<f64>` encoded element by element.
///
/// A received `PodVec` is the only user of its memory (no other process touches it any more), so
/// it derefs to `&mut [T]` safely.
///
/// # Memory kept for reuse
///
/// Each process keeps up to 4 of the memory files it sent or received (1 GiB in all), still
/// mapped: one it received and dropped is reused for the next `PodVec` of the same type and
/// length it sends (warm pages instead of fresh ones), and one it sent is picked up again without
/// a new mapping when it comes back. A vector going back and forth between two processes thus
/// costs one copy into warm memory per round trip, or none with `send_owned`.
/// [`release_kept`](PodVec::release_kept) gives that memory back at once.
///
/// # Examples
///
/// ```
/// let (a, b) = multiproc::pipe::<multiproc::PodVec<f64>, ()>()?;
/// a.send(&vec![1.5f64; 1 << 20].into())?;
/// let got = b.recv()?;
/// assert_eq!(got.len(), 1 << 20);
/// assert_eq!(got[12345], 1.5);
/// # Ok::<(), multiproc::Error>(())
/// ```
pub struct PodVec<T: Pod> {
    inner: PodInner<T>,
    /// Its segment went, as is, with a message it was moved into: not ours to reuse.
    given: AtomicBool,
}

enum PodInner<T> {
    Heap(Vec<T>),
    Mapped { seg: Segment, len: usize },
}

impl<T: Pod> fmt::Debug for PodVec<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PodVec")
            .field("len", &self.len())
            .field("mapped", &matches!(self.inner, PodInner::Mapped { .. }))
            .finish()
    }
}

impl<T: Pod> From<Vec<T>> for PodVec<T> {
    fn from(v: Vec<T>) -> Self {
        PodVec {
            inner: PodInner::Heap(v),
            given: AtomicBool::new(false),
        }
    }
}

impl<T: Pod> Clone for PodVec<T> {
    /// A copy of the elements (one copy, into this process's heap; a received mapping is not
    /// shared with the clone).
    ///
    /// # Examples
    ///
    /// ```
    /// let a: multiproc::PodVec<u32> = vec![1, 2, 3].into();
    /// let mut b = a.clone();
    /// b[0] = 7;
    /// assert_eq!((&a[..], &b[..]), (&[1, 2, 3][..], &[7, 2, 3][..]));
    /// ```
    fn clone(&self) -> Self {
        PodVec::from_slice(self)
    }
}

impl<T: Pod> PodVec<T> {
    /// A `PodVec` holding a copy of `items` (one copy: the elements are `Copy`, so it is a
    /// `memcpy`).
    ///
    /// # Examples
    ///
    /// ```
    /// let data = [1.5f64, 2.5, 3.5];
    /// let v = multiproc::PodVec::from_slice(&data[1..]);
    /// assert_eq!(&v[..], &[2.5, 3.5]);
    /// ```
    pub fn from_slice(items: &[T]) -> Self {
        PodVec::from(items.to_vec())
    }

    /// Unmaps and closes the memory files this process keeps for reuse (see
    /// [Memory kept for reuse](PodVec#memory-kept-for-reuse)). Memory files that other
    /// processes still use stay alive for them.
    ///
    /// # Examples
    ///
    /// ```
    /// multiproc::PodVec::<f64>::release_kept();
    /// ```
    pub fn release_kept() {
        recycled::clear();
    }

    /// The elements as a `Vec` (a copy if they live in a received mapping).
    ///
    /// # Examples
    ///
    /// ```
    /// let v: multiproc::PodVec<u8> = vec![1, 2].into();
    /// assert_eq!(v.into_vec(), [1, 2]);
    /// ```
    pub fn into_vec(mut self) -> Vec<T> {
        match &mut self.inner {
            PodInner::Heap(v) => std::mem::take(v),
            PodInner::Mapped { .. } => self.to_vec(),
        }
    }
}

impl<T: Pod> Deref for PodVec<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        match &self.inner {
            PodInner::Heap(v) => v,
            // SAFETY: the segment holds `len` Pod elements, page-aligned; this process holds the
            // only mapping and the only descriptor (the sender closed its own after sending).
            PodInner::Mapped { seg, len } => unsafe {
                std::slice::from_raw_parts(seg.data().cast::<T>(), *len)
            },
        }
    }
}

impl<T: Pod> DerefMut for PodVec<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        match &mut self.inner {
            PodInner::Heap(v) => v,
            // SAFETY: as in `deref`; `&mut self` makes this the only borrow.
            PodInner::Mapped { seg, len } => unsafe {
                std::slice::from_raw_parts_mut(seg.data().cast::<T>(), *len)
            },
        }
    }
}

impl<T: Pod> Drop for PodVec<T> {
    fn drop(&mut self) {
        if let PodInner::Mapped { seg, .. } =
            std::mem::replace(&mut self.inner, PodInner::Heap(Vec::new()))
        {
            // Moved into a message: away; else ours alone: free.
            recycled::put(seg, *self.given.get_mut());
        }
    }
}

/// The shared segments of [`PodVec`]s this process has used, kept mapped for reuse, so that
/// vectors going back and forth cost no fresh pages and no new mappings:
/// - **free** segments: received, then dropped here. This process is their only user; the next
///   `PodVec` of the same type and length it sends is copied into one (warm pages) instead of a
///   fresh one.
/// - **away** segments: sent (their descriptor went with a message). Another process owns them
///   now; this process keeps the mapping but never touches it, until the same segment comes back
///   in a message: it is then used as is (no new mapping).
///
/// A forked child inherits the pool but never uses it (the pid differs): it drops its copies.
pub(super) mod recycled {
    use std::os::fd::{AsFd, BorrowedFd};
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, Ordering};

    use crate::fork::{ForkHook, register_fork_hook};
    use crate::shm::segment::{DATA_OFFSET, Segment, Tag};
    use crate::sys;

    /// At most this many segments...
    const MAX_SEGMENTS: usize = 4;
    /// ...and this many bytes are kept.
    const MAX_BYTES: usize = 1 << 30;

    struct Entry {
        bytes: usize,
        /// The memory file's inode: names the segment when it comes back.
        ino: u64,
        away: bool,
        seg: Segment,
    }

    struct Pool {
        pid: i32,
        entries: Vec<Entry>,
    }

    static POOL: Mutex<Pool> = Mutex::new(Pool {
        pid: 0,
        entries: Vec::new(),
    });

    /// Holds the kept segments' lock across every fork, so that the child never inherits it held
    /// by another thread (the child then forgets the parent's segments). Registered before the
    /// lock's first use.
    static FORK_HOOK: ForkHook = ForkHook {
        prepare: || Some(Box::new(POOL.lock().unwrap_or_else(|e| e.into_inner()))),
        parent: |_| {},
        child: || {},
    };

    fn with<R>(f: impl FnOnce(&mut Vec<Entry>) -> R) -> R {
        static HOOKED: AtomicBool = AtomicBool::new(false);
        if !HOOKED.load(Ordering::SeqCst) {
            register_fork_hook(&FORK_HOOK);
            HOOKED.store(true, Ordering::SeqCst);
        }
        let mut p = POOL.lock().unwrap_or_else(|e| e.into_inner());
        let me = sys::getpid().as_raw();
        if p.pid != me {
            // Inherited from the parent: not ours to use.
            p.entries.clear();
            p.pid = me;
        }
        f(&mut p.entries)
    }

    fn tag(seg: &Segment) -> (u64, u64, u64) {
        // SAFETY: every segment starts with a tag written before it was first shared.
        let t = unsafe { seg.map.as_ptr().cast::<Tag>().read() };
        (t.kind, t.elem_size, t.len)
    }

    /// A free segment made for `len` elements of `elem_size` bytes of type `kind`.
    pub(super) fn take(kind: u64, elem_size: usize, len: usize) -> Option<Segment> {
        let want = (kind, elem_size as u64, len as u64);
        with(|entries| {
            let i = entries
                .iter()
                .position(|e| !e.away && tag(&e.seg) == want)?;
            Some(entries.remove(i).seg)
        })
    }

    /// The away segment whose memory file is `fd`, now back in this process.
    pub(super) fn claim(fd: BorrowedFd<'_>) -> Option<Segment> {
        let ino = sys::mem::fd_inode(fd).ok()?;
        with(|entries| {
            let i = entries.iter().position(|e| e.away && e.ino == ino)?;
            Some(entries.remove(i).seg)
        })
    }

    /// Drops every kept segment.
    pub(super) fn clear() {
        let all = with(std::mem::take);
        drop(all);
    }

    /// Keeps `seg`: free (`away == false`, this process is its only user) or away (it was sent
    /// and this process must not touch it). Drops the oldest kept ones over the limits.
    pub(super) fn put(seg: Segment, away: bool) {
        let (_, elem_size, len) = tag(&seg);
        let bytes = (elem_size * len) as usize + DATA_OFFSET;
        if bytes > MAX_BYTES {
            return;
        }
        let Ok(ino) = sys::mem::fd_inode(seg.fd.as_fd()) else {
            return;
        };
        let dropped = with(|entries| {
            entries.push(Entry {
                bytes,
                ino,
                away,
                seg,
            });
            let mut dropped = Vec::new();
            while entries.len() > MAX_SEGMENTS
                || entries.iter().map(|e| e.bytes).sum::<usize>() > MAX_BYTES
            {
                dropped.push(entries.remove(0));
            }
            dropped
        });
        drop(dropped); // unmapped outside the lock
    }
}

const POD_INLINE: u8 = 0;
const POD_FD: u8 = 1;

struct Bytes<'a>(&'a [u8]);

impl Serialize for Bytes<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(self.0)
    }
}

impl<T: Pod> Serialize for PodVec<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let bytes = pod_bytes(self);
        let mut t = s.serialize_tuple(2)?;
        if let PodInner::Mapped { seg, .. } = &self.inner
            && fdpass::moving()
            && !self.given.swap(true, Ordering::SeqCst)
        {
            // Moved into a message (and dropped by the sender right after): this process holds
            // the only mapping, so the segment itself goes, no copy. `given` makes sure it goes
            // once and is not reused here.
            let fd = seg.fd.try_clone().map_err(ser::Error::custom)?;
            let index = fdpass::attach(fd).map_err(ser::Error::custom)?;
            t.serialize_element(&POD_FD)?;
            t.serialize_element(&index)?;
        } else if bytes.len() >= POD_VEC_INLINE_MAX && fdpass::can_attach() {
            let kind = kind_of::<PodVec<T>>();
            let size = std::mem::size_of::<T>();
            let seg = match recycled::take(kind, size, self.len()) {
                Some(seg) => seg,
                None => Segment::create_with(kind, size, self.len(), true, |_: *mut ()| Ok(()))
                    .map_err(ser::Error::custom)?,
            };
            // SAFETY: the segment has room for exactly `bytes.len()` bytes of data, and this
            // process is its only user (fresh, or recycled: received, then dropped here).
            unsafe {
                std::ptr::copy_nonoverlapping(bytes.as_ptr(), seg.data(), bytes.len());
            }
            // The descriptor goes with the message: the receiver will be the segment's only
            // user; we keep the mapping, untouched, in case the segment comes back.
            let index = fdpass::attach(seg.fd.try_clone().map_err(ser::Error::custom)?)
                .map_err(ser::Error::custom)?;
            recycled::put(seg, true);
            t.serialize_element(&POD_FD)?;
            t.serialize_element(&index)?;
        } else {
            t.serialize_element(&POD_INLINE)?;
            t.serialize_element(&Bytes(bytes))?;
        }
        t.end()
    }
}

struct PodBytes<T>(Vec<T>);

impl<'de, T: Pod> Deserialize<'de> for PodBytes<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<T: Pod> Visitor<'_> for V<T> {
            type Value = PodBytes<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("the bytes of a PodVec")
            }
            fn visit_bytes<E: de::Error>(self, b: &[u8]) -> Result<Self::Value, E> {
                let size = std::mem::size_of::<T>();
                if size == 0 {
                    // Zero-sized elements carry no bytes (and their count is not kept).
                    return if b.is_empty() {
                        Ok(PodBytes(Vec::new()))
                    } else {
                        Err(E::custom("bytes for zero-sized elements"))
                    };
                }
                if b.len() % size != 0 {
                    return Err(E::custom("PodVec bytes are not a whole number of elements"));
                }
                let n = b.len() / size;
                let mut v = Vec::<T>::with_capacity(n);
                // SAFETY: `v` has room for `n` elements = `b.len()` bytes; any bytes are a valid
                // `T: Pod`, so setting the length after the copy is sound.
                unsafe {
                    std::ptr::copy_nonoverlapping(b.as_ptr(), v.as_mut_ptr().cast::<u8>(), b.len());
                    v.set_len(n);
                }
                Ok(PodBytes(v))
            }
        }
        d.deserialize_bytes(V(PhantomData))
    }
}

impl<'de, T: Pod> Deserialize<'de> for PodVec<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T: Pod> Visitor<'de> for V<T> {
            type Value = PodVec<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a PodVec")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let tag: u8 = seq
                    .next_element()?
                    .ok_or_else(|| de::Error::invalid_length(0, &self))?;
                match tag {
                    POD_INLINE => {
                        let PodBytes(v) = seq
                            .next_element::<PodBytes<T>>()?
                            .ok_or_else(|| de::Error::invalid_length(1, &self))?;
                        Ok(v.into())
                    }
                    POD_FD => {
                        let index: u32 = seq
                            .next_element()?
                            .ok_or_else(|| de::Error::invalid_length(1, &self))?;
                        let fd = fdpass::take(index).map_err(de::Error::custom)?;
                        let (kind, size) = (kind_of::<PodVec<T>>(), std::mem::size_of::<T>());
                        let (seg, len) = match recycled::claim(fd.as_fd()) {
                            // One of ours, back: its mapping is still here.
                            Some(seg) => seg.check(kind, size).map_err(de::Error::custom)?,
                            None => {
                                Segment::open(fd, kind, size, true).map_err(de::Error::custom)?
                            }
                        };
                        Ok(PodVec {
                            inner: PodInner::Mapped { seg, len },
                            given: AtomicBool::new(false),
                        })
                    }
                    _ => Err(de::Error::custom("bad PodVec tag")),
                }
            }
        }
        d.deserialize_tuple(2, V(PhantomData))
    }
}

//! [`PodVec`]: a vector of plain-old-data that crosses a pipe through shared memory.

use std::fmt;
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};

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
/// Through a [`Pipe`](crate::pipe()) a `PodVec` larger than 256 KiB is copied once into a fresh
/// memory file whose descriptor travels; the receiver maps it and reads the elements in place
/// (no second copy; [`into_vec`](PodVec::into_vec) copies if you need a `Vec`). Elsewhere (a
/// [`Queue`](crate::Queue)) it is encoded as one block of bytes, still far faster than a
/// `Vec<f64>` encoded element by element.
///
/// A received `PodVec` owns its mapping alone (the sender's copy is gone), so it derefs to
/// `&mut [T]` safely. When dropped, its memory is kept (mapped, with its descriptor) for the
/// next `PodVec` of the same type and length this process sends, so round trips reuse warm
/// pages; see [`release_kept`](PodVec::release_kept).
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
        }
    }
}

impl<T: Pod> PodVec<T> {
    /// Unmaps and closes the memory this process keeps for reuse: up to 4 segments (1 GiB in
    /// all) of `PodVec`s it received through a pipe and dropped. The next `PodVec` of the same
    /// type and length it sends is copied into such a kept segment (warm pages) instead of a
    /// fresh one; call this to give the memory back at once.
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
            recycled::put(seg);
        }
    }
}

/// Segments of [`PodVec`]s this process received and dropped, kept mapped (their pages already
/// allocated and touched) for the next `PodVec` of the same type and length it sends: a round
/// trip of equal-sized vectors then costs one copy into warm memory each way, instead of
/// allocating and zeroing fresh shared pages every time.
///
/// A kept segment is this process's alone (the sender unmapped it and closed its descriptor), and
/// it leaves the cache only to be filled and sent, after which this process unmaps it too. A
/// forked child inherits the cache but never uses it (the pid differs): it drops its copies.
mod recycled {
    use std::sync::Mutex;

    use crate::shm::segment::{DATA_OFFSET, Segment, Tag};
    use crate::sys;

    /// At most this many segments...
    const MAX_SEGMENTS: usize = 4;
    /// ...and this many bytes are kept.
    const MAX_BYTES: usize = 1 << 30;

    struct Cache {
        pid: i32,
        segs: Vec<(usize, Segment)>,
    }

    static CACHE: Mutex<Cache> = Mutex::new(Cache {
        pid: 0,
        segs: Vec::new(),
    });

    fn with<R>(f: impl FnOnce(&mut Vec<(usize, Segment)>) -> R) -> R {
        let mut c = CACHE.lock().unwrap_or_else(|e| e.into_inner());
        let me = sys::getpid().as_raw();
        if c.pid != me {
            // Inherited from the parent: not ours to reuse.
            c.segs.clear();
            c.pid = me;
        }
        f(&mut c.segs)
    }

    fn tag(seg: &Segment) -> (u64, u64, u64) {
        // SAFETY: every segment starts with a tag written before it was first shared.
        let t = unsafe { seg.map.as_ptr().cast::<Tag>().read() };
        (t.kind, t.elem_size, t.len)
    }

    /// A kept segment made for `len` elements of `elem_size` bytes of type `kind`.
    pub(super) fn take(kind: u64, elem_size: usize, len: usize) -> Option<Segment> {
        let want = (kind, elem_size as u64, len as u64);
        with(|segs| {
            let i = segs.iter().position(|(_, s)| tag(s) == want)?;
            Some(segs.swap_remove(i).1)
        })
    }

    /// Drops every kept segment.
    pub(super) fn clear() {
        let all = with(std::mem::take);
        drop(all);
    }

    /// Keeps `seg` (dropping the oldest kept ones over the limits).
    pub(super) fn put(seg: Segment) {
        let (_, elem_size, len) = tag(&seg);
        let bytes = (elem_size * len) as usize + DATA_OFFSET;
        if bytes > MAX_BYTES {
            return;
        }
        let dropped = with(|segs| {
            segs.push((bytes, seg));
            let mut dropped = Vec::new();
            while segs.len() > MAX_SEGMENTS
                || segs.iter().map(|(b, _)| b).sum::<usize>() > MAX_BYTES
            {
                dropped.push(segs.remove(0));
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
        if bytes.len() >= POD_VEC_INLINE_MAX && fdpass::can_attach() {
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
            // The descriptor goes with the message; our mapping goes now: the receiver will be
            // the segment's only user.
            let Segment { fd, map, .. } = seg;
            drop(map);
            let index = fdpass::attach(fd).map_err(ser::Error::custom)?;
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
                let size = std::mem::size_of::<T>().max(1);
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
                        let (seg, len) = Segment::open(
                            fd,
                            kind_of::<PodVec<T>>(),
                            std::mem::size_of::<T>(),
                            true,
                        )
                        .map_err(de::Error::custom)?;
                        Ok(PodVec {
                            inner: PodInner::Mapped { seg, len },
                        })
                    }
                    _ => Err(de::Error::custom("bad PodVec tag")),
                }
            }
        }
        d.deserialize_tuple(2, V(PhantomData))
    }
}

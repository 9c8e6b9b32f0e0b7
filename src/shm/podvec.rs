//! [`PodVec`]: a vector of plain-old-data that crosses a pipe through shared memory.

use std::fmt;
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::ser::{self, SerializeTuple, Serializer};
use serde::{Deserialize, Serialize};

use super::cache::{self, KeptStats};
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
/// The cost of a big `PodVec` crossing processes is not the copy but the pages: a fresh page of
/// a memory file costs a page fault (allocate, zero, map; ~1 GB/s), and every process that maps
/// it faults it again. So each process keeps the memory files it sent or received, still mapped
/// with their pages faulted in (at most 4 files and 1 GiB per process by default,
/// [`set_kept_limits`](PodVec::set_kept_limits); past either bound the least recently used are
/// unmapped and closed; a file lives while any process keeps it, so a pool of N workers that
/// each received different files can keep up to N + 1 times the bound in all):
/// - a vector sent is copied into a kept file that no vector uses any more (of a fitting size;
///   sizes are rounded up so that one file serves nearby lengths): warm pages, no new file;
/// - a file received that is kept here already (sent or received before) is used through its
///   existing mapping: no new mapping, no fault. One received for the first time is mapped with
///   all its pages faulted in at once (`MADV_POPULATE_READ`), not one fault per page.
///
/// So sending vectors of the same size to the same worker again and again costs one copy into
/// warm memory and the worker reads warm memory: one way or there and back, no page is
/// allocated or faulted after the first round. A file is written only while no live vector in
/// any process uses it (a word in the file names the process whose vector holds it; a sender
/// takes a free file with a compare-and-swap), so reuse never changes a vector you hold, in
/// this or any other process, and a forked child never reuses the files its parent keeps.
/// [`kept_stats`](PodVec::kept_stats) shows what is kept and how often it was reused;
/// [`release_kept`](PodVec::release_kept) gives the memory back at once.
///
/// New memory files of 4 MiB and more are asked for 2 MiB pages (`MADV_HUGEPAGE`), which
/// the kernel gives only when `/sys/kernel/mm/transparent_hugepage/shmem_enabled` (or its
/// per-size `hugepages-2048kB/shmem_enabled`) says `advise`, `always`, `within_size` or
/// `force`; with `never` or `deny` (the default of most distributions) the files keep 4 KiB
/// pages, silently ([`KeptStats::huge_pages`] says which). Kernels older than 5.14 have no
/// `MADV_POPULATE_*`: pages are then faulted in by touching each one.
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
    /// Shared only with an MPI message in flight (see [`MpiPodBytes`]); written copy-on-write.
    Heap(Arc<Vec<T>>),
    Mapped {
        seg: Segment,
        len: usize,
    },
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
            inner: PodInner::Heap(Arc::new(v)),
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
        cache::clear();
    }

    /// What this process keeps for reuse and how often it was reused (see
    /// [Memory kept for reuse](PodVec#memory-kept-for-reuse)).
    ///
    /// # Examples
    ///
    /// ```
    /// use multiproc::PodVec;
    ///
    /// let (a, b) = multiproc::pipe::<PodVec<u8>, ()>()?;
    /// let before = PodVec::<u8>::kept_stats();
    /// for _ in 0..3 {
    ///     a.send(&vec![7u8; 1 << 20].into())?; // copied into a memory file
    ///     assert_eq!(b.recv()?[1000], 7); // dropped at once: the file is free again
    /// }
    /// let after = PodVec::<u8>::kept_stats();
    /// // The first send made a file (unless one was kept already), the next ones reused it.
    /// assert!(after.reused >= before.reused + 2);
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    pub fn kept_stats() -> KeptStats {
        cache::stats()
    }

    /// Bounds what this process keeps for reuse: at most `max_segments` memory files and
    /// `max_bytes` bytes (by default 4 and 1 GiB); what is over the new bounds is released at
    /// once. `0` keeps nothing: every large vector sent then goes in a fresh memory file. A
    /// forked child inherits the bounds.
    ///
    /// # Examples
    ///
    /// ```
    /// use multiproc::PodVec;
    ///
    /// PodVec::<f64>::set_kept_limits(256 << 20, 2);
    /// let s = PodVec::<f64>::kept_stats();
    /// assert_eq!((s.max_bytes, s.max_segments), (256 << 20, 2));
    /// assert!(s.kept <= 2);
    /// ```
    pub fn set_kept_limits(max_bytes: usize, max_segments: usize) {
        cache::set_limits(max_bytes, max_segments);
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
            PodInner::Heap(v) => Arc::try_unwrap(std::mem::take(v)).unwrap_or_else(|v| v.to_vec()),
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
            // Shared with an MPI send still in flight: this vector gets a copy of its own.
            PodInner::Heap(v) => Arc::<Vec<T>>::make_mut(v).as_mut_slice(),
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
            std::mem::replace(&mut self.inner, PodInner::Heap(Arc::default()))
        {
            // Moved into a message: away; else ours alone: free.
            cache::release(seg, *self.given.get_mut());
        }
    }
}

const POD_INLINE: u8 = 0;
const POD_FD: u8 = 1;
/// Its bytes are an MPI message of their own (see `fdpass::attach_mpi`): the id and byte count.
const POD_MPI: u8 = 2;

/// From this many bytes on, a `PodVec` going to MPI ranks is an MPI message of its own, sent
/// from its memory and received into the new vector's; smaller ones are copied into the frame
/// (a message of its own costs more than the copy).
pub(crate) const POD_VEC_MPI_MIN: usize = 64 << 10;

/// The memory of a `PodVec` being sent to MPI ranks, kept alive until the sends complete.
struct MpiPodBytes<T>(Arc<Vec<T>>);

// SAFETY: the vector is only read, as bytes, on any thread (a `PodVec` that shares it copies
// it before writing: `Arc::make_mut`), and `T: Pod` is `Copy`, so dropping it on another thread
// runs no destructor of an element; no element is ever used as a `T` through this type.
unsafe impl<T: Pod> Send for MpiPodBytes<T> {}
// SAFETY: as for `Send`: shared access only reads bytes.
unsafe impl<T: Pod> Sync for MpiPodBytes<T> {}

impl<T: Pod> fdpass::MpiBytes for MpiPodBytes<T> {
    fn bytes(&self) -> &[u8] {
        pod_bytes(&self.0)
    }
}

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
        if let PodInner::Heap(v) = &self.inner
            && bytes.len() >= POD_VEC_MPI_MIN
            && std::mem::size_of::<T>() > 0
            && fdpass::can_attach_mpi()
            && let Some(id) = fdpass::attach_mpi(Arc::new(MpiPodBytes(Arc::clone(v))))
        {
            t.serialize_element(&POD_MPI)?;
            t.serialize_element(&(id, bytes.len() as u64))?;
        } else if let PodInner::Mapped { seg, .. } = &self.inner
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
            let seg = cache::acquire(kind, size, self.len()).map_err(ser::Error::custom)?;
            // SAFETY: the segment has room for at least `bytes.len()` bytes of data (its tag
            // says `self.len()` elements), and this process holds it: its owner word is our
            // token, so no other process reads or writes it until it is received.
            unsafe {
                std::ptr::copy_nonoverlapping(bytes.as_ptr(), seg.data(), bytes.len());
            }
            // The descriptor goes with the message: the receiver becomes the segment's owner;
            // we keep the mapping, untouched, for when it is free again or comes back.
            let index = fdpass::attach(seg.fd.try_clone().map_err(ser::Error::custom)?)
                .map_err(ser::Error::custom)?;
            cache::keep(seg);
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
                        let (seg, len) =
                            cache::received(fd, kind, size).map_err(de::Error::custom)?;
                        Ok(PodVec {
                            inner: PodInner::Mapped { seg, len },
                            given: AtomicBool::new(false),
                        })
                    }
                    POD_MPI => {
                        let (id, len): (u64, u64) = seq
                            .next_element()?
                            .ok_or_else(|| de::Error::invalid_length(1, &self))?;
                        mpi_received::<T, A::Error>(id, len)
                    }
                    _ => Err(de::Error::custom("bad PodVec tag")),
                }
            }
        }
        d.deserialize_tuple(2, V(PhantomData))
    }
}

/// The `PodVec` whose bytes came as MPI attachment `id` of `len` bytes (feature `mpi`).
#[cfg(feature = "mpi")]
fn mpi_received<T: Pod, E: de::Error>(id: u64, len: u64) -> Result<PodVec<T>, E> {
    let (kind, size) = (kind_of::<PodVec<T>>(), std::mem::size_of::<T>());
    let (seg, len) = super::mpi_att::take(id, len, kind, size).map_err(E::custom)?;
    Ok(PodVec {
        inner: PodInner::Mapped { seg, len },
        given: AtomicBool::new(false),
    })
}

/// Without MPI no attachment can arrive.
#[cfg(not(feature = "mpi"))]
fn mpi_received<T: Pod, E: de::Error>(id: u64, _len: u64) -> Result<PodVec<T>, E> {
    Err(E::custom(format!(
        "the PodVec refers to MPI attachment {id}, but this build has no MPI"
    )))
}

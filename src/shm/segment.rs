//! [`Segment`]: a memory file and its mapping, with a tag that identifies what it holds; and
//! [`SharedCell`], a segment holding one control block (the home of a sync primitive).
//!
//! Layout: a 64-byte [`Tag`] (magic, type, element size, length), a control block at offset 64
//! (a lock, an event's flag...), and for arrays the elements from offset [`DATA_OFFSET`] (one
//! page, so every element alignment up to 4096 holds).

use std::fmt;
use std::hash::{Hash, Hasher};
use std::marker::PhantomData;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

use serde::de::{self, Deserializer};
use serde::ser::{self, SerializeTuple, Serializer};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::fdpass;
use crate::sys::mem::{self, SharedMapping};

/// Where array elements start in a segment.
pub(crate) const DATA_OFFSET: usize = 4096;
pub(super) const CONTROL_OFFSET: usize = 64;
pub(super) const MAGIC: u64 = u64::from_le_bytes(*b"mprocshm");
/// Where a [`PodVec`](super::PodVec) segment keeps the token of the process whose vector uses
/// it (0: none), after the [`Tag`]; see [`cache`](super::cache).
const OWNER_OFFSET: usize = 48;
const _: () = assert!(std::mem::size_of::<Tag>() <= OWNER_OFFSET);
const _: () = assert!(OWNER_OFFSET + 8 <= CONTROL_OFFSET);

#[repr(C)]
pub(super) struct Tag {
    pub(super) magic: u64,
    pub(super) kind: u64,
    pub(super) elem_size: u64,
    pub(super) len: u64,
    /// Names the segment within a family of processes, see [`registry`].
    pub(super) id: u64,
}

/// A stable (within one binary) identifier of a type, checked when a segment is received.
pub(super) fn kind_of<T: ?Sized>() -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    std::any::type_name::<T>().hash(&mut h);
    h.finish()
}

/// A memory file and its mapping in this process.
#[derive(Debug)]
pub(crate) struct Segment {
    pub(super) fd: OwnedFd,
    pub(super) map: SharedMapping,
    id: u64,
}

/// How a shared segment is referred to in a message.
const BY_FD: u8 = 0;
const BY_ID: u8 = 1;

/// A fresh, random segment id.
fn new_id() -> u64 {
    use std::hash::BuildHasher;
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    std::collections::hash_map::RandomState::new().hash_one((std::process::id(), n))
}

impl Segment {
    /// A new segment holding a control block `C` (initialized by `init` in place) and `len`
    /// elements of `elem_size` bytes (zero).
    pub(crate) fn create<C>(
        kind: u64,
        elem_size: usize,
        len: usize,
        init: impl FnOnce(*mut C) -> Result<()>,
    ) -> Result<Self> {
        Self::create_with(kind, elem_size, len, false, init)
    }

    /// Like [`create`](Self::create); `populate` faults every page in at once (for a segment
    /// about to be filled whole). Huge pages are asked for where the kernel gives them.
    pub(crate) fn create_with<C>(
        kind: u64,
        elem_size: usize,
        len: usize,
        populate: bool,
        init: impl FnOnce(*mut C) -> Result<()>,
    ) -> Result<Self> {
        const { assert!(CONTROL_OFFSET + std::mem::size_of::<C>() <= DATA_OFFSET) };
        let bytes = len
            .checked_mul(elem_size)
            .and_then(|b| b.checked_add(DATA_OFFSET))
            .ok_or_else(|| Error::invalid_arg("len", len, "the array's size overflows usize"))?;
        let fd = mem::memfd(bytes)?;
        let map = if populate {
            SharedMapping::from_fd_prefaulted(fd.as_fd(), bytes, true)?
        } else {
            let map = SharedMapping::from_fd(fd.as_fd(), bytes, false)?;
            map.advise_huge();
            map
        };
        let id = new_id();
        let seg = Segment { fd, map, id };
        let tag = seg.map.as_ptr().cast::<Tag>();
        // SAFETY: the mapping is fresh, zeroed, page-aligned and at least DATA_OFFSET bytes; the
        // tag and control block lie inside it and no other process maps it yet.
        unsafe {
            tag.write(Tag {
                magic: MAGIC,
                kind,
                elem_size: elem_size as u64,
                len: len as u64,
                id,
            });
            init(seg.map.as_ptr().add(CONTROL_OFFSET).cast::<C>())?;
        }
        Ok(seg)
    }

    /// A new segment for a [`PodVec`](super::PodVec) of `len` elements of type `kind`, with room
    /// for `capacity` bytes of elements (at least `len * elem_size`; the cache rounds sizes up
    /// so that a segment serves vectors of nearby lengths). Its pages are faulted in (and huge
    /// where the kernel allows), since the vector is about to be copied in whole.
    pub(crate) fn create_pod(
        kind: u64,
        elem_size: usize,
        len: usize,
        capacity: usize,
    ) -> Result<Self> {
        let too_big = || Error::invalid_arg("len", len, "the array's size overflows usize");
        let need = len.checked_mul(elem_size).ok_or_else(too_big)?;
        let bytes = capacity
            .max(need)
            .checked_add(DATA_OFFSET)
            .ok_or_else(too_big)?;
        let fd = mem::memfd(bytes)?;
        let map = SharedMapping::from_fd_prefaulted(fd.as_fd(), bytes, true)?;
        let seg = Segment {
            fd,
            map,
            id: new_id(),
        };
        // SAFETY: the mapping is fresh, page-aligned and longer than DATA_OFFSET; no other
        // process maps it yet.
        unsafe {
            seg.map.as_ptr().cast::<Tag>().write(Tag {
                magic: MAGIC,
                kind,
                elem_size: elem_size as u64,
                len: len as u64,
                id: seg.id,
            })
        };
        Ok(seg)
    }

    /// Bytes of elements the segment has room for.
    pub(crate) fn capacity(&self) -> usize {
        self.map.len() - DATA_OFFSET
    }

    /// The word naming the process whose vector uses this segment (0: none): changed only with
    /// atomic operations, by every process that maps the segment.
    pub(crate) fn owner(&self) -> &std::sync::atomic::AtomicU64 {
        // SAFETY: the word lies inside the mapping (OWNER_OFFSET + 8 <= DATA_OFFSET), is 8-aligned
        // (the mapping is page-aligned), any bit pattern is a valid AtomicU64, and every process
        // accesses it only atomically. The reference borrows `self`, so the mapping outlives it.
        unsafe {
            &*self
                .map
                .as_ptr()
                .add(OWNER_OFFSET)
                .cast::<std::sync::atomic::AtomicU64>()
        }
    }

    /// Rewrites the tag for `len` elements of type `kind` (a kept segment reused for another
    /// vector); `false` (nothing changed) when they do not fit in its capacity.
    ///
    /// The caller must hold the segment: its owner word is this process's token, so no other
    /// process reads or writes it until it is sent.
    pub(crate) fn retag(&self, kind: u64, elem_size: usize, len: usize) -> bool {
        if len
            .checked_mul(elem_size)
            .is_none_or(|b| b > self.capacity())
        {
            return false;
        }
        let tag = self.map.as_ptr().cast::<Tag>();
        // SAFETY: the tag lies at the start of the mapping; the caller holds the segment, so no
        // other process touches it while it is written.
        unsafe {
            (*tag).kind = kind;
            (*tag).elem_size = elem_size as u64;
            (*tag).len = len as u64;
        }
        true
    }

    /// Maps a segment received as a descriptor, checking that it was made by [`create`](Self::create) with the
    /// same `kind` and `elem_size`. Returns it and its length in elements.
    /// With `populate`, every page is mapped at once (for a receiver that reads it all), and huge
    /// pages are asked for where the kernel gives them. The file may be larger than the
    /// elements (a segment reused for a shorter vector).
    pub(crate) fn open(
        fd: OwnedFd,
        kind: u64,
        elem_size: usize,
        populate: bool,
    ) -> Result<(Self, usize)> {
        let bad = |why: &str| Error::InvalidArgument {
            name: "descriptor",
            value: "received segment".into(),
            reason: why.into(),
        };
        if !mem::is_sealed_memfd(fd.as_fd()) {
            return Err(bad("not a multiproc shared-memory file"));
        }
        let size = mem::fd_size(fd.as_fd())?;
        if size < DATA_OFFSET {
            return Err(bad("too small to be a multiproc segment"));
        }
        let map = if populate {
            SharedMapping::from_fd_prefaulted(fd.as_fd(), size, false)?
        } else {
            SharedMapping::from_fd(fd.as_fd(), size, false)?
        };
        // SAFETY: the mapping is at least DATA_OFFSET bytes and page-aligned; the tag is plain
        // integers written once before the segment was shared.
        let tag = unsafe { map.as_ptr().cast::<Tag>().read() };
        if tag.magic != MAGIC || tag.kind != kind || tag.elem_size != elem_size as u64 {
            return Err(bad("it holds another type"));
        }
        let len = usize::try_from(tag.len).map_err(|_| bad("bad length"))?;
        if len
            .checked_mul(elem_size)
            .and_then(|b| b.checked_add(DATA_OFFSET))
            .is_none_or(|need| need > size)
        {
            return Err(bad("its length does not fit in its size"));
        }
        Ok((
            Segment {
                fd,
                map,
                id: tag.id,
            },
            len,
        ))
    }

    /// Checks that the segment holds `kind` elements of `elem_size` bytes; returns it and its
    /// length.
    pub(crate) fn check(self, kind: u64, elem_size: usize) -> Result<(Self, usize)> {
        let (k, size, len) = self.tag();
        if k != kind || size != elem_size as u64 {
            return Err(Error::invalid_arg(
                "descriptor",
                "received segment",
                "it holds another type",
            ));
        }
        let len = usize::try_from(len)
            .ok()
            .filter(|&n| {
                n.checked_mul(elem_size)
                    .is_some_and(|b| b <= self.capacity())
            })
            .ok_or_else(|| Error::invalid_arg("descriptor", "received segment", "bad length"))?;
        Ok((self, len))
    }

    /// Shares the segment among the handles of this process, and makes it findable by id.
    pub(crate) fn into_shared(self) -> Arc<Segment> {
        let seg = Arc::new(self);
        registry::register(&seg);
        seg
    }

    /// The kind, element size and length in the tag.
    fn tag(&self) -> (u64, u64, u64) {
        // SAFETY: every segment starts with a tag written before it was first shared.
        let t = unsafe { self.map.as_ptr().cast::<Tag>().read() };
        (t.kind, t.elem_size, t.len)
    }

    /// The control block.
    ///
    /// # Safety
    ///
    /// `C` must be the type the segment was created with (checked by `kind` in [`open`](Self::open)).
    pub(crate) unsafe fn control<C>(&self) -> &C {
        // SAFETY: per the contract the control block at CONTROL_OFFSET is an initialized `C`
        // (its shared fields are atomics or process-shared mutexes), living as long as `self`.
        unsafe { &*self.map.as_ptr().add(CONTROL_OFFSET).cast::<C>() }
    }

    /// The first element.
    pub(crate) fn data(&self) -> *mut u8 {
        // SAFETY: every segment is at least DATA_OFFSET bytes long.
        unsafe { self.map.as_ptr().add(DATA_OFFSET) }
    }

    /// The memory file.
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Serializes a reference to this segment: through a channel that carries descriptors (a
    /// [`Pipe`](crate::pipe()), a [`Queue`](crate::Queue)), its descriptor goes with the message;
    /// elsewhere its id, which only a process that already maps it can resolve.
    pub(crate) fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut t = s.serialize_tuple(2)?;
        if fdpass::can_attach() {
            let fd = self.fd.try_clone().map_err(ser::Error::custom)?;
            let index = fdpass::attach(fd).map_err(ser::Error::custom)?;
            t.serialize_element(&BY_FD)?;
            t.serialize_element(&u64::from(index))?;
        } else {
            t.serialize_element(&BY_ID)?;
            t.serialize_element(&self.id)?;
        }
        t.end()
    }

    /// Deserializes a reference written by [`serialize`](Self::serialize).
    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
        kind: u64,
        elem_size: usize,
    ) -> Result<(Arc<Self>, usize), D::Error> {
        let (how, value) = <(u8, u64)>::deserialize(d)?;
        match how {
            BY_FD => {
                let index = u32::try_from(value).map_err(de::Error::custom)?;
                let fd = fdpass::take(index).map_err(de::Error::custom)?;
                let (seg, len) =
                    Segment::open(fd, kind, elem_size, false).map_err(de::Error::custom)?;
                Ok((seg.into_shared(), len))
            }
            BY_ID => {
                let seg = registry::find(value).ok_or_else(|| {
                    de::Error::custom(
                        "this shared object is not mapped in the receiving process: make it \
                         before forking the receiver, or send it through a Pipe",
                    )
                })?;
                let (k, size, len) = seg.tag();
                if k != kind || size != elem_size as u64 {
                    return Err(de::Error::custom("the shared object holds another type"));
                }
                let len = usize::try_from(len).map_err(de::Error::custom)?;
                Ok((seg, len))
            }
            _ => Err(de::Error::custom("bad shared-object reference")),
        }
    }
}

/// The shared segments this process maps, by id, so that a reference can travel by id through a
/// channel that carries no descriptors to a process that already maps the segment:
/// one forked after it was made (the registry and the mappings are inherited), or one that
/// received it earlier.
mod registry {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex, Weak};

    use super::Segment;

    static REGISTRY: Mutex<Option<HashMap<u64, Weak<Segment>>>> = Mutex::new(None);

    /// Makes `seg` findable by its id (dropping entries of segments that are gone).
    pub(super) fn register(seg: &Arc<Segment>) {
        let mut reg = REGISTRY.lock().unwrap_or_else(|e| e.into_inner());
        let map = reg.get_or_insert_with(HashMap::new);
        map.retain(|_, w| w.strong_count() > 0);
        map.entry(seg.id).or_insert_with(|| Arc::downgrade(seg));
    }

    /// The live segment with this id, if this process maps it.
    pub(super) fn find(id: u64) -> Option<Arc<Segment>> {
        let reg = REGISTRY.lock().unwrap_or_else(|e| e.into_inner());
        reg.as_ref()?.get(&id)?.upgrade()
    }
}

/// A segment holding one control block `C` and no elements: the home of a sync primitive.
pub(crate) struct SharedCell<C> {
    seg: Arc<Segment>,
    _c: PhantomData<C>,
}

impl<C> Clone for SharedCell<C> {
    fn clone(&self) -> Self {
        SharedCell {
            seg: Arc::clone(&self.seg),
            _c: PhantomData,
        }
    }
}

impl<C> fmt::Debug for SharedCell<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedCell").finish_non_exhaustive()
    }
}

impl<C> SharedCell<C> {
    /// A new cell; `init` initializes the (zeroed) control block in place.
    pub(crate) fn new(init: impl FnOnce(*mut C) -> Result<()>) -> Result<Self> {
        Ok(SharedCell {
            seg: Segment::create(kind_of::<C>(), 1, 0, init)?.into_shared(),
            _c: PhantomData,
        })
    }

    /// The control block.
    pub(crate) fn get(&self) -> &C {
        // SAFETY: the segment was created (or checked on open) with kind `C`.
        unsafe { self.seg.control::<C>() }
    }
}

impl<C> Serialize for SharedCell<C> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if fdpass::inline_only() {
            // An MPI job: the receiver shares no memory with us.
            let name =
                "a shared-memory sync object (Lock, RLock, Condition, Semaphore, Event, Barrier)";
            return Err(ser::Error::custom(fdpass::refuse_inline(name)));
        }
        self.seg.serialize(s)
    }
}

impl<'de, C> Deserialize<'de> for SharedCell<C> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let (seg, _) = Segment::deserialize(d, kind_of::<C>(), 1)?;
        Ok(SharedCell {
            seg,
            _c: PhantomData,
        })
    }
}

//! Shared memory: [`SharedArray`], [`SharedValue`], [`PodVec`], and the memory-file segments the
//! process-shared sync primitives live in.
//!
//! Every segment is a memory file (`memfd_create`, close-on-exec, sealed against resizing)
//! mapped `MAP_SHARED`. A process forked after it was made inherits the mapping; a process that
//! is already running receives the descriptor through a [`Pipe`](crate::pipe()) and maps it. The
//! memory has no name anywhere (nothing in `/dev/shm`) and returns to the kernel when the last
//! descriptor and mapping are gone, crashes included.
//!
//! Layout of a segment: a 64-byte [`Tag`] (magic, type, element size, length), a control block
//! at offset 64 (a lock, an event's flag...), and for arrays the elements from offset
//! [`DATA_OFFSET`] (one page, so every element alignment up to 4096 holds).

use std::fmt;
use std::hash::{Hash, Hasher};
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use serde::de::{self, DeserializeOwned, Deserializer, SeqAccess, Visitor};
use serde::ser::{self, SerializeTuple, Serializer};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::fdpass;
use crate::sync::{AcquireError, AcquireResult, acquire_robust};
use crate::sys::futex::RobustMutex;
use crate::sys::mem::{self, SharedMapping};

/// Plain old data: a `Copy` type with no padding, no pointers, and for which every bit pattern
/// is a valid value, so that its bytes can be shared with, and written by, other processes.
///
/// Implemented for the integer and float types, `bool` excluded, and arrays of them.
///
/// # Safety
///
/// Implement it only for a `#[repr(C)]` or `#[repr(transparent)]` type whose fields are all
/// `Pod`, with no padding bytes, no references or pointers, and no invariant on its bit pattern
/// (every bit pattern must be a valid value). This is the contract of `bytemuck::Pod`; the crate
/// defines its own trait to avoid the dependency.
///
/// # Examples
///
/// ```
/// #[derive(Clone, Copy)]
/// #[repr(C)]
/// struct Point { x: f64, y: f64 }
/// // SAFETY: two f64, no padding, any bits are a valid Point.
/// unsafe impl multiproc::Pod for Point {}
///
/// let a = multiproc::SharedArray::<Point>::new(3)?;
/// assert_eq!(a.to_vec()?[2].y, 0.0);
/// # Ok::<(), multiproc::Error>(())
/// ```
pub unsafe trait Pod: Copy + Send + Sync + 'static {}

macro_rules! pod {
    ($($t:ty)*) => { $(
        // SAFETY: a primitive number: no padding, every bit pattern is a value.
        unsafe impl Pod for $t {}
    )* };
}
pod!(u8 u16 u32 u64 u128 usize i8 i16 i32 i64 i128 isize f32 f64);
// SAFETY: an array of Pod has no padding between elements and no invariant.
unsafe impl<T: Pod, const N: usize> Pod for [T; N] {}

/// The bytes of a slice of `Pod`.
pub(crate) fn pod_bytes<T: Pod>(s: &[T]) -> &[u8] {
    // SAFETY: `T: Pod` has no padding, so every byte of the slice is initialized; u8 has
    // alignment 1 and the length covers exactly the slice.
    unsafe { std::slice::from_raw_parts(s.as_ptr().cast::<u8>(), std::mem::size_of_val(s)) }
}

/// Where array elements start in a segment.
pub(crate) const DATA_OFFSET: usize = 4096;
const CONTROL_OFFSET: usize = 64;
const MAGIC: u64 = u64::from_le_bytes(*b"mprocshm");

#[repr(C)]
struct Tag {
    magic: u64,
    kind: u64,
    elem_size: u64,
    len: u64,
}

/// A stable (within one binary) identifier of a type, checked when a segment is received.
fn kind_of<T: ?Sized>() -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    std::any::type_name::<T>().hash(&mut h);
    h.finish()
}

/// A memory file and its mapping in this process.
#[derive(Debug)]
pub(crate) struct Segment {
    fd: OwnedFd,
    map: SharedMapping,
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
    /// about to be filled whole).
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
        let map = SharedMapping::from_fd(fd.as_fd(), bytes, populate)?;
        let seg = Segment { fd, map };
        let tag = seg.map.as_ptr().cast::<Tag>();
        // SAFETY: the mapping is fresh, zeroed, page-aligned and at least DATA_OFFSET bytes; the
        // tag and control block lie inside it and no other process maps it yet.
        unsafe {
            tag.write(Tag {
                magic: MAGIC,
                kind,
                elem_size: elem_size as u64,
                len: len as u64,
            });
            init(seg.map.as_ptr().add(CONTROL_OFFSET).cast::<C>())?;
        }
        Ok(seg)
    }

    /// Maps a segment received as a descriptor, checking that it was made by [`create`] with the
    /// same `kind` and `elem_size`. Returns it and its length in elements.
    /// With `populate`, every page is mapped at once (for a receiver that reads it all).
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
        let map = SharedMapping::from_fd(fd.as_fd(), size, populate)?;
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
            != Some(size)
        {
            return Err(bad("its size does not match its length"));
        }
        Ok((Segment { fd, map }, len))
    }

    /// The control block.
    ///
    /// # Safety
    ///
    /// `C` must be the type the segment was created with (checked by `kind` in [`open`]).
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

    /// Serializes a reference to this segment: its descriptor goes with the message.
    pub(crate) fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let fd = self.fd.try_clone().map_err(ser::Error::custom)?;
        let index = fdpass::attach(fd).map_err(ser::Error::custom)?;
        index.serialize(s)
    }

    /// Deserializes a reference written by [`serialize`](Self::serialize).
    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
        kind: u64,
        elem_size: usize,
    ) -> Result<(Self, usize), D::Error> {
        let index = u32::deserialize(d)?;
        let fd = fdpass::take(index).map_err(de::Error::custom)?;
        Segment::open(fd, kind, elem_size, false).map_err(de::Error::custom)
    }
}

/// The control block of a [`SharedArray`] and a [`SharedValue`].
#[repr(C)]
struct ArrayControl {
    lock: RobustMutex,
}

fn init_array_control(c: *mut ArrayControl) -> Result<()> {
    // SAFETY: `c` points into a fresh, unshared segment (see `Segment::create`).
    unsafe { RobustMutex::init(std::ptr::addr_of_mut!((*c).lock)) }
}

/// A fixed-length array in memory shared by every process that holds it: Python's
/// `multiprocessing.Array` (with its lock) or `shared_memory.SharedMemory` (without).
///
/// Make it before forking and every child has it (a clone is the same memory); or send it through
/// a [`Pipe`](crate::pipe()) to a process already running: its descriptor travels, the data does
/// not (a 1 GiB array is handed over as fast as a 1 KiB one).
///
/// # Access rules
///
/// Other processes may write the memory at any time, so the array does not deref to a slice. It
/// offers two ways in:
/// - **Locked** (safe): [`lock`](SharedArray::lock) takes the array's own process-shared robust
///   lock and gives a guard that derefs to `&mut [T]`; [`to_vec`](SharedArray::to_vec),
///   [`copy_from_slice`](SharedArray::copy_from_slice), [`get`](SharedArray::get) and
///   [`set`](SharedArray::set) lock around one copy. Sound as long as every writer goes through
///   the lock, like Python's `Array(lock=True)`.
/// - **Unlocked** (`unsafe`): [`as_slice`](SharedArray::as_slice) and
///   [`as_mut_slice`](SharedArray::as_mut_slice) borrow the memory directly, for the fast
///   patterns: workers writing disjoint chunks, or many readers of data nobody writes any more.
///   The caller promises what the compiler cannot check across processes.
///
/// # Examples
///
/// ```
/// use multiproc::{Process, SharedArray};
///
/// let squares = SharedArray::<u64>::new(8)?;
/// let workers: Vec<Process> = (0..2)
///     .map(|w| {
///         let squares = squares.clone();
///         Process::new(move || {
///             let mut s = squares.lock().unwrap();
///             for i in (w..8).step_by(2) {
///                 s[i] = (i * i) as u64;
///             }
///         })
///     })
///     .collect();
/// for w in &workers {
///     w.start()?;
/// }
/// for w in &workers {
///     w.join()?;
/// }
/// assert_eq!(squares.to_vec()?, [0, 1, 4, 9, 16, 25, 36, 49]);
/// # Ok::<(), multiproc::Error>(())
/// ```
pub struct SharedArray<T: Pod> {
    seg: Arc<Segment>,
    len: usize,
    _t: PhantomData<T>,
}

impl<T: Pod> Clone for SharedArray<T> {
    fn clone(&self) -> Self {
        SharedArray {
            seg: Arc::clone(&self.seg),
            len: self.len,
            _t: PhantomData,
        }
    }
}

impl<T: Pod> fmt::Debug for SharedArray<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedArray")
            .field("type", &std::any::type_name::<T>())
            .field("len", &self.len)
            .finish()
    }
}

impl<T: Pod> SharedArray<T> {
    /// A new array of `len` zero elements.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] if the memory file cannot be made or mapped (out of memory, descriptor
    /// limit); [`Error::InvalidArgument`] if the size overflows.
    ///
    /// # Examples
    ///
    /// ```
    /// let a = multiproc::SharedArray::<f64>::new(1000)?;
    /// assert_eq!(a.len(), 1000);
    /// assert!(a.to_vec()?.iter().all(|&x| x == 0.0));
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    pub fn new(len: usize) -> Result<Self> {
        Self::make(len, false)
    }

    /// `populate`: fault every page in at once, for an array about to be filled whole.
    fn make(len: usize, populate: bool) -> Result<Self> {
        const { assert!(std::mem::align_of::<T>() <= DATA_OFFSET) };
        let seg = Segment::create_with(
            kind_of::<T>(),
            std::mem::size_of::<T>(),
            len,
            populate,
            init_array_control,
        )?;
        Ok(SharedArray {
            seg: Arc::new(seg),
            len,
            _t: PhantomData,
        })
    }

    /// A new array holding a copy of `items`.
    ///
    /// # Errors
    ///
    /// As for [`new`](SharedArray::new).
    ///
    /// # Examples
    ///
    /// ```
    /// let a = multiproc::SharedArray::from_slice(&[1u8, 2, 3])?;
    /// assert_eq!(a.get(1)?, 2);
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    pub fn from_slice(items: &[T]) -> Result<Self> {
        let a = Self::make(items.len(), true)?;
        // SAFETY: nobody else has the new array yet.
        unsafe { a.as_mut_slice() }.copy_from_slice(items);
        Ok(a)
    }

    pub(crate) fn from_segment(seg: Segment, len: usize) -> Self {
        SharedArray {
            seg: Arc::new(seg),
            len,
            _t: PhantomData,
        }
    }

    /// The number of elements.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the array has no elements.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn control(&self) -> &ArrayControl {
        // SAFETY: array segments are created with an `ArrayControl` (checked by kind on open).
        unsafe { self.seg.control::<ArrayControl>() }
    }

    /// Takes the array's lock, blocking, and gives the elements.
    ///
    /// # Errors
    ///
    /// [`AcquireError::OwnerDied`] (holding the guard: the lock is yours) when a process died
    /// while holding it, so the elements may be half-written; convert it with `?` to
    /// [`Error::OwnerDied`] (which releases the lock), or keep the guard with
    /// [`AcquireError::recover`].
    ///
    /// # Examples
    ///
    /// ```
    /// let a = multiproc::SharedArray::<i32>::new(2)?;
    /// a.lock()?[1] = 7;
    /// assert_eq!(a.to_vec()?, [0, 7]);
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    pub fn lock(&self) -> AcquireResult<ArrayGuard<'_, T>> {
        acquire_robust(&self.control().lock, None, || self.guard())
    }

    /// Like [`lock`](SharedArray::lock), waiting at most `timeout`.
    ///
    /// # Errors
    ///
    /// [`AcquireError::Timeout`] when the time runs out; otherwise as for `lock`.
    pub fn lock_timeout(&self, timeout: Duration) -> AcquireResult<ArrayGuard<'_, T>> {
        acquire_robust(&self.control().lock, Some(timeout), || self.guard())
    }

    fn guard(&self) -> ArrayGuard<'_, T> {
        ArrayGuard {
            array: self,
            _not_send: PhantomData,
        }
    }

    /// A copy of the elements, taken under the lock.
    ///
    /// # Errors
    ///
    /// [`Error::OwnerDied`] when a process died holding the lock (see [`lock`](Self::lock)).
    pub fn to_vec(&self) -> Result<Vec<T>> {
        Ok(self.lock()?.to_vec())
    }

    /// Overwrites the elements with `items`, under the lock.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] if the lengths differ; [`Error::OwnerDied`] as for
    /// [`to_vec`](Self::to_vec).
    pub fn copy_from_slice(&self, items: &[T]) -> Result<()> {
        if items.len() != self.len {
            return Err(Error::invalid_arg(
                "items",
                items.len(),
                format!("the array has {} elements", self.len),
            ));
        }
        self.lock()?.copy_from_slice(items);
        Ok(())
    }

    /// The element at `index`, read under the lock.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] out of bounds; [`Error::OwnerDied`] as for
    /// [`to_vec`](Self::to_vec).
    pub fn get(&self, index: usize) -> Result<T> {
        self.check(index)?;
        Ok(self.lock()?[index])
    }

    /// Writes the element at `index`, under the lock.
    ///
    /// # Errors
    ///
    /// As for [`get`](Self::get).
    pub fn set(&self, index: usize, value: T) -> Result<()> {
        self.check(index)?;
        self.lock()?[index] = value;
        Ok(())
    }

    fn check(&self, index: usize) -> Result<()> {
        if index >= self.len {
            return Err(Error::invalid_arg(
                "index",
                index,
                format!("the array has {} elements", self.len),
            ));
        }
        Ok(())
    }

    /// A raw pointer to the first element, valid as long as this handle (or a clone) lives.
    pub fn as_ptr(&self) -> *mut T {
        self.seg.data().cast()
    }

    /// The elements, borrowed without the lock.
    ///
    /// # Safety
    ///
    /// While the slice lives, no thread or process may write these elements (through any handle,
    /// lock or not). Typical sound use: the parent fills the array before forking or handing it
    /// over, and then everybody only reads.
    ///
    /// # Examples
    ///
    /// ```
    /// let a = multiproc::SharedArray::from_slice(&[1.0f64, 2.0])?;
    /// // SAFETY: nobody writes `a` any more.
    /// let s = unsafe { a.as_slice() };
    /// assert_eq!(s.iter().sum::<f64>(), 3.0);
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    pub unsafe fn as_slice(&self) -> &[T] {
        // SAFETY: the data area holds `len` initialized Pod elements, aligned (page-aligned
        // start); the caller rules out concurrent writers.
        unsafe { std::slice::from_raw_parts(self.as_ptr(), self.len) }
    }

    /// The elements, borrowed mutably without the lock.
    ///
    /// # Safety
    ///
    /// While the slice lives, no other thread or process may read or write these elements, for
    /// example because each worker writes its own disjoint chunk (borrow only that chunk: use
    /// [`as_ptr`](Self::as_ptr) or split the slice at once) and the reader waits for all of them.
    ///
    /// # Examples
    ///
    /// ```
    /// let a = multiproc::SharedArray::<u32>::new(4)?;
    /// // SAFETY: no other process has `a` yet.
    /// unsafe { a.as_mut_slice() }.fill(5);
    /// assert_eq!(a.to_vec()?, [5; 4]);
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn as_mut_slice(&self) -> &mut [T] {
        // SAFETY: as in `as_slice`; the caller rules out every other access.
        unsafe { std::slice::from_raw_parts_mut(self.as_ptr(), self.len) }
    }
}

impl<T: Pod> AsFd for SharedArray<T> {
    /// The memory file holding the array (for a transport of your own; [`Pipe`](crate::pipe())
    /// passes it for you).
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.seg.fd()
    }
}

/// Sending a `SharedArray` sends its descriptor, not its data: only through a
/// [`Pipe`](crate::pipe()) (a [`Queue`](crate::Queue) fails to encode it; share the array by
/// fork instead).
impl<T: Pod> Serialize for SharedArray<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.seg.serialize(s)
    }
}

impl<'de, T: Pod> Deserialize<'de> for SharedArray<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let (seg, len) = Segment::deserialize(d, kind_of::<T>(), std::mem::size_of::<T>())?;
        Ok(SharedArray::from_segment(seg, len))
    }
}

/// The locked elements of a [`SharedArray`]; the lock is released on drop.
///
/// It is not `Send`: the thread that locked must unlock.
pub struct ArrayGuard<'a, T: Pod> {
    array: &'a SharedArray<T>,
    _not_send: PhantomData<*mut ()>,
}

impl<T: Pod> fmt::Debug for ArrayGuard<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ArrayGuard")
            .field("len", &self.array.len)
            .finish()
    }
}

impl<T: Pod> Deref for ArrayGuard<'_, T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        // SAFETY: we hold the array's lock, and every safe writer takes it.
        unsafe { self.array.as_slice() }
    }
}

impl<T: Pod> DerefMut for ArrayGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut [T] {
        // SAFETY: as above; the `&mut self` borrow makes this the only slice from this guard.
        unsafe { self.array.as_mut_slice() }
    }
}

impl<T: Pod> Drop for ArrayGuard<'_, T> {
    fn drop(&mut self) {
        self.array.control().lock.unlock();
    }
}

/// One value in shared memory: Python's `multiprocessing.Value`.
///
/// [`load`](SharedValue::load) and [`store`](SharedValue::store) are each atomic (they take the
/// value's own lock), but `v.store(v.load() + 1)` is not: use [`lock`](SharedValue::lock) (or a
/// separate [`Lock`](crate::Lock)) for read-modify-write.
///
/// # Examples
///
/// ```
/// use multiproc::{Process, SharedValue};
///
/// let counter = SharedValue::new(0u64)?;
/// let c = counter.clone();
/// let p = Process::new(move || {
///     for _ in 0..1000 {
///         *c.lock().unwrap() += 1;
///     }
/// });
/// p.start()?;
/// for _ in 0..1000 {
///     *counter.lock()? += 1;
/// }
/// p.join()?;
/// assert_eq!(counter.load()?, 2000);
/// # Ok::<(), multiproc::Error>(())
/// ```
pub struct SharedValue<T: Pod> {
    array: SharedArray<T>,
}

impl<T: Pod> Clone for SharedValue<T> {
    fn clone(&self) -> Self {
        SharedValue {
            array: self.array.clone(),
        }
    }
}

impl<T: Pod + fmt::Debug> fmt::Debug for SharedValue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedValue")
            .field("value", &self.load().ok())
            .finish()
    }
}

impl<T: Pod> SharedValue<T> {
    /// A new shared value.
    ///
    /// # Errors
    ///
    /// As for [`SharedArray::new`].
    pub fn new(value: T) -> Result<Self> {
        Ok(SharedValue {
            array: SharedArray::from_slice(&[value])?,
        })
    }

    /// The value, read under its lock.
    ///
    /// # Errors
    ///
    /// [`Error::OwnerDied`] when a process died holding the lock.
    pub fn load(&self) -> Result<T> {
        Ok(*self.lock()?)
    }

    /// Replaces the value, under its lock.
    ///
    /// # Errors
    ///
    /// As for [`load`](Self::load).
    pub fn store(&self, value: T) -> Result<()> {
        *self.lock()? = value;
        Ok(())
    }

    /// Takes the value's lock and gives the value (Python's `with v.get_lock(): v.value += 1`).
    ///
    /// # Errors
    ///
    /// As for [`SharedArray::lock`].
    pub fn lock(&self) -> AcquireResult<ValueGuard<'_, T>> {
        match self.array.lock() {
            Ok(g) => Ok(ValueGuard(g)),
            Err(e) => Err(e.map(ValueGuard)),
        }
    }
}

/// Sent like a [`SharedArray`]: by descriptor, through a [`Pipe`](crate::pipe()).
impl<T: Pod> Serialize for SharedValue<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.array.serialize(s)
    }
}

impl<'de, T: Pod> Deserialize<'de> for SharedValue<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let array = SharedArray::<T>::deserialize(d)?;
        if array.len() != 1 {
            return Err(de::Error::custom("expected a SharedValue, got an array"));
        }
        Ok(SharedValue { array })
    }
}

/// The locked value of a [`SharedValue`]; the lock is released on drop.
pub struct ValueGuard<'a, T: Pod>(ArrayGuard<'a, T>);

impl<T: Pod> fmt::Debug for ValueGuard<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ValueGuard")
    }
}

impl<T: Pod> Deref for ValueGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0[0]
    }
}

impl<T: Pod> DerefMut for ValueGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.0[0]
    }
}

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

    use super::{DATA_OFFSET, Segment, Tag};
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
            let Segment { fd, map } = seg;
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
            seg: Arc::new(Segment::create(kind_of::<C>(), 1, 0, init)?),
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
        self.seg.serialize(s)
    }
}

impl<'de, C> Deserialize<'de> for SharedCell<C> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let (seg, _) = Segment::deserialize(d, kind_of::<C>(), 1)?;
        Ok(SharedCell {
            seg: Arc::new(seg),
            _c: PhantomData,
        })
    }
}

impl<G> AcquireError<G> {
    pub(crate) fn map<H>(self, f: impl FnOnce(G) -> H) -> AcquireError<H> {
        match self {
            AcquireError::OwnerDied(g) => AcquireError::OwnerDied(f(g)),
            AcquireError::Timeout(d) => AcquireError::Timeout(d),
            AcquireError::WouldBlock => AcquireError::WouldBlock,
            AcquireError::Failed(e) => AcquireError::Failed(e),
        }
    }
}

#[allow(dead_code)]
fn _assert_bounds() {
    fn send_sync<X: Send + Sync>() {}
    send_sync::<SharedArray<f64>>();
    send_sync::<PodVec<f64>>();
    fn owned<X: DeserializeOwned>() {}
    owned::<SharedArray<f64>>();
}

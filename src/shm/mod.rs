//! Shared memory: [`SharedArray`], [`SharedValue`], [`PodVec`], and the memory-file segments the
//! process-shared sync primitives live in.
//!
//! Every segment is a memory file (`memfd_create`, close-on-exec, sealed against resizing)
//! mapped `MAP_SHARED`. A process forked after it was made inherits the mapping; a process that
//! is already running receives the descriptor through a [`Pipe`](crate::pipe()) and maps it. The
//! memory has no name anywhere (nothing in `/dev/shm`) and returns to the kernel when the last
//! descriptor and mapping are gone, crashes included.

mod cache;
#[cfg(feature = "mpi")]
pub(crate) mod mpi_att;
mod podvec;
mod segment;

use std::fmt;
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;
use std::time::Duration;

use serde::de::{self, Deserializer};
use serde::ser::Serializer;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::sync::{AcquireResult, acquire_robust};
use crate::sys::futex::RobustMutex;

pub use cache::KeptStats;
pub use podvec::PodVec;
pub(crate) use segment::SharedCell;
use segment::kind_of;
use segment::{DATA_OFFSET, Segment};

/// Plain old data, what shared memory holds: `bytemuck`'s [`Pod`](bytemuck::Pod) (a `Copy` type
/// with no padding, no pointers, for which every bit pattern is a valid value), re-exported with
/// [`Zeroable`](bytemuck::Zeroable) and both derives.
///
/// The numbers (`bool` excluded), arrays of them such as `[f64; 3]`, and any `#[repr(C)]` struct
/// that derives `Pod` and `Zeroable` go into a [`SharedArray`], a [`SharedValue`] and a
/// [`PodVec`]. The derives name the `bytemuck` crate; a crate that does not depend on it itself
/// points them at multiproc's re-export with `#[bytemuck(crate = "multiproc::bytemuck")]`.
///
/// # Examples
///
/// ```
/// use multiproc::{Pod, SharedArray, Zeroable};
///
/// #[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
/// #[bytemuck(crate = "multiproc::bytemuck")]
/// #[repr(C)]
/// struct Point { x: f64, y: f64 }
///
/// let a = SharedArray::<Point>::new(3)?;
/// a.lock()?[2] = Point { x: 1.0, y: 2.0 };
/// assert_eq!(a.to_vec()?[2].y, 2.0);
///
/// let b = SharedArray::<[f64; 3]>::new(2)?; // arrays are Pod too
/// assert_eq!(b.to_vec()?, vec![[0.0; 3]; 2]);
/// # Ok::<(), multiproc::Error>(())
/// ```
pub use bytemuck::{Pod, Zeroable};

/// The bytes of a slice of `Pod`.
pub(crate) fn pod_bytes<T: Pod>(s: &[T]) -> &[u8] {
    bytemuck::cast_slice(s)
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
/// # Sending
///
/// A `SharedArray` in a message is a reference, never a copy of the data:
/// - through a [`Pipe`](crate::pipe()) or a [`Queue`](crate::Queue) (on the queue's side
///   channel) its descriptor travels, so any receiver gets it;
/// - through a channel that carries no descriptors only its id travels, which resolves in a
///   process that already maps the array: one forked after the array was made, or one that
///   received it before. Elsewhere decoding fails with [`Error::Codec`].
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
            seg: seg.into_shared(),
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

    pub(crate) fn from_segment(seg: Arc<Segment>, len: usize) -> Self {
        SharedArray {
            seg,
            len,
            _t: PhantomData,
        }
    }

    /// The number of elements.
    ///
    /// # Examples
    ///
    /// ```
    /// let a = multiproc::SharedArray::<u8>::new(5)?;
    /// assert_eq!(a.len(), 5);
    /// assert!(!a.is_empty());
    /// # Ok::<(), multiproc::Error>(())
    /// ```
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
    /// [`AcquireError::OwnerDied`](crate::AcquireError::OwnerDied) (holding the guard: the lock is
    /// yours) when a process died
    /// while holding it, so the elements may be half-written; convert it with `?` to
    /// [`Error::OwnerDied`] (which releases the lock), or keep the guard with
    /// [`AcquireError::recover`](crate::AcquireError::recover).
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
    /// [`AcquireError::Timeout`](crate::AcquireError::Timeout) when the time runs out; otherwise as
    /// for `lock`.
    ///
    /// # Examples
    ///
    /// ```
    /// let a = multiproc::SharedArray::<u8>::new(3)?;
    /// let mut g = a.lock_timeout(std::time::Duration::from_secs(1))?;
    /// g[0] = 1;
    /// drop(g);
    /// assert_eq!(a.get(0)?, 1);
    /// # Ok::<(), multiproc::Error>(())
    /// ```
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
    ///
    /// # Examples
    ///
    /// ```
    /// let a = multiproc::SharedArray::from_slice(&[3i8, 4])?;
    /// assert_eq!(a.to_vec()?, [3, 4]);
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    pub fn to_vec(&self) -> Result<Vec<T>> {
        Ok(self.lock()?.to_vec())
    }

    /// Overwrites the elements with `items`, under the lock.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] if the lengths differ; [`Error::OwnerDied`] as for
    /// [`to_vec`](Self::to_vec).
    ///
    /// # Examples
    ///
    /// ```
    /// let a = multiproc::SharedArray::<u16>::new(2)?;
    /// a.copy_from_slice(&[5, 6])?;
    /// assert_eq!(a.to_vec()?, [5, 6]);
    /// assert!(a.copy_from_slice(&[1]).is_err());
    /// # Ok::<(), multiproc::Error>(())
    /// ```
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
    ///
    /// # Examples
    ///
    /// ```
    /// let a = multiproc::SharedArray::from_slice(&[1.5f32, 2.5])?;
    /// assert_eq!(a.get(1)?, 2.5);
    /// assert!(a.get(2).is_err());
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    pub fn get(&self, index: usize) -> Result<T> {
        self.check(index)?;
        Ok(self.lock()?[index])
    }

    /// Writes the element at `index`, under the lock.
    ///
    /// # Errors
    ///
    /// As for [`get`](Self::get).
    ///
    /// # Examples
    ///
    /// ```
    /// let a = multiproc::SharedArray::<u64>::new(2)?;
    /// a.set(1, 42)?;
    /// assert_eq!(a.to_vec()?, [0, 42]);
    /// # Ok::<(), multiproc::Error>(())
    /// ```
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
    ///
    /// # Examples
    ///
    /// ```
    /// let a = multiproc::SharedArray::<u32>::new(1)?;
    /// // SAFETY: nobody else uses `a`; the pointer is in bounds.
    /// unsafe { a.as_ptr().write(9) };
    /// assert_eq!(a.get(0)?, 9);
    /// # Ok::<(), multiproc::Error>(())
    /// ```
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

/// Sending a `SharedArray` sends a reference to the same memory, not its data: see
/// [Sending](SharedArray#sending).
impl<T: Pod> Serialize for SharedArray<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if crate::fdpass::inline_only() {
            // An MPI job: the receiver shares no memory with us.
            let name = std::any::type_name::<SharedArray<T>>();
            return Err(serde::ser::Error::custom(crate::fdpass::refuse_inline(
                name,
            )));
        }
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
        // Never blocks (the caller may hold the lock): the value only when the lock is free.
        let value = self.array.lock_timeout(Duration::ZERO).ok().map(|g| g[0]);
        f.debug_struct("SharedValue")
            .field("value", &value)
            .finish()
    }
}

impl<T: Pod> SharedValue<T> {
    /// A new shared value.
    ///
    /// # Errors
    ///
    /// As for [`SharedArray::new`].
    ///
    /// # Examples
    ///
    /// ```
    /// let v = multiproc::SharedValue::new(1.5f64)?;
    /// assert_eq!(v.load()?, 1.5);
    /// # Ok::<(), multiproc::Error>(())
    /// ```
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
    ///
    /// # Examples
    ///
    /// ```
    /// let v = multiproc::SharedValue::new(7u32)?;
    /// assert_eq!(v.load()?, 7);
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    pub fn load(&self) -> Result<T> {
        Ok(*self.lock()?)
    }

    /// Replaces the value, under its lock.
    ///
    /// # Errors
    ///
    /// As for [`load`](Self::load).
    ///
    /// # Examples
    ///
    /// ```
    /// let v = multiproc::SharedValue::new(0i32)?;
    /// v.store(-3)?;
    /// assert_eq!(v.load()?, -3);
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    pub fn store(&self, value: T) -> Result<()> {
        *self.lock()? = value;
        Ok(())
    }

    /// Takes the value's lock and gives the value (Python's `with v.get_lock(): v.value += 1`).
    ///
    /// # Errors
    ///
    /// As for [`SharedArray::lock`].
    ///
    /// # Examples
    ///
    /// ```
    /// let v = multiproc::SharedValue::new(1u64)?;
    /// *v.lock()? += 1;
    /// assert_eq!(v.load()?, 2);
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    pub fn lock(&self) -> AcquireResult<ValueGuard<'_, T>> {
        match self.array.lock() {
            Ok(g) => Ok(ValueGuard(g)),
            Err(e) => Err(e.map(ValueGuard)),
        }
    }
}

/// Sent like a [`SharedArray`]: a reference, see [Sending](SharedArray#sending).
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

#[allow(dead_code)]
fn _assert_bounds() {
    fn send_sync<X: Send + Sync>() {}
    send_sync::<SharedArray<f64>>();
    send_sync::<PodVec<f64>>();
    fn owned<X: serde::de::DeserializeOwned>() {}
    owned::<SharedArray<f64>>();
}

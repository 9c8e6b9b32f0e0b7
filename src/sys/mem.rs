//! Shared memory mappings.

use std::num::NonZeroUsize;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;

use nix::fcntl::{FcntlArg, SealFlag};
use nix::sys::memfd::{MFdFlags, memfd_create};
use nix::sys::mman::{MapFlags, ProtFlags, mmap, mmap_anonymous, munmap};

use crate::error::{Error, Result};

/// An anonymous `MAP_SHARED` mapping: after `fork`, parent and child see the same bytes.
///
/// The memory is zero-filled when made, and returned to the kernel when the last process that
/// maps it unmaps it or exits, so it can never leak (it has no name in `/dev/shm`).
#[derive(Debug)]
pub(crate) struct SharedMapping {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain memory; what is stored in it and how it is synchronized is the
// owner's business (every user stores atomics or data guarded by a process-shared lock).
unsafe impl Send for SharedMapping {}
// SAFETY: as above.
unsafe impl Sync for SharedMapping {}

impl SharedMapping {
    /// Maps `len` zeroed bytes shared with every process forked after this call.
    pub(crate) fn anonymous(len: usize) -> Result<Self> {
        let nz = NonZeroUsize::new(len)
            .ok_or_else(|| Error::invalid_arg("len", len, "a shared mapping cannot be empty"))?;
        // SAFETY: an anonymous mapping at an address the kernel picks aliases no existing memory.
        let ptr = unsafe {
            mmap_anonymous(
                None,
                nz,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED,
            )
        }
        .map_err(|e| Error::io("mmap", e))?;
        Ok(SharedMapping {
            ptr: ptr.cast(),
            len,
        })
    }

    /// As [`anonymous`](SharedMapping::anonymous), but only reserves the address range: no
    /// memory is committed or accounted for (`MAP_NORESERVE`) until a page is first written, so a
    /// large reservation costs nothing until used. Return written pages with
    /// [`release`](SharedMapping::release).
    pub(crate) fn reserve(len: usize) -> Result<Self> {
        let nz = NonZeroUsize::new(len)
            .ok_or_else(|| Error::invalid_arg("len", len, "a shared mapping cannot be empty"))?;
        // SAFETY: an anonymous mapping at an address the kernel picks aliases no existing memory.
        let ptr = unsafe {
            mmap_anonymous(
                None,
                nz,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED | MapFlags::MAP_NORESERVE,
            )
        }
        .map_err(|e| Error::io("mmap (reserve)", e))?;
        Ok(SharedMapping {
            ptr: ptr.cast(),
            len,
        })
    }

    /// Returns the memory of the pages in `[offset, offset + len)` to the kernel, in every
    /// process that maps them (`MADV_REMOVE`): they read as zeros afterwards, and cost memory
    /// again only once written. `offset` and `len` are rounded inwards to whole pages.
    pub(crate) fn release(&self, offset: usize, len: usize) {
        let page = page_size();
        let start = offset.next_multiple_of(page);
        let end = (offset + len).min(self.len) / page * page;
        if end <= start {
            return;
        }
        // SAFETY: the range lies inside this mapping (clamped to `self.len`, page-aligned); the
        // caller guarantees no process uses those bytes any more (their contents are dropped).
        let _ = unsafe {
            libc::madvise(
                self.ptr.as_ptr().add(start).cast(),
                end - start,
                libc::MADV_REMOVE,
            )
        };
    }

    /// Maps the first `len` bytes of the file `fd` (a memfd) shared: every process that maps
    /// the same file sees the same bytes. The mapping stays valid after `fd` is closed. With
    /// `populate`, all pages are faulted in at once (`MAP_POPULATE`), much faster than one fault
    /// per page when the whole mapping will be touched.
    pub(crate) fn from_fd(fd: BorrowedFd<'_>, len: usize, populate: bool) -> Result<Self> {
        let mut flags = MapFlags::MAP_SHARED;
        if populate {
            flags |= MapFlags::MAP_POPULATE;
        }
        let nz = NonZeroUsize::new(len)
            .ok_or_else(|| Error::invalid_arg("len", len, "a shared mapping cannot be empty"))?;
        // SAFETY: a mapping at an address the kernel picks aliases no existing Rust memory; the
        // file is a memfd that is never truncated below `len` (memfds made by `memfd` are sized
        // once and `fd_size` is checked by callers before mapping).
        let ptr = unsafe {
            mmap(
                None,
                nz,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                flags,
                fd,
                0,
            )
        }
        .map_err(|e| Error::io("mmap", e))?;
        Ok(SharedMapping {
            ptr: ptr.cast(),
            len,
        })
    }

    /// Maps the file `fd` like [`from_fd`](SharedMapping::from_fd), then asks for huge pages
    /// where the kernel gives them ([`advise_huge`](SharedMapping::advise_huge)) and faults every
    /// page in at once ([`prefault`](SharedMapping::prefault)): `write` for a fresh file about
    /// to be filled, reading for one whose pages exist (a received segment). Either way, using
    /// the mapping afterwards takes no page fault.
    pub(crate) fn from_fd_prefaulted(fd: BorrowedFd<'_>, len: usize, write: bool) -> Result<Self> {
        let map = Self::from_fd(fd, len, false)?;
        map.advise_huge();
        map.prefault(write)?;
        Ok(map)
    }

    /// The first byte of the mapping.
    pub(crate) fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// The length of the mapping in bytes.
    pub(crate) fn len(&self) -> usize {
        self.len
    }
}

impl Drop for SharedMapping {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` describe exactly the mapping made in `anonymous`, and every borrow
        // into it is tied to `&self`, so none outlives this call.
        let rc = unsafe { munmap(self.ptr.cast(), self.len) };
        debug_assert!(std::thread::panicking() || rc.is_ok(), "munmap failed");
    }
}

/// Asks the kernel to back `buf`'s spare capacity with transparent huge pages, when the buffer is
/// large (≥ 4 MiB) and not yet touched. Faulting in fresh memory 2 MiB at a time instead of
/// 4 KiB at a time makes the first write to a big buffer several times faster. Advice only: any
/// failure is ignored.
pub(crate) fn advise_huge_pages(buf: &mut Vec<u8>) {
    const HUGE: usize = 2 << 20;
    let spare = buf.spare_capacity_mut();
    if spare.len() < 2 * HUGE {
        return;
    }
    let start = (spare.as_mut_ptr() as usize).next_multiple_of(HUGE);
    let end = (spare.as_mut_ptr() as usize + spare.len()) & !(HUGE - 1);
    if end <= start {
        return;
    }
    // SAFETY: [start, end) lies inside `buf`'s allocation, which we own; MADV_HUGEPAGE changes
    // only how the kernel backs those pages, never their contents or validity.
    let _ = unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE) };
}

/// Gives the pages of the heap's free chunks back to the kernel (glibc's `malloc_trim(0)`), so
/// that a burst of forks copies the page tables of live memory only, and each child shares no
/// dead pages. A program that built and dropped large structures before it starts a pool keeps
/// them in the heap otherwise (glibc returns only the top of the heap): 25 MB retained by a
/// few maps made each fork of a 128-worker pool 3 times slower. Costs a walk over the free
/// chunks (about 1–2 ms for 25 MB). Does nothing where the C library is not glibc.
pub(crate) fn release_free_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `malloc_trim` takes each arena's lock and only advises the kernel about pages
    // that lie wholly inside free chunks; no live allocation is touched. It is thread-safe.
    unsafe {
        libc::malloc_trim(0);
    }
}

impl SharedMapping {
    /// The mapping viewed as `len / 8` atomic 64-bit words (the pool's per-worker progress slots).
    pub(crate) fn as_atomic_u64s(&self) -> &[std::sync::atomic::AtomicU64] {
        // SAFETY: the mapping is page-aligned (so 8-aligned), `len / 8` words lie inside it, an
        // all-zero (or any) bit pattern is a valid `AtomicU64`, and every access to this memory,
        // from any process, goes through these atomics, so there is no data race. The slice
        // borrows `self`, so it cannot outlive the mapping.
        unsafe {
            std::slice::from_raw_parts(
                self.ptr.as_ptr().cast::<std::sync::atomic::AtomicU64>(),
                self.len / 8,
            )
        }
    }
}

impl SharedMapping {
    /// Copies `bytes` into the mapping at `offset`; `false` (nothing written) when they do not
    /// fit. The caller publishes them to other processes with a release store to an atomic
    /// word of shared memory that the reader loads (acquire) before it reads them.
    #[inline]
    pub(crate) fn write_bytes(&self, offset: usize, bytes: &[u8]) -> bool {
        if offset
            .checked_add(bytes.len())
            .is_none_or(|end| end > self.len)
        {
            return false;
        }
        let (src, n) = (bytes.as_ptr(), bytes.len());
        // SAFETY: `offset..offset + n` lies inside the mapping (checked above), which is valid
        // for writes while `self` lives; `bytes` is ordinary memory of this process, so the two
        // cannot overlap. Only the process that owns this region of the mapping writes it (the
        // pool gives each worker its own region), and readers in other processes read only what
        // a release store has published, so no byte is read while it is written. For 8 to 16
        // bytes (a journaled `u64` or `f64` outcome), the first and the last 8 bytes are copied
        // as two unaligned words, both inside `src[..n]` and `dst[..n]`, without a call.
        unsafe {
            let dst = self.ptr.as_ptr().add(offset);
            if (8..=16).contains(&n) {
                let last = n - 8;
                dst.cast::<u64>()
                    .write_unaligned(src.cast::<u64>().read_unaligned());
                dst.add(last)
                    .cast::<u64>()
                    .write_unaligned(src.add(last).cast::<u64>().read_unaligned());
            } else {
                std::ptr::copy_nonoverlapping(src, dst, n);
            }
        };
        true
    }

    /// Copies `len` bytes at `offset` out of the mapping; `None` when the range is outside it.
    pub(crate) fn read_bytes(&self, offset: usize, len: usize) -> Option<Vec<u8>> {
        if offset.checked_add(len).is_none_or(|end| end > self.len) {
            return None;
        }
        let mut out = vec![0u8; len];
        // SAFETY: the range lies inside the mapping (checked above), valid for reads while `self`
        // lives, and `out` is a fresh allocation of `len` bytes. The writer (another process)
        // published these bytes before the release store the caller loaded, and no longer
        // writes them (the pool reads a worker's region only after the worker is reaped).
        unsafe {
            std::ptr::copy_nonoverlapping(self.ptr.as_ptr().add(offset), out.as_mut_ptr(), len)
        };
        Some(out)
    }
}

/// A new anonymous memory file (`memfd_create` with `MFD_CLOEXEC`) of `len` zero bytes, sealed
/// against shrinking and growing, so that no holder can make another's mapping fault (`SIGBUS`).
///
/// It has no name in any file system (`/dev/shm` included): its memory goes back to the kernel
/// when the last descriptor and the last mapping of it are gone, also when processes crash.
pub(crate) fn memfd(len: usize) -> Result<OwnedFd> {
    let fd = memfd_create(
        c"multiproc-shm",
        MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING,
    )
    .map_err(|e| Error::io("memfd_create", e))?;
    let off = libc::off_t::try_from(len)
        .map_err(|_| Error::invalid_arg("len", len, "too large for a memory file"))?;
    nix::unistd::ftruncate(fd.as_fd(), off).map_err(|e| Error::io("ftruncate", e))?;
    nix::fcntl::fcntl(fd.as_fd(), FcntlArg::F_ADD_SEALS(SIZE_SEALS))
        .map_err(|e| Error::io("fcntl(F_ADD_SEALS)", e))?;
    Ok(fd)
}

const SIZE_SEALS: SealFlag = SealFlag::F_SEAL_SHRINK
    .union(SealFlag::F_SEAL_GROW)
    .union(SealFlag::F_SEAL_SEAL);

/// Whether `fd` is a memory file made by [`memfd`]: its size can never change.
pub(crate) fn is_sealed_memfd(fd: BorrowedFd<'_>) -> bool {
    nix::fcntl::fcntl(fd, FcntlArg::F_GET_SEALS)
        .is_ok_and(|bits| SealFlag::from_bits_truncate(bits).contains(SIZE_SEALS))
}

/// The size in bytes of the file `fd`.
pub(crate) fn fd_size(fd: BorrowedFd<'_>) -> Result<usize> {
    let st = nix::sys::stat::fstat(fd).map_err(|e| Error::io("fstat", e))?;
    usize::try_from(st.st_size).map_err(|_| Error::io("fstat", std::io::ErrorKind::InvalidData))
}

/// The inode number of the file `fd`: names a memory file while any descriptor or mapping of it
/// lives.
#[cfg(test)]
pub(crate) fn fd_inode(fd: BorrowedFd<'_>) -> Result<u64> {
    let st = nix::sys::stat::fstat(fd).map_err(|e| Error::io("fstat", e))?;
    Ok(st.st_ino)
}

/// The device and inode numbers of the file `fd`: name a file while any descriptor or mapping
/// of it lives (a memory file received twice has the same identity both times).
pub(crate) fn fd_identity(fd: BorrowedFd<'_>) -> Result<(u64, u64)> {
    let st = nix::sys::stat::fstat(fd).map_err(|e| Error::io("fstat", e))?;
    Ok((st.st_dev, st.st_ino))
}

/// The size of a memory page.
pub(crate) fn page_size() -> usize {
    // SAFETY: sysconf reads a constant of the system.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(n).unwrap_or(4096).max(4096)
}

//! The per-process cache of [`PodVec`](super::PodVec) segments: memory files this process sent
//! or received, kept mapped with their pages faulted in, so that the next vector sent (or
//! received) costs a copy into warm memory instead of fresh pages and a new mapping.
//!
//! # Who may write a kept segment
//!
//! A segment is kept by every process that used it (the sender and each receiver), so a word of
//! the segment itself, its *owner* (after the tag), says who may use it: the token of the process
//! whose live `PodVec` holds it, or 0 when no vector does.
//! - A sender takes a kept segment only by changing its owner from 0 to its own token
//!   (compare-and-swap), so of all the processes keeping it at most one wins; a new segment is
//!   its maker's.
//! - The receiver of a segment becomes its owner (the sender gave it up by sending it).
//! - Dropping a vector sets the owner back to 0, only if it is still this process's token: a
//!   forked child dropping a vector it inherited (its token differs) frees nothing. A vector
//!   given away with its segment (moved into a message) leaves the owner to the receiver.
//!
//! So a kept segment is written only while it is free, and never while a live vector in any
//! process uses it. A forked child also forgets the kept segments it inherited (unmapped at its
//! first use of the cache): they stay the parent's.
//!
//! # Bounds
//!
//! At most [`DEFAULT_MAX_SEGMENTS`] memory files and [`DEFAULT_MAX_BYTES`] bytes are kept (see
//! [`set_limits`]); past either bound the least recently used are unmapped and closed (the
//! memory goes back to the kernel once no other process keeps or uses it). A vector larger
//! than the byte bound is never kept.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::segment::{DATA_OFFSET, Segment};
use crate::error::Result;
use crate::fork::{ForkHook, register_fork_hook};
use crate::sys;

/// Kept memory files, at most...
pub(crate) const DEFAULT_MAX_SEGMENTS: usize = 4;
/// ...and bytes, unless changed by [`set_limits`].
pub(crate) const DEFAULT_MAX_BYTES: usize = 1 << 30;

/// What this process's cache of [`PodVec`](super::PodVec) memory files holds and has done since
/// the process started (a forked child starts from zero; it can be sent, e.g. from a worker). See
/// [Memory kept for reuse](super::PodVec#memory-kept-for-reuse).
///
/// # Examples
///
/// ```
/// let s = multiproc::PodVec::<f64>::kept_stats();
/// assert!(s.kept <= s.max_segments && s.kept_bytes <= s.max_bytes);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub struct KeptStats {
    /// Memory files kept mapped now.
    pub kept: usize,
    /// Their size in bytes.
    pub kept_bytes: usize,
    /// The bound on `kept`.
    pub max_segments: usize,
    /// The bound on `kept_bytes`.
    pub max_bytes: usize,
    /// Vectors sent in a new memory file (no kept one was free and of a fitting size).
    pub created: u64,
    /// Vectors sent in a kept memory file (warm pages: no new file, no page fault).
    pub reused: u64,
    /// Memory files received that were already mapped here (no new mapping, no page fault).
    pub hits: u64,
    /// Memory files received and mapped anew (their pages faulted in at once).
    pub mapped: u64,
    /// Kept memory files unmapped and closed because the cache was over a bound.
    pub evicted: u64,
    /// Whether new memory files get 2 MiB pages on this kernel (its `shmem_enabled` allows
    /// them, see [Memory kept for reuse](super::PodVec#memory-kept-for-reuse)).
    pub huge_pages: bool,
}

/// This process's token, the value of a segment's owner word while one of its vectors holds it:
/// its pid in the high half (so a forked child has another) and random bits in the low half.
pub(super) fn token() -> u64 {
    static TOKEN: AtomicU64 = AtomicU64::new(0);
    let pid = u64::from(sys::getpid().as_raw().unsigned_abs());
    loop {
        let current = TOKEN.load(Ordering::Acquire);
        if current >> 32 == pid && current != 0 {
            return current;
        }
        use std::hash::BuildHasher;
        let salt = std::collections::hash_map::RandomState::new().hash_one(pid) as u32;
        let fresh = (pid << 32) | u64::from(salt.max(1));
        // Of two threads racing here, one token wins and both return it.
        let _ = TOKEN.compare_exchange(current, fresh, Ordering::AcqRel, Ordering::Acquire);
    }
}

struct Entry {
    seg: Segment,
    /// The memory file's device and inode: names the segment when it comes back.
    file: (u64, u64),
}

impl Entry {
    fn bytes(&self) -> usize {
        self.seg.capacity() + DATA_OFFSET
    }
}

struct Cache {
    pid: i32,
    /// Least recently kept first.
    entries: Vec<Entry>,
    max_segments: usize,
    max_bytes: usize,
    stats: KeptStats,
}

static CACHE: Mutex<Cache> = Mutex::new(Cache {
    pid: 0,
    entries: Vec::new(),
    max_segments: DEFAULT_MAX_SEGMENTS,
    max_bytes: DEFAULT_MAX_BYTES,
    stats: KeptStats {
        kept: 0,
        kept_bytes: 0,
        max_segments: 0,
        max_bytes: 0,
        created: 0,
        reused: 0,
        hits: 0,
        mapped: 0,
        evicted: 0,
        huge_pages: false,
    },
});

/// Holds the cache's lock across every fork, so that the child never inherits it held by
/// another thread (the child then forgets the parent's segments). Registered before the lock's
/// first use.
static FORK_HOOK: ForkHook = ForkHook {
    prepare: || Some(Box::new(CACHE.lock().unwrap_or_else(|e| e.into_inner()))),
    parent: |_| {},
    child: || {},
};

/// Runs `f` on this process's cache; what `f` returns in its second slot is dropped (unmapped)
/// after the lock is released.
fn with<R>(f: impl FnOnce(&mut Cache) -> (R, Vec<Entry>)) -> R {
    static HOOKED: AtomicBool = AtomicBool::new(false);
    if !HOOKED.load(Ordering::SeqCst) {
        register_fork_hook(&FORK_HOOK);
        HOOKED.store(true, Ordering::SeqCst);
    }
    let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    let me = sys::getpid().as_raw();
    let mut inherited = Vec::new();
    if cache.pid != me {
        // Inherited from the parent: not ours to use.
        inherited = std::mem::take(&mut cache.entries);
        cache.stats = KeptStats::default();
        cache.pid = me;
    }
    let (r, dropped) = f(&mut cache);
    drop(cache);
    drop(inherited);
    drop(dropped);
    r
}

/// The size a new segment gets for `need` bytes of elements: rounded up (to 64 KiB, or to 2 MiB
/// past 2 MiB) so that one segment serves vectors of nearby lengths.
fn rounded(need: usize) -> usize {
    let step = if need >= 2 << 20 { 2 << 20 } else { 64 << 10 };
    need.checked_next_multiple_of(step).unwrap_or(need)
}

/// Whether a kept segment of `capacity` bytes may hold `need` bytes: large enough, and not so
/// large that a small vector would pin a big file.
fn fits(capacity: usize, need: usize) -> bool {
    capacity >= need && capacity - need <= need / 4 + (2 << 20)
}

/// A segment, held by this process, for a vector of `len` elements of type `kind` about to be
/// sent: a free kept one of a fitting size (warm), else a new one (faulted in at once).
pub(super) fn acquire(kind: u64, elem_size: usize, len: usize) -> Result<Segment> {
    let need = len.saturating_mul(elem_size);
    let me = token();
    let kept = with(|cache| {
        let mut candidates: Vec<usize> = (0..cache.entries.len())
            .filter(|&i| fits(cache.entries[i].seg.capacity(), need))
            .collect();
        candidates.sort_by_key(|&i| cache.entries[i].seg.capacity());
        let won = candidates.into_iter().find(|&i| {
            let owner = cache.entries[i].seg.owner();
            owner
                .compare_exchange(0, me, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        });
        let seg = won.map(|i| cache.entries.remove(i).seg);
        if seg.is_some() {
            cache.stats.reused += 1;
        } else {
            cache.stats.created += 1;
        }
        (seg, Vec::new())
    });
    let seg = match kept {
        Some(seg) => {
            let fitted = seg.retag(kind, elem_size, len);
            debug_assert!(fitted, "a kept segment too small was chosen");
            seg
        }
        None => {
            let seg = Segment::create_pod(kind, elem_size, len, rounded(need))?;
            seg.owner().store(me, Ordering::Release);
            seg
        }
    };
    Ok(seg)
}

/// A segment received as `fd`: the kept mapping of the same memory file when there is one (no
/// new mapping, no page fault), else a new mapping with its pages faulted in. Checked to hold
/// `kind` elements of `elem_size` bytes; this process becomes its owner. Returns it and its
/// length.
pub(super) fn received(fd: OwnedFd, kind: u64, elem_size: usize) -> Result<(Segment, usize)> {
    let file = sys::mem::fd_identity(fd.as_fd()).ok();
    let kept = file.and_then(|file| {
        with(|cache| {
            let i = cache.entries.iter().position(|e| e.file == file);
            let seg = i.map(|i| cache.entries.remove(i).seg);
            if seg.is_some() {
                cache.stats.hits += 1;
            } else {
                cache.stats.mapped += 1;
            }
            (seg, Vec::new())
        })
    });
    let (seg, len) = match kept {
        Some(seg) => {
            drop(fd);
            seg.check(kind, elem_size)?
        }
        None => Segment::open(fd, kind, elem_size, true)?,
    };
    seg.owner().store(token(), Ordering::Release);
    Ok((seg, len))
}

/// Takes back the segment of a dropped vector: `given` when it went with a message (the
/// receiver owns it now), else it becomes free (if this process held it) and is kept.
pub(super) fn release(seg: Segment, given: bool) {
    if !given
        && seg
            .owner()
            .compare_exchange(token(), 0, Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
    {
        // Not ours (a vector inherited across fork): the process that holds it frees it.
        return;
    }
    keep(seg);
}

/// Keeps `seg` mapped (as the most recently used), releasing the least recently used over the
/// bounds.
pub(super) fn keep(seg: Segment) {
    let Ok(file) = sys::mem::fd_identity(seg.fd().as_fd()) else {
        return;
    };
    with(|cache| {
        cache.entries.push(Entry { seg, file });
        ((), over_bounds(cache))
    });
}

/// Removes the least recently kept entries while the cache is over a bound; returns them.
fn over_bounds(cache: &mut Cache) -> Vec<Entry> {
    let mut dropped = Vec::new();
    while cache.entries.len() > cache.max_segments
        || cache.entries.iter().map(Entry::bytes).sum::<usize>() > cache.max_bytes
    {
        dropped.push(cache.entries.remove(0));
        cache.stats.evicted += 1;
    }
    dropped
}

/// Unmaps and closes every kept segment.
pub(super) fn clear() {
    with(|cache| ((), std::mem::take(&mut cache.entries)));
}

/// Sets the bounds, releasing what is over them at once.
pub(super) fn set_limits(max_bytes: usize, max_segments: usize) {
    with(|cache| {
        cache.max_bytes = max_bytes;
        cache.max_segments = max_segments;
        ((), over_bounds(cache))
    });
}

/// The cache's figures now.
pub(super) fn stats() -> KeptStats {
    with(|cache| {
        let s = KeptStats {
            kept: cache.entries.len(),
            kept_bytes: cache.entries.iter().map(Entry::bytes).sum(),
            max_segments: cache.max_segments,
            max_bytes: cache.max_bytes,
            huge_pages: sys::prefault::shmem_huge() != sys::prefault::ShmemHuge::Refused,
            ..cache.stats
        };
        (s, Vec::new())
    })
}

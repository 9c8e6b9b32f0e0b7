//! Faulting a shared mapping in ahead of use, and asking for huge pages where the kernel allows.
//!
//! A fresh page of a memory file costs a page fault (allocate, zero, map) on first touch, and a
//! page already in the file costs one more fault in every process that maps it. Taken one by one
//! that is ~5 µs per 4 KiB page, 0.8–1 GB/s: the whole cost of sending a big `PodVec` to a
//! worker. Two remedies, each used where the kernel offers it:
//!
//! - **Prefault** the whole range in one call: `madvise(MADV_POPULATE_READ)` (on a mapping of
//!   pages that exist: maps them, 16 at a time by fault-around) or `MADV_POPULATE_WRITE` (on a
//!   fresh file: allocates them), Linux 5.14+. Where the kernel refuses (`EINVAL`: older), the
//!   pages are touched one by one (one read per page), which is the same work as faults on use
//!   but done before the data is timed by the user, never skipped.
//! - **Huge pages**: memory files live in shmem, whose transparent huge pages are governed by
//!   `/sys/kernel/mm/transparent_hugepage/shmem_enabled` (and, since Linux 6.11, the per-size
//!   `hugepages-2048kB/shmem_enabled`). `always`/`within_size`/`force`: the kernel uses 2 MiB
//!   pages by itself; `advise`: only on mappings given `MADV_HUGEPAGE`, which we give to
//!   mappings of 4 MiB and more; `never`/`deny` or no such file: the kernel refuses, and
//!   mappings silently keep 4 KiB pages (the cache of warm segments in `shm` is then what makes
//!   repeated sends fast).

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use super::mem::{SharedMapping, page_size};
use crate::error::{Error, Result};

/// Whether memory files get transparent huge pages on this kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ShmemHuge {
    /// The kernel uses huge pages for every memory file large enough (`always`, `within_size`,
    /// `force`).
    Always,
    /// Only where a mapping is advised with `MADV_HUGEPAGE` (`advise`).
    Advise,
    /// Never (`never`, `deny`, or transparent huge pages are not built in).
    Refused,
}

/// Where huge pages start paying: mappings smaller than this are not advised.
pub(crate) const HUGE_MIN: usize = 4 << 20;

/// The mode in effect for 2 MiB pages of shmem, given the contents of the global
/// `shmem_enabled` file and of the per-size `hugepages-2048kB/shmem_enabled` (when it exists).
/// Each file lists the choices with the one in effect in brackets.
pub(crate) fn parse_shmem_enabled(global: Option<&str>, pmd_size: Option<&str>) -> ShmemHuge {
    fn selected(text: &str) -> Option<&str> {
        let start = text.find('[')? + 1;
        let end = start + text[start..].find(']')?;
        Some(&text[start..end])
    }
    let mode = match pmd_size.and_then(selected) {
        Some("inherit") | None => global.and_then(selected),
        other => other,
    };
    match mode {
        Some("always" | "within_size" | "force") => ShmemHuge::Always,
        Some("advise") => ShmemHuge::Advise,
        _ => ShmemHuge::Refused,
    }
}

/// This kernel's mode, read once per process.
pub(crate) fn shmem_huge() -> ShmemHuge {
    static MODE: OnceLock<ShmemHuge> = OnceLock::new();
    *MODE.get_or_init(|| {
        const DIR: &str = "/sys/kernel/mm/transparent_hugepage";
        let global = std::fs::read_to_string(format!("{DIR}/shmem_enabled")).ok();
        let pmd = std::fs::read_to_string(format!("{DIR}/hugepages-2048kB/shmem_enabled")).ok();
        parse_shmem_enabled(global.as_deref(), pmd.as_deref())
    })
}

/// How a mapping's pages were faulted in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Prefaulted {
    /// In one `madvise(MADV_POPULATE_*)` call.
    Madvise,
    /// The kernel refused `MADV_POPULATE_*`: one read per page.
    Touched,
}

/// Set when the kernel refused `MADV_POPULATE_*` once (older than 5.14): not asked again. Tests
/// set it to exercise the fallback.
pub(crate) static POPULATE_REFUSED: AtomicBool = AtomicBool::new(false);

impl SharedMapping {
    /// Asks for huge pages on this mapping (`MADV_HUGEPAGE`) when the kernel gives them to
    /// advised shmem mappings and the mapping is at least [`HUGE_MIN`]; must come before the
    /// pages are first touched. Returns whether the mapping will get huge pages (also `true`
    /// when the kernel uses them unasked). Advice only: a refusal changes nothing else.
    pub(crate) fn advise_huge(&self) -> bool {
        if self.len() < HUGE_MIN {
            return false;
        }
        match shmem_huge() {
            ShmemHuge::Always => true,
            ShmemHuge::Refused => false,
            ShmemHuge::Advise => {
                // SAFETY: the range is exactly this mapping (page-aligned start and length
                // from mmap); MADV_HUGEPAGE changes only how the kernel backs the pages, never
                // their contents or validity.
                let rc =
                    unsafe { libc::madvise(self.as_ptr().cast(), self.len(), libc::MADV_HUGEPAGE) };
                rc == 0
            }
        }
    }

    /// Faults every page of the mapping in now: `write` for a fresh file (allocates the pages),
    /// otherwise reading (maps pages the file already has; a shared writable mapping of shmem
    /// maps them writable, so later writes do not fault either).
    ///
    /// # Errors
    ///
    /// [`Error::Io`] when the kernel cannot supply the pages (`ENOMEM`: out of memory or over
    /// the memory cgroup's limit), rather than a fault when they are first used.
    pub(crate) fn prefault(&self, write: bool) -> Result<Prefaulted> {
        let (advice, name) = if write {
            (libc::MADV_POPULATE_WRITE, "madvise(MADV_POPULATE_WRITE)")
        } else {
            (libc::MADV_POPULATE_READ, "madvise(MADV_POPULATE_READ)")
        };
        while !POPULATE_REFUSED.load(Ordering::Relaxed) {
            // SAFETY: the range is exactly this mapping; MADV_POPULATE_* only faults the pages
            // in (as an access would), it changes no byte of memory.
            let rc = unsafe { libc::madvise(self.as_ptr().cast(), self.len(), advice) };
            if rc == 0 {
                return Ok(Prefaulted::Madvise);
            }
            let err = std::io::Error::last_os_error();
            match err.raw_os_error() {
                // Older than 5.14: no such advice. Not asked again.
                Some(libc::EINVAL) => POPULATE_REFUSED.store(true, Ordering::Relaxed),
                // A signal arrived: the pages done so far stay, go on.
                Some(libc::EINTR | libc::EAGAIN) => {}
                _ => return Err(Error::io(name, err)),
            }
        }
        self.touch_pages();
        Ok(Prefaulted::Touched)
    }

    /// Reads one byte of every page.
    fn touch_pages(&self) {
        let page = page_size();
        let mut offset = 0;
        while offset < self.len() {
            // SAFETY: `offset` lies inside the mapping, which is readable while `self` lives; a
            // volatile read of one byte has no effect but the fault, and any byte is a valid u8.
            unsafe { std::ptr::read_volatile(self.as_ptr().add(offset)) };
            offset += page;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;
    use std::os::unix::fs::FileExt;

    use super::*;
    use crate::sys::mem::memfd;

    /// How many pages of `map` have no page-table entry now (`/proc/self/pagemap`, bit 63).
    fn pages_not_present(map: &SharedMapping) -> usize {
        let page = page_size();
        let file = std::fs::File::open("/proc/self/pagemap").unwrap();
        let first = map.as_ptr() as usize / page;
        let mut buf = vec![0u8; map.len() / page * 8];
        file.read_exact_at(&mut buf, (first * 8) as u64).unwrap();
        buf.chunks_exact(8)
            .filter(|e| u64::from_le_bytes((*e).try_into().unwrap()) >> 63 == 0)
            .count()
    }

    /// Both ways of faulting in (one `madvise`, and the touch of every page where the kernel
    /// refuses it), on a fresh file (write) and on a second mapping of it (read): every page is
    /// present afterwards, none before.
    #[test]
    fn prefault_maps_every_page_by_madvise_and_by_touching() {
        let len = 8 << 20;
        for refused in [false, true] {
            POPULATE_REFUSED.store(refused, Ordering::Relaxed);
            let fd = memfd(len).unwrap();
            let fresh = SharedMapping::from_fd(fd.as_fd(), len, false).unwrap();
            assert_eq!(pages_not_present(&fresh), len / page_size());
            let how = fresh.prefault(true).unwrap();
            assert_eq!(pages_not_present(&fresh), 0, "{how:?}");
            let second = SharedMapping::from_fd(fd.as_fd(), len, false).unwrap();
            assert_eq!(pages_not_present(&second), len / page_size());
            let how_read = second.prefault(false).unwrap();
            assert_eq!(pages_not_present(&second), 0, "{how_read:?}");
            if refused {
                assert_eq!((how, how_read), (Prefaulted::Touched, Prefaulted::Touched));
            }
            let ready = SharedMapping::from_fd_prefaulted(fd.as_fd(), len, false).unwrap();
            assert_eq!(pages_not_present(&ready), 0);
        }
        POPULATE_REFUSED.store(false, Ordering::Relaxed);
    }

    /// Huge pages are asked for only where this kernel gives them, and only for big mappings;
    /// where it refuses, the mapping works the same with small pages.
    #[test]
    fn huge_page_advice_follows_the_kernel_mode() {
        let len = HUGE_MIN;
        let fd = memfd(len).unwrap();
        let map = SharedMapping::from_fd(fd.as_fd(), len, false).unwrap();
        let huge = map.advise_huge();
        match shmem_huge() {
            ShmemHuge::Refused => assert!(!huge),
            ShmemHuge::Always => assert!(huge),
            // MADV_HUGEPAGE itself may still be refused (no THP built in).
            ShmemHuge::Advise => {}
        }
        map.prefault(true).unwrap();
        assert!(map.write_bytes(len - 3, b"end"));
        assert_eq!(map.read_bytes(len - 3, 3).unwrap(), b"end");
        let small = SharedMapping::from_fd(fd.as_fd(), 1 << 20, false).unwrap();
        assert!(
            !small.advise_huge(),
            "mappings under HUGE_MIN are not advised"
        );
    }

    #[test]
    fn shmem_enabled_modes() {
        let g = |m: &str| {
            format!("always within_size advise {m} deny force")
                .replace(&format!(" {m}"), &format!(" [{m}]"))
        };
        assert_eq!(
            parse_shmem_enabled(Some("always within_size advise [never] deny force"), None),
            ShmemHuge::Refused
        );
        assert_eq!(
            parse_shmem_enabled(Some(&g("advise")), None),
            ShmemHuge::Advise
        );
        assert_eq!(
            parse_shmem_enabled(Some("[always] advise never"), None),
            ShmemHuge::Always
        );
        assert_eq!(
            parse_shmem_enabled(Some(&g("force")), None),
            ShmemHuge::Always
        );
        assert_eq!(
            parse_shmem_enabled(Some(&g("deny")), None),
            ShmemHuge::Refused
        );
        // The per-size file overrides the global one unless it says `inherit`.
        let advise = Some("always inherit within_size [advise] never");
        let inherit = Some("always [inherit] within_size advise never");
        assert_eq!(
            parse_shmem_enabled(Some(&g("never")), advise),
            ShmemHuge::Advise
        );
        assert_eq!(
            parse_shmem_enabled(Some(&g("never")), inherit),
            ShmemHuge::Refused
        );
        assert_eq!(
            parse_shmem_enabled(Some(&g("advise")), inherit),
            ShmemHuge::Advise
        );
        // No transparent huge pages at all.
        assert_eq!(parse_shmem_enabled(None, None), ShmemHuge::Refused);
    }
}

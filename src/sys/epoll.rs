//! `epoll`: one readiness set for many descriptors, registered once, so that a wait costs what
//! is ready rather than what is watched (a pool's scheduler watches two descriptors per worker).

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::time::Instant;

use crate::error::{Error, Result};

/// Most events taken by one wait (more stay ready for the next).
const BATCH: usize = 256;

/// An epoll instance (level-triggered).
#[derive(Debug)]
pub(crate) struct Epoll {
    fd: OwnedFd,
}

/// One ready descriptor: its token, whether it is readable (or hung up, or in error), and
/// whether it is writable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ready {
    pub(crate) token: u64,
    pub(crate) read: bool,
    pub(crate) write: bool,
}

fn flags(write: bool) -> u32 {
    let mut f = (libc::EPOLLIN | libc::EPOLLRDHUP) as u32;
    if write {
        f |= libc::EPOLLOUT as u32;
    }
    f
}

impl Epoll {
    /// A new, empty set (close-on-exec).
    pub(crate) fn new() -> Result<Epoll> {
        // SAFETY: epoll_create1 takes a flag and returns a new descriptor or -1.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(Error::io("epoll_create1", std::io::Error::last_os_error()));
        }
        // SAFETY: `fd` was just returned by epoll_create1: a valid descriptor nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Epoll { fd })
    }

    fn ctl(&self, op: libc::c_int, fd: BorrowedFd<'_>, token: u64, write: bool) -> Result<()> {
        let mut ev = libc::epoll_event {
            events: flags(write),
            u64: token,
        };
        // SAFETY: both descriptors are open (borrowed); `ev` is a valid epoll_event for the call
        // (ignored by EPOLL_CTL_DEL).
        let rc = unsafe { libc::epoll_ctl(self.fd.as_raw_fd(), op, fd.as_raw_fd(), &raw mut ev) };
        if rc < 0 {
            return Err(Error::io("epoll_ctl", std::io::Error::last_os_error()));
        }
        Ok(())
    }

    /// Watches `fd` for reading (and for writing when `write`), reported with `token`.
    pub(crate) fn add(&self, fd: BorrowedFd<'_>, token: u64, write: bool) -> Result<()> {
        self.ctl(libc::EPOLL_CTL_ADD, fd, token, write)
    }

    /// Changes what `fd` is watched for.
    pub(crate) fn modify(&self, fd: BorrowedFd<'_>, token: u64, write: bool) -> Result<()> {
        self.ctl(libc::EPOLL_CTL_MOD, fd, token, write)
    }

    /// Stops watching `fd` (before it is closed: a duplicate held elsewhere would keep it in
    /// the set). Not watched is not an error.
    pub(crate) fn delete(&self, fd: BorrowedFd<'_>) {
        let _ = self.ctl(libc::EPOLL_CTL_DEL, fd, 0, false);
    }

    /// Waits until a watched descriptor is ready or `deadline` passes (`None`: no limit), and
    /// appends the ready ones to `out`. Retries on `EINTR` with the remaining time.
    pub(crate) fn wait(&self, out: &mut Vec<Ready>, deadline: Option<Instant>) -> Result<()> {
        let mut evs = [libc::epoll_event { events: 0, u64: 0 }; BATCH];
        let n = loop {
            let timeout: i32 = super::poll_timeout(deadline).into();
            // SAFETY: `evs` has room for BATCH events, which the kernel writes.
            let n = unsafe {
                libc::epoll_wait(
                    self.fd.as_raw_fd(),
                    evs.as_mut_ptr(),
                    BATCH as libc::c_int,
                    timeout,
                )
            };
            if n >= 0 {
                break n as usize;
            }
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EINTR) {
                return Err(Error::io("epoll_wait", e));
            }
        };
        let read = (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLHUP | libc::EPOLLERR) as u32;
        out.extend(evs[..n].iter().map(|e| Ready {
            token: e.u64,
            read: e.events & read != 0,
            write: e.events & libc::EPOLLOUT as u32 != 0,
        }));
        Ok(())
    }
}

impl AsFd for Epoll {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

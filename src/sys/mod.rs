//! The OS layer: every `unsafe` call into the kernel or libc lives below this module.
//!
//! Everything here returns owned types (`OwnedFd`, [`Pid`]) and turns sentinel returns into
//! [`Error`]s. The user-facing types build on these wrappers and never call `libc` themselves.

pub(crate) mod early;
pub(crate) mod environ;
pub(crate) mod epoll;
pub(crate) mod futex;
pub(crate) mod lineage;
pub(crate) mod mem;
pub(crate) mod prefault;
pub(crate) mod socket;

use std::fs;
use std::io;
use std::os::fd::{BorrowedFd, FromRawFd, OwnedFd};
use std::time::Instant;

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::signal::Signal;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
pub(crate) use nix::unistd::Pid;

use crate::error::{Error, Result};

/// How a child process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ExitStatus {
    /// It called `exit`/`_exit` with this code.
    Exited(i32),
    /// It was killed by this signal.
    Signaled(i32),
}

impl ExitStatus {
    /// Python's `Process.exitcode`: the exit code, or `-N` for signal `N`.
    pub(crate) fn exitcode(self) -> i32 {
        match self {
            ExitStatus::Exited(code) => code,
            ExitStatus::Signaled(sig) => -sig,
        }
    }
}

/// The result of [`fork`], seen from each side.
pub(crate) enum Forked {
    /// In the parent: the child's pid.
    Parent(Pid),
    /// In the child.
    Child,
}

/// Forks the calling process.
///
/// # Safety
///
/// In the child, only the calling thread exists. If the parent had other threads, any lock they
/// held (inside `malloc`, stdio, a user `Mutex`) stays locked forever in the child, so the child
/// must avoid them or call only async-signal-safe functions. The crate documents this contract in
/// its `# Fork safety` section; callers end the child with [`exit_now`].
pub(crate) unsafe fn fork() -> Result<Forked> {
    // SAFETY: the caller upholds the fork contract stated above.
    match unsafe { nix::unistd::fork() } {
        Ok(nix::unistd::ForkResult::Parent { child }) => Ok(Forked::Parent(child)),
        Ok(nix::unistd::ForkResult::Child) => Ok(Forked::Child),
        Err(e) => Err(Error::io("fork", e)),
    }
}

/// Ends the calling process at once with `code`: no atexit handlers, no destructors, no stdio
/// flush (flush before calling).
pub(crate) fn exit_now(code: i32) -> ! {
    // SAFETY: `_exit` is async-signal-safe and never returns; skipping destructors is the point:
    // they belong to the parent's copy of the memory.
    unsafe { libc::_exit(code) }
}

fn to_exit_status(status: WaitStatus) -> Option<ExitStatus> {
    match status {
        WaitStatus::Exited(_, code) => Some(ExitStatus::Exited(code)),
        WaitStatus::Signaled(_, sig, _) => Some(ExitStatus::Signaled(sig as i32)),
        _ => None,
    }
}

/// Waits for the child `pid` to end and reaps it. Retries on `EINTR`.
pub(crate) fn wait_blocking(pid: Pid) -> Result<ExitStatus> {
    loop {
        match waitpid(pid, None) {
            Ok(status) => {
                if let Some(st) = to_exit_status(status) {
                    lineage::reaped(pid);
                    return Ok(st);
                }
            }
            Err(Errno::EINTR) => {}
            Err(e) => return Err(Error::io("waitpid", e)),
        }
    }
}

/// Reaps the child `pid` if it has ended; `None` while it runs.
pub(crate) fn try_wait(pid: Pid) -> Result<Option<ExitStatus>> {
    loop {
        match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => return Ok(None),
            Ok(status) => {
                if let Some(st) = to_exit_status(status) {
                    lineage::reaped(pid);
                    return Ok(Some(st));
                }
            }
            Err(Errno::EINTR) => {}
            Err(e) => return Err(Error::io("waitpid", e)),
        }
    }
}

/// Sends `sig` to `pid`. A process that is already gone (`ESRCH`) is not an error.
pub(crate) fn kill(pid: Pid, sig: Signal) -> Result<()> {
    match nix::sys::signal::kill(pid, sig) {
        Ok(()) | Err(Errno::ESRCH) => Ok(()),
        Err(e) => Err(Error::io("kill", e)),
    }
}

/// A pidfd: a descriptor that becomes readable when the process ends (Linux ≥ 5.3).
pub(crate) fn pidfd_open(pid: Pid) -> Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1; it touches no
    // memory of ours.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0) };
    if fd < 0 {
        return Err(Error::io("pidfd_open", io::Error::last_os_error()));
    }
    let fd = i32::try_from(fd).map_err(|_| Error::io("pidfd_open", io::ErrorKind::InvalidData))?;
    // SAFETY: the kernel just returned this descriptor to us and nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The `poll` timeout that ends at `deadline` (`None`: no limit), rounded up to whole
/// milliseconds so that a sub-millisecond remainder still waits.
pub(crate) fn poll_timeout(deadline: Option<Instant>) -> PollTimeout {
    match deadline {
        None => PollTimeout::NONE,
        Some(d) => {
            let left = d.saturating_duration_since(Instant::now());
            let ms = left.as_micros().div_ceil(1000).min(i32::MAX as u128);
            PollTimeout::try_from(ms as i32).unwrap_or(PollTimeout::MAX)
        }
    }
}

/// Waits until `fd` is readable (or hung up) or `deadline` passes; `true` when readable.
/// `None` waits without limit. Retries on `EINTR` with the remaining time.
pub(crate) fn wait_readable(fd: BorrowedFd<'_>, deadline: Option<Instant>) -> Result<bool> {
    loop {
        let timeout = poll_timeout(deadline);
        let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
        match nix::poll::poll(&mut fds, timeout) {
            Ok(0) => {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    return Ok(false);
                }
            }
            Ok(_) => return Ok(true),
            Err(Errno::EINTR) => {}
            Err(e) => return Err(Error::io("poll", e)),
        }
    }
}

/// A pipe whose ends are closed on `exec`.
pub(crate) fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| Error::io("pipe2", e))
}

/// Writes all of `buf` to `fd`, retrying on `EINTR` and short writes.
pub(crate) fn write_all(fd: BorrowedFd<'_>, mut buf: &[u8]) -> Result<()> {
    while !buf.is_empty() {
        match nix::unistd::write(fd, buf) {
            Ok(0) => return Err(Error::io("write", io::ErrorKind::WriteZero)),
            Ok(n) => buf = &buf[n..],
            Err(Errno::EINTR) => {}
            Err(Errno::EPIPE) => {
                return Err(Error::Disconnected("the reading end is closed".into()));
            }
            Err(e) => return Err(Error::io("write", e)),
        }
    }
    Ok(())
}

/// Reads into `buf`, retrying on `EINTR`; returns the number of bytes read (0 at end of file).
pub(crate) fn read(fd: BorrowedFd<'_>, buf: &mut [u8]) -> Result<usize> {
    loop {
        match nix::unistd::read(fd, buf) {
            Ok(n) => return Ok(n),
            Err(Errno::EINTR) => {}
            Err(e) => return Err(Error::io("read", e)),
        }
    }
}

/// The calling process's id.
pub(crate) fn getpid() -> Pid {
    nix::unistd::getpid()
}

/// The calling thread's id.
pub(crate) fn gettid() -> i32 {
    nix::unistd::gettid().as_raw()
}

/// The state letter and start time (clock ticks since boot, field 22) of `pid` from
/// `/proc/PID/stat`, or `None` when there is no such process. Pid and start time together name a
/// process uniquely, even after the pid is reused.
pub(crate) fn proc_stat(pid: i32) -> Option<(char, u64)> {
    parse_stat(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

fn parse_stat(stat: &str) -> Option<(char, u64)> {
    // The command name (field 2) is in parentheses and may itself contain spaces or ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace();
    let state = fields.next()?.chars().next()?;
    // `rest` starts at field 3 (state); starttime is field 22.
    let start = fields.nth(18)?.parse().ok()?;
    Some((state, start))
}

/// Whether the process `pid` that started at `start_time` still runs (is not gone, not a
/// zombie). When `/proc` cannot be read for another reason (no descriptor left, say), the answer
/// is "alive": callers use this to decide that nobody is left, and must never decide it wrongly.
pub(crate) fn process_alive(pid: i32, start_time: u64) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(e) if e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ESRCH) => {
            false
        }
        Err(_) => true,
        Ok(stat) => match parse_stat(&stat) {
            Some((state, start)) => start == start_time && state != 'Z' && state != 'X',
            None => true,
        },
    }
}

/// Flushes Rust's standard output and error buffers; used before a child's `_exit`.
pub(crate) fn flush_stdio() {
    use std::io::Write;
    let _ = io::stdout().flush();
    let _ = io::stderr().flush();
}

/// Rust's stdout and stderr locks, taken (in that order) and flushed; held across a fork so that
/// the child never inherits them held by a thread that does not exist there.
pub(crate) struct StdioLocks {
    _out: io::StdoutLock<'static>,
    _err: io::StderrLock<'static>,
}

impl StdioLocks {
    /// Takes both locks and flushes both streams (flush errors are ignored, as at exit).
    pub(crate) fn flushed() -> Self {
        use std::io::Write;
        let mut out = io::stdout().lock();
        let mut err = io::stderr().lock();
        let _ = out.flush();
        let _ = err.flush();
        StdioLocks {
            _out: out,
            _err: err,
        }
    }
}

// ---- Additions for the pool (src/pool/) ----

/// A connected pair of Unix stream sockets, closed on `exec`. Both ends block; the pool's parent
/// side uses [`send`] and [`socket::recv_once`] with `nonblocking = true` on its end.
pub(crate) fn socketpair() -> Result<(OwnedFd, OwnedFd)> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType};
    let (a, b) = nix::sys::socket::socketpair(
        AddressFamily::Unix,
        SockType::Stream,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(|e| Error::io("socketpair", e))?;
    // Larger send buffers mean fewer wake-ups for big messages; best effort (capped by
    // net.core.wmem_max).
    for fd in [&a, &b] {
        let _ = nix::sys::socket::setsockopt(fd, nix::sys::socket::sockopt::SndBuf, &(2 << 20));
    }
    Ok((a, b))
}

/// Sends bytes on a stream socket without raising `SIGPIPE` (a gone peer is
/// [`Error::Disconnected`]). With `nonblocking`, `Ok(0)` means the socket buffer is full.
/// Retries on `EINTR`.
pub(crate) fn send(fd: BorrowedFd<'_>, buf: &[u8], nonblocking: bool) -> Result<usize> {
    use nix::sys::socket::MsgFlags;
    use std::os::fd::AsRawFd;
    let mut flags = MsgFlags::MSG_NOSIGNAL;
    if nonblocking {
        flags |= MsgFlags::MSG_DONTWAIT;
    }
    loop {
        match nix::sys::socket::send(fd.as_raw_fd(), buf, flags) {
            Ok(n) => return Ok(n),
            Err(Errno::EINTR) => {}
            Err(Errno::EAGAIN) => return Ok(0),
            Err(Errno::EPIPE | Errno::ECONNRESET) => {
                return Err(Error::Disconnected("the peer closed its end".into()));
            }
            Err(e) => return Err(Error::io("send", e)),
        }
    }
}

/// What [`poll_many`] asks about one descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Interest {
    /// Readable (or hung up).
    Read,
    /// Readable or writable (the pool's scheduler uses epoll; the MPI bridge uses this).
    #[cfg_attr(not(feature = "mpi"), allow(dead_code))]
    ReadWrite,
}

/// Polls several descriptors until one is ready or `deadline` passes. Returns, per descriptor,
/// `(readable_or_hung_up, writable)`; all `false` on timeout. Retries on `EINTR`.
pub(crate) fn poll_many(
    fds: &[(BorrowedFd<'_>, Interest)],
    deadline: Option<Instant>,
) -> Result<Vec<(bool, bool)>> {
    let mut pfds: Vec<PollFd<'_>> = fds
        .iter()
        .map(|(fd, interest)| {
            let flags = match interest {
                Interest::Read => PollFlags::POLLIN,
                Interest::ReadWrite => PollFlags::POLLIN | PollFlags::POLLOUT,
            };
            PollFd::new(*fd, flags)
        })
        .collect();
    loop {
        match nix::poll::poll(&mut pfds, poll_timeout(deadline)) {
            Ok(0) => return Ok(vec![(false, false); fds.len()]),
            Ok(_) => {
                return Ok(pfds
                    .iter()
                    .map(|p| {
                        let r = p.revents().unwrap_or(PollFlags::empty());
                        (
                            r.intersects(
                                PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR,
                            ),
                            r.contains(PollFlags::POLLOUT),
                        )
                    })
                    .collect());
            }
            Err(Errno::EINTR) => {}
            Err(e) => return Err(Error::io("poll", e)),
        }
    }
}

/// The parent process's id.
pub(crate) fn getppid() -> Pid {
    nix::unistd::getppid()
}

/// `CLOCK_MONOTONIC` in nanoseconds: the same clock in every process of the machine.
pub(crate) fn monotonic_ns() -> u64 {
    use nix::time::{ClockId, clock_gettime};
    clock_gettime(ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}

/// Sends `sig` to the process of `pidfd` (`pidfd_send_signal`): unlike `kill` by pid, it can
/// never hit another process that reused the pid. A process that has ended is not an error.
pub(crate) fn pidfd_send_signal(pidfd: BorrowedFd<'_>, sig: Signal) -> Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: the syscall takes a descriptor, a signal number, a null siginfo and flags 0; it
    // touches no memory of ours.
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            sig as libc::c_int,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ESRCH) {
            return Ok(());
        }
        return Err(Error::io("pidfd_send_signal", e));
    }
    Ok(())
}

/// Takes ownership of descriptor `fd`, inherited through `exec` from the process that started
/// this one (which passed its number), and marks it close-on-exec; `None` if it is not open.
pub(crate) fn own_inherited_fd(fd: std::os::fd::RawFd) -> Option<OwnedFd> {
    // SAFETY: `fcntl(F_SETFD)` on a number only changes that descriptor's flags, or fails with
    // EBADF when none is open under it.
    if fd < 0 || unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) } < 0 {
        return None;
    }
    // SAFETY: the descriptor is open (checked above) and nothing else in this process knows it:
    // it was inherited through exec, and its number came only in the starter's variable.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Closes a descriptor this process inherited through `fork` and has no owner for here (the
/// owning value belongs to the parent's copy of memory and is never dropped in the child).
pub(crate) fn close_inherited(fd: std::os::fd::RawFd) {
    // SAFETY: called in a child right after fork on descriptors whose owners live in memory the
    // child never drops or uses (it `_exit`s), so nothing else closes or uses them.
    unsafe {
        libc::close(fd);
    }
}

/// [`close_inherited`] for many, each run of consecutive numbers in one `close_range` call (a
/// pool's descriptors are made together, so a worker of 128 closes ~2 runs, not 256 descriptors
/// one by one); one by one where the kernel lacks `close_range` (before 5.9). Runs are taken in
/// the order given, which any order closes correctly and ascending order closes in fewest calls:
/// callers sort in the parent, since sorting in the child writes pages it shares with the parent
/// copy-on-write. Allocates nothing.
pub(crate) fn close_all_inherited(fds: impl IntoIterator<Item = std::os::fd::RawFd>) {
    let mut run: Option<(i32, i32)> = None;
    for fd in fds {
        run = match run {
            Some((first, last)) if fd == last || fd == last + 1 => Some((first, fd)),
            Some(done) => {
                close_inherited_run(done);
                Some((fd, fd))
            }
            None => Some((fd, fd)),
        };
    }
    if let Some(done) = run {
        close_inherited_run(done);
    }
}

/// Closes `first..=last`, every one of them inherited (see [`close_all_inherited`]).
fn close_inherited_run((first, last): (i32, i32)) {
    // SAFETY: as in `close_inherited`: every descriptor in `first..=last` is one the caller
    // listed, so each is one this child inherited and must close, and nothing else uses them.
    let rc = unsafe { libc::syscall(libc::SYS_close_range, first, last, 0) };
    if rc != 0 {
        (first..=last).for_each(close_inherited);
    }
}

//! Process groups, the parent-death signal, waiting without reaping, and `atexit`: what
//! `children.rs` needs from the kernel so that a child never outlives its parent.
//!
//! Every child forked through `fork::fork_child` leads its own process group, so that what it
//! starts by ordinary means (a `std::process::Command`, a plain fork) is in that group too. The
//! child asks the kernel for [`parent_death_signal`] when its parent dies (`PR_SET_PDEATHSIG`);
//! the handler, [`on_parent_death`], kills the whole group. The kernel also sends that signal
//! when only the *thread* that forked the child ends while the parent lives on (the
//! `PR_SET_PDEATHSIG` thread caveat): the handler then sees `getppid()` unchanged and ignores it;
//! the signal comes again when the parent process itself dies.

use std::os::fd::{IntoRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

use crate::error::{Error, Result};
use crate::sys::Pid;

/// The parent this process was forked from (set in the child right after the fork).
static PARENT: AtomicI32 = AtomicI32::new(0);
/// The process group this process leads (its own pid, set with `PARENT`).
static GROUP: AtomicI32 = AtomicI32::new(0);

/// The signal a child gets when its parent dies: the highest real-time signal, which libraries
/// rarely use (a task that installs its own handler for it gives up the group kill; its default
/// action, after an `exec`, still ends the process).
pub(crate) fn parent_death_signal() -> i32 {
    libc::SIGRTMAX()
}

/// The handler of [`parent_death_signal`]. Sent by the kernel for two reasons:
/// - the parent-death signal (`si_code` `SI_USER`): if the parent is gone (`getppid()` differs
///   from the recorded parent), kills this process's group (itself and what it started) with
///   `SIGKILL`; otherwise (only the forking thread ended) does nothing;
/// - the watch pipe's write end closed (`si_code` `POLL_*`, positive): the parent is dying (its
///   descriptors close before it is gone, so `getppid()` may not have changed yet): kills the
///   group, unless the task set a parent-death signal of its own (it handles the parent's death).
///
/// Async-signal-safe: `getppid`, `getpid`, `prctl` and `kill` only, atomics for recorded ids.
extern "C" fn on_parent_death(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let parent = PARENT.load(Ordering::SeqCst);
    if parent == 0 {
        return;
    }
    // SAFETY: the kernel passes a valid siginfo to an SA_SIGINFO handler.
    let code = unsafe { (*info).si_code };
    if code > 0 {
        let mut current: libc::c_int = 0;
        // SAFETY: PR_GET_PDEATHSIG writes one int at the address given.
        unsafe { libc::prctl(libc::PR_GET_PDEATHSIG, &mut current as *mut libc::c_int) };
        if current == 0 || current == parent_death_signal() {
            kill_own_group();
        }
        return;
    }
    // SAFETY: getppid takes no argument and cannot fail.
    if unsafe { libc::getppid() } != parent {
        kill_own_group();
    }
}

/// Kills this process's group (recorded at [`die_with_parent`]) and this process, with
/// `SIGKILL`. Async-signal-safe. Does nothing in a process that did not arm it.
pub(crate) fn kill_own_group() {
    let group = GROUP.load(Ordering::SeqCst);
    if group <= 0 {
        return;
    }
    // SAFETY: kill takes plain integers; a negative pid names the process group. The group is
    // this process's own (it may have left it: then it is killed by the second call).
    unsafe {
        libc::kill(-group, libc::SIGKILL);
        libc::kill(libc::getpid(), libc::SIGKILL);
    }
}

/// Whether this process was forked by multiproc and its parent has died since (it was adopted).
pub(crate) fn orphaned() -> bool {
    let parent = PARENT.load(Ordering::SeqCst);
    // SAFETY: getppid takes no argument and cannot fail.
    parent != 0 && unsafe { libc::getppid() } != parent
}

/// The write end of each child's watch pipe, by child pid: held here until the child is reaped
/// (`sys::wait_blocking`, `sys::try_wait` call [`reaped`]).
static WATCHES: Mutex<Vec<(i32, OwnedFd)>> = Mutex::new(Vec::new());

/// The watch table, locked (across a fork, so that no other thread holds it then).
pub(crate) struct Watches(MutexGuard<'static, Vec<(i32, OwnedFd)>>);

/// Locks the watch table.
pub(crate) fn watches() -> Watches {
    Watches(WATCHES.lock().unwrap_or_else(|e| e.into_inner()))
}

impl Watches {
    /// In the parent: keeps `write`, the write end of the watch pipe of the new child `pid`, and
    /// drops those of children that have ended (reaped elsewhere than through `sys`). That sweep
    /// asks the kernel about every child, so it runs only when the table has doubled since the
    /// last one: forking N children costs O(N) in all, not O(N²) (a 128-worker pool).
    pub(crate) fn add(&mut self, pid: Pid, write: OwnedFd) {
        static SWEEP_AT: AtomicUsize = AtomicUsize::new(0);
        if self.0.len() >= SWEEP_AT.load(Ordering::Relaxed) {
            self.0.retain(|(p, _)| !has_ended(Pid::from_raw(*p), false));
            SWEEP_AT.store((2 * self.0.len()).max(16), Ordering::Relaxed);
        }
        self.0.push((pid.as_raw(), write));
    }

    /// In a new child: closes its copies of the parent's write ends (its siblings' pipes) and
    /// the descriptors of `also`, merged in one ascending pass when both are sorted (the pipes
    /// are made in order), so that runs of consecutive numbers close in one call each.
    pub(crate) fn clear(&mut self, also: &[RawFd]) {
        let pipes = self.0.drain(..).map(|(_, w)| w.into_raw_fd());
        super::close_all_inherited(MergeAscending::new(pipes, also.iter().copied()));
    }
}

/// Two ascending sequences as one ascending sequence (any order in, every item out once).
struct MergeAscending<A: Iterator, B: Iterator> {
    a: std::iter::Peekable<A>,
    b: std::iter::Peekable<B>,
}

impl<A: Iterator<Item = RawFd>, B: Iterator<Item = RawFd>> MergeAscending<A, B> {
    fn new(a: A, b: B) -> Self {
        MergeAscending {
            a: a.peekable(),
            b: b.peekable(),
        }
    }
}

impl<A: Iterator<Item = RawFd>, B: Iterator<Item = RawFd>> Iterator for MergeAscending<A, B> {
    type Item = RawFd;

    fn next(&mut self) -> Option<RawFd> {
        match (self.a.peek(), self.b.peek()) {
            (Some(x), Some(y)) if y < x => self.b.next(),
            (Some(_), _) => self.a.next(),
            (None, _) => self.b.next(),
        }
    }
}

/// The child `pid` was reaped: its watch pipe's write end is closed.
pub(crate) fn reaped(pid: Pid) {
    let mut w = WATCHES.lock().unwrap_or_else(|e| e.into_inner());
    if !w.is_empty() {
        w.retain(|(p, _)| *p != pid.as_raw());
    }
}

/// `fcntl`'s command that picks the signal of `O_ASYNC` (Linux's value; not in the `libc` crate).
const F_SETSIG: libc::c_int = 10;

/// This process's watch pipe (read end), inherited by its own children, who close it.
static WATCH: AtomicI32 = AtomicI32::new(-1);

/// In a freshly forked child: leads a new process group, and arms the parent-death signal with
/// [`on_parent_death`] as its handler, and the same signal for the hang-up of `watch`, the read
/// end of a pipe whose only write end the parent holds. Returns `false` if the parent `parent`
/// died before the signal was armed (the kernel would never send it): the caller must then end
/// at once.
pub(crate) fn die_with_parent(parent: Pid, watch: Option<OwnedFd>) -> bool {
    let inherited = WATCH.swap(watch.map_or(-1, IntoRawFd::into_raw_fd), Ordering::SeqCst);
    if inherited >= 0 {
        // SAFETY: the parent's own watch pipe, inherited through the fork; its owner was a
        // static of the parent, and nothing else here uses it.
        unsafe { libc::close(inherited) };
    }
    // SAFETY: setpgid(0, 0) makes the calling process the leader of a group named after it; it
    // fails only for a session leader (a fresh child is not one), then the group stays.
    unsafe { libc::setpgid(0, 0) };
    // SAFETY: getpgrp takes no argument and cannot fail.
    GROUP.store(unsafe { libc::getpgrp() }, Ordering::SeqCst);
    PARENT.store(parent.as_raw(), Ordering::SeqCst);
    let sig = parent_death_signal();
    // SAFETY: a zeroed sigaction is valid (empty mask, no flags); the handler is an
    // `extern "C" fn(c_int)` that only makes async-signal-safe calls (see `on_parent_death`).
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_parent_death
            as extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void)
            as libc::sighandler_t;
        action.sa_flags = libc::SA_RESTART | libc::SA_SIGINFO;
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(sig, &action, std::ptr::null_mut());
        // The signal may be blocked in the mask inherited from the forking thread.
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, sig);
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
        libc::prctl(libc::PR_SET_PDEATHSIG, sig as libc::c_ulong, 0, 0, 0);
        let fd = WATCH.load(Ordering::SeqCst);
        if fd >= 0 {
            // The pipe's hang-up signals this process, with `sig` and a POLL_* code.
            libc::fcntl(fd, libc::F_SETOWN, libc::getpid());
            libc::fcntl(fd, F_SETSIG, sig);
            let flags = libc::fcntl(fd, libc::F_GETFL);
            libc::fcntl(fd, libc::F_SETFL, flags | libc::O_ASYNC | libc::O_NONBLOCK);
        }
    }
    // The parent may have died (or begun to: its descriptors close first) between the fork and
    // the arming: then no signal will come.
    !orphaned() && !watch_hung_up()
}

/// Whether the write end of this process's watch pipe is closed (the parent is dying).
fn watch_hung_up() -> bool {
    let fd = WATCH.load(Ordering::SeqCst);
    if fd < 0 {
        return false;
    }
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: poll reads and writes the one pollfd given, with a zero timeout.
    let n = unsafe { libc::poll(&mut pfd, 1, 0) };
    n == 1 && pfd.revents & libc::POLLHUP != 0
}

/// In the parent right after a fork: puts the child `pid` in its own group too (the child does it
/// as well; whichever runs first wins, so the group exists as soon as either returns). Errors
/// (the child already ran `exec`, or is gone) are ignored: the child's own call stands.
pub(crate) fn put_in_own_group(pid: Pid) {
    // SAFETY: setpgid takes plain integers and touches no memory of ours.
    unsafe { libc::setpgid(pid.as_raw(), pid.as_raw()) };
}

/// Sends `sig` to the process group `pgid` (a child's, led by it). A gone group is not an error.
pub(crate) fn kill_group(pgid: Pid, sig: i32) -> Result<()> {
    // SAFETY: kill takes plain integers; a negative pid names the process group.
    if unsafe { libc::kill(-pgid.as_raw(), sig) } == 0 {
        return Ok(());
    }
    match std::io::Error::last_os_error() {
        e if e.raw_os_error() == Some(libc::ESRCH) => Ok(()),
        e => Err(Error::io("kill (process group)", e)),
    }
}

/// Whether our child `pid` has ended, without reaping it (`waitid` with `WNOWAIT`). With `block`
/// waits until it ends. A pid that is not (or no longer) our child counts as ended.
pub(crate) fn has_ended(pid: Pid, block: bool) -> bool {
    let mut flags = libc::WEXITED | libc::WNOWAIT;
    if !block {
        flags |= libc::WNOHANG;
    }
    loop {
        let mut info = std::mem::MaybeUninit::<libc::siginfo_t>::zeroed();
        // SAFETY: waitid writes into `info`, a zeroed siginfo_t; WNOWAIT leaves the child as it
        // is (a zombie stays one, for its owner to reap).
        let rc = unsafe {
            libc::waitid(
                libc::P_PID,
                pid.as_raw() as libc::id_t,
                info.as_mut_ptr(),
                flags,
            )
        };
        if rc == 0 {
            // SAFETY: zeroed, then possibly filled by waitid; with WNOHANG si_pid stays 0 while
            // the child runs.
            return unsafe { info.assume_init().si_pid() } != 0;
        }
        if std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return true;
        }
    }
}

/// Registers `handler` to run when the program ends normally (return from `main`,
/// `std::process::exit`, a panic that ends `main`), after handlers registered later.
pub(crate) fn at_exit(handler: extern "C" fn()) -> Result<()> {
    // SAFETY: atexit stores a function pointer; the handler is an `extern "C" fn()` that lives
    // for the whole program.
    if unsafe { libc::atexit(handler) } != 0 {
        return Err(Error::io("atexit", std::io::ErrorKind::OutOfMemory));
    }
    Ok(())
}

//! [`Process`]: run a closure in a forked child, Python style; and [`spawn`], the typed form.

use std::fmt;
use std::marker::PhantomData;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::children;
use crate::error::{Error, RemotePanic, Result};
use crate::fork::fork_child;
use crate::liveness::JoiningGuard;
use crate::panic;
use crate::sys::{self, ExitStatus, Pid, lineage};
use crate::wire::{self, FrameReader};

type Target = Box<dyn FnOnce() + Send + 'static>;

enum State {
    New(Target),
    Running {
        pid: Pid,
        pidfd: OwnedFd,
        /// Its entry in the registry of children (`children.rs`).
        token: u64,
    },
    Done {
        pid: Pid,
        status: ExitStatus,
    },
    /// Only while `start` runs, or after a failed start.
    Empty,
}

/// A closure running in a child process: Python's `multiprocessing.Process`.
///
/// The closure may capture anything: the child is a copy of the parent's memory made at
/// [`start`](Process::start) (a `fork`), so nothing is serialized. Its exit code follows Python's
/// [`exitcode`](Process::exitcode).
///
/// # Examples
///
/// ```
/// use multiproc::Process;
///
/// let n = 5;
/// let p = Process::new(move || println!("square of {n} is {}", n * n)).name("square");
/// p.start()?;
/// p.join()?;
/// assert_eq!(p.exitcode(), Some(0));
/// # Ok::<(), multiproc::Error>(())
/// ```
///
/// # Daemon and non-daemon children (Python's rule)
///
/// A `Process` is non-daemon by default. Dropping a started non-daemon `Process` does not stop
/// its child: the child is *detached* and runs on, and when the program ends normally (a return
/// from `main`, `std::process::exit`, a panic that ends `main`) it waits for every non-daemon
/// child, as Python does; a detached child that ends earlier is reaped at the next
/// [`start`](Process::start) or [`active_children`](crate::active_children) call. A daemon child
/// ([`daemon(true)`](Process::daemon)) is killed with its process group (`SIGKILL`) and reaped
/// when its `Process` is dropped, and killed when the program ends. An abnormal end of the
/// program (`SIGKILL`, an uncaught signal) takes every child down, daemon or not, with what the
/// children started (each child leads its own process group, killed when its parent dies).
///
/// ```
/// use multiproc::Process;
///
/// for i in 0..4 {
///     let p = Process::new(move || println!("worker {i} done"));
///     p.start()?; // `p` is dropped here: the child runs on, the program waits for it at exit
/// }
/// # Ok::<(), multiproc::Error>(())
/// ```
///
/// # Caveats
///
/// The methods take `&self`, so a `Process` can be shared between threads (one joins, another
/// terminates). [`terminate`](Process::terminate) and [`kill`](Process::kill) signal the child's
/// whole process group, so what it started ends too.
pub struct Process {
    name: String,
    daemon: bool,
    state: Mutex<State>,
}

static COUNTER: AtomicU64 = AtomicU64::new(1);

impl fmt::Debug for Process {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Process")
            .field("name", &self.name)
            .field("pid", &self.pid())
            .finish()
    }
}

impl Process {
    /// A process that will run `target` once started. Its default name is `Process-N`.
    pub fn new(target: impl FnOnce() + Send + 'static) -> Self {
        Process {
            name: format!("Process-{}", COUNTER.fetch_add(1, Ordering::Relaxed)),
            daemon: false,
            state: Mutex::new(State::New(Box::new(target))),
        }
    }

    /// Sets the name: shown in errors and, truncated to 15 bytes, as the child's command name in
    /// `ps` and `top`.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// The process's name.
    pub fn get_name(&self) -> &str {
        &self.name
    }

    /// Makes the child a daemon (Python's `daemon = True`): killed, with its process group, when
    /// its `Process` is dropped or the program ends, instead of being waited for. Default
    /// `false`; see [the rule](Process#daemon-and-non-daemon-children-pythons-rule).
    ///
    /// ```
    /// use multiproc::Process;
    ///
    /// let p = Process::new(|| std::thread::sleep(std::time::Duration::from_secs(60))).daemon(true);
    /// p.start()?;
    /// assert!(p.is_daemon());
    /// drop(p); // killed and reaped now; the program does not wait a minute at exit
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    pub fn daemon(mut self, daemon: bool) -> Self {
        self.daemon = daemon;
        self
    }

    /// Whether the child is a daemon ([`daemon`](Process::daemon)).
    pub fn is_daemon(&self) -> bool {
        self.daemon
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Forks the child, which runs the closure and exits: code 0 when it returns, 1 when it
    /// panics (the panic message goes to stderr, as the default hook prints it).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidState`] if already started; [`Error::Io`] if `fork` fails.
    pub fn start(&self) -> Result<()> {
        let mut state = self.state();
        let target = match std::mem::replace(&mut *state, State::Empty) {
            State::New(target) => target,
            other => {
                *state = other;
                return Err(Error::InvalidState(format!(
                    "process {:?} was already started",
                    self.name
                )));
            }
        };
        let (name, daemon) = (self.name.clone(), self.daemon);
        children::reap_detached();
        let pid = fork_child(move || {
            set_command_name(&name);
            children::set_current(children::ChildName::Given(name), daemon);
            match panic::catch(target) {
                Ok(()) => 0,
                Err(_) => 1,
            }
        })?;
        let pidfd = match sys::pidfd_open(pid) {
            Ok(fd) => fd,
            Err(e) => {
                let _ = sys::kill(pid, Signal::SIGKILL);
                let _ = sys::wait_blocking(pid);
                return Err(e);
            }
        };
        let token = children::add(pid, self.daemon);
        *state = State::Running { pid, pidfd, token };
        Ok(())
    }

    /// Waits for the child to end and reaps it. Joining an ended process again returns at once.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidState`] before [`start`](Process::start).
    pub fn join(&self) -> Result<()> {
        self.join_deadline(None).map(|_| ())
    }

    /// Waits at most `timeout` for the child to end. `Ok(true)` when it ended (and was reaped),
    /// `Ok(false)` when it still runs.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidState`] before [`start`](Process::start).
    pub fn join_timeout(&self, timeout: Duration) -> Result<bool> {
        self.join_deadline(Some(Instant::now() + timeout))
    }

    fn join_deadline(&self, deadline: Option<Instant>) -> Result<bool> {
        let _joining = self
            .pid()
            .map(|pid| JoiningGuard::new(Pid::from_raw(pid), deadline));
        loop {
            // Wait on a duplicate of the pidfd so that other threads can signal meanwhile.
            let pidfd = {
                let state = self.state();
                match &*state {
                    State::New(_) | State::Empty => {
                        return Err(Error::InvalidState(format!(
                            "process {:?} was joined before it was started",
                            self.name
                        )));
                    }
                    State::Done { .. } => return Ok(true),
                    State::Running { pidfd, .. } => {
                        pidfd.try_clone().map_err(|e| Error::io("dup pidfd", e))?
                    }
                }
            };
            if !sys::wait_readable(pidfd.as_fd(), deadline)? {
                return Ok(false);
            }
            if self.poll_exit()?.is_some() {
                return Ok(true);
            }
        }
    }

    /// Reaps the child if it has ended; returns its status.
    fn poll_exit(&self) -> Result<Option<ExitStatus>> {
        let mut state = self.state();
        match &*state {
            State::Running { pid, token, .. } => {
                let (pid, token) = (*pid, *token);
                match sys::try_wait(pid)? {
                    Some(status) => {
                        children::forget(token);
                        *state = State::Done { pid, status };
                        Ok(Some(status))
                    }
                    None => Ok(None),
                }
            }
            State::Done { status, .. } => Ok(Some(*status)),
            _ => Ok(None),
        }
    }

    /// Whether the child has been started and has not ended yet (reaps it if it has ended).
    pub fn is_alive(&self) -> bool {
        matches!(&*self.state(), State::Running { .. }) && matches!(self.poll_exit(), Ok(None))
    }

    /// The child's pid, once started.
    pub fn pid(&self) -> Option<i32> {
        match &*self.state() {
            State::Running { pid, .. } | State::Done { pid, .. } => Some(pid.as_raw()),
            _ => None,
        }
    }

    /// Python's `exitcode`: `None` while running (or not started), `Some(0)` after a normal end,
    /// `Some(1)` when the closure panicked, `Some(n)` after `std::process::exit(n)`, and `Some(-N)`
    /// when killed by signal `N` (`Some(-9)` for `SIGKILL`).
    pub fn exitcode(&self) -> Option<i32> {
        self.poll_exit().ok().flatten().map(ExitStatus::exitcode)
    }

    /// Sends `SIGTERM` to the child. A no-op once it has ended.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidState`] before [`start`](Process::start).
    pub fn terminate(&self) -> Result<()> {
        self.signal(Signal::SIGTERM)
    }

    /// Sends `SIGKILL` to the child. A no-op once it has ended.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidState`] before [`start`](Process::start).
    pub fn kill(&self) -> Result<()> {
        self.signal(Signal::SIGKILL)
    }

    fn signal(&self, sig: Signal) -> Result<()> {
        // The state lock is held while signalling, so the pid cannot be reaped (and reused)
        // in between.
        match &*self.state() {
            State::Running { pid, .. } => {
                lineage::kill_group(*pid, sig as i32)?;
                sys::kill(*pid, sig)
            }
            State::Done { .. } => Ok(()),
            _ => Err(Error::InvalidState(format!(
                "process {:?} was signalled before it was started",
                self.name
            ))),
        }
    }

    /// How the child ended, once it has (used by [`JoinHandle`]).
    fn status(&self) -> Option<(Pid, ExitStatus)> {
        match &*self.state() {
            State::Done { pid, status } => Some((*pid, *status)),
            _ => None,
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let state = self.state.get_mut().unwrap_or_else(|e| e.into_inner());
        if let State::Running { pid, token, .. } = state {
            let (pid, token) = (*pid, *token);
            if let Ok(None) = sys::try_wait(pid) {
                if !self.daemon {
                    // Python's rule: the child runs on; the registry reaps it.
                    children::detach(token);
                    return;
                }
                let _ = lineage::kill_group(pid, libc::SIGKILL);
                let _ = sys::kill(pid, Signal::SIGKILL);
                let _ = sys::wait_blocking(pid);
            }
            children::forget(token);
        }
    }
}

/// Sets the calling process's command name (what `ps -o comm` shows), best effort.
fn set_command_name(name: &str) {
    // A stack buffer: the child should allocate (and so dirty heap pages) as little as it can.
    let mut buf = [0u8; 16];
    for (dst, b) in buf
        .iter_mut()
        .zip(name.bytes().filter(|&b| b != 0).take(15))
    {
        *dst = b;
    }
    if let Ok(cname) = std::ffi::CStr::from_bytes_until_nul(&buf) {
        let _ = nix::sys::prctl::set_name(cname);
    }
}

const TAG_VALUE: u8 = 0;
const TAG_PANIC: u8 = 1;
const TAG_FAILED: u8 = 2;

/// Runs `f` in a forked child and returns a handle to its typed result.
///
/// `f` may capture anything (the child is a copy of the parent); its result travels back
/// serialized, so `R: Serialize + DeserializeOwned`.
///
/// # Examples
///
/// ```
/// let data = vec![1u64, 2, 3];
/// let handle = multiproc::spawn(move || data.iter().sum::<u64>())?;
/// assert_eq!(handle.join()?, 6);
///
/// let handle = multiproc::spawn(|| -> u32 { panic!("no answer") })?;
/// let err = handle.join().unwrap_err();
/// assert_eq!(err.panic().unwrap().message, "no answer");
/// # Ok::<(), multiproc::Error>(())
/// ```
///
/// # Errors
///
/// [`Error::Io`] if the pipe or the fork fails.
pub fn spawn<F, R>(f: F) -> Result<JoinHandle<R>>
where
    F: FnOnce() -> R + Send + 'static,
    R: Serialize + DeserializeOwned,
{
    let (rx, tx) = sys::pipe()?;
    let process = Process::new(move || {
        let mut body = Vec::new();
        match panic::catch(f) {
            Ok(value) => {
                body.push(TAG_VALUE);
                if let Err(e) = wire::encode_append(&value, &mut body) {
                    body = vec![TAG_FAILED];
                    let why = format!("the result could not be encoded: {e}");
                    body.extend(wire::encode(&why).unwrap_or_default());
                }
            }
            Err(p) => {
                body.push(TAG_PANIC);
                body.extend(wire::encode(&p).unwrap_or_default());
            }
        }
        // If the parent is gone there is no one to tell; the exit code still says it.
        let _ = wire::write_frame(tx.as_fd(), &body);
    });
    process.start()?;
    Ok(JoinHandle {
        process,
        rx,
        reader: FrameReader::default(),
        answer: None,
        _result: PhantomData,
    })
}

/// A handle to a child started by [`spawn`]; [`join`](JoinHandle::join) gives its result.
///
/// The child is a non-daemon child, as a [`Process`] is by default: dropping the handle of a
/// running child detaches it (it runs on, its result is discarded, and the program waits for it
/// when it ends normally); [`kill`](JoinHandle::kill) it first to stop it.
pub struct JoinHandle<R> {
    process: Process,
    rx: OwnedFd,
    reader: FrameReader,
    /// The child's answer frame once read (`Some(None)`: it closed the pipe without one).
    answer: Option<Option<Vec<u8>>>,
    _result: PhantomData<fn() -> R>,
}

impl<R> fmt::Debug for JoinHandle<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinHandle")
            .field("pid", &self.process.pid())
            .finish()
    }
}

impl<R: DeserializeOwned> JoinHandle<R> {
    /// The child's pid.
    pub fn pid(&self) -> i32 {
        self.process.pid().unwrap_or(0)
    }

    /// Whether the child has ended.
    pub fn is_finished(&self) -> bool {
        !self.process.is_alive()
    }

    /// Sends `SIGKILL` to the child; [`join`](JoinHandle::join) then reports
    /// [`Error::WorkerDied`].
    ///
    /// # Errors
    ///
    /// [`Error::Io`] if the signal cannot be sent.
    pub fn kill(&self) -> Result<()> {
        self.process.kill()
    }

    /// Waits for the child and returns its result.
    ///
    /// # Errors
    ///
    /// [`Error::TaskPanicked`] with the panic's message and location if the closure panicked;
    /// [`Error::WorkerDied`] with the signal or exit code if the child ended without answering
    /// (killed, or `std::process::exit` called in the closure).
    pub fn join(mut self) -> Result<R> {
        self.finish(None)
    }

    /// Waits at most `timeout` for the result. On [`Error::Timeout`] the handle stays usable (bytes
    /// already received are kept), so the call can be repeated.
    ///
    /// # Errors
    ///
    /// As [`join`](JoinHandle::join), plus [`Error::Timeout`].
    pub fn join_timeout(&mut self, timeout: Duration) -> Result<R> {
        self.finish(Some(Instant::now() + timeout))
    }

    fn finish(&mut self, deadline: Option<Instant>) -> Result<R> {
        if self.answer.is_none() {
            let frame = {
                let _joining = JoiningGuard::new(Pid::from_raw(self.pid()), deadline);
                self.reader.read(self.rx.as_fd(), deadline)
            };
            self.answer = Some(match frame {
                Ok(frame) => frame,
                Err(Error::Disconnected(_)) => None,
                Err(e) => return Err(e),
            });
        }
        // The child writes its answer just before it exits: reap it (bounded by the deadline).
        if !self.process.join_deadline(deadline)? {
            return Err(Error::Timeout {
                operation: "waiting for the child to exit",
                after: Duration::ZERO,
                task: None,
            });
        }
        let (pid, status) = self.process.status().expect("joined process has a status");
        let frame = self.answer.take().flatten();
        match frame.as_deref().and_then(|f| f.split_first()) {
            Some((&TAG_VALUE, body)) => wire::decode(body),
            Some((&TAG_PANIC, body)) => Err(Error::TaskPanicked {
                pid: pid.as_raw(),
                panic: wire::decode::<RemotePanic>(body)?,
            }),
            Some((&TAG_FAILED, body)) => Err(Error::InvalidState(wire::decode::<String>(body)?)),
            _ => Err(match status {
                ExitStatus::Signaled(sig) => Error::WorkerDied {
                    pid: pid.as_raw(),
                    signal: Some(sig),
                    code: None,
                    task: None,
                },
                ExitStatus::Exited(code) => Error::WorkerDied {
                    pid: pid.as_raw(),
                    signal: None,
                    code: Some(code),
                    task: None,
                },
            }),
        }
    }
}

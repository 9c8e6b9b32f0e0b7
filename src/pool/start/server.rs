//! The fork server: a fresh execution of the program's own binary that forks pool workers.
//!
//! Started once per program, lazily (by the first pool built with
//! [`StartMethod::ForkServer`](super::StartMethod)) or by [`init`](crate::init), and shared by
//! every pool of the program. The parent runs `/proc/self/exe` again with `MULTIPROC_FORKSERVER_FD`
//! naming the server's end of a Unix socket pair; the early hook (`sys::early`, an ELF
//! constructor) sees the variable before `main` and runs [`serve`] instead, then exits: no user
//! code and no test harness ever runs in the server. It is single-threaded and small, so its
//! forks are fast and copy no lock held by another thread.
//!
//! The conversation, [`crate::wire`] frames over the socket, each body starting with a kind byte:
//!
//! | direction | kind | body after the kind | descriptors |
//! |---|---|---|---|
//! | server → parent | `HELLO` | server pid `i32` | — |
//! | parent → server | `START` | a [`StartRequest`] (postcard) | worker socket, progress and journal files |
//! | server → parent | `STARTED` | worker pid `i32` | the worker's pidfd |
//! | server → parent | `REFUSED` | a message | — |
//! | server → parent | `EXIT` | worker pid `i32`, 0 = exited / 1 = signaled `u8`, code or signal `i32` | — |
//!
//! A pool's first workers go as batches of up to [`MAX_BATCH`] `START` frames in one message
//! (their descriptors attached in order), and the server answers a batch in one message: it
//! reads every request that has arrived, forks their workers back to back (each closing its
//! siblings' sockets; a pool's progress files mapped once per batch), then sends the answers in
//! request order. Each frame still takes its own descriptors from the queue, in order.
//!
//! The worker is the server's child: the server opens its pidfd before it could be reaped and
//! hands a copy to the parent (death notice, `pidfd_send_signal`), reaps it, and reports its
//! exit status with `EXIT`. The server watches the parent's pidfd and its socket: when the parent
//! is gone (even `SIGKILL`ed) it kills and reaps its workers and exits; workers die with the
//! server (`PR_SET_PDEATHSIG`). Functions and initializers travel as offsets (`fnref`).

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::sys::{self, ExitStatus, Pid};
use crate::wire::{self, FrameBuf};

use super::super::fnref::FnRef;
use super::super::transport::Link;
use super::super::worker::Progress;
use super::{Child, Reaper, Starter, Worker, WorkerSpec};

mod serve;

pub(crate) use serve::enter_if_asked;

/// The variable that makes a process a fork server: the descriptor of its socket.
pub(crate) const FD_VAR: &str = "MULTIPROC_FORKSERVER_FD";
/// The pid of the process that started the server.
const PARENT_VAR: &str = "MULTIPROC_FORKSERVER_PARENT";
/// The server's process name (`/proc/<pid>/comm`).
const NAME: &std::ffi::CStr = c"multiproc-fsrv";
/// How long the parent waits for an answer of the server before it gives up on it.
pub(crate) const PATIENCE: Duration = Duration::from_secs(30);

const HELLO: u8 = 1;
const START: u8 = 2;
const STARTED: u8 = 3;
const REFUSED: u8 = 4;
const EXIT: u8 = 5;

/// What the server needs to start one worker (its descriptors travel beside it).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StartRequest {
    slot: u64,
    slots: u64,
    max_tasks: Option<u64>,
    timed: bool,
    thread_env: Option<String>,
    /// The initializer's offset ([`FnRef`]).
    init: Option<i64>,
}

/// A message of the server, parsed.
enum Said {
    Hello,
    Started(i32, OwnedFd),
    Refused(String),
    Exit(i32, ExitStatus),
}

/// Sends one frame (`kind`, then `body`) with `fds`, waiting while the socket is full.
fn send(sock: BorrowedFd<'_>, kind: u8, body: &[u8], fds: &[RawFd]) -> Result<()> {
    let mut frame = Vec::with_capacity(wire::LEN_BYTES + 1 + body.len());
    frame.extend_from_slice(&wire::frame_len(1 + body.len()));
    frame.push(kind);
    frame.extend_from_slice(body);
    let wait = &mut || sys::socket::wait_writable(sock, Instant::now() + PATIENCE).map(drop);
    sys::socket::send_with_fds(sock, &frame, fds, wait)
}

/// Reads the next frame body, waiting until `deadline` (`None`: without limit).
fn receive(sock: BorrowedFd<'_>, rx: &mut FrameBuf, deadline: Option<Instant>) -> Result<Vec<u8>> {
    loop {
        if let Some(body) = rx.next()? {
            return Ok(body.bytes().to_vec());
        }
        if !sys::wait_readable(sock, deadline)? {
            return Err(Error::Timeout {
                operation: "waiting for the fork server",
                after: PATIENCE,
                task: None,
            });
        }
        if rx.fill(sock, true)? == Some(0) {
            return Err(Error::Disconnected(
                "the fork server's socket closed".into(),
            ));
        }
    }
}

fn int(b: &[u8], at: usize) -> Option<i32> {
    Some(i32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn parse(body: &[u8], rx: &mut FrameBuf) -> Result<Said> {
    let bad = || Error::Disconnected("the fork server sent a malformed message".into());
    let kind = *body.first().ok_or_else(bad)?;
    Ok(match kind {
        HELLO => Said::Hello,
        STARTED => {
            let pid = int(body, 1).ok_or_else(bad)?;
            let pidfd = rx.take_fds(1)?.pop().ok_or_else(bad)?;
            Said::Started(pid, pidfd)
        }
        REFUSED => Said::Refused(String::from_utf8_lossy(&body[1..]).into_owned()),
        EXIT => {
            let pid = int(body, 1).ok_or_else(bad)?;
            let value = int(body, 6).ok_or_else(bad)?;
            let status = match body.get(5) {
                Some(0) => ExitStatus::Exited(value),
                Some(1) => ExitStatus::Signaled(value),
                _ => return Err(bad()),
            };
            Said::Exit(pid, status)
        }
        _ => return Err(bad()),
    })
}

// ---- The parent's side ----

/// The running server, as the parent sees it.
pub(crate) struct Server {
    /// The process that started it (a fork of that process must start its own).
    owner: Pid,
    child: Mutex<std::process::Child>,
    conn: Mutex<Conn>,
}

/// The parent's end of the conversation. Exit statuses that arrive while the parent waits for
/// something else are kept for their worker's `wait`.
struct Conn {
    sock: OwnedFd,
    rx: FrameBuf,
    exits: HashMap<i32, ExitStatus>,
    broken: bool,
}

static SERVER: Mutex<Option<Arc<Server>>> = Mutex::new(None);

fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The program's fork server, started now if it is not running (or was lost).
fn server() -> Result<Arc<Server>> {
    let mut slot = locked(&SERVER);
    if let Some(s) = slot.as_ref() {
        if s.owner != sys::getpid() {
            // Inherited through a fork: the server and its socket are the parent's. Leave them
            // untouched (no kill, no close: the parent still uses them).
            std::mem::forget(slot.take());
        } else if !locked(&s.conn).broken {
            return Ok(s.clone());
        }
    }
    if let Some(old) = slot.take() {
        old.end();
    }
    let s = Arc::new(Server::spawn()?);
    *slot = Some(s.clone());
    Ok(s)
}

/// Starts the program's fork server unless it runs (for [`crate::init`]).
pub(crate) fn ensure_started() -> Result<()> {
    server().map(drop)
}

impl Server {
    fn spawn() -> Result<Server> {
        sys::early::keep();
        let (ours, theirs) = sys::socketpair()?;
        let mut cmd = std::process::Command::new("/proc/self/exe");
        cmd.env(FD_VAR, theirs.as_raw_fd().to_string())
            .env(PARENT_VAR, sys::getpid().as_raw().to_string())
            .stdin(std::process::Stdio::null());
        if let Some(arg0) = std::env::args_os().next() {
            std::os::unix::process::CommandExt::arg0(&mut cmd, arg0);
        }
        let child = sys::early::spawn_keeping_fd(&mut cmd, theirs.as_raw_fd())
            .map_err(|e| Error::io("starting the fork server (/proc/self/exe)", e))?;
        drop(theirs);
        let mut conn = Conn {
            sock: ours,
            rx: FrameBuf::default(),
            exits: HashMap::new(),
            broken: false,
        };
        let hello = conn.said(Instant::now() + PATIENCE);
        let server = Server {
            owner: sys::getpid(),
            child: Mutex::new(child),
            conn: Mutex::new(conn),
        };
        match hello {
            Ok(Said::Hello) => Ok(server),
            Ok(_) => {
                server.end();
                Err(Error::InvalidState(
                    "the fork server did not say hello".into(),
                ))
            }
            Err(e) => {
                server.end();
                Err(Error::InvalidState(format!(
                    "the fork server did not start: {e}"
                )))
            }
        }
    }

    /// Kills and reaps a server that is no longer used (it was lost or did not start).
    fn end(&self) {
        let mut child = locked(&self.child);
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Starts one worker per request (all requests in one write, then all answers), all or
    /// none.
    fn start(&self, reqs: &[(StartRequest, [RawFd; 3])]) -> Result<Vec<(Pid, OwnedFd)>> {
        let mut conn = locked(&self.conn);
        if conn.broken {
            return Err(Error::Disconnected("the fork server is gone".into()));
        }
        // The requests go as batches, each in one message with its descriptors (the server
        // answers a batch at once).
        for batch in reqs.chunks(MAX_BATCH) {
            let (mut frames, mut fds) = (Vec::new(), Vec::new());
            for (req, req_fds) in batch {
                push_frame(&mut frames, START, &wire::encode(req)?);
                fds.extend_from_slice(req_fds);
            }
            let sock = conn.sock.as_fd();
            let wait =
                &mut || sys::socket::wait_writable(sock, Instant::now() + PATIENCE).map(drop);
            if let Err(e) = sys::socket::send_with_fds(sock, &frames, &fds, wait) {
                conn.broken = true;
                return Err(e);
            }
        }
        let deadline = Instant::now() + PATIENCE;
        let mut started = Vec::new();
        let mut refused = None;
        while started.len() + usize::from(refused.is_some()) < reqs.len() {
            match conn.said(deadline)? {
                Said::Started(pid, pidfd) => {
                    // A status kept under this number is an earlier process's (the server
                    // reports a worker's exit before the number can name a new one), left by a
                    // wait that gave up: it must not answer for this worker.
                    conn.exits.remove(&pid);
                    started.push((Pid::from_raw(pid), pidfd));
                }
                Said::Refused(message) => refused = Some(message),
                Said::Exit(pid, status) => {
                    conn.exits.insert(pid, status);
                }
                Said::Hello => {}
            }
        }
        let Some(message) = refused else {
            return Ok(started);
        };
        // All or none: the ones that did start go.
        for (pid, pidfd) in &started {
            let _ = sys::pidfd_send_signal(pidfd.as_fd(), Signal::SIGKILL);
            conn.exit_status(*pid);
        }
        Err(Error::InvalidState(format!(
            "the fork server could not start a worker: {message}"
        )))
    }

    /// The exit status of the server's worker `pid`, which has ended or was killed.
    pub(crate) fn exit_status(&self, pid: Pid) -> ExitStatus {
        locked(&self.conn).exit_status(pid)
    }
}

impl Conn {
    /// The exit status of the server's worker `pid`, which has ended or was killed. A lost
    /// server reports its workers as killed (they died with it).
    fn exit_status(&mut self, pid: Pid) -> ExitStatus {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.exits.remove(&pid.as_raw()) {
                return status;
            }
            match self.said(deadline) {
                Ok(Said::Exit(p, status)) => {
                    self.exits.insert(p, status);
                }
                Ok(_) => {}
                Err(_) => return ExitStatus::Signaled(Signal::SIGKILL as i32),
            }
        }
    }

    /// The server's next message; a failure marks the server lost.
    fn said(&mut self, deadline: Instant) -> Result<Said> {
        if self.broken {
            return Err(Error::Disconnected("the fork server is gone".into()));
        }
        let r = receive(self.sock.as_fd(), &mut self.rx, Some(deadline))
            .and_then(|body| parse(&body, &mut self.rx));
        if r.is_err() {
            self.broken = true;
        }
        r
    }
}

/// The `forkserver` start method: workers are forked by the program's fork server.
pub(crate) struct ForkServer {
    server: Arc<Server>,
}

impl std::fmt::Debug for ForkServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ForkServer").finish_non_exhaustive()
    }
}

impl ForkServer {
    /// Connects to the program's fork server, starting it if needed.
    pub(crate) fn connect() -> Result<ForkServer> {
        Ok(ForkServer { server: server()? })
    }
}

impl ForkServer {
    /// The request for `spec`, and the descriptors that go with it (kept open until sent).
    fn request(spec: WorkerSpec) -> Result<(StartRequest, OwnedFd, Arc<Progress>)> {
        let init = match spec.initializer {
            None => None,
            Some(i) => Some(i.fn_ref.map(FnRef::offset).ok_or_else(|| {
                Error::invalid_arg(
                    "initializer",
                    "a closure that captures",
                    "a fork-server worker cannot receive a capture: pass a fn item",
                )
            })?),
        };
        let req = StartRequest {
            slot: spec.slot as u64,
            slots: spec.progress.slots() as u64,
            max_tasks: spec.max_tasks,
            timed: spec.timed,
            thread_env: spec.thread_env,
            init,
        };
        Ok((req, spec.end.into_fd(), spec.progress))
    }
}

impl Starter for ForkServer {
    fn start(&mut self, spec: WorkerSpec, _close: &[RawFd]) -> Result<Box<dyn Worker>> {
        let mut one = self.start_connected(vec![spec])?;
        Ok(one.remove(0))
    }

    fn starts_many(&self) -> bool {
        true
    }

    /// Makes every socket first: the server gets all of a batch's worker ends in one message.
    fn start_many(
        &mut self,
        specs: Vec<WorkerSpec<()>>,
        _close: &[RawFd],
    ) -> Result<Vec<(Box<dyn Worker>, Link)>> {
        let (specs, links): (Vec<WorkerSpec>, Vec<Link>) = specs
            .into_iter()
            .map(WorkerSpec::connect)
            .collect::<Result<Vec<_>>>()?
            .into_iter()
            .unzip();
        let workers = self.start_connected(specs)?;
        Ok(workers.into_iter().zip(links).collect())
    }
}

impl ForkServer {
    /// Starts one worker per spec (sockets made): one request to the server for all.
    fn start_connected(&mut self, specs: Vec<WorkerSpec>) -> Result<Vec<Box<dyn Worker>>> {
        if locked(&self.server.conn).broken {
            // Lost (killed from outside): a new one serves the replacements.
            self.server = server()?;
        }
        let parts = specs
            .into_iter()
            .map(ForkServer::request)
            .collect::<Result<Vec<_>>>()?;
        let reqs: Vec<(StartRequest, [RawFd; 3])> = parts
            .iter()
            .map(|(req, sock, progress)| {
                let [slots, journal] = progress.fds();
                let fds = [sock.as_raw_fd(), slots.as_raw_fd(), journal.as_raw_fd()];
                (req.clone(), fds)
            })
            .collect();
        let started = self.server.start(&reqs)?;
        Ok(started
            .into_iter()
            .map(|(pid, pidfd)| {
                let reaper = Reaper::Server(self.server.clone());
                Box::new(Child::new(pid, pidfd, reaper)) as Box<dyn Worker>
            })
            .collect())
    }
}

/// The most requests served as one batch (their pidfds go back in one message).
const MAX_BATCH: usize = crate::sys::socket::MAX_FDS / 3;

/// Appends one frame of `kind` with `body` to `frames`.
fn push_frame(frames: &mut Vec<u8>, kind: u8, body: &[u8]) {
    frames.extend_from_slice(&wire::frame_len(1 + body.len()));
    frames.push(kind);
    frames.extend_from_slice(body);
}

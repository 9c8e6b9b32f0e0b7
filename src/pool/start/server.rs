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
use crate::fork::fork_child;
use crate::sys::{self, ExitStatus, Interest, Pid};
use crate::wire::{self, FrameBuf};

use super::super::fnref::{self, FnRef};
use super::super::transport::WorkerEnd;
use super::super::worker::{self, Progress, Setup};
use super::{Child, Reaper, Starter, Worker, WorkerSpec};

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
                Said::Started(pid, pidfd) => started.push((Pid::from_raw(pid), pidfd)),
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
        let mut one = self.start_many(vec![spec], &[])?;
        Ok(one.remove(0))
    }

    fn starts_many(&self) -> bool {
        true
    }

    fn start_many(
        &mut self,
        specs: Vec<WorkerSpec>,
        _close: &[RawFd],
    ) -> Result<Vec<Box<dyn Worker>>> {
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

// ---- The server's side ----

/// Called by the early hook before `main`: in a process started as a fork server, runs the
/// server and exits (never returns); elsewhere returns at once.
pub(crate) fn enter_if_asked() {
    let Some(fd) = std::env::var_os(FD_VAR) else {
        return;
    };
    let parent = std::env::var(PARENT_VAR)
        .ok()
        .and_then(|p| p.parse::<i32>().ok());
    // SAFETY: before `main`, in a process whose only thread runs this hook; the variables must
    // not reach the workers (a worker that runs this program again would become a server).
    unsafe {
        sys::early::remove_env_single_threaded(FD_VAR);
        sys::early::remove_env_single_threaded(PARENT_VAR);
    }
    let code = match (fd.to_str().and_then(|f| f.parse::<RawFd>().ok()), parent) {
        (Some(fd), Some(parent)) => match sys::own_inherited_fd(fd) {
            Some(sock) => {
                let r = std::panic::catch_unwind(|| serve(sock, Pid::from_raw(parent)));
                r.unwrap_or(3)
            }
            None => 2,
        },
        _ => 2,
    };
    sys::exit_now(code)
}

/// One worker of the server.
struct Kid {
    pid: Pid,
    pidfd: OwnedFd,
}

/// The server's loop; returns its exit code once the parent is gone.
fn serve(sock: OwnedFd, parent: Pid) -> i32 {
    let _ = nix::sys::prctl::set_name(NAME);
    sys::early::ignore_sigpipe();
    let Ok(parent_fd) = sys::pidfd_open(parent) else {
        return 1;
    };
    if sys::getppid() != parent {
        return 1;
    }
    // Read once here, inherited by every worker (see `fnref::text_range`).
    let _ = fnref::text_range();
    crate::panic::install_hook();
    let me = sys::getpid().as_raw();
    if send(sock.as_fd(), HELLO, &me.to_le_bytes(), &[]).is_err() {
        return 1;
    }
    let mut rx = FrameBuf::default();
    let mut kids: Vec<Kid> = Vec::new();
    loop {
        let mut fds = vec![
            (sock.as_fd(), Interest::Read),
            (parent_fd.as_fd(), Interest::Read),
        ];
        fds.extend(kids.iter().map(|k| (k.pidfd.as_fd(), Interest::Read)));
        let Ok(ready) = sys::poll_many(&fds, None) else {
            break;
        };
        if ready[1].0 {
            break;
        }
        let ended: Vec<usize> = (0..kids.len()).filter(|&k| ready[2 + k].0).collect();
        for k in ended.into_iter().rev() {
            let kid = kids.swap_remove(k);
            let status = sys::wait_blocking(kid.pid).unwrap_or(ExitStatus::Signaled(9));
            let (how, value) = match status {
                ExitStatus::Exited(c) => (0u8, c),
                ExitStatus::Signaled(s) => (1u8, s),
            };
            let mut body = kid.pid.as_raw().to_le_bytes().to_vec();
            body.push(how);
            body.extend_from_slice(&value.to_le_bytes());
            if send(sock.as_fd(), EXIT, &body, &[]).is_err() {
                break;
            }
        }
        if ready[0].0 && !read_requests(&sock, &parent_fd, &mut rx, &mut kids) {
            break;
        }
    }
    for kid in &kids {
        let _ = sys::kill(kid.pid, Signal::SIGKILL);
    }
    for kid in kids {
        let _ = sys::wait_blocking(kid.pid);
    }
    0
}

/// Reads and serves the parent's requests; `false` once the parent's end is closed.
///
/// Every request that has arrived is read first (one receive can bring a batch), then the
/// batch's workers are forked back to back and answered in one message: a worker started per
/// wake-up cost the parent and the server a context switch each, and allocating between forks
/// a copy-on-write fault per page written.
fn read_requests(
    sock: &OwnedFd,
    parent_fd: &OwnedFd,
    rx: &mut FrameBuf,
    kids: &mut Vec<Kid>,
) -> bool {
    match rx.fill(sock.as_fd(), true) {
        Ok(Some(0)) | Err(_) => return false,
        Ok(_) => {}
    }
    loop {
        let Some(batch) = next_batch(sock, rx) else {
            return false;
        };
        if batch.is_empty() {
            return true;
        }
        // The workers keep none of the server's descriptors: not its socket, not the other
        // workers' pidfds, not the descriptors of the requests queued after these.
        let mut close: Vec<RawFd> = vec![sock.as_raw_fd(), parent_fd.as_raw_fd()];
        close.extend(kids.iter().map(|k| k.pidfd.as_raw_fd()));
        close.extend(rx.queued_fds());
        let answers = start_workers(batch, &close);
        let (mut frames, mut fds) = (Vec::new(), Vec::new());
        for answer in &answers {
            match answer {
                Ok(kid) => {
                    push_frame(&mut frames, STARTED, &kid.pid.as_raw().to_le_bytes());
                    fds.push(kid.pidfd.as_raw_fd());
                }
                Err(e) => push_frame(&mut frames, REFUSED, e.to_string().as_bytes()),
            }
        }
        let wait =
            &mut || sys::socket::wait_writable(sock.as_fd(), Instant::now() + PATIENCE).map(drop);
        let sent = sys::socket::send_with_fds(sock.as_fd(), &frames, &fds, wait);
        kids.extend(answers.into_iter().flatten());
        if sent.is_err() {
            return false;
        }
    }
}

/// A start request and its three descriptors, or why it could not be read.
type Request = Result<(StartRequest, Vec<OwnedFd>)>;

/// The start requests that have arrived, at most [`MAX_BATCH`] (receiving more while the
/// buffer has no whole frame); `None` when the parent's end is closed or sent something else.
fn next_batch(sock: &OwnedFd, rx: &mut FrameBuf) -> Option<Vec<Request>> {
    let mut batch = Vec::new();
    while batch.len() < MAX_BATCH {
        let body = match rx.next() {
            Ok(Some(body)) => body,
            Ok(None) => match rx.fill(sock.as_fd(), true) {
                Ok(Some(0)) | Err(_) => return None,
                Ok(Some(_)) => continue,
                Ok(None) => break,
            },
            Err(_) => return None,
        };
        let b = body.bytes();
        if b.first() != Some(&START) {
            return None;
        }
        let req = wire::decode::<StartRequest>(&b[1..]).and_then(|req| Ok((req, rx.take_fds(3)?)));
        batch.push(req);
    }
    Some(batch)
}

/// The most requests served as one batch (their pidfds go back in one message).
const MAX_BATCH: usize = crate::sys::socket::MAX_FDS / 3;

/// Appends one frame of `kind` with `body` to `frames`.
fn push_frame(frames: &mut Vec<u8>, kind: u8, body: &[u8]) {
    frames.extend_from_slice(&wire::frame_len(1 + body.len()));
    frames.push(kind);
    frames.extend_from_slice(body);
}

/// Forks one worker per request (`close`: the server's descriptors no worker keeps), back to
/// back once every setup is made, each worker closing its siblings' sockets too; the setups are
/// dropped after the last fork. A request that cannot start gets its error.
fn start_workers(batch: Vec<Request>, close: &[RawFd]) -> Vec<Result<Kid>> {
    let mut maps = ProgressMaps::default();
    let setups: Vec<Result<Setup>> = batch
        .into_iter()
        .map(|r| r.and_then(|(req, fds)| setup(req, fds, &mut maps)))
        .collect();
    let ends: Vec<RawFd> = setups
        .iter()
        .map(|s| s.as_ref().map_or(-1, |s| s.end.raw_fd()))
        .collect();
    let mut setups: Vec<Result<Option<Setup>>> = setups
        .into_iter()
        .enumerate()
        .map(|(k, s)| {
            s.map(|mut s| {
                s.close = close.to_vec();
                let others = ends
                    .iter()
                    .enumerate()
                    .filter(|&(j, &fd)| j != k && fd >= 0);
                s.close.extend(others.map(|(_, &fd)| fd));
                Some(s)
            })
        })
        .collect();
    // Read once here, inherited by the workers (it decides whether they spin).
    let _ = worker::cpus();
    let forked: Vec<Result<Pid>> = setups
        .iter_mut()
        .map(|s| match s {
            Ok(setup) => fork_child(|| setup.take().map_or(1, worker::run)),
            Err(e) => Err(Error::InvalidState(e.to_string())),
        })
        .collect();
    drop(setups);
    forked
        .into_iter()
        .map(|pid| {
            let pid = pid?;
            // Opened before this server could reap it: the pidfd names exactly this worker.
            match sys::pidfd_open(pid) {
                Ok(pidfd) => Ok(Kid { pid, pidfd }),
                Err(e) => {
                    let _ = sys::kill(pid, Signal::SIGKILL);
                    let _ = sys::wait_blocking(pid);
                    Err(e)
                }
            }
        })
        .collect()
}

/// The progress mappings of one batch, by memory file: a pool's requests carry the same two
/// files, mapped once (the duplicate descriptors are closed).
#[derive(Default)]
struct ProgressMaps(Vec<((u64, u64), Arc<Progress>)>);

impl ProgressMaps {
    fn get(&mut self, progress: OwnedFd, journal: OwnedFd, slots: usize) -> Result<Arc<Progress>> {
        let id = sys::mem::fd_identity(progress.as_fd())?;
        if let Some((_, p)) = self.0.iter().find(|(i, p)| *i == id && p.slots() == slots) {
            return Ok(p.clone());
        }
        let p = Arc::new(Progress::from_fds(progress, journal, slots)?);
        self.0.push((id, p.clone()));
        Ok(p)
    }
}

/// The setup of one worker from its request (the parent's socket end, the progress and journal
/// files); its `close` list is filled in by [`start_workers`].
fn setup(req: StartRequest, fds: Vec<OwnedFd>, maps: &mut ProgressMaps) -> Result<Setup> {
    let [sock, progress, journal]: [OwnedFd; 3] = fds
        .try_into()
        .map_err(|_| Error::InvalidState("a start request without its three descriptors".into()))?;
    let initializer = match req.init {
        None => None,
        Some(offset) => {
            let f = FnRef::from_offset(offset)
                .resolve_init()
                .map_err(Error::InvalidState)?;
            Some(Arc::new(f) as Arc<dyn Fn() + Send + Sync>)
        }
    };
    let slots = usize::try_from(req.slots).unwrap_or(usize::MAX);
    let slot = usize::try_from(req.slot).unwrap_or(usize::MAX);
    if slot >= slots {
        return Err(Error::invalid_arg(
            "slot",
            slot,
            "not below the pool's slots",
        ));
    }
    Ok(Setup {
        end: WorkerEnd::from_fd(sock),
        progress: maps.get(progress, journal, slots)?,
        slot,
        parent: sys::getpid(),
        max_tasks: req.max_tasks,
        timed: req.timed,
        initializer,
        thread_env: req.thread_env,
        close: Vec::new(),
    })
}

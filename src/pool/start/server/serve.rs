//! The fork server's own side: the process started from `/proc/self/exe` that forks the
//! workers (its loop, how it reads a batch of requests and forks their workers back to back).
//! The protocol is in the parent module's docs.

use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::time::Instant;

use nix::sys::signal::Signal;

use crate::error::{Error, Result};
use crate::fork::fork_child;
use crate::sys::{self, ExitStatus, Interest, Pid};
use crate::wire::{self, FrameBuf};

use super::super::super::fnref::{self, FnRef};
use super::super::super::transport::WorkerEnd;
use super::super::super::worker::{self, EnvMemo, Progress, Setup};
use super::super::watch_forked;
use super::{
    EXIT, FD_VAR, HELLO, MAX_BATCH, NAME, PARENT_VAR, PATIENCE, REFUSED, START, STARTED,
    StartRequest, push_frame, send,
};

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

/// Forks one worker per request (`close`: the server's descriptors no worker keeps), back to
/// back once every setup is made, each worker closing its siblings' sockets too; the setups are
/// dropped after the last fork. A request that cannot start gets its error.
fn start_workers(batch: Vec<Request>, close: &[RawFd]) -> Vec<Result<Kid>> {
    let (mut maps, mut env) = (ProgressMaps::default(), EnvMemo::default());
    let setups: Vec<Result<Setup>> = batch
        .into_iter()
        .map(|r| r.and_then(|(req, fds)| setup(req, fds, &mut maps, &mut env)))
        .collect();
    // Read once here, inherited by the workers (it decides whether they spin).
    let _ = worker::cpus();
    let mut ready = Vec::new();
    let setups: Vec<Result<()>> = setups
        .into_iter()
        .map(|s| {
            s.map(|mut s| {
                s.close = close.to_vec();
                ready.push(s);
            })
        })
        .collect();
    let mut pids = fork_burst(ready).into_iter();
    setups
        .into_iter()
        .map(|s| {
            s?;
            let pid = pids
                .next()
                .unwrap_or_else(|| Err(Error::InvalidState("a setup without its fork".into())))?;
            Ok(Kid {
                pid,
                pidfd: watch_forked(pid)?,
            })
        })
        .collect()
}

/// Forks one worker per setup, back to back (a batch). Each setup's `close` first gets the
/// other setups' worker ends (the server received them all at once), so that no worker keeps a
/// sibling's socket; the setups are dropped after the last fork, since each fork makes this
/// process's pages copy-on-write again and freeing between forks costs a fault and a copy per
/// page written. A fork that fails is that setup's error.
fn fork_burst(mut setups: Vec<Setup>) -> Vec<Result<Pid>> {
    let ends: Vec<RawFd> = setups.iter().map(|s| s.end.raw_fd()).collect();
    for (k, s) in setups.iter_mut().enumerate() {
        let others = ends.iter().enumerate().filter(|&(j, _)| j != k);
        s.close.extend(others.map(|(_, &fd)| fd));
        s.close.sort_unstable();
    }
    // The child takes its setup; the parent keeps it until the last fork.
    let mut held: Vec<Option<Setup>> = setups.into_iter().map(Some).collect();
    let pids = held
        .iter_mut()
        .map(|s| fork_child(|| s.take().map_or(1, worker::run)))
        .collect();
    drop(held);
    pids
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
fn setup(
    req: StartRequest,
    fds: Vec<OwnedFd>,
    maps: &mut ProgressMaps,
    env: &mut EnvMemo,
) -> Result<Setup> {
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
        env: env.get(req.thread_env.as_deref()),
        close: Vec::new(),
    })
}

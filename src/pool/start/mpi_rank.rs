//! A worker rank's side of the MPI starter: the pool's worker loop talks to rank 0 through MPI
//! itself, with no socket and no thread between it and MPI.
//!
//! ```text
//!  rank r ≥ 1
//!  main thread:   worker loop (worker::serve) ── RankLink ──MPI──▶ rank 0's hub
//!  bridge thread: initialized MPI; watches for STOP while a task runs; says BYE, finalizes
//! ```
//!
//! Two threads call MPI, never at once: every call is made under one mutex
//! (`MPI_THREAD_SERIALIZED`). The main thread waits for its next order in a blocking probe
//! (lowest latency; it holds the mutex meanwhile and sees a `STOP` itself). While a task runs
//! the main thread makes no MPI call, so the bridge thread takes the mutex every [`WATCH_NAP`]
//! to look for a `STOP` (the pool terminating mid-task): then it keeps the mutex, says `BYE`,
//! drains up to `FIN`, finalizes MPI and ends the process, whatever the task is doing.
//!
//! Messages from rank 0 carry the bytes of the scheduler's stream, cut at frame boundaries
//! when possible (see `mpi_bridge`): a message holding exactly one frame becomes that frame's
//! body without a copy (a 1 MiB payload is received once, by MPI, into a reused buffer); other
//! messages are reassembled.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use mpi::topology::SimpleCommunicator;
use mpi::traits::*;

use crate::error::{Error, Result};
use crate::wire::{Body, LEN_BYTES, MAX_MESSAGE_BYTES};

use super::super::transport::FrameLink;
use super::mpi_bridge::{
    ATT_HEAD_BYTES, CHUNK, TAG_ATT_DATA, TAG_ATT_HEAD, TAG_BYE, TAG_DATA, TAG_FIN, TAG_HEAD,
    TAG_PAYLOAD, TAG_STOP, code_bytes, code_of,
};
use crate::shm::mpi_att;

/// How often the bridge thread looks for a `STOP` while the worker loop runs a task.
const WATCH_NAP: Duration = Duration::from_millis(5);
/// The most bytes sent in one MPI message (counts are `i32`).
const MAX_SEND: usize = 1 << 30;
/// Messages at least this big are received into the spare buffer.
const BIG: usize = 1 << 16;
/// `stopped` before any `STOP` arrived.
const NOT_STOPPED: i32 = i32::MIN;

/// What the worker loop's link and the bridge thread share.
#[derive(Clone)]
pub(super) struct RankShared {
    /// Held for every MPI call of this process after initialization.
    pub(super) mpi: Arc<Mutex<()>>,
    /// The signal code (`-signal`) of a `STOP` the worker loop received; [`NOT_STOPPED`] else.
    stopped: Arc<AtomicI32>,
}

impl RankShared {
    pub(super) fn new() -> RankShared {
        RankShared {
            mpi: Arc::new(Mutex::new(())),
            stopped: Arc::new(AtomicI32::new(NOT_STOPPED)),
        }
    }

    fn lock(&self) -> MutexGuard<'_, ()> {
        self.mpi.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The code the rank ends with once its worker loop returned normally: `-signal` if rank
    /// 0 stopped it, else 0.
    pub(super) fn end_code(&self) -> i32 {
        match self.stopped.load(Ordering::SeqCst) {
            NOT_STOPPED => 0,
            code => code,
        }
    }
}

/// The worker loop's link to rank 0 (see the module docs).
pub(super) struct RankLink {
    shared: RankShared,
    /// Whole frames received and not yet taken.
    frames: VecDeque<Body>,
    /// The bytes of frames that came cut across messages, until they are whole.
    partial: Vec<u8>,
    /// A buffer to receive the next message into (the last big frame's, once used).
    spare: Vec<u8>,
}

impl RankLink {
    pub(super) fn new(shared: RankShared) -> RankLink {
        RankLink {
            shared,
            frames: VecDeque::new(),
            partial: Vec::new(),
            spare: Vec::new(),
        }
    }

    /// Cuts the frames out of a message (the stream's bytes, in order).
    fn take_message(&mut self, msg: Vec<u8>) -> Result<()> {
        if self.partial.is_empty() && frame_total(&msg)? == Some(msg.len()) {
            // The common case: one whole frame, kept where MPI received it.
            self.frames.push_back(Body::from_vec(msg).skip(LEN_BYTES));
            return Ok(());
        }
        self.partial.extend_from_slice(&msg);
        self.keep_spare(msg);
        let mut pos = 0;
        while let Some(total) = frame_total(&self.partial[pos..])? {
            if self.partial.len() - pos < total {
                break;
            }
            let body = self.partial[pos + LEN_BYTES..pos + total].to_vec();
            self.frames.push_back(Body::from_vec(body));
            pos += total;
        }
        self.partial.drain(..pos);
        Ok(())
    }

    /// A buffer of `len` bytes: the spare one (mapped already: no page faults, and no zeroing
    /// when it had this length before) or a new one.
    fn take_spare(&mut self, len: usize) -> Vec<u8> {
        let mut buf = std::mem::take(&mut self.spare);
        if buf.len() >= len {
            buf.truncate(len);
        } else {
            buf.resize(len, 0);
        }
        buf
    }

    fn keep_spare(&mut self, buf: Vec<u8>) {
        if buf.capacity() > self.spare.capacity() {
            self.spare = buf;
        }
    }
}

/// The whole length (prefix included) of the frame `bytes` start with, once its prefix is there.
fn frame_total(bytes: &[u8]) -> Result<Option<usize>> {
    let Some(prefix) = bytes.get(..LEN_BYTES) else {
        return Ok(None);
    };
    let len = u64::from_le_bytes(prefix.try_into().expect("8 bytes"));
    match usize::try_from(len) {
        Ok(len) if len <= MAX_MESSAGE_BYTES + (1 << 10) => Ok(Some(LEN_BYTES + len)),
        _ => Err(Error::Disconnected(format!(
            "rank 0 sent a frame of {len} bytes, over the limit of {MAX_MESSAGE_BYTES}"
        ))),
    }
}

/// Receives the MPI attachment whose head is `head` (its id and byte count) from `hub`: its
/// pieces straight into memory of its own, kept for the `PodVec` of the frame that refers to it
/// (see `shm::mpi_att`). A malformed head, or pieces that do not match it, end the rank's
/// link with an error (rank 0 sends only what it announced).
fn receive_attachment(hub: &mpi::topology::Process<'_>, head: &[u8]) -> Result<()> {
    let (id, len) = match head {
        [id @ .., _, _, _, _, _, _, _, _] if head.len() == ATT_HEAD_BYTES => {
            let id = u64::from_le_bytes(id.try_into().expect("8 bytes"));
            let len = u64::from_le_bytes(head[8..].try_into().expect("8 bytes"));
            (id, len)
        }
        _ => {
            return Err(Error::Disconnected(format!(
                "rank 0 sent an attachment head of {} bytes; one is {ATT_HEAD_BYTES} bytes",
                head.len()
            )));
        }
    };
    let len = match usize::try_from(len) {
        Ok(n) if n as u64 <= MAX_MESSAGE_BYTES as u64 => n,
        _ => {
            return Err(Error::Disconnected(format!(
                "rank 0 announced an attachment of {len} bytes, over the limit of \
                 {MAX_MESSAGE_BYTES}"
            )));
        }
    };
    let mut received = mpi_att::buffer(id, len)?;
    let buf = received.bytes_mut();
    let mut pos = 0;
    while pos < len {
        let (msg, status) = hub.matched_probe();
        let m = status.count(u8::equivalent_datatype()).max(0) as usize;
        if status.tag() != TAG_ATT_DATA || m == 0 || m > CHUNK || pos + m > len {
            return Err(Error::Disconnected(format!(
                "rank 0 announced attachment {id} of {len} bytes, but sent {m} bytes with tag \
                 {} at byte {pos}",
                status.tag()
            )));
        }
        msg.matched_receive_into(&mut buf[pos..pos + m]);
        pos += m;
    }
    mpi_att::stash(received);
    Ok(())
}

impl FrameLink for RankLink {
    fn recv(&mut self) -> Result<Option<Body>> {
        loop {
            if let Some(body) = self.frames.pop_front() {
                return Ok(Some(body));
            }
            if self.shared.stopped.load(Ordering::SeqCst) != NOT_STOPPED {
                return Ok(None);
            }
            let msg = {
                let mpi = Arc::clone(&self.shared.mpi);
                let _mpi = mpi.lock().unwrap_or_else(|e| e.into_inner());
                let world = SimpleCommunicator::world();
                // Blocking: rank 0's next message, whatever it is (a STOP ends the wait too).
                let hub = world.process_at_rank(0);
                let (msg, status) = hub.matched_probe();
                let n = status.count(u8::equivalent_datatype()).max(0) as usize;
                match status.tag() {
                    TAG_DATA if n >= BIG => {
                        let mut buf = self.take_spare(n);
                        msg.matched_receive_into(&mut buf[..]);
                        Some(buf)
                    }
                    TAG_HEAD => {
                        // The payload is the next messages: received behind the head, in place.
                        let (head, _) = (msg, status).matched_receive_vec::<u8>();
                        let total = frame_total(&head)?.unwrap_or(0).max(n);
                        let mut buf = self.take_spare(total);
                        buf[..n].copy_from_slice(&head);
                        let mut pos = n;
                        while pos < total {
                            let (msg, status) = hub.matched_probe();
                            let m = status.count(u8::equivalent_datatype()).max(0) as usize;
                            if status.tag() != TAG_PAYLOAD || m == 0 || pos + m > total {
                                return Err(Error::Disconnected(format!(
                                    "rank 0 sent a frame of {total} bytes whose payload did \
                                     not follow its head: {m} bytes with tag {} at byte {pos}",
                                    status.tag()
                                )));
                            }
                            msg.matched_receive_into(&mut buf[pos..pos + m]);
                            pos += m;
                        }
                        Some(buf)
                    }
                    TAG_ATT_HEAD => {
                        let (head, _) = (msg, status).matched_receive_vec::<u8>();
                        receive_attachment(&hub, &head)?;
                        continue;
                    }
                    TAG_STOP => {
                        let (body, _) = (msg, status).matched_receive_vec::<u8>();
                        self.shared
                            .stopped
                            .store(-code_of(&body).abs(), Ordering::SeqCst);
                        None
                    }
                    tag => {
                        let (body, _) = (msg, status).matched_receive_vec::<u8>();
                        if tag != TAG_DATA {
                            continue;
                        }
                        Some(body)
                    }
                }
            };
            match msg {
                Some(msg) => self.take_message(msg)?,
                None => return Ok(None),
            }
        }
    }

    fn has_frame(&mut self) -> bool {
        if !self.frames.is_empty() {
            return true;
        }
        let _mpi = self.shared.lock();
        SimpleCommunicator::world()
            .process_at_rank(0)
            .immediate_probe_with_tag(TAG_DATA)
            .is_some()
    }

    fn send(&mut self, frames: &[u8]) -> Result<()> {
        let _mpi = self.shared.lock();
        let world = SimpleCommunicator::world();
        for piece in frames.chunks(MAX_SEND) {
            world.process_at_rank(0).send_with_tag(piece, TAG_DATA);
        }
        Ok(())
    }

    fn recycle(&mut self, body: Body) {
        self.keep_spare(body.into_vec());
    }
}

/// The bridge thread of a worker rank, once MPI is initialized: waits for the worker loop to
/// end (its code on `ended`) or for a `STOP` while a task runs, then says `BYE` with the rank's
/// code and drains up to rank 0's `FIN`. Returns the code; the mutex stays held (the caller
/// finalizes MPI and ends the process, so the worker loop must make no MPI call any more).
pub(super) fn watch(world: &SimpleCommunicator, shared: &RankShared, ended: &Receiver<i32>) -> i32 {
    let hub = world.process_at_rank(0);
    let (guard, code) = loop {
        match ended.recv_timeout(WATCH_NAP) {
            Ok(code) => break (shared.lock(), code),
            Err(RecvTimeoutError::Disconnected) => break (shared.lock(), shared.end_code()),
            Err(RecvTimeoutError::Timeout) => {}
        }
        // The worker loop holds the mutex while it waits for orders (and sees a STOP itself);
        // free, it is running a task.
        let Ok(guard) = shared.mpi.try_lock() else {
            continue;
        };
        if let Some(probed) = hub.immediate_matched_probe_with_tag(TAG_STOP) {
            let (body, _) = probed.matched_receive_vec::<u8>();
            break (guard, -code_of(&body).abs());
        }
    };
    hub.send_with_tag(&code_bytes(code)[..], TAG_BYE);
    loop {
        let (_, status) = hub.matched_probe().matched_receive_vec::<u8>();
        if status.tag() == TAG_FIN {
            break;
        }
    }
    // No MPI call may follow MPI_Finalize: the worker loop never gets the mutex back.
    std::mem::forget(guard);
    code
}

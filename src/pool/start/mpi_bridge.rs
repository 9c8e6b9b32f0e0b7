//! The MPI bridge of rank 0: the one thread of rank 0 that calls MPI, carrying the pool's
//! frames between the scheduler's stream sockets and MPI messages to and from the worker ranks.
//!
//! ```text
//!  rank 0                                              rank r ≥ 1
//!  Scheduler ─Link═socket═┐                        ┌─ worker loop (worker::serve), main thread
//!  Scheduler ─Link═socket═┤ hub ◀──MPI messages──▶ ┤   calling MPI itself (`mpi_rank`)
//!                 death ◀─┘ (one thread)          └─ bridge thread: STOP watch, BYE, finalize
//! ```
//!
//! The hub moves the bytes of each socket, in order, as `DATA` messages. It cuts them at frame
//! boundaries (the frame prefix says where a frame ends), so that a worker rank receives a
//! task's frame as one message, straight into the buffer it decodes from; a frame larger than
//! [`CHUNK`] streams in pieces, which the rank reassembles. The ranks' `DATA` messages are whole
//! frames, written to the socket as they come. No descriptor crosses: the process encodes
//! inline only (`fdpass::set_inline_only`).
//!
//! Ending a rank: the hub sends `STOP` (the pool killed the worker), or the worker loop ends
//! (the pool's stop order). Either way the rank sends `BYE` with its exit code (`-signal` when
//! stopped), the hub answers `FIN`, and the rank drains every message up to `FIN`, so that no
//! send of the hub waits on a rank that is gone. Then the rank finalizes MPI and exits. The hub
//! finalizes once every rank has said `BYE` (on shutdown).
//!
//! No deadlock: the hub never blocks in a send (immediate sends, completed while it keeps
//! receiving), so a rank's blocking send always completes.

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::time::{Duration, Instant};

use crate::fdpass::{MpiAtts, MpiBytes};

use super::super::transport::{Bytes, FrameSink};

use mpi::topology::SimpleCommunicator;
use mpi::traits::*;

use crate::sys::{self, Interest};

/// Bytes of a socket's stream (whole frames when possible).
pub(super) const TAG_DATA: i32 = 1;
/// Hub to rank: end now (the body: the signal the pool asked for, `i32` little-endian).
pub(super) const TAG_STOP: i32 = 2;
/// Rank to hub: the rank's worker ended (the body: its exit code, `i32` little-endian).
pub(super) const TAG_BYE: i32 = 3;
/// Hub to rank: nothing follows.
pub(super) const TAG_FIN: i32 = 4;
/// Hub to rank: the length prefix and header of a frame whose payload is the next messages.
pub(super) const TAG_HEAD: i32 = 5;
/// Hub to rank: a piece of the payload of the frame of the last `TAG_HEAD` (at most [`CHUNK`]
/// bytes; the pieces follow the head, in order, until the frame is whole).
pub(super) const TAG_PAYLOAD: i32 = 6;
/// Hub to rank: an MPI attachment follows (the body: its id and byte count, `u64`
/// little-endian each), in `TAG_ATT_DATA` pieces of at most [`CHUNK`] bytes; it belongs to the
/// frame before it.
pub(super) const TAG_ATT_HEAD: i32 = 7;
/// Hub to rank: a piece of the bytes of the last `TAG_ATT_HEAD`'s attachment.
pub(super) const TAG_ATT_DATA: i32 = 8;
/// Bytes of a `TAG_ATT_HEAD` body.
pub(super) const ATT_HEAD_BYTES: usize = 16;

/// A frame payload at least this big goes as a message of its own, from the scheduler's
/// buffer (no copy); a smaller one is copied behind its header.
const OWN_MESSAGE: usize = 1 << 16;

/// The most bytes of a socket carried in one message (a larger frame streams in pieces).
pub(super) const CHUNK: usize = 64 << 20;
/// What the hub reads from a socket at a time while no frame's length is known.
const READ: usize = 1 << 16;
/// How long the bridge keeps looking without sleeping after it moved something.
const SPIN: Duration = Duration::from_micros(500);
/// How long the hub keeps looking without sleeping while a rank owes the answer to a task
/// (answers come back within this of each other in a busy farm; a longer task gets naps).
const SPIN_AWAITING: Duration = Duration::from_millis(20);
/// The longest sleep between two looks at MPI (messages are seen by probing).
const NAP: Duration = Duration::from_millis(1);
/// How long the hub waits for the ranks to end once the pool is gone, before it aborts the job.
const SHUTDOWN_LIMIT: Duration = Duration::from_secs(30);

/// What the rank-0 side of the pool asks of the hub.
pub(super) enum Cmd {
    /// Carry the bytes of `sock` (the worker's end of a scheduler link) to and from `rank`, and
    /// write the rank's exit code to `death` once it has ended.
    Attach {
        rank: i32,
        sock: UnixStream,
        death: UnixStream,
    },
    /// Frames for `rank` (see `transport::FrameSink`), in order: each one's length prefix and
    /// header, and its payload.
    Frames {
        rank: i32,
        frames: Vec<(Vec<u8>, Bytes, MpiAtts)>,
    },
    /// End `rank` now (it reports `-signal` as its code).
    Stop { rank: i32, signal: i32 },
    /// End every rank, wait for them, and return (MPI is finalized after).
    Shutdown,
}

/// Bytes waiting to be written to a socket.
#[derive(Default)]
struct Outbox {
    chunks: VecDeque<Vec<u8>>,
    pos: usize,
}

impl Outbox {
    fn push(&mut self, data: Vec<u8>) {
        if !data.is_empty() {
            self.chunks.push_back(data);
        }
    }

    fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    /// Writes what the socket takes now; an error means the reader is gone.
    fn write_to(&mut self, sock: &mut UnixStream) -> std::io::Result<()> {
        while let Some(front) = self.chunks.front() {
            match sock.write(&front[self.pos..]) {
                Ok(n) => {
                    self.pos += n;
                    if self.pos == front.len() {
                        self.chunks.pop_front();
                        self.pos = 0;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// Reads what a non-blocking socket holds now (up to `limit` bytes); `true` at its end.
fn read_available(sock: &mut UnixStream, limit: usize) -> (Vec<u8>, bool) {
    let mut buf = Vec::new();
    loop {
        let want = (limit - buf.len()) as u64;
        // `take` stops at the limit or at the end of the stream; the bytes read before an error
        // stay in `buf`.
        match Read::by_ref(sock).take(want).read_to_end(&mut buf) {
            Ok(_) => {
                let end = buf.len() < limit;
                return (buf, end);
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            // WouldBlock: all there is for now; another error: the peer is gone.
            Err(e) => return (buf, e.kind() != ErrorKind::WouldBlock),
        }
    }
}

pub(super) fn code_bytes(code: i32) -> Vec<u8> {
    code.to_le_bytes().to_vec()
}

pub(super) fn code_of(body: &[u8]) -> i32 {
    body.get(..4)
        .and_then(|b| b.try_into().ok())
        .map_or(-9, i32::from_le_bytes)
}

/// How long to sleep after `idle` without traffic: not at all for [`SPIN`], then a quarter of
/// the idle time, up to [`NAP`] (messages are seen only by probing: short naps while traffic is
/// recent, few wake-ups when it is not).
fn nap_after(idle: Duration) -> Duration {
    if idle < SPIN {
        Duration::ZERO
    } else {
        (idle / 4).min(NAP)
    }
}

/// Sleeps until one of `fds` is ready, or at most `nap` (zero: just look).
fn wait_for(fds: &[(std::os::fd::BorrowedFd<'_>, Interest)], nap: Duration) {
    if nap.is_zero() {
        std::thread::yield_now();
    }
    let _ = sys::poll_many(fds, Some(Instant::now() + nap));
}

/// The hub's view of one worker rank.
#[derive(Default)]
struct RankState {
    /// The socket to the scheduler and where to report the end; `None` before `Attach` and
    /// after the end was reported.
    link: Option<(UnixStream, UnixStream)>,
    to_sched: Outbox,
    /// Bytes read from the scheduler's socket and not sent yet.
    partial: Vec<u8>,
    /// How many bytes of `partial` (and after it) are the rest of a frame whose start was
    /// sent already (a frame larger than [`CHUNK`] streams).
    begun: usize,
    /// The scheduler closed its end: nothing more to read.
    sched_gone: bool,
    stop_sent: bool,
    /// Tasks sent to the rank and not answered yet (as far as the hub can count).
    awaiting: u64,
    /// The code the rank ended with (its `BYE`).
    ended: Option<i32>,
    fin_sent: bool,
}

/// The body of a message for a rank.
pub(super) enum Msg {
    Own(Vec<u8>),
    /// A piece (`start..end`) of a frame's payload, shared with the scheduler.
    Shared(Bytes, usize, usize),
    /// A piece (`start..end`) of an MPI attachment: sent from the memory of its `PodVec`.
    Att(Arc<dyn MpiBytes>, usize, usize),
}

impl Msg {
    fn bytes(&self) -> &[u8] {
        match self {
            Msg::Own(v) => v,
            Msg::Shared(b, start, end) => &b[*start..*end],
            Msg::Att(a, start, end) => &a.bytes()[*start..*end],
        }
    }
}

/// Messages for the ranks: (rank, tag, body).
type Sends = Vec<(i32, i32, Msg)>;

/// Appends `bytes` (whole frames, or the rest of one) to the last `DATA` message queued for
/// `rank` if it has room, else queues a new one.
fn queue_data(sends: &mut Sends, rank: i32, data: Vec<u8>) {
    let open = sends.iter().rposition(|(to, _, _)| *to == rank);
    match open.map(|i| &mut sends[i]) {
        Some((_, TAG_DATA, Msg::Own(v))) if v.len() + data.len() <= CHUNK => {
            v.extend_from_slice(&data);
        }
        _ => sends.push((rank, TAG_DATA, Msg::Own(data))),
    }
}

/// The hub: rank 0's bridge. Returns on [`Cmd::Shutdown`] (or when the pool side is gone) once
/// every rank has ended.
pub(super) fn hub(world: &SimpleCommunicator, cmds: Receiver<Cmd>, mut wake: UnixStream) {
    let mut ranks: Vec<RankState> = (0..world.size()).map(|_| RankState::default()).collect();
    let mut shutdown_by: Option<Instant> = None;
    let mut last_moved = Instant::now();
    // What was read while the previous messages were in flight goes first.
    let mut sends = Sends::new();
    loop {
        let _ = read_available(&mut wake, 1 << 12);
        take_commands(&cmds, &mut ranks, &mut sends, &mut shutdown_by);
        read_links(&mut ranks, &mut sends);
        for (r, st) in ranks.iter_mut().enumerate().skip(1) {
            if st.ended.is_some() && !st.fin_sent {
                st.fin_sent = true;
                sends.push((r as i32, TAG_FIN, Msg::Own(Vec::new())));
            }
        }
        let moved = !sends.is_empty();
        sends = exchange(world, &mut ranks, std::mem::take(&mut sends));
        let received = receive(world, &mut ranks);
        // A rank that has said goodbye gets nothing but its FIN.
        sends.retain(|(r, _, _)| ranks[*r as usize].ended.is_none());
        report_ends(&mut ranks);
        if let Some(limit) = shutdown_by {
            if ranks
                .iter()
                .skip(1)
                .all(|st| st.fin_sent && st.link.is_none())
            {
                return;
            }
            if Instant::now() > limit {
                eprintln!(
                    "multiproc: MPI worker ranks did not end within {SHUTDOWN_LIMIT:?} of the \
                     pool's end; aborting the MPI job"
                );
                world.abort(70);
            }
        }
        if moved || received || !sends.is_empty() {
            last_moved = Instant::now();
        }
        let awaiting = ranks.iter().any(|st| st.awaiting > 0);
        let nap = if awaiting && last_moved.elapsed() < SPIN_AWAITING {
            Duration::ZERO
        } else {
            nap_after(last_moved.elapsed())
        };
        wait_hub(&ranks, &wake, nap);
    }
}

/// Applies the pool side's commands.
fn take_commands(
    cmds: &Receiver<Cmd>,
    ranks: &mut [RankState],
    sends: &mut Sends,
    shutdown_by: &mut Option<Instant>,
) {
    loop {
        match cmds.try_recv() {
            Ok(Cmd::Attach { rank, sock, death }) => {
                ranks[rank as usize].link = Some((sock, death));
            }
            Ok(Cmd::Frames { rank, frames }) => {
                queue_frames(&mut ranks[rank as usize], rank, frames, sends)
            }
            Ok(Cmd::Stop { rank, signal }) => stop(ranks, rank, signal, sends),
            Ok(Cmd::Shutdown) | Err(TryRecvError::Disconnected) => {
                shutdown_by.get_or_insert(Instant::now() + SHUTDOWN_LIMIT);
                for r in 1..ranks.len() as i32 {
                    stop(ranks, r, 9, sends);
                }
                return;
            }
            Err(TryRecvError::Empty) => return,
        }
    }
}

/// Queues the scheduler's frames for `rank` (unless it has ended): a payload of at least
/// [`OWN_MESSAGE`] bytes as a message of its own behind its head, smaller frames copied into
/// `DATA` messages.
fn queue_frames(
    st: &mut RankState,
    rank: i32,
    frames: Vec<(Vec<u8>, Bytes, MpiAtts)>,
    sends: &mut Sends,
) {
    if st.ended.is_some() {
        return;
    }
    for (mut head, payload, atts) in frames {
        if head.get(crate::wire::LEN_BYTES) == Some(&super::super::transport::TASK) {
            st.awaiting += 1;
        }
        if payload.len() >= OWN_MESSAGE {
            sends.push((rank, TAG_HEAD, Msg::Own(head)));
            // In pieces of at most CHUNK bytes (an MPI count is an `i32`; a frame can be 4 GiB).
            for start in (0..payload.len()).step_by(CHUNK) {
                let end = (start + CHUNK).min(payload.len());
                sends.push((rank, TAG_PAYLOAD, Msg::Shared(payload.clone(), start, end)));
            }
        } else {
            head.extend_from_slice(&payload);
            queue_data(sends, rank, head);
        }
        for (id, bytes) in atts.iter().flat_map(|a| a.iter()) {
            queue_attachment(sends, rank, *id, bytes);
        }
    }
}

/// Queues an MPI attachment for `rank`: its head (id, byte count), then its bytes in pieces
/// of at most [`CHUNK`], sent from the attachment's own memory.
fn queue_attachment(sends: &mut Sends, rank: i32, id: u64, bytes: &Arc<dyn MpiBytes>) {
    let len = bytes.bytes().len();
    let mut head = Vec::with_capacity(ATT_HEAD_BYTES);
    head.extend_from_slice(&id.to_le_bytes());
    head.extend_from_slice(&(len as u64).to_le_bytes());
    sends.push((rank, TAG_ATT_HEAD, Msg::Own(head)));
    for start in (0..len).step_by(CHUNK) {
        let end = (start + CHUNK).min(len);
        sends.push((rank, TAG_ATT_DATA, Msg::Att(Arc::clone(bytes), start, end)));
    }
}

/// Reads what the scheduler wrote to the ranks' sockets and queues it in `DATA` messages cut
/// after whole frames (appended to a rank's last `DATA` message in `sends` while under
/// [`CHUNK`]); the start of a frame waits for its end, unless it is [`CHUNK`] bytes already.
fn read_links(ranks: &mut [RankState], sends: &mut Sends) {
    for (r, st) in ranks.iter_mut().enumerate().skip(1) {
        let Some((sock, _)) = st.link.as_mut().filter(|_| !st.sched_gone) else {
            continue;
        };
        st.sched_gone |= read_frames(sock, &mut st.partial, st.begun);
        if st.ended.is_some() {
            st.partial = Vec::new();
            continue;
        }
        let cut = match sendable(&st.partial, st.begun) {
            0 if st.partial.is_empty() => continue,
            0 if st.partial.len() >= CHUNK || st.sched_gone => {
                // A frame too big for one message: its start goes now, the rest streams.
                let total = frame_at(&st.partial).unwrap_or(0);
                st.begun = total.saturating_sub(st.partial.len());
                st.partial.len()
            }
            0 => continue,
            n => {
                st.begun = st.begun.saturating_sub(n);
                n
            }
        };
        let data = if cut == st.partial.len() {
            std::mem::take(&mut st.partial)
        } else {
            let rest = st.partial.split_off(cut);
            std::mem::replace(&mut st.partial, rest)
        };
        queue_data(sends, r as i32, data);
    }
}

/// The length of the frame `bytes` start with (prefix included), once its prefix is there.
fn frame_at(bytes: &[u8]) -> Option<usize> {
    let prefix = bytes.get(..crate::wire::LEN_BYTES)?;
    let len = u64::from_le_bytes(prefix.try_into().ok()?);
    usize::try_from(len)
        .ok()
        .map(|n| n.saturating_add(crate::wire::LEN_BYTES))
}

/// How many bytes at the start of `buf` can go now: the rest of a frame whose start went
/// already (`begun` bytes), then whole frames.
fn sendable(buf: &[u8], begun: usize) -> usize {
    if buf.len() <= begun {
        buf.len()
    } else {
        begun + whole_frames(&buf[begun..])
    }
}

/// How many frames `buf` holds, if it is whole frames.
fn count_frames(buf: &[u8]) -> Option<u64> {
    let (mut pos, mut n) = (0, 0);
    while pos < buf.len() {
        pos += frame_at(&buf[pos..])?;
        n += 1;
    }
    (pos == buf.len()).then_some(n)
}

/// How many bytes at the start of `buf` are whole frames.
fn whole_frames(buf: &[u8]) -> usize {
    let mut pos = 0;
    while let Some(total) = frame_at(&buf[pos..]) {
        if buf.len() - pos < total {
            break;
        }
        pos += total;
    }
    pos
}

/// Appends what the non-blocking socket holds now to `buf` (whose first `begun` bytes, or all,
/// are the rest of a frame already begun), up to the end of the frame being read (room for it is reserved at once, so a big frame is not grown by doubling) and at most
/// [`CHUNK`] bytes in `buf`; `true` at the end of the stream.
fn read_frames(sock: &mut UnixStream, buf: &mut Vec<u8>, begun: usize) -> bool {
    loop {
        let start = sendable(buf, begun);
        let want = if buf.len() < begun {
            begun - buf.len()
        } else {
            match frame_at(&buf[start..]) {
                Some(total) => total - (buf.len() - start),
                None => READ,
            }
        };
        let want = want.min(CHUNK.saturating_sub(buf.len()));
        if want == 0 {
            return false;
        }
        buf.reserve_exact(want);
        let before = buf.len();
        match Read::by_ref(sock).take(want as u64).read_to_end(buf) {
            // Short of `want` without an error: the end of the stream.
            Ok(_) if buf.len() - before < want => return true,
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            // WouldBlock: all there is for now; another error: the peer is gone.
            Err(e) => return e.kind() != ErrorKind::WouldBlock,
        }
    }
}

/// Sleeps until the pool side or a socket needs the hub, or `nap` passes.
fn wait_hub(ranks: &[RankState], wake: &UnixStream, nap: Duration) {
    let mut fds = vec![(std::os::fd::AsFd::as_fd(wake), Interest::Read)];
    for st in ranks {
        if let Some((sock, _)) = &st.link {
            let io = if st.to_sched.is_empty() {
                Interest::Read
            } else {
                Interest::ReadWrite
            };
            if !st.sched_gone || io == Interest::ReadWrite {
                fds.push((std::os::fd::AsFd::as_fd(sock), io));
            }
        }
    }
    wait_for(&fds, nap);
}

/// Queues a `STOP` for `rank` unless it has ended or was stopped already.
fn stop(ranks: &mut [RankState], rank: i32, signal: i32, sends: &mut Sends) {
    let st = &mut ranks[rank as usize];
    if st.ended.is_none() && !st.stop_sent {
        st.stop_sent = true;
        sends.push((rank, TAG_STOP, Msg::Own(code_bytes(signal))));
    }
}

/// Sends `sends` with immediate sends and, until all have completed, receives and reads the
/// sockets on: returns what it read meanwhile (the next messages).
fn exchange(world: &SimpleCommunicator, ranks: &mut [RankState], sends: Sends) -> Sends {
    let mut next = Sends::new();
    if sends.is_empty() {
        return next;
    }
    mpi::request::scope(|scope| {
        let mut pending: Vec<_> = sends
            .iter()
            .map(|(rank, tag, body)| {
                Some(world.process_at_rank(*rank).immediate_send_with_tag(
                    scope,
                    body.bytes(),
                    *tag,
                ))
            })
            .collect();
        loop {
            for p in pending.iter_mut() {
                if let Some(req) = p.take() {
                    if let Err(req) = req.test() {
                        *p = Some(req);
                    }
                }
            }
            if pending.iter().all(Option::is_none) {
                return;
            }
            receive(world, ranks);
            flush(ranks);
            read_links(ranks, &mut next);
            std::thread::yield_now();
        }
    });
    next
}

/// Receives every message that has arrived; `true` if there was one.
fn receive(world: &SimpleCommunicator, ranks: &mut [RankState]) -> bool {
    let mut any = false;
    while let Some(probed) = world.any_process().immediate_matched_probe() {
        any = true;
        let (body, status) = probed.matched_receive_vec::<u8>();
        let Some(st) = ranks.get_mut(status.source_rank() as usize) else {
            continue;
        };
        match status.tag() {
            TAG_DATA => {
                // One answer per task; a message that is not whole frames cannot be counted.
                st.awaiting = count_frames(&body).map_or(0, |n| st.awaiting.saturating_sub(n));
                st.to_sched.push(body);
            }
            TAG_BYE => {
                st.ended = Some(code_of(&body));
                st.awaiting = 0;
            }
            _ => {}
        }
    }
    any
}

/// Writes what the scheduler's sockets take.
fn flush(ranks: &mut [RankState]) {
    for st in ranks.iter_mut() {
        if let Some((sock, _)) = st.link.as_mut() {
            if st.to_sched.write_to(sock).is_err() {
                // The scheduler closed its end: nobody reads these bytes.
                st.to_sched = Outbox::default();
                st.sched_gone = true;
            }
        }
    }
}

/// Flushes, then reports the ranks that ended and whose bytes were all written: their exit code
/// goes to the death socket, and both sockets close.
fn report_ends(ranks: &mut [RankState]) {
    flush(ranks);
    for st in ranks.iter_mut() {
        let Some(code) = st.ended else { continue };
        if !st.to_sched.is_empty() {
            continue;
        }
        if let Some((sock, mut death)) = st.link.take() {
            let _ = sock.shutdown(Shutdown::Both);
            let _ = death.write_all(&code.to_le_bytes());
        }
    }
}

/// The frames for one worker rank, handed to the hub (see `transport::FrameSink`).
pub(super) struct RankSink<F: Fn(Cmd) + Send> {
    pub(super) rank: i32,
    /// Hands a command to the hub and wakes it.
    pub(super) send: F,
    pub(super) queued: Vec<(Vec<u8>, Bytes, MpiAtts)>,
}

impl<F: Fn(Cmd) + Send> FrameSink for RankSink<F> {
    fn frame(&mut self, head: Vec<u8>, payload: Bytes, atts: MpiAtts) {
        self.queued.push((head, payload, atts));
    }

    fn pending(&self) -> bool {
        !self.queued.is_empty()
    }

    fn flush(&mut self) {
        if !self.queued.is_empty() {
            (self.send)(Cmd::Frames {
                rank: self.rank,
                frames: std::mem::take(&mut self.queued),
            });
        }
    }
}

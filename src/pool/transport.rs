//! The transport between the parent and its workers: the one module that knows how task and
//! result frames move, so that another backend (MPI) can replace it.
//!
//! Each worker has one Unix stream socket pair. Every message is a [`crate::wire`] frame (an
//! 8-byte little-endian length, then the body; cut and read by [`FrameBuf`]); the body starts
//! with a one-byte kind:
//!
//! | direction | kind | body after the kind byte |
//! |---|---|---|
//! | parent → worker | `TASK` | seq `u64`, function offset `i64`, job `u64`, count `u32`, descriptors `u32`, inputs |
//! | parent → worker | `CTX` | job `u64`, descriptors `u32`, the encoded context |
//! | parent → worker | `STOP` | — |
//! | worker → parent | `DONE` | seq `u64`, run time in ns `u64`, descriptors `u32`, one encoded outcome per input |
//! | worker → parent | `FAILED` | seq `u64`, a message |
//!
//! The inputs of a `TASK` and the outcomes of a `DONE` are opaque here: one item after the
//! other, each self-delimiting, in the encoding that `chunk` gives their type (plain data, e.g.
//! `f64` or `(u32, f64)`, as its numbers' little-endian bytes; anything else postcard; an
//! outcome is `0` and the value, or `1` and the error), so that a task can be cut between
//! inputs and outcomes concatenated.
//!
//! Descriptors: values that live in shared memory (a big [`PodVec`](crate::PodVec), a
//! [`SharedArray`](crate::SharedArray), a sync primitive) encode an index into the frame's
//! descriptor table instead of their bytes (see `crate::fdpass`); the table travels as
//! `SCM_RIGHTS` attached to the first byte of the frame, at most [`MAX_FDS`] per frame. The
//! receiver queues the descriptors in arrival order and each frame takes as many as its header
//! says, so frames and tables pair up in order.
//!
//! The parent's end never blocks: it queues outgoing frames and writes what the socket takes
//! (a large payload is shared, not copied), and it reads whatever has arrived, so a worker that
//! writes a large result while the parent writes a large task cannot deadlock the two. Sends use
//! `MSG_NOSIGNAL`, so a dead worker is an error, never a `SIGPIPE`. The worker's end blocks.

use std::collections::VecDeque;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::fdpass::MpiAtts;
use crate::sys;
pub(crate) use crate::wire::Body;
use crate::wire::{self, FrameBuf};

pub(crate) const TASK: u8 = 0;
pub(crate) const CTX: u8 = 1;
pub(crate) const STOP: u8 = 2;
pub(crate) const DONE: u8 = 0;
pub(crate) const FAILED: u8 = 1;
/// Bytes of a `DONE` body before the outcomes.
const DONE_HEAD: usize = 21;

/// Encoded bytes shared between the scheduler (which may send them again) and the transport.
pub(crate) type Bytes = Arc<Vec<u8>>;

/// The descriptor table of an encoded task or context (`None`: no descriptor), shared like
/// [`Bytes`]; sending passes duplicates, so a task can be sent again.
pub(crate) type Fds = Option<Arc<Vec<OwnedFd>>>;

/// The most descriptors one frame carries (the kernel's limit for one message).
pub(crate) const MAX_FDS: usize = crate::sys::socket::MAX_FDS;

/// An encoded value and the descriptors it refers to.
#[derive(Debug)]
pub(crate) struct Encoded {
    pub(crate) bytes: Bytes,
    pub(crate) fds: Fds,
    /// Big `PodVec`s that go to MPI ranks as messages of their own (see
    /// `fdpass::attach_mpi`); always `None` outside an MPI job.
    pub(crate) mpi: MpiAtts,
}

/// Payloads larger than this are queued by reference instead of copied.
const SHARE: usize = 1 << 14;
/// Owned segments of the send queue grow up to this before a new one starts.
const SEGMENT: usize = 1 << 16;

enum Data {
    Own(Vec<u8>),
    Shared(Bytes),
}

/// Outgoing bytes; `fds` go with the first byte.
struct Seg {
    data: Data,
    fds: Fds,
}

impl Seg {
    fn bytes(&self) -> &[u8] {
        match &self.data {
            Data::Own(v) => v,
            Data::Shared(a) => a,
        }
    }
}

/// The parent's end of one worker's socket.
pub(crate) struct Link {
    sock: OwnedFd,
    out: VecDeque<Seg>,
    out_pos: usize,
    rx: FrameBuf,
    eof: bool,
    /// Where outgoing frames go instead of the socket (an MPI rank's, feature `mpi`).
    #[cfg(feature = "mpi")]
    sink: Option<Box<dyn FrameSink>>,
}

/// Takes a worker's outgoing frames instead of its socket (an MPI rank's bridge, feature
/// `mpi`): the frames keep their order; no descriptor goes with them (an MPI process encodes
/// inline only).
#[cfg(feature = "mpi")]
pub(crate) trait FrameSink: Send {
    /// Queues one frame: `head` is its length prefix and header, `payload` the rest (shared,
    /// not copied).
    /// `atts` go after the frame, each as MPI messages of its own.
    fn frame(&mut self, head: Vec<u8>, payload: Bytes, atts: MpiAtts);
    /// Whether frames are queued.
    fn pending(&self) -> bool;
    /// Hands the queued frames on.
    fn flush(&mut self);
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link").field("eof", &self.eof).finish()
    }
}

/// A result frame, parsed.
#[derive(Debug)]
pub(crate) enum Reply {
    /// The task ran: one encoded outcome per input, and the descriptors they refer to.
    Done {
        seq: u64,
        elapsed_ns: u64,
        data: Body,
        fds: Vec<OwnedFd>,
    },
    /// The task could not run at all.
    Failed { seq: u64, message: String },
}

/// Makes a connected (parent end, worker end) pair.
pub(crate) fn pair() -> Result<(Link, WorkerEnd)> {
    let (a, b) = sys::socketpair()?;
    Ok((Link::from_fd(a), WorkerEnd::from_fd(b)))
}

impl Link {
    /// The parent's end of a socket whose other end a worker has (see [`pair`]).
    pub(crate) fn from_fd(sock: OwnedFd) -> Link {
        Link {
            sock,
            out: VecDeque::new(),
            out_pos: 0,
            rx: FrameBuf::default(),
            eof: false,
            #[cfg(feature = "mpi")]
            sink: None,
        }
    }

    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }

    fn small(&mut self) -> &mut Vec<u8> {
        if !matches!(self.out.back(), Some(Seg { data: Data::Own(v), .. }) if v.len() < SEGMENT) {
            self.out.push_back(Seg {
                data: Data::Own(Vec::with_capacity(256)),
                fds: None,
            });
        }
        match self.out.back_mut() {
            Some(Seg {
                data: Data::Own(v), ..
            }) => v,
            _ => unreachable!("just pushed an owned segment"),
        }
    }

    /// This link with its outgoing frames going to `sink` (if any) instead of the socket.
    #[cfg(feature = "mpi")]
    pub(crate) fn with_sink(mut self, sink: Option<Box<dyn FrameSink>>) -> Link {
        self.sink = sink;
        self
    }

    fn queue(&mut self, head: &[u8], payload: &Bytes, fds: &Fds, atts: &MpiAtts) {
        #[cfg(feature = "mpi")]
        if let Some(sink) = self.sink.as_mut() {
            let mut frame_head = Vec::with_capacity(wire::LEN_BYTES + head.len());
            frame_head.extend_from_slice(&wire::frame_len(head.len() + payload.len()));
            frame_head.extend_from_slice(head);
            return sink.frame(frame_head, payload.clone(), atts.clone());
        }
        // Only a pool of MPI ranks makes attachments, and all its links have sinks.
        debug_assert!(atts.is_none(), "MPI attachments for a local worker");
        let _ = atts;
        if let Some(fds) = fds.as_ref().filter(|f| !f.is_empty()) {
            // The frame starts a segment of its own, whose first byte carries the descriptors.
            self.out.push_back(Seg {
                data: Data::Own(Vec::with_capacity(256)),
                fds: Some(fds.clone()),
            });
        }
        let small = self.small();
        small.extend_from_slice(&wire::frame_len(head.len() + payload.len()));
        small.extend_from_slice(head);
        if payload.len() <= SHARE {
            small.extend_from_slice(payload);
        } else {
            self.out.push_back(Seg {
                data: Data::Shared(payload.clone()),
                fds: None,
            });
        }
    }

    /// Queues a task frame.
    pub(crate) fn queue_task(
        &mut self,
        seq: u64,
        fn_offset: i64,
        job: u64,
        count: u32,
        inputs: &Bytes,
        fds: &Fds,
    ) {
        let mut head = [0u8; 33];
        head[0] = TASK;
        head[1..9].copy_from_slice(&seq.to_le_bytes());
        head[9..17].copy_from_slice(&fn_offset.to_le_bytes());
        head[17..25].copy_from_slice(&job.to_le_bytes());
        head[25..29].copy_from_slice(&count.to_le_bytes());
        head[29..33].copy_from_slice(&fd_count(fds).to_le_bytes());
        self.queue(&head, inputs, fds, &None);
    }

    /// Queues a context frame for `job`.
    pub(crate) fn queue_ctx(&mut self, job: u64, ctx: &Encoded) {
        let ctx_atts = ctx.mpi.clone();
        let (ctx, fds) = (&ctx.bytes, &ctx.fds);
        let mut head = [0u8; 13];
        head[0] = CTX;
        head[1..9].copy_from_slice(&job.to_le_bytes());
        head[9..13].copy_from_slice(&fd_count(fds).to_le_bytes());
        self.queue(&head, ctx, fds, &ctx_atts);
    }

    /// Queues a stop frame: the worker exits after the frames before it.
    pub(crate) fn queue_stop(&mut self) {
        let empty: Bytes = Arc::new(Vec::new());
        self.queue(&[STOP], &empty, &None, &None);
    }

    /// Whether queued bytes wait to be written.
    pub(crate) fn wants_write(&self) -> bool {
        #[cfg(feature = "mpi")]
        if let Some(sink) = &self.sink {
            return sink.pending();
        }
        !self.out.is_empty()
    }

    /// Writes as much as the socket takes without blocking. An error means the worker is gone.
    pub(crate) fn flush(&mut self) -> Result<()> {
        #[cfg(feature = "mpi")]
        if let Some(sink) = self.sink.as_mut() {
            sink.flush();
            return Ok(());
        }
        while let Some(seg) = self.out.front() {
            let bytes = &seg.bytes()[self.out_pos..];
            if bytes.is_empty() {
                self.out.pop_front();
                self.out_pos = 0;
                continue;
            }
            let n = match (&seg.fds, self.out_pos) {
                (Some(fds), 0) => {
                    let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
                    sys::socket::send_some_with_fds(self.sock.as_fd(), bytes, &raw, true)?
                }
                _ => sys::send(self.sock.as_fd(), bytes, true)?,
            };
            if n == 0 {
                return Ok(());
            }
            self.out_pos += n;
        }
        Ok(())
    }

    /// Reads what has arrived (at most a few MiB per call, so one busy worker cannot starve the
    /// others) and returns the complete replies. Notes the end of file (then it reads no more).
    pub(crate) fn receive(&mut self, replies: &mut Vec<Reply>) -> Result<()> {
        let mut budget = 64usize;
        while budget > 0 && !self.eof {
            budget -= 1;
            match self.rx.fill(self.sock.as_fd(), true)? {
                None => break,
                Some(0) => self.eof = true,
                Some(_) => {}
            }
            while let Some(body) = self.rx.next()? {
                replies.push(parse_reply(body, &mut self.rx)?);
            }
        }
        Ok(())
    }
}

fn bad_frame() -> Error {
    Error::Disconnected("a worker sent a malformed frame".into())
}

/// The descriptor count of a table.
fn fd_count(fds: &Fds) -> u32 {
    fds.as_ref().map_or(0, |f| f.len() as u32)
}

fn parse_reply(body: Body, rx: &mut FrameBuf) -> Result<Reply> {
    let b = body.bytes();
    if b.len() < 9 {
        return Err(bad_frame());
    }
    let seq = u64::from_le_bytes(b[1..9].try_into().unwrap());
    match b[0] {
        DONE if b.len() >= DONE_HEAD => {
            let elapsed_ns = u64::from_le_bytes(b[9..17].try_into().unwrap());
            let nfds = u32::from_le_bytes(b[17..21].try_into().unwrap());
            let fds = rx.take_fds(nfds)?;
            Ok(Reply::Done {
                seq,
                elapsed_ns,
                data: body.skip(DONE_HEAD),
                fds,
            })
        }
        FAILED => Ok(Reply::Failed {
            seq,
            message: String::from_utf8_lossy(&b[9..]).into_owned(),
        }),
        _ => Err(bad_frame()),
    }
}

/// A frame received by a worker.
#[derive(Debug)]
pub(crate) enum Order {
    /// Run a task.
    Task {
        seq: u64,
        fn_offset: i64,
        job: u64,
        count: u32,
        inputs: Body,
        fds: Vec<OwnedFd>,
    },
    /// The context of `job`.
    Ctx {
        job: u64,
        ctx: Body,
        fds: Vec<OwnedFd>,
    },
    /// Exit.
    Stop,
}

/// A worker's link to its parent that is not a socket: an MPI worker rank's messages to and from
/// rank 0 (feature `mpi`, `start::mpi_rank`). It carries frames as the socket does, without
/// descriptors (an MPI process encodes inline only).
#[cfg(feature = "mpi")]
pub(crate) trait FrameLink: Send {
    /// The next frame from the parent (its body, without the length prefix), waiting for it;
    /// `None` when the parent is done with this worker.
    fn recv(&mut self) -> Result<Option<Body>>;
    /// Whether a frame from the parent has arrived (without waiting).
    fn has_frame(&mut self) -> bool;
    /// Sends whole frames (length prefixes included) to the parent.
    fn send(&mut self, frames: &[u8]) -> Result<()>;
    /// Takes back a frame's buffer once its content is used (to receive the next one into).
    fn recycle(&mut self, body: Body);
}

/// The worker's end of its socket (blocking).
#[derive(Debug)]
pub(crate) struct WorkerEnd {
    sock: OwnedFd,
    rx: FrameBuf,
    out: Vec<u8>,
    /// Where in `out` a reply with descriptors starts, and its descriptors.
    out_fds: Vec<(usize, Vec<OwnedFd>)>,
    /// Instead of `sock`: an MPI worker rank's link to rank 0.
    #[cfg(feature = "mpi")]
    link: Option<LinkBox>,
}

/// A [`FrameLink`] in a box, debug-printable.
#[cfg(feature = "mpi")]
pub(crate) struct LinkBox(pub(crate) Box<dyn FrameLink>);

#[cfg(feature = "mpi")]
impl std::fmt::Debug for LinkBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FrameLink")
    }
}

impl WorkerEnd {
    /// The worker's end of a socket made by [`pair`] (or `sys::socketpair`), in this process or
    /// another.
    pub(crate) fn from_fd(sock: OwnedFd) -> WorkerEnd {
        WorkerEnd {
            sock,
            rx: FrameBuf::default(),
            out: Vec::new(),
            out_fds: Vec::new(),
            #[cfg(feature = "mpi")]
            link: None,
        }
    }

    /// A worker end whose frames go over `link` (an MPI worker rank's); `sock` is left unused.
    #[cfg(feature = "mpi")]
    pub(crate) fn from_link(sock: OwnedFd, link: Box<dyn FrameLink>) -> WorkerEnd {
        WorkerEnd {
            link: Some(LinkBox(link)),
            ..WorkerEnd::from_fd(sock)
        }
    }

    /// The socket's descriptor number (for a sibling forked with it to close).
    pub(crate) fn raw_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }

    /// The socket (to hand to a worker that is not a fork of this process); nothing may be
    /// buffered yet.
    pub(crate) fn into_fd(self) -> OwnedFd {
        self.sock
    }

    /// The next order; `None` at end of file (the parent is gone or closed the pool). Before it
    /// blocks, it sends the buffered replies and spins for `spin` in case the next order is close.
    pub(crate) fn next_order(&mut self, spin: std::time::Duration) -> Result<Option<Order>> {
        #[cfg(feature = "mpi")]
        if self.link.is_some() {
            self.flush()?;
            let link = self.link.as_mut().map(|l| &mut l.0);
            return match link.map(|l| l.recv()).transpose()?.flatten() {
                Some(body) => parse_order(body, &mut self.rx).map(Some),
                None => Ok(None),
            };
        }
        loop {
            if let Some(body) = self.rx.next()? {
                return parse_order(body, &mut self.rx).map(Some);
            }
            self.flush()?;
            let mut got = None;
            // No clock read without a spin: a clock read costs (a VM's clock can be slow).
            let until = (!spin.is_zero()).then(|| std::time::Instant::now() + spin);
            while let Some(until) = until {
                match self.rx.fill(self.sock.as_fd(), true)? {
                    Some(n) => {
                        got = Some(n);
                        break;
                    }
                    // Yield: if the parent shares this CPU, it gets to run.
                    None if std::time::Instant::now() < until => std::thread::yield_now(),
                    None => break,
                }
            }
            let n = match got {
                Some(n) => n,
                None => loop {
                    if let Some(n) = self.rx.fill(self.sock.as_fd(), false)? {
                        break n;
                    }
                },
            };
            if n == 0 {
                return Ok(None);
            }
        }
    }

    /// Hands a used input buffer back for reuse.
    pub(crate) fn recycle(&mut self, body: Body) {
        #[cfg(feature = "mpi")]
        if let Some(link) = self.link.as_mut() {
            return link.0.recycle(body);
        }
        self.rx.recycle(body);
    }

    /// Whether another order is already buffered (replies may wait for the batch).
    pub(crate) fn has_order(&mut self) -> bool {
        #[cfg(feature = "mpi")]
        if let Some(link) = self.link.as_mut() {
            return link.0.has_frame();
        }
        self.rx.has_frame()
    }

    /// Starts a `DONE` reply; the caller appends the outcomes to the returned buffer, then calls
    /// [`WorkerEnd::finish_done`] with the returned mark.
    pub(crate) fn begin_done(&mut self, seq: u64) -> (usize, &mut Vec<u8>) {
        let mark = self.out.len();
        self.out.extend_from_slice(&[0u8; 8]);
        self.out.push(DONE);
        self.out.extend_from_slice(&seq.to_le_bytes());
        self.out.extend_from_slice(&0u64.to_le_bytes());
        self.out.extend_from_slice(&0u32.to_le_bytes());
        (mark, &mut self.out)
    }

    /// Ends the reply started at `mark`, recording the run time and the descriptors the
    /// outcomes refer to (at most [`MAX_FDS`]: the caller fails the task otherwise).
    pub(crate) fn finish_done(&mut self, mark: usize, elapsed_ns: u64, fds: Vec<OwnedFd>) {
        let len = (self.out.len() - mark - 8) as u64;
        self.out[mark..mark + 8].copy_from_slice(&len.to_le_bytes());
        self.out[mark + 17..mark + 25].copy_from_slice(&elapsed_ns.to_le_bytes());
        self.out[mark + 25..mark + 29].copy_from_slice(&(fds.len() as u32).to_le_bytes());
        if !fds.is_empty() {
            self.out_fds.push((mark, fds));
        }
    }

    /// Replaces the reply started at `mark` by a `FAILED` reply.
    pub(crate) fn fail(&mut self, mark: usize, seq: u64, message: &str) {
        self.out.truncate(mark);
        self.out_fds.retain(|(m, _)| *m < mark);
        let len = (1 + 8 + message.len()) as u64;
        self.out.extend_from_slice(&len.to_le_bytes());
        self.out.push(FAILED);
        self.out.extend_from_slice(&seq.to_le_bytes());
        self.out.extend_from_slice(message.as_bytes());
    }

    /// Sends the buffered replies (blocking).
    pub(crate) fn flush(&mut self) -> Result<()> {
        #[cfg(feature = "mpi")]
        if let Some(link) = self.link.as_mut() {
            if !self.out.is_empty() {
                link.0.send(&self.out)?;
                self.out.clear();
            }
            return Ok(());
        }
        let mut pos = 0;
        for (mark, fds) in std::mem::take(&mut self.out_fds) {
            self.send_plain(pos, mark)?;
            let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
            pos = mark;
            while pos == mark {
                pos += sys::socket::send_some_with_fds(
                    self.sock.as_fd(),
                    &self.out[mark..],
                    &raw,
                    false,
                )?;
            }
        }
        self.send_plain(pos, self.out.len())?;
        self.out.clear();
        // Keep the buffer for the next large reply (fresh memory costs a page fault per 4 KiB),
        // unless it is huge.
        if self.out.capacity() > 1 << 28 {
            self.out.shrink_to(1 << 16);
        }
        Ok(())
    }

    /// Sends `out[pos..end]` (blocking).
    fn send_plain(&self, mut pos: usize, end: usize) -> Result<()> {
        while pos < end {
            pos += sys::send(self.sock.as_fd(), &self.out[pos..end], false)?;
        }
        Ok(())
    }

    /// Whether the buffered replies are worth sending now.
    pub(crate) fn reply_bytes(&self) -> usize {
        self.out.len()
    }
}

fn parse_order(body: Body, rx: &mut FrameBuf) -> Result<Order> {
    let b = body.bytes();
    match b.first() {
        Some(&TASK) if b.len() >= 33 => Ok(Order::Task {
            seq: u64::from_le_bytes(b[1..9].try_into().unwrap()),
            fn_offset: i64::from_le_bytes(b[9..17].try_into().unwrap()),
            job: u64::from_le_bytes(b[17..25].try_into().unwrap()),
            count: u32::from_le_bytes(b[25..29].try_into().unwrap()),
            fds: rx.take_fds(u32::from_le_bytes(b[29..33].try_into().unwrap()))?,
            inputs: body.skip(33),
        }),
        Some(&CTX) if b.len() >= 13 => Ok(Order::Ctx {
            job: u64::from_le_bytes(b[1..9].try_into().unwrap()),
            fds: rx.take_fds(u32::from_le_bytes(b[9..13].try_into().unwrap()))?,
            ctx: body.skip(13),
        }),
        Some(&STOP) => Ok(Order::Stop),
        _ => Err(bad_frame()),
    }
}

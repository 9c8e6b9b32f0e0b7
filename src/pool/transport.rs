//! The transport between the parent and its workers: the one module that knows how task and
//! result frames move, so that another backend (MPI) can replace it.
//!
//! Each worker has one Unix stream socket pair. Every message is a [`crate::wire`] frame (an
//! 8-byte little-endian length, then the body); the body starts with a one-byte kind:
//!
//! | direction | kind | body after the kind byte |
//! |---|---|---|
//! | parent → worker | `TASK` | seq `u64`, function offset `i64`, job `u64`, count `u32`, inputs |
//! | parent → worker | `CTX` | job `u64`, the encoded context |
//! | parent → worker | `STOP` | — |
//! | worker → parent | `DONE` | seq `u64`, run time in ns `u64`, one encoded outcome per input |
//! | worker → parent | `FAILED` | seq `u64`, a message |
//!
//! The parent's end never blocks: it queues outgoing frames and writes what the socket takes
//! (a large payload is shared, not copied), and it reads whatever has arrived, so a worker that
//! writes a large result while the parent writes a large task cannot deadlock the two. Sends use
//! `MSG_NOSIGNAL`, so a dead worker is an error, never a `SIGPIPE`. The worker's end blocks.

use std::collections::VecDeque;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::sys;

pub(crate) const TASK: u8 = 0;
pub(crate) const CTX: u8 = 1;
pub(crate) const STOP: u8 = 2;
pub(crate) const DONE: u8 = 0;
pub(crate) const FAILED: u8 = 1;

/// Frames larger than this are read straight into their own buffer.
const BIG: usize = 1 << 16;
/// Payloads larger than this are queued by reference instead of copied.
const SHARE: usize = 1 << 14;
const READ_CHUNK: usize = 1 << 16;

/// A received frame body: `buf[start..]`.
#[derive(Debug)]
pub(crate) struct Body {
    buf: Vec<u8>,
    start: usize,
}

impl Body {
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.buf[self.start..]
    }
}

/// Incoming bytes, cut into frames.
#[derive(Debug, Default)]
struct RxBuf {
    buf: Vec<u8>,
    pos: usize,
}

impl RxBuf {
    /// How many bytes to ask for next, and makes room for them.
    fn prepare(&mut self) -> usize {
        let avail = self.buf.len() - self.pos;
        let want = if avail >= 8 {
            let len = u64::from_le_bytes(self.buf[self.pos..self.pos + 8].try_into().unwrap());
            let total = 8 + len as usize;
            if total > BIG {
                // Read exactly the rest of this big frame into a buffer holding only it.
                if self.pos > 0 {
                    self.buf.drain(..self.pos);
                    self.pos = 0;
                }
                total - avail
            } else {
                READ_CHUNK
            }
        } else {
            READ_CHUNK
        };
        if self.pos > 0 && self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        } else if self.pos > READ_CHUNK * 4 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        self.buf.reserve(want);
        want
    }

    /// Receives once; `Ok(None)` when nothing was there, `Ok(Some(0))` at end of file.
    fn fill(&mut self, fd: BorrowedFd<'_>, nonblocking: bool) -> Result<Option<usize>> {
        let want = self.prepare();
        let old = self.buf.len();
        self.buf.resize(old + want, 0);
        let r = sys::recv(fd, &mut self.buf[old..], nonblocking);
        let got = match &r {
            Ok(Some(n)) => *n,
            _ => 0,
        };
        self.buf.truncate(old + got);
        r
    }

    /// The next complete frame, if one is buffered.
    fn next(&mut self) -> Result<Option<Body>> {
        let avail = self.buf.len() - self.pos;
        if avail < 8 {
            return Ok(None);
        }
        let len = u64::from_le_bytes(self.buf[self.pos..self.pos + 8].try_into().unwrap());
        if len > crate::wire::MAX_MESSAGE_BYTES as u64 + 64 {
            return Err(Error::TooLarge {
                size: len as usize,
                limit: crate::wire::MAX_MESSAGE_BYTES,
            });
        }
        let total = 8 + len as usize;
        if avail < total {
            return Ok(None);
        }
        if self.pos == 0 && total == self.buf.len() && total > BIG {
            let buf = std::mem::take(&mut self.buf);
            return Ok(Some(Body { buf, start: 8 }));
        }
        let body = self.buf[self.pos + 8..self.pos + total].to_vec();
        self.pos += total;
        if self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        }
        Ok(Some(Body {
            buf: body,
            start: 0,
        }))
    }

    fn has_frame(&self) -> bool {
        let avail = self.buf.len() - self.pos;
        avail >= 8 && {
            let len = u64::from_le_bytes(self.buf[self.pos..self.pos + 8].try_into().unwrap());
            avail >= 8 + len as usize
        }
    }
}

enum Seg {
    Own(Vec<u8>),
    Shared(Arc<[u8]>),
}

impl Seg {
    fn bytes(&self) -> &[u8] {
        match self {
            Seg::Own(v) => v,
            Seg::Shared(a) => a,
        }
    }
}

/// The parent's end of one worker's socket.
pub(crate) struct Link {
    sock: OwnedFd,
    out: VecDeque<Seg>,
    out_pos: usize,
    rx: RxBuf,
    eof: bool,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link").field("eof", &self.eof).finish()
    }
}

/// A result frame, parsed.
#[derive(Debug)]
pub(crate) enum Reply {
    /// The task ran: one encoded outcome per input.
    Done {
        seq: u64,
        elapsed_ns: u64,
        data: Body,
    },
    /// The task could not run at all.
    Failed { seq: u64, message: String },
}

/// Makes a connected (parent end, worker end) pair.
pub(crate) fn pair() -> Result<(Link, WorkerEnd)> {
    let (a, b) = sys::socketpair()?;
    Ok((
        Link {
            sock: a,
            out: VecDeque::new(),
            out_pos: 0,
            rx: RxBuf::default(),
            eof: false,
        },
        WorkerEnd {
            sock: b,
            rx: RxBuf::default(),
            out: Vec::new(),
        },
    ))
}

impl Link {
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }

    fn small(&mut self) -> &mut Vec<u8> {
        if !matches!(self.out.back(), Some(Seg::Own(v)) if v.len() < READ_CHUNK) {
            self.out.push_back(Seg::Own(Vec::with_capacity(256)));
        }
        match self.out.back_mut() {
            Some(Seg::Own(v)) => v,
            _ => unreachable!("just pushed an owned segment"),
        }
    }

    fn queue(&mut self, head: &[u8], payload: &Arc<[u8]>) {
        let len = (head.len() + payload.len()) as u64;
        let small = self.small();
        small.extend_from_slice(&len.to_le_bytes());
        small.extend_from_slice(head);
        if payload.len() <= SHARE {
            small.extend_from_slice(payload);
        } else {
            self.out.push_back(Seg::Shared(payload.clone()));
        }
    }

    /// Queues a task frame.
    pub(crate) fn queue_task(
        &mut self,
        seq: u64,
        fn_offset: i64,
        job: u64,
        count: u32,
        inputs: &Arc<[u8]>,
    ) {
        let mut head = [0u8; 29];
        head[0] = TASK;
        head[1..9].copy_from_slice(&seq.to_le_bytes());
        head[9..17].copy_from_slice(&fn_offset.to_le_bytes());
        head[17..25].copy_from_slice(&job.to_le_bytes());
        head[25..29].copy_from_slice(&count.to_le_bytes());
        self.queue(&head, inputs);
    }

    /// Queues a context frame for `job`.
    pub(crate) fn queue_ctx(&mut self, job: u64, ctx: &Arc<[u8]>) {
        let mut head = [0u8; 9];
        head[0] = CTX;
        head[1..9].copy_from_slice(&job.to_le_bytes());
        self.queue(&head, ctx);
    }

    /// Queues a stop frame: the worker exits after the frames before it.
    pub(crate) fn queue_stop(&mut self) {
        let empty: Arc<[u8]> = Arc::from(Vec::new());
        self.queue(&[STOP], &empty);
    }

    /// Whether queued bytes wait to be written.
    pub(crate) fn wants_write(&self) -> bool {
        !self.out.is_empty()
    }

    /// Writes as much as the socket takes without blocking. An error means the worker is gone.
    pub(crate) fn flush(&mut self) -> Result<()> {
        while let Some(seg) = self.out.front() {
            let bytes = &seg.bytes()[self.out_pos..];
            if bytes.is_empty() {
                self.out.pop_front();
                self.out_pos = 0;
                continue;
            }
            let n = sys::send(self.sock.as_fd(), bytes, true)?;
            if n == 0 {
                return Ok(());
            }
            self.out_pos += n;
        }
        Ok(())
    }

    /// Reads what has arrived (at most a few MiB per call, so one busy worker cannot starve the
    /// others) and returns the complete replies. Sets [`Link::is_eof`] at end of file.
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
                replies.push(parse_reply(body)?);
            }
        }
        Ok(())
    }
}

fn bad_frame() -> Error {
    Error::Disconnected("a worker sent a malformed frame".into())
}

fn parse_reply(body: Body) -> Result<Reply> {
    let b = body.bytes();
    if b.len() < 9 {
        return Err(bad_frame());
    }
    let seq = u64::from_le_bytes(b[1..9].try_into().unwrap());
    match b[0] {
        DONE if b.len() >= 17 => {
            let elapsed_ns = u64::from_le_bytes(b[9..17].try_into().unwrap());
            let start = body.start + 17;
            Ok(Reply::Done {
                seq,
                elapsed_ns,
                data: Body {
                    buf: body.buf,
                    start,
                },
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
    },
    /// The context of `job`.
    Ctx { job: u64, ctx: Body },
    /// Exit.
    Stop,
}

/// The worker's end of its socket (blocking).
#[derive(Debug)]
pub(crate) struct WorkerEnd {
    sock: OwnedFd,
    rx: RxBuf,
    out: Vec<u8>,
}

impl WorkerEnd {
    /// The next order; `None` at end of file (the parent is gone or closed the pool). Before it
    /// blocks, it sends the buffered replies and spins for `spin` in case the next order is close.
    pub(crate) fn next_order(&mut self, spin: std::time::Duration) -> Result<Option<Order>> {
        loop {
            if let Some(body) = self.rx.next()? {
                return parse_order(body).map(Some);
            }
            self.flush()?;
            let until = std::time::Instant::now() + spin;
            let mut got = None;
            loop {
                match self.rx.fill(self.sock.as_fd(), true)? {
                    Some(n) => {
                        got = Some(n);
                        break;
                    }
                    None if std::time::Instant::now() < until => std::hint::spin_loop(),
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

    /// Whether another order is already buffered (replies may wait for the batch).
    pub(crate) fn has_order(&self) -> bool {
        self.rx.has_frame()
    }

    /// Starts a `DONE` reply; the caller appends the outcomes to the returned buffer, then calls
    /// [`WorkerEnd::finish_reply`] with the returned mark.
    pub(crate) fn begin_done(&mut self, seq: u64) -> (usize, &mut Vec<u8>) {
        let mark = self.out.len();
        self.out.extend_from_slice(&[0u8; 8]);
        self.out.push(DONE);
        self.out.extend_from_slice(&seq.to_le_bytes());
        self.out.extend_from_slice(&0u64.to_le_bytes());
        (mark, &mut self.out)
    }

    /// Ends the reply started at `mark`, recording the run time.
    pub(crate) fn finish_done(&mut self, mark: usize, elapsed_ns: u64) {
        let len = (self.out.len() - mark - 8) as u64;
        self.out[mark..mark + 8].copy_from_slice(&len.to_le_bytes());
        self.out[mark + 17..mark + 25].copy_from_slice(&elapsed_ns.to_le_bytes());
    }

    /// Replaces the reply started at `mark` by a `FAILED` reply.
    pub(crate) fn fail(&mut self, mark: usize, seq: u64, message: &str) {
        self.out.truncate(mark);
        let len = (1 + 8 + message.len()) as u64;
        self.out.extend_from_slice(&len.to_le_bytes());
        self.out.push(FAILED);
        self.out.extend_from_slice(&seq.to_le_bytes());
        self.out.extend_from_slice(message.as_bytes());
    }

    /// Sends the buffered replies (blocking).
    pub(crate) fn flush(&mut self) -> Result<()> {
        let mut pos = 0;
        while pos < self.out.len() {
            pos += sys::send(self.sock.as_fd(), &self.out[pos..], false)?;
        }
        self.out.clear();
        if self.out.capacity() > 1 << 20 {
            self.out.shrink_to(1 << 16);
        }
        Ok(())
    }

    /// Whether the buffered replies are worth sending now.
    pub(crate) fn reply_bytes(&self) -> usize {
        self.out.len()
    }
}

fn parse_order(body: Body) -> Result<Order> {
    let b = body.bytes();
    match b.first() {
        Some(&TASK) if b.len() >= 29 => Ok(Order::Task {
            seq: u64::from_le_bytes(b[1..9].try_into().unwrap()),
            fn_offset: i64::from_le_bytes(b[9..17].try_into().unwrap()),
            job: u64::from_le_bytes(b[17..25].try_into().unwrap()),
            count: u32::from_le_bytes(b[25..29].try_into().unwrap()),
            inputs: Body {
                start: body.start + 29,
                buf: body.buf,
            },
        }),
        Some(&CTX) if b.len() >= 9 => Ok(Order::Ctx {
            job: u64::from_le_bytes(b[1..9].try_into().unwrap()),
            ctx: Body {
                start: body.start + 9,
                buf: body.buf,
            },
        }),
        Some(&STOP) => Ok(Order::Stop),
        _ => Err(bad_frame()),
    }
}

//! [`pipe`] and [`pipe_oneway`]: two connected ends over a unix socket, Python's
//! `multiprocessing.Pipe`, that also carry file descriptors, so a [`SharedArray`], a sync
//! primitive or a big [`PodVec`] can be handed to a process that is already running.
//!
//! Each message is a [`crate::wire`] frame (length prefix, then body, read by
//! [`FrameBuf`]) whose body is the descriptor count (`u32`, little-endian), then the value's
//! encoding; the message's descriptors are attached (`SCM_RIGHTS`) to its first byte.
//!
//! [`SharedArray`]: crate::SharedArray
//! [`PodVec`]: crate::PodVec

use std::fmt;
use std::marker::PhantomData;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};
use crate::fdpass;
use crate::liveness::own_start_time;
use crate::sys::mem::SharedMapping;
use crate::sys::socket::{self, MAX_FDS};
use crate::sys::{self, process_alive};
use crate::wire::{Body, FrameBuf, LEN_BYTES, frame_len};

/// How often a blocked receiver checks whether the other end's process is still alive.
const TICK: Duration = Duration::from_millis(50);
/// The frame's length prefix and the descriptor count.
const HEADER: usize = LEN_BYTES + 4;
/// Small bodies go in the same `send` as their header.
const COALESCE_MAX: usize = 64 << 10;
/// The user of an end dropped it.
const CLOSED: i32 = -1;

/// Which process uses each end: the last one that sent or received on it (0: not used yet;
/// [`CLOSED`]: its user dropped it).
#[repr(C)]
struct Users {
    pid: [AtomicI32; 2],
    start: [AtomicU64; 2],
}

/// The state both ends share: who uses them (in an anonymous shared mapping, inherited by fork).
#[derive(Debug)]
struct Liveness {
    map: SharedMapping,
}

impl Liveness {
    fn new() -> Result<Self> {
        let map = SharedMapping::anonymous(std::mem::size_of::<Users>())?;
        Ok(Liveness { map })
    }

    fn users(&self) -> &Users {
        // SAFETY: the mapping is zero-initialized, large enough, page-aligned, lives as long as
        // `self`, and holds only atomics.
        unsafe { &*self.map.as_ptr().cast::<Users>() }
    }

    /// Records the calling process as the user of end `side`.
    fn claim(&self, side: usize) {
        let me = sys::getpid().as_raw();
        let u = self.users();
        if u.pid[side].load(SeqCst) != me {
            u.start[side].store(own_start_time(), SeqCst);
            u.pid[side].store(me, SeqCst);
        }
    }

    /// Marks end `side` closed if the calling process is its user.
    fn release(&self, side: usize) {
        let me = sys::getpid().as_raw();
        let _ = self.users().pid[side].compare_exchange(me, CLOSED, SeqCst, SeqCst);
    }

    /// Whether the last user of end `side` has dropped it or died.
    fn gone(&self, side: usize) -> bool {
        let u = self.users();
        match u.pid[side].load(SeqCst) {
            0 => false,
            CLOSED => true,
            pid => !process_alive(pid, u.start[side].load(SeqCst)),
        }
    }
}

/// One end of a pipe, untyped.
#[derive(Debug)]
struct End {
    fd: OwnedFd,
    side: usize,
    live: Arc<Liveness>,
    send: Mutex<()>,
    recv: Mutex<FrameBuf>,
}

fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl End {
    /// Sends `value`; with `moving`, the caller drops it right after (see
    /// [`fdpass::encode_moving_with_fds`]).
    fn send<T: Serialize + ?Sized>(&self, value: &T, moving: bool) -> Result<()> {
        let (body, fds) = if moving {
            fdpass::encode_moving_with_fds(value)?
        } else {
            fdpass::encode_with_fds(value)?
        };
        if fds.len() > MAX_FDS {
            return Err(Error::invalid_arg(
                "message",
                format!("{} descriptors", fds.len()),
                format!("one message can carry at most {MAX_FDS} shared objects"),
            ));
        }
        let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
        let mut header = [0u8; HEADER];
        header[..LEN_BYTES].copy_from_slice(&frame_len(4 + body.len()));
        header[LEN_BYTES..].copy_from_slice(&(raw.len() as u32).to_le_bytes());
        self.live.claim(self.side);
        let _g = locked(&self.send);
        let wait = &mut || self.wait_writable();
        if body.len() <= COALESCE_MAX {
            let mut frame = Vec::with_capacity(HEADER + body.len());
            frame.extend_from_slice(&header);
            frame.extend_from_slice(&body);
            socket::send_with_fds(self.fd.as_fd(), &frame, &raw, wait)
        } else {
            socket::send_with_fds(self.fd.as_fd(), &header, &raw, wait)?;
            socket::send_all(self.fd.as_fd(), &body, wait)
        }
        // `fds` (our duplicates) close here; the receiver has its own.
    }

    /// Waits for room in the socket buffer; fails once the other end's user is gone.
    fn wait_writable(&self) -> Result<()> {
        loop {
            if socket::wait_writable(self.fd.as_fd(), Instant::now() + TICK)? {
                return Ok(());
            }
            if self.live.gone(1 - self.side) {
                return Err(Error::Disconnected(
                    "the process at the other end of the pipe has closed it or died".into(),
                ));
            }
        }
    }

    fn recv<T: DeserializeOwned>(&self, deadline: Option<Instant>) -> Result<T> {
        self.live.claim(self.side);
        let (body, fds) = self.recv_frame(deadline)?;
        fdpass::decode_with_fds(body.bytes(), fds)
    }

    /// The next message: its encoded value and its descriptors.
    fn recv_frame(&self, deadline: Option<Instant>) -> Result<(Body, Vec<OwnedFd>)> {
        let started = Instant::now();
        let mut rx = locked(&self.recv);
        let body = loop {
            if let Some(body) = rx.next()? {
                break body;
            }
            self.wait(deadline, started)?;
            if rx.fill(self.fd.as_fd(), true)? == Some(0) {
                return Err(closed(rx.has_partial()));
            }
        };
        let Some(count) = body.bytes().get(..4) else {
            return Err(Error::Disconnected(
                "a message without its header arrived".into(),
            ));
        };
        let want = u32::from_le_bytes(count.try_into().expect("4 bytes"));
        let fds = rx.take_fds(want)?;
        Ok((body.skip(4), fds))
    }

    /// Waits until the socket is readable; checks the peer's process every [`TICK`].
    fn wait(&self, deadline: Option<Instant>, started: Instant) -> Result<()> {
        loop {
            let tick = Instant::now() + TICK;
            let until = deadline.map_or(tick, |d| d.min(tick));
            if sys::wait_readable(self.fd.as_fd(), Some(until))? {
                return Ok(());
            }
            if let Some(d) = deadline
                && Instant::now() >= d
            {
                return Err(Error::Timeout {
                    operation: "Connection::recv",
                    after: started.elapsed(),
                    task: None,
                });
            }
            if self.live.gone(1 - self.side) {
                // Data it sent before dying is still ours to read.
                if sys::wait_readable(self.fd.as_fd(), Some(Instant::now()))? {
                    return Ok(());
                }
                return Err(Error::Disconnected(
                    "the process at the other end of the pipe has closed it or died".into(),
                ));
            }
        }
    }

    fn poll(&self, timeout: Duration) -> Result<bool> {
        if locked(&self.recv).has_frame() {
            return Ok(true);
        }
        sys::wait_readable(self.fd.as_fd(), Some(Instant::now() + timeout))
    }
}

impl Drop for End {
    fn drop(&mut self) {
        self.live.release(self.side);
    }
}

fn closed(mid: bool) -> Error {
    Error::Disconnected(if mid {
        "the other end of the pipe closed in the middle of a message".into()
    } else {
        "the other end of the pipe is closed".into()
    })
}

fn pair() -> Result<(End, End)> {
    let (a, b) = socket::stream_pair()?;
    let live = Arc::new(Liveness::new()?);
    let end = |fd, side| End {
        fd,
        side,
        live: Arc::clone(&live),
        send: Mutex::new(()),
        recv: Mutex::new(FrameBuf::default()),
    };
    Ok((end(a, 0), end(b, 1)))
}

/// A connected pair of [`Connection`]s: Python's `multiprocessing.Pipe()`.
///
/// The first end sends `A` and receives `B`; the second sends `B` and receives `A`. Make the
/// pair before forking and give one end to the child (moving it into the child's closure closes
/// the parent's copy once the child starts).
///
/// Besides plain values, a message may hold [`SharedArray`](crate::SharedArray)s,
/// [`SharedValue`](crate::SharedValue)s, sync primitives ([`Lock`](crate::Lock),
/// [`Event`](crate::Event)...) and [`PodVec`](crate::PodVec)s: their memory files travel as
/// descriptors, so the receiver, even a process that was already running, shares the same
/// memory (up to 253 of them per message).
///
/// # Examples
///
/// ```
/// use multiproc::{Process, SharedArray};
///
/// let (parent, child) = multiproc::pipe::<SharedArray<u32>, u64>()?;
/// let p = Process::new(move || {
///     // Receives an array made after this process started.
///     let a = child.recv().unwrap();
///     let sum = a.to_vec().unwrap().iter().map(|&x| u64::from(x)).sum();
///     child.send(&sum).unwrap();
/// });
/// p.start()?;
/// let a = SharedArray::from_slice(&[1u32, 2, 3])?;
/// parent.send(&a)?;
/// assert_eq!(parent.recv()?, 6);
/// p.join()?;
/// # Ok::<(), multiproc::Error>(())
/// ```
///
/// # Errors
///
/// [`Error::Io`] if the socket pair or its small shared state cannot be made.
pub fn pipe<A, B>() -> Result<(Connection<A, B>, Connection<B, A>)>
where
    A: Serialize + DeserializeOwned,
    B: Serialize + DeserializeOwned,
{
    let (a, b) = pair()?;
    Ok((
        Connection {
            end: a,
            _t: PhantomData,
        },
        Connection {
            end: b,
            _t: PhantomData,
        },
    ))
}

/// A one-way pipe: Python's `Pipe(duplex=False)`. Returns `(receiver, sender)`, in Python's
/// order.
///
/// # Examples
///
/// ```
/// let (rx, tx) = multiproc::pipe_oneway::<String>()?;
/// tx.send(&"hi".to_string())?;
/// assert!(rx.poll(std::time::Duration::from_secs(1))?);
/// assert_eq!(rx.recv()?, "hi");
/// drop(tx);
/// assert!(rx.recv().unwrap_err().is_disconnected());
/// # Ok::<(), multiproc::Error>(())
/// ```
///
/// # Errors
///
/// As for [`pipe`].
pub fn pipe_oneway<T>() -> Result<(PipeReceiver<T>, PipeSender<T>)>
where
    T: Serialize + DeserializeOwned,
{
    let (a, b) = pair()?;
    // Each end is used one way only; shutting the other direction makes misuse visible.
    let _ = nix::sys::socket::shutdown(a.fd.as_raw_fd(), nix::sys::socket::Shutdown::Write);
    let _ = nix::sys::socket::shutdown(b.fd.as_raw_fd(), nix::sys::socket::Shutdown::Read);
    Ok((
        PipeReceiver {
            end: a,
            _t: PhantomData,
        },
        PipeSender {
            end: b,
            _t: PhantomData,
        },
    ))
}

/// One end of a duplex [`pipe`]: sends `S`, receives `R`.
///
/// Methods take `&self`; concurrent senders (or receivers) on one end are serialized, so
/// messages never interleave.
///
/// # Disconnection
///
/// [`recv`](Connection::recv) returns [`Error::Disconnected`] once the other end is closed in
/// every process, or once the process that last used the other end has dropped it or died
/// (checked every 50 ms), so a dead peer never hangs it, even when this process still holds a
/// forked copy of the other end. A blocked [`send`](Connection::send) fails the same way.
///
/// # Caveats
///
/// "Used" means sent or received on. An end that a process used and then handed to a child
/// (moved into the child's closure, which drops the parent's copy) counts as closed until the
/// child first uses it: hand ends over before using them.
///
/// As with Python's pipes, two processes that both send large messages to each other without
/// receiving block each other (both socket buffers fill up): receive on a thread, or take turns.
pub struct Connection<S, R> {
    end: End,
    _t: PhantomData<fn(S) -> R>,
}

/// The receiving end of [`pipe_oneway`].
pub struct PipeReceiver<T> {
    end: End,
    _t: PhantomData<fn() -> T>,
}

/// The sending end of [`pipe_oneway`].
pub struct PipeSender<T> {
    end: End,
    _t: PhantomData<fn(T)>,
}

impl<S, R> fmt::Debug for Connection<S, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("fd", &self.end.fd.as_raw_fd())
            .finish()
    }
}

impl<T> fmt::Debug for PipeReceiver<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PipeReceiver")
            .field("fd", &self.end.fd.as_raw_fd())
            .finish()
    }
}

impl<T> fmt::Debug for PipeSender<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PipeSender")
            .field("fd", &self.end.fd.as_raw_fd())
            .finish()
    }
}

macro_rules! send_docs {
    () => {
        "Sends `value`: encodes it (descriptors of shared objects in it go along) and writes it \
         to the socket, blocking while the socket buffer is full.\n\n# Errors\n\n\
         [`Error::Disconnected`] if the other end is closed; [`Error::Codec`] / \
         [`Error::TooLarge`] if it cannot be encoded."
    };
}
macro_rules! recv_docs {
    () => {
        "Receives the next message, blocking.\n\n# Errors\n\n[`Error::Disconnected`] once the \
         other end is closed or its process has died; [`Error::Codec`] if the message does not \
         decode as the expected type."
    };
}
macro_rules! recv_timeout_docs {
    () => {
        "Receives the next message, waiting at most `timeout`. A message cut by the timeout is \
         kept, and the next call resumes it.\n\n# Errors\n\n[`Error::Timeout`]; otherwise as \
         for `recv`."
    };
}
macro_rules! poll_docs {
    () => {
        "Whether a message (or the end of the stream) can be read, waiting at most `timeout`.\
         \n\n# Errors\n\n[`Error::Io`] if polling fails."
    };
}

impl<S: Serialize, R: DeserializeOwned> Connection<S, R> {
    /// Sends `value` and gives it up. The same as [`send`](Self::send), except that a
    /// [`PodVec`](crate::PodVec) in it that was itself received (so lives in shared memory this
    /// process holds alone) is forwarded as is, without a copy: a worker that receives a big
    /// vector, works on it in place and sends it back copies nothing.
    ///
    /// # Errors
    ///
    /// As for [`send`](Self::send).
    ///
    /// # Examples
    ///
    /// ```
    /// use multiproc::PodVec;
    ///
    /// let (a, b) = multiproc::pipe::<PodVec<f64>, PodVec<f64>>()?;
    /// a.send_owned(vec![1.0; 1 << 20].into())?; // one copy, into shared memory
    /// let mut v = b.recv()?; // mapped, no copy
    /// v[0] = 2.0;
    /// b.send_owned(v)?; // forwarded, no copy
    /// assert_eq!(a.recv()?[0], 2.0);
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    pub fn send_owned(&self, value: S) -> Result<()> {
        self.end.send(&value, true)
    }

    #[doc = send_docs!()]
    ///
    /// # Examples
    ///
    /// ```
    /// let (a, b) = multiproc::pipe::<String, u32>()?;
    /// a.send(&"hello".to_string())?;
    /// assert_eq!(b.recv()?, "hello");
    /// b.send(&5)?;
    /// assert_eq!(a.recv()?, 5);
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    pub fn send(&self, value: &S) -> Result<()> {
        self.end.send(value, false)
    }

    #[doc = recv_docs!()]
    ///
    /// # Examples
    ///
    /// ```
    /// let (a, b) = multiproc::pipe::<String, u32>()?;
    /// b.send(&1)?;
    /// drop(b);
    /// assert_eq!(a.recv()?, 1); // sent before the end was closed
    /// assert!(a.recv().unwrap_err().is_disconnected());
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    pub fn recv(&self) -> Result<R> {
        self.end.recv(None)
    }

    #[doc = recv_timeout_docs!()]
    ///
    /// # Examples
    ///
    /// ```
    /// let (a, b) = multiproc::pipe::<String, u32>()?;
    /// let err = a.recv_timeout(std::time::Duration::from_millis(5)).unwrap_err();
    /// assert!(err.is_timeout());
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    pub fn recv_timeout(&self, timeout: Duration) -> Result<R> {
        self.end.recv(Some(Instant::now() + timeout))
    }

    #[doc = poll_docs!()]
    ///
    /// # Examples
    ///
    /// ```
    /// let (a, b) = multiproc::pipe::<String, u32>()?;
    /// use std::time::Duration;
    ///
    /// assert!(!a.poll(Duration::ZERO)?);
    /// b.send(&3)?;
    /// assert!(a.poll(Duration::from_secs(1))?);
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    pub fn poll(&self, timeout: Duration) -> Result<bool> {
        self.end.poll(timeout)
    }
}

impl<T: DeserializeOwned> PipeReceiver<T> {
    #[doc = recv_docs!()]
    ///
    /// # Examples
    ///
    /// ```
    /// let (rx, tx) = multiproc::pipe_oneway::<u8>()?;
    /// tx.send(&1)?;
    /// assert_eq!(rx.recv()?, 1);
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    pub fn recv(&self) -> Result<T> {
        self.end.recv(None)
    }

    #[doc = recv_timeout_docs!()]
    ///
    /// # Examples
    ///
    /// ```
    /// let (rx, _tx) = multiproc::pipe_oneway::<u8>()?;
    /// assert!(rx.recv_timeout(std::time::Duration::from_millis(5)).unwrap_err().is_timeout());
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    pub fn recv_timeout(&self, timeout: Duration) -> Result<T> {
        self.end.recv(Some(Instant::now() + timeout))
    }

    #[doc = poll_docs!()]
    ///
    /// # Examples
    ///
    /// ```
    /// let (rx, tx) = multiproc::pipe_oneway::<u8>()?;
    /// assert!(!rx.poll(std::time::Duration::ZERO)?);
    /// tx.send(&1)?;
    /// assert!(rx.poll(std::time::Duration::from_secs(1))?);
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    pub fn poll(&self, timeout: Duration) -> Result<bool> {
        self.end.poll(timeout)
    }
}

impl<T: Serialize> PipeSender<T> {
    /// Sends `value` and gives it up. The same as [`send`](Self::send), except that a
    /// [`PodVec`](crate::PodVec) in it that was itself received (so lives in shared memory this
    /// process holds alone) is forwarded as is, without a copy: a worker that receives a big
    /// vector, works on it in place and sends it back copies nothing.
    ///
    /// # Errors
    ///
    /// As for [`send`](Self::send).
    ///
    /// # Examples
    ///
    /// ```
    /// use multiproc::PodVec;
    ///
    /// let (rx, tx) = multiproc::pipe_oneway::<PodVec<f64>>()?;
    /// tx.send_owned(vec![1.0; 1 << 20].into())?;
    /// assert_eq!(rx.recv()?.len(), 1 << 20);
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    pub fn send_owned(&self, value: T) -> Result<()> {
        self.end.send(&value, true)
    }

    #[doc = send_docs!()]
    ///
    /// # Examples
    ///
    /// ```
    /// let (rx, tx) = multiproc::pipe_oneway::<Vec<u8>>()?;
    /// tx.send(&vec![1, 2])?;
    /// assert_eq!(rx.recv()?, [1, 2]);
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    pub fn send(&self, value: &T) -> Result<()> {
        self.end.send(value, false)
    }
}

//! Unix socket pairs that carry bytes and file descriptors (`SCM_RIGHTS`).

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::sys::socket::{
    AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType, recvmsg,
    send, sendmsg, socketpair,
};

use crate::error::{Error, Result};

/// The most descriptors one message may carry (the kernel's `SCM_MAX_FD`).
pub(crate) const MAX_FDS: usize = 253;

/// A connected pair of unix stream sockets, both closed on `exec`.
pub(crate) fn stream_pair() -> Result<(OwnedFd, OwnedFd)> {
    socketpair(
        AddressFamily::Unix,
        SockType::Stream,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(|e| Error::io("socketpair", e))
}

fn send_error(e: Errno) -> Error {
    match e {
        Errno::EPIPE | Errno::ECONNRESET => {
            Error::Disconnected("the other end of the pipe is closed".into())
        }
        e => Error::io("send", e),
    }
}

const SEND_FLAGS: MsgFlags = MsgFlags::MSG_NOSIGNAL.union(MsgFlags::MSG_DONTWAIT);

/// Sends all of `buf` on the stream socket `fd`; no `SIGPIPE` when the peer is gone (that is
/// [`Error::Disconnected`]). While the socket buffer is full it calls `wait`, which should wait
/// (for example with [`wait_writable`]) or fail.
pub(crate) fn send_all(
    fd: BorrowedFd<'_>,
    mut buf: &[u8],
    wait: &mut dyn FnMut() -> Result<()>,
) -> Result<()> {
    while !buf.is_empty() {
        match send(fd.as_raw_fd(), buf, SEND_FLAGS) {
            Ok(n) => buf = &buf[n..],
            Err(Errno::EINTR) => {}
            Err(Errno::EAGAIN) => wait()?,
            Err(e) => return Err(send_error(e)),
        }
    }
    Ok(())
}

/// Waits until `fd` can be written (or has an error) or `until` passes; `true` when writable.
pub(crate) fn wait_writable(fd: BorrowedFd<'_>, until: std::time::Instant) -> Result<bool> {
    use nix::poll::{PollFd, PollFlags, poll};
    loop {
        let mut fds = [PollFd::new(fd, PollFlags::POLLOUT)];
        match poll(&mut fds, super::poll_timeout(Some(until))) {
            Ok(0) => return Ok(false),
            Ok(_) => return Ok(true),
            Err(Errno::EINTR) => {}
            Err(e) => return Err(Error::io("poll", e)),
        }
    }
}

/// Sends all of `buf`, attaching the descriptors `fds` (at most [`MAX_FDS`]) to its first byte;
/// `wait` as for [`send_all`]. The receiver gets its own duplicates; ours stay open.
pub(crate) fn send_with_fds(
    fd: BorrowedFd<'_>,
    buf: &[u8],
    fds: &[RawFd],
    wait: &mut dyn FnMut() -> Result<()>,
) -> Result<()> {
    if fds.is_empty() {
        return send_all(fd, buf, wait);
    }
    if fds.len() > MAX_FDS {
        return Err(Error::invalid_arg(
            "descriptors",
            fds.len(),
            format!("one message can carry at most {MAX_FDS}"),
        ));
    }
    let cmsg = [ControlMessage::ScmRights(fds)];
    let n = loop {
        match sendmsg::<()>(
            fd.as_raw_fd(),
            &[IoSlice::new(buf)],
            &cmsg,
            SEND_FLAGS,
            None,
        ) {
            Ok(n) => break n,
            Err(Errno::EINTR) => {}
            Err(Errno::EAGAIN) => wait()?,
            Err(e) => return Err(send_error(e)),
        }
    };
    send_all(fd, &buf[n..], wait)
}

/// Room for the control message of one receive: the most descriptors one message can carry.
pub(crate) fn fd_space() -> Vec<u8> {
    nix::cmsg_space!([RawFd; MAX_FDS])
}

/// Receives once from `fd` into `buf` (waiting unless `nonblocking`), handing each descriptor
/// that came with the bytes to `push` (received close-on-exec). `space` is the control buffer
/// (from [`fd_space`]). `Ok(None)`: nothing there yet; `Ok(Some(0))`: end of stream (or reset).
/// Descriptors the kernel had to drop for lack of room (`MSG_CTRUNC`) are an error. Retries on
/// `EINTR`.
#[allow(
    clippy::ptr_arg,
    reason = "nix's recvmsg takes the control buffer as a Vec"
)]
pub(crate) fn recv_once(
    fd: BorrowedFd<'_>,
    buf: &mut [u8],
    nonblocking: bool,
    space: &mut Vec<u8>,
    mut push: impl FnMut(OwnedFd),
) -> Result<Option<usize>> {
    let mut flags = MsgFlags::MSG_CMSG_CLOEXEC;
    if nonblocking {
        flags |= MsgFlags::MSG_DONTWAIT;
    }
    loop {
        let mut iov = [IoSliceMut::new(buf)];
        let msg = match recvmsg::<()>(fd.as_raw_fd(), &mut iov, Some(space), flags) {
            Ok(msg) => msg,
            Err(Errno::EINTR) => continue,
            Err(Errno::EAGAIN) => return Ok(None),
            Err(Errno::ECONNRESET) => return Ok(Some(0)),
            Err(e) => return Err(Error::io("recvmsg", e)),
        };
        let n = msg.bytes;
        let truncated = msg.flags.contains(MsgFlags::MSG_CTRUNC);
        for c in msg.cmsgs().map_err(|e| Error::io("recvmsg", e))? {
            if let ControlMessageOwned::ScmRights(raw) = c {
                for r in raw {
                    // SAFETY: the kernel has just installed `r` in our table for this message;
                    // nothing else owns it.
                    push(unsafe { OwnedFd::from_raw_fd(r) });
                }
            }
        }
        if truncated {
            return Err(Error::io(
                "recvmsg: descriptors were dropped (MSG_CTRUNC)",
                std::io::ErrorKind::InvalidData,
            ));
        }
        return Ok(Some(n));
    }
}

/// Like [`send_with_fds`] without waiting: sends what the socket takes of `buf` now, `fds` (at
/// most [`MAX_FDS`]) attached to its first byte; `Ok(0)` means the socket buffer is full and
/// nothing, descriptors included, went (unless `nonblocking` is false: then it waits). The
/// receiver gets its own duplicates; ours stay open.
pub(crate) fn send_some_with_fds(
    fd: BorrowedFd<'_>,
    buf: &[u8],
    fds: &[RawFd],
    nonblocking: bool,
) -> Result<usize> {
    if fds.len() > MAX_FDS {
        return Err(Error::invalid_arg(
            "descriptors",
            fds.len(),
            format!("one message can carry at most {MAX_FDS}"),
        ));
    }
    let mut flags = MsgFlags::MSG_NOSIGNAL;
    if nonblocking {
        flags |= MsgFlags::MSG_DONTWAIT;
    }
    let cmsg = [ControlMessage::ScmRights(fds)];
    loop {
        match sendmsg::<()>(fd.as_raw_fd(), &[IoSlice::new(buf)], &cmsg, flags, None) {
            Ok(n) => return Ok(n),
            Err(Errno::EINTR) => {}
            Err(Errno::EAGAIN) => return Ok(0),
            Err(e) => return Err(send_error(e)),
        }
    }
}

/// A connected pair of unix `SOCK_SEQPACKET` sockets (message boundaries kept, each message
/// sent whole or not at all), non-blocking and closed on `exec`: a [`Queue`](crate::Queue)'s
/// side channel for descriptors.
pub(crate) fn seqpacket_pair() -> Result<(OwnedFd, OwnedFd)> {
    socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
    )
    .map_err(|e| Error::io("socketpair", e))
}

/// Tries once to send `buf` as one message on the datagram-like socket `fd`, with the
/// descriptors `fds` (at most [`MAX_FDS`]) attached. `Ok(false)` when it would block: the
/// socket buffer is full, or the kernel's limit of descriptors in flight for this user is
/// reached (both free up as the receiver takes messages). Never raises `SIGPIPE`.
pub(crate) fn try_send_message(fd: BorrowedFd<'_>, buf: &[u8], fds: &[RawFd]) -> Result<bool> {
    if fds.len() > MAX_FDS {
        return Err(Error::invalid_arg(
            "descriptors",
            fds.len(),
            format!("one message can carry at most {MAX_FDS}"),
        ));
    }
    let rights = [ControlMessage::ScmRights(fds)];
    let cmsg: &[ControlMessage<'_>] = if fds.is_empty() { &[] } else { &rights };
    loop {
        match sendmsg::<()>(fd.as_raw_fd(), &[IoSlice::new(buf)], cmsg, SEND_FLAGS, None) {
            Ok(n) if n == buf.len() => return Ok(true),
            Ok(n) => {
                return Err(Error::io(
                    "sendmsg: message cut short",
                    std::io::Error::other(format!("{n} of {} bytes sent", buf.len())),
                ));
            }
            Err(Errno::EINTR) => {}
            Err(Errno::EAGAIN | Errno::ENOBUFS | Errno::ETOOMANYREFS) => return Ok(false),
            Err(e) => return Err(send_error(e)),
        }
    }
}

/// Copies the first bytes of the next message of the datagram-like socket `fd` into `buf`
/// without taking the message (its descriptors stay queued with it, none is installed here).
/// `Ok(None)` when no message is queued.
pub(crate) fn peek_message(fd: BorrowedFd<'_>, buf: &mut [u8]) -> Result<Option<usize>> {
    loop {
        match nix::sys::socket::recv(
            fd.as_raw_fd(),
            buf,
            MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT,
        ) {
            Ok(n) => return Ok(Some(n)),
            Err(Errno::EINTR) => {}
            Err(Errno::EAGAIN) => return Ok(None),
            Err(e) => return Err(Error::io("recv (peek)", e)),
        }
    }
}

/// Takes the next message of the datagram-like socket `fd` without waiting: its bytes into
/// `buf` (the rest of a longer message is dropped), its descriptors appended to `fds`
/// (close-on-exec). `Ok(None)` when no message is queued. Descriptors the kernel had to drop
/// for lack of room (`MSG_CTRUNC`) make it an error.
pub(crate) fn try_recv_message(
    fd: BorrowedFd<'_>,
    buf: &mut [u8],
    fds: &mut Vec<OwnedFd>,
) -> Result<Option<usize>> {
    recv_once(fd, buf, true, &mut fd_space(), |f| fds.push(f))
}

//! The wire format: how values travel between processes.
//!
//! A value is encoded with [postcard](https://docs.rs/postcard) (compact, not self-describing).
//! Over a byte stream (a pipe, a socket), a message is a frame: an 8-byte little-endian length,
//! then that many bytes of body. Every transport in the crate goes through this module, so
//! changing the codec or the framing is a change here only: the length prefix is
//! [`frame_len`]; frames are read from a plain pipe by [`FrameReader`] (with a deadline) and
//! from a socket, with the descriptors that came with them, by [`FrameBuf`] (the pool's
//! transport, the fork server and [`pipe`](crate::pipe()) all use it).

use std::collections::VecDeque;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::time::Instant;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{CodecError, Error, Result};
use crate::sys;

/// The largest message, in encoded bytes, that any channel of the crate carries (4 GiB).
pub const MAX_MESSAGE_BYTES: usize = 1 << 32;

/// Encodes `value`, appending to `buf`, and checks the size limit of the appended part.
pub(crate) fn encode_append<T: Serialize + ?Sized>(value: &T, buf: &mut Vec<u8>) -> Result<()> {
    let start = buf.len();
    // Size it first: growing a large buffer by doubling would copy (and fault in) it repeatedly.
    // Not while descriptors are being collected: the shared-memory types attach them as a side
    // effect of serializing, which must happen once.
    if !crate::fdpass::can_attach() {
        reserve_for(value, buf)?;
    }
    let taken = std::mem::take(buf);
    *buf = postcard::to_extend(value, taken).map_err(crate::fdpass::encode_error)?;
    if buf.len() - start > MAX_MESSAGE_BYTES {
        let size = buf.len() - start;
        buf.truncate(start);
        return Err(Error::TooLarge {
            size,
            limit: MAX_MESSAGE_BYTES,
        });
    }
    Ok(())
}

/// Reserves room in `buf` for the encoding of `value` (one sizing pass over it). Call it only
/// while no descriptor table is installed (see [`crate::fdpass`]): sizing serializes the value.
pub(crate) fn reserve_for<T: Serialize + ?Sized>(value: &T, buf: &mut Vec<u8>) -> Result<()> {
    buf.reserve_exact(
        crate::fdpass::sizing(|| postcard::experimental::serialized_size(value))
            .map_err(crate::fdpass::encode_error)?,
    );
    crate::sys::mem::advise_huge_pages(buf);
    Ok(())
}

/// Encodes `value` into a new buffer.
pub(crate) fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    encode_append(value, &mut buf)?;
    Ok(buf)
}

/// Decodes a value from `bytes`, which must hold exactly one encoded value.
pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    let (value, rest) = postcard::take_from_bytes(bytes).map_err(CodecError)?;
    if !rest.is_empty() {
        return Err(Error::Codec(CodecError(
            postcard::Error::DeserializeBadEncoding,
        )));
    }
    Ok(value)
}

/// Bytes of a frame's length prefix.
pub(crate) const LEN_BYTES: usize = 8;
/// Room for a frame's own header (kind, sequence numbers, descriptor count...) on top of
/// [`MAX_MESSAGE_BYTES`] of encoded value.
const HEAD_ROOM: usize = 64;

/// The length prefix of a frame whose body is `body_len` bytes.
pub(crate) fn frame_len(body_len: usize) -> [u8; LEN_BYTES] {
    (body_len as u64).to_le_bytes()
}

/// Writes one frame (length, then body) to a stream descriptor.
pub(crate) fn write_frame(fd: BorrowedFd<'_>, body: &[u8]) -> Result<()> {
    sys::write_all(fd, &frame_len(body.len()))?;
    sys::write_all(fd, body)
}

/// Frames larger than this are read straight into their own buffer.
const BIG: usize = 1 << 16;
const READ_CHUNK: usize = 1 << 16;
/// The first receive of a [`FrameBuf`] asks for this much; each receive that fills its room
/// doubles it, up to [`READ_CHUNK`]. A pool of 128 workers has 128 readers in the parent and
/// one in each worker: starting at [`READ_CHUNK`] zeroed 64 KiB in each (8 MiB in the parent,
/// and every later fork copies its page tables).
const FIRST_CHUNK: usize = 1 << 12;

/// A received frame body: `buf[start..]`.
#[derive(Debug)]
pub(crate) struct Body {
    buf: Vec<u8>,
    start: usize,
}

impl Body {
    /// A body made of `buf` (e.g. outcomes recovered from a dead pool worker's journal).
    pub(crate) fn from_vec(buf: Vec<u8>) -> Body {
        Body { buf, start: 0 }
    }

    /// The body's bytes.
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.buf[self.start..]
    }

    /// The whole buffer the body lives in (to reuse it).
    #[cfg_attr(not(feature = "mpi"), allow(dead_code))]
    pub(crate) fn into_vec(self) -> Vec<u8> {
        self.buf
    }

    /// The body without its first `n` bytes (a header the caller has parsed), without a copy.
    pub(crate) fn skip(self, n: usize) -> Body {
        Body {
            start: (self.start + n).min(self.buf.len()),
            buf: self.buf,
        }
    }
}

/// Bodies larger than this are not kept for reuse by [`give_back`].
const SPARE_MAX: usize = 16 << 20;

thread_local! {
    /// The buffer of a big frame body this thread is done with (see [`give_back`]).
    static SPARE: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Hands back the buffer of a big frame `body` once its content is used, so that the next big
/// frame read on this thread lands in memory that is mapped already (a pool's parent decodes
/// its replies' outcomes and gives them back: no allocation, zeroing or page fault per reply).
pub(crate) fn give_back(body: Body) {
    let len = body.buf.len();
    if len > BIG && len <= SPARE_MAX {
        SPARE.with(|s| {
            let mut s = s.borrow_mut();
            if len > s.len() {
                *s = body.buf;
            }
        });
    }
}

/// The spare buffer, cut to `len` bytes (its content is stale: the caller overwrites it), if
/// it is at least that long.
fn take_spare(len: usize) -> Option<Vec<u8>> {
    SPARE.with(|s| {
        let mut s = s.borrow_mut();
        (s.len() >= len).then(|| {
            let mut buf = std::mem::take(&mut *s);
            buf.truncate(len);
            buf
        })
    })
}

/// Frames received from a stream socket, with the descriptors that came with them: the one
/// frame reader of the crate's sockets (the pool's transport, the fork server, [`pipe`]).
///
/// `buf[pos..end]` is received and not yet parsed; `buf[end..]` is initialized room for the
/// next receive (zeroed once, when it grows). `fds` holds the received descriptors not yet
/// claimed by a frame, in arrival order: a frame that carries descriptors says how many in its
/// body, and its reader claims them with [`take_fds`](FrameBuf::take_fds).
///
/// [`pipe`]: crate::pipe()
#[derive(Debug)]
pub(crate) struct FrameBuf {
    buf: Vec<u8>,
    pos: usize,
    end: usize,
    fds: VecDeque<OwnedFd>,
    space: Vec<u8>,
    /// How much one receive asks for (see [`FIRST_CHUNK`]).
    chunk: usize,
}

impl Default for FrameBuf {
    fn default() -> Self {
        FrameBuf {
            buf: Vec::new(),
            pos: 0,
            end: 0,
            fds: VecDeque::new(),
            space: sys::socket::fd_space(),
            chunk: FIRST_CHUNK,
        }
    }
}

impl FrameBuf {
    /// The whole length (prefix included) of the frame at `pos`, once its prefix is here.
    fn header(&self) -> Option<usize> {
        (self.end - self.pos >= LEN_BYTES).then(|| {
            let prefix = self.buf[self.pos..self.pos + LEN_BYTES].try_into().unwrap();
            LEN_BYTES
                .saturating_add(usize::try_from(u64::from_le_bytes(prefix)).unwrap_or(usize::MAX))
        })
    }

    /// Whether part of a frame has been received (a stream that ends now ends mid-frame).
    pub(crate) fn has_partial(&self) -> bool {
        self.end > self.pos
    }

    fn compact(&mut self) {
        self.buf.copy_within(self.pos..self.end, 0);
        self.end -= self.pos;
        self.pos = 0;
    }

    /// How many bytes to ask for next; makes room for them.
    fn prepare(&mut self) -> usize {
        if self.pos == self.end {
            self.pos = 0;
            self.end = 0;
        }
        let want = match self.header() {
            Some(total) if total > BIG => {
                // Read exactly the rest of this big frame, into a buffer that holds only it.
                if self.pos > 0 {
                    self.compact();
                }
                if self.buf.len() < total {
                    // A big frame body handed back by this thread (`give_back`), whose pages are
                    // mapped already; else a zeroed allocation.
                    let mut fresh = take_spare(total).unwrap_or_else(|| vec![0u8; total]);
                    fresh[..self.end].copy_from_slice(&self.buf[..self.end]);
                    self.buf = fresh;
                }
                total - self.end
            }
            _ => {
                if self.pos > 4 * READ_CHUNK {
                    self.compact();
                }
                self.chunk
            }
        };
        if self.buf.len() < self.end + want {
            self.buf.resize(self.end + want, 0);
        }
        want
    }

    /// Receives once; `Ok(None)` when nothing was there, `Ok(Some(0))` at end of file.
    pub(crate) fn fill(&mut self, fd: BorrowedFd<'_>, nonblocking: bool) -> Result<Option<usize>> {
        let want = self.prepare();
        let fds = &mut self.fds;
        let r = sys::socket::recv_once(
            fd,
            &mut self.buf[self.end..self.end + want],
            nonblocking,
            &mut self.space,
            |f| fds.push_back(f),
        )?;
        if let Some(n) = r {
            self.end += n;
            if n == want && self.chunk < READ_CHUNK {
                self.chunk *= 2;
            }
        }
        Ok(r)
    }

    /// The next complete frame, if one is buffered.
    pub(crate) fn next(&mut self) -> Result<Option<Body>> {
        let Some(total) = self.header() else {
            return Ok(None);
        };
        if total > MAX_MESSAGE_BYTES + LEN_BYTES + HEAD_ROOM {
            return Err(Error::TooLarge {
                size: total,
                limit: MAX_MESSAGE_BYTES,
            });
        }
        if self.end - self.pos < total {
            return Ok(None);
        }
        if self.pos == 0 && self.end == total && total > BIG {
            let mut buf = std::mem::take(&mut self.buf);
            buf.truncate(total);
            self.end = 0;
            return Ok(Some(Body {
                buf,
                start: LEN_BYTES,
            }));
        }
        let body = self.buf[self.pos + LEN_BYTES..self.pos + total].to_vec();
        self.pos += total;
        Ok(Some(Body {
            buf: body,
            start: 0,
        }))
    }

    /// Takes back a big frame's buffer once its content is used, so that the next big frame
    /// lands in memory that is already mapped (no page faults).
    pub(crate) fn recycle(&mut self, body: Body) {
        if body.buf.len() > BIG && self.pos == self.end && body.buf.len() > self.buf.len() {
            self.buf = body.buf;
            self.pos = 0;
            self.end = 0;
        }
    }

    /// Whether a complete frame is buffered.
    pub(crate) fn has_frame(&self) -> bool {
        self.header()
            .is_some_and(|total| self.end - self.pos >= total)
    }

    /// The received descriptors that no frame has claimed yet.
    pub(crate) fn queued_fds(&self) -> impl Iterator<Item = std::os::fd::RawFd> + '_ {
        use std::os::fd::AsRawFd;
        self.fds.iter().map(AsRawFd::as_raw_fd)
    }

    /// The `n` descriptors of the frame just parsed (they came with its first byte).
    pub(crate) fn take_fds(&mut self, n: u32) -> Result<Vec<OwnedFd>> {
        let n = n as usize;
        if n > self.fds.len() {
            return Err(Error::Disconnected(format!(
                "a frame announced {n} descriptors but {} arrived",
                self.fds.len()
            )));
        }
        Ok(self.fds.drain(..n).collect())
    }
}

/// Reads frames from a stream, keeping a partly read frame across timeouts, so that a reader with
/// a deadline can try again later without losing bytes.
#[derive(Debug, Default)]
pub(crate) struct FrameReader {
    header: [u8; 8],
    header_len: usize,
    body: Vec<u8>,
    body_len: usize,
}

impl FrameReader {
    /// Reads the next frame. `Ok(None)` at a clean end of file (no byte of a new frame read); a
    /// frame cut short is [`Error::Disconnected`]. With a `deadline`, waits no longer than that
    /// and then fails with [`Error::Timeout`]; call again to resume where it stopped.
    pub(crate) fn read(
        &mut self,
        fd: BorrowedFd<'_>,
        deadline: Option<Instant>,
    ) -> Result<Option<Vec<u8>>> {
        let started = Instant::now();
        while self.header_len < 8 {
            match self.read_some(fd, deadline, started, true)? {
                0 if self.header_len == 0 => return Ok(None),
                0 => return Err(cut_short()),
                _ => {}
            }
        }
        if self.body.is_empty() && self.body_len == 0 {
            let len = u64::from_le_bytes(self.header);
            if len > MAX_MESSAGE_BYTES as u64 {
                *self = FrameReader::default();
                return Err(Error::TooLarge {
                    size: usize::try_from(len).unwrap_or(usize::MAX),
                    limit: MAX_MESSAGE_BYTES,
                });
            }
            self.body = vec![0u8; len as usize];
        }
        while self.body_len < self.body.len() {
            if self.read_some(fd, deadline, started, false)? == 0 {
                *self = FrameReader::default();
                return Err(cut_short());
            }
        }
        let body = std::mem::take(&mut self.body);
        *self = FrameReader::default();
        Ok(Some(body))
    }

    fn read_some(
        &mut self,
        fd: BorrowedFd<'_>,
        deadline: Option<Instant>,
        started: Instant,
        header: bool,
    ) -> Result<usize> {
        if deadline.is_some() && !sys::wait_readable(fd, deadline)? {
            return Err(Error::Timeout {
                operation: "reading a message",
                after: started.elapsed(),
                task: None,
            });
        }
        let n = if header {
            let n = sys::read(fd, &mut self.header[self.header_len..])?;
            self.header_len += n;
            n
        } else {
            let n = sys::read(fd, &mut self.body[self.body_len..])?;
            self.body_len += n;
            n
        };
        Ok(n)
    }
}

fn cut_short() -> Error {
    Error::Disconnected("the sender ended in the middle of a message".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn round_trip_and_trailing_bytes() {
        let v = (1u32, "two".to_string(), vec![3.0f64]);
        let bytes = encode(&v).unwrap();
        assert_eq!(decode::<(u32, String, Vec<f64>)>(&bytes).unwrap(), v);
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(matches!(
            decode::<(u32, String, Vec<f64>)>(&longer),
            Err(Error::Codec(_))
        ));
    }

    #[test]
    fn frames_over_a_pipe() {
        let (r, w) = sys::pipe().unwrap();
        write_frame(w.as_fd(), b"hello").unwrap();
        write_frame(w.as_fd(), b"").unwrap();
        drop(w);
        assert_eq!(
            FrameReader::default()
                .read(r.as_fd(), None)
                .unwrap()
                .unwrap(),
            b"hello"
        );
        assert_eq!(
            FrameReader::default()
                .read(r.as_fd(), None)
                .unwrap()
                .unwrap(),
            b""
        );
        assert!(
            FrameReader::default()
                .read(r.as_fd(), None)
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn read_frame_times_out() {
        let (r, _w) = sys::pipe().unwrap();
        let deadline = Instant::now() + std::time::Duration::from_millis(20);
        assert!(
            FrameReader::default()
                .read(r.as_fd(), Some(deadline))
                .unwrap_err()
                .is_timeout()
        );
    }
}

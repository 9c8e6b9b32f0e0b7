//! The wire format: how values travel between processes.
//!
//! A value is encoded with [postcard](https://docs.rs/postcard) (compact, not self-describing).
//! Over a byte stream (a pipe), a message is a frame: an 8-byte little-endian length, then that
//! many bytes of body. Every transport in the crate goes through this module, so changing the
//! codec or the framing is a change here only.

use std::os::fd::BorrowedFd;
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
    *buf = postcard::to_extend(value, taken).map_err(CodecError)?;
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
    buf.reserve_exact(postcard::experimental::serialized_size(value).map_err(CodecError)?);
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

/// Writes one frame (length, then body) to a stream descriptor.
pub(crate) fn write_frame(fd: BorrowedFd<'_>, body: &[u8]) -> Result<()> {
    let len = (body.len() as u64).to_le_bytes();
    sys::write_all(fd, &len)?;
    sys::write_all(fd, body)
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

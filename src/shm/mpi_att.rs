//! The receiving side of MPI attachments (see `crate::fdpass::attach_mpi`): a worker rank
//! receives the bytes of a big [`PodVec`](crate::PodVec) sent as an MPI message of its own
//! straight into memory of its own ([`buffer`]: a kept memory file of this process, warm when
//! one is free, so no page is faulted in again), keeps it by id ([`stash`]) until the frame
//! that refers to it is decoded, and the `PodVec` takes it as its memory ([`take`]): no copy
//! after MPI's.

use std::collections::VecDeque;
use std::sync::Mutex;

use super::cache;
use super::podvec::PodVec;
use super::segment::{Segment, kind_of};
use crate::error::Result;

/// The most attachments kept waiting for their frame (older ones are released: a context
/// that was never decoded).
const MAX_WAITING: usize = 64;

/// Memory received for an attachment and not yet taken by a `PodVec`.
pub(crate) struct Received {
    id: u64,
    seg: Segment,
    len: usize,
}

static WAITING: Mutex<VecDeque<Received>> = Mutex::new(VecDeque::new());

/// Memory for an attachment of `len` bytes, to receive into with [`Received::bytes_mut`].
pub(crate) fn buffer(id: u64, len: usize) -> Result<Received> {
    let seg = cache::acquire(kind_of::<PodVec<u8>>(), 1, len)?;
    Ok(Received { id, seg, len })
}

impl Received {
    /// The memory to receive the attachment's bytes into.
    pub(crate) fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: the segment has room for at least `len` bytes (it was acquired for `len`
        // one-byte elements) and this process holds it alone (its owner word is our token);
        // `&mut self` makes this the only borrow.
        unsafe { std::slice::from_raw_parts_mut(self.seg.data(), self.len) }
    }
}

/// Keeps `received` until [`take`] asks for its id.
pub(crate) fn stash(received: Received) {
    let dropped = {
        let mut w = WAITING.lock().unwrap_or_else(|e| e.into_inner());
        w.push_back(received);
        (w.len() > MAX_WAITING).then(|| w.pop_front())
    };
    if let Some(Some(old)) = dropped {
        cache::release(old.seg, false);
    }
}

/// The memory received for attachment `id`, checked to hold `len` bytes: the segment, retagged
/// for `len / elem_size` elements of `kind`, and that count.
pub(super) fn take(
    id: u64,
    len: u64,
    kind: u64,
    elem_size: usize,
) -> std::result::Result<(Segment, usize), String> {
    let found = {
        let mut w = WAITING.lock().unwrap_or_else(|e| e.into_inner());
        let i = w.iter().position(|r| r.id == id);
        i.and_then(|i| w.remove(i))
    };
    let Some(r) = found else {
        return Err(format!(
            "the PodVec refers to MPI attachment {id}, which did not arrive with its frame"
        ));
    };
    if r.len as u64 != len || elem_size == 0 || r.len % elem_size != 0 {
        let got = r.len;
        cache::release(r.seg, false);
        return Err(format!(
            "MPI attachment {id} holds {got} bytes, but the PodVec refers to {len} bytes of \
             {elem_size}-byte elements"
        ));
    }
    let n = r.len / elem_size;
    if !r.seg.retag(kind, elem_size, n) {
        cache::release(r.seg, false);
        return Err(format!("MPI attachment {id} does not fit {n} elements"));
    }
    Ok((r.seg, n))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn received(id: u64, bytes: &[u8]) -> Received {
        let mut r = buffer(id, bytes.len()).unwrap();
        r.bytes_mut().copy_from_slice(bytes);
        r
    }

    #[test]
    fn mismatched_or_missing_attachments_are_errors() {
        let (kind, size) = (kind_of::<PodVec<u32>>(), 4);
        // Never received.
        let e = take(u64::MAX, 8, kind, size).unwrap_err();
        assert!(e.contains("did not arrive"), "{e}");
        // Announced with another length.
        stash(received(u64::MAX - 1, &[1; 8]));
        let e = take(u64::MAX - 1, 12, kind, size).unwrap_err();
        assert!(e.contains("holds 8 bytes") && e.contains("12 bytes"), "{e}");
        // Not a whole number of elements.
        stash(received(u64::MAX - 2, &[1; 10]));
        let e = take(u64::MAX - 2, 10, kind, size).unwrap_err();
        assert!(e.contains("4-byte elements"), "{e}");
        // Taken once: a second take finds nothing.
        assert!(take(u64::MAX - 1, 8, kind, size).is_err());
    }

    #[test]
    fn an_attachment_becomes_the_vector_memory() {
        let bytes: Vec<u8> = (0..64u8).collect();
        stash(received(u64::MAX - 3, &bytes));
        let (seg, n) = take(u64::MAX - 3, 64, kind_of::<PodVec<u32>>(), 4).unwrap();
        assert_eq!(n, 16);
        // SAFETY: the segment holds 64 bytes written above and this test holds it alone.
        let got = unsafe { std::slice::from_raw_parts(seg.data(), 64) };
        assert_eq!(got, &bytes[..]);
        cache::release(seg, false);
    }
}

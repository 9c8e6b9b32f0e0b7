//! The side channel: the descriptors of an item travel as one message, tagged with the item's
//! sequence number, on the queue's unix socket pair (see the parent module).

use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::Ordering::SeqCst;

use crate::error::{Error, Result};
use crate::liveness::Waiting;
use crate::sys::socket;

use super::{SIDE_MSG, Shared};

impl Shared {
    /// Sends the side-channel message of the item tagged `tag`, carrying `fds`, waiting while
    /// the socket has no room (as a put waits for ring space: disconnection is detected).
    pub(super) fn send_fds(&self, tag: u64, fds: &[OwnedFd]) -> Result<()> {
        let mut msg = [0u8; SIDE_MSG];
        msg[..8].copy_from_slice(&tag.to_le_bytes());
        msg[8..].copy_from_slice(&(fds.len() as u32).to_le_bytes());
        let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
        let mut sent: Option<Result<()>> = None;
        // The waiting loop may call `ready` again after it said yes: send once only.
        self.wait_until(Waiting::Put, || {
            if sent.is_none() {
                match socket::try_send_message(self.side_tx.as_fd(), &msg, &raw) {
                    Ok(false) => return false,
                    Ok(true) => sent = Some(Ok(())),
                    Err(e) => sent = Some(Err(e)),
                }
            }
            true
        })?;
        sent.unwrap_or(Ok(()))
    }

    /// Takes the side-channel message of the item tagged `tag`, which should carry `count`
    /// descriptors. Messages with a smaller tag come first if a producer died between sending
    /// its message and writing its record: they are dropped (closing their descriptors).
    /// `Ok(None)` when a consumer took the message and died before moving past the record (the
    /// item went with it).
    pub(super) fn recv_fds(&self, tag: u64, count: usize) -> Result<Option<Vec<OwnedFd>>> {
        let h = self.header();
        let rx = self.side_rx.as_fd();
        loop {
            let mut msg = [0u8; SIDE_MSG];
            let queued = match socket::peek_message(rx, &mut msg)? {
                Some(SIDE_MSG) => Some(u64::from_le_bytes(msg[..8].try_into().expect("8 bytes"))),
                Some(n) => {
                    // Not one of ours: drop it, and the item with it.
                    let _ = socket::try_recv_message(rx, &mut msg, &mut Vec::new());
                    return Err(Error::InvalidState(format!(
                        "queue side channel corrupted: a message of {n} bytes"
                    )));
                }
                None => None,
            };
            match queued {
                Some(t) if t <= tag => {
                    let mut fds = Vec::new();
                    socket::try_recv_message(rx, &mut msg, &mut fds)?;
                    if t < tag {
                        continue; // its producer died before writing the record
                    }
                    let sent = u32::from_le_bytes(msg[8..].try_into().expect("4 bytes")) as usize;
                    if fds.len() != count || sent != count {
                        return Err(Error::InvalidState(format!(
                            "queue item {tag}: {} descriptors came on the side channel, the \
                             record says {count}",
                            fds.len()
                        )));
                    }
                    h.fd_taken.0.store(tag, SeqCst);
                    return Ok(Some(fds));
                }
                _ if h.fd_taken.0.load(SeqCst) == tag => return Ok(None),
                _ => {
                    return Err(Error::InvalidState(format!(
                        "queue item {tag}: its {count} descriptors are missing from the side \
                         channel (next message: {queued:?})"
                    )));
                }
            }
        }
    }
}

//! Descriptors that travel inside messages: the crate-internal API behind sending a
//! [`SharedArray`](crate::SharedArray), a [`PodVec`](crate::PodVec) or a sync primitive through a
//! [`Pipe`](crate::pipe()).
//!
//! A value whose `Serialize` needs to pass a descriptor calls [`attach`], which stores the
//! descriptor in a per-thread table and returns its index; the index is what gets serialized.
//! The transport sends the table along with the bytes (`SCM_RIGHTS`), and on the other side
//! `Deserialize` calls [`take`] with the index. The table exists only inside [`encode_with_fds`]
//! and [`decode_with_fds`]; elsewhere (a `Queue`, a plain pipe) [`attach`] fails, and types that
//! can fall back to plain bytes check [`can_attach`] first.
//!
//! Any transport over a unix socket can use this pair, for example a pool's task channel:
//! `let (bytes, fds) = encode_with_fds(&task)?`, then `sys::socket::send_with_fds(sock, &frame,
//! &raw_fds, &mut wait)` (the pipe module shows the framing),
//! then `recv_with_fds` and `decode_with_fds(&bytes, fds)` on the other end.

use std::cell::RefCell;
use std::os::fd::OwnedFd;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::Result;
use crate::wire;

thread_local! {
    static OUTGOING: RefCell<Option<Vec<OwnedFd>>> = const { RefCell::new(None) };
    static INCOMING: RefCell<Option<Vec<Option<OwnedFd>>>> = const { RefCell::new(None) };
}

/// Restores the previous table when dropped, so nested or panicking encodes leave no state.
struct Restore<'a, T: 'static> {
    key: &'static std::thread::LocalKey<RefCell<Option<T>>>,
    prev: Option<Option<T>>,
    _p: std::marker::PhantomData<&'a ()>,
}

impl<T> Drop for Restore<'_, T> {
    fn drop(&mut self) {
        let prev = self.prev.take().flatten();
        self.key.with(|c| *c.borrow_mut() = prev);
    }
}

/// Encodes `value`; the descriptors its parts attached come back in order of their indices.
pub(crate) fn encode_with_fds<T: Serialize + ?Sized>(value: &T) -> Result<(Vec<u8>, Vec<OwnedFd>)> {
    let prev = OUTGOING.with(|c| c.borrow_mut().replace(Vec::new()));
    let restore = Restore {
        key: &OUTGOING,
        prev: Some(prev),
        _p: std::marker::PhantomData,
    };
    let bytes = wire::encode(value);
    let fds = OUTGOING.with(|c| c.borrow_mut().take()).unwrap_or_default();
    drop(restore);
    Ok((bytes?, fds))
}

/// Decodes a value from `bytes`, letting its parts [`take`] the descriptors `fds` that came with
/// it. Descriptors no part took are closed.
pub(crate) fn decode_with_fds<T: DeserializeOwned>(bytes: &[u8], fds: Vec<OwnedFd>) -> Result<T> {
    let table = fds.into_iter().map(Some).collect();
    let prev = INCOMING.with(|c| c.borrow_mut().replace(table));
    let _restore = Restore {
        key: &INCOMING,
        prev: Some(prev),
        _p: std::marker::PhantomData,
    };
    wire::decode(bytes)
}

/// Whether a descriptor can be attached to the message being encoded on this thread.
pub(crate) fn can_attach() -> bool {
    OUTGOING.with(|c| c.borrow().is_some())
}

/// Attaches `fd` to the message being encoded on this thread; returns its index.
pub(crate) fn attach(fd: OwnedFd) -> std::result::Result<u32, &'static str> {
    OUTGOING.with(|c| match c.borrow_mut().as_mut() {
        Some(v) => {
            v.push(fd);
            Ok((v.len() - 1) as u32)
        }
        None => Err(
            "this value carries a file descriptor: it can be sent through a \
                     multiproc::Pipe (or inherited by fork), not through this channel",
        ),
    })
}

/// Takes the descriptor at `index` of the message being decoded on this thread.
pub(crate) fn take(index: u32) -> std::result::Result<OwnedFd, &'static str> {
    INCOMING.with(|c| {
        c.borrow_mut()
            .as_mut()
            .ok_or("this value carries a file descriptor, but the message came without any")?
            .get_mut(index as usize)
            .and_then(Option::take)
            .ok_or("the message lacks the file descriptor this value refers to")
    })
}

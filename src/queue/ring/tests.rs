//! Unit tests of the ring: the side channel's crash cases.

use std::os::fd::AsFd;
use std::sync::atomic::Ordering::SeqCst;

use super::*;
use crate::sys::mem::{fd_inode, memfd};

fn inode(fd: &OwnedFd) -> u64 {
    fd_inode(fd.as_fd()).unwrap()
}

/// Puts `body` with one fresh memory file; returns that file's inode.
fn put_with_memfd(q: &Shared, body: &[u8]) -> u64 {
    let fd = memfd(4096).unwrap();
    let ino = inode(&fd);
    let mut buf = vec![0u8; TAG_BYTES];
    buf.extend_from_slice(body);
    q.put(PutItem::WithFds(&mut buf, &[fd]), None).unwrap();
    ino
}

fn take_item(q: &Shared) -> (Vec<u8>, Vec<OwnedFd>) {
    match q
        .get(Some(Instant::now() + Duration::from_secs(10)))
        .unwrap()
    {
        Taken::Item(bytes, fds) => (bytes, fds),
        Taken::Pill => panic!("a pill"),
    }
}

fn side_channel_empty(q: &Shared) -> bool {
    socket::peek_message(q.side_rx.as_fd(), &mut [0u8; SIDE_MSG])
        .unwrap()
        .is_none()
}

#[test]
fn items_with_and_without_descriptors_keep_their_order() {
    let q = Shared::new(Storage::Bounded(1 << 16), 0).unwrap();
    q.put(PutItem::Bytes(b"plain"), None).unwrap();
    let ino = put_with_memfd(&q, b"with");
    // Streamed through the ring in several records, with descriptors.
    let big: Vec<u8> = (0..40_000u32).map(|i| i as u8).collect();
    let ino_big = put_with_memfd(&q, &big);
    q.put(PutItem::Pill, None).unwrap();
    let (bytes, fds) = take_item(&q);
    assert_eq!((bytes.as_slice(), fds.len()), (&b"plain"[..], 0));
    let (bytes, fds) = take_item(&q);
    assert_eq!((bytes.as_slice(), fds.len()), (&b"with"[..], 1));
    assert_eq!(inode(&fds[0]), ino);
    let (bytes, fds) = take_item(&q);
    assert_eq!(bytes, big);
    assert_eq!(inode(&fds[0]), ino_big);
    assert!(matches!(q.get(None).unwrap(), Taken::Pill));
    assert!(side_channel_empty(&q));
}

/// A producer that died between sending its descriptors and writing its record leaves a
/// message with no record: the next item's consumer drops it and gets its own.
#[test]
fn a_message_without_a_record_is_skipped() {
    let q = Shared::new(Storage::Bounded(1 << 16), 0).unwrap();
    let h = q.header();
    h.put_lock.0.lock().unwrap();
    let tag = h.fd_seq.0.fetch_add(1, SeqCst) + 1;
    q.send_fds(tag, &[memfd(4096).unwrap()]).unwrap();
    h.put_lock.0.unlock(); // "died" here, before its record
    let ino = put_with_memfd(&q, b"next");
    let (bytes, fds) = take_item(&q);
    assert_eq!((bytes.as_slice(), fds.len()), (&b"next"[..], 1));
    assert_eq!(inode(&fds[0]), ino);
    assert!(side_channel_empty(&q));
}

/// A consumer that died after taking an item's descriptors, before moving past its record:
/// the item is lost (as for any consumer killed while taking an item); the next consumer
/// skips it without taking the next item's descriptors.
#[test]
fn a_record_whose_descriptors_a_dead_consumer_took_is_skipped() {
    let q = Shared::new(Storage::Bounded(1 << 16), 0).unwrap();
    put_with_memfd(&q, b"lost");
    let ino = put_with_memfd(&q, b"kept");
    let h = q.header();
    h.get_lock.0.lock().unwrap();
    let taken = q.recv_fds(1, 1).unwrap().unwrap();
    h.get_lock.0.unlock(); // "died" here, before moving the tail
    drop(taken);
    let (bytes, fds) = take_item(&q);
    assert_eq!(bytes, b"kept");
    assert_eq!(inode(&fds[0]), ino);
    assert!(q.is_empty());
}

/// Descriptors missing for another reason: a typed error, and the queue goes on.
#[test]
fn missing_descriptors_are_an_error_not_a_hang() {
    let q = Shared::new(Storage::Bounded(1 << 16), 0).unwrap();
    put_with_memfd(&q, b"robbed");
    put_with_memfd(&q, b"fine");
    let mut msg = [0u8; SIDE_MSG];
    socket::try_recv_message(q.side_rx.as_fd(), &mut msg, &mut Vec::new())
        .unwrap()
        .unwrap();
    // The first record's message is gone: the second's is next (tag 2 > 1).
    let err = q.get(Some(Instant::now())).unwrap_err();
    assert!(matches!(err, Error::InvalidState(_)), "{err}");
    assert!(err.to_string().contains("missing"), "{err}");
    let (bytes, fds) = take_item(&q);
    assert_eq!((bytes.as_slice(), fds.len()), (&b"fine"[..], 1));
    // And with no message at all.
    put_with_memfd(&q, b"robbed");
    socket::try_recv_message(q.side_rx.as_fd(), &mut msg, &mut Vec::new())
        .unwrap()
        .unwrap();
    assert!(matches!(
        q.get(Some(Instant::now())),
        Err(Error::InvalidState(_))
    ));
    assert!(q.is_empty());
}

#[test]
fn more_descriptors_than_one_message_carries_is_an_error() {
    let q = Shared::new(Storage::Bounded(1 << 16), 0).unwrap();
    let fds: Vec<OwnedFd> = (0..=socket::MAX_FDS)
        .map(|_| q.side_tx.try_clone().unwrap())
        .collect();
    let mut buf = vec![0u8; TAG_BYTES + 1];
    let err = q.put(PutItem::WithFds(&mut buf, &fds), None).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { .. }), "{err}");
    assert!(
        err.to_string().contains("254") && err.to_string().contains("253"),
        "{err}"
    );
    assert!(q.is_empty() && side_channel_empty(&q));
}

//! The frame reader (8-byte length, body) over a real socket fed arbitrary bytes, and postcard
//! decoding of arbitrary and mutated messages into the crate's message types.

use std::collections::BTreeMap;
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::{config, mutate};
use crate::error::{Error, RemotePanic};
use crate::wire::{self, FrameBuf, FrameReader, MAX_MESSAGE_BYTES};

/// Sends `stream` on one end of a socket pair (from a thread, then closes it) and reads frames
/// from the other until the end: returns the frames read and how reading ended.
fn read_all(stream: Vec<u8>) -> (Vec<Vec<u8>>, Result<(), Error>) {
    let (rx, tx) = crate::sys::socketpair().unwrap();
    let writer = std::thread::spawn(move || {
        let _ = crate::sys::write_all(tx.as_fd(), &stream);
    });
    let mut reader = FrameReader::default();
    let mut frames = Vec::new();
    let deadline = Some(Instant::now() + Duration::from_secs(30));
    let end = loop {
        match reader.read(rx.as_fd(), deadline) {
            Ok(Some(f)) => frames.push(f),
            Ok(None) => break Ok(()),
            Err(e) => break Err(e),
        }
    };
    drop(rx);
    writer.join().unwrap();
    (frames, end)
}

/// The same with the socket reader of the pool and the pipes ([`FrameBuf`]: receive, then parse
/// every complete frame).
fn read_all_buffered(stream: Vec<u8>) -> (Vec<Vec<u8>>, Result<(), Error>) {
    let (rx, tx) = crate::sys::socketpair().unwrap();
    let writer = std::thread::spawn(move || {
        let _ = crate::sys::write_all(tx.as_fd(), &stream);
    });
    let mut buf = FrameBuf::default();
    let mut frames = Vec::new();
    let end = 'read: loop {
        match buf.fill(rx.as_fd(), false) {
            Ok(Some(0)) => {
                break if buf.has_partial() {
                    Err(Error::Disconnected("cut short".into()))
                } else {
                    Ok(())
                };
            }
            Ok(_) => {}
            Err(e) => break Err(e),
        }
        loop {
            match buf.next() {
                Ok(Some(body)) => frames.push(body.bytes().to_vec()),
                Ok(None) => break,
                Err(e) => break 'read Err(e),
            }
        }
    };
    drop(rx);
    writer.join().unwrap();
    (frames, end)
}

fn framed(bodies: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for b in bodies {
        out.extend_from_slice(&(b.len() as u64).to_le_bytes());
        out.extend_from_slice(b);
    }
    out
}

proptest! {
    #![proptest_config(config())]

    /// Arbitrary bytes: frames or a typed error (cut short, too large), never a panic, and a
    /// frame is never larger than the bytes that arrived.
    #[test]
    fn frame_reader_takes_arbitrary_bytes(stream in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let (frames, end) = read_all(stream.clone());
        let read: usize = frames.iter().map(|f| f.len() + 8).sum();
        prop_assert!(read <= stream.len());
        match end {
            Ok(()) => prop_assert_eq!(read, stream.len()),
            Err(Error::Disconnected(_)) | Err(Error::TooLarge { .. }) => {}
            Err(e) => prop_assert!(false, "unexpected error {e}"),
        }
    }

    /// Valid frames, then mutated: the valid ones come back exactly; a mutated stream gives
    /// frames and a typed error, never a panic.
    #[test]
    fn frame_reader_takes_mutated_frames(
        bodies in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..6),
        edits in proptest::collection::vec((any::<u8>(), any::<usize>(), any::<u8>()), 0..8),
    ) {
        let stream = framed(&bodies);
        let (frames, end) = read_all(stream.clone());
        prop_assert!(end.is_ok());
        prop_assert_eq!(&frames, &bodies);
        let (frames, end) = read_all(mutate(stream, &edits));
        if let Err(e) = end {
            let typed = matches!(e, Error::Disconnected(_) | Error::TooLarge { .. });
            prop_assert!(typed, "{}", e);
        }
        prop_assert!(frames.iter().all(|f| f.len() <= 300 * 6 + 64 * 8));
    }

    /// The buffered reader: arbitrary and mutated streams give frames and a typed error, and
    /// valid frames come back exactly.
    #[test]
    fn frame_buf_takes_arbitrary_and_mutated_streams(
        noise in proptest::collection::vec(any::<u8>(), 0..2048),
        bodies in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..6),
        edits in proptest::collection::vec((any::<u8>(), any::<usize>(), any::<u8>()), 0..8),
    ) {
        for stream in [noise.clone(), mutate(framed(&bodies), &edits)] {
            let (frames, end) = read_all_buffered(stream.clone());
            let read: usize = frames.iter().map(|f| f.len() + 8).sum();
            prop_assert!(read <= stream.len());
            if let Err(e) = end {
                let typed = matches!(e, Error::Disconnected(_) | Error::TooLarge { .. });
                prop_assert!(typed, "{}", e);
            }
        }
        let (frames, end) = read_all_buffered(framed(&bodies));
        prop_assert!(end.is_ok());
        prop_assert_eq!(frames, bodies);
    }

    /// A length header over the limit is `TooLarge` at once (nothing allocated for it).
    #[test]
    fn frame_over_the_limit_is_too_large(extra in 1u64..u64::MAX / 2) {
        let len = MAX_MESSAGE_BYTES as u64 + extra;
        let (frames, end) = read_all(len.to_le_bytes().to_vec());
        prop_assert!(frames.is_empty());
        let too_large = matches!(end, Err(Error::TooLarge { .. }));
        prop_assert!(too_large);
    }

    /// Postcard decoding of arbitrary bytes into the types the crate receives: a value or
    /// `Error::Codec`, never a panic. Length prefixes larger than the input are refused before
    /// any allocation of that size (postcard reads from the slice).
    #[test]
    fn decode_takes_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        check_decode::<String>(&bytes)?;
        check_decode::<Vec<u64>>(&bytes)?;
        check_decode::<RemotePanic>(&bytes)?;
        check_decode::<(u8, Option<Vec<u8>>, i64)>(&bytes)?;
        check_decode::<BTreeMap<String, Vec<f64>>>(&bytes)?;
        check_decode::<crate::shm::PodVec<u32>>(&bytes)?;
    }

    /// Valid messages, mutated: a value or `Error::Codec`.
    #[test]
    fn decode_takes_mutated_messages(
        msg in (any::<String>(), proptest::collection::vec(any::<u64>(), 0..20), any::<Option<i32>>()),
        edits in proptest::collection::vec((any::<u8>(), any::<usize>(), any::<u8>()), 1..8),
    ) {
        let bytes = wire::encode(&msg).unwrap();
        let back: (String, Vec<u64>, Option<i32>) = wire::decode(&bytes).unwrap();
        prop_assert_eq!(&back, &msg);
        let bytes = mutate(bytes, &edits);
        check_decode::<(String, Vec<u64>, Option<i32>)>(&bytes)?;
        check_decode::<RemotePanic>(&bytes)?;
    }
}

fn check_decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<(), TestCaseError> {
    match wire::decode::<T>(bytes) {
        Ok(_) | Err(Error::Codec(_)) => Ok(()),
        Err(e) => Err(TestCaseError::fail(format!("unexpected error {e}"))),
    }
}

//! The descriptor table: values that take descriptors (`PodVec`, `SharedArray`, `Lock`, `Event`)
//! decoded from arbitrary and mutated bytes with a table of arbitrary descriptors (memory files
//! of the right kind, and descriptors of the wrong kind: a pipe, `/dev/null`).

use std::os::fd::OwnedFd;

use proptest::prelude::*;

use super::{config, mutate};
use crate::error::Error;
use crate::fdpass;
use crate::shm::{PodVec, SharedArray};
use crate::sync::{Event, Lock};

type Carrying = (
    PodVec<u64>,
    Option<SharedArray<u32>>,
    Option<Lock>,
    Option<Event>,
);

/// `kinds` descriptors: 0 a memory file of 4 KiB, 1 an empty memory file, 2 a pipe end,
/// 3 `/dev/null`.
fn table(kinds: &[u8]) -> Vec<OwnedFd> {
    kinds
        .iter()
        .map(|k| match k % 4 {
            0 => crate::sys::mem::memfd(4096).unwrap(),
            1 => crate::sys::mem::memfd(0).unwrap(),
            2 => crate::sys::pipe().unwrap().0,
            _ => std::fs::File::open("/dev/null").unwrap().into(),
        })
        .collect()
}

fn check(bytes: &[u8], fds: Vec<OwnedFd>) -> Result<(), TestCaseError> {
    match fdpass::decode_with_fds::<Carrying>(bytes, fds) {
        Ok(_)
        | Err(Error::Codec(_))
        | Err(Error::InvalidArgument { .. })
        | Err(Error::InvalidState(_))
        | Err(Error::Io { .. })
        | Err(Error::TooLarge { .. }) => Ok(()),
        Err(e) => Err(TestCaseError::fail(format!("unexpected error {e:?}"))),
    }
}

proptest! {
    #![proptest_config(config())]

    /// Arbitrary bytes with an arbitrary table: a value or a typed error, never a panic.
    #[test]
    fn arbitrary_bytes_and_descriptors(
        bytes in proptest::collection::vec(any::<u8>(), 0..256),
        kinds in proptest::collection::vec(any::<u8>(), 0..5),
    ) {
        check(&bytes, table(&kinds))?;
    }

    /// A real message with its descriptors, then mutated bytes and a shuffled or cut table.
    #[test]
    fn mutated_messages_and_tables(
        len in 0usize..70_000,
        edits in proptest::collection::vec((any::<u8>(), any::<usize>(), any::<u8>()), 0..6),
        drop_fds in any::<u8>(),
    ) {
        let lock = Lock::new().unwrap();
        let value: Carrying = (
            PodVec::from((0..len as u64).collect::<Vec<_>>()),
            Some(SharedArray::new(3).unwrap()),
            Some(lock),
            Some(Event::new().unwrap()),
        );
        let (bytes, mut fds) = fdpass::encode_with_fds(&value).unwrap();
        if edits.is_empty() {
            let back = fdpass::decode_with_fds::<Carrying>(&bytes, fds).unwrap();
            prop_assert_eq!(&back.0[..], &value.0[..]);
            return Ok(());
        }
        match drop_fds % 3 {
            0 => {}
            1 => fds.reverse(),
            _ => { fds.pop(); }
        }
        check(&mutate(bytes, &edits), fds)?;
    }
}

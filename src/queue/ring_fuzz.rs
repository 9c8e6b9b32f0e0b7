//! Fuzzing (proptest) of the queue's record decoder: the ring is memory that every process
//! holding the queue writes, so a consumer must survive any bytes there. Arbitrary records
//! (valid kinds with arbitrary lengths and totals, and raw garbage) are written at the head, then
//! consumers take until the ring is drained: each `get` gives an item, a pill, or a typed error,
//! never a panic, a hang, or an item larger than the bytes in the ring (and the documented
//! limit). Part of the crate's fuzz suite (`src/fuzz/`); owned by the queue, kept in its own file.

use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::*;
use crate::fuzz::config;

const CAPACITY: usize = 1 << 14;

/// Writes `bytes` at the head and publishes them (as a producer that wrote garbage would).
fn inject(q: &Shared, bytes: &[u8]) {
    let h = q.header();
    let head = h.head.0.load(SeqCst);
    q.copy_in(head, bytes);
    h.head
        .0
        .store(head + bytes.len().next_multiple_of(8) as u64, SeqCst);
}

/// A record: `kind` (with descriptor count bits), a claimed length, a claimed total, a payload.
fn record(kind: u32, len: u32, total: u64, payload: &[u8]) -> Vec<u8> {
    let mut r = Vec::with_capacity(RECORD_HEADER + payload.len());
    r.extend_from_slice(&kind.to_le_bytes());
    r.extend_from_slice(&len.to_le_bytes());
    r.extend_from_slice(&total.to_le_bytes());
    r.extend_from_slice(payload);
    r.resize(r.len().next_multiple_of(8), 0);
    r
}

/// Takes until the ring is empty (a timeout) or 64 takes: only items, pills and typed errors.
fn drain(q: &Shared, injected: usize) -> Result<(), TestCaseError> {
    for _ in 0..64 {
        match q.get(Some(Instant::now() + Duration::from_millis(2))) {
            Ok(Taken::Item(item, _)) => {
                prop_assert!(
                    item.len() <= injected,
                    "an item of {} bytes from {injected} in the ring",
                    item.len()
                );
            }
            Ok(Taken::Pill) => {}
            Err(Error::Timeout { .. }) => return Ok(()),
            Err(Error::InvalidState(_) | Error::Disconnected(_) | Error::Io { .. }) => {}
            Err(e) => return Err(TestCaseError::fail(format!("unexpected error {e:?}"))),
        }
    }
    Ok(())
}

fn kind_strategy() -> impl Strategy<Value = u32> {
    prop_oneof![
        (1u32..=5).prop_map(|k| k),
        (1u32..=5, 1u32..4).prop_map(|(k, n)| k | (n << FDS_SHIFT)),
        any::<u32>(),
    ]
}

proptest! {
    #![proptest_config(config())]

    /// Records with valid or arbitrary kinds and arbitrary claimed lengths and totals.
    #[test]
    fn records_with_arbitrary_headers(
        records in proptest::collection::vec(
            (kind_strategy(), any::<u32>(), any::<u64>(), proptest::collection::vec(any::<u8>(), 0..200)),
            1..8,
        ),
        honest_len in proptest::collection::vec(any::<bool>(), 8),
    ) {
        let q = Shared::new(Storage::Bounded(CAPACITY), 0).unwrap();
        let mut injected = 0;
        for (i, (kind, len, total, payload)) in records.iter().enumerate() {
            let len = if honest_len[i] { payload.len() as u32 } else { *len };
            let total = if honest_len[i] { payload.len() as u64 } else { *total };
            let r = record(*kind, len, total, payload);
            injected += r.len();
            inject(&q, &r);
        }
        drain(&q, injected)?;
    }

    /// Raw garbage at the head, after a valid item.
    #[test]
    fn raw_garbage(garbage in proptest::collection::vec(any::<u8>(), 1..2048)) {
        let q = Shared::new(Storage::Bounded(CAPACITY), 0).unwrap();
        q.put(PutItem::Bytes(b"valid"), None).unwrap();
        match q.get(Some(Instant::now() + Duration::from_secs(10))).unwrap() {
            Taken::Item(item, _) => prop_assert_eq!(item, b"valid".to_vec()),
            Taken::Pill => prop_assert!(false, "a pill"),
        }
        inject(&q, &garbage);
        drain(&q, garbage.len())?;
    }
}

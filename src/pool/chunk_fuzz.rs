//! Fuzzing (proptest) of the chunk decoders (see `chunk`): a task's inputs and a reply's
//! outcomes arrive from another process, so arbitrary and mutated bytes must decode into values
//! or typed errors, never a panic, for plain-data types (fixed-width bytes) and postcard ones.
//! Part of the crate's fuzz suite (`src/fuzz/`); kept beside the pool's decoders.

use proptest::prelude::*;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::chunk::Codec;
use super::fnref::{ItemError, ItemOut, push_outcome};
use super::result::decode_outcomes;
use super::sched::Items;
use crate::error::{Error, RemotePanic};
use crate::fdpass::FdTable;
use crate::fuzz::{config, mutate};

/// Decodes `bytes` as a chunk of `count` inputs of `T` (as a worker does, and as the parent
/// does to cut a task): values or an error, and the ends found lie inside the bytes.
fn check_inputs<T: DeserializeOwned>(bytes: &[u8], count: u32) -> Result<(), TestCaseError> {
    let codec = Codec::of::<T>();
    let mut rest = bytes;
    for _ in 0..count {
        match codec.take::<T>(rest) {
            Ok((_, r)) => {
                prop_assert!(r.len() < rest.len() || matches!(codec, Codec::Fixed(0)));
                rest = r;
            }
            Err(_) => break,
        }
    }
    if let Some(ends) = codec.item_ends::<T>(bytes, count) {
        prop_assert_eq!(ends.len(), count as usize);
        prop_assert!(ends.windows(2).all(|w| w[0] <= w[1]));
        prop_assert!(ends.last().is_none_or(|&e| e <= bytes.len()));
    }
    Ok(())
}

/// Decodes `bytes` as the outcomes of `count` inputs of `R`: each input gets exactly one
/// result, a value or a typed error.
fn check_outcomes<R: DeserializeOwned>(bytes: &[u8], count: u32) -> Result<(), TestCaseError> {
    let items = Items::Range(0, count);
    let mut got = vec![0u32; count as usize];
    let mut bad = None;
    decode_outcomes::<R>(&items, bytes, FdTable::default(), 1, &mut |i: usize,
                                                                     r: Result<
        R,
        Error,
    >| {
        got[i] += 1;
        if let Err(e) = r {
            let typed = matches!(
                e,
                Error::Codec(_)
                    | Error::TaskPanicked { .. }
                    | Error::InvalidState(_)
                    | Error::TooLarge { .. }
            );
            if !typed {
                bad = Some(e.to_string());
            }
        }
    });
    prop_assert!(bad.is_none(), "{:?}", bad);
    prop_assert!(got.iter().all(|&g| g == 1), "{:?}", got);
    Ok(())
}

/// The outcomes of `values`, every third one a failure, as a worker encodes them.
fn outcomes<R: Serialize + DeserializeOwned + Clone>(values: &[R]) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in values.iter().enumerate() {
        let o: ItemOut<R> = if k % 3 == 2 {
            Err(ItemError::Panicked(RemotePanic {
                message: format!("input {k}"),
                location: None,
            }))
        } else {
            Ok(v.clone())
        };
        push_outcome(Codec::of::<R>(), &o, &mut out);
    }
    out
}

proptest! {
    #![proptest_config(config())]

    /// Arbitrary bytes as a chunk of inputs and as a reply's outcomes, plain and postcard.
    #[test]
    fn chunks_of_arbitrary_bytes_decode_or_fail(
        bytes in proptest::collection::vec(any::<u8>(), 0..512),
        count in 0u32..40,
    ) {
        check_inputs::<u64>(&bytes, count)?;
        check_inputs::<(u32, f64, bool)>(&bytes, count)?;
        check_inputs::<[char; 2]>(&bytes, count)?;
        check_inputs::<()>(&bytes, count)?;
        check_inputs::<String>(&bytes, count)?;
        check_outcomes::<u64>(&bytes, count)?;
        check_outcomes::<(i16, bool, char)>(&bytes, count)?;
        check_outcomes::<f32>(&bytes, count)?;
        check_outcomes::<Vec<u8>>(&bytes, count)?;
    }

    /// Valid chunks decode back exactly; mutated, they decode or fail, never panic.
    #[test]
    fn mutated_chunks_decode_or_fail(
        values in proptest::collection::vec((any::<u32>(), any::<f64>(), any::<bool>()), 0..30),
        edits in proptest::collection::vec((any::<u8>(), any::<usize>(), any::<u8>()), 0..8),
    ) {
        let codec = Codec::of::<(u32, f64, bool)>();
        prop_assert_eq!(codec, Codec::Fixed(13));
        let mut inputs = Vec::new();
        for v in &values {
            codec.encode(v, &mut inputs).unwrap();
        }
        let mut rest = &inputs[..];
        for v in &values {
            let (got, r) = codec.take::<(u32, f64, bool)>(rest).unwrap();
            prop_assert_eq!(got.0, v.0);
            prop_assert_eq!(got.1.to_bits(), v.1.to_bits());
            prop_assert_eq!(got.2, v.2);
            rest = r;
        }
        let n = values.len() as u32;
        check_inputs::<(u32, f64, bool)>(&mutate(inputs, &edits), n)?;
        let replies = outcomes(&values);
        check_outcomes::<(u32, f64, bool)>(&replies, n)?;
        check_outcomes::<(u32, f64, bool)>(&mutate(replies, &edits), n)?;
    }
}

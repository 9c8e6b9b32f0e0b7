#![cfg(test)]
//! Unit tests of the pool's parts that need no fork: function references, chunking, decoding
//! and splitting of outcomes, input labels.

use std::sync::Arc;

use super::chunk::Codec;
use super::fnref::{self, FnRef, ItemError, ItemOut, Trampoline, push_outcome};
use super::result::{Chunker, decode_outcomes, take_outcome};
use super::sched::Items;
use crate::error::{Error, RemotePanic};
use crate::fdpass::FdTable;

fn double(x: u32) -> u32 {
    x * 2
}

#[test]
fn fn_ref_round_trips_and_rejects_garbage() {
    fn trampoline_of<F: Fn(u32) -> u32 + Copy>(_: F) -> Trampoline {
        fnref::call::<F, u32, u32>
    }
    let t = trampoline_of(double);
    let r = FnRef::of(t);
    let back = FnRef::from_offset(r.offset()).resolve().unwrap();
    assert_eq!(back as usize, t as usize);
    // Far outside the binary's text.
    assert!(FnRef::from_offset(i64::MAX / 2).resolve().is_err());
    assert!(FnRef::from_offset(-(1 << 40)).resolve().is_err());
}

#[test]
fn chunker_cuts_inputs_and_respects_the_limit() {
    let mut c = Chunker::new(0u32..10, 4, 1 << 20);
    let mut sizes = Vec::new();
    while let Some(t) = c.next_task(1, usize::MAX).unwrap() {
        sizes.push(t.items.count());
        assert_eq!(
            fnref::item_ends::<u32>(&t.bytes, t.items.count()).map(|e| e.len()),
            Some(t.items.count() as usize)
        );
    }
    assert_eq!(sizes, vec![4, 4, 2]);
    assert_eq!(c.pulled, 10);
    // `max` caps a chunk (imap's window).
    let mut c = Chunker::new(0u32..10, 4, 1 << 20);
    assert_eq!(c.next_task(1, 3).unwrap().unwrap().items.count(), 3);
    // An input over the limit is TooLarge.
    let mut c = Chunker::new(std::iter::once(vec![0u8; 100]), 1, 10);
    assert!(matches!(c.next_task(1, 1), Err(Error::TooLarge { .. })));
}

#[test]
fn a_vec_chunker_makes_the_same_tasks_as_an_iterator_chunker() {
    let inputs: Vec<(u64, String)> = (0..1000u64).map(|i| (i * i, format!("x{i}"))).collect();
    let mut a = Chunker::from_vec(inputs.clone(), 64, 1 << 20, Vec::new());
    let mut b = Chunker::new(inputs.into_iter(), 64, 1 << 20);
    let mut tasks = 0;
    while let Some(ta) = a.next_task(1, usize::MAX).unwrap() {
        let tb = b.next_task(1, usize::MAX).unwrap().unwrap();
        assert_eq!(
            (ta.items.count(), &ta.bytes[..]),
            (tb.items.count(), &tb.bytes[..])
        );
        assert!(ta.fds.is_none());
        tasks += 1;
    }
    assert!(b.next_task(1, usize::MAX).unwrap().is_none());
    assert_eq!((tasks, a.pulled), (16, 1000));
    // The limit holds in both.
    let mut c = Chunker::from_vec(vec![vec![0u8; 100]], 1, 10, Vec::new());
    assert!(matches!(c.next_task(1, 1), Err(Error::TooLarge { .. })));
}

/// `take_outcome`'s shortcut for `Ok` must read exactly what the full decode reads.
#[test]
fn the_ok_shortcut_decodes_as_the_full_result_does() {
    fn check<R>(outs: Vec<ItemOut<R>>)
    where
        R: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
    {
        let mut data = Vec::new();
        for o in &outs {
            data.extend(postcard::to_stdvec(o).unwrap());
        }
        let mut rest = &data[..];
        for o in &outs {
            let (got, r) = take_outcome::<R>(Codec::Postcard, rest).unwrap();
            let (full, r2) = postcard::take_from_bytes::<ItemOut<R>>(rest).unwrap();
            assert_eq!(r.len(), r2.len());
            assert_eq!(got.as_ref().ok(), o.as_ref().ok());
            assert_eq!(full.as_ref().ok(), o.as_ref().ok());
            assert_eq!(got.is_err(), o.is_err());
            rest = r;
        }
        assert!(rest.is_empty());
    }
    check::<u64>(vec![
        Ok(0),
        Ok(u64::MAX),
        Err(ItemError::TooLarge(9)),
        Ok(300),
    ]);
    check::<()>(vec![Ok(()), Err(ItemError::Codec("bad".into())), Ok(())]);
    check::<String>(vec![Ok(String::new()), Ok("héllo".into())]);
    check::<(u8, Vec<i64>, Option<bool>)>(vec![
        Ok((0, vec![-1, 2], None)),
        Err(ItemError::Panicked(RemotePanic {
            message: "p".into(),
            location: Some("a.rs:1".into()),
        })),
        Ok((255, vec![], Some(true))),
    ]);
    // Cut short: an error, never a panic.
    for codec in [Codec::Postcard, Codec::of::<u64>()] {
        assert!(take_outcome::<u64>(codec, &[0]).is_err());
        assert!(take_outcome::<u64>(codec, &[]).is_err());
        assert!(take_outcome::<u64>(codec, &[0, 0x80]).is_err());
    }
    // A plain-data `u64` is 8 bytes: 2 are cut short.
    assert!(take_outcome::<u64>(Codec::of::<u64>(), &[0, 1, 2]).is_err());
}

#[test]
fn outcomes_decode_in_order_with_per_input_errors() {
    let mut data = Vec::new();
    let outs: Vec<ItemOut<u32>> = vec![
        Ok(1),
        Err(ItemError::Panicked(RemotePanic {
            message: "boom".into(),
            location: None,
        })),
        Ok(3),
    ];
    for o in &outs {
        push_outcome(Codec::of::<u32>(), o, &mut data);
    }
    let items = Items::List(vec![7, 3, 9].into());
    let mut got = Vec::new();
    decode_outcomes::<u32>(&items, &data, FdTable::default(), 42, &mut |i: usize, r| {
        got.push((i, r))
    });
    assert_eq!(got.len(), 3);
    assert_eq!((got[0].0, got[0].1.as_ref().unwrap()), (7, &1));
    assert!(matches!(
        &got[1],
        (3, Err(Error::TaskPanicked { pid: 42, .. }))
    ));
    assert_eq!((got[2].0, got[2].1.as_ref().unwrap()), (9, &3));
    // Truncated data fails the rest, never panics.
    let mut got = Vec::new();
    decode_outcomes::<u32>(
        &items,
        &data[..2],
        FdTable::default(),
        1,
        &mut |i, r: crate::Result<u32>| got.push((i, r.is_ok())),
    );
    assert_eq!(got.len(), 3);
}

/// Collects what `decode_outcomes` hands over, runs included.
#[derive(Default)]
struct Recorder {
    runs: Vec<(usize, Vec<bool>)>,
    each: Vec<(usize, bool)>,
}

impl super::result::Collect<bool> for Recorder {
    fn put(&mut self, i: usize, r: crate::Result<bool>) {
        self.each.push((i, r.is_ok()));
    }

    fn put_run(&mut self, first: usize, _n: usize, values: impl Iterator<Item = bool>) {
        self.runs.push((first, values.collect()));
    }
}

#[test]
fn a_chunk_of_plain_values_is_one_run_up_to_a_value_that_does_not_decode() {
    let ok = |v: u8| [0u8, v];
    // Inputs 10..14: all fine, one run.
    let data: Vec<u8> = [1, 0, 1, 1].iter().flat_map(|&v| ok(v)).collect();
    let mut r = Recorder::default();
    decode_outcomes::<bool>(&Items::Range(10, 4), &data, FdTable::default(), 1, &mut r);
    assert_eq!(r.runs, [(10, vec![true, false, true, true])]);
    assert!(r.each.is_empty());
    // A `bool` byte of 7 does not decode: the run stops there, that input and the ones after
    // it get an error each.
    let data: Vec<u8> = [1, 0, 7, 1].iter().flat_map(|&v| ok(v)).collect();
    let mut r = Recorder::default();
    decode_outcomes::<bool>(&Items::Range(10, 4), &data, FdTable::default(), 1, &mut r);
    assert_eq!(r.runs, [(10, vec![true, false])]);
    assert_eq!(r.each, [(12, false), (13, false)]);
    // An input that failed: no run, one outcome at a time.
    let mut data: Vec<u8> = ok(1).to_vec();
    push_outcome(
        Codec::of::<bool>(),
        &ItemOut::<bool>::Err(ItemError::TooLarge(9)),
        &mut data,
    );
    let mut r = Recorder::default();
    decode_outcomes::<bool>(&Items::Range(0, 2), &data, FdTable::default(), 1, &mut r);
    assert!(r.runs.is_empty());
    assert_eq!(r.each, [(0, true), (1, false)]);
}

#[test]
fn runs_of_values_are_assembled_and_answered_inputs_are_not_taken_twice() {
    use super::result::{Collect, FirstOnly, InOrder, Seen, Values};
    let mut out = Values {
        values: InOrder::new(200, 50),
        first_err: None,
    };
    let mut first = FirstOnly {
        seen: Seen::new(200),
        got: 0,
        put: &mut out,
    };
    // Runs arriving out of order, one of them continuing the run set aside before it, and a
    // run over inputs answered already (they ran again after a worker died): only the new
    // ones count.
    first.put_run(100, 50, 100..150usize);
    first.put_run(150, 50, 150..200);
    first.put(0, Ok(0));
    first.put_run(1, 60, 1..61);
    first.put_run(50, 50, 50..100);
    assert_eq!(first.got, 200);
    assert_eq!(out.values.finish(200), Some((0..200).collect()));
    // A run cut short (a value that did not decode) marks only what it gave.
    let mut out = Values {
        values: InOrder::new(10, 10),
        first_err: None,
    };
    let mut first = FirstOnly {
        seen: Seen::new(10),
        got: 0,
        put: &mut out,
    };
    first.put_run(0, 10, 0..4usize);
    first.put(4, Err(Error::InvalidState("x".into())));
    assert_eq!(first.got, 5);
    assert!(first.seen.first(5) && !first.seen.first(3));
    assert_eq!(out.first_err.map(|e| e.0), Some(4));
}

#[test]
fn seen_marks_and_checks_ranges_across_words() {
    let mut s = super::result::Seen::new(300);
    assert!(s.none_of(0, 300));
    s.mark(60, 70);
    assert!(!s.none_of(129, 1) && !s.none_of(0, 61) && s.none_of(0, 60) && s.none_of(130, 170));
    assert!(s.first(59) && !s.first(60) && !s.first(129) && s.first(130));
    s.mark(0, 0);
    assert!(s.none_of(131, 0));
}

#[test]
fn item_labels_name_the_input() {
    assert_eq!(Items::Range(10, 5).label(2), "item #12");
    assert_eq!(Items::List(vec![4, 17].into()).label(1), "item #17");
    assert_eq!(Items::Range(0, 3).count(), 3);
    let bytes: Arc<[u8]> = Arc::from(&b""[..]);
    assert!(bytes.is_empty());
}

#[test]
fn pool_types_can_be_shared_between_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<super::Pool>();
    assert_send_sync::<super::AsyncResult<u32>>();
}

#[test]
fn in_order_assembles_runs_that_arrive_out_of_order() {
    use super::result::InOrder;
    // Chunks of 3 over 10 inputs, arriving 1, 3, 0, 2 (the last one short).
    let mut c = InOrder::new(10, 3);
    for chunk in [3..6, 9..10, 0..3, 6..9] {
        for i in chunk {
            c.put(i, i * 10);
        }
    }
    assert_eq!(c.finish(10), Some((0..10).map(|i| i * 10).collect()));
    // Scattered single inputs (a split task) and a missing one.
    let mut c = InOrder::new(5, 2);
    for i in [4, 2, 0, 1] {
        c.put(i, i);
    }
    assert_eq!(c.finish(5), None);
    let mut c = InOrder::<u8>::new(0, 1);
    c.put(0, 1);
    assert_eq!(c.finish(1), Some(vec![1]));
}

#[test]
fn seen_marks_each_input_once() {
    let mut s = super::result::Seen::new(130);
    assert!(s.first(0) && s.first(129) && s.first(64));
    assert!(!s.first(0) && !s.first(129) && !s.first(64));
    assert!(s.first(63));
}

/// Plain inputs cut into tasks: tiny chunks (packed in one buffer, copied out at dispatch) and
/// bigger ones (a buffer per chunk) give each task its inputs' encoded bytes and its range, the
/// last task holding the remainder; inputs of no bytes still count.
#[test]
fn plain_chunks_packed_or_owned_give_each_task_its_inputs() {
    use super::result::{PlainChunks, Tasks};
    let tasks_of = |p: PlainChunks| {
        let mut t: Tasks<u64> = Tasks::Plain(p);
        let mut out = Vec::new();
        while let Some(task) = t.next_task(1).unwrap() {
            out.push((task.items.index(0), task.items.count(), task.bytes.to_vec()));
        }
        out
    };
    let encoded = |r: std::ops::Range<u64>| {
        let mut b = Vec::new();
        r.for_each(|x| Codec::Fixed(8).encode(&x, &mut b).unwrap());
        b
    };
    // 3 inputs of 8 bytes per task: packed.
    let packed = tasks_of(PlainChunks::encode(0..10u64, 8, 3, 1 << 20).unwrap());
    let want: Vec<_> = [(0, 3), (3, 3), (6, 3), (9, 1)]
        .into_iter()
        .map(|(i, c)| (i, c as u32, encoded(i as u64..(i + c) as u64)))
        .collect();
    assert_eq!(packed, want);
    // 40 inputs per task (320 bytes): a buffer each, the same bytes and ranges.
    let owned = tasks_of(PlainChunks::encode(0..100u64, 8, 40, 1 << 20).unwrap());
    let want: Vec<_> = [(0, 40), (40, 40), (80, 20)]
        .into_iter()
        .map(|(i, c)| (i, c as u32, encoded(i as u64..(i + c) as u64)))
        .collect();
    assert_eq!(owned, want);
    // Inputs of no bytes.
    let units = tasks_of(PlainChunks::encode(std::iter::repeat_n((), 10), 0, 4, 1 << 20).unwrap());
    let counts: Vec<_> = units.iter().map(|t| (t.0, t.1, t.2.len())).collect();
    assert_eq!(counts, vec![(0, 4, 0), (4, 4, 0), (8, 2, 0)]);
    // No inputs: no task.
    assert!(tasks_of(PlainChunks::encode(0..0u64, 8, 1, 1 << 20).unwrap()).is_empty());
}

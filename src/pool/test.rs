#![cfg(test)]
//! Unit tests of the pool's parts that need no fork: function references, chunking, decoding
//! and splitting of outcomes, input labels.

use std::sync::Arc;

use super::fnref::{self, FnRef, ItemError, ItemOut, Trampoline};
use super::result::{Chunker, decode_outcomes};
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
        data.extend(postcard::to_stdvec(o).unwrap());
    }
    let items = Items::List(vec![7, 3, 9].into());
    let mut got = Vec::new();
    decode_outcomes::<u32>(&items, &data, FdTable::default(), 42, |i, r| {
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
    decode_outcomes::<u32>(&items, &data[..2], FdTable::default(), 1, |i, r| {
        got.push((i, r.is_ok()))
    });
    assert_eq!(got.len(), 3);
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

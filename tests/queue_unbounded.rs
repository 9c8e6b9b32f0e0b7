//! `Queue::new()` is unbounded (Python's `Queue()`), `with_maxsize` is Python's
//! `Queue(maxsize)`, and Python's non-blocking calls: `try_put`, `put_timeout`, `len`,
//! `is_full`, `try_get` giving `Empty`.
//!
//! The full-size fill test (1,000,000 small items and 2 GiB of bytes put before any consumer
//! starts) is `#[ignore]`d: `cargo test --release --test queue_unbounded -- --ignored`; CI runs
//! the same test at a tenth of the size.

mod common;

use std::collections::HashMap;

use common::{fork_lock, ms, secs};
use multiproc::{Error, Process, Queue};

/// (producer, sequence number, payload).
type Item = (u32, u32, Vec<u8>);

/// The payload of big item `seq`: every byte derived from its position.
fn big_payload(seq: u32, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(31).wrapping_add(seq) as u8)
        .collect()
}

/// A field of `/proc/self/status` or `/proc/meminfo`, in KiB.
fn kib(file: &str, key: &str) -> u64 {
    std::fs::read_to_string(file)
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("{key} not in {file}"))
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Puts `small` small items from each of two producers and `big_bytes` in 1 MiB items from a
/// third (this process), all before any consumer starts; then 4 consumers drain the queue. Every item arrives
/// exactly once, each producer's items in the order it put them, and the memory the queue took
/// is returned once it is drained.
fn fill_then_drain(small: u32, big_bytes: usize) {
    const CONSUMERS: usize = 4;
    const BIG: usize = 1 << 20;
    let _f = fork_lock();
    let fds_before = open_fds();
    let shmem_before = kib("/proc/self/status", "RssShmem:");
    let machine_before = kib("/proc/meminfo", "Shmem:");
    let q: Queue<Item> = Queue::new().unwrap();
    let seen: Queue<(u32, Vec<u32>)> = Queue::new().unwrap();
    let big_items = (big_bytes / BIG) as u32;
    // Two producers of small items in children; this process puts the big ones itself, so that
    // its own RssShmem shows the queue's pages coming and going.
    let producers: Vec<Process> = (0..2u32)
        .map(|p| {
            let q = q.clone();
            Process::new(move || {
                for s in 0..small {
                    q.put(&(p, s, s.to_le_bytes().to_vec())).unwrap();
                }
            })
        })
        .collect();
    for p in &producers {
        p.start().unwrap();
    }
    for s in 0..big_items {
        q.put(&(2, s, big_payload(s, BIG))).unwrap();
    }
    for p in &producers {
        assert!(p.join_timeout(secs(600)).unwrap(), "producer hung");
        assert_eq!(p.exitcode(), Some(0));
    }
    let shmem_full = kib("/proc/self/status", "RssShmem:");
    assert!(
        shmem_full >= shmem_before + (big_bytes as u64 / 1024) * 9 / 10,
        "RssShmem {shmem_before} -> {shmem_full} KiB: the items are not in shared memory?"
    );
    let expected = 2 * small as usize + big_items as usize;
    assert_eq!(q.len(), expected, "len() after the fill");
    assert!(!q.is_full());
    let machine_full = kib("/proc/meminfo", "Shmem:");
    for _ in 0..CONSUMERS {
        q.put_pill().unwrap();
    }
    let consumers: Vec<Process> = (0..CONSUMERS)
        .map(|_| {
            let (q, seen) = (q.clone(), seen.clone());
            Process::new(move || {
                let mut last: HashMap<u32, u32> = HashMap::new();
                let mut got: Vec<Vec<u32>> = vec![Vec::new(); 3];
                for (p, s, data) in q.iter() {
                    if p < 2 {
                        assert_eq!(data, s.to_le_bytes(), "small item ({p}, {s}) corrupted");
                    } else {
                        assert!(data == big_payload(s, BIG), "big item {s} corrupted");
                    }
                    if let Some(prev) = last.insert(p, s) {
                        assert!(prev < s, "producer {p}: {s} after {prev}");
                    }
                    got[p as usize].push(s);
                }
                for (p, seqs) in got.into_iter().enumerate() {
                    seen.put(&(p as u32, seqs)).unwrap();
                }
            })
        })
        .collect();
    for c in &consumers {
        c.start().unwrap();
    }
    for c in &consumers {
        assert!(c.join_timeout(secs(600)).unwrap(), "consumer hung");
        assert_eq!(c.exitcode(), Some(0), "a consumer's check failed");
    }
    let mut count: Vec<Vec<u8>> = vec![
        vec![0; small as usize],
        vec![0; small as usize],
        vec![0; big_items as usize],
    ];
    for _ in 0..CONSUMERS * 3 {
        let (p, seqs) = seen.get_timeout(secs(60)).unwrap();
        for s in seqs {
            count[p as usize][s as usize] += 1;
        }
    }
    for (p, counts) in count.iter().enumerate() {
        assert!(
            counts.iter().all(|&n| n == 1),
            "producer {p}: an item lost or duplicated"
        );
    }
    assert_eq!(q.len(), 0);
    assert!(q.is_empty());
    // Drained: the pages went back to the kernel (at most the last batch and a few pages
    // remain until the queue itself is dropped).
    let shmem_drained = kib("/proc/self/status", "RssShmem:");
    assert!(
        shmem_drained <= shmem_before + 8 * 1024,
        "RssShmem {shmem_before} -> {shmem_drained} KiB after the drain"
    );
    drop((q, seen));
    assert_eq!(open_fds(), fds_before, "descriptors leaked");
    let machine_after = kib("/proc/meminfo", "Shmem:");
    eprintln!(
        "Shmem (machine, KiB): before {machine_before}, full {machine_full}, after \
         {machine_after}; RssShmem (this process, KiB): before {shmem_before}, full \
         {shmem_full}, drained {shmem_drained}"
    );
    // The machine-wide figure is printed, not asserted: other processes change it too. The
    // pages were returned with MADV_REMOVE, which frees them for every process that maps them,
    // so this process's RssShmem (checked above) stands for the queue's memory.
}

#[test]
fn new_queue_filled_before_its_consumers_then_drained() {
    fill_then_drain(100_000, 256 << 20);
}

#[test]
#[ignore = "1,000,000 items and 2 GiB: cargo test --release --test queue_unbounded -- --ignored"]
fn new_queue_filled_with_a_million_items_and_2_gib_then_drained() {
    fill_then_drain(500_000, 2 << 30);
}

#[test]
fn try_get_on_an_empty_queue_is_empty() {
    let _f = fork_lock(); // keeps the fd count of the fill test exact
    let q: Queue<u32> = Queue::new().unwrap();
    assert!(matches!(q.try_get(), Err(Error::Empty)));
    q.put(&5).unwrap();
    assert_eq!(q.len(), 1);
    assert_eq!(q.try_get().unwrap(), 5);
    assert!(q.try_get().unwrap_err().is_empty_queue());
    assert_eq!(q.len(), 0);
}

#[test]
fn maxsize_bounds_the_items_not_the_bytes() {
    let _f = fork_lock(); // keeps the fd count of the fill test exact
    let q: Queue<Vec<u8>> = Queue::with_maxsize(3).unwrap();
    // Three items of 4 MiB: more than a default ring, fine under maxsize.
    for i in 0..3u8 {
        q.try_put(&vec![i; 4 << 20]).unwrap();
    }
    assert_eq!(q.len(), 3);
    assert!(q.is_full());
    let err = q.try_put(&vec![9]).unwrap_err();
    assert!(matches!(err, Error::Full(_)), "{err:?}");
    // Shorter than the disconnection check's period: this process is the queue's only holder,
    // so a longer wait would end in Disconnected (nobody can take).
    let err = q.put_timeout(&vec![9], ms(20)).unwrap_err();
    assert!(err.is_timeout(), "{err:?}");
    assert_eq!(q.len(), 3, "a refused put left something behind");
    assert_eq!(q.get().unwrap(), vec![0u8; 4 << 20]);
    assert!(!q.is_full());
    q.put_timeout(&vec![3], ms(100)).unwrap();
    for want in [vec![1u8; 4 << 20], vec![2u8; 4 << 20], vec![3]] {
        assert_eq!(q.try_get().unwrap(), want);
    }
    assert!(q.is_empty());
}

#[test]
fn a_put_waiting_under_maxsize_goes_in_once_a_consumer_takes() {
    let _f = fork_lock();
    let q: Queue<u32> = Queue::with_maxsize(1).unwrap();
    q.put(&1).unwrap();
    let consumer = {
        let q = q.clone();
        Process::new(move || {
            let got: Vec<u32> = (0..2).map(|_| q.get_timeout(secs(60)).unwrap()).collect();
            assert_eq!(got, [1, 2]);
        })
    };
    consumer.start().unwrap();
    q.put_timeout(&2, secs(60)).unwrap();
    assert!(consumer.join_timeout(secs(60)).unwrap());
    assert_eq!(consumer.exitcode(), Some(0));
}

#[test]
fn a_bounded_ring_refuses_try_put_when_full() {
    let _f = fork_lock(); // keeps the fd count of the fill test exact
    let q: Queue<Vec<u8>> = Queue::with_capacity(4096).unwrap();
    let mut put = 0;
    let err = loop {
        match q.try_put(&vec![0u8; 100]) {
            Ok(()) => put += 1,
            Err(e) => break e,
        }
        assert!(put < 1000, "the ring never filled");
    };
    assert!(matches!(err, Error::Full(_)), "{err:?}");
    assert!(q.is_full());
    assert_eq!(q.len(), put);
    assert!(
        q.put_timeout(&vec![0u8; 100], ms(20))
            .unwrap_err()
            .is_timeout()
    );
    q.get().unwrap();
    q.try_put(&vec![1u8; 100]).unwrap();
    assert_eq!(q.len(), put);
}

#[test]
fn a_zero_maxsize_is_an_error() {
    let _f = fork_lock(); // keeps the fd count of the fill test exact
    let err = Queue::<u8>::with_maxsize(0).unwrap_err();
    assert!(
        matches!(
            err,
            Error::InvalidArgument {
                name: "maxsize",
                ..
            }
        ),
        "{err:?}"
    );
}

//! `Queue` across processes: MPMC exactly-once delivery, item sizes, pills, crashes, disconnection.

mod common;

use std::collections::HashMap;

use common::{Rng, ms, secs};
use multiproc::{Error, JoinableQueue, Process, Queue};

/// (producer, sequence number, payload): the payload is derived from the first two, so a consumer
/// can check every byte.
type Item = (u32, u32, Vec<u8>);

fn payload(producer: u32, seq: u32) -> Vec<u8> {
    let mut rng = Rng::new(((producer as u64) << 32) | seq as u64);
    // Mostly small items, some a few KiB, a few larger than a quarter of the ring (streamed).
    let len = match rng.below(100) {
        0 => 300_000 + rng.below(200_000) as usize,
        1..=10 => rng.below(8192) as usize,
        _ => rng.below(64) as usize,
    };
    rng.bytes(len)
}

#[test]
fn four_producers_four_consumers_exactly_once_in_order() {
    const PRODUCERS: u32 = 4;
    const CONSUMERS: usize = 4;
    const PER_PRODUCER: u32 = 10_000;
    let q: Queue<Item> = Queue::new().unwrap();
    // Each consumer reports (consumer, producer, seq) for every item it took and checked.
    let seen: Queue<Vec<(u32, u32)>> = Queue::new().unwrap();
    let consumers: Vec<Process> = (0..CONSUMERS)
        .map(|_| {
            let (q, seen) = (q.clone(), seen.clone());
            Process::new(move || {
                let mut got = Vec::new();
                for (p, s, data) in q.iter() {
                    assert_eq!(data, payload(p, s), "item ({p}, {s}) corrupted");
                    got.push((p, s));
                }
                seen.put(&got).unwrap();
            })
        })
        .collect();
    let producers: Vec<Process> = (0..PRODUCERS)
        .map(|p| {
            let q = q.clone();
            Process::new(move || {
                for s in 0..PER_PRODUCER {
                    q.put(&(p, s, payload(p, s))).unwrap();
                }
            })
        })
        .collect();
    for c in consumers.iter().chain(&producers) {
        c.start().unwrap();
    }
    for p in &producers {
        assert!(p.join_timeout(secs(120)).unwrap());
        assert_eq!(p.exitcode(), Some(0));
    }
    for _ in 0..CONSUMERS {
        q.put_pill().unwrap();
    }
    let mut count: HashMap<(u32, u32), u32> = HashMap::new();
    for _ in 0..CONSUMERS {
        let got = seen.get_timeout(secs(120)).unwrap();
        // FIFO per producer: each consumer sees a producer's items in the order they were put.
        let mut last: HashMap<u32, u32> = HashMap::new();
        for &(p, s) in &got {
            if let Some(&prev) = last.get(&p) {
                assert!(s > prev, "producer {p}: {s} after {prev}");
            }
            last.insert(p, s);
            *count.entry((p, s)).or_default() += 1;
        }
    }
    for c in &consumers {
        assert!(c.join_timeout(secs(30)).unwrap());
        assert_eq!(c.exitcode(), Some(0), "a consumer failed a check");
    }
    assert_eq!(
        count.len(),
        (PRODUCERS * PER_PRODUCER) as usize,
        "items lost"
    );
    assert!(
        count.values().all(|&n| n == 1),
        "an item was delivered twice"
    );
}

#[test]
fn zero_byte_and_64_mib_items() {
    let q: Queue<Vec<u8>> = Queue::new().unwrap();
    let unit: Queue<()> = Queue::new().unwrap();
    let (q2, unit2) = (q.clone(), unit.clone());
    let producer = Process::new(move || {
        unit2.put(&()).unwrap();
        q2.put(&Vec::new()).unwrap();
        q2.put(&Rng::new(64).bytes(64 << 20)).unwrap();
        q2.put(&vec![1, 2, 3]).unwrap();
    });
    producer.start().unwrap();
    unit.get_timeout(secs(60)).unwrap();
    assert_eq!(q.get_timeout(secs(60)).unwrap(), Vec::<u8>::new());
    let big = q.get_timeout(secs(60)).unwrap();
    assert_eq!(big.len(), 64 << 20);
    assert!(big == Rng::new(64).bytes(64 << 20), "64 MiB item corrupted");
    assert_eq!(q.get_timeout(secs(60)).unwrap(), vec![1, 2, 3]);
    assert!(producer.join_timeout(secs(60)).unwrap());
}

#[test]
fn a_256_mib_item_between_processes() {
    const SIZE: usize = 256 << 20;
    let q: Queue<serde_bytes::ByteBuf> = Queue::new().unwrap();
    let q2 = q.clone();
    let producer = Process::new(move || {
        let mut data = vec![0u8; SIZE];
        for (i, chunk) in data.chunks_mut(4096).enumerate() {
            chunk.fill(i as u8);
        }
        q2.put(&serde_bytes::ByteBuf::from(data)).unwrap();
    });
    producer.start().unwrap();
    let item = q.get_timeout(secs(120)).unwrap();
    assert_eq!(item.len(), SIZE);
    assert!(
        item.chunks(4096)
            .enumerate()
            .all(|(i, c)| c.iter().all(|&b| b == i as u8))
    );
    assert!(producer.join_timeout(secs(60)).unwrap());
    assert_eq!(producer.exitcode(), Some(0));
}

#[test]
fn pills_and_sentinels_end_iteration() {
    let q: Queue<String> = Queue::new().unwrap();
    for s in ["a", "b", "stop", "c"] {
        q.put(&s.to_string()).unwrap();
    }
    q.put_pill().unwrap();
    q.put(&"after".to_string()).unwrap();
    let stop = "stop".to_string();
    let mut it = q.iter_until(&stop);
    let before: Vec<String> = it.by_ref().collect();
    assert_eq!(before, ["a", "b"]);
    assert!(matches!(it.stop_reason(), Some(Error::Stopped)));
    let mut it = q.iter();
    assert_eq!(it.by_ref().collect::<Vec<_>>(), ["c"]);
    assert!(matches!(it.stop_reason(), Some(Error::Stopped)));
    assert_eq!(q.try_get().unwrap(), "after");
    q.put_pill().unwrap();
    assert!(matches!(q.get(), Err(Error::Stopped)));
}

#[test]
fn a_killed_consumer_does_not_stop_the_others() {
    const N: u32 = 20_000;
    let q: Queue<Item> = Queue::new().unwrap();
    let seen: Queue<(u32, u32)> = Queue::with_capacity(8 << 20).unwrap();
    let start = |slow: bool| {
        let (q, seen) = (q.clone(), seen.clone());
        let p = Process::new(move || {
            for (p, s, data) in q.iter() {
                assert_eq!(data, payload(p, s));
                seen.put(&(p, s)).unwrap();
                if slow {
                    std::thread::sleep(std::time::Duration::from_micros(200));
                }
            }
        });
        p.start().unwrap();
        p
    };
    let victim = start(true);
    let survivors = [start(false), start(false)];
    for s in 0..N {
        q.put(&(9, s, payload(9, s))).unwrap();
        if s == N / 4 {
            victim.kill().unwrap();
        }
    }
    for _ in &survivors {
        q.put_pill().unwrap();
    }
    for p in &survivors {
        if !p.join_timeout(secs(120)).unwrap() {
            common::dump_stacks(p.pid().unwrap());
            panic!("a survivor hung");
        }
        assert_eq!(p.exitcode(), Some(0), "a survivor saw a corrupted item");
    }
    assert!(victim.join_timeout(secs(30)).unwrap());
    assert_eq!(victim.exitcode(), Some(-9));
    let mut count = vec![0u32; N as usize];
    while let Ok((_, s)) = seen.try_get() {
        count[s as usize] += 1;
    }
    assert!(count.iter().all(|&n| n <= 1), "an item was delivered twice");
    let lost = count.iter().filter(|&&n| n == 0).count();
    // The victim can lose at most the item it was holding when it died.
    assert!(lost <= 1, "{lost} items lost");
}

#[test]
fn get_is_disconnected_when_every_producer_has_exited() {
    let q: Queue<u32> = Queue::new().unwrap();
    let q2 = q.clone();
    let producer = Process::new(move || {
        for i in 0..3 {
            q2.put(&i).unwrap();
        }
    });
    producer.start().unwrap();
    for i in 0..3 {
        assert_eq!(q.get_timeout(secs(30)).unwrap(), i);
    }
    // The producer is gone (or going) and this process is the only holder left, waiting in get.
    let t = std::time::Instant::now();
    let err = q.get_timeout(secs(30)).unwrap_err();
    assert!(err.is_disconnected(), "{err:?}");
    assert!(t.elapsed() < secs(10));
    producer.join().unwrap();
}

#[test]
fn consumers_are_released_while_the_parent_joins() {
    // The parent forgets the pills and joins: the consumers see that nobody can put any more.
    let q: Queue<u32> = Queue::new().unwrap();
    let consumers: Vec<Process> = (0..2)
        .map(|_| {
            let q = q.clone();
            Process::new(move || {
                let mut it = q.iter();
                it.by_ref().for_each(drop);
                assert!(it.stop_reason().unwrap().is_disconnected());
                std::process::exit(10);
            })
        })
        .collect();
    for c in &consumers {
        c.start().unwrap();
    }
    for i in 0..100 {
        q.put(&i).unwrap();
    }
    // An unbounded join: a process in `join_timeout` comes back and may put again, so it does
    // not release the consumers.
    for c in &consumers {
        assert!(common::join_with_watchdog(c, secs(30)), "consumer hung");
        assert_eq!(c.exitcode(), Some(10));
    }
}

#[test]
fn a_parent_joining_an_unrelated_child_can_still_put() {
    // `other` was started before the queue existed, so it does not hold it: while the parent
    // joins it, the parent will put again afterwards, and the consumer must keep waiting.
    let other = Process::new(|| std::thread::sleep(std::time::Duration::from_millis(400)));
    other.start().unwrap();
    let q: Queue<u32> = Queue::new().unwrap();
    let q2 = q.clone();
    let consumer = Process::new(
        move || match q2.get_timeout(std::time::Duration::from_secs(30)) {
            Ok(7) => std::process::exit(0),
            Ok(_) => std::process::exit(3),
            Err(e) if e.is_disconnected() => std::process::exit(2),
            Err(_) => std::process::exit(4),
        },
    );
    consumer.start().unwrap();
    assert!(other.join_timeout(secs(30)).unwrap());
    q.put(&7).unwrap();
    assert!(consumer.join_timeout(secs(30)).unwrap());
    assert_eq!(consumer.exitcode(), Some(0), "2 means a false Disconnected");
}

#[test]
fn timeouts_while_a_producer_is_alive() {
    let q: Queue<u32> = Queue::new().unwrap();
    let q2 = q.clone();
    let idle = Process::new(move || {
        std::thread::sleep(std::time::Duration::from_secs(60));
        drop(q2);
    });
    idle.start().unwrap();
    let err = q.get_timeout(ms(200)).unwrap_err();
    assert!(err.is_timeout(), "{err:?}");
    assert!(q.try_get().unwrap_err().is_timeout());
    idle.kill().unwrap();
    idle.join().unwrap();
}

#[test]
fn try_get_does_not_wait_behind_a_blocked_consumer() {
    let q: Queue<u32> = Queue::new().unwrap();
    let q2 = q.clone();
    // A holder that could still put, so that nobody's wait ends in Disconnected.
    let keeper = Process::new(|| std::thread::sleep(std::time::Duration::from_secs(60)));
    keeper.start().unwrap();
    // This consumer holds the queue's get lock while it waits for an item.
    let waiting = Process::new(move || {
        let _ = q2.get_timeout(std::time::Duration::from_secs(30));
    });
    waiting.start().unwrap();
    std::thread::sleep(ms(200));
    let t = std::time::Instant::now();
    assert!(q.try_get().unwrap_err().is_timeout());
    assert!(q.get_timeout(ms(100)).unwrap_err().is_timeout());
    assert!(t.elapsed() < secs(2), "took {:?}", t.elapsed());
    q.put(&1).unwrap();
    assert!(waiting.join_timeout(secs(30)).unwrap());
    keeper.kill().unwrap();
    keeper.join().unwrap();
}

#[test]
fn put_is_disconnected_when_nobody_can_get() {
    let q: Queue<Vec<u8>> = Queue::with_capacity(4096).unwrap();
    let mut put = 0;
    let err = loop {
        match q.put(&vec![0u8; 100]) {
            Ok(()) => put += 1,
            Err(e) => break e,
        }
        assert!(put < 1000, "the ring never filled");
    };
    assert!(err.is_disconnected(), "{err:?}");
    assert!(put > 10);
}

#[test]
fn joinable_queue_counts_task_done() {
    let q: JoinableQueue<u32> = JoinableQueue::new().unwrap();
    let worker = {
        let q = q.clone();
        Process::new(move || {
            for _ in q.iter() {
                std::thread::sleep(std::time::Duration::from_millis(1));
                q.task_done().unwrap();
            }
        })
    };
    for i in 0..50 {
        q.put(&i).unwrap();
    }
    assert_eq!(q.unfinished(), 50);
    assert!(q.join_timeout(ms(50)).unwrap_err().is_timeout());
    worker.start().unwrap();
    q.join_timeout(secs(30)).unwrap();
    assert_eq!(q.unfinished(), 0);
    assert!(matches!(q.task_done(), Err(Error::InvalidState(_))));
    q.put_pill().unwrap();
    assert!(worker.join_timeout(secs(30)).unwrap());
}

#[test]
fn bad_capacity_is_an_error() {
    for bad in [0, 100, 4095, (1 << 30) + 1] {
        let err = Queue::<u8>::with_capacity(bad).unwrap_err();
        assert!(
            matches!(
                err,
                Error::InvalidArgument {
                    name: "capacity",
                    ..
                }
            ),
            "{err:?}"
        );
    }
}

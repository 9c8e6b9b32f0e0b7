//! SharedArray / SharedValue / PodVec across forked processes, and the no-leak guarantees: no
//! `/dev/shm` entry and no descriptor left behind, memory returned after a crash.

mod common;

use common::{fork_lock, secs};

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use multiproc::{Event, Lock, PodVec, Process, Queue, SharedArray, SharedValue};

fn join_ok(ps: &[Process]) {
    for p in ps {
        if !p.join_timeout(secs(120)).unwrap() {
            p.kill().unwrap();
            p.join().unwrap();
            panic!("a worker did not finish in time");
        }
        assert_eq!(p.exitcode(), Some(0));
    }
}

fn open_fds() -> BTreeSet<String> {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

/// `/dev/shm` entries; CPython's `psm_*`/`sem.*` of other programs on the machine are ignored.
fn dev_shm() -> BTreeSet<String> {
    std::fs::read_dir("/dev/shm")
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| !n.starts_with("psm_") && !n.starts_with("sem."))
                .collect()
        })
        .unwrap_or_default()
}

fn shmem_kib() -> u64 {
    let info = std::fs::read_to_string("/proc/meminfo").unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("Shmem:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn workers_write_disjoint_chunks_and_the_parent_reads() {
    let _f = fork_lock();
    const N: usize = 1 << 20;
    const WORKERS: usize = 4;
    let a = SharedArray::<f64>::new(N).unwrap();
    let ps: Vec<Process> = (0..WORKERS)
        .map(|w| {
            let a = a.clone();
            Process::new(move || {
                let chunk = N / WORKERS;
                // SAFETY: each worker writes only its own chunk; the parent reads after joining.
                let all = unsafe { a.as_mut_slice() };
                for (i, x) in all[w * chunk..(w + 1) * chunk].iter_mut().enumerate() {
                    *x = (w * chunk + i) as f64;
                }
            })
        })
        .collect();
    for p in &ps {
        p.start().unwrap();
    }
    join_ok(&ps);
    let v = a.to_vec().unwrap();
    assert!(v.iter().enumerate().all(|(i, &x)| x == i as f64));
}

#[test]
fn shared_value_under_a_lock_and_under_its_own_lock() {
    let _f = fork_lock();
    let v = SharedValue::new(0i64).unwrap();
    let lock = Lock::new().unwrap();
    // Two locking disciplines, one after the other (mixed at once they would not exclude each
    // other): a separate Lock around load + store, then the value's own lock.
    for own_lock in [false, true] {
        let ps: Vec<Process> = (0..3)
            .map(|_| {
                let (v, lock) = (v.clone(), lock.clone());
                Process::new(move || {
                    for _ in 0..2000 {
                        if own_lock {
                            *v.lock().unwrap() -= 1;
                        } else {
                            let _g = lock.acquire().unwrap();
                            v.store(v.load().unwrap() + 1).unwrap();
                        }
                    }
                })
            })
            .collect();
        for p in &ps {
            p.start().unwrap();
        }
        join_ok(&ps);
        assert_eq!(v.load().unwrap(), if own_lock { 0 } else { 6000 });
    }
}

#[test]
fn array_lock_guards_read_modify_write() {
    let _f = fork_lock();
    let a = SharedArray::from_slice(&[0u32; 4]).unwrap();
    let ps: Vec<Process> = (0..3)
        .map(|_| {
            let a = a.clone();
            Process::new(move || {
                for _ in 0..3000 {
                    let mut g = a.lock().unwrap();
                    for x in g.iter_mut() {
                        *x += 1;
                    }
                }
            })
        })
        .collect();
    for p in &ps {
        p.start().unwrap();
    }
    join_ok(&ps);
    assert_eq!(a.to_vec().unwrap(), [9000; 4]);
    assert!(a.get(4).is_err());
    assert!(a.copy_from_slice(&[1, 2]).is_err());
}

#[test]
fn shared_arrays_and_pod_vecs_through_a_queue() {
    let _f = fork_lock();
    // Shared objects travel by descriptor, on the queue's side channel: one made before the
    // fork (which the consumer already maps) as well as one made after it.
    let early = SharedArray::from_slice(&[1u32, 2, 3]).unwrap();
    let lock = Lock::new().unwrap();
    let q: Queue<(SharedArray<u32>, Lock)> = Queue::new().unwrap();
    let back: Queue<u32> = Queue::new().unwrap();
    let (q2, back2) = (q.clone(), back.clone());
    let p = Process::new(move || {
        let (a, lock) = q2.get_timeout(secs(60)).unwrap();
        let _g = lock.acquire().unwrap();
        a.set(0, 10).unwrap();
        back2.put(&a.to_vec().unwrap().iter().sum()).unwrap();
        // One made after the fork is received too.
        let (late, _lock) = q2.get_timeout(secs(60)).unwrap();
        late.set(3, 7).unwrap();
        back2.put(&late.to_vec().unwrap().iter().sum()).unwrap();
    });
    p.start().unwrap();
    q.put(&(early.clone(), lock.clone())).unwrap();
    assert_eq!(back.get_timeout(secs(60)).unwrap(), 15);
    assert_eq!(early.get(0).unwrap(), 10);
    let late = SharedArray::<u32>::new(4).unwrap();
    q.put(&(late.clone(), lock)).unwrap();
    assert_eq!(back.get_timeout(secs(60)).unwrap(), 7);
    assert_eq!(late.get(3).unwrap(), 7);
    join_ok(&[p]);

    // Through a Queue, a big PodVec travels by descriptor (its memory file), not through the ring.
    let q: Queue<PodVec<f64>> = Queue::new().unwrap();
    let data: Vec<f64> = (0..(1 << 20)).map(|i| i as f64).collect();
    let q2 = q.clone();
    let p = Process::new(move || {
        let v = q2.get_timeout(secs(60)).unwrap();
        assert_eq!(v.len(), 1 << 20);
        let back: Vec<f64> = v.iter().map(|x| x * 2.0).collect();
        q2.put(&back.into()).unwrap();
    });
    p.start().unwrap();
    q.put(&data.clone().into()).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    let back = q.get_timeout(secs(60)).unwrap().into_vec();
    join_ok(&[p]);
    assert!(back.iter().zip(&data).all(|(b, d)| *b == d * 2.0));
}

/// Shared objects of every kind are made, shared with children, sent through pipes and dropped:
/// afterwards this process has exactly the descriptors it had, and `/dev/shm` has no new entry.
#[test]
fn no_dev_shm_entries_and_no_leaked_descriptors() {
    let _f = fork_lock();
    // Memory files kept by earlier tests of this binary are not this test's.
    PodVec::<u8>::release_kept();
    let (fds_before, shm_before) = (open_fds(), dev_shm());
    {
        let a = SharedArray::<u64>::new(1 << 16).unwrap();
        let v = SharedValue::new(1u8).unwrap();
        let lock = Lock::new().unwrap();
        let ev = Event::new().unwrap();
        let (parent, child) =
            multiproc::pipe::<(SharedArray<u64>, PodVec<u8>), (u64, PodVec<u8>)>().unwrap();
        let (a2, v2) = (a.clone(), v.clone());
        let p = Process::new(move || {
            let _g = lock.acquire().unwrap();
            a2.set(0, 5).unwrap();
            v2.store(2).unwrap();
            let (got, bytes) = child.recv_timeout(secs(60)).unwrap();
            let n = got.get(1).unwrap() + bytes.len() as u64;
            child.send(&(n, bytes)).unwrap();
            ev.set();
        });
        p.start().unwrap();
        a.set(1, 10).unwrap();
        parent
            .send(&(a.clone(), vec![0u8; 1 << 20].into()))
            .unwrap();
        let (n, bytes) = parent.recv_timeout(secs(60)).unwrap();
        assert_eq!(n, 10 + (1 << 20));
        assert!(format!("{bytes:?}").contains("mapped: true"));
        join_ok(&[p]);
        assert_eq!(a.get(0).unwrap(), 5);
        assert_eq!(v.load().unwrap(), 2);
    }
    // Received PodVec memory is kept for reuse until released.
    PodVec::<u8>::release_kept();
    assert_eq!(open_fds(), fds_before, "descriptors leaked");
    assert_eq!(dev_shm(), shm_before, "entries appeared in /dev/shm");
}

/// The memory of an array goes back to the kernel when its last holder is SIGKILLed.
#[test]
fn memory_is_freed_after_a_crash() {
    let _f = fork_lock();
    const MIB: usize = 256;
    for attempt in 0.. {
        let ready = Event::new().unwrap();
        let r = ready.clone();
        let p = Process::new(move || {
            let a = SharedArray::<u8>::new(MIB << 20).unwrap();
            // SAFETY: only this process has the array.
            unsafe { a.as_mut_slice() }.fill(1);
            r.set();
            std::thread::sleep(secs(600));
        });
        p.start().unwrap();
        assert!(ready.wait_timeout(secs(60)));
        let during = shmem_kib();
        p.kill().unwrap();
        assert!(p.join_timeout(secs(30)).unwrap());
        let deadline = Instant::now() + secs(5);
        let mut after = shmem_kib();
        while after + (MIB as u64 * 1024 * 3 / 4) > during && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
            after = shmem_kib();
        }
        let freed = during.saturating_sub(after);
        // Other programs on the machine move Shmem too: allow a few retries.
        if freed >= MIB as u64 * 1024 * 3 / 4 {
            break;
        }
        assert!(attempt < 3, "only {freed} KiB of shared memory freed");
    }
}

/// A process that dies holding an array's lock: the next `lock` gets the guard with the error,
/// and can repair the data.
#[test]
fn array_lock_of_a_dead_holder_is_recovered() {
    let _f = fork_lock();
    let a = SharedArray::from_slice(&[1u64, 1]).unwrap();
    let a2 = a.clone();
    let p = Process::new(move || {
        let mut g = a2.lock().unwrap();
        g[0] = 2; // half of an update that keeps both elements equal
        std::mem::forget(g);
        std::process::exit(0);
    });
    p.start().unwrap();
    join_ok(&[p]);
    match a.lock_timeout(secs(10)) {
        Err(multiproc::AcquireError::OwnerDied(mut g)) => {
            assert_eq!(*g, [2, 1]);
            g[1] = g[0]; // repair
        }
        other => panic!("expected OwnerDied, got {other:?}"),
    }
    assert_eq!(a.to_vec().unwrap(), [2, 2]);
    assert!(format!("{:?}", SharedValue::new(3u8).unwrap()).contains("Some(3)"));
}

/// A big `PodVec` goes through a `Queue` by descriptor (its memory file on the queue's side
/// channel): an 8 MiB one to a worker, which doubles it in place and puts it back, with `put`
/// (a copy) and with `put_owned` (forwarded as is).
#[test]
fn pod_vec_through_a_queue_to_a_worker_and_back() {
    let _f = fork_lock();
    let (to, from): (Queue<PodVec<f64>>, Queue<PodVec<f64>>) =
        (Queue::new().unwrap(), Queue::new().unwrap());
    let (to2, from2) = (to.clone(), from.clone());
    let p = Process::new(move || {
        for owned in [false, true] {
            let mut v = to2.get_timeout(secs(60)).unwrap();
            assert!(format!("{v:?}").contains("mapped: true"), "{v:?}");
            for x in v.iter_mut() {
                *x *= 2.0;
            }
            if owned {
                from2.put_owned(v).unwrap();
            } else {
                from2.put(&v).unwrap();
            }
        }
    });
    p.start().unwrap();
    let data: Vec<f64> = (0..(1 << 20)).map(|i| i as f64 + 0.5).collect();
    for _ in 0..2 {
        to.put(&data.clone().into()).unwrap();
        let back = from.get_timeout(secs(60)).unwrap();
        assert!(format!("{back:?}").contains("mapped: true"), "{back:?}");
        assert_eq!(back.len(), data.len());
        assert!(back.iter().zip(&data).all(|(b, d)| *b == d * 2.0));
    }
    join_ok(&[p]);
}

/// 200 mid-size (300 KiB) `PodVec`s from 2 producers to 2 consumers: each arrives exactly once,
/// whole.
#[test]
fn many_pod_vecs_two_producers_two_consumers_exactly_once() {
    let _f = fork_lock();
    const PER: u64 = 100;
    const LEN: usize = 300 * 1024 / 8;
    fn value(p: u64, i: u64, k: u64) -> u64 {
        (p << 40) | (i << 20) | k
    }
    let q: Queue<PodVec<u64>> = Queue::new().unwrap();
    let seen: Queue<(u64, u64)> = Queue::new().unwrap();
    let producers: Vec<Process> = (0..2u64)
        .map(|p| {
            let q = q.clone();
            Process::new(move || {
                for i in 0..PER {
                    let v: Vec<u64> = (0..LEN as u64).map(|k| value(p, i, k)).collect();
                    q.put(&v.into()).unwrap();
                }
            })
        })
        .collect();
    let consumers: Vec<Process> = (0..2)
        .map(|_| {
            let (q, seen) = (q.clone(), seen.clone());
            Process::new(move || {
                let mut it = q.iter();
                for v in &mut it {
                    assert!(format!("{v:?}").contains("mapped: true"), "{v:?}");
                    assert_eq!(v.len(), LEN);
                    let (p, i) = (v[0] >> 40, (v[0] >> 20) & 0xf_ffff);
                    assert!(v.iter().zip(0..).all(|(&x, k)| x == value(p, i, k)));
                    seen.put(&(p, i)).unwrap();
                }
                assert!(
                    matches!(it.stop_reason(), Some(multiproc::Error::Stopped)),
                    "{:?}",
                    it.stop_reason()
                );
            })
        })
        .collect();
    for p in producers.iter().chain(&consumers) {
        p.start().unwrap();
    }
    let mut got = BTreeSet::new();
    for _ in 0..2 * PER {
        let id = seen.get_timeout(secs(120)).unwrap();
        assert!(got.insert(id), "{id:?} arrived twice");
    }
    join_ok(&producers);
    for _ in &consumers {
        q.put_pill().unwrap();
    }
    join_ok(&consumers);
    let want: BTreeSet<(u64, u64)> = (0..2).flat_map(|p| (0..PER).map(move |i| (p, i))).collect();
    assert_eq!(got, want);
}

/// The producer has exited (and been reaped) before the consumer gets: the kernel kept the
/// memory file alive in the side channel, and the vector arrives intact.
#[test]
fn a_pod_vec_outlives_the_process_that_put_it() {
    let _f = fork_lock();
    let q: Queue<PodVec<u32>> = Queue::new().unwrap();
    let q2 = q.clone();
    let p = Process::new(move || {
        let v: Vec<u32> = (0..(2u32 << 20)).map(|i| i ^ 0x5a5a).collect();
        q2.put(&v.into()).unwrap();
    });
    p.start().unwrap();
    join_ok(&[p]);
    let v = q.get_timeout(secs(10)).unwrap();
    assert!(format!("{v:?}").contains("mapped: true"), "{v:?}");
    assert_eq!(v.len(), 2 << 20);
    assert!(v.iter().zip(0u32..).all(|(&x, i)| x == i ^ 0x5a5a));
}

/// Hundreds of `PodVec`s (each of a new length, so each in a new memory file) to a worker and
/// back: neither the descriptors of this process nor the shared memory of the machine grow, and
/// once the queues are dropped every descriptor is closed.
#[test]
fn pod_vecs_through_queues_leak_no_descriptors_and_no_memory() {
    let _f = fork_lock();
    const ROUNDS: usize = 300;
    const BASE: usize = 1 << 18; // 2 MiB of u64
    PodVec::<u8>::release_kept();
    let fds_before = open_fds();
    {
        let (to, from): (Queue<PodVec<u64>>, Queue<PodVec<u64>>) =
            (Queue::new().unwrap(), Queue::new().unwrap());
        let (to2, from2) = (to.clone(), from.clone());
        let p = Process::new(move || {
            while let Ok(mut v) = to2.get_timeout(secs(60)) {
                if v.is_empty() {
                    break;
                }
                v[0] += 1;
                if v.len() % 2 == 0 {
                    from2.put_owned(v).unwrap();
                } else {
                    from2.put(&v).unwrap();
                }
            }
        });
        p.start().unwrap();
        let round = |r: usize| {
            let v: PodVec<u64> = vec![r as u64; BASE + r].into();
            to.put(&v).unwrap();
            let back = from.get_timeout(secs(60)).unwrap();
            assert_eq!(
                (back.len(), back[0], back[BASE - 1]),
                (BASE + r, r as u64 + 1, r as u64)
            );
        };
        (0..20).for_each(round);
        let fds_warm = open_fds().len();
        // A leak would be 2 MiB per round, 200 MiB per block; Shmem is machine-wide and other
        // programs move it, so one block of the three within bounds is enough.
        let mut growth = Vec::new();
        for block in 0..3 {
            let shmem_start = shmem_kib();
            (20 + block * ROUNDS / 3..20 + (block + 1) * ROUNDS / 3).for_each(round);
            assert_eq!(open_fds().len(), fds_warm, "descriptors grew");
            growth.push(shmem_kib() as i64 - shmem_start as i64);
        }
        assert!(
            growth.iter().any(|&g| g < 96 * 1024),
            "shared memory grew by {growth:?} KiB in each block of {} rounds",
            ROUNDS / 3
        );
        to.put(&Vec::new().into()).unwrap();
        join_ok(&[p]);
    }
    PodVec::<u64>::release_kept();
    assert_eq!(open_fds(), fds_before, "descriptors leaked");
}

/// Chaos: producers of big `PodVec`s are SIGKILLed at random moments while they put (so some die
/// between sending an item's descriptors and writing its record). Consumers must never see an
/// error or a torn item, never hang, and get every item exactly once: all of the producer that
/// lived, and of each killed one a gap-free prefix of what it put.
#[test]
fn producers_killed_while_putting_pod_vecs_lose_nothing_they_finished() {
    let _f = fork_lock();
    const PER: u64 = 300;
    const LEN: usize = 300 * 1024 / 8;
    fn value(p: u64, i: u64, k: u64) -> u64 {
        (p << 40) | (i << 20) | k
    }
    let fds_before = open_fds().len();
    let mut rng = common::Rng::new(0x5eed);
    for round in 0..8 {
        let q: Queue<PodVec<u64>> = Queue::new().unwrap();
        let seen: Queue<(u64, u64)> = Queue::new().unwrap();
        let producers: Vec<Process> = (0..3u64)
            .map(|p| {
                let q = q.clone();
                Process::new(move || {
                    for i in 0..PER {
                        let v: Vec<u64> = (0..LEN as u64).map(|k| value(p, i, k)).collect();
                        q.put(&v.into()).unwrap();
                    }
                })
            })
            .collect();
        let consumers: Vec<Process> = (0..2)
            .map(|_| {
                let (q, seen) = (q.clone(), seen.clone());
                Process::new(move || {
                    let mut it = q.iter();
                    for v in &mut it {
                        assert_eq!(v.len(), LEN);
                        let (p, i) = (v[0] >> 40, (v[0] >> 20) & 0xf_ffff);
                        assert!(v.iter().zip(0..).all(|(&x, k)| x == value(p, i, k)));
                        seen.put(&(p, i)).unwrap();
                    }
                    assert!(
                        matches!(it.stop_reason(), Some(multiproc::Error::Stopped)),
                        "{:?}",
                        it.stop_reason()
                    );
                })
            })
            .collect();
        for p in producers.iter().chain(&consumers) {
            p.start().unwrap();
        }
        // Producers 0 and 1 die mid-stream; producer 2 finishes.
        for victim in &producers[..2] {
            std::thread::sleep(Duration::from_micros(1000 + rng.below(20_000)));
            victim.kill().unwrap();
        }
        for p in &producers {
            assert!(
                p.join_timeout(secs(120)).unwrap(),
                "round {round}: a producer hung"
            );
        }
        assert_eq!(producers[2].exitcode(), Some(0));
        for _ in &consumers {
            q.put_pill().unwrap();
        }
        join_ok(&consumers);
        let mut got: Vec<BTreeSet<u64>> = vec![BTreeSet::new(); 3];
        loop {
            match seen.try_get() {
                Ok((p, i)) => {
                    assert!(
                        got[p as usize].insert(i),
                        "round {round}: ({p}, {i}) arrived twice"
                    )
                }
                // Empty (every other holder has ended).
                Err(e) if e.is_empty_queue() || e.is_disconnected() => break,
                Err(e) => panic!("round {round}: {e}"),
            }
        }
        eprintln!(
            "round {round}: items of the killed producers {} and {}; exit codes {:?} {:?}",
            got[0].len(),
            got[1].len(),
            producers[0].exitcode(),
            producers[1].exitcode()
        );
        assert_eq!(
            got[2].len() as u64,
            PER,
            "round {round}: the live producer lost items"
        );
        for (p, items) in got.iter().enumerate().take(2) {
            let n = items.len() as u64;
            assert_eq!(
                items.iter().copied().collect::<Vec<_>>(),
                (0..n).collect::<Vec<_>>(),
                "round {round}: producer {p}'s items are not a gap-free prefix"
            );
        }
    }
    multiproc::PodVec::<u64>::release_kept();
    assert!(
        open_fds().len() <= fds_before,
        "descriptors leaked: {} before, {} after",
        fds_before,
        open_fds().len()
    );
}

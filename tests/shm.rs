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
    // An array made before the fork travels by id: the consumer already maps it.
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
        // One made after the fork cannot be resolved here.
        let err = q2.get_timeout(secs(60)).unwrap_err();
        assert!(matches!(err, multiproc::Error::Codec(_)), "{err}");
        back2.put(&0).unwrap();
    });
    p.start().unwrap();
    q.put(&(early.clone(), lock.clone())).unwrap();
    assert_eq!(back.get_timeout(secs(60)).unwrap(), 15);
    assert_eq!(early.get(0).unwrap(), 10);
    q.put(&(SharedArray::new(4).unwrap(), lock)).unwrap();
    assert_eq!(back.get_timeout(secs(60)).unwrap(), 0);
    join_ok(&[p]);

    // Through a Queue, a PodVec travels inline, as one block of bytes.
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

//! Process-shared Lock, RLock, Condition, Semaphore, Event and Barrier across forked processes,
//! including a lock holder killed with SIGKILL.

mod common;

use common::{fork_lock, ms, secs};

use std::time::{Duration, Instant};

use multiproc::{
    AcquireError, Barrier, Condition, Error, Event, Lock, Process, RLock, Semaphore, SharedArray,
    SharedValue,
};

/// Tests of this file fork: one at a time, so no other test thread holds a libc lock at fork.
/// Joins every process within `timeout` each, killing stragglers, and returns the exit codes.
fn join_all(ps: &[Process], timeout: Duration) -> Vec<Option<i32>> {
    ps.iter()
        .map(|p| {
            if !p.join_timeout(timeout).unwrap() {
                p.kill().unwrap();
                p.join().unwrap();
                return None;
            }
            p.exitcode()
        })
        .collect()
}

#[test]
fn contended_lock_gives_the_exact_total() {
    let _f = fork_lock();
    const PROCS: usize = 4;
    let per = 100_000;
    let lock = Lock::new().unwrap();
    let total = SharedArray::<u64>::new(1).unwrap();
    let ps: Vec<Process> = (0..PROCS)
        .map(|_| {
            let (lock, total) = (lock.clone(), total.clone());
            Process::new(move || {
                for _ in 0..per {
                    let _g = lock.acquire().unwrap();
                    // SAFETY: every writer holds `lock` while it touches the element.
                    unsafe { total.as_mut_slice()[0] += 1 };
                }
            })
        })
        .collect();
    for p in &ps {
        p.start().unwrap();
    }
    assert_eq!(join_all(&ps, secs(120)), vec![Some(0); PROCS]);
    assert_eq!(total.get(0).unwrap(), (PROCS * per) as u64);
}

#[test]
fn lock_try_and_timeout_while_held_elsewhere() {
    let _f = fork_lock();
    let lock = Lock::new().unwrap();
    let (held, release) = (Event::new().unwrap(), Event::new().unwrap());
    let p = {
        let (lock, held, release) = (lock.clone(), held.clone(), release.clone());
        Process::new(move || {
            let _g = lock.acquire().unwrap();
            held.set();
            assert!(release.wait_timeout(secs(30)));
        })
    };
    p.start().unwrap();
    assert!(held.wait_timeout(secs(30)));
    assert!(matches!(lock.try_acquire(), Err(AcquireError::WouldBlock)));
    let t = Instant::now();
    match lock.acquire_timeout(ms(100)) {
        Err(AcquireError::Timeout(after)) => assert!(after >= ms(90), "{after:?}"),
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert!(t.elapsed() >= ms(90));
    release.set();
    let g = lock.acquire_timeout(secs(30)).unwrap();
    drop(g);
    assert_eq!(join_all(&[p], secs(30)), [Some(0)]);
}

#[test]
fn killed_holder_is_reported_and_the_lock_handed_over() {
    let _f = fork_lock();
    let lock = Lock::new().unwrap();
    let held = Event::new().unwrap();
    let holder = {
        let (lock, held) = (lock.clone(), held.clone());
        Process::new(move || {
            let _g = lock.acquire().unwrap();
            held.set();
            std::thread::sleep(secs(600));
        })
    };
    holder.start().unwrap();
    assert!(held.wait_timeout(secs(30)));
    // A second process blocks on the lock; it must get it, with the error, once the holder dies.
    let waiter = {
        let lock = lock.clone();
        Process::new(move || {
            let code = match lock.acquire_timeout(secs(60)) {
                Err(AcquireError::OwnerDied(_guard)) => 7,
                Ok(_) => 1,
                Err(_) => 2,
            };
            std::process::exit(code);
        })
    };
    waiter.start().unwrap();
    std::thread::sleep(ms(100));
    holder.kill().unwrap();
    assert_eq!(join_all(&[holder], secs(30)), [Some(-9)]);
    assert_eq!(join_all(&[waiter], secs(60)), [Some(7)]);
    // The waiter released it normally: the next acquirer gets it clean.
    let g = lock.acquire_timeout(secs(10)).unwrap();
    drop(g);

    // And with `?`, the error converts to Error::OwnerDied and releases the lock.
    let holder = {
        let (lock, held) = (lock.clone(), Event::new().unwrap());
        let h2 = held.clone();
        let p = Process::new(move || {
            let g = lock.acquire().unwrap();
            h2.set();
            std::mem::forget(g);
            std::process::exit(0);
        });
        p.start().unwrap();
        assert!(held.wait_timeout(secs(30)));
        p
    };
    assert_eq!(join_all(&[holder], secs(30)), [Some(0)]);
    let err: Error = lock.acquire_timeout(secs(10)).unwrap_err().into();
    assert!(matches!(err, Error::OwnerDied { .. }), "{err}");
    assert!(lock.try_acquire().is_ok());
}

#[test]
fn rlock_is_reentrant_and_exclusive() {
    let _f = fork_lock();
    let lock = RLock::new().unwrap();
    let a = lock.acquire().unwrap();
    let b = lock.acquire().unwrap();
    let probe = {
        let lock = lock.clone();
        Process::new(move || {
            assert!(matches!(lock.try_acquire(), Err(AcquireError::WouldBlock)));
        })
    };
    probe.start().unwrap();
    assert_eq!(join_all(&[probe], secs(30)), [Some(0)]);
    drop(b);
    drop(a);
    let probe = {
        let lock = lock.clone();
        Process::new(move || drop(lock.try_acquire().unwrap()))
    };
    probe.start().unwrap();
    assert_eq!(join_all(&[probe], secs(30)), [Some(0)]);
}

#[test]
fn barrier_rounds() {
    let _f = fork_lock();
    const PARTIES: u32 = 4;
    const ROUNDS: usize = 20;
    let barrier = Barrier::new(PARTIES).unwrap();
    let arrived = SharedArray::<u32>::new(ROUNDS).unwrap();
    let party = |barrier: Barrier, arrived: SharedArray<u32>| {
        for round in 0..ROUNDS {
            arrived.lock().unwrap()[round] += 1;
            barrier.wait_timeout(secs(60)).unwrap();
            // Everybody has arrived in this round, and nobody can be in round + 2 yet.
            assert_eq!(arrived.get(round).unwrap(), PARTIES);
        }
    };
    let ps: Vec<Process> = (1..PARTIES)
        .map(|_| {
            let (b, a) = (barrier.clone(), arrived.clone());
            Process::new(move || party(b, a))
        })
        .collect();
    for p in &ps {
        p.start().unwrap();
    }
    party(barrier.clone(), arrived.clone());
    assert_eq!(join_all(&ps, secs(60)), vec![Some(0); ps.len()]);
    assert_eq!(barrier.n_waiting(), 0);
}

#[test]
fn barrier_timeout_breaks_it_until_reset() {
    let _f = fork_lock();
    let barrier = Barrier::new(2).unwrap();
    let err = barrier.wait_timeout(ms(50)).unwrap_err();
    assert!(err.is_timeout(), "{err}");
    assert!(barrier.is_broken());
    assert!(matches!(
        barrier.wait_timeout(ms(50)),
        Err(Error::BrokenBarrier)
    ));
    barrier.reset().unwrap();
    let b = barrier.clone();
    let p = Process::new(move || {
        b.wait_timeout(secs(30)).unwrap();
    });
    p.start().unwrap();
    barrier.wait_timeout(secs(30)).unwrap();
    assert_eq!(join_all(&[p], secs(30)), [Some(0)]);
}

#[test]
fn event_wakes_a_waiting_process() {
    let _f = fork_lock();
    let (go, ack) = (Event::new().unwrap(), Event::new().unwrap());
    let woke_after = SharedValue::new(0u64).unwrap();
    let p = {
        let (go, ack, woke_after) = (go.clone(), ack.clone(), woke_after.clone());
        Process::new(move || {
            assert!(!go.is_set());
            ack.set();
            assert!(go.wait_timeout(secs(30)));
            ack.clear();
            woke_after.store(1).unwrap();
        })
    };
    p.start().unwrap();
    assert!(ack.wait_timeout(secs(30)));
    std::thread::sleep(ms(100));
    let t = Instant::now();
    go.set();
    assert_eq!(join_all(&[p], secs(30)), [Some(0)]);
    assert!(t.elapsed() < secs(5));
    assert_eq!(woke_after.load().unwrap(), 1);
    assert!(!ack.is_set());
    let e = Event::new().unwrap();
    assert!(!e.wait_timeout(ms(20)));
}

#[test]
fn semaphore_bound_is_never_exceeded() {
    let _f = fork_lock();
    const BOUND: u32 = 2;
    let sem = Semaphore::new(BOUND).unwrap();
    // [holders now, most holders seen]
    let stats = SharedArray::<u32>::new(2).unwrap();
    let iters = 200;
    let ps: Vec<Process> = (0..4)
        .map(|_| {
            let (sem, stats) = (sem.clone(), stats.clone());
            Process::new(move || {
                for _ in 0..iters {
                    let _unit = sem.acquire_timeout(secs(60)).unwrap();
                    {
                        let mut s = stats.lock().unwrap();
                        s[0] += 1;
                        s[1] = s[1].max(s[0]);
                    }
                    std::thread::sleep(Duration::from_micros(200));
                    stats.lock().unwrap()[0] -= 1;
                }
            })
        })
        .collect();
    for p in &ps {
        p.start().unwrap();
    }
    assert_eq!(join_all(&ps, secs(120)), vec![Some(0); 4]);
    let s = stats.to_vec().unwrap();
    assert_eq!(s[0], 0);
    assert!(s[1] <= BOUND, "{} holders at once", s[1]);
    assert_eq!(sem.value(), BOUND);
    assert!(sem.release().is_err());
    assert!(sem.acquire_timeout(ms(10)).is_ok());
}

#[test]
fn condition_notifies_across_processes() {
    let _f = fork_lock();
    let cond = Condition::new().unwrap();
    let items = SharedArray::<u32>::new(1).unwrap();
    let consumer = {
        let (cond, items) = (cond.clone(), items.clone());
        Process::new(move || {
            let mut taken = 0;
            while taken < 5 {
                let mut g = cond.acquire().unwrap();
                let ok = cond
                    .wait_while(&mut g, secs(30), || items.get(0).unwrap() == 0)
                    .unwrap();
                assert!(ok);
                items.lock().unwrap()[0] -= 1;
                taken += 1;
            }
        })
    };
    consumer.start().unwrap();
    for _ in 0..5 {
        let _g = cond.acquire().unwrap();
        items.lock().unwrap()[0] += 1;
        cond.notify();
    }
    assert_eq!(join_all(&[consumer], secs(60)), [Some(0)]);
    assert_eq!(items.get(0).unwrap(), 0);
}

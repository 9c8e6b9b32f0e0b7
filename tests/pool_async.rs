//! Asynchronous pool calls make progress in the background: `map_async`, `apply_async` and
//! `imap` run while the caller waits on something else, callbacks run in a thread of the parent
//! without `get`, an `AsyncResult` is a future woken by the pool's driver thread (tested under
//! tokio), `as_completed` yields in completion order, and a synchronous call made while async
//! work runs is not held up by the driver.

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use multiproc::{AcquireError, Pool, SharedArray, as_completed};

use common::{Watchdog, fork_lock, secs};

/// Polls `cond` until it holds, at most `limit` (a bound, not a timing assertion).
fn eventually(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let until = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < until, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn short(x: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(5));
    x * 10
}

fn sq(x: u64) -> u64 {
    x * x
}

/// The pool's driver threads alive in this process.
fn driver_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .flatten()
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm"))
                .is_ok_and(|c| c.trim() == "multiproc-pool")
        })
        .count()
}

fn locked(a: &SharedArray<u64>) -> multiproc::ArrayGuard<'_, u64> {
    a.lock().or_else(AcquireError::recover).unwrap()
}

/// Waits (bounded) until `gates[i]` is open, then counts itself in `gates[0]` and returns `i`.
fn gated(input: (SharedArray<u64>, usize)) -> usize {
    let (gates, i) = input;
    let until = Instant::now() + secs(60);
    while locked(&gates)[i] == 0 && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(1));
    }
    locked(&gates)[0] += 1;
    i
}

#[test]
fn map_async_completes_and_runs_callbacks_while_the_parent_waits_elsewhere() {
    let _l = fork_lock();
    let _w = Watchdog::new(secs(120));
    let me = std::thread::current().id();
    let pool = Pool::with_processes(2).unwrap();
    let (tx, rx) = mpsc::channel();
    let r = pool
        .map_async(short, 0..20)
        .unwrap()
        .callback(move |v: &Vec<u64>| {
            let _ = tx.send((v.len(), std::thread::current().id(), std::process::id()));
        });
    // The parent waits on a channel, not on the pool: only the driver thread can finish it.
    let (len, thread, pid) = rx
        .recv_timeout(secs(60))
        .expect("the callback ran without get");
    assert_eq!(len, 20);
    assert_ne!(thread, me, "the callback ran in the driver thread");
    assert_eq!(pid, std::process::id(), "the callback ran in the parent");
    // As in Python, the result is ready once its callback has returned (the send above happens
    // inside the callback, so ready() may still be false for a moment).
    eventually(secs(60), "ready after the callback", || r.ready());
    assert_eq!(
        r.get().unwrap(),
        (0..20).map(|x| x * 10).collect::<Vec<_>>()
    );

    // ready() turns true by itself (it does not drive the pool).
    let r = pool.map_async(short, 0..20).unwrap();
    eventually(secs(60), "map_async ready", || r.ready());
    assert_eq!(r.get().unwrap()[19], 190);

    // apply_async: callbacks without get, error callbacks too.
    let (tx, rx) = mpsc::channel();
    let results: Vec<_> = (0..6u64)
        .map(|x| {
            let tx = tx.clone();
            pool.apply_async(sq, x)
                .unwrap()
                .callback(move |v| tx.send(*v).unwrap())
        })
        .collect();
    let mut got: Vec<u64> = (0..6).map(|_| rx.recv_timeout(secs(60)).unwrap()).collect();
    got.sort();
    assert_eq!(got, vec![0, 1, 4, 9, 16, 25]);
    eventually(secs(60), "all ready", || results.iter().all(|r| r.ready()));
    drop(pool);
    assert_eq!(driver_threads(), 0, "the driver thread ended with the pool");
}

#[test]
fn imap_runs_its_first_inputs_before_next_is_called() {
    let _l = fork_lock();
    let _w = Watchdog::new(secs(120));
    let pool = Pool::with_processes(2).unwrap();
    let gates = SharedArray::<u64>::new(9).unwrap();
    for i in 1..9 {
        locked(&gates)[i] = 1;
    }
    let it = pool
        .imap(gated, (1..9).map(|i| (gates.clone(), i)))
        .unwrap();
    // Inputs run while the caller does not touch the iterator (as many as the pool takes
    // ahead: the caller's iterator is pulled only by `imap` and `next`): each worker got some.
    eventually(secs(60), "imap inputs run in the background", || {
        locked(&gates)[0] >= 2
    });
    let out: Vec<usize> = it.collect::<Result<_, _>>().unwrap();
    assert_eq!(out, (1..9).collect::<Vec<_>>());
}

#[test]
fn a_sync_call_is_not_held_up_by_the_driver_waiting_on_async_work() {
    let _l = fork_lock();
    let _w = Watchdog::new(secs(120));
    let pool = Pool::with_processes(3).unwrap();
    let gates = SharedArray::<u64>::new(3).unwrap();
    // Two tasks that wait for their gates: the driver sits in poll for them.
    let r = pool
        .map_async(gated, [(gates.clone(), 1), (gates.clone(), 2)])
        .unwrap();
    eventually(secs(60), "driver busy", || !r.ready());
    // The third worker answers at once; the driver steps aside for this thread.
    let t = Instant::now();
    for x in 0..50 {
        assert_eq!(pool.apply(sq, x).unwrap(), x * x);
    }
    eprintln!("50 applies beside the driver: {:?}", t.elapsed());
    assert!(!r.ready(), "the gated tasks are still waiting");
    locked(&gates)[1] = 1;
    locked(&gates)[2] = 1;
    assert_eq!(r.get().unwrap(), vec![1, 2]);
}

#[test]
fn as_completed_yields_in_completion_order() {
    let _l = fork_lock();
    let _w = Watchdog::new(secs(120));
    let pool = Pool::with_processes(3).unwrap();
    let gates = SharedArray::<u64>::new(4).unwrap();
    let results: Vec<_> = (1..4)
        .map(|i| pool.apply_async(gated, (gates.clone(), i)).unwrap())
        .collect();
    let mut it = as_completed(results);
    for (gate, index) in [(3usize, 2usize), (1, 0), (2, 1)] {
        locked(&gates)[gate] = 1;
        let (i, r) = it.next().unwrap();
        assert_eq!((i, r.unwrap()), (index, gate));
    }
    assert!(it.next().is_none());
}

#[test]
fn async_results_are_futures_woken_by_the_driver_under_tokio() {
    let _l = fork_lock();
    let _w = Watchdog::new(secs(120));
    let pool = Pool::with_processes(2).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        assert_eq!(pool.apply_async(sq, 12).unwrap().await.unwrap(), 144);
        let all = pool.map_async(short, 0..20).unwrap().await.unwrap();
        assert_eq!(all.len(), 20);
        // Several at once, joined by tokio.
        let a = pool.apply_async(short, 1).unwrap();
        let b = pool.apply_async(short, 2).unwrap();
        let (a, b) = tokio::join!(a, b);
        assert_eq!((a.unwrap(), b.unwrap()), (10, 20));
        // A failure comes out as the task's error.
        let err = pool
            .apply_async(|x: u64| if x == 0 { panic!("zero") } else { x }, 0)
            .unwrap()
            .await
            .unwrap_err();
        assert!(
            matches!(err, multiproc::Error::TaskPanicked { .. }),
            "{err}"
        );
    });
    // Dropping the pool fails what is still pending.
    let pending = pool
        .apply_async(gated, (SharedArray::new(2).unwrap(), 1))
        .unwrap();
    drop(pool);
    let err = rt.block_on(pending).unwrap_err();
    assert!(matches!(err, multiproc::Error::Disconnected(_)), "{err}");
}

#[test]
fn get_and_join_return_after_the_callbacks_ran_as_in_python() {
    let _l = fork_lock();
    let _w = Watchdog::new(secs(120));
    let pool = Pool::with_processes(2).unwrap();
    let ran = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    // A slow callback, run by the driver thread: get waits for it.
    let r = {
        let ran = ran.clone();
        pool.apply_async(sq, 3).unwrap().callback(move |_| {
            std::thread::sleep(Duration::from_millis(50));
            ran.fetch_add(1, Ordering::SeqCst);
        })
    };
    assert_eq!(r.get().unwrap(), 9);
    assert_eq!(
        ran.load(Ordering::SeqCst),
        1,
        "get returned before the callback ran"
    );
    // join waits for every callback the driver took.
    let results: Vec<_> = (0..10)
        .map(|x| {
            let ran = ran.clone();
            pool.apply_async(sq, x).unwrap().callback(move |_| {
                std::thread::sleep(Duration::from_millis(10));
                ran.fetch_add(1, Ordering::SeqCst);
            })
        })
        .collect();
    pool.close();
    pool.join().unwrap();
    assert_eq!(
        ran.load(Ordering::SeqCst),
        11,
        "join returned before the callbacks ran"
    );
    assert!(results.iter().all(|r| r.ready()));
}

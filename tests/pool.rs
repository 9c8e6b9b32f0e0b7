//! The Pool's promises: results, chunking, failures (panic, killed worker, retries, timeout),
//! lazy imap, terminate, Drop, worker recycling, thread-count variables, bad arguments, and no
//! child process left behind.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use multiproc::{Error, Pool};

/// Pool tests run one at a time in this binary, so that "no child left" can be checked.
static FORK_LOCK: Mutex<()> = Mutex::new(());

fn lock() -> MutexGuard<'static, ()> {
    FORK_LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// Pids of this process's children (any state, zombies included).
fn children() -> Vec<i32> {
    let me = std::process::id() as i32;
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            continue;
        };
        let ppid: i32 = rest.split_whitespace().nth(1).unwrap().parse().unwrap();
        if ppid == me {
            out.push(pid);
        }
    }
    out
}

fn assert_no_children() {
    let left = children();
    assert!(left.is_empty(), "child processes left behind: {left:?}");
}

fn square(x: u64) -> u64 {
    x.wrapping_mul(x)
}

#[test]
fn map_equals_sequential_across_chunk_sizes() {
    let _g = lock();
    {
        let pool = Pool::with_processes(3).unwrap();
        let items: Vec<u64> = (0..100_000).collect();
        let expected: Vec<u64> = items.iter().map(|&x| square(x)).collect();
        for chunk in [Some(1), Some(7), None, Some(100_000)] {
            pool.set_chunksize(chunk).unwrap();
            assert_eq!(
                pool.map(square, items.clone()).unwrap(),
                expected,
                "{chunk:?}"
            );
        }
        pool.set_chunksize(None).unwrap();
        assert_eq!(
            pool.map(square, Vec::<u64>::new()).unwrap(),
            Vec::<u64>::new()
        );
        assert_eq!(
            pool.starmap(
                |a: u32, b: String| format!("{a}{b}"),
                vec![(1, "x".to_string())]
            )
            .unwrap(),
            vec!["1x"]
        );
    }
    assert_no_children();
}

fn panics_on_1234(x: u32) -> u32 {
    if x == 1234 {
        panic!("bad input {x}");
    }
    x + 1
}

#[test]
fn a_panic_fails_only_its_input() {
    let _g = lock();
    {
        let pool = Pool::with_processes(2).unwrap();
        let err = pool.map(panics_on_1234, 0..10_000).unwrap_err();
        let panic = err.panic().expect("TaskPanicked");
        assert!(panic.message.contains("bad input 1234"), "{err}");
        let all = pool.map_results(panics_on_1234, 0..10_000).unwrap();
        for (i, r) in all.iter().enumerate() {
            if i == 1234 {
                assert!(matches!(r, Err(Error::TaskPanicked { .. })));
            } else {
                assert_eq!(*r.as_ref().unwrap(), i as u32 + 1);
            }
        }
        // No worker died for a panic.
        assert_eq!(pool.replaced_workers(), 0);
    }
    assert_no_children();
}

fn dies_on_17(x: u64) -> u64 {
    if x == 17 {
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    }
    x * 2
}

#[test]
fn a_worker_killed_mid_task_names_the_input_and_the_pool_goes_on() {
    let _g = lock();
    {
        let pool = Pool::with_processes(2).unwrap();
        for chunk in [None, Some(1), Some(10)] {
            pool.set_chunksize(chunk).unwrap();
            let started = Instant::now();
            let out = pool.map_results(dies_on_17, 0..1000).unwrap();
            assert!(started.elapsed() < secs(30));
            for (i, r) in out.iter().enumerate() {
                if i == 17 {
                    match r {
                        Err(Error::WorkerDied { signal, task, .. }) => {
                            assert_eq!(*signal, Some(9));
                            assert_eq!(task.as_deref(), Some("item #17"));
                        }
                        other => panic!("expected WorkerDied, got {other:?}"),
                    }
                } else {
                    assert_eq!(*r.as_ref().unwrap(), i as u64 * 2, "item {i} ({chunk:?})");
                }
            }
            let err = pool.map(dies_on_17, 0..100).unwrap_err();
            assert!(err.to_string().contains("item #17"), "{err}");
            // The pool still works, with all its workers.
            assert_eq!(pool.map(square, 0..100u64).unwrap()[99], 9801);
            assert_eq!(pool.pids().len(), 2);
        }
        assert!(pool.replaced_workers() >= 3);
    }
    assert_no_children();
}

/// Kills its worker the first time it sees input 5 (a marker file remembers).
fn dies_once(marker: &String, x: u64) -> u64 {
    if x == 5 && std::fs::File::create_new(marker).is_ok() {
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    }
    x + 100
}

#[test]
fn retries_rerun_an_input_whose_worker_died() {
    let _g = lock();
    {
        let marker = std::env::temp_dir()
            .join(format!("multiproc-retry-{}", std::process::id()))
            .to_string_lossy()
            .into_owned();
        let _ = std::fs::remove_file(&marker);
        let pool = Pool::builder().processes(2).retries(1).build().unwrap();
        let out = pool.map_with(&marker, dies_once, 0..50).unwrap();
        assert_eq!(out, (100..150).collect::<Vec<_>>());
        assert_eq!(pool.replaced_workers(), 1);
        let _ = std::fs::remove_file(&marker);
    }
    assert_no_children();
}

fn endless_on_3(x: u64) -> u64 {
    if x == 3 {
        loop {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    x
}

#[test]
fn task_timeout_kills_an_endless_task() {
    let _g = lock();
    {
        let pool = Pool::builder()
            .processes(2)
            .task_timeout(Duration::from_millis(300))
            .build()
            .unwrap();
        let started = Instant::now();
        let out = pool.map_results(endless_on_3, 0..20).unwrap();
        assert!(started.elapsed() < secs(20));
        for (i, r) in out.iter().enumerate() {
            if i == 3 {
                assert!(matches!(r, Err(e) if e.is_timeout()), "{r:?}");
            } else {
                assert_eq!(*r.as_ref().unwrap(), i as u64);
            }
        }
        assert_eq!(pool.apply(square, 5).unwrap(), 25);
    }
    assert_no_children();
}

fn vm_rss_kb() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

#[test]
fn imap_takes_an_endless_input_in_flat_memory() {
    let _g = lock();
    {
        let pool = Pool::with_processes(2).unwrap();
        let pulled = Arc::new(AtomicUsize::new(0));
        let p = pulled.clone();
        let input = (0u64..).inspect(move |_| {
            p.fetch_add(1, Ordering::Relaxed);
        });
        let mut it = pool.imap(square, input).unwrap();
        // Warm up, then measure.
        for (i, r) in it.by_ref().take(1000).enumerate() {
            assert_eq!(r.unwrap(), square(i as u64));
        }
        let rss = vm_rss_kb();
        for (i, r) in it.by_ref().take(9000).enumerate() {
            assert_eq!(r.unwrap(), square(i as u64 + 1000));
            let in_flight = pulled.load(Ordering::Relaxed) - (i + 1001);
            assert!(in_flight <= 1000, "{in_flight} inputs pulled ahead");
        }
        let grown = vm_rss_kb().saturating_sub(rss);
        assert!(grown < 4096, "RSS grew by {grown} kB");
        drop(it);

        let mut v: Vec<u64> = pool
            .imap_unordered(square, 0..500u64)
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        v.sort();
        assert_eq!(v, (0..500u64).map(square).collect::<Vec<_>>());
    }
    assert_no_children();
}

fn sleep_ms(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

#[test]
fn terminate_during_a_long_map_returns_promptly() {
    let _g = lock();
    {
        let pool = Pool::with_processes(2).unwrap();
        let started = Instant::now();
        std::thread::scope(|s| {
            let h = s.spawn(|| pool.map(sleep_ms, vec![100u64; 200]));
            std::thread::sleep(Duration::from_millis(300));
            pool.terminate();
            let r = h.join().unwrap();
            assert!(matches!(r, Err(Error::Disconnected(_))), "{r:?}");
        });
        assert!(started.elapsed() < secs(5), "{:?}", started.elapsed());
        assert!(pool.pids().is_empty());
        assert_no_children();
        assert!(matches!(
            pool.map(square, 0..3),
            Err(Error::InvalidState(_))
        ));
        pool.join().unwrap();
    }
    assert_no_children();
}

#[test]
fn drop_with_work_in_flight_kills_and_reaps() {
    let _g = lock();
    let started = Instant::now();
    let pending = {
        let pool = Pool::with_processes(2).unwrap();
        let rs: Vec<_> = (0..6)
            .map(|_| pool.apply_async(sleep_ms, 5_000).unwrap())
            .collect();
        std::thread::sleep(Duration::from_millis(100));
        rs
    };
    assert!(started.elapsed() < secs(3));
    assert_no_children();
    for r in pending {
        assert!(matches!(r.get(), Err(Error::Disconnected(_))));
    }
}

#[test]
fn max_tasks_per_child_replaces_workers() {
    let _g = lock();
    {
        let pool = Pool::builder()
            .processes(2)
            .max_tasks_per_child(3)
            .chunksize(1)
            .build()
            .unwrap();
        let before = pool.pids();
        let pids = pool.map(|_: u32| std::process::id(), 0..30).unwrap();
        let mut distinct = pids.clone();
        distinct.sort();
        distinct.dedup();
        assert!(distinct.len() >= 10, "{distinct:?}");
        assert!(pool.replaced_workers() >= 8);
        assert_ne!(pool.pids(), before);
        assert_eq!(pool.map(square, 0..10u64).unwrap()[3], 9);
    }
    assert_no_children();
}

fn omp(_: ()) -> Option<String> {
    std::env::var("OMP_NUM_THREADS").ok()
}

#[test]
fn workers_see_thread_count_variables() {
    let _g = lock();
    {
        let pool = Pool::with_processes(2).unwrap();
        let expected = std::env::var("OMP_NUM_THREADS")
            .ok()
            .unwrap_or_else(|| (multiproc::cpu_count().unwrap() / 2).max(1).to_string());
        assert_eq!(pool.apply(omp, ()).unwrap(), Some(expected));
        let blas = pool
            .apply(|_: ()| std::env::var("OPENBLAS_NUM_THREADS").ok(), ())
            .unwrap();
        assert!(blas.is_some());
        let off = Pool::builder()
            .processes(1)
            .limit_thread_env(false)
            .build()
            .unwrap();
        assert_eq!(
            off.apply(omp, ()).unwrap(),
            std::env::var("OMP_NUM_THREADS").ok()
        );
    }
    assert_no_children();
}

#[test]
fn bad_arguments_are_errors_not_panics() {
    let _g = lock();
    let invalid = |r: Result<Pool, Error>| matches!(r, Err(Error::InvalidArgument { .. }));
    assert!(invalid(Pool::with_processes(0)));
    assert!(invalid(Pool::builder().processes(0).build()));
    assert!(invalid(Pool::builder().processes(1).chunksize(0).build()));
    assert!(invalid(
        Pool::builder().processes(1).max_tasks_per_child(0).build()
    ));
    assert!(invalid(
        Pool::builder()
            .processes(1)
            .task_timeout(Duration::ZERO)
            .build()
    ));
    assert!(invalid(
        Pool::builder().processes(1).max_message_bytes(0).build()
    ));
    {
        let pool = Pool::builder()
            .processes(1)
            .max_message_bytes(1000)
            .build()
            .unwrap();
        assert!(matches!(
            pool.set_chunksize(Some(0)),
            Err(Error::InvalidArgument { .. })
        ));
        let big = vec![1u8; 5000];
        assert!(matches!(
            pool.apply(|v: Vec<u8>| v.len(), big.clone()),
            Err(Error::TooLarge { .. })
        ));
        assert!(matches!(
            pool.map_with(&big, |c: &Vec<u8>, x: u8| c.len() + x as usize, [1]),
            Err(Error::TooLarge { .. })
        ));
        assert_eq!(pool.apply(|v: Vec<u8>| v.len(), vec![1u8; 10]).unwrap(), 10);
        assert!(matches!(pool.join(), Err(Error::InvalidState(_))));
    }
    assert_no_children();
}

#[test]
fn apply_async_callbacks_close_and_join() {
    let _g = lock();
    {
        let pool = Pool::with_processes(2).unwrap();
        let sum = Arc::new(AtomicUsize::new(0));
        let errors = Arc::new(AtomicUsize::new(0));
        let mut results = Vec::new();
        for x in 0..10usize {
            let s = sum.clone();
            let e = errors.clone();
            results.push(
                pool.apply_async(|x: usize| if x == 7 { panic!("seven") } else { x }, x)
                    .unwrap()
                    .callback(move |v| {
                        s.fetch_add(*v, Ordering::SeqCst);
                    })
                    .error_callback(move |_| {
                        e.fetch_add(1, Ordering::SeqCst);
                    }),
            );
        }
        let m = pool.map_async(square, 0..100u64).unwrap();
        pool.close();
        assert!(matches!(pool.apply(square, 1), Err(Error::InvalidState(_))));
        pool.join().unwrap();
        assert_eq!(sum.load(Ordering::SeqCst), 45 - 7);
        assert_eq!(errors.load(Ordering::SeqCst), 1);
        assert!(results[3].ready());
        assert!(results[3].successful().unwrap());
        assert!(!results[7].successful().unwrap());
        assert_eq!(m.get_timeout(secs(1)).unwrap()[9], 81);
        assert!(pool.pids().is_empty());
        assert_no_children();
        let r = results.remove(2);
        assert_eq!(r.get().unwrap(), 2);
    }
    assert_no_children();
}

#[test]
fn progress_hook_and_initializer() {
    let _g = lock();
    {
        let seen = Arc::new(AtomicUsize::new(0));
        let s = seen.clone();
        let pool = Pool::builder()
            .processes(2)
            .initializer(|| {
                // SAFETY: a worker right after fork has a single thread.
                unsafe { std::env::set_var("MULTIPROC_TEST_INIT", "yes") }
            })
            .on_progress(move |done, total| {
                if total == Some(1000) {
                    s.store(done, Ordering::SeqCst);
                }
            })
            .build()
            .unwrap();
        pool.map(square, 0..1000u64).unwrap();
        assert_eq!(seen.load(Ordering::SeqCst), 1000);
        let v = pool
            .apply(|_: ()| std::env::var("MULTIPROC_TEST_INIT").ok(), ())
            .unwrap();
        assert_eq!(v.as_deref(), Some("yes"));
    }
    assert_no_children();
}

//! The Pool's promises: results, chunking, failures (panic, killed worker, retries, timeout),
//! lazy imap, terminate, Drop, worker recycling, thread-count variables, bad arguments, and no
//! child process left behind.

#[macro_use]
mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use multiproc::{Error, Pool, StartMethod};

/// A pool of `n` workers started with `m`.
fn pool(m: StartMethod, n: usize) -> Result<Pool, Error> {
    Pool::builder().start_method(m).processes(n).build()
}

/// How long one pool test may run.
const LIMIT: Duration = Duration::from_secs(120);

/// Pool tests run one at a time, each bounded (see `common::bounded_fork_lock`).
fn lock() -> impl Sized {
    common::bounded_fork_lock(LIMIT)
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// Pids of the children of `parent` (any state, zombies included).
fn children_of(parent: i32) -> Vec<i32> {
    let me = parent;
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

/// The process name of `pid`.
fn comm(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// This process's children, except the fork server (which serves the whole program), plus the
/// fork server's children (its workers).
fn children() -> Vec<i32> {
    let mut out = Vec::new();
    for pid in children_of(std::process::id() as i32) {
        if comm(pid) == "multiproc-fsrv" {
            out.extend(children_of(pid));
        } else {
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

both_methods!(map_equals_sequential_across_chunk_sizes);
fn map_equals_sequential_across_chunk_sizes(m: StartMethod) {
    let _g = lock();
    {
        let pool = pool(m, 3).unwrap();
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

both_methods!(a_panic_fails_only_its_input);
fn a_panic_fails_only_its_input(m: StartMethod) {
    let _g = lock();
    {
        let pool = pool(m, 2).unwrap();
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

both_methods!(a_worker_killed_mid_task_names_the_input_and_the_pool_goes_on);
fn a_worker_killed_mid_task_names_the_input_and_the_pool_goes_on(m: StartMethod) {
    let _g = lock();
    {
        let pool = pool(m, 2).unwrap();
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

both_methods!(retries_rerun_an_input_whose_worker_died);
fn retries_rerun_an_input_whose_worker_died(m: StartMethod) {
    let _g = lock();
    {
        let marker = std::env::temp_dir()
            .join(format!("multiproc-retry-{}", std::process::id()))
            .to_string_lossy()
            .into_owned();
        let _ = std::fs::remove_file(&marker);
        let pool = Pool::builder()
            .start_method(m)
            .processes(2)
            .retries(1)
            .build()
            .unwrap();
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

both_methods!(task_timeout_kills_an_endless_task);
fn task_timeout_kills_an_endless_task(m: StartMethod) {
    let _g = lock();
    {
        let pool = Pool::builder()
            .start_method(m)
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
                let msg = r.as_ref().unwrap_err().to_string();
                assert!(
                    msg.contains("item #3"),
                    "the timeout names its input: {msg}"
                );
            } else {
                assert_eq!(*r.as_ref().unwrap(), i as u64);
            }
        }
        assert_eq!(pool.apply(square, 5).unwrap(), 25);
    }
    assert_no_children();
}

both_methods!(imap_takes_an_endless_input_in_flat_memory);
fn imap_takes_an_endless_input_in_flat_memory(m: StartMethod) {
    let _g = lock();
    {
        let pool = pool(m, 2).unwrap();
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
        let rss = common::status_kib("VmRSS:");
        for (i, r) in it.by_ref().take(9000).enumerate() {
            assert_eq!(r.unwrap(), square(i as u64 + 1000));
            let in_flight = pulled.load(Ordering::Relaxed) - (i + 1001);
            assert!(in_flight <= 1000, "{in_flight} inputs pulled ahead");
        }
        let grown = common::status_kib("VmRSS:").saturating_sub(rss);
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

both_methods!(terminate_during_a_long_map_returns_promptly);
fn terminate_during_a_long_map_returns_promptly(m: StartMethod) {
    let _g = lock();
    {
        let pool = pool(m, 2).unwrap();
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

both_methods!(drop_with_work_in_flight_kills_and_reaps);
fn drop_with_work_in_flight_kills_and_reaps(m: StartMethod) {
    let _g = lock();
    let started = Instant::now();
    let pending = {
        let pool = pool(m, 2).unwrap();
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

both_methods!(max_tasks_per_child_replaces_workers);
fn max_tasks_per_child_replaces_workers(m: StartMethod) {
    let _g = lock();
    {
        let pool = Pool::builder()
            .start_method(m)
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

both_methods!(workers_see_thread_count_variables);
fn workers_see_thread_count_variables(m: StartMethod) {
    let _g = lock();
    {
        let pool = pool(m, 2).unwrap();
        let expected = std::env::var("OMP_NUM_THREADS")
            .ok()
            .unwrap_or_else(|| (multiproc::cpu_count().unwrap() / 2).max(1).to_string());
        assert_eq!(pool.apply(omp, ()).unwrap(), Some(expected));
        let blas = pool
            .apply(|_: ()| std::env::var("OPENBLAS_NUM_THREADS").ok(), ())
            .unwrap();
        assert!(blas.is_some());
        let off = Pool::builder()
            .start_method(m)
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

both_methods!(bad_arguments_are_errors_not_panics);
fn bad_arguments_are_errors_not_panics(m: StartMethod) {
    let _g = lock();
    let invalid = |r: Result<Pool, Error>| matches!(r, Err(Error::InvalidArgument { .. }));
    assert!(invalid(pool(m, 0)));
    assert!(invalid(
        Pool::builder().start_method(m).processes(0).build()
    ));
    assert!(invalid(
        Pool::builder()
            .start_method(m)
            .processes(1)
            .chunksize(0)
            .build()
    ));
    assert!(invalid(
        Pool::builder()
            .start_method(m)
            .processes(1)
            .max_tasks_per_child(0)
            .build()
    ));
    assert!(invalid(
        Pool::builder()
            .start_method(m)
            .processes(1)
            .task_timeout(Duration::ZERO)
            .build()
    ));
    assert!(invalid(
        Pool::builder()
            .start_method(m)
            .processes(1)
            .max_message_bytes(0)
            .build()
    ));
    {
        let pool = Pool::builder()
            .start_method(m)
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

both_methods!(apply_async_callbacks_close_and_join);
fn apply_async_callbacks_close_and_join(m: StartMethod) {
    let _g = lock();
    {
        let pool = pool(m, 2).unwrap();
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

both_methods!(progress_hook_and_initializer);
fn progress_hook_and_initializer(m: StartMethod) {
    let _g = lock();
    {
        let seen = Arc::new(AtomicUsize::new(0));
        let s = seen.clone();
        let pool = Pool::builder()
            .start_method(m)
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

both_methods!(an_imap_outliving_join_ends_with_an_error_not_a_hang);
fn an_imap_outliving_join_ends_with_an_error_not_a_hang(m: StartMethod) {
    let _g = lock();
    {
        let pool = pool(m, 2).unwrap();
        let mut it = pool.imap(square, 0..100_000u64).unwrap();
        assert_eq!(it.next().unwrap().unwrap(), 0);
        pool.close();
        pool.join().unwrap();
        let started = Instant::now();
        let rest: Vec<_> = it.collect();
        assert!(started.elapsed() < secs(5));
        assert!(rest.len() < 100_000);
        assert!(matches!(rest.last(), Some(Err(Error::InvalidState(_)))));
        assert!(matches!(
            pool.imap(square, 0..3u64),
            Err(Error::InvalidState(_))
        ));
    }
    assert_no_children();
}

fn aborts_on_3(x: u32) -> u32 {
    if x == 3 {
        std::process::abort();
    }
    x
}

both_methods!(an_aborting_worker_is_reported_with_its_signal);
fn an_aborting_worker_is_reported_with_its_signal(m: StartMethod) {
    let _g = lock();
    {
        let pool = pool(m, 2).unwrap();
        let out = pool.map_results(aborts_on_3, 0..10).unwrap();
        assert!(
            matches!(&out[3], Err(Error::WorkerDied { signal: Some(6), task: Some(t), .. }) if t == "item #3"),
            "{:?}",
            out[3]
        );
        assert_eq!(out.iter().filter(|r| r.is_ok()).count(), 9);
        let r = pool.apply_async(aborts_on_3, 3).unwrap();
        assert!(matches!(r.get(), Err(Error::WorkerDied { .. })));
    }
    assert_no_children();
}

/// The sum of the bytes and their count, in the worker.
fn byte_sum(v: multiproc::PodVec<u8>) -> (u64, usize) {
    (v.iter().map(|&b| b as u64).sum(), v.len())
}

both_methods!(a_1_gib_payload_through_a_pool);
fn a_1_gib_payload_through_a_pool(m: StartMethod) {
    const SIZE: usize = 1 << 30;
    let _g = lock();
    let pool = pool(m, 1).unwrap();
    let data: Vec<u8> = (0..SIZE).map(|i| (i % 251) as u8).collect();
    let want: u64 = data.iter().map(|&b| b as u64).sum();
    let (sum, len) = pool.apply(byte_sum, multiproc::PodVec::from(data)).unwrap();
    assert_eq!((sum, len), (want, SIZE));
    drop(pool);
    assert_no_children();
}

/// Whether the memory at `p` is a mapping of a multiproc memory file (not the heap).
fn in_memory_file(p: *const u8) -> bool {
    let p = p as usize;
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    maps.lines().any(|l| {
        let range = l.split_whitespace().next().unwrap();
        let (a, b) = range.split_once('-').unwrap();
        let (a, b) = (
            usize::from_str_radix(a, 16).unwrap(),
            usize::from_str_radix(b, 16).unwrap(),
        );
        a <= p && p < b && l.contains("multiproc-shm")
    })
}

fn open_fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Forks a process from inside the task that answers with a `PodVec` (through a channel that
/// carries no descriptors, so it goes as bytes), and answers with one of its own.
fn spawn_inside(x: u64) -> (u64, multiproc::PodVec<u64>) {
    let h = multiproc::spawn(move || multiproc::PodVec::from(vec![x; 40_000])).unwrap();
    let v: multiproc::PodVec<u64> = h.join().unwrap();
    (v.iter().sum(), multiproc::PodVec::from(vec![x + 1; 40_000]))
}

both_methods!(what_a_task_encodes_itself_does_not_attach_to_the_reply);
fn what_a_task_encodes_itself_does_not_attach_to_the_reply(m: StartMethod) {
    let _g = lock();
    let pool = Pool::builder()
        .start_method(m)
        .processes(2)
        .chunksize(3)
        .build()
        .unwrap();
    let got = pool.map(spawn_inside, 0..8u64).unwrap();
    assert_eq!(got.len(), 8);
    for (x, (sum, v)) in got.iter().enumerate() {
        let x = x as u64;
        assert_eq!(*sum, 40_000 * x, "input {x}");
        assert!(
            v.len() == 40_000 && v.iter().all(|&y| y == x + 1),
            "input {x}"
        );
    }
    drop(pool);
    assert_no_children();
}

/// Doubles every element in place (a received `PodVec` is the worker's alone) and sends it back.
fn doubled(mut v: multiproc::PodVec<f64>) -> multiproc::PodVec<f64> {
    for x in v.iter_mut() {
        *x *= 2.0;
    }
    v
}

both_methods!(big_pod_vecs_travel_by_descriptor_both_ways);
fn big_pod_vecs_travel_by_descriptor_both_ways(m: StartMethod) {
    const N: usize = 1 << 20; // 8 MiB of f64 each
    let _g = lock();
    {
        // A task limit far below one input: only a descriptor can carry it.
        let pool = Pool::builder()
            .start_method(m)
            .processes(2)
            .max_message_bytes(64 << 10)
            .build()
            .unwrap();
        let fds_before = open_fd_count();
        for round in 0..3 {
            let inputs: Vec<multiproc::PodVec<f64>> = (0..6)
                .map(|k| {
                    (0..N)
                        .map(|i| (i + k + round) as f64)
                        .collect::<Vec<_>>()
                        .into()
                })
                .collect();
            let out = pool.map(doubled, inputs).unwrap();
            assert_eq!(out.len(), 6);
            for (k, v) in out.iter().enumerate() {
                assert_eq!(v.len(), N);
                assert!(
                    in_memory_file(v.as_ptr().cast()),
                    "result {k} was not received in shared memory"
                );
                assert!(
                    v.iter()
                        .enumerate()
                        .all(|(i, &x)| x == 2.0 * (i + k + round) as f64)
                );
            }
            let one = pool.apply(doubled, vec![1.5f64; N].into()).unwrap();
            assert!(one.iter().all(|&x| x == 3.0));
        }
        multiproc::PodVec::<f64>::release_kept();
        assert!(
            open_fd_count() <= fds_before,
            "descriptors leaked: {} before, {} after",
            fds_before,
            open_fd_count()
        );
        // Small PodVecs still go inline and are not limited by descriptors.
        let small: Vec<multiproc::PodVec<f64>> =
            (0..1000).map(|k| vec![k as f64; 4].into()).collect();
        let out = pool.map(doubled, small).unwrap();
        assert!(out.iter().enumerate().all(|(k, v)| v[3] == 2.0 * k as f64));
    }
    assert_no_children();
}

/// Writes `i` at index `i` of the array it was handed.
fn fill_array(a: multiproc::SharedArray<u64>) -> usize {
    for i in 0..a.len() {
        a.set(i, i as u64).unwrap();
    }
    a.len()
}

/// Sums the context's vector, plus `x`.
fn ctx_sum(v: &multiproc::PodVec<f64>, x: f64) -> f64 {
    v.iter().sum::<f64>() + x
}

both_methods!(shared_arrays_made_after_the_pool_and_pod_vec_contexts_reach_the_workers);
fn shared_arrays_made_after_the_pool_and_pod_vec_contexts_reach_the_workers(m: StartMethod) {
    let _g = lock();
    {
        let pool = pool(m, 2).unwrap();
        // Made after the workers forked: only its descriptor can bring it to them.
        let arrays: Vec<_> = (0..4)
            .map(|_| multiproc::SharedArray::<u64>::new(1000).unwrap())
            .collect();
        let lens = pool.map(fill_array, arrays.clone()).unwrap();
        assert_eq!(lens, vec![1000; 4]);
        for a in &arrays {
            assert_eq!(a.to_vec().unwrap(), (0..1000).collect::<Vec<u64>>());
        }
        let ctx: multiproc::PodVec<f64> = vec![0.5f64; 1 << 20].into();
        let out = pool.map_with(&ctx, ctx_sum, [1.0, 2.0, 3.0]).unwrap();
        let base = 0.5 * (1 << 20) as f64;
        assert_eq!(out, vec![base + 1.0, base + 2.0, base + 3.0]);
    }
    assert_no_children();
}

/// Kills its worker the first time it sees a vector starting with 5.0 (a marker file remembers).
fn pod_dies_once(marker: &String, v: multiproc::PodVec<f64>) -> f64 {
    if v[0] == 5.0 && std::fs::File::create_new(marker).is_ok() {
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    }
    v.iter().sum()
}

both_methods!(a_task_with_descriptors_is_sent_again_after_its_worker_died);
fn a_task_with_descriptors_is_sent_again_after_its_worker_died(m: StartMethod) {
    const N: usize = 1 << 16; // 512 KiB each: above the inline threshold
    let _g = lock();
    {
        let marker = std::env::temp_dir()
            .join(format!("multiproc-pod-retry-{}", std::process::id()))
            .to_string_lossy()
            .into_owned();
        let _ = std::fs::remove_file(&marker);
        let pool = Pool::builder()
            .start_method(m)
            .processes(2)
            .retries(1)
            .chunksize(4)
            .build()
            .unwrap();
        let inputs: Vec<multiproc::PodVec<f64>> =
            (0..12).map(|k| vec![k as f64; N].into()).collect();
        let out = pool.map_with(&marker, pod_dies_once, inputs).unwrap();
        let want: Vec<f64> = (0..12).map(|k| (k * N) as f64).collect();
        assert_eq!(out, want);
        assert_eq!(pool.replaced_workers(), 1);
        let _ = std::fs::remove_file(&marker);
    }
    assert_no_children();
}

/// Returns `n` one-element shared arrays.
fn many_arrays(n: usize) -> Vec<multiproc::SharedArray<u8>> {
    (0..n)
        .map(|_| multiproc::SharedArray::new(1).unwrap())
        .collect()
}

fn count_arrays(v: Vec<multiproc::SharedArray<u8>>) -> usize {
    v.len()
}

both_methods!(more_descriptors_than_a_message_carries_is_a_clear_error);
fn more_descriptors_than_a_message_carries_is_a_clear_error(m: StartMethod) {
    let _g = lock();
    {
        let pool = pool(m, 1).unwrap();
        // An input with 300 shared arrays cannot go in one message.
        let err = pool.apply(count_arrays, many_arrays(300)).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, Error::InvalidArgument { .. }), "{err:?}");
        assert!(msg.contains("300") && msg.contains("253"), "{msg}");
        // Nor can a result with 300.
        let err = pool.apply(many_arrays, 300).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("300") && msg.contains("253"), "{msg}");
        // 200 fit, either way, and the pool goes on.
        assert_eq!(pool.apply(count_arrays, many_arrays(200)).unwrap(), 200);
        assert_eq!(pool.apply(many_arrays, 200).unwrap().len(), 200);
    }
    assert_no_children();
}

fn div(a: u32, b: u32) -> u32 {
    a / b
}

both_methods!(starmap_async_gives_all_results_or_the_first_error);
fn starmap_async_gives_all_results_or_the_first_error(m: StartMethod) {
    let _g = lock();
    {
        let pool = pool(m, 2).unwrap();
        let pairs: Vec<(u32, u32)> = (1..=200).map(|i| (i * 6, 3)).collect();
        let r = pool.starmap_async(div, pairs).unwrap();
        assert_eq!(
            r.get().unwrap(),
            (1..=200).map(|i| i * 2).collect::<Vec<_>>()
        );
        // A division by zero panics in the worker: the call's result is that input's error.
        let r = pool.starmap_async(div, [(1, 1), (2, 0), (3, 1)]).unwrap();
        let err = r.get().unwrap_err();
        assert!(matches!(err, Error::TaskPanicked { .. }), "{err:?}");
        assert!(err.to_string().contains("divide by zero"), "{err}");
        // Nothing to do: ready at once.
        let r = pool.starmap_async(div, Vec::<(u32, u32)>::new()).unwrap();
        assert!(r.ready());
        assert_eq!(r.get().unwrap(), Vec::<u32>::new());
    }
    assert_no_children();
}

// ---- Start methods ----

/// A global the threaded-parent test hammers; workers of a fork-server pool see it fresh.
static GLOBAL: Mutex<u64> = Mutex::new(0);

/// Takes the global lock and reads it (in a worker).
fn read_global(_: u32) -> u64 {
    *GLOBAL.lock().unwrap_or_else(|e| e.into_inner())
}

#[test]
fn fork_server_workers_never_inherit_a_held_lock_and_see_fresh_globals() {
    let _g = lock();
    {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let hammers: Vec<_> = (0..4)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let mut g = GLOBAL.lock().unwrap();
                        *g += 1;
                        // Hold it most of the time.
                        let until = Instant::now() + Duration::from_micros(200);
                        while Instant::now() < until {
                            std::hint::spin_loop();
                        }
                    }
                })
            })
            .collect();
        // The hammers have taken the lock at least once: the parent's value is not the initial one.
        while *GLOBAL.lock().unwrap() == 0 {
            std::thread::yield_now();
        }
        let mut failures = Vec::new();
        for round in 0..100 {
            let pool = Pool::builder()
                .processes(2)
                .start_method(StartMethod::ForkServer)
                // A worker stuck on the lock fails its input instead of hanging the test.
                .task_timeout(secs(20))
                .build()
                .unwrap();
            match pool.map(read_global, 0..4) {
                Ok(v) if v == [0, 0, 0, 0] => {}
                other => failures.push((round, other)),
            }
        }
        stop.store(true, Ordering::Relaxed);
        for h in hammers {
            h.join().unwrap();
        }
        assert!(failures.is_empty(), "{failures:?}");
        assert!(*GLOBAL.lock().unwrap() > 0);
    }
    assert_no_children();
}

fn parent_pid(_: u32) -> u32 {
    std::os::unix::process::parent_id()
}

fn fn_item_initializer() {
    // SAFETY: a worker right after fork has a single thread.
    unsafe { std::env::set_var("MULTIPROC_TEST_FN_INIT", "ran") }
}

fn set_ptr_marker(value: &str) {
    // SAFETY: a worker right after fork has a single thread.
    unsafe { std::env::set_var("MULTIPROC_TEST_PTR_INIT", value) }
}

fn marker_set(_: u32) -> Option<String> {
    std::env::var("MULTIPROC_TEST_PTR_INIT").ok()
}

fn fn_init_ran(_: u32) -> Option<String> {
    std::env::var("MULTIPROC_TEST_FN_INIT").ok()
}

#[test]
fn fork_server_workers_are_children_of_the_server_and_take_fn_item_initializers() {
    let _g = lock();
    {
        let pool = Pool::builder()
            .processes(2)
            .start_method(StartMethod::ForkServer)
            .initializer(fn_item_initializer)
            .build()
            .unwrap();
        let by_pointer = Pool::builder()
            .processes(1)
            .start_method(StartMethod::ForkServer)
            .initializer_fn(|| set_ptr_marker("fn"))
            .build()
            .unwrap();
        assert_eq!(by_pointer.apply(marker_set, 0).unwrap(), Some("fn".into()));
        drop(by_pointer);
        let parents = pool.map(parent_pid, 0..8).unwrap();
        let server = parents[0];
        assert_ne!(server, std::process::id());
        assert!(parents.iter().all(|&p| p == server), "{parents:?}");
        assert_eq!(comm(server as i32), "multiproc-fsrv");
        assert_eq!(
            pool.map(fn_init_ran, 0..4).unwrap(),
            vec![Some("ran".to_string()); 4]
        );
        // A replacement after a crash comes from the same start method: the server.
        let out = pool.map_results(dies_on_17, 0..20).unwrap();
        assert!(
            matches!(out[17], Err(Error::WorkerDied { .. })),
            "{:?}",
            out[17]
        );
        assert!(pool.replaced_workers() >= 1);
        let after = pool.map(parent_pid, 0..8).unwrap();
        assert!(after.iter().all(|&p| p == server), "{after:?}");
        // One server serves every pool of the program.
        let other = pool_server_pid();
        assert_eq!(other, server);
        // A closure that captures cannot reach a fresh process: a clear error at build time.
        let captured = String::from("x");
        let err = Pool::builder()
            .processes(1)
            .start_method(StartMethod::ForkServer)
            .initializer(move || drop(captured.clone()))
            .build()
            .unwrap_err();
        assert!(
            matches!(&err, Error::InvalidArgument { name, .. } if *name == "initializer"),
            "{err:?}"
        );
    }
    assert_no_children();
}

/// The sockets among this process's descriptors.
fn sockets(_: u32) -> usize {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .flatten()
        .filter(|e| {
            std::fs::read_link(e.path()).is_ok_and(|t| t.to_string_lossy().starts_with("socket:"))
        })
        .count()
}

#[test]
fn a_fork_server_worker_keeps_no_descriptor_of_the_server_or_of_other_workers() {
    let _g = lock();
    {
        // Its own socket only: not the server's socket to the parent, not another worker's.
        let pool = pool(StartMethod::ForkServer, 4).unwrap();
        assert_eq!(pool.map(sockets, 0..16).unwrap(), vec![1; 16]);
    }
    assert_no_children();
}

fn pool_server_pid() -> u32 {
    let p = pool(StartMethod::ForkServer, 1).unwrap();
    p.apply(parent_pid, 0).unwrap()
}

/// The helper subprocesses below: this test binary run again with one ignored test selected.
/// Holds the fork lock while the helper runs: it is a child of this process, which another
/// test's "no child left behind" check must not see.
fn run_helper(name: &str, env: &[(&str, &str)]) -> std::process::Output {
    let _g = lock();
    let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "--exact",
        name,
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ])
    .env("MULTIPROC_TEST_HELPER", name)
    .env_remove("MULTIPROC_START_METHOD")
    .env_remove("MULTIPROC_WARN_THREADS");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn helper_active(name: &str) -> bool {
    std::env::var("MULTIPROC_TEST_HELPER").is_ok_and(|v| v == name)
}

#[test]
#[ignore = "a helper run by start_method_from_the_environment"]
fn helper_env_method() {
    if !helper_active("helper_env_method") {
        return;
    }
    match Pool::with_processes(1) {
        Ok(p) => {
            let server = p.apply(parent_pid, 0).unwrap() != std::process::id();
            println!("RESULT forkserver={server}");
        }
        Err(e) => println!("RESULT error={e:?}"),
    }
}

#[test]
fn start_method_from_the_environment() {
    let out = |v: &str| {
        let o = run_helper("helper_env_method", &[("MULTIPROC_START_METHOD", v)]);
        let text = String::from_utf8_lossy(&o.stdout).into_owned();
        text.lines()
            .find_map(|l| l.split_once("RESULT ").map(|(_, r)| r))
            .unwrap_or_else(|| panic!("no result: {text} {}", String::from_utf8_lossy(&o.stderr)))
            .to_string()
    };
    assert_eq!(out("forkserver"), "forkserver=true");
    assert_eq!(out("fork"), "forkserver=false");
    let bad = out("spoon");
    assert!(
        bad.contains("InvalidEnv")
            && bad.contains("MULTIPROC_START_METHOD")
            && bad.contains("spoon"),
        "{bad}"
    );
}

#[test]
#[ignore = "a helper run by forking_a_threaded_parent_warns_once"]
fn helper_threaded_fork() {
    if !helper_active("helper_threaded_fork") {
        return;
    }
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let t = std::thread::spawn(move || rx.recv());
    for _ in 0..3 {
        let p = Pool::with_processes(2).unwrap();
        assert_eq!(p.apply(square, 3).unwrap(), 9);
    }
    drop(tx);
    let _ = t.join();
}

#[test]
fn forking_a_threaded_parent_warns_once() {
    let warnings = |env: &[(&str, &str)]| {
        let o = run_helper("helper_threaded_fork", env);
        assert!(o.status.success(), "{o:?}");
        String::from_utf8_lossy(&o.stderr)
            .matches("multiproc: warning:")
            .count()
    };
    assert_eq!(warnings(&[]), 1);
    assert_eq!(warnings(&[("MULTIPROC_WARN_THREADS", "0")]), 0);
    assert_eq!(warnings(&[("MULTIPROC_START_METHOD", "forkserver")]), 0);
    let o = run_helper("helper_threaded_fork", &[]);
    let text = String::from_utf8_lossy(&o.stderr);
    assert!(
        text.contains("ForkServer") && text.contains("MULTIPROC_WARN_THREADS=0"),
        "{text}"
    );
}

#[test]
#[ignore = "a helper run by nothing_outlives_a_sigkilled_parent"]
fn helper_pool_then_wait() {
    if !helper_active("helper_pool_then_wait") {
        return;
    }
    let p = Pool::with_processes(2).unwrap();
    let parents = p.map(parent_pid, 0..2).unwrap();
    let mut pids = p.pids();
    if parents[0] != std::process::id() {
        pids.push(parents[0] as i32);
    }
    let list: Vec<String> = pids.iter().map(i32::to_string).collect();
    println!("PIDS {}", list.join(" "));
    use std::io::Write;
    std::io::stdout().flush().unwrap();
    // Waits to be killed (bounded: the test kills it long before).
    std::thread::sleep(secs(60));
}

/// A pidfd for `pid` (readable once it has ended).
fn pidfd(pid: i32) -> std::os::fd::OwnedFd {
    use std::os::fd::FromRawFd;
    // SAFETY: pidfd_open returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    assert!(fd >= 0, "pidfd_open({pid})");
    // SAFETY: a descriptor the kernel just gave us.
    unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) }
}

fn nothing_outlives_a_sigkilled_parent(m: StartMethod) {
    use std::io::BufRead;
    // The helper is a child of this process: no other test may look for children meanwhile.
    let _g = lock();
    let method = match m {
        StartMethod::Fork => "fork",
        StartMethod::ForkServer => "forkserver",
    };
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "helper_pool_then_wait",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("MULTIPROC_TEST_HELPER", "helper_pool_then_wait")
        .env("MULTIPROC_START_METHOD", method)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let pids: Vec<i32> = loop {
        let line = lines.next().expect("the helper ended early").unwrap();
        // Serial libtest prints "test <name> ... " before the test's own output, on one line.
        if let Some((_, rest)) = line.split_once("PIDS ") {
            break rest.split(' ').map(|p| p.parse().unwrap()).collect();
        }
    };
    assert_eq!(pids.len(), if method == "fork" { 2 } else { 3 }, "{pids:?}");
    let fds: Vec<_> = pids.iter().map(|&p| pidfd(p)).collect();
    child.kill().unwrap();
    child.wait().unwrap();
    for (fd, pid) in fds.iter().zip(&pids) {
        use std::os::fd::AsFd;
        let mut p = [nix::poll::PollFd::new(
            fd.as_fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        let n = nix::poll::poll(&mut p, nix::poll::PollTimeout::from(10_000u16)).unwrap();
        assert_eq!(
            n, 1,
            "process {pid} still runs 10 s after its parent was SIGKILLed"
        );
    }
}
both_methods!(nothing_outlives_a_sigkilled_parent);

//! Pools the size of a node (issue 17 §1): 128 workers under both start methods map correctly,
//! use every worker, leave no process behind when joined or terminated, and sleep in the kernel
//! when idle (no spinning worker takes a CPU).
//!
//! No wall-clock threshold: correctness, process tables and CPU ticks of idle workers only.

#[macro_use]
mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use multiproc::{Pool, StartMethod};

/// Workers of a node-sized pool (`--cpus-per-task=128`).
const WORKERS: usize = 128;

fn pool(m: StartMethod) -> Pool {
    Pool::builder()
        .start_method(m)
        .processes(WORKERS)
        .chunksize(1)
        .build()
        .unwrap()
}

/// The input, squared, and the pid of the worker that ran it.
fn square_where(x: u64) -> (u64, u32) {
    (x.wrapping_mul(x), std::process::id())
}

fn sleep_ms(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

/// Fields of `/proc/<pid>/stat` after the command name (field 3, the state, is index 0).
fn stat_fields(pid: i32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// (state, utime + stime in clock ticks) of `pid`.
fn state_and_ticks(pid: i32) -> Option<(char, u64)> {
    let f = stat_fields(pid)?;
    let state = f[0].chars().next()?;
    let ticks = f[11].parse::<u64>().ok()? + f[12].parse::<u64>().ok()?;
    Some((state, ticks))
}

fn children_of(parent: i32) -> Vec<i32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if stat_fields(pid).is_some_and(|f| f[1].parse() == Ok(parent)) {
            out.push(pid);
        }
    }
    out
}

/// This process's children, the fork server's workers in place of the server.
fn children() -> Vec<i32> {
    let mut out = Vec::new();
    for pid in children_of(std::process::id() as i32) {
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if comm.trim() == "multiproc-fsrv" {
            out.extend(children_of(pid));
        } else {
            out.push(pid);
        }
    }
    out
}

/// Waits (bounded) until no child is left: the fork server reaps its workers on its own time.
fn assert_no_children_left() {
    let until = Instant::now() + common::secs(60);
    let mut left = children();
    while !left.is_empty() && Instant::now() < until {
        std::thread::sleep(common::ms(10));
        left = children();
    }
    assert!(left.is_empty(), "child processes left behind: {left:?}");
}

both_methods!(a_128_worker_pool_maps_on_every_worker_and_join_leaves_nothing);
fn a_128_worker_pool_maps_on_every_worker_and_join_leaves_nothing(m: StartMethod) {
    let _g = common::fork_lock();
    let pool = pool(m);
    let pids: HashSet<i32> = pool.pids().into_iter().collect();
    assert_eq!(pids.len(), WORKERS);
    let n = 20_000u64;
    let out = pool.map(square_where, 0..n).unwrap();
    assert_eq!(out.len(), n as usize);
    for (x, (sq, _)) in out.iter().enumerate() {
        assert_eq!(*sq, (x as u64).wrapping_mul(x as u64), "input {x}");
    }
    // The first hand-out gives every worker a task: all 128 ran inputs, and only they did.
    let ran: HashSet<i32> = out.iter().map(|(_, pid)| *pid as i32).collect();
    assert_eq!(
        ran, pids,
        "the workers that ran inputs are the pool's workers, all of them"
    );
    // A second map on the warm pool: the same answers.
    let again = pool.map(square_where, 0..n).unwrap();
    assert!(again.iter().zip(&out).all(|(a, b)| a.0 == b.0));
    pool.close();
    pool.join().unwrap();
    assert_no_children_left();
}

both_methods!(terminating_a_busy_128_worker_pool_leaves_nothing);
fn terminating_a_busy_128_worker_pool_leaves_nothing(m: StartMethod) {
    let _g = common::fork_lock();
    let pool = pool(m);
    // Two 10 s tasks per worker, far longer than the test: terminate finds them queued or
    // running.
    let r = pool
        .map_async(sleep_ms, vec![10_000u64; 2 * WORKERS])
        .unwrap();
    let pids = pool.pids();
    assert_eq!(pids.len(), WORKERS);
    pool.terminate();
    assert!(r.get().is_err(), "a terminated map has no result");
    pool.join().unwrap();
    assert_no_children_left();
    for pid in pids {
        assert!(!common::is_our_child(pid), "worker {pid} is still a child");
    }
}

both_methods!(idle_workers_sleep_in_the_kernel_and_use_no_cpu);
fn idle_workers_sleep_in_the_kernel_and_use_no_cpu(m: StartMethod) {
    let _g = common::fork_lock();
    let pool = pool(m);
    // Every worker has run tasks (it passed through its wait for work since).
    let out = pool.map(square_where, 0..(4 * WORKERS as u64)).unwrap();
    assert_eq!(out.len(), 4 * WORKERS);
    let pids = pool.pids();
    // Handshake: every worker is asleep in the kernel (state S), bounded; a worker spinning for
    // work would be R (running or runnable) and never pass.
    let until = Instant::now() + common::secs(60);
    let before = loop {
        let now: Vec<(char, u64)> = pids.iter().map(|&p| state_and_ticks(p).unwrap()).collect();
        if now.iter().all(|(s, _)| *s == 'S') {
            break now;
        }
        assert!(
            Instant::now() < until,
            "workers not asleep after 60 s: {:?}",
            now.iter().filter(|(s, _)| *s != 'S').collect::<Vec<_>>()
        );
        std::thread::sleep(common::ms(10));
    };
    // The idle window: 2 s in which nothing is asked of the pool. A blocked process is charged
    // no tick whatever the machine's load; a spinning one is charged all it runs.
    std::thread::sleep(common::secs(2));
    let after: Vec<(char, u64)> = pids.iter().map(|&p| state_and_ticks(p).unwrap()).collect();
    let used: u64 = before.iter().zip(&after).map(|(b, a)| a.1 - b.1).sum();
    // 1% of one core over the 2 s window is 20 ms: 2 ticks of 10 ms (USER_HZ, what /proc
    // reports), for all 128 workers together.
    const MAX_TICKS: u64 = 2;
    assert!(
        used <= MAX_TICKS,
        "{WORKERS} idle workers used {used} ticks of CPU in 2 s"
    );
    assert!(
        after.iter().all(|(s, _)| *s == 'S'),
        "a worker woke: {after:?}"
    );
    // Still a working pool.
    assert_eq!(pool.map(square_where, 0..10u64).unwrap()[9].0, 81);
    pool.close();
    pool.join().unwrap();
    assert_no_children_left();
}

/// A Fork pool's start gives the heap's free pages back to the kernel before it forks its
/// workers (each fork copies the mappings of the memory the parent holds): 64 MB built in 4 KB
/// blocks and three quarters dropped leaves free chunks inside the heap, which the C library
/// keeps until the pool starts.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[test]
fn a_fork_pool_start_gives_the_free_heap_back_before_forking() {
    let _g = common::fork_lock();
    let blocks: Vec<Box<[u8]>> = (0..16_384u32)
        .map(|i| vec![i as u8 | 1; 4096].into_boxed_slice())
        .collect();
    let kept: Vec<Box<[u8]>> = blocks.into_iter().step_by(4).collect();
    let before = common::status_kib("RssAnon:");
    let pool = Pool::builder()
        .processes(4)
        .start_method(StartMethod::Fork)
        .build()
        .unwrap();
    let after = common::status_kib("RssAnon:");
    assert_eq!(
        pool.map(|x: u64| x + 1, 0..8u64).unwrap(),
        (1..9).collect::<Vec<_>>()
    );
    pool.close();
    pool.join().unwrap();
    assert!(kept.iter().all(|b| b[0] & 1 == 1));
    // 48 MB are free; at least half of it is given back (pages wholly inside free chunks).
    assert!(
        before.saturating_sub(after) >= 24 * 1024,
        "anonymous memory {before} kB before the pool's start, {after} kB after"
    );
    assert_no_children_left();
}

/// Open descriptors of process `pid` (`None` once it is gone).
fn fds_of(pid: i32) -> Option<usize> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()
        .map(|d| d.count())
}

both_methods!(a_worker_keeps_no_descriptor_of_its_siblings_or_the_parent);
/// Workers started together (forked back to back, or by the fork server in one request) close
/// what they inherited of each other and of the parent's ends: each worker of a 32-worker pool
/// has as many descriptors open as the only worker of a 1-worker pool.
fn a_worker_keeps_no_descriptor_of_its_siblings_or_the_parent(m: StartMethod) {
    let _g = common::fork_lock();
    let one = Pool::builder()
        .processes(1)
        .start_method(m)
        .build()
        .unwrap();
    assert_eq!(one.map(|x: u64| x, 0..4u64).unwrap(), [0, 1, 2, 3]);
    let alone = fds_of(one.pids()[0]).expect("the worker runs");
    one.close();
    one.join().unwrap();
    drop(one);
    let pool = Pool::builder()
        .processes(32)
        .start_method(m)
        .build()
        .unwrap();
    assert_eq!(pool.map(|x: u64| x, 0..64u64).unwrap().len(), 64);
    // A worker closes what it inherited first thing; poll (bounded) until each has.
    let deadline = Instant::now() + Duration::from_secs(20);
    for pid in pool.pids() {
        let mut open = fds_of(pid);
        while open != Some(alone) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
            open = fds_of(pid);
        }
        assert_eq!(open, Some(alone), "descriptors open in worker {pid}");
    }
    pool.close();
    pool.join().unwrap();
    assert_no_children_left();
}

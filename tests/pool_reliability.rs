//! A crash costs only the input it interrupted: workers SIGKILLed again and again during a map
//! lose no finished input (none runs twice) whatever the chunksize, and with retries every input
//! is answered once with its value. A panic in the `Drop` of a task's result fails that input
//! alone.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use multiproc::{AcquireError, Error, Pool, SharedArray};
use serde::{Deserialize, Serialize};

use common::{Watchdog, fork_lock, is_our_child, secs};

// Layout of the shared state array of the chaos tests.
const LAST_PID: usize = 0;
const STARTS: usize = 1;
const KILLS_DONE: usize = 2;
const GATE_STEP: usize = 3;
const GATE_KILLS: usize = 4;
const WORK_NS: usize = 5;
/// Executions of input `x` are counted at `EXEC + x`.
const EXEC: usize = 8;

fn locked(st: &SharedArray<u64>) -> multiproc::ArrayGuard<'_, u64> {
    // A worker killed while holding the lock left it to us: the counters are single stores.
    st.lock().or_else(AcquireError::recover).unwrap()
}

/// The task of the chaos tests (the state is the map's context, sent once to each worker, so
/// the inputs are plain numbers and chunks keep their size): counts its execution, records its
/// worker's pid, waits at the gates (start number `k·step + step/2` waits for the killer's `k`-th kill), works
/// `WORK_NS`, returns `3x + 1`.
fn counted(st: &SharedArray<u64>, x: u64) -> u64 {
    let (start, step, kills, work) = {
        let mut g = locked(st);
        g[LAST_PID] = u64::from(std::process::id());
        g[STARTS] += 1;
        g[EXEC + x as usize] += 1;
        (g[STARTS], g[GATE_STEP], g[GATE_KILLS], g[WORK_NS])
    };
    if step > 0 && start % step == step / 2 && (1..=kills).contains(&(start / step)) {
        let until = Instant::now() + secs(20);
        while locked(st)[KILLS_DONE] < start / step && Instant::now() < until {
            std::thread::sleep(Duration::from_micros(200));
        }
    }
    let t = Instant::now();
    while (t.elapsed().as_nanos() as u64) < work {
        std::hint::spin_loop();
    }
    3 * x + 1
}

/// Kills the worker that started an input last, `kills` times: the `k`-th kill once `k·step`
/// inputs have started (bounded waits). Returns how many kills hit a live worker of ours.
fn gated_killer(st: SharedArray<u64>, step: u64, kills: u64) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut sent = 0;
        for k in 1..=kills {
            let until = Instant::now() + secs(60);
            while locked(&st)[STARTS] < k * step && Instant::now() < until {
                std::thread::sleep(Duration::from_micros(100));
            }
            let pid = locked(&st)[LAST_PID] as i32;
            if pid > 0 && is_our_child(pid) {
                let pid = nix::unistd::Pid::from_raw(pid);
                if nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).is_ok() {
                    sent += 1;
                }
            }
            locked(&st)[KILLS_DONE] = k;
        }
        sent
    })
}

/// What one chaos run found.
struct Chaos {
    kills: u64,
    reexecuted: u64,
    elapsed: Duration,
}

/// Checks the outcome of a chaos map: every input answered with its value (`map_with` gives
/// one value per input, or the first error), each executed at least once, and no more
/// re-executions than kills (each kill interrupts at most one input).
fn check(n: usize, out: &[u64], st: &SharedArray<u64>, kills: u64) -> u64 {
    assert_eq!(out.len(), n);
    for (i, v) in out.iter().enumerate() {
        assert_eq!(*v, 3 * i as u64 + 1, "input {i}");
    }
    let g = locked(st);
    let exec = &g[EXEC..EXEC + n];
    let never: Vec<usize> = (0..n).filter(|&i| exec[i] == 0).collect();
    assert!(never.is_empty(), "inputs answered but never run: {never:?}");
    let reexecuted: u64 = exec.iter().map(|&e| e - 1).sum();
    let worst = exec.iter().max().copied().unwrap_or(0);
    assert!(
        reexecuted <= kills,
        "{reexecuted} re-executions for {kills} kills (an input ran {worst} times): finished \
         inputs ran again"
    );
    reexecuted
}

/// A map of `n` inputs under `kills` gated kills (every `step` starts).
fn gated_chaos(n: usize, chunksize: Option<usize>, step: u64, kills: u64, work_ns: u64) -> Chaos {
    let st = SharedArray::<u64>::new(EXEC + n).unwrap();
    {
        let mut g = locked(&st);
        g[GATE_STEP] = step;
        g[GATE_KILLS] = kills;
        g[WORK_NS] = work_ns;
    }
    let mut b = Pool::builder().processes(2).retries(5);
    if let Some(c) = chunksize {
        b = b.chunksize(c);
    }
    let pool = b.build().unwrap();
    let killer = gated_killer(st.clone(), step, kills);
    let started = Instant::now();
    let out = pool.map_with(&st, counted, 0..n as u64);
    let elapsed = started.elapsed();
    let sent = killer.join().unwrap();
    let out = out.unwrap();
    assert_eq!(sent, kills, "every kill hit a live worker");
    let reexecuted = check(n, &out, &st, sent);
    drop(pool);
    Chaos {
        kills: sent,
        reexecuted,
        elapsed,
    }
}

#[test]
fn workers_killed_during_a_map_cost_only_the_inputs_they_were_running() {
    let _l = fork_lock();
    let _w = Watchdog::new(secs(240));
    for chunksize in [Some(1), None, Some(4000)] {
        let c = gated_chaos(4000, chunksize, 150, 12, 20_000);
        eprintln!(
            "chunksize {chunksize:?}: {} kills, {} re-executions, {:?}",
            c.kills, c.reexecuted, c.elapsed
        );
    }
    std::thread::sleep(Duration::from_millis(10));
}

/// The timer-driven version of the measurement (kill every 10 ms during a
/// 100,000-input map of 40 µs tasks), with the time without kills for comparison. Run with
/// `cargo test --release --test pool_reliability -- --ignored --nocapture`.
#[test]
#[ignore = "heavy: ~1 min; the figures of docs/reliability.md"]
fn heavy_kill_every_10_ms_during_100k_input_maps() {
    let _l = fork_lock();
    let _w = Watchdog::new(secs(1200));
    let n = 100_000;
    for chunksize in [None, Some(1)] {
        let mut times = Vec::new();
        for kill_every in [None, Some(Duration::from_millis(10))] {
            let st = SharedArray::<u64>::new(EXEC + n).unwrap();
            locked(&st)[WORK_NS] = 40_000;
            let mut b = Pool::builder().processes(2).retries(5);
            if let Some(c) = chunksize {
                b = b.chunksize(c);
            }
            let pool = b.build().unwrap();
            let done = Arc::new(AtomicBool::new(false));
            let killer = {
                let (st, done) = (st.clone(), done.clone());
                std::thread::spawn(move || {
                    let mut sent = 0u64;
                    while let Some(every) = kill_every {
                        std::thread::sleep(every);
                        if done.load(Ordering::SeqCst) {
                            break;
                        }
                        let pid = locked(&st)[LAST_PID] as i32;
                        if pid > 0 && is_our_child(pid) {
                            let pid = nix::unistd::Pid::from_raw(pid);
                            let sig = nix::sys::signal::Signal::SIGKILL;
                            sent += u64::from(nix::sys::signal::kill(pid, sig).is_ok());
                        }
                    }
                    sent
                })
            };
            let started = Instant::now();
            let out = pool.map_with(&st, counted, 0..n as u64);
            let elapsed = started.elapsed();
            done.store(true, Ordering::SeqCst);
            let kills = killer.join().unwrap();
            let reexecuted = check(n, &out.unwrap(), &st, kills);
            eprintln!(
                "n {n} chunksize {chunksize:?} kill every {kill_every:?}: {elapsed:?}, {kills} \
                 kills, {reexecuted} re-executions, {} workers replaced",
                pool.replaced_workers()
            );
            times.push(elapsed.as_secs_f64());
        }
        eprintln!(
            "chunksize {chunksize:?}: with kills / without = {:.2}x",
            times[1] / times[0]
        );
    }
}

/// A result whose `Drop` panics for the value 3, in the worker only (the parent never sees a 3:
/// that input fails).
#[derive(Debug, Serialize, Deserialize)]
struct Bomb(u32);

impl Drop for Bomb {
    fn drop(&mut self) {
        if self.0 == 3 {
            panic!("Bomb(3) dropped");
        }
    }
}

fn make_bomb(x: u32) -> Bomb {
    Bomb(x)
}

#[test]
fn a_panic_in_the_drop_of_a_result_fails_that_input_only() {
    let _l = fork_lock();
    let _w = Watchdog::new(secs(60));
    let pool = Pool::builder().processes(2).chunksize(10).build().unwrap();
    for _ in 0..3 {
        let out = pool.map_results(make_bomb, 0..20u32).unwrap();
        for (i, r) in out.iter().enumerate() {
            match (i, r) {
                (3, Err(Error::TaskPanicked { panic, .. })) => {
                    assert!(panic.message.contains("Bomb(3) dropped"), "{panic:?}")
                }
                (3, other) => panic!("input 3: expected TaskPanicked, got {other:?}"),
                (i, Ok(b)) => assert_eq!(b.0 as usize, i),
                (i, Err(e)) => panic!("input {i} failed: {e}"),
            }
        }
    }
    assert_eq!(pool.replaced_workers(), 0, "no worker died");
    let err = pool.apply(make_bomb, 3).unwrap_err();
    assert!(matches!(err, Error::TaskPanicked { .. }), "{err}");
}

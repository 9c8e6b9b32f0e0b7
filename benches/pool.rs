//! Pool benchmarks, side by side with CPython's `multiprocessing.Pool` and with the raw pipe
//! limits, measured in the same run.
//!
//! `cargo bench --bench pool -- --warm-up-time 1 --measurement-time 3`
//!
//! Pools at scale (2/8/32/128 workers, both start methods, and the CPython peer at the same
//! counts), timed by hand, 3 repetitions each: `cargo bench --bench pool -- scale`
//! (`MULTIPROC_SCALE_WORKERS=2,128` picks the counts; see [`bench_scale`]).
//!
//! Criterion measures (1)–(4) and the raw limits; (5), the CPU-bound speed-up, is timed by hand
//! (2 alternating repetitions of 200 × ~10 ms). Then `python3 benches/py/peer.py pool` runs
//! (skip it with `MULTIPROC_BENCH_PY=0`) and a table of ratios is printed.

use std::collections::HashMap;
use std::hint::black_box;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use criterion::Criterion;
use multiproc::{PodVec, Pool, Process};

/// Mean time per iteration of each benchmark, recorded by `iter_custom`.
static MEANS: Mutex<Vec<(&'static str, Duration, u64)>> = Mutex::new(Vec::new());

fn record(name: &'static str, total: Duration, iters: u64) {
    MEANS.lock().unwrap().push((name, total, iters));
}

/// Criterion's median time per iteration of `id` (`group/name` for grouped benchmarks), read
/// from its `estimates.json`; falls back to the mean recorded here.
fn mean(id: &str) -> Option<Duration> {
    let dir = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into());
    let path = format!("{dir}/criterion/{id}/new/estimates.json");
    let from_criterion = std::fs::read_to_string(path).ok().and_then(|json| {
        let median = &json[json.find("\"median\"")?..];
        let v = &median[median.find("\"point_estimate\":")? + 17..];
        let end = v.find([',', '}'])?;
        v[..end].trim().parse::<f64>().ok()
    });
    if let Some(ns) = from_criterion {
        return Some(Duration::from_nanos(ns as u64));
    }
    let name = id.rsplit('/').next().unwrap_or(id);
    let m = MEANS.lock().unwrap();
    let (t, n) = m
        .iter()
        .filter(|(k, _, _)| *k == name)
        .fold((Duration::ZERO, 0), |(t, n), (_, d, i)| (t + *d, n + i));
    (n > 0).then(|| t / n as u32)
}

fn sq(x: u64) -> u64 {
    x * x
}

fn arr_sum(a: Vec<f64>) -> f64 {
    a.iter().sum()
}

fn pod_sum(a: PodVec<f64>) -> f64 {
    a.iter().sum()
}

fn echo(a: Vec<f64>) -> Vec<f64> {
    a
}

/// A pure loop of about 10 ms (calibrated), like Python's `burn`.
fn burn(n: u64) -> u64 {
    let mut s = 0u64;
    for i in 0..n {
        s = (s + black_box(i) * i) % 1_000_003;
    }
    s
}

fn calibrate_burn() -> u64 {
    let mut n = 100_000u64;
    loop {
        let t = Instant::now();
        black_box(burn(n));
        let e = t.elapsed();
        if e > Duration::from_millis(2) {
            return (n as f64 * 0.010 / e.as_secs_f64()) as u64;
        }
        n *= 4;
    }
}

fn timed<O>(name: &'static str, iters: u64, mut f: impl FnMut() -> O) -> Duration {
    let t = Instant::now();
    for _ in 0..iters {
        black_box(f());
    }
    let d = t.elapsed();
    record(name, d, iters);
    d
}

/// A child that answers each 1-byte ping with a 1-byte pong (a raw round trip).
fn pong_child() -> (Process, UnixStream) {
    let (a, b) = UnixStream::pair().unwrap();
    let p = Process::new(move || {
        let mut b = b;
        let mut buf = [0u8; 1];
        while b.read_exact(&mut buf).is_ok() {
            if b.write_all(&buf).is_err() {
                break;
            }
        }
    });
    p.start().unwrap();
    (p, a)
}

/// A child that reads 16-byte task messages one by one and answers each with 16 bytes.
fn task_child() -> (Process, UnixStream) {
    let (a, b) = UnixStream::pair().unwrap();
    let p = Process::new(move || {
        let mut b = b;
        let mut buf = [0u8; 16];
        while b.read_exact(&mut buf).is_ok() {
            let x = u64::from_le_bytes(buf[8..].try_into().unwrap());
            buf[8..].copy_from_slice(&(x * x).to_le_bytes());
            if b.write_all(&buf).is_err() {
                break;
            }
        }
    });
    p.start().unwrap();
    (p, a)
}

fn bench_rust(c: &mut Criterion) {
    // (1) start + tiny map + join.
    c.bench_function("pool_start_map_join", |b| {
        b.iter_custom(|iters| {
            timed("pool_start_map_join", iters, || {
                let pool = Pool::with_processes(2).unwrap();
                assert_eq!(pool.map(sq, 0..10u64).unwrap()[9], 81);
                pool.close();
                pool.join().unwrap();
            })
        })
    });

    // (1b) the same with the fork server (started by the first pool, in the warm-up; see also
    // examples/start_methods.rs for a big parent).
    c.bench_function("pool_start_map_join_forkserver", |b| {
        b.iter_custom(|iters| {
            timed("pool_start_map_join_forkserver", iters, || {
                let pool = Pool::builder()
                    .processes(2)
                    .start_method(multiproc::StartMethod::ForkServer)
                    .build()
                    .unwrap();
                assert_eq!(pool.map(sq, 0..10u64).unwrap()[9], 81);
                pool.close();
                pool.join().unwrap();
            })
        })
    });

    let pool = Pool::with_processes(2).unwrap();
    pool.map(sq, 0..100u64).unwrap();
    let want: u64 = (0..100_000u64).map(sq).sum();

    // (2) 100k tiny tasks.
    let mut g = c.benchmark_group("map_100k");
    g.sample_size(10);
    for (name, chunk) in [("map_100k_default", None), ("map_100k_chunk1", Some(1))] {
        g.bench_function(name, |b| {
            pool.set_chunksize(chunk).unwrap();
            b.iter_custom(|iters| {
                timed(name, iters, || {
                    let r = pool.map(sq, 0..100_000u64).unwrap();
                    assert_eq!(r.iter().sum::<u64>(), want);
                })
            })
        });
    }
    g.finish();
    pool.set_chunksize(None).unwrap();

    // (3) sequential apply latency.
    c.bench_function("apply_latency", |b| {
        b.iter_custom(|iters| {
            let mut i = 0u64;
            timed("apply_latency", iters, || {
                i += 1;
                pool.apply(sq, i).unwrap()
            })
        })
    });

    // (4) 80 MB of f64 to a worker.
    let a: Vec<f64> = (0..10_000_000u64).map(|x| x as f64).collect();
    let total = 10_000_000f64 * 9_999_999f64 / 2.0;
    let mut g = c.benchmark_group("array_80mb");
    g.sample_size(10);
    g.bench_function("array_80mb_sum", |b| {
        b.iter_custom(|iters| {
            let mut d = Duration::ZERO;
            for _ in 0..iters {
                let v = a.clone();
                let t = Instant::now();
                assert_eq!(pool.apply(arr_sum, v).unwrap(), total);
                d += t.elapsed();
            }
            record("array_80mb_sum", d, iters);
            d
        })
    });
    // The same as a `PodVec` made from the heap `Vec`: one copy into a (kept, warm) memory file.
    g.bench_function("array_80mb_podvec_sum", |b| {
        b.iter_custom(|iters| {
            let mut d = Duration::ZERO;
            for _ in 0..iters {
                let v = PodVec::from(a.clone());
                let t = Instant::now();
                assert_eq!(pool.apply(pod_sum, v).unwrap(), total);
                d += t.elapsed();
            }
            record("array_80mb_podvec_sum", d, iters);
            d
        })
    });
    g.bench_function("array_80mb_echo", |b| {
        b.iter_custom(|iters| {
            let mut d = Duration::ZERO;
            for _ in 0..iters {
                let v = a.clone();
                let t = Instant::now();
                let back = pool.apply(echo, v).unwrap();
                d += t.elapsed();
                assert_eq!(back.len(), a.len());
            }
            record("array_80mb_echo", d, iters);
            d
        })
    });
    g.finish();
    drop(pool);

    // Raw limits: a ping-pong, and one socket message per task.
    let (p, mut s) = pong_child();
    c.bench_function("raw_pingpong", |b| {
        b.iter_custom(|iters| {
            let mut buf = [7u8];
            timed("raw_pingpong", iters, || {
                s.write_all(&buf).unwrap();
                s.read_exact(&mut buf).unwrap();
            })
        })
    });
    drop(s);
    // The parent's copy of the closure keeps the child's socket end open: stop it explicitly.
    p.terminate().unwrap();
    p.join().unwrap();

    let (p, s) = task_child();
    let mut g = c.benchmark_group("raw_tasks");
    g.sample_size(10);
    g.bench_function("raw_msg_per_task_100k", |b| {
        b.iter_custom(|iters| {
            let mut d = Duration::ZERO;
            for _ in 0..iters {
                let mut w = s.try_clone().unwrap();
                let mut r = s.try_clone().unwrap();
                let t = Instant::now();
                std::thread::scope(|sc| {
                    sc.spawn(move || {
                        let mut out = Vec::with_capacity(16 * 100_000);
                        for i in 0..100_000u64 {
                            out.extend_from_slice(&8u64.to_le_bytes());
                            out.extend_from_slice(&i.to_le_bytes());
                            // one message per task: write each as it is made
                            w.write_all(&out).unwrap();
                            out.clear();
                        }
                    });
                    let mut buf = [0u8; 16];
                    for _ in 0..100_000 {
                        r.read_exact(&mut buf).unwrap();
                    }
                });
                d += t.elapsed();
            }
            record("raw_msg_per_task_100k", d, iters);
            d
        })
    });
    g.finish();
    drop(s);
    p.terminate().unwrap();
    p.join().unwrap();
}

/// (5) 200 CPU-bound tasks of ~10 ms on 1 and 2 processes, alternating, 2 rounds; and, as the
/// machine's own limit at that moment, the same work on 1 and 2 plain threads.
fn bench_cpu() -> (f64, f64, f64) {
    let n = calibrate_burn();
    let want = burn(n);
    let p1 = Pool::builder().processes(1).chunksize(1).build().unwrap();
    let p2 = Pool::builder().processes(2).chunksize(1).build().unwrap();
    p1.map(sq, 0..10u64).unwrap();
    p2.map(sq, 0..10u64).unwrap();
    let (mut t1, mut t2) = (Vec::new(), Vec::new());
    for _ in 0..2 {
        for (pool, out) in [(&p1, &mut t1), (&p2, &mut t2)] {
            let t = Instant::now();
            let r = pool.map(burn, vec![n; 200]).unwrap();
            out.push(t.elapsed().as_secs_f64());
            assert!(r.iter().all(|&x| x == want));
        }
    }
    let med = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let threads = |k: usize| {
        let t = Instant::now();
        std::thread::scope(|s| {
            for _ in 0..k {
                s.spawn(|| {
                    for _ in 0..200 / k {
                        black_box(burn(n));
                    }
                });
            }
        });
        t.elapsed().as_secs_f64()
    };
    let thread_speedup = threads(1) / threads(2);
    (med(&mut t1), med(&mut t2), thread_speedup)
}

fn python() -> HashMap<String, f64> {
    let mut out = HashMap::new();
    if std::env::var("MULTIPROC_BENCH_PY").is_ok_and(|v| v == "0") {
        return out;
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/py/peer.py");
    let Ok(o) = std::process::Command::new("python3")
        .args([script, "pool"])
        .output()
    else {
        eprintln!("python3 not available: no CPython column");
        return out;
    };
    for line in String::from_utf8_lossy(&o.stdout).lines() {
        // {"group": "pool", "name": "...", "value": 1.0, "unit": "...", "iters": 1}
        let field = |k: &str| {
            let i = line.find(&format!("\"{k}\":"))? + k.len() + 3;
            let rest = line[i..].trim_start();
            let end = rest.find([',', '}']).unwrap_or(rest.len());
            Some(rest[..end].trim().trim_matches('"').to_string())
        };
        if let (Some(name), Some(v)) = (field("name"), field("value")) {
            if let Ok(v) = v.parse() {
                out.insert(name, v);
            }
        }
    }
    out
}

/// Worker counts of the scale rows.
const SCALE_WORKERS: [usize; 4] = [2, 8, 32, 128];
/// Inputs of the scale rows' chunksize-1 map.
const SCALE_MAP: u64 = 200_000;

/// One repetition at `n` workers: (pool start per worker, chunksize-1 map throughput). Pool
/// start is `build` plus a first map of `n` inputs with chunksize 1 (every worker answers
/// once); the map of [`SCALE_MAP`] inputs runs on that pool; close and join are not timed.
fn scale_once(n: usize, method: multiproc::StartMethod) -> (f64, f64) {
    let want: u64 = (0..SCALE_MAP).map(sq).sum();
    let t = Instant::now();
    let pool = Pool::builder()
        .processes(n)
        .chunksize(1)
        .start_method(method)
        .build()
        .unwrap();
    let first = pool.map(sq, 0..n as u64).unwrap();
    let start = t.elapsed().as_secs_f64() / n as f64;
    assert_eq!(first.len(), n);
    let t = Instant::now();
    let r = pool.map(sq, 0..SCALE_MAP).unwrap();
    let rate = SCALE_MAP as f64 / t.elapsed().as_secs_f64();
    assert_eq!(r.iter().sum::<u64>(), want);
    pool.close();
    pool.join().unwrap();
    (start, rate)
}

/// The raw limit of a pool start, per process: `n` bare forks, each child writing one byte to a
/// pipe and exiting at once, the parent reading the `n` bytes (then reaping them, not timed).
/// The heap's free pages are given back first, as a Fork pool's start does (each fork copies
/// the mappings of what the parent holds).
fn raw_fork_start(n: usize) -> f64 {
    // SAFETY: `malloc_trim` only returns pages of free heap chunks to the kernel.
    unsafe { libc::malloc_trim(0) };
    let (r, w) = nix::unistd::pipe().unwrap();
    let mut r = std::fs::File::from(r);
    let t = Instant::now();
    let mut kids = Vec::with_capacity(n);
    for _ in 0..n {
        // SAFETY: the child only writes one byte and calls `_exit` (async-signal-safe).
        match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Child => {
                let _ = nix::unistd::write(&w, b"x");
                // SAFETY: `_exit` ends the child at once, running none of the parent's code.
                unsafe { libc::_exit(0) }
            }
            nix::unistd::ForkResult::Parent { child } => kids.push(child),
        }
    }
    let mut got = vec![0u8; n];
    r.read_exact(&mut got).unwrap();
    let per = t.elapsed().as_secs_f64() / n as f64;
    for k in kids {
        nix::sys::wait::waitpid(k, None).unwrap();
    }
    per
}

/// Length of the idle row's window.
const IDLE_SECS: u64 = 10;

/// utime + stime of `pid` in clock ticks (10 ms), from `/proc/<pid>/stat`.
fn cpu_ticks(pid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rfind(')').map_or("", |i| &stat[i + 1..]);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    field(11) + field(12)
}

/// CPU used by a warm 128-worker pool (its workers and this process) left idle for
/// [`IDLE_SECS`]: (ms, percent of one core).
fn idle_cpu(method: multiproc::StartMethod) -> (f64, f64) {
    let pool = Pool::builder()
        .processes(128)
        .start_method(method)
        .build()
        .unwrap();
    pool.map(sq, 0..1000u64).unwrap();
    let mut pids = pool.pids();
    pids.push(std::process::id() as i32);
    let before: u64 = pids.iter().map(|&p| cpu_ticks(p)).sum();
    std::thread::sleep(Duration::from_secs(IDLE_SECS));
    let after: u64 = pids.iter().map(|&p| cpu_ticks(p)).sum();
    pool.close();
    pool.join().unwrap();
    let ms = (after - before) as f64 * 10.0;
    (ms, ms / (IDLE_SECS as f64 * 1e3) * 100.0)
}

/// The scale rows: pool start per worker and chunksize-1 map throughput at 2/8/32/128 workers,
/// under both start methods, 3 repetitions (median and range); the CPU a warm 128-worker pool
/// uses while idle for 10 s; then CPython's `Pool` at the same counts
/// (`benches/py/peer.py scale`), and each count's throughput as a share of 2 workers'.
fn bench_scale() {
    let counts: Vec<usize> = std::env::var("MULTIPROC_SCALE_WORKERS")
        .ok()
        .map(|v| v.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .unwrap_or_else(|| SCALE_WORKERS.to_vec());
    let methods = [
        ("Fork", multiproc::StartMethod::Fork),
        ("ForkServer", multiproc::StartMethod::ForkServer),
    ];
    // Warm up (and start the fork server) outside the figures.
    for (_, m) in methods {
        scale_once(2, m);
    }
    let spread = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        (v[v.len() / 2], v[0], v[v.len() - 1])
    };
    println!(
        "| method | workers | start per worker, ms (median [min–max]) | map 200k chunksize 1, M/s | vs its 2 workers |"
    );
    println!("|---|---|---|---|---|");
    for (label, m) in methods {
        let mut base = None;
        for &n in &counts {
            let (mut starts, mut rates) = (Vec::new(), Vec::new());
            for _ in 0..3 {
                let (s, r) = scale_once(n, m);
                starts.push(s * 1e3);
                rates.push(r / 1e6);
            }
            let (s, s0, s1) = spread(&mut starts);
            let (r, r0, r1) = spread(&mut rates);
            let share = base.map_or(String::from("–"), |b: f64| {
                format!("{:.0}%", 100.0 * r / b)
            });
            base.get_or_insert(r);
            println!(
                "| {label} | {n} | {s:.3} [{s0:.3}–{s1:.3}] | {r:.2} [{r0:.2}–{r1:.2}] | {share} |"
            );
        }
    }
    for &n in &counts {
        let mut v: Vec<f64> = (0..3).map(|_| raw_fork_start(n) * 1e3).collect();
        let (s, s0, s1) = spread(&mut v);
        println!("| raw fork + 1-byte answer | {n} | {s:.3} [{s0:.3}–{s1:.3}] | – | – |");
    }
    for (label, m) in methods {
        let (ms, share) = idle_cpu(m);
        println!(
            "| {label} | 128 idle for {IDLE_SECS} s | CPU of the workers and the parent: {ms:.0} ms ({share:.3}% of one core) | – | – |"
        );
    }
    if std::env::var("MULTIPROC_BENCH_PY").is_ok_and(|v| v == "0") {
        return;
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/py/peer.py");
    let arg: Vec<String> = counts.iter().map(|n| n.to_string()).collect();
    let Ok(o) = std::process::Command::new("python3")
        .args([script, "scale", "--workers"])
        .args(&arg)
        .output()
    else {
        eprintln!("python3 not available: no CPython rows");
        return;
    };
    let mut base = None;
    for &n in &counts {
        let get = |name: String| {
            String::from_utf8_lossy(&o.stdout).lines().find_map(|l| {
                let rest = &l[l.find(&format!("\"{name}\""))?..];
                let v = &rest[rest.find("\"value\":")? + 8..];
                v[..v.find(',')?].trim().parse::<f64>().ok()
            })
        };
        let s = get(format!("scale_start_per_worker_w{n}")).unwrap_or(f64::NAN);
        let r = get(format!("scale_map_200k_chunk1_w{n}")).unwrap_or(f64::NAN) / 1e6;
        let share = base.map_or(String::from("–"), |b: f64| {
            format!("{:.0}%", 100.0 * r / b)
        });
        base.get_or_insert(r);
        println!("| CPython fork | {n} | {s:.3} | {r:.3} | {share} |");
    }
}

fn main() {
    if std::env::args().any(|a| a == "scale") {
        bench_scale();
        return;
    }
    let mut c = Criterion::default().configure_from_args();
    bench_rust(&mut c);
    let full = std::env::args().any(|a| a == "--bench");
    if !full {
        return;
    }
    let (p1, p2, thread_speedup) = bench_cpu();
    let py = python();
    let us = |n: &str| mean(n).map_or(f64::NAN, |d| d.as_secs_f64() * 1e6);
    let rows: Vec<(&str, f64, &str, bool)> = vec![
        (
            "pool_start_map_join",
            us("pool_start_map_join") / 1e3,
            "ms",
            false,
        ),
        (
            "map_100k_default",
            1e5 / (us("map_100k/map_100k_default") / 1e6),
            "tasks/s",
            true,
        ),
        (
            "map_100k_chunk1",
            1e5 / (us("map_100k/map_100k_chunk1") / 1e6),
            "tasks/s",
            true,
        ),
        ("apply_latency", us("apply_latency"), "us", false),
        (
            "array_80mb_sum",
            80.0 / (us("array_80mb/array_80mb_sum") / 1e6),
            "MB/s",
            true,
        ),
        (
            "array_80mb_podvec_sum",
            80.0 / (us("array_80mb/array_80mb_podvec_sum") / 1e6),
            "MB/s",
            true,
        ),
        (
            "array_80mb_echo",
            80.0 / (us("array_80mb/array_80mb_echo") / 1e6),
            "MB/s",
            true,
        ),
        ("cpu_200x10ms_p1", p1, "s", false),
        ("cpu_200x10ms_p2", p2, "s", false),
        ("cpu_speedup", p1 / p2, "ratio", true),
    ];
    println!();
    println!("| benchmark | multiproc | CPython | unit | multiproc vs CPython |");
    println!("|---|---|---|---|---|");
    for (name, ours, unit, higher_better) in rows {
        let theirs = py.get(name).copied();
        let ratio = theirs.map_or(String::from("–"), |t| {
            let r = if higher_better { ours / t } else { t / ours };
            format!("{r:.1}x")
        });
        let theirs = theirs.map_or(String::from("–"), |t| format!("{t:.4}"));
        println!("| {name} | {ours:.4} | {theirs} | {unit} | {ratio} |");
    }
    println!("| cpu_speedup_threads (machine limit now) | {thread_speedup:.2} | – | ratio | – |");
    let ping = us("raw_pingpong");
    let raw = 1e5 / (us("raw_tasks/raw_msg_per_task_100k") / 1e6);
    println!(
        "| raw_pingpong | {ping:.1} | – | us | apply_latency / raw = {:.2} |",
        us("apply_latency") / ping
    );
    println!(
        "| raw_msg_per_task | {raw:.0} | – | tasks/s | map_100k_chunk1 / raw = {:.2} |",
        1e5 / (us("map_100k/map_100k_chunk1") / 1e6) / raw
    );
}

//! Chunked maps (issue 17 §2): `pool.map(f, 100_000 tiny inputs)` with the default chunksize on
//! 2 workers, side by side in one run with CPython's `multiprocessing` (benches/py/chunked.py,
//! `Pool(2).map(sq, range(N))`) and with procspawn, whose pool is given the same chunks, each
//! sent as one `Vec` (its emulation of chunked maps).
//!
//! `cargo bench --bench chunked`
//!
//! Each round times `REPS` maps of each kind (after a warm-up) and takes the median; the parent's
//! CPU per input is this process's user + system time (`getrusage(RUSAGE_SELF)`: the workers
//! are other processes) over the timed maps, divided by the inputs. Rows besides the issue's
//! (`u64`: `x * x`): `f64` inputs, `(u32, f64)` pairs through `starmap`, and `String` inputs
//! (not plain data: the general path). Environment: `CHUNKED_ROUNDS` (3), `CHUNKED_REPS` (20),
//! `MULTIPROC_BENCH_PY=0` (no CPython), `CHUNKED_ROWS=u64,f64` (only these multiproc rows),
//! `CHUNKED_ONLY=multiproc` (only multiproc's rows, e.g.
//! under `perf stat --no-inherit -e task-clock` to count the parent alone).

use std::time::{Duration, Instant};

use multiproc::Pool;

const N: usize = 100_000;

fn sq(x: u64) -> u64 {
    x * x
}

fn affine(x: f64) -> f64 {
    x * 1.5 + 0.25
}

fn weigh(k: u32, x: f64) -> f64 {
    f64::from(k) * x
}

fn len(s: String) -> usize {
    s.len()
}

/// procspawn's task: a whole chunk in one `Vec`, its results in one `Vec`.
fn sq_chunk(v: Vec<u64>) -> Vec<u64> {
    v.into_iter().map(sq).collect()
}

/// This process's CPU time so far (user + system).
fn cpu_time() -> Duration {
    use nix::sys::resource::{UsageWho, getrusage};
    let u = getrusage(UsageWho::RUSAGE_SELF).unwrap();
    let tv =
        |t: nix::sys::time::TimeVal| Duration::new(t.tv_sec() as u64, t.tv_usec() as u32 * 1000);
    tv(u.user_time()) + tv(u.system_time())
}

/// The CPU time the processes `pids` have run so far (`/proc/PID/schedstat`, in ns).
fn workers_cpu(pids: &[i32]) -> f64 {
    pids.iter()
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<f64>().ok())
        .sum()
}

/// One row's figures in one round: inputs per second (median map), parent CPU ns per input,
/// and the workers' CPU ns per input (both workers together).
#[derive(Clone, Copy, Debug)]
struct Figure {
    rate: f64,
    cpu_ns: f64,
    workers_ns: f64,
}

/// Times `reps` runs of `map` (after one warm-up), each over `N` inputs; `pids` are the
/// workers whose CPU time is counted.
fn measure(reps: usize, pids: &[i32], mut map: impl FnMut()) -> Figure {
    map();
    let mut times = Vec::with_capacity(reps);
    let cpu0 = cpu_time();
    let w0 = workers_cpu(pids);
    for _ in 0..reps {
        let t = Instant::now();
        map();
        times.push(t.elapsed().as_secs_f64());
    }
    let cpu = (cpu_time() - cpu0).as_secs_f64();
    let w = workers_cpu(pids) - w0;
    times.sort_by(f64::total_cmp);
    Figure {
        rate: N as f64 / times[times.len() / 2],
        cpu_ns: cpu * 1e9 / (reps * N) as f64,
        workers_ns: w / (reps * N) as f64,
    }
}

/// One timed map of a row.
type Row<'a> = Box<dyn Fn() + 'a>;

fn multiproc_rows(pool: &Pool, reps: usize) -> Vec<(&'static str, Figure)> {
    let want: u64 = (0..N as u64).map(sq).sum();
    let floats: Vec<f64> = (0..N).map(|i| i as f64).collect();
    let pairs: Vec<(u32, f64)> = (0..N as u32).map(|k| (k % 7, f64::from(k))).collect();
    let words: Vec<String> = (0..N).map(|i| "w".repeat(i % 13)).collect();
    let words_len: usize = words.iter().map(String::len).sum();
    let rows: Vec<(&'static str, Row<'_>)> = vec![
        (
            "u64",
            Box::new(|| {
                let r = pool.map(sq, 0..N as u64).unwrap();
                assert_eq!(r.iter().sum::<u64>(), want);
            }),
        ),
        (
            "f64",
            Box::new(|| {
                let r = pool.map(affine, floats.clone()).unwrap();
                assert_eq!(r[N - 1], affine(floats[N - 1]));
            }),
        ),
        (
            "(u32, f64) starmap",
            Box::new(|| {
                let r = pool.starmap(weigh, pairs.clone()).unwrap();
                assert_eq!(r[N - 1], weigh(pairs[N - 1].0, pairs[N - 1].1));
            }),
        ),
        (
            "String",
            Box::new(|| {
                let r = pool.map(len, words.clone()).unwrap();
                assert_eq!(r.iter().sum::<usize>(), words_len);
            }),
        ),
    ];
    // `CHUNKED_ROWS=u64,f64` runs only those rows (the first must be `u64` for the ratios).
    let only = std::env::var("CHUNKED_ROWS").ok();
    rows.into_iter()
        .filter(|(name, _)| {
            only.as_ref()
                .is_none_or(|o| o.split(',').any(|k| k == *name))
        })
        .map(|(name, map)| (name, measure(reps, &pool.pids(), map)))
        .collect()
}

/// procspawn's emulated chunked map: the inputs cut as multiproc cuts them (`ceil(N / (4 × 2))`
/// per chunk), each chunk one call of the pool.
fn procspawn_row(pool: &procspawn::Pool, reps: usize) -> Figure {
    let want: u64 = (0..N as u64).map(sq).sum();
    let chunk = N.div_ceil(4 * 2);
    measure(reps, &[], || {
        let handles: Vec<_> = (0..N)
            .step_by(chunk)
            .map(|s| {
                let v: Vec<u64> = (s as u64..(s + chunk).min(N) as u64).collect();
                pool.spawn(v, sq_chunk as fn(Vec<u64>) -> Vec<u64>)
            })
            .collect();
        let mut out = Vec::with_capacity(N);
        for h in handles {
            out.extend(h.join().unwrap());
        }
        assert_eq!(out.iter().sum::<u64>(), want);
    })
}

/// CPython's figure (inputs/s), or `None` when Python is skipped or missing.
fn cpython_row(reps: usize) -> Option<f64> {
    if std::env::var("MULTIPROC_BENCH_PY").is_ok_and(|v| v == "0") {
        return None;
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/py/chunked.py");
    let out = std::process::Command::new("python3")
        .args([script, &N.to_string(), &reps.to_string()])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let v = &text[text.find("\"value\":")? + 8..];
    v[..v.find('}')?].trim().parse().ok()
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn range(v: &[f64]) -> String {
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{lo:.2}–{hi:.2}")
}

fn main() {
    procspawn::init();
    let rounds = env_or("CHUNKED_ROUNDS", 3);
    let reps = env_or("CHUNKED_REPS", 20);
    let only_ours = std::env::var("CHUNKED_ONLY").is_ok_and(|v| v == "multiproc");
    println!("load average before: {}", loadavg());
    let pool = Pool::with_processes(2).unwrap();
    let peer = (!only_ours).then(|| procspawn::Pool::new(2).unwrap());
    let (mut vs_py, mut vs_ps, mut cpu) = (Vec::new(), Vec::new(), Vec::new());
    for round in 1..=rounds {
        let ours = multiproc_rows(&pool, reps);
        let ps = peer.as_ref().map(|p| procspawn_row(p, reps));
        let py = if only_ours { None } else { cpython_row(reps) };
        println!("\nround {round} (load {})", loadavg());
        println!(
            "| map of {N}, default chunks, 2 workers | inputs/s | parent CPU ns/input | \
             workers' CPU ns/input |"
        );
        println!("|---|---|---|---|");
        for (name, f) in &ours {
            println!(
                "| multiproc {name} | {:.3e} | {:.1} | {:.1} |",
                f.rate, f.cpu_ns, f.workers_ns
            );
        }
        if let Some(f) = ps {
            println!(
                "| procspawn u64 (chunks as one Vec) | {:.3e} | {:.1} |",
                f.rate, f.cpu_ns
            );
            vs_ps.push(ours[0].1.rate / f.rate);
        }
        if let Some(r) = py {
            println!("| CPython u64 | {r:.3e} | – | – |");
            vs_py.push(ours[0].1.rate / r);
        }
        cpu.push(ours[0].1.cpu_ns);
    }
    println!("\nsummary over {rounds} rounds (load after: {})", loadavg());
    println!("multiproc u64 / CPython: {}", range(&vs_py));
    println!("multiproc u64 / procspawn: {}", range(&vs_ps));
    println!("multiproc u64 parent CPU ns/input: {}", range(&cpu));
}

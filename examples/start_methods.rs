//! Pool start time under both start methods, for a small parent and for a parent with a big
//! resident heap, side by side in one run (the figures of docs/benchmarks.md, "Start methods").
//!
//! ```sh
//! cargo run --release --example start_methods -- [GIB] [WORKERS] [REPS]   # default 4 16 5
//! python3 benches/py/start_methods.py [GIB] [WORKERS] [REPS]              # CPython's peer
//! ```
//!
//! A pool start is `build()` plus a first `map` of one input per worker (so that every worker
//! has run), timed until it returns; the pool is dropped (killed and reaped) outside the timing.
//! The fork server is started before the timed runs (its one-time start is printed apart).

use std::time::Instant;

use multiproc::{Pool, StartMethod};

fn echo(x: u32) -> u32 {
    x
}

/// Milliseconds of one pool start with `method`.
fn start_ms(method: StartMethod, workers: usize) -> f64 {
    let t = Instant::now();
    let pool = Pool::builder()
        .processes(workers)
        .start_method(method)
        .build()
        .expect("pool");
    let n = workers as u32;
    let got = pool.map(echo, 0..n).expect("map");
    let ms = t.elapsed().as_secs_f64() * 1e3;
    assert_eq!(got, (0..n).collect::<Vec<_>>());
    drop(pool);
    ms
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn row(label: &str, workers: usize, reps: usize) -> (f64, f64) {
    let fork = median(
        (0..reps)
            .map(|_| start_ms(StartMethod::Fork, workers))
            .collect(),
    );
    let server = median(
        (0..reps)
            .map(|_| start_ms(StartMethod::ForkServer, workers))
            .collect(),
    );
    println!(
        "| {label} | {workers} | {fork:.2} | {server:.2} | {:.2} |",
        server / fork
    );
    (fork, server)
}

fn main() -> multiproc::Result<()> {
    let mut args = std::env::args()
        .skip(1)
        .map(|a| a.parse::<usize>().expect("a number"));
    let gib = args.next().unwrap_or(4);
    let workers = args.next().unwrap_or(16);
    let reps = args.next().unwrap_or(5);
    let t = Instant::now();
    multiproc::set_start_method(StartMethod::ForkServer);
    multiproc::init()?;
    println!(
        "fork server started by init() in {:.2} ms",
        t.elapsed().as_secs_f64() * 1e3
    );
    println!("| parent | workers | Fork ms | ForkServer ms | ForkServer / Fork |");
    println!("|---|---|---|---|---|");
    row("small (no ballast)", workers, reps);
    // A big heap, every page touched (written), as a program that loaded its data.
    let ballast = vec![1u8; gib << 30];
    row(&format!("{gib} GiB resident"), workers, reps);
    std::hint::black_box(&ballast);
    Ok(())
}

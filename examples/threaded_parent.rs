//! A threaded parent: 4 threads hammer a global `Mutex` (holding it most of the time) while the
//! main thread builds 100 pools, each mapping a function that takes the same `Mutex`. With
//! `Fork`, a worker forked while another thread holds the lock inherits it locked and hangs
//! (each map is bounded by a task timeout); with `ForkServer`, workers come from a fresh
//! single-threaded process and see the `Mutex` at its initial value. Prints, per start method,
//! how many of the pools' maps hung (the figure in docs/benchmarks.md).
//!
//! ```sh
//! cargo run --release --example threaded_parent -- [POOLS] [TIMEOUT_MS]   # default 100 500
//! ```

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use multiproc::{Pool, StartMethod};

static GLOBAL: Mutex<u64> = Mutex::new(0);
static STOP: AtomicBool = AtomicBool::new(false);

/// Takes the global lock in the worker and reads it.
fn read_global(_: u32) -> u64 {
    *GLOBAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// (maps that hung, maps that saw the initial value 0, seconds) for `pools` pools.
fn run(method: StartMethod, pools: usize, timeout: Duration) -> (usize, usize, f64) {
    let t = Instant::now();
    let (mut hung, mut fresh) = (0, 0);
    for _ in 0..pools {
        let pool = Pool::builder()
            .processes(1)
            .start_method(method)
            .task_timeout(timeout)
            .build()
            .expect("pool");
        match pool.map_results(read_global, [0]).expect("map").remove(0) {
            Ok(0) => fresh += 1,
            Ok(_) => {}
            Err(e) if e.is_timeout() => hung += 1,
            Err(e) => panic!("{e}"),
        }
    }
    (hung, fresh, t.elapsed().as_secs_f64())
}

fn main() {
    let mut args = std::env::args()
        .skip(1)
        .map(|a| a.parse::<u64>().expect("a number"));
    let pools = args.next().unwrap_or(100) as usize;
    let timeout = Duration::from_millis(args.next().unwrap_or(500));
    let hammers: Vec<_> = (0..4)
        .map(|_| {
            std::thread::spawn(|| {
                while !STOP.load(Ordering::Relaxed) {
                    let mut g = GLOBAL.lock().unwrap();
                    *g += 1;
                    let until = Instant::now() + Duration::from_micros(200);
                    while Instant::now() < until {
                        std::hint::spin_loop();
                    }
                }
            })
        })
        .collect();
    println!(
        "| start method | pools | maps hung (task timeout {timeout:?}) | saw the initial value | seconds |"
    );
    println!("|---|---|---|---|---|");
    for (name, method) in [
        ("Fork", StartMethod::Fork),
        ("ForkServer", StartMethod::ForkServer),
    ] {
        let (hung, fresh, secs) = run(method, pools, timeout);
        println!("| {name} | {pools} | {hung} | {fresh} | {secs:.1} |");
    }
    STOP.store(true, Ordering::Relaxed);
    for h in hammers {
        h.join().unwrap();
    }
}

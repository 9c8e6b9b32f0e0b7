//! Process start+join and Queue throughput, side by side with CPython's `multiprocessing`
//! (benches/py/peer.py foundation) and with the raw limits (fork+waitpid; a pipe carrying one
//! item per write), in one run.
//!
//! ```text
//! cargo bench --bench foundation
//! ```

mod compare;

use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use compare::{Row, Unit, record};
use criterion::{Criterion, Throughput};
use multiproc::{Process, Queue};

const SMALL: u64 = 100_000;
const MIB: usize = 1 << 20;

fn process_start_join(c: &mut Criterion) {
    let mut g = c.benchmark_group("process");
    g.bench_function("process_start_join", |b| {
        b.iter_custom(|iters| {
            let t = Instant::now();
            for _ in 0..iters {
                let p = Process::new(|| {});
                p.start().unwrap();
                p.join().unwrap();
                assert_eq!(p.exitcode(), Some(0));
            }
            record("process_start_join", iters, t.elapsed())
        })
    });
    g.bench_function("raw_fork_waitpid", |b| {
        b.iter_custom(|iters| {
            let t = Instant::now();
            for _ in 0..iters {
                // SAFETY: the child only calls `_exit`, which is async-signal-safe.
                match unsafe { nix::unistd::fork() }.unwrap() {
                    nix::unistd::ForkResult::Child => unsafe_exit(),
                    nix::unistd::ForkResult::Parent { child } => {
                        nix::sys::wait::waitpid(child, None).unwrap();
                    }
                }
            }
            record("raw_fork_waitpid", iters, t.elapsed())
        })
    });
    g.finish();
}

fn unsafe_exit() -> ! {
    // SAFETY: `_exit` ends the forked child at once, running none of the parent's destructors.
    unsafe { libc::_exit(0) }
}

/// The queue under test: a fixed 8 MiB ring (`with_capacity`), or `Queue::new()` (growing).
#[derive(Clone, Copy)]
enum Storage {
    Ring8Mib,
    New,
}

impl Storage {
    fn make<T: serde::Serialize + serde::de::DeserializeOwned>(self) -> Queue<T> {
        match self {
            Storage::Ring8Mib => Queue::with_capacity(8 * MIB).unwrap(),
            Storage::New => Queue::new().unwrap(),
        }
    }
}

/// A producer process, started and ready, puts `n` items after the go signal; this process
/// takes them all. Returns the time from the go signal to the last item.
fn one_producer<T, F>(storage: Storage, n: u64, make: F, check: impl Fn(&T)) -> Duration
where
    T: serde::Serialize + serde::de::DeserializeOwned + 'static,
    F: Fn(u64) -> T + Send + 'static,
{
    let q: Queue<T> = storage.make();
    let go: Queue<()> = Queue::new().unwrap();
    let ready: Queue<()> = Queue::new().unwrap();
    let (q2, go2, ready2) = (q.clone(), go.clone(), ready.clone());
    let p = Process::new(move || {
        let items: Vec<T> = (0..n.min(16)).map(&make).collect();
        ready2.put(&()).unwrap();
        go2.get().unwrap();
        for i in 0..n {
            q2.put(&items[(i % items.len() as u64) as usize]).unwrap();
        }
    });
    p.start().unwrap();
    ready.get_timeout(Duration::from_secs(60)).unwrap();
    let t = Instant::now();
    go.put(&()).unwrap();
    for _ in 0..n {
        check(&q.get_timeout(Duration::from_secs(60)).unwrap());
    }
    let elapsed = t.elapsed();
    p.join().unwrap();
    assert_eq!(p.exitcode(), Some(0));
    elapsed
}

fn queue(c: &mut Criterion) {
    let mut g = c.benchmark_group("queue");
    g.throughput(Throughput::Elements(SMALL));
    // `_new` rows: the same with `Queue::new()` (a growing queue; a 1 MiB ring before).
    for (suffix, storage) in [("", Storage::Ring8Mib), ("_new", Storage::New)] {
        let name = format!("queue_small_1p1c{suffix}");
        g.bench_function(&name, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    total += one_producer(storage, SMALL, |i| i, |x: &u64| assert!(*x < 16));
                }
                record(&name, iters * SMALL, total)
            })
        });
        let name = format!("queue_small_1p4c{suffix}");
        g.bench_function(&name, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    total += one_producer_four_consumers(storage, SMALL);
                }
                record(&name, iters * SMALL, total)
            })
        });
    }
    for (name, size, count) in [("queue_1mib", MIB, 200u64), ("queue_64mib", 64 * MIB, 4)] {
        g.throughput(Throughput::Bytes(size as u64 * count));
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    total += one_producer(
                        Storage::Ring8Mib,
                        count,
                        move |i| serde_bytes::ByteBuf::from(vec![i as u8; size]),
                        |x| assert_eq!(x.len(), size),
                    );
                }
                record(name, iters * count, total)
            })
        });
    }
    g.finish();
}

/// This process puts `n` items and 4 pills; 4 consumer processes (started and ready) take them
/// and report their counts and sums. Returns the time from the first put to the last report.
fn one_producer_four_consumers(storage: Storage, n: u64) -> Duration {
    let q: Queue<u64> = storage.make();
    let res: Queue<(u64, u64)> = Queue::new().unwrap();
    let ready: Queue<()> = Queue::new().unwrap();
    let consumers: Vec<Process> = (0..4)
        .map(|_| {
            let (q, res, ready) = (q.clone(), res.clone(), ready.clone());
            Process::new(move || {
                ready.put(&()).unwrap();
                let (mut count, mut sum) = (0, 0);
                for x in q.iter() {
                    count += 1;
                    sum += x;
                }
                res.put(&(count, sum)).unwrap();
            })
        })
        .collect();
    for c in &consumers {
        c.start().unwrap();
    }
    for _ in 0..4 {
        ready.get_timeout(Duration::from_secs(60)).unwrap();
    }
    let t = Instant::now();
    for i in 0..n {
        q.put(&i).unwrap();
    }
    for _ in 0..4 {
        q.put_pill().unwrap();
    }
    let (mut count, mut sum) = (0, 0);
    for _ in 0..4 {
        let (c, s) = res.get_timeout(Duration::from_secs(60)).unwrap();
        count += c;
        sum += s;
    }
    let elapsed = t.elapsed();
    assert_eq!((count, sum), (n, n * (n - 1) / 2));
    for c in &consumers {
        c.join().unwrap();
    }
    elapsed
}

/// The raw limit: one 8-byte item per `write` on a pipe, one `read` per item, two processes.
fn raw_pipe(c: &mut Criterion) {
    let mut g = c.benchmark_group("raw");
    g.throughput(Throughput::Elements(SMALL));
    g.bench_function("raw_pipe_items", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let (r, w) = nix::unistd::pipe().unwrap();
                let writer = Process::new(move || {
                    for i in 0..SMALL {
                        nix::unistd::write(w.as_fd(), &i.to_le_bytes()).unwrap();
                    }
                });
                let t = Instant::now();
                writer.start().unwrap();
                let mut buf = [0u8; 8];
                for i in 0..SMALL {
                    let mut got = 0;
                    while got < 8 {
                        got += nix::unistd::read(&r, &mut buf[got..]).unwrap();
                    }
                    assert_eq!(u64::from_le_bytes(buf), i);
                }
                total += t.elapsed();
                writer.join().unwrap();
            }
            record("raw_pipe_items", iters * SMALL, total)
        })
    });
    g.finish();
}

fn main() {
    let mut c = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4))
        .configure_from_args();
    process_start_join(&mut c);
    queue(&mut c);
    raw_pipe(&mut c);
    c.final_summary();
    let rows = [
        Row {
            name: "process_start_join",
            peer: "process_start_join",
            unit: Unit::Micros,
            raw: Some("raw_fork_waitpid"),
        },
        Row {
            name: "queue_small_1p1c",
            peer: "queue_small_1p1c",
            unit: Unit::PerSec,
            raw: Some("raw_pipe_items"),
        },
        Row {
            name: "queue_small_1p4c",
            peer: "queue_small_1p4c",
            unit: Unit::PerSec,
            raw: Some("raw_pipe_items"),
        },
        Row {
            name: "queue_1mib",
            peer: "queue_1mib",
            unit: Unit::MBps(MIB as f64),
            raw: None,
        },
        Row {
            name: "queue_64mib",
            peer: "queue_64mib",
            unit: Unit::MBps(64.0 * MIB as f64),
            raw: None,
        },
    ];
    compare::report("foundation", &rows);
}

//! The mpi4py tutorial's broadcast, reproduced: 10^7 f64 handed to every worker serialized
//! (encoded, written to a pipe, decoded: mpi4py's pickled `bcast`) versus as shared memory
//! (only a descriptor travels: mpi4py's buffer `Bcast`), plus a `PodVec` (one copy into shared
//! memory). Each worker sums what it got and answers.
//!
//! Run: `cargo run --release --example bcast [workers]` (default 2).

use std::time::{Duration, Instant};

use multiproc::{Connection, PodVec, Process, SharedArray, pipe};
use serde::{Deserialize, Serialize};

const N: usize = 10_000_000;

#[derive(Serialize, Deserialize)]
enum Data {
    Serialized(Vec<f64>),
    Shared(SharedArray<f64>),
    Pod(PodVec<f64>),
    Stop,
}

fn worker(conn: Connection<f64, Data>) {
    while let Ok(data) = conn.recv() {
        let sum = match data {
            Data::Serialized(v) => v.iter().sum(),
            // SAFETY: the parent does not write the array while workers read it.
            Data::Shared(a) => unsafe { a.as_slice() }.iter().sum(),
            Data::Pod(v) => v.iter().sum(),
            Data::Stop => break,
        };
        conn.send(&sum).expect("answer");
    }
}

/// Sends `data` to every worker and waits for all sums; best time of 3.
fn bcast(conns: &[Connection<Data, f64>], make: &dyn Fn() -> Data, want: f64) -> Duration {
    (0..3)
        .map(|_| {
            let data = make();
            let t = Instant::now();
            for c in conns {
                c.send(&data).expect("send");
            }
            for c in conns {
                assert_eq!(c.recv().expect("sum"), want);
            }
            t.elapsed()
        })
        .min()
        .expect("3 runs")
}

fn main() -> multiproc::Result<()> {
    let workers: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(2);
    let mut conns = Vec::new();
    let mut procs = Vec::new();
    for _ in 0..workers {
        let (parent, child) = pipe::<Data, f64>()?;
        let p = Process::new(move || worker(child));
        p.start()?;
        conns.push(parent);
        procs.push(p);
    }
    let data: Vec<f64> = (0..N).map(|i| (i % 1000) as f64).collect();
    let want: f64 = data.iter().sum();
    let shared = SharedArray::from_slice(&data)?;
    let t_ser = bcast(&conns, &|| Data::Serialized(data.clone()), want);
    let t_shm = bcast(&conns, &|| Data::Shared(shared.clone()), want);
    let t_pod = bcast(&conns, &|| Data::Pod(data.clone().into()), want);
    for c in &conns {
        c.send(&Data::Stop)?;
    }
    for p in &procs {
        p.join()?;
    }
    let s = |d: Duration| d.as_secs_f64();
    println!(
        "bcast of {N} f64 ({} MB) to {workers} workers, best of 3",
        N * 8 / 1_000_000
    );
    println!("serialized (pickle-like):  {:.4} s", s(t_ser));
    println!("shared memory (SharedArray): {:.4} s", s(t_shm));
    println!("PodVec (one copy, mapped):  {:.4} s", s(t_pod));
    println!("ratio serialized / shared: {:.1}x", s(t_ser) / s(t_shm));
    Ok(())
}

//! The mpi4py tutorial's broadcast: 10^7 f64 handed to every worker serialized (encoded, piped,
//! decoded: mpi4py's pickled `bcast`) versus as shared memory (only a descriptor travels:
//! mpi4py's buffer `Bcast`), and as a `PodVec` (one copy into shared memory). Each worker sums
//! what it got and answers. Run: `cargo run --release --example bcast [workers]` (default 2).

use std::time::{Duration, Instant};

use multiproc::{Connection, PodVec, Process, SharedArray, pipe};
use serde::{Deserialize, Serialize};

const N: usize = 10_000_000;

#[derive(Serialize, Deserialize)]
enum Data {
    Serialized(Vec<f64>),
    Shared(SharedArray<f64>),
    Pod(PodVec<f64>),
}

fn worker(conn: Connection<f64, Data>) {
    // Ends when the parent drops its end.
    while let Ok(data) = conn.recv() {
        let sum = match data {
            Data::Serialized(v) => v.iter().sum(),
            // SAFETY: the parent does not write the array while workers read it.
            Data::Shared(a) => unsafe { a.as_slice() }.iter().sum(),
            Data::Pod(v) => v.iter().sum(),
        };
        conn.send(&sum).expect("answer");
    }
}

fn main() -> multiproc::Result<()> {
    let workers: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(2);
    let (mut conns, mut procs) = (Vec::new(), Vec::new());
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
    // Best of 3: send to every worker, wait for every sum.
    let bcast = |make: &dyn Fn() -> Data| -> Duration {
        (0..3)
            .map(|_| {
                let data = make();
                let t = Instant::now();
                conns.iter().for_each(|c| c.send(&data).expect("send"));
                conns
                    .iter()
                    .for_each(|c| assert_eq!(c.recv().expect("sum"), want));
                t.elapsed()
            })
            .min()
            .expect("3 runs")
    };
    let ser = bcast(&|| Data::Serialized(data.clone())).as_secs_f64();
    let shm = bcast(&|| Data::Shared(shared.clone())).as_secs_f64();
    let pod = bcast(&|| Data::Pod(data.clone().into())).as_secs_f64();
    drop(conns);
    for p in &procs {
        p.join()?;
    }
    println!(
        "bcast of {N} f64 ({} MB) to {workers} workers, best of 3",
        N * 8 / 1_000_000
    );
    println!("serialized (pickle-like):    {ser:.4} s");
    println!("shared memory (SharedArray): {shm:.4} s");
    println!("PodVec (one copy, mapped):   {pod:.4} s");
    println!("ratio serialized / shared:   {:.1}x", ser / shm);
    Ok(())
}

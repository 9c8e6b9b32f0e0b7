//! Task-farm time per task over MPI ranks: `MpiPool::map` against a raw rsmpi send/recv farm
//! (the limit: one task per message, the next sent when a result comes back), same ranks.
//!
//! Run each mode under the same launcher, side by side (docs/benchmarks.md):
//! `mpirun -n 3 target/release/examples/mpi_farm pool tiny 100000`,
//! `mpirun -n 3 target/release/examples/mpi_farm pool1 tiny 100000` (chunksize 1),
//! `mpirun -n 3 target/release/examples/mpi_farm raw tiny 100000`, and `... big 300` for 1 MiB
//! payloads (a `PodVec<u8>` of 1 MiB per task; the result is its byte sum).

use std::time::Instant;

use multiproc::PodVec;
use multiproc::mpi::MpiPool;

const MIB: usize = 1 << 20;

fn tiny(x: u64) -> u64 {
    x.wrapping_mul(2_654_435_761) >> 7
}

fn byte_sum(v: &[u8]) -> u64 {
    v.iter().map(|&b| u64::from(b)).sum()
}

fn payload(i: usize) -> Vec<u8> {
    vec![(i % 251) as u8; MIB]
}

fn report(mode: &str, kind: &str, n: usize, secs: f64, workers: usize) {
    println!(
        "{mode} {kind}: {n} tasks on {workers} worker ranks in {secs:.4} s: {:.3} us/task",
        secs * 1e6 / n as f64
    );
}

fn main() -> multiproc::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let mode = args.get(1).map_or("pool", String::as_str).to_string();
    let kind = args.get(2).map_or("tiny", String::as_str).to_string();
    let n: usize = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(10_000);
    if mode == "raw" {
        raw::run(&kind, n);
        return Ok(());
    }
    let pool = MpiPool::init()?;
    if mode == "pool1" {
        pool.set_chunksize(Some(1))?;
    }
    // Every rank up and answering before the clock starts (as mpi4py's `num_workers` waits).
    pool.map(tiny, 0..4 * pool.processes() as u64)?;
    if kind == "tiny" {
        let t = Instant::now();
        let out = pool.map(tiny, 0..n as u64)?;
        let secs = t.elapsed().as_secs_f64();
        assert!(out.iter().zip(0..).all(|(&r, x)| r == tiny(x)));
        report(&mode, &kind, n, secs, pool.processes());
    } else {
        let inputs: Vec<PodVec<u8>> = (0..n).map(|i| payload(i).into()).collect();
        let t = Instant::now();
        let out = pool.map(|v: PodVec<u8>| byte_sum(&v), inputs)?;
        let secs = t.elapsed().as_secs_f64();
        assert!(
            out.iter()
                .enumerate()
                .all(|(i, &s)| s == byte_sum(&payload(i)))
        );
        report(&mode, &kind, n, secs, pool.processes());
    }
    Ok(())
}

/// The raw farm: rank 0 sends one task per message to each worker and the next one when its
/// result arrives; tag 1 is a task, tag 2 the end.
mod raw {
    use super::*;
    use mpi::traits::*;

    pub(super) fn run(kind: &str, n: usize) {
        let universe = mpi::initialize().expect("MPI");
        let world = universe.world();
        let workers = (world.size() - 1) as usize;
        let big = kind != "tiny";
        if world.rank() == 0 {
            let inputs: Vec<Vec<u8>> = if big {
                (0..n).map(payload).collect()
            } else {
                Vec::new()
            };
            let t = Instant::now();
            let send = |dest: i32, i: usize| {
                let p = world.process_at_rank(dest);
                if big {
                    p.send_with_tag(&inputs[i][..], 1);
                } else {
                    p.send_with_tag(&(i as u64), 1);
                }
            };
            let mut next = 0;
            for w in 1..=workers as i32 {
                if next < n {
                    send(w, next);
                    next += 1;
                }
            }
            let mut got = 0;
            let mut check = 0u64;
            while got < n {
                let (r, status) = world.any_process().receive::<u64>();
                check = check.wrapping_add(r);
                got += 1;
                if next < n {
                    send(status.source_rank(), next);
                    next += 1;
                }
            }
            let secs = t.elapsed().as_secs_f64();
            let want = if big {
                inputs
                    .iter()
                    .map(|v| byte_sum(v))
                    .fold(0u64, u64::wrapping_add)
            } else {
                (0..n as u64).map(tiny).fold(0u64, u64::wrapping_add)
            };
            assert_eq!(check, want);
            for w in 1..=workers as i32 {
                world.process_at_rank(w).send_with_tag(&0u64, 2);
            }
            report("raw", kind, n, secs, workers);
        } else {
            let master = world.process_at_rank(0);
            loop {
                let (msg, status) = master.matched_probe();
                if status.tag() == 2 {
                    let _ = msg.matched_receive::<u64>();
                    break;
                }
                let r = if big {
                    byte_sum(&(msg, status).matched_receive_vec::<u8>().0)
                } else {
                    tiny(msg.matched_receive::<u64>().0)
                };
                master.send(&r);
            }
        }
    }
}

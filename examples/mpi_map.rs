//! The `pool_map` example over MPI: the same `map`, with workers that are MPI ranks.
//!
//! Run (feature `mpi`, an MPI installed; docs/mpi.md):
//! `cargo build --release --features mpi --example mpi_map`, then
//! `mpirun -n 3 target/release/examples/mpi_map 20` (or `srun -n 3 ...`).
//! The one line that differs from `examples/pool_map.rs` is the one that makes the pool.

use multiproc::Pool;
use multiproc::mpi::MpiPool;

fn square(x: u64) -> u64 {
    x * x
}

/// Written against the local pool: runs unchanged on the MPI one.
fn squares(pool: &Pool, n: u64) -> multiproc::Result<Vec<u64>> {
    pool.map(square, 0..n)
}

fn main() -> multiproc::Result<()> {
    // First thing in main: ranks >= 1 become workers here and never return.
    let pool = MpiPool::init()?; // local: `Pool::with_processes(k)?`
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(10);
    println!(
        "pool of {} worker ranks (MPI world of {})",
        pool.processes(),
        pool.world_size()
    );
    let out = squares(&pool, n)?;
    println!("{out:?}");
    assert_eq!(out, (0..n).map(square).collect::<Vec<_>>());
    pool.close();
    pool.join()
}

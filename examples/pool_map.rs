//! The tutorial's `Pool(nprocesses).map(square, range(N))`, sized from the job's CPU budget.
//!
//! Run: `SLURM_CPUS_PER_TASK=2 cargo run --example pool_map -- 20`

use multiproc::{Pool, cpu_budget};

fn square(x: u64) -> u64 {
    x * x
}

fn main() -> multiproc::Result<()> {
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(10);
    // Inside srun's task SLURM_CPUS_PER_TASK; in a batch script the job's CPUs on this node
    // (SLURM_CPUS_ON_NODE, ...); elsewhere the usable CPUs; always capped by the affinity mask.
    let budget = cpu_budget()?;
    let pool = Pool::with_processes(budget.count)?;
    println!(
        "pool of {} processes (from {})",
        pool.processes(),
        budget.source
    );
    let squares = pool.map(square, 0..n)?;
    println!("{squares:?}");
    assert_eq!(squares, (0..n).map(square).collect::<Vec<_>>());
    pool.close();
    pool.join()
}

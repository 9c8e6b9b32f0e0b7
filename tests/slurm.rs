//! The `multiproc` command under a real one-node SLURM, through `scripts/slurm/test.sh`:
//! `sbatch examples/slurm/mmul_job.sh` from the repository root exactly as the example documents
//! (2 tasks: 2 jobs at once), `sbatch -n 2 -c 1` (2 jobs × 1 thread) and `sbatch -n 1 -c 2`
//! (1 job × 2 threads) in the batch script, and `srun -c 1` inside a job. With
//! `MULTIPROC_SLURM_SLOW=1`, also a job that hits its `--time` limit and is resumed.
//!
//! When no SLURM node is up, the script prints `SKIP: <reason>` and the test passes.
//! Start one with `scripts/slurm/install.sh && scripts/slurm/start.sh` (root).

mod slurm_common;

#[test]
fn multiproc_under_slurm() {
    slurm_common::run_script("test.sh");
}

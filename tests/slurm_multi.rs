//! The `multiproc` command across two SLURM nodes, through `scripts/slurm/test-multi.sh`: an sbatch
//! job of 2 nodes over 40 inputs (jobs on both nodes, each input once), and the same with the
//! agent of node n2 SIGKILLed mid-run. With `MULTIPROC_SLURM_SLOW=1`, also a two-node job that hits
//! its `--time` limit and is resumed by a one-node run.
//!
//! When the two-node cluster is not up, the script prints `SKIP: <reason>` and the test passes.
//! Start them with `scripts/slurm/install.sh && scripts/slurm/start.sh --nodes 2` (root).

mod slurm_common;

#[test]
fn multiproc_across_two_slurm_nodes() {
    slurm_common::run_script("test-multi.sh");
}

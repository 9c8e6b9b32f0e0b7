//! The `multiproc` command under a real one-node SLURM, through `scripts/slurm/test.sh`:
//! `sbatch examples/slurm/mmul_job.sh` from the repository root exactly as the example documents
//! (2 tasks: 2 jobs at once), `sbatch -n 2 -c 1` (2 jobs × 1 thread) and `sbatch -n 1 -c 2`
//! (1 job × 2 threads) in the batch script, and `srun -c 1` inside a job. With
//! `MULTIPROC_SLURM_SLOW=1`, also a job that hits its `--time` limit and is resumed.
//!
//! When no SLURM node is up, the script prints `SKIP: <reason>` and the test passes.
//! Start one with `scripts/slurm/install.sh && scripts/slurm/start.sh` (root).

use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

#[test]
fn multiproc_under_slurm() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/slurm/test.sh");
    let child = Command::new("bash")
        .arg(script)
        .arg(env!("CARGO_BIN_EXE_multiproc"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run scripts/slurm/test.sh");
    let pid = child.id() as i32;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let limit = Duration::from_secs(600);
    let out = match rx.recv_timeout(limit) {
        Ok(out) => out.expect("wait for test.sh"),
        Err(_) => {
            // SAFETY: kill takes plain integers; the script has not been reaped (no answer yet).
            unsafe { libc::kill(pid, libc::SIGKILL) };
            panic!("scripts/slurm/test.sh did not finish within {limit:?}");
        }
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Shown with --nocapture (and by nextest on failure): which checks ran, or why they skipped.
    println!("{stdout}");
    eprintln!("{stderr}");
    assert!(out.status.success(), "test.sh failed:\n{stdout}\n{stderr}");
}

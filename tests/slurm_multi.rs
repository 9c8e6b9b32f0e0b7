//! The `multiproc` command across two SLURM nodes, through `scripts/slurm/test-multi.sh`: an sbatch
//! job of 2 nodes over 40 inputs (jobs on both nodes, each input once), and the same with the
//! agent of node n2 SIGKILLed mid-run. With `MULTIPROC_SLURM_SLOW=1`, also a two-node job that hits
//! its `--time` limit and is resumed by a one-node run.
//!
//! When the two-node cluster is not up, the script prints `SKIP: <reason>` and the test passes.
//! Start them with `scripts/slurm/install.sh && scripts/slurm/start.sh --nodes 2` (root).

use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

#[test]
fn multiproc_across_two_slurm_nodes() {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../scripts/slurm/test-multi.sh"
    );
    let child = Command::new("bash")
        .arg(script)
        .arg(env!("CARGO_BIN_EXE_multiproc"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run scripts/slurm/test-multi.sh");
    let pid = child.id() as i32;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let limit = Duration::from_secs(600);
    let out = match rx.recv_timeout(limit) {
        Ok(out) => out.expect("wait for test-multi.sh"),
        Err(_) => {
            // SAFETY: kill takes plain integers; the script has not been reaped (no answer yet).
            unsafe { libc::kill(pid, libc::SIGKILL) };
            panic!("scripts/slurm/test-multi.sh did not finish within {limit:?}");
        }
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Shown with --nocapture (and by nextest on failure): which checks ran, or why they skipped.
    println!("{stdout}");
    eprintln!("{stderr}");
    assert!(
        out.status.success(),
        "test-multi.sh failed:\n{stdout}\n{stderr}"
    );
}

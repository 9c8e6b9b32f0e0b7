//! Runs one of the `scripts/slurm/` test scripts against the built `multiproc`, bounded.

use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// Runs `scripts/slurm/<script>` with the command's path, at most 10 minutes (then SIGKILL and
/// a failure), prints what it said (shown with `--nocapture`, and by nextest on failure: which
/// checks ran, or why they skipped) and fails unless it succeeded.
pub(crate) fn run_script(script: &str) {
    let path = format!("{}/../scripts/slurm/{script}", env!("CARGO_MANIFEST_DIR"));
    let child = Command::new("bash")
        .arg(&path)
        .arg(env!("CARGO_BIN_EXE_multiproc"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("run scripts/slurm/{script}: {e}"));
    let pid = child.id() as i32;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let limit = Duration::from_secs(600);
    let out = match rx.recv_timeout(limit) {
        Ok(out) => out.unwrap_or_else(|e| panic!("wait for {script}: {e}")),
        Err(_) => {
            // SAFETY: kill takes plain integers; the script has not been reaped (no answer yet).
            unsafe { libc::kill(pid, libc::SIGKILL) };
            panic!("scripts/slurm/{script} did not finish within {limit:?}");
        }
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    eprintln!("{stderr}");
    assert!(out.status.success(), "{script} failed:\n{stdout}\n{stderr}");
}

//! Helpers for the tests of the `multiproc` command: run it (and GNU parallel, where installed)
//! with bounded waits, in scratch directories.
#![allow(dead_code)]

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// The longest any one run may take.
pub(crate) const LIMIT: Duration = Duration::from_secs(120);

/// A fresh scratch directory for one test.
pub(crate) fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("multiproc-cli-{}-{name}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

/// Removes the variables that size a run (SLURM, thread caps) so tests see a plain machine.
pub(crate) fn clean_env(c: &mut Command) {
    for (var, _) in std::env::vars() {
        if var.starts_with("SLURM_") || var.starts_with("PARALLEL") {
            c.env_remove(var);
        }
    }
    for var in ["OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"] {
        c.env_remove(var);
    }
}

/// The `multiproc` command, to run in `dir`.
pub(crate) fn mp(dir: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_multiproc"));
    c.current_dir(dir);
    clean_env(&mut c);
    c
}

/// What a finished run left.
#[derive(Debug)]
pub(crate) struct Run {
    pub(crate) code: Option<i32>,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
    /// From the spawn to the end.
    pub(crate) took: Duration,
}

/// Runs `multiproc ARGS` in `dir` with `stdin` text.
pub(crate) fn run_in(dir: &Path, args: &[&str], stdin: Option<&str>) -> Run {
    let mut cmd = mp(dir);
    cmd.args(args);
    run_cmd(cmd, stdin.map(str::as_bytes))
}

/// Runs a command with `stdin` bytes, bounded by [`LIMIT`] (killed and a panic past it).
pub(crate) fn run_cmd(mut cmd: Command, stdin: Option<&[u8]>) -> Run {
    cmd.stdin(Stdio::piped());
    run_bounded(cmd, |child| {
        let mut input = child.stdin.take().unwrap();
        let text = stdin.unwrap_or(b"").to_vec();
        std::thread::spawn(move || {
            let _ = input.write_all(&text);
        });
    })
}

/// Runs a command (its stdin as set, `feed` given the child to write it), bounded by [`LIMIT`]
/// (killed and a panic past it); stdout and stderr are captured.
pub(crate) fn run_bounded(mut cmd: Command, feed: impl FnOnce(&mut std::process::Child)) -> Run {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let t0 = std::time::Instant::now();
    let mut child = cmd.spawn().expect("spawn");
    let pid = child.id() as i32;
    feed(&mut child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(LIMIT) {
        Ok(out) => {
            let out = out.unwrap();
            Run {
                code: out.status.code(),
                stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
                took: t0.elapsed(),
            }
        }
        Err(_) => {
            // SAFETY: kill takes plain integers; the child has not been reaped (no answer yet).
            unsafe { libc::kill(pid, libc::SIGKILL) };
            panic!("{cmd:?} did not finish within {LIMIT:?}");
        }
    }
}

/// Whether GNU parallel is installed (prints why a comparison is skipped when not).
pub(crate) fn have_gnu(test: &str) -> bool {
    let ok = Command::new("parallel")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        println!(
            "{test}: GNU parallel is not installed: comparison skipped (apt-get install parallel)"
        );
    }
    ok
}

/// Runs `parallel --will-cite ARGS` in `dir` with `stdin` text.
pub(crate) fn gnu_in(dir: &Path, args: &[&str], stdin: Option<&str>) -> Run {
    let mut cmd = Command::new("parallel");
    cmd.current_dir(dir).arg("--will-cite").args(args);
    clean_env(&mut cmd);
    run_cmd(cmd, stdin.map(str::as_bytes))
}

/// Runs the same arguments through multiproc and (where installed) GNU parallel and checks that
/// stdout and the exit status are the same; returns multiproc's run.
pub(crate) fn same_as_gnu(dir: &Path, args: &[&str], stdin: Option<&str>) -> Run {
    let ours = run_in(dir, args, stdin);
    if have_gnu(&format!("{args:?}")) {
        let theirs = gnu_in(dir, args, stdin);
        assert_eq!(
            (ours.code, ours.stdout.as_str()),
            (theirs.code, theirs.stdout.as_str()),
            "multiproc vs GNU parallel for {args:?}\nours: {}\ntheirs: {}",
            ours.stderr,
            theirs.stderr
        );
    }
    ours
}

/// The lines of `s`, sorted.
pub(crate) fn sorted_lines(s: &str) -> Vec<String> {
    let mut v: Vec<String> = s.lines().map(str::to_string).collect();
    v.sort();
    v
}

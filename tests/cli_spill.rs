//! Big job output is spilled to unlinked temporary files, not held in the runner's memory
//! (issue 12): a job printing hundreds of MB (1 GB) leaves the runner's
//! peak RSS (VmHWM, read from /proc while it runs) under 64 MB, and the output arrives intact and
//! grouped (the job's whole stdout block, then its stderr, not mixed with the other job's).

mod cli_common;

use std::io::Read;
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use cli_common::*;

/// The runner's peak resident set (VmHWM) in kB.
fn peak_rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status")
}

/// Job 1 prints `bytes` of `x` (then a line) to stdout and 6 MB to stderr; job 2 waits for the
/// file `go`, which the test creates once it has read job 1's whole block and the runner's peak
/// RSS, then prints `second`.
fn big_output_stays_out_of_memory(bytes: u64) {
    let d = scratch(&format!("spill-{bytes}"));
    let script = "if [ $1 = big ]; then head -c $2 /dev/zero | tr '\\0' x; echo; echo end-of-big; \
                  head -c 6000000 /dev/zero >&2; else i=0; while [ ! -e go ] && [ $i -lt 6000 ]; \
                  do sleep 0.01; i=$((i+1)); done; echo second; fi";
    let mut cmd = mp(&d);
    cmd.args([
        "-j", "2", "sh", "-c", script, "_", ":::", "big", "small", ":::",
    ])
    .arg(bytes.to_string())
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let pid = child.id();
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let (etx, erx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stderr.read_to_end(&mut buf);
        let _ = etx.send(buf);
    });
    // Read job 1's block: `bytes` x's, "\nend-of-big\n".
    let deadline = Instant::now() + LIMIT;
    let mut xs = 0u64;
    let mut tail = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    while !tail.ends_with(b"end-of-big\n") {
        assert!(Instant::now() < deadline, "job 1's output did not arrive");
        let n = stdout.read(&mut buf).unwrap();
        assert!(n > 0, "stdout ended early after {xs} x's, then {tail:?}");
        for &b in &buf[..n] {
            if b == b'x' && tail.is_empty() {
                xs += 1;
            } else {
                tail.push(b);
            }
        }
    }
    let peak = peak_rss_kb(pid);
    std::fs::write(d.join("go"), "").unwrap();
    let mut rest = Vec::new();
    stdout.read_to_end(&mut rest).unwrap();
    let status = child.wait().unwrap();
    let err = erx.recv_timeout(Duration::from_secs(60)).unwrap();
    assert!(status.success(), "{}", String::from_utf8_lossy(&err));
    assert_eq!(xs, bytes, "every byte of job 1's stdout, in one block");
    assert_eq!(tail, b"\nend-of-big\n");
    assert_eq!(rest, b"second\n", "job 2's block after job 1's");
    assert_eq!(err.len(), 6_000_000, "job 1's stderr, spilled too");
    assert!(err.iter().all(|&b| b == 0));
    println!("{bytes} bytes of output: runner peak RSS {peak} kB");
    assert!(
        peak < 64 * 1024,
        "runner peak RSS {peak} kB for {bytes} bytes of output"
    );
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn a_job_printing_1_gb_leaves_the_runner_small_and_the_output_whole() {
    // ~3 s here; needs 1 GB free in $TMPDIR while it runs.
    big_output_stays_out_of_memory(1_000_000_000);
}

/// Capture files are reused from job to job, but not while a process the job left behind can
/// still write to them: its late output must not land in the next job's block.
#[test]
fn a_background_child_of_a_job_does_not_write_into_the_next_jobs_output() {
    let d = scratch("leftover");
    // Job 1 leaves a child that writes "late" once job 2 has started; job 2 waits for it.
    let script = "wait_for() { i=0; while [ ! -e $1 ] && [ $i -lt 3000 ]; do sleep 0.01; i=$((i+1)); done; }; \
                  if [ $1 = 1 ]; then (wait_for started2; echo late; touch late-written) & echo first; \
                  else touch started2; wait_for late-written; echo second; fi";
    let r = run_in(
        &d,
        &["-j", "1", "-k", "sh", "-c", script, "_", ":::", "1", "2"],
        None,
    );
    assert_eq!(r.code, Some(0), "{r:?}");
    assert!(d.join("late-written").exists(), "the left-over child ran");
    assert_eq!(r.stdout, "first\nsecond\n", "{r:?}");
}

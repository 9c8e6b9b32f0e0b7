//! The command at scale (issue 17 §4): `--resume` and `--resume-failed` over a 200,000-line
//! joblog (gaps, failures, kills, repeats, a torn last line) run exactly the missing jobs, once;
//! stdin is read as jobs run (a generator that writes a line only after the previous job ran);
//! a regular file on stdin is counted, then read again from where stdin was; and the runner's
//! memory does not grow with the number of jobs (peak RSS of 2,000 jobs of 12 KB inputs is
//! within a few MB of 20 such jobs: the inputs are not held, nor anything per job).

mod cli_common;

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::Path;
use std::process::Stdio;
use std::sync::mpsc;

use cli_common::*;

/// The joblog header.
const HEADER: &str = "Seq\tHost\tStarttime\tJobRuntime\tSend\tReceive\tExitval\tSignal\tCommand";

/// Jobs in the generated log's run.
const LOGGED: u64 = 200_000;
/// Jobs in the input beyond those: new ones.
const NEW: u64 = 7;

/// The generated log's lines for `seq` (none for a gap), as (exitval, signal) in write order.
fn lines_of(seq: u64) -> Vec<(i32, i32)> {
    match seq {
        s if s % 997 == 0 => vec![],                // never ran (a gap)
        s if s % 1009 == 0 => vec![(1, 0)],         // failed
        s if s % 1013 == 0 => vec![(2, 0), (0, 0)], // failed, then succeeded on a rerun
        s if s % 1019 == 0 => vec![(0, 15)],        // killed by a signal
        s if s % 1021 == 0 => vec![(0, 0), (3, 0)], // succeeded, then failed on a rerun
        _ => vec![(0, 0)],
    }
}

/// The seq whose only line is the torn last one (so it never finished).
const TORN: u64 = 123_457;

/// Writes the log: completion order is shuffled locally (pairs swapped, as `-j 2` finishes),
/// the torn line last, without its `\n`.
fn write_log(path: &Path) {
    let mut w = BufWriter::new(File::create(path).unwrap());
    writeln!(w, "{HEADER}").unwrap();
    let mut order: Vec<u64> = (1..=LOGGED).filter(|&s| s != TORN).collect();
    for pair in order.chunks_mut(2) {
        pair.reverse();
    }
    for seq in order {
        for (exit, sig) in lines_of(seq) {
            writeln!(
                w,
                "{seq}\t:\t1795319212.435\t     0.002\t0\t0\t{exit}\t{sig}\techo {seq}"
            )
            .unwrap();
        }
    }
    write!(w, "{TORN}\t:\t1795319212.435\t     0.0").unwrap();
}

/// The seqs of the input (1..=LOGGED+NEW) that `--resume` (all lines count) or
/// `--resume-failed` (only a successful line counts) must run.
fn expected(failed_mode: bool) -> BTreeSet<u64> {
    (1..=LOGGED + NEW)
        .filter(|&s| {
            let lines = if s > LOGGED || s == TORN {
                vec![]
            } else {
                lines_of(s)
            };
            if failed_mode {
                !lines.contains(&(0, 0))
            } else {
                lines.is_empty()
            }
        })
        .collect()
}

/// The Seq column of every line after the first `skip` job lines of the joblog.
fn appended_seqs(log: &Path, skip: usize) -> Vec<u64> {
    let text = fs::read_to_string(log).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some(HEADER));
    lines
        .skip(skip)
        .map(|l| l.split('\t').next().unwrap().parse().unwrap())
        .collect()
}

/// Resumes with `flag` from the generated log, the inputs from a file (counted, read twice) or
/// from stdin, a pipe (read by a thread, which skips the done jobs itself).
fn resume_runs_exactly_the_missing_jobs_once(flag: &str, from_stdin: bool) {
    let d = scratch(&format!("scale-resume{flag}-{from_stdin}"));
    let log = d.join("log.tsv");
    write_log(&log);
    let logged_lines = fs::read_to_string(&log).unwrap().lines().count() - 2;
    let input: String = (1..=LOGGED + NEW).map(|s| format!("{s}\n")).collect();
    fs::write(d.join("in"), &input).unwrap();
    let want = expected(flag == "--resume-failed");
    assert!(
        want.len() > 200,
        "the log leaves work to do: {}",
        want.len()
    );
    let mut args = vec!["--joblog", "log.tsv", flag, "-k", "-j", "2", "echo"];
    if !from_stdin {
        args.extend(["::::", "in"]);
    }
    let stdin = from_stdin.then_some(input.as_str());

    // -k: the output comes in input order, though up to 200,000 skipped seqs lie in between.
    let r = run_in(&d, &args, stdin);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert!(
        r.stderr.contains("dropped a torn last line"),
        "the torn line is reported: {}",
        r.stderr
    );
    let printed: Vec<u64> = r.stdout.lines().map(|l| l.parse().unwrap()).collect();
    assert_eq!(
        printed,
        want.iter().copied().collect::<Vec<_>>(),
        "in order, each once"
    );
    let mut ran = appended_seqs(&log, logged_lines);
    ran.sort_unstable();
    assert_eq!(ran, printed, "each run logged once");

    // Resuming again finds nothing left to do (with --resume-failed: what just succeeded).
    let r = run_in(&d, &args, stdin);
    assert_eq!((r.code, r.stdout.as_str()), (Some(0), ""), "{}", r.stderr);
}

#[test]
fn resume_over_a_200k_line_joblog_runs_exactly_the_missing_jobs_once() {
    resume_runs_exactly_the_missing_jobs_once("--resume", false);
    resume_runs_exactly_the_missing_jobs_once("--resume", true);
}

#[test]
fn resume_failed_over_a_200k_line_joblog_runs_exactly_the_failed_and_missing_jobs_once() {
    resume_runs_exactly_the_missing_jobs_once("--resume-failed", false);
    resume_runs_exactly_the_missing_jobs_once("--resume-failed", true);
}

/// A generator writes line i+1 only once job i has run (its file exists), giving up after
/// 10 s per line; had the runner read its whole stdin before starting jobs, every wait would
/// give up, and the generator says so.
#[test]
fn stdin_is_read_as_jobs_run_not_first() {
    let d = scratch("scale-stream");
    let generator = "for i in 1 2 3 4 5 6 7 8; do echo $i; w=0; \
        while [ ! -e ran-$i ]; do w=$((w+1)); if [ $w -gt 1000 ]; then echo $i >> gave-up; break; fi; sleep 0.01; done; \
        done";
    let mut gen_cmd = std::process::Command::new("sh");
    gen_cmd
        .args(["-c", generator])
        .current_dir(&d)
        .stdout(Stdio::piped());
    let mut gen_child = gen_cmd.spawn().unwrap();
    let mut cmd = mp(&d);
    cmd.args(["-j", "2", "touch", "ran-{}"])
        .stdin(gen_child.stdout.take().unwrap())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd.spawn().unwrap();
    let pid = child.id() as i32;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = match rx.recv_timeout(LIMIT) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            // SAFETY: kill takes plain integers; the child has not been reaped (no answer yet).
            unsafe { libc::kill(pid, libc::SIGKILL) };
            let _ = gen_child.kill();
            panic!("multiproc did not finish within {LIMIT:?}");
        }
    };
    assert!(gen_child.wait().unwrap().success());
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !d.join("gave-up").exists(),
        "the generator waited in vain for lines {:?}",
        fs::read_to_string(d.join("gave-up")).unwrap_or_default()
    );
    for i in 1..=8 {
        assert!(d.join(format!("ran-{i}")).exists(), "job {i} ran");
    }
}

/// Stdin a regular file, already read up to line 3 by whoever passed it on: the jobs are the
/// lines from there, each once (stdin is counted, then put back where it was); a line that is
/// not UTF-8 is still refused before any job runs.
#[test]
fn a_regular_file_on_stdin_runs_from_its_offset_each_line_once() {
    let d = scratch("scale-stdin-file");
    let text: String = (1..=500).map(|i| format!("{i}\n")).collect();
    fs::write(d.join("in"), &text).unwrap();
    let mut f = File::open(d.join("in")).unwrap();
    f.seek(SeekFrom::Start("1\n2\n".len() as u64)).unwrap();
    let mut cmd = mp(&d);
    cmd.args(["-k", "echo"]);
    cmd.stdin(Stdio::from(f));
    let out = run_bounded(cmd, |_| {});
    let want: Vec<String> = (3..=500).map(|i| i.to_string()).collect();
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(out.stdout.lines().collect::<Vec<_>>(), want);

    fs::write(d.join("bad"), b"ok\n\xff\n").unwrap();
    let mut cmd = mp(&d);
    cmd.args(["echo", "ran"]);
    cmd.stdin(Stdio::from(File::open(d.join("bad")).unwrap()));
    let out = run_bounded(cmd, |_| {});
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (Some(2), ""),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("stdin line 2: not valid UTF-8"),
        "{}",
        out.stderr
    );
}

/// Runs `multiproc ARGS` in `dir` (stdin, stdout and stderr null), bounded by [`LIMIT`]; its
/// exit code and its peak resident set in kB (`ru_maxrss` from `wait4`: the runner, or any of
/// its workers if larger).
fn exit_and_peak_rss_kb(dir: &Path, args: &[&str]) -> (Option<i32>, i64) {
    let child = mp(dir)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut status = 0;
        // SAFETY: a zeroed rusage is a valid value for wait4 to fill in.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: pid is our unreaped child; status and usage are valid for writes. `child` is
        // not waited for by std (it is only dropped), so this is the one wait.
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        assert_eq!(r, pid, "wait4");
        let code = libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status));
        let _ = tx.send((code, usage.ru_maxrss));
    });
    drop(child);
    match rx.recv_timeout(LIMIT) {
        Ok(r) => r,
        Err(_) => {
            // SAFETY: kill takes plain integers; the child has not been reaped (no answer yet).
            unsafe { libc::kill(pid, libc::SIGKILL) };
            panic!("multiproc {args:?} did not finish within {LIMIT:?}");
        }
    }
}

/// 2,000 jobs whose input lines are 12 KB each (24 MB in all) against 20 such jobs: had the
/// runner kept the inputs, or each job's command line, joblog line or output, the peak RSS would
/// grow by tens of MB; it may grow by at most 8 MB (queues touched further, allocator noise).
#[test]
fn peak_memory_does_not_grow_with_the_number_of_jobs() {
    let d = scratch("scale-memory");
    let line = "x".repeat(12 * 1024);
    let write = |name: &str, n: usize| {
        let mut w = BufWriter::new(File::create(d.join(name)).unwrap());
        for i in 0..n {
            writeln!(w, "{i}{line}").unwrap();
        }
    };
    write("few", 20);
    write("many", 2000);
    let args = |input| ["-k", "--joblog", "log", "-j", "2", "echo", "::::", input];
    let (code, few) = exit_and_peak_rss_kb(&d, &args("few"));
    assert_eq!(code, Some(0));
    let (code, many) = exit_and_peak_rss_kb(&d, &args("many"));
    assert_eq!(code, Some(0));
    assert_eq!(
        fs::read_to_string(d.join("log")).unwrap().lines().count(),
        2001
    );
    assert!(
        many < few + 8 * 1024,
        "peak RSS {many} kB for 2,000 jobs against {few} kB for 20: memory grows with the jobs"
    );
}

/// Inputs that cannot be read twice (a FIFO, as `<(cmd)` gives) are read once, at once: as a
/// second source, and as a first one that `--halt` with a percentage needs counted.
#[test]
fn a_fifo_source_is_read_once() {
    let d = scratch("scale-fifo");
    for (i, args) in [
        &["-k", "echo", ":::", "a", "b", "::::", "fifo"][..],
        &["-k", "--halt", "soon,fail=50%", "echo", "a", "::::", "fifo"][..],
    ]
    .into_iter()
    .enumerate()
    {
        let fifo = d.join("fifo");
        let _ = fs::remove_file(&fifo);
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: c is a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
        // The writer opens the FIFO without blocking (which fails until a reader has it open),
        // retrying for a bounded time, so that a runner that never opens it leaves no thread.
        let writer = std::thread::spawn(move || {
            use std::os::unix::fs::OpenOptionsExt;
            let deadline = std::time::Instant::now() + LIMIT;
            loop {
                match fs::OpenOptions::new()
                    .write(true)
                    .custom_flags(libc::O_NONBLOCK)
                    .open(&fifo)
                {
                    Ok(mut f) => return f.write_all(b"1\n2\n"),
                    Err(e) if std::time::Instant::now() > deadline => return Err(e),
                    Err(_) => std::thread::sleep(std::time::Duration::from_millis(5)),
                }
            }
        });
        let r = run_in(&d, args, None);
        let want = if i == 0 {
            "a 1\na 2\nb 1\nb 2\n"
        } else {
            "a 1\na 2\n"
        };
        assert_eq!(
            (r.code, r.stdout.as_str()),
            (Some(0), want),
            "{args:?}: {}",
            r.stderr
        );
        writer.join().unwrap().unwrap();
    }
}

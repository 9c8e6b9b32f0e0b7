//! The `multiproc` command, run as a user runs it: every flag against its documented behaviour,
//! exit codes, the joblog across kills and resumes, signals, and output grouping.
//!
//! Every wait is bounded: a run that takes longer than [`LIMIT`] is killed and the test fails.

mod cli_common;

use std::fs;
use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use cli_common::{LIMIT, mp, run_cmd, run_in, scratch, sorted_lines};

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

fn lines(s: &str) -> Vec<&str> {
    s.lines().collect()
}

/// The joblog's rows (header excluded), split into columns.
fn joblog(path: &Path) -> Vec<Vec<String>> {
    let text = fs::read_to_string(path).unwrap();
    let mut it = text.lines();
    assert_eq!(
        it.next(),
        Some("Seq\tHost\tStarttime\tJobRuntime\tSend\tReceive\tExitval\tSignal\tCommand")
    );
    it.map(|l| l.split('\t').map(str::to_string).collect())
        .collect()
}

/// Waits until `cond` holds, polling every 10 ms, at most `limit`.
fn wait_for(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    cond()
}

fn pid_alive(pid: i32) -> bool {
    // A zombie counts as gone.
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !matches!(
            stat.rsplit(") ").next().and_then(|s| s.chars().next()),
            Some('Z' | 'X')
        ),
        Err(_) => false,
    }
}

/// Kills a spawned runner if a test fails midway.
struct Reap(Child);

impl Drop for Reap {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_bg(dir: &Path, args: &[&str]) -> Reap {
    let mut cmd = mp(dir);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    Reap(cmd.spawn().unwrap())
}

/// Waits for a spawned runner, bounded; returns its exit code.
fn wait_bg(r: &mut Reap, limit: Duration) -> Option<i32> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(st) = r.0.try_wait().unwrap() {
            return st.code();
        }
        assert!(
            Instant::now() < deadline,
            "runner still running after {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn count_rows(path: &Path) -> usize {
    fs::read_to_string(path)
        .map(|t| t.lines().count().saturating_sub(1))
        .unwrap_or(0)
}

#[test]
fn appends_input_and_exits_zero() {
    let d = scratch("append");
    let r = run_in(&d, &["echo", "hi", ":::", "a", "b", "c"], None);
    assert_eq!(r.code, Some(0), "{r:?}");
    assert_eq!(sorted_lines(&r.stdout), ["hi a", "hi b", "hi c"]);
}

#[test]
fn replacement_strings() {
    let d = scratch("repl");
    let r = run_in(
        &d,
        &[
            "-k",
            "-j",
            "2",
            "--",
            "echo",
            "{}",
            "{.}",
            "{/}",
            "{//}",
            "{/.}",
            "{#}",
            "{%}",
            ":::",
            "dir/a.txt",
            "b",
        ],
        None,
    );
    assert_eq!(r.code, Some(0), "{r:?}");
    let l = lines(&r.stdout);
    assert_eq!(l[0], "dir/a.txt dir/a a.txt dir a 1 1");
    assert!(l[1] == "b b b . b 2 2" || l[1] == "b b b . b 2 1", "{l:?}");
}

#[test]
fn inputs_from_files_and_stdin() {
    let d = scratch("inputs");
    fs::write(d.join("list"), "x\ny\n").unwrap();
    let r = run_in(&d, &["echo", "::::", "list"], None);
    assert_eq!(sorted_lines(&r.stdout), ["x", "y"]);
    let r = run_in(&d, &["-a", "list", "echo", "f"], None);
    assert_eq!(sorted_lines(&r.stdout), ["f x", "f y"]);
    let r = run_in(&d, &["echo", "s"], Some("p\nq\n"));
    assert_eq!(sorted_lines(&r.stdout), ["s p", "s q"]);
    // Two sources: every combination, {1} and {2}.
    let r = run_in(
        &d,
        &["-k", "echo", "{2}{1}", ":::", "a", "b", ":::", "1", "2"],
        None,
    );
    assert_eq!(lines(&r.stdout), ["1a", "2a", "1b", "2b"]);
}

#[test]
fn no_shell_by_default_and_shell_on_request() {
    let d = scratch("shell");
    let r = run_in(&d, &["echo", "$HOME;", "x|y", "{}", ":::", "a b"], None);
    assert_eq!(r.stdout, "$HOME; x|y a b\n");
    let r = run_in(&d, &["--shell", "echo {} | tr a-z A-Z", ":::", "a b"], None);
    assert_eq!(r.stdout, "A B\n", "{r:?}");
    // The input is quoted for the shell: no injection.
    let r = run_in(&d, &["--shell", "echo", ":::", "x; echo injected"], None);
    assert_eq!(r.stdout, "x; echo injected\n");
}

#[test]
fn stdin_and_stdout_files() {
    let d = scratch("redirect");
    for k in 1..=3 {
        fs::write(d.join(format!("in{k}")), format!("line {k}\n")).unwrap();
    }
    let r = run_in(
        &d,
        &[
            "--stdin", "{}", "--stdout", "{}.out", "tr", "a-z", "A-Z", ":::", "in1", "in2", "in3",
        ],
        None,
    );
    assert_eq!(r.code, Some(0), "{r:?}");
    assert_eq!(r.stdout, "", "stdout went to files");
    for k in 1..=3 {
        let out = fs::read_to_string(d.join(format!("in{k}.out"))).unwrap();
        assert_eq!(out, format!("LINE {k}\n"));
    }
}

#[test]
fn jobs_limit_concurrency() {
    let d = scratch("jobs");
    // Four 0.4 s jobs two at a time take two rounds; slots stay within 1..=2.
    let r = run_in(
        &d,
        &[
            "-j",
            "2",
            "--shell",
            "sleep 0.4; echo {%}",
            ":::",
            "1",
            "2",
            "3",
            "4",
        ],
        None,
    );
    assert_eq!(r.code, Some(0));
    assert!(r.took >= secs(0.8), "took {:?}", r.took);
    for slot in lines(&r.stdout) {
        assert!(slot == "1" || slot == "2", "slot {slot}");
    }
    let r = run_in(
        &d,
        &["-j", "4", "sleep", ":::", "0.5", "0.5", "0.5", "0.5"],
        None,
    );
    assert!(r.took < secs(1.9), "4 jobs at once took {:?}", r.took);
}

#[test]
fn keep_order() {
    let d = scratch("keep");
    let r = run_in(
        &d,
        &[
            "-k",
            "-j",
            "3",
            "--shell",
            "sleep {}; echo {}",
            ":::",
            "0.6",
            "0.3",
            "0",
        ],
        None,
    );
    assert_eq!(lines(&r.stdout), ["0.6", "0.3", "0"]);
    let r = run_in(
        &d,
        &[
            "-j",
            "3",
            "--shell",
            "sleep {}; echo {}",
            ":::",
            "0.6",
            "0.3",
            "0",
        ],
        None,
    );
    assert_eq!(
        lines(&r.stdout),
        ["0", "0.3", "0.6"],
        "without -k: as they end"
    );
}

#[test]
fn thread_caps_and_verbose_header() {
    let d = scratch("threads");
    let r = run_in(
        &d,
        &[
            "-v",
            "-j",
            "1",
            "--shell",
            "echo $OMP_NUM_THREADS $MKL_NUM_THREADS $OPENBLAS_NUM_THREADS #{}",
            ":::",
            "x",
        ],
        None,
    );
    let cpus = std::thread::available_parallelism().unwrap().get();
    assert_eq!(r.stdout.trim(), format!("{cpus} {cpus} {cpus}"));
    assert!(
        r.stderr.contains("multiproc: 1 job at once (-j)"),
        "{}",
        r.stderr
    );
    // An OMP_NUM_THREADS set by the user is kept.
    let mut cmd = mp(&d);
    cmd.env("OMP_NUM_THREADS", "7").args([
        "--shell",
        "echo $OMP_NUM_THREADS $MKL_NUM_THREADS #{}",
        ":::",
        "x",
    ]);
    let r = run_cmd(cmd, None);
    assert_eq!(r.stdout.trim(), "7 1", "MKL gets cpus / jobs = 1");
    // In a batch script of `sbatch -n 2 -c 1`: one job per task, SLURM_CPUS_PER_TASK threads
    // each, and -v names the variables.
    let batch = |cmd: &mut Command, tasks: &str, cpt: &str| {
        cmd.env("SLURM_JOB_ID", "42")
            .env("SLURM_CPUS_ON_NODE", "2")
            .env("SLURM_TASKS_PER_NODE", tasks)
            .env("SLURM_CPUS_PER_TASK", cpt);
    };
    if cpus >= 2 {
        let mut cmd = mp(&d);
        batch(&mut cmd, "2", "1");
        cmd.args(["-v", "--shell", "echo $OMP_NUM_THREADS #{}", ":::", "x"]);
        let r = run_cmd(cmd, None);
        assert!(
            r.stderr.contains(
                "multiproc: 2 jobs at once (2 CPUs (SLURM_CPUS_ON_NODE); \
                 SLURM_TASKS_PER_NODE=2, SLURM_CPUS_PER_TASK=1), 1 thread per job"
            ),
            "{}",
            r.stderr
        );
        assert_eq!(r.stdout.trim(), "1");
        // `sbatch -n 1 -c 2`: one job of 2 threads.
        let mut cmd = mp(&d);
        batch(&mut cmd, "1", "2");
        cmd.args(["-v", "--shell", "echo $OMP_NUM_THREADS #{}", ":::", "x"]);
        let r = run_cmd(cmd, None);
        assert!(
            r.stderr.contains("multiproc: 1 job at once (2 CPUs (SLURM_CPUS_ON_NODE); SLURM_TASKS_PER_NODE=1, SLURM_CPUS_PER_TASK=2), 2 threads per job"),
            "{}",
            r.stderr
        );
        assert_eq!(r.stdout.trim(), "2");
    }
    // Inside srun's task: SLURM_CPUS_PER_TASK is the budget.
    let mut cmd = mp(&d);
    cmd.env("SLURM_JOB_ID", "42")
        .env("SLURM_STEP_ID", "0")
        .env("SLURM_CPUS_PER_TASK", "1")
        .args(["-v", "--shell", "echo $OMP_NUM_THREADS #{}", ":::", "x"]);
    let r = run_cmd(cmd, None);
    assert!(
        r.stderr
            .contains("multiproc: 1 job at once (1 CPU (SLURM_CPUS_PER_TASK))"),
        "{}",
        r.stderr
    );
    let r = run_in(
        &d,
        &[
            "-v",
            "--threads-per-job",
            "2",
            "--shell",
            "echo $OMP_NUM_THREADS #{}",
            ":::",
            "x",
        ],
        None,
    );
    assert_eq!(r.stdout.trim(), "2");
    let jobs = (cpus / 2).max(1);
    assert!(
        r.stderr.contains(&format!(
            "multiproc: {jobs} job{} at once (",
            if jobs == 1 { "" } else { "s" }
        )),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("--threads-per-job 2"), "{}", r.stderr);
}

#[test]
fn joblog_columns_and_resume() {
    let d = scratch("joblog");
    let log = d.join("log.tsv");
    let logs = log.to_str().unwrap();
    let r = run_in(
        &d,
        &[
            "--joblog",
            logs,
            "--shell",
            "echo out{}; exit $(( {} % 2 ))",
            ":::",
            "1",
            "2",
            "3",
            "4",
        ],
        None,
    );
    assert_eq!(r.code, Some(2), "two jobs failed");
    let rows = joblog(&log);
    assert_eq!(rows.len(), 4);
    for row in &rows {
        assert_eq!(row.len(), 9);
        let seq: u64 = row[0].parse().unwrap();
        assert_eq!(row[1], ":");
        assert!(row[2].parse::<f64>().unwrap() > 1.6e9);
        assert!(
            row[3].trim().parse::<f64>().unwrap() >= 0.0,
            "JobRuntime %10.3f"
        );
        assert_eq!(row[5], "5", "Receive: bytes of stdout");
        assert_eq!(row[6], (seq % 2).to_string());
        assert_eq!(row[7], "0");
        assert_eq!(row[8], format!("echo out{seq}; exit $(( {seq} % 2 ))"));
    }
    // --resume: everything is in the log, nothing runs.
    let r = run_in(
        &d,
        &[
            "--joblog",
            logs,
            "--resume",
            "--shell",
            "echo again{}; exit $(( {} % 2 ))",
            ":::",
            "1",
            "2",
            "3",
            "4",
        ],
        None,
    );
    assert_eq!((r.code, r.stdout.as_str()), (Some(0), ""));
    assert_eq!(joblog(&log).len(), 4);
    // --resume-failed: the failed ones (1 and 3) run again; now they succeed.
    let r = run_in(
        &d,
        &[
            "--joblog",
            logs,
            "--resume-failed",
            "--shell",
            "echo again{}",
            ":::",
            "1",
            "2",
            "3",
            "4",
        ],
        None,
    );
    assert_eq!(r.code, Some(0));
    assert_eq!(sorted_lines(&r.stdout), ["again1", "again3"]);
    assert_eq!(joblog(&log).len(), 6);
    // A file that is not a joblog is refused before anything runs.
    fs::write(d.join("notes.txt"), "my precious notes\n").unwrap();
    let r = run_in(&d, &["--joblog", "notes.txt", "touch", ":::", "ran"], None);
    assert_eq!(r.code, Some(2));
    assert!(r.stderr.contains("not a joblog"), "{}", r.stderr);
    assert!(!d.join("ran").exists());
    assert_eq!(
        fs::read_to_string(d.join("notes.txt")).unwrap(),
        "my precious notes\n"
    );
}

#[test]
fn retries() {
    let d = scratch("retries");
    // Fails on its first two runs, succeeds on the third. `--retries N` counts all runs.
    let script = "echo x >> count{}; [ $(wc -l < count{}) -ge 3 ]";
    let r = run_in(
        &d,
        &[
            "--joblog",
            "log",
            "--retries",
            "3",
            "--shell",
            script,
            ":::",
            "a",
        ],
        None,
    );
    assert_eq!(r.code, Some(0), "{r:?}");
    assert_eq!(
        fs::read_to_string(d.join("counta"))
            .unwrap()
            .lines()
            .count(),
        3
    );
    assert_eq!(
        joblog(&d.join("log")).len(),
        1,
        "one line per job, not per attempt"
    );
    let r = run_in(&d, &["--retries", "2", "--shell", script, ":::", "b"], None);
    assert_eq!(r.code, Some(1));
    assert_eq!(
        fs::read_to_string(d.join("countb"))
            .unwrap()
            .lines()
            .count(),
        2
    );
}

#[test]
fn timeout_ends_the_job_group() {
    let d = scratch("timeout");
    // The job's grandchild (a background sleep) is ended too.
    let r = run_in(
        &d,
        &[
            "--joblog",
            "log",
            "--timeout",
            "0.5",
            "--shell",
            "sleep 30 & echo $! > gc{}; wait",
            ":::",
            "",
        ],
        None,
    );
    assert_eq!(r.code, Some(1));
    assert!(r.took < secs(10.0), "took {:?}", r.took);
    let rows = joblog(&d.join("log"));
    assert_eq!(
        (rows[0][6].as_str(), rows[0][7].as_str()),
        ("-1", "15"),
        "SIGTERM: {rows:?}"
    );
    let gc: i32 = fs::read_to_string(d.join("gc"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        wait_for(secs(5.0), || !pid_alive(gc)),
        "grandchild {gc} survived"
    );
    // A job that ignores SIGTERM gets SIGKILL after the grace period.
    let r = run_in(
        &d,
        &[
            "--joblog",
            "log2",
            "--timeout",
            "0.3",
            "--shell",
            "trap '' TERM; sleep 20 #{}",
            ":::",
            "x",
        ],
        None,
    );
    assert_eq!(r.code, Some(1));
    assert!(r.took < secs(10.0), "took {:?}", r.took);
    assert_eq!(joblog(&d.join("log2"))[0][7], "9");
}

#[test]
fn sigkilled_job_is_logged_with_signal_9() {
    let d = scratch("killed");
    let r = run_in(
        &d,
        &["--joblog", "log", "--shell", "kill -9 $$ #{}", ":::", "x"],
        None,
    );
    assert_eq!(r.code, Some(1));
    let rows = joblog(&d.join("log"));
    assert_eq!((rows[0][6].as_str(), rows[0][7].as_str()), ("0", "9"));
}

#[test]
fn a_job_sigtermed_by_itself_is_logged_with_signal_15() {
    // SIGTERM is also what a stop sends: the worker waits (bounded) for a stop that does not
    // come, then logs the job as any failed one.
    let d = scratch("termed");
    let r = run_in(
        &d,
        &[
            "--joblog",
            "log",
            "--shell",
            "kill -TERM $$ #{}",
            ":::",
            "x",
        ],
        None,
    );
    assert_eq!(r.code, Some(1), "{}", r.stderr);
    let rows = joblog(&d.join("log"));
    assert_eq!((rows[0][6].as_str(), rows[0][7].as_str()), ("0", "15"));
}

#[test]
fn a_job_killed_by_the_stop_signal_before_the_runner_gets_it_is_not_logged() {
    // As at a SLURM time limit on a loaded node: the job dies of SIGTERM first, the runner is
    // signalled a little later. The job did not finish: no joblog line, --resume runs it.
    let d = scratch("stoprace");
    let job = "if [ -e again ]; then echo ran {} > done; exit 0; fi; \
               r=$(awk '{print $4}' /proc/$PPID/stat); \
               setsid sh -c \"sleep 0.3; kill -TERM $r\" </dev/null >/dev/null 2>&1 & \
               kill -TERM $$";
    let r = run_in(&d, &["--joblog", "log", "--shell", job, ":::", "x"], None);
    assert_ne!(r.code, Some(0), "{}", r.stderr);
    assert!(joblog(&d.join("log")).is_empty(), "{}", r.stderr);
    fs::write(d.join("again"), "").unwrap();
    let r = run_in(
        &d,
        &["--joblog", "log", "--resume", "--shell", job, ":::", "x"],
        None,
    );
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert_eq!(fs::read_to_string(d.join("done")).unwrap(), "ran x\n");
    assert_eq!(joblog(&d.join("log")).len(), 1);
}

#[test]
fn halt() {
    let d = scratch("halt");
    // now,fail=1: the first failure ends the run at once, the sleeping jobs are killed.
    let r = run_in(
        &d,
        &[
            "-j",
            "3",
            "--halt",
            "now,fail=1",
            "--shell",
            "if [ {} = f ]; then exit 3; fi; sleep 20",
            ":::",
            "s1",
            "f",
            "s2",
            "s3",
        ],
        None,
    );
    assert_eq!(r.code, Some(1), "{r:?}");
    assert!(r.took < secs(10.0), "took {:?}", r.took);
    // soon,fail=1: running jobs finish, no new ones start.
    let r = run_in(
        &d,
        &[
            "-j",
            "2",
            "--halt",
            "soon,fail=1",
            "--shell",
            "if [ {} = f ]; then exit 3; fi; sleep 0.5; echo {}",
            ":::",
            "f",
            "a",
            "b",
            "c",
            "d",
        ],
        None,
    );
    assert_eq!(r.code, Some(1));
    assert_eq!(
        lines(&r.stdout),
        ["a"],
        "a was running and finished; no more started"
    );
    // now,fail=50%: 2 of 4 failures.
    let r = run_in(
        &d,
        &[
            "-j",
            "1",
            "--halt",
            "now,fail=50%",
            "false",
            ":::",
            "1",
            "2",
            "3",
            "4",
        ],
        None,
    );
    assert_eq!(r.code, Some(2));
}

#[test]
fn dry_run_prints_and_runs_nothing() {
    let d = scratch("dry");
    let r = run_in(
        &d,
        &[
            "--dry-run",
            "--stdin",
            "{}",
            "--stdout",
            "{}.out",
            "./mmul",
            ":::",
            "in 1",
            "in2",
        ],
        None,
    );
    assert_eq!(r.code, Some(0));
    assert_eq!(
        lines(&r.stdout),
        ["./mmul < 'in 1' > 'in 1.out'", "./mmul < in2 > in2.out"]
    );
    let r = run_in(&d, &["--dry-run", "touch", ":::", "f"], None);
    assert_eq!(r.stdout, "touch f\n");
    assert!(!d.join("f").exists());
}

#[test]
fn results_dir() {
    let d = scratch("results");
    let r = run_in(
        &d,
        &[
            "--results",
            "res",
            "--shell",
            "echo o{}; echo e{} >&2",
            ":::",
            "a",
            "b/c",
        ],
        None,
    );
    assert_eq!(r.code, Some(0));
    assert_eq!(
        fs::read_to_string(d.join("res/1/a/stdout")).unwrap(),
        "oa\n"
    );
    assert_eq!(
        fs::read_to_string(d.join("res/1/a/stderr")).unwrap(),
        "ea\n"
    );
    assert_eq!(
        fs::read_to_string(d.join("res/1/b+zc/stdout")).unwrap(),
        "ob/c\n"
    );
    assert_eq!(fs::read_to_string(d.join("res/1/b+zc/seq")).unwrap(), "2\n");
}

#[test]
fn bar_is_silent_when_not_a_terminal_and_harmless_when_asked() {
    let d = scratch("bar");
    let r = run_in(&d, &["echo", ":::", "a"], None);
    assert_eq!(r.stderr, "");
    let r = run_in(&d, &["--bar", "echo", ":::", "a", "b"], None);
    assert_eq!(r.code, Some(0));
    assert_eq!(sorted_lines(&r.stdout), ["a", "b"]);
}

#[test]
fn two_thousand_jobs_of_true() {
    let d = scratch("2000");
    let input: String = (1..=2000).map(|i| format!("{i}\n")).collect();
    let r = run_in(&d, &["--joblog", "log", "true"], Some(&input));
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let rows = joblog(&d.join("log"));
    assert_eq!(rows.len(), 2000);
    let mut seqs: Vec<u64> = rows.iter().map(|r| r[0].parse().unwrap()).collect();
    seqs.sort();
    assert_eq!(seqs, (1..=2000).collect::<Vec<u64>>());
}

#[test]
fn outputs_are_never_interleaved() {
    let d = scratch("interleave");
    let script = "i=0; while [ $i -lt 10000 ]; do echo {} $i; i=$((i+1)); done";
    let r = run_in(
        &d,
        &["-j", "4", "--shell", script, ":::", "a", "b", "c", "d"],
        None,
    );
    assert_eq!(r.code, Some(0));
    let l = lines(&r.stdout);
    assert_eq!(l.len(), 40_000);
    for block in l.chunks(10_000) {
        let job = block[0].split(' ').next().unwrap();
        for (i, line) in block.iter().enumerate() {
            assert_eq!(
                *line,
                format!("{job} {i}"),
                "lines of job {job} not contiguous"
            );
        }
    }
}

#[test]
fn exit_codes() {
    let d = scratch("exit");
    assert_eq!(run_in(&d, &["true", ":::", "a"], None).code, Some(0));
    assert_eq!(
        run_in(&d, &["false", ":::", "a", "b", "c"], None).code,
        Some(3)
    );
    let many: Vec<String> = (0..110).map(|i| i.to_string()).collect();
    let mut args = vec!["-j", "4", "false", ":::"];
    args.extend(many.iter().map(String::as_str));
    assert_eq!(run_in(&d, &args, None).code, Some(101), "capped at 101");
    // A program that does not exist: 127, a failed job.
    let r = run_in(
        &d,
        &["--joblog", "log", "./no-such-program", ":::", "a"],
        None,
    );
    assert_eq!(r.code, Some(1));
    assert_eq!(joblog(&d.join("log"))[0][6], "127");
    assert!(r.stderr.contains("no-such-program"), "{}", r.stderr);
}

#[test]
fn usage_errors_exit_2_and_name_the_problem() {
    let d = scratch("usage");
    fs::write(d.join("bad-log"), "hello\n").unwrap();
    let cases: [(&[&str], &str); 8] = [
        (&["-j", "0x", "true", ":::", "a"], "--jobs"),
        (&["-j", "x", "true", ":::", "a"], "x"),
        (&["--no-such-flag", "true", ":::", "a"], "--no-such-flag"),
        (&[":::", "a"], "no COMMAND"),
        (&["-a", "no-such-file", "echo"], "no-such-file"),
        (&["echo", "{/..}", ":::", "a"], "{/..}"),
        (
            &["--joblog", "bad-log", "--resume", "echo", ":::", "a"],
            "bad-log",
        ),
        (&["--halt", "sometime", "echo", ":::", "a"], "--halt"),
    ];
    for (args, needle) in cases {
        let r = run_in(&d, args, None);
        assert_eq!(r.code, Some(2), "{args:?}: {r:?}");
        assert!(r.stderr.contains(needle), "{args:?}: {}", r.stderr);
        assert_eq!(r.stdout, "", "{args:?}: nothing ran");
    }
    let r = run_in(&d, &["--timeout", "-1", "true", ":::", "a"], None);
    assert_eq!(r.code, Some(2), "{r:?}");
}

#[test]
fn runner_sigkilled_then_resume_runs_each_job_exactly_once() {
    let d = scratch("resume-kill");
    fs::create_dir(d.join("out")).unwrap();
    fs::create_dir(d.join("started")).unwrap();
    let inputs: Vec<String> = (1..=30).map(|i| i.to_string()).collect();
    let script = "touch started/{}; sleep 0.3; echo done >> out/{}";
    let mut args = vec!["-j", "2", "--joblog", "log", "--shell", script, ":::"];
    args.extend(inputs.iter().map(String::as_str));
    let mut runner = spawn_bg(&d, &args);
    let log = d.join("log");
    // Kill the runner mid-run, at a moment when no running job is about to append its line: a
    // job killed between its append and its exit would rightly run again on --resume, and the
    // test would then see two lines (that window is inherent: the job must die with the runner).
    let safe_to_kill = || {
        if count_rows(&log) < 6 {
            return false;
        }
        let now = std::time::SystemTime::now();
        let mut running = 0;
        for e in fs::read_dir(d.join("started")).unwrap().flatten() {
            if d.join("out").join(e.file_name()).exists() {
                continue;
            }
            running += 1;
            let started = e.metadata().unwrap().modified().unwrap();
            let age = now.duration_since(started).unwrap_or_default();
            if age > secs(0.2) {
                return false; // within 0.1 s of its append
            }
        }
        running > 0
    };
    assert!(wait_for(secs(60.0), safe_to_kill), "no safe moment to kill");
    let workers = children_of(runner.0.id());
    assert_eq!(workers.len(), 2, "{workers:?}");
    runner.0.kill().unwrap();
    runner.0.wait().unwrap();
    for w in workers {
        assert!(
            wait_for(secs(5.0), || !pid_alive(w)),
            "worker {w} outlived the runner"
        );
    }
    let before = count_rows(&log);
    assert!(before < 30, "killed too late to test anything");
    // The workers and their jobs die with the runner: nothing more is appended.
    std::thread::sleep(secs(1.0));
    let outs = || fs::read_dir(d.join("out")).unwrap().count();
    let n = outs();
    std::thread::sleep(secs(1.0));
    assert_eq!(outs(), n, "jobs kept running after the runner was killed");
    args.insert(0, "--resume");
    let r = run_in(&d, &args, None);
    assert_eq!(r.code, Some(0), "{r:?}");
    for i in &inputs {
        let text = fs::read_to_string(d.join("out").join(i)).unwrap_or_default();
        assert_eq!(
            text.lines().count(),
            1,
            "input {i} ran {} times",
            text.lines().count()
        );
    }
    assert_eq!(joblog(&log).len(), 30);
}

#[test]
fn sigterm_stops_ends_job_groups_and_flushes_the_log() {
    let d = scratch("sigterm");
    let script = "if [ {} = quick ]; then exit 0; fi; sleep 30 & echo $! > gc{}; wait";
    let mut runner = spawn_bg(
        &d,
        &[
            "-j", "3", "--joblog", "log", "--shell", script, ":::", "quick", "a", "b", "c", "d",
        ],
    );
    // The shell creates gc{} before `echo` writes the pid into it: wait for the pid itself.
    let has_pid =
        |gc: &str| fs::read_to_string(d.join(gc)).is_ok_and(|t| t.trim().parse::<i32>().is_ok());
    assert!(
        wait_for(secs(30.0), || has_pid("gca") && has_pid("gcb")),
        "jobs did not start"
    );
    let t0 = Instant::now();
    // SAFETY: kill takes plain integers; the runner is our unreaped child.
    unsafe { libc::kill(runner.0.id() as i32, libc::SIGTERM) };
    let code = wait_bg(&mut runner, secs(20.0));
    assert_eq!(code, Some(128 + 15));
    assert!(t0.elapsed() < secs(10.0));
    for gc in ["gca", "gcb"] {
        let pid: i32 = fs::read_to_string(d.join(gc))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert!(
            wait_for(secs(5.0), || !pid_alive(pid)),
            "grandchild {gc} survived"
        );
    }
    // Only the finished job is logged; the interrupted ones run again with --resume.
    let rows = joblog(&d.join("log"));
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0][0], "1");
}

#[test]
fn second_signal_kills_at_once() {
    let d = scratch("sig2");
    // Jobs that ignore SIGTERM would hold the runner for the grace period; a second signal
    // does not wait.
    let mut runner = spawn_bg(
        &d,
        &[
            "--shell",
            "trap '' TERM; touch started{}; sleep 30",
            ":::",
            "a",
        ],
    );
    assert!(wait_for(secs(30.0), || d.join("starteda").exists()));
    let pid = runner.0.id() as i32;
    // SAFETY: kill takes plain integers; the runner is our unreaped child.
    unsafe { libc::kill(pid, libc::SIGINT) };
    std::thread::sleep(secs(0.2));
    let t0 = Instant::now();
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGINT) };
    let code = wait_bg(&mut runner, secs(10.0));
    assert_eq!(code, Some(128 + 2));
    assert!(t0.elapsed() < secs(1.5), "took {:?}", t0.elapsed());
}

#[test]
fn a_stop_signal_that_reaches_a_worker_first_stops_the_run() {
    // SLURM signals every process of a job in no set order: a worker may get SIGTERM before
    // the runner. The run stops as if the runner had it: the running job is ended and not
    // logged, no other job starts, and --resume runs both.
    let d = scratch("worker-first");
    let log = d.join("log");
    let logs = log.to_str().unwrap();
    let mut runner = spawn_bg(
        &d,
        &[
            "-j",
            "1",
            "--joblog",
            logs,
            "--shell",
            "echo $PPID > wpid{}.tmp && mv wpid{}.tmp wpid{}; sleep 30",
            ":::",
            "a",
            "b",
        ],
    );
    assert!(wait_for(secs(30.0), || d.join("wpida").exists()));
    let worker: i32 = fs::read_to_string(d.join("wpida"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // SAFETY: kill takes plain integers; the worker is the runner's child, alive while its job
    // runs (the job sleeps 30 s).
    unsafe { libc::kill(worker, libc::SIGTERM) };
    assert_eq!(wait_bg(&mut runner, secs(20.0)), Some(128 + 15));
    assert!(joblog(&log).is_empty());
    assert!(!d.join("wpidb").exists(), "b started after the stop");
    let r = run_in(
        &d,
        &[
            "--joblog",
            logs,
            "--resume",
            "--shell",
            "echo ok > done{}",
            ":::",
            "a",
            "b",
        ],
        None,
    );
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert!(d.join("donea").exists() && d.join("doneb").exists());
    assert_eq!(joblog(&log).len(), 2);
}

/// The pids whose parent is `pid`.
fn children_of(pid: u32) -> Vec<i32> {
    let mut kids = Vec::new();
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(p) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if let Ok(stat) = fs::read_to_string(format!("/proc/{p}/stat"))
            && let Some(rest) = stat.rsplit(") ").next()
            && rest.split(' ').nth(1) == Some(pid.to_string().as_str())
        {
            kids.push(p);
        }
    }
    kids
}

#[test]
fn a_worker_killed_from_outside_fails_its_job_and_the_run_goes_on() {
    let d = scratch("worker-death");
    let mut cmd = mp(&d);
    cmd.args([
        "-j",
        "2",
        "--joblog",
        "log",
        "--shell",
        "touch s{}; sleep 1; echo {}",
        ":::",
    ])
    .args(["a", "b", "c", "d"])
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut runner = Reap(cmd.spawn().unwrap());
    assert!(wait_for(secs(30.0), || d.join("sa").exists()
        && d.join("sb").exists()));
    // The runner's children are its two workers (jobs are the workers' children).
    let workers = children_of(runner.0.id());
    assert_eq!(workers.len(), 2, "{workers:?}");
    // SAFETY: kill takes plain integers; the worker is alive (its job sleeps).
    unsafe { libc::kill(workers[0], libc::SIGKILL) };
    let code = wait_bg(&mut runner, secs(60.0));
    let mut out = String::new();
    let mut err = String::new();
    use std::io::Read;
    runner
        .0
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    runner
        .0
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert_eq!(code, Some(1), "one job lost: {err}");
    assert!(err.contains("worker process died"), "{err}");
    // The other three ran on the surviving worker, and are logged; the lost one is not (so
    // --resume would run it again).
    assert_eq!(out.lines().count(), 3, "{out}");
    assert_eq!(joblog(&d.join("log")).len(), 3);
}

#[test]
fn progress_bar_with_eta_on_a_terminal() {
    // `script` (util-linux) gives the command a pseudo-terminal.
    if Command::new("script").arg("--version").output().is_err() {
        println!("skipped: no `script` command to make a terminal");
        return;
    }
    let d = scratch("bar-tty");
    let line = format!(
        "{} -j 2 sleep ::: 0.2 0.2 0.2",
        env!("CARGO_BIN_EXE_multiproc")
    );
    let mut cmd = Command::new("script");
    cmd.current_dir(&d).args(["-qec", &line, "/dev/null"]);
    let r = run_cmd(cmd, None);
    assert_eq!(r.code, Some(0), "{r:?}");
    assert!(r.stdout.contains("3/3 jobs, ETA"), "{:?}", r.stdout);
}

/// A runner whose stdin the test writes to as it goes, and whose stdout lines it reads as they
/// come.
struct Streaming {
    child: Reap,
    input: Option<std::process::ChildStdin>,
    lines: mpsc::Receiver<String>,
    stderr: std::thread::JoinHandle<String>,
}

impl Streaming {
    fn start(dir: &Path, args: &[&str]) -> Streaming {
        use std::io::{BufRead, Read};
        let mut cmd = mp(dir);
        cmd.args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let input = child.stdin.take();
        let out = child.stdout.take().unwrap();
        let mut err = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            s
        });
        Streaming {
            child: Reap(child),
            input,
            lines,
            stderr,
        }
    }

    fn write(&mut self, bytes: &[u8]) {
        let input = self.input.as_mut().unwrap();
        input.write_all(bytes).unwrap();
        input.flush().unwrap();
    }

    /// The next stdout line, waiting at most 20 s.
    fn next_line(&self) -> Option<String> {
        self.lines.recv_timeout(secs(20.0)).ok()
    }

    /// Closes stdin, waits for the exit (bounded); returns the exit code and stderr.
    fn finish(mut self) -> (Option<i32>, String) {
        drop(self.input.take());
        let code = wait_bg(&mut self.child, LIMIT);
        (code, self.stderr.join().unwrap())
    }
}

#[test]
fn stdin_is_read_as_jobs_run_so_jobs_start_before_the_input_ends() {
    let d = scratch("stream");
    let mut s = Streaming::start(&d, &["-v", "--joblog", "log", "echo", "got"]);
    // Each line's job runs while the input is still open: an endless producer works.
    s.write(b"a\n");
    assert_eq!(s.next_line().as_deref(), Some("got a"));
    s.write(b"b\n");
    assert_eq!(s.next_line().as_deref(), Some("got b"));
    let (code, stderr) = s.finish();
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains("jobs read from stdin as they come"),
        "{stderr}"
    );
    assert_eq!(joblog(&d.join("log")).len(), 2);
}

#[test]
fn streamed_input_keeps_order_and_resumes() {
    let d = scratch("stream-resume");
    let r = run_in(&d, &["--joblog", "log", "echo"], Some("1\n2\n3\n"));
    assert_eq!(
        (r.code, sorted_lines(&r.stdout)),
        (Some(0), vec!["1".into(), "2".into(), "3".into()])
    );
    // The same input and more: only the new ones run, printed in input order (-k does not wait
    // for the skipped ones), though the first of them takes longest.
    let r = run_in(
        &d,
        &[
            "--joblog",
            "log",
            "--resume",
            "-k",
            "-j",
            "3",
            "--shell",
            "sleep 0.$((6 - {})); echo {}",
        ],
        Some("1\n2\n3\n4\n5\n6\n"),
    );
    assert_eq!(
        (r.code, lines(&r.stdout)),
        (Some(0), vec!["4", "5", "6"]),
        "{}",
        r.stderr
    );
    let seqs: Vec<String> = joblog(&d.join("log"))
        .into_iter()
        .map(|row| row[0].clone())
        .collect();
    let mut seqs: Vec<u64> = seqs.iter().map(|s| s.parse().unwrap()).collect();
    seqs.sort();
    assert_eq!(seqs, [1, 2, 3, 4, 5, 6], "each input once");
}

#[test]
fn a_streamed_input_that_fails_part_way_stops_the_hand_out_with_a_clear_error() {
    let d = scratch("stream-bad");
    let mut s = Streaming::start(&d, &["echo", "ran"]);
    s.write(b"ok\n");
    assert_eq!(s.next_line().as_deref(), Some("ran ok"));
    s.write(b"\xff\nlater\n");
    let (code, stderr) = s.finish();
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("stdin line 2: not valid UTF-8") && stderr.contains("no more jobs"),
        "{stderr}"
    );
    // A regular file with the same bad line is refused before any job runs.
    fs::write(d.join("bad"), b"ok\n\xff\n").unwrap();
    let r = run_in(&d, &["echo", "ran", "::::", "bad"], None);
    assert_eq!((r.code, r.stdout.as_str()), (Some(2), ""), "{}", r.stderr);
    assert!(r.stderr.contains("line 2"), "{}", r.stderr);
}

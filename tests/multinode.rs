//! The multi-node runner without a cluster: a fake `srun` (which runs the agent command on "node"
//! `--nodelist=X` by exporting `SLURMD_NODENAME=X` and the step's `SLURM_CPUS_PER_TASK`) and a
//! fake `scontrol show hostnames` on PATH, and the variables of a two-node batch script. The
//! runner, the agents, the protocol and the engine are the real ones; only SLURM's process
//! launch is replaced. So these run everywhere, fast; `tests/slurm_multi.rs` runs the same
//! paths under a real two-node SLURM.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("multiproc-multinode-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(d.join("bin")).unwrap();
    d
}

fn write_exe(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    Command::new("chmod").arg("+x").arg(path).status().unwrap();
}

/// The fake `srun`'s start: reads the options (the node from `--nodelist`, the step's CPUs), and
/// leaves the command in `$@`.
const SRUN_OPTIONS: &str = r#"#!/bin/bash
# Fake srun: run the command after the options on the node --nodelist names.
while [ $# -gt 0 ]; do
    case "$1" in
    --nodelist=*) export SLURMD_NODENAME="${1#--nodelist=}" ;;
    --cpus-per-task=*) export SLURM_CPUS_PER_TASK="${1#--cpus-per-task=}" ;;
    --*) ;;
    *) break ;;
    esac
    shift
done
export SLURM_STEP_ID=0
"#;

/// A command that runs multiproc as the batch script of a 2-node allocation (nodes a, b, 2 CPUs
/// each), in `dir`, with the fakes first on PATH.
fn batch(dir: &Path) -> Command {
    let bin = dir.join("bin");
    write_exe(&bin.join("srun"), &format!("{SRUN_OPTIONS}exec \"$@\"\n"));
    write_exe(
        &bin.join("scontrol"),
        "#!/bin/sh\n[ \"$1 $2\" = 'show hostnames' ] && echo \"$3\" | tr , '\\n'\n",
    );
    let mut c = Command::new(env!("CARGO_BIN_EXE_multiproc"));
    c.current_dir(dir)
        .env(
            "PATH",
            format!("{}:{}", bin.display(), std::env::var("PATH").unwrap()),
        )
        .env("SLURM_JOB_ID", "1")
        .env("SLURM_JOB_NUM_NODES", "2")
        .env("SLURM_JOB_NODELIST", "a,b")
        .env("SLURM_JOB_CPUS_PER_NODE", "2(x2)")
        .env_remove("SLURM_STEP_ID")
        .env_remove("SLURM_STEPID")
        .env_remove("SLURM_CPUS_PER_TASK")
        .env_remove("MULTIPROC_NODES")
        .stdin(Stdio::null());
    c
}

/// Runs `cmd`, killing it past `limit` (a hang fails the test instead of blocking it).
fn run_bounded(mut cmd: Command, limit: Duration) -> Output {
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            // SAFETY: kill takes plain integers; the child has not been reaped yet.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            panic!("multiproc did not finish within {limit:?}");
        }
    }
}

/// The joblog's job lines as (seq, host, exitval, signal).
fn joblog(path: &Path) -> Vec<(u64, String, i32, i32)> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines = text.lines();
    assert_eq!(
        lines.next(),
        Some("Seq\tHost\tStarttime\tJobRuntime\tSend\tReceive\tExitval\tSignal\tCommand")
    );
    lines
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            (
                f[0].parse().unwrap(),
                f[1].to_string(),
                f[6].parse().unwrap(),
                f[7].parse().unwrap(),
            )
        })
        .collect()
}

fn seqs(log: &[(u64, String, i32, i32)]) -> Vec<u64> {
    let mut s: Vec<u64> = log.iter().map(|l| l.0).collect();
    s.sort_unstable();
    s
}

const LIMIT: Duration = Duration::from_secs(60);

/// Kills the job's agent (the parent of its worker, the job's shell's parent) once, the first
/// time input `K` runs (a directory as the once-only marker), then goes on.
fn kill_agent_once(k: u32) -> String {
    format!(
        "if [ {{}} = {k} ] && mkdir killed 2>/dev/null; then \
         kill -9 $(awk '{{print $4}}' /proc/$PPID/stat); sleep 30; fi; echo \"{{}} {{host}} {{%}}\""
    )
}

#[test]
fn jobs_run_on_both_nodes_once_each_with_host_and_slot() {
    let dir = tmpdir("both");
    let mut cmd = batch(&dir);
    cmd.args(["-v", "--joblog", "run.log", "--shell"])
        .arg("sleep 0.05; echo \"{} {host} {%} $MULTIPROC_NODE\"")
        .arg(":::")
        .args((1..=30).map(|i| i.to_string()));
    let out = run_bounded(cmd, LIMIT);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("multiproc: 2 nodes: a (2 CPUs), b (2 CPUs)"),
        "{stderr}"
    );
    assert!(
        stderr.contains("multiproc agent on a: 2 jobs at once"),
        "{stderr}"
    );
    let log = joblog(&dir.join("run.log"));
    assert_eq!(seqs(&log), (1..=30).collect::<Vec<_>>());
    assert!(log.iter().all(|l| l.2 == 0 && l.3 == 0));
    let stdout = String::from_utf8_lossy(&out.stdout);
    for (seq, host, _, _) in &log {
        // The job's line names the node its joblog line names, a slot of that node, and the
        // same node in MULTIPROC_NODE.
        let line = stdout
            .lines()
            .find(|l| l.split(' ').next() == Some(&seq.to_string()))
            .unwrap_or_else(|| panic!("no output for job {seq}: {stdout}"));
        let f: Vec<&str> = line.split(' ').collect();
        assert_eq!(f[1], host, "{line}");
        assert!(f[2] == "1" || f[2] == "2", "slot of {line}");
        assert_eq!(f[3], host, "{line}");
    }
    for h in ["a", "b"] {
        assert!(log.iter().any(|l| l.1 == h), "no job on {h}: {log:?}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_killed_agent_costs_its_running_job_which_runs_again_elsewhere() {
    let dir = tmpdir("retry");
    let mut cmd = batch(&dir);
    cmd.args(["--retries", "2", "--joblog", "run.log", "--shell"])
        .arg(kill_agent_once(5))
        .arg(":::")
        .args((1..=20).map(|i| i.to_string()));
    let out = run_bounded(cmd, LIMIT);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("the agent is gone"), "{stderr}");
    assert!(dir.join("killed").exists());
    let log = joblog(&dir.join("run.log"));
    // Every input once, all succeeded: job 5 ran again on the node still up.
    assert_eq!(seqs(&log), (1..=20).collect::<Vec<_>>());
    assert!(log.iter().all(|l| l.2 == 0 && l.3 == 0), "{log:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn with_no_retry_left_the_lost_job_is_logged_failed() {
    let dir = tmpdir("noretry");
    let mut cmd = batch(&dir);
    cmd.args(["--joblog", "run.log", "--shell"])
        .arg(kill_agent_once(5))
        .arg(":::")
        .args((1..=20).map(|i| i.to_string()));
    let out = run_bounded(cmd, LIMIT);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // The jobs the dead node ran (job 5, and maybe one more: 2 slots) failed, logged as killed
    // (-1, signal 9); the exit status counts them; every other input succeeded.
    assert!(stderr.contains("job 5: its node"), "{stderr}");
    let log = joblog(&dir.join("run.log"));
    assert_eq!(seqs(&log), (1..=20).collect::<Vec<_>>());
    let failed: Vec<_> = log.iter().filter(|l| l.2 != 0 || l.3 != 0).collect();
    assert!((1..=2).contains(&failed.len()), "{log:?}");
    assert!(failed.iter().any(|l| l.0 == 5));
    assert!(failed.iter().all(|l| (l.2, l.3) == (-1, 9)), "{log:?}");
    assert_eq!(out.status.code(), Some(failed.len() as i32), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn every_agent_dead_ends_the_run_with_an_error_not_a_hang() {
    let dir = tmpdir("alldead");
    let mut cmd = batch(&dir);
    cmd.args(["--joblog", "run.log", "--shell"])
        .arg("kill -9 $(awk '{print $4}' /proc/$PPID/stat); sleep 30")
        .arg(":::")
        .args((1..=20).map(|i| i.to_string()));
    let out = run_bounded(cmd, LIMIT);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(255), "{stderr}");
    assert!(
        stderr.contains("every node's agent ended with jobs left"),
        "{stderr}"
    );
    // Only the jobs the agents were running are logged (failed); --resume runs the rest.
    let log = joblog(&dir.join("run.log"));
    assert!(!log.is_empty() && log.len() <= 4, "{log:?}");
    assert!(log.iter().all(|l| l.2 == -1 && l.3 == 9));
    let _ = std::fs::remove_dir_all(&dir);
}

/// SIGTERM to the runner (SLURM's end of job): it stops within a bound, logs only finished
/// jobs, leaves no job running; a one-node `--resume` (another size) runs each other input once.
#[test]
fn sigterm_then_resume_on_one_node_runs_each_input_once() {
    let dir = tmpdir("term");
    std::fs::create_dir_all(dir.join("out")).unwrap();
    std::fs::create_dir_all(dir.join("started")).unwrap();
    let job = "touch started/{}; [ {} -le 6 ] || sleep 30; echo x >> out/{}";
    let args = |c: &mut Command| {
        c.args(["--joblog", "run.log", "--shell", job, ":::"])
            .args((1..=20).map(|i| i.to_string()));
    };
    let mut cmd = batch(&dir);
    args(&mut cmd);
    let child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Handshake: the 6 quick jobs are logged and 4 slow ones (2 nodes x 2 slots) have started.
    let deadline = Instant::now() + LIMIT;
    loop {
        let logged = std::fs::read_to_string(dir.join("run.log"))
            .map(|t| t.lines().count().saturating_sub(1))
            .unwrap_or(0);
        let started = std::fs::read_dir(dir.join("started")).unwrap().count();
        if logged >= 6 && started >= 10 {
            break;
        }
        assert!(Instant::now() < deadline, "jobs did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: kill takes plain integers; the child is alive (not reaped).
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let t0 = Instant::now();
    let (tx, rx) = std::sync::mpsc::channel();
    let pid = child.id() as i32;
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(o) => o.unwrap(),
        Err(_) => {
            // SAFETY: as above.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            panic!("the runner did not stop on SIGTERM");
        }
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(143), "{stderr}");
    assert!(t0.elapsed() < Duration::from_secs(20), "{:?}", t0.elapsed());
    let log = joblog(&dir.join("run.log"));
    assert_eq!(seqs(&log), (1..=6).collect::<Vec<_>>(), "{stderr}");
    // No job of the run is left running.
    let ps = Command::new("pgrep")
        .args(["-f", "sleep 30; echo x >> out/"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&ps.stdout).trim().is_empty(),
        "jobs left running"
    );
    // A one-node run (no SLURM variables) resumes it: the other 14, quick this time.
    let mut resume = Command::new(env!("CARGO_BIN_EXE_multiproc"));
    resume
        .current_dir(&dir)
        .env_remove("SLURM_JOB_NUM_NODES")
        .env("MULTIPROC_NODES", "1")
        .args(["-j", "4", "--resume", "--joblog", "run.log", "--shell"])
        .arg("touch started/{}; echo x >> out/{}")
        .arg(":::")
        .args((1..=20).map(|i| i.to_string()));
    let out = run_bounded(resume, LIMIT);
    assert!(out.status.success(), "{out:?}");
    let log = joblog(&dir.join("run.log"));
    assert_eq!(seqs(&log), (1..=20).collect::<Vec<_>>());
    for k in 1..=20 {
        let n = std::fs::read_to_string(dir.join("out").join(k.to_string()))
            .map(|t| t.lines().count())
            .unwrap_or(0);
        assert_eq!(n, 1, "input {k} ran to completion {n} times");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn nodes_flag_limits_the_run_to_those_nodes() {
    let dir = tmpdir("nodes");
    let mut cmd = batch(&dir);
    cmd.args(["--nodes", "b", "--joblog", "run.log", "echo", ":::"])
        .args((1..=10).map(|i| i.to_string()));
    let out = run_bounded(cmd, LIMIT);
    assert!(out.status.success(), "{out:?}");
    let log = joblog(&dir.join("run.log"));
    assert_eq!(seqs(&log), (1..=10).collect::<Vec<_>>());
    assert!(log.iter().all(|l| l.1 == "b"), "{log:?}");
    // A node outside the allocation, and --nodes outside a multi-node batch script: usage errors.
    let mut cmd = batch(&dir);
    cmd.args(["--nodes", "a,c", "echo", ":::", "x"]);
    let out = run_bounded(cmd, LIMIT);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--nodes a,c: node c is not in this job's allocation (a,b)"),
        "{stderr}"
    );
    let out = run_bounded(
        {
            let mut c = Command::new(env!("CARGO_BIN_EXE_multiproc"));
            c.env_remove("SLURM_JOB_NUM_NODES")
                .env_remove("SLURM_NNODES")
                .args(["--nodes", "a", "echo", ":::", "x"]);
            c
        },
        LIMIT,
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--nodes a: not in the batch script"),
        "{out:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Dynamic hand-out, with a handshake instead of timing: 1 slot per node; a job on node b
/// waits until 18 other jobs are done. Inputs dealt out in advance (10 each) would leave b's
/// queue stuck behind its first job; handed out as slots free up, node a runs the rest.
#[test]
fn a_node_gets_work_when_it_has_a_free_slot() {
    let dir = tmpdir("dynamic");
    std::fs::create_dir_all(dir.join("done")).unwrap();
    let mut cmd = batch(&dir);
    cmd.env("SLURM_JOB_CPUS_PER_NODE", "1(x2)")
        .args(["--joblog", "run.log", "--shell"])
        .arg(
            "if [ {host} = b ]; then i=0; \
             while [ $(ls done | wc -l) -lt 18 ] && [ $i -lt 1500 ]; do sleep 0.02; i=$((i+1)); done; \
             fi; touch done/{}",
        )
        .arg(":::")
        .args((1..=20).map(|i| i.to_string()));
    let out = run_bounded(cmd, LIMIT);
    assert!(out.status.success(), "{out:?}");
    let log = joblog(&dir.join("run.log"));
    assert_eq!(seqs(&log), (1..=20).collect::<Vec<_>>());
    let on_b = log.iter().filter(|l| l.1 == "b").count();
    assert!((1..=2).contains(&on_b), "node b ran {on_b} jobs: {log:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Slots per node come from that node's share of the allocation.
#[test]
fn slots_per_node_follow_the_allocation() {
    let dir = tmpdir("uneven");
    let mut cmd = batch(&dir);
    // (2 and 1: the sizing rule caps a node's CPUs by the affinity mask; CI machines have 2.)
    cmd.env("SLURM_JOB_CPUS_PER_NODE", "2,1")
        .args(["-v", "--joblog", "run.log", "echo", "{host}", "{%}", ":::"])
        .args((1..=12).map(|i| i.to_string()));
    let out = run_bounded(cmd, LIMIT);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("nodes: a (2 CPUs), b (1 CPU)"), "{stderr}");
    assert!(
        stderr.contains("multiproc agent on a: 2 jobs at once"),
        "{stderr}"
    );
    assert!(
        stderr.contains("multiproc agent on b: 1 job at once"),
        "{stderr}"
    );
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let (host, slot) = line.split_once(' ').unwrap();
        let max = if host == "a" { 2 } else { 1 };
        let slot: usize = slot.parse().unwrap();
        assert!((1..=max).contains(&slot), "{line}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--bar` in a multi-node run (drawn only on a terminal; here it must not disturb the output).
#[test]
fn bar_does_not_disturb_a_multi_node_run() {
    let dir = tmpdir("bar");
    let mut cmd = batch(&dir);
    cmd.args(["--bar", "echo", ":::"])
        .args((1..=12).map(|i| i.to_string()));
    let out = run_bounded(cmd, LIMIT);
    assert!(out.status.success(), "{out:?}");
    let mut lines: Vec<u32> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    lines.sort_unstable();
    assert_eq!(lines, (1..=12).collect::<Vec<_>>());
    let _ = std::fs::remove_dir_all(&dir);
}

/// A job's big output (over the 4 MiB the runner keeps in memory) comes back from its node in
/// chunks, whole and in one block, next to small ones.
#[test]
fn big_output_comes_back_whole() {
    let dir = tmpdir("big");
    let mut cmd = batch(&dir);
    cmd.args(["-k", "--shell"])
        .arg("if [ {} = 2 ]; then head -c 6000000 /dev/zero | tr '\\0' x; echo; else echo small {}; fi")
        .args([":::", "1", "2", "3", "4"]);
    let out = run_bounded(cmd, LIMIT);
    assert!(
        out.status.success(),
        "{:?}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 4);
    assert_eq!(lines[0], "small 1");
    assert_eq!(lines[1].len(), 6_000_000);
    assert!(lines[1].bytes().all(|b| b == b'x'));
    assert_eq!(&lines[2..], ["small 3", "small 4"]);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Runs `cmd` (a `--shell` job given, whose input 5 interrupts its agent once) over inputs
/// 1..=20 and checks that the agent's stop was reported, the run succeeded, and every input was
/// logged once, successful: the interrupted job ran again elsewhere, nothing is logged failed.
fn interrupted_input_5_ran_elsewhere(mut cmd: Command, dir: &Path) {
    cmd.arg(":::").args((1..=20).map(|i| i.to_string()));
    let out = run_bounded(cmd, LIMIT);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("the agent stopped on signal 15"),
        "{stderr}"
    );
    let log = joblog(&dir.join("run.log"));
    assert_eq!(seqs(&log), (1..=20).collect::<Vec<_>>());
    assert!(log.iter().all(|l| l.2 == 0 && l.3 == 0), "{log:?}");
    let _ = std::fs::remove_dir_all(dir);
}

/// An agent stopped by a signal (its step cancelled; or the job's end reaching it before the
/// runner): the job it was running was interrupted, not failed, so it runs again on the other
/// node even with no retry left, and nothing is logged failed.
#[test]
fn a_job_interrupted_by_its_agents_stop_runs_elsewhere_not_failed() {
    let dir = tmpdir("stopped");
    let mut cmd = batch(&dir);
    cmd.args(["--joblog", "run.log", "--shell"]).arg(
        "if [ {} = 5 ] && mkdir stopped 2>/dev/null; then \
             kill -TERM $(awk '{print $4}' /proc/$PPID/stat); sleep 30; fi; echo {}",
    );
    interrupted_input_5_ran_elsewhere(cmd, &dir);
}

/// SLURM's end of job can end a step's `srun` before it relays the agent's last message: an
/// agent gone without a word, whose `srun` ended on a stop signal (status 143), was
/// interrupted, not failed; its job runs again on the other node, nothing is logged failed.
#[test]
fn an_agent_whose_srun_ended_on_sigterm_without_a_word_was_interrupted_not_failed() {
    let dir = tmpdir("srun-term");
    let mut cmd = batch(&dir);
    // This srun runs the agent as its child and, on SIGTERM, kills it outright (no last
    // message) and exits 143, as srun does when the step is cancelled.
    write_exe(
        &dir.join("bin/srun"),
        &format!(
            "{SRUN_OPTIONS}\"$@\" 0<&0 &\nagent=$!\n\
             trap 'kill -KILL $agent; wait $agent; exit 143' TERM\nwait $agent\n"
        ),
    );
    cmd.args(["--joblog", "run.log", "--shell"]).arg(
        "if [ {} = 5 ] && mkdir stopped 2>/dev/null; then \
             a=$(awk '{print $4}' /proc/$PPID/stat); \
             kill -TERM $(awk '{print $4}' /proc/$a/stat); sleep 30; fi; echo {}",
    );
    interrupted_input_5_ran_elsewhere(cmd, &dir);
}

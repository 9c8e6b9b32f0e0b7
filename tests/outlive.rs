//! Nothing outlives its parent (issue 12): after `SIGKILL`, `SIGTERM` or `SIGINT` of the parent
//! alone, every process multiproc started (pool workers, a `Process`, a `spawn` child) and what
//! each of them started (`sleep 30` through `std::process::Command`) is gone within 2 s.
//!
//! The parent is this test binary run again with `MULTIPROC_OUTLIVE_PARENT` set (the test
//! `outlive_parent` is then the program). This process is a child subreaper
//! (`PR_SET_CHILD_SUBREAPER`), so that orphans are re-parented to it and counted: the processes
//! left are this process's descendants (a walk of `/proc`) that carry the run's tag in their
//! environment.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::secs;
use multiproc::{Event, Pool, Process, spawn};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

const ROLE: &str = "MULTIPROC_OUTLIVE_PARENT";
const TAG: &str = "MULTIPROC_OUTLIVE_TAG";
/// How long every descendant may take to end after the parent's death (the figure).
const ALLOWED: Duration = Duration::from_secs(2);

/// Set: the tasks clear their parent-death signal first, so that only the second line (the
/// parent's watch pipe closing) can end them.
const NO_DEATH_SIGNAL: &str = "MULTIPROC_OUTLIVE_NO_PDEATHSIG";

/// Starts `sleep 30`, tells the test its pid, then waits for it (both are killed before).
fn start_grandchild(who: &str) {
    if std::env::var_os(NO_DEATH_SIGNAL).is_some() {
        nix::sys::prctl::set_pdeathsig(None).unwrap();
        assert_eq!(nix::sys::prctl::get_pdeathsig().unwrap(), None);
    }
    let mut child = Command::new("sleep").arg("30").spawn().unwrap();
    println!("grandchild of the {who}: {}", child.id());
    let _ = child.wait();
}

fn pool_task(_: u32) -> u32 {
    start_grandchild("pool worker");
    0
}

/// The parent: a pool of 2 (one runs a task that starts a grandchild), a `Process` and a `spawn`
/// child that start one each; then it waits to be killed.
#[test]
fn outlive_parent() {
    if std::env::var_os(ROLE).is_none() {
        return; // not the parent: an ordinary test run
    }
    let pool = Pool::with_processes(2).unwrap();
    // The pool is driven by another thread; the workers were forked by this one.
    let _driver = std::thread::spawn(move || pool.apply(pool_task, 0));
    let p = Process::new(|| start_grandchild("Process"));
    p.start().unwrap();
    let _h = spawn(|| start_grandchild("spawn child")).unwrap();
    println!("parent ready");
    std::thread::sleep(secs(120));
}

/// One process seen in `/proc`: parent, state, start time, and whether it carries `tag`.
struct Seen {
    ppid: i32,
    state: char,
    start: u64,
    tagged: bool,
}

fn scan(tag: &str) -> HashMap<i32, Seen> {
    let needle = format!("{TAG}={tag}\0");
    let mut all = HashMap::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 2..]) else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        all.insert(
            pid,
            Seen {
                state: fields[0].chars().next().unwrap_or('?'),
                ppid: fields[1].parse().unwrap_or(0),
                start: fields[19].parse().unwrap_or(0),
                tagged: environ
                    .windows(needle.len())
                    .any(|w| w == needle.as_bytes()),
            },
        );
    }
    all
}

/// This process's live descendants (pid, start time), found by walking parent links in `/proc`;
/// with `tag`, only those carrying it (zombies, whose environment is gone, are not counted).
fn live_descendants(tag: &str) -> Vec<(i32, u64)> {
    let all = scan(tag);
    let me = std::process::id() as i32;
    let is_descendant = |mut pid: i32| {
        for _ in 0..64 {
            match all.get(&pid) {
                Some(s) if s.ppid == me => return true,
                Some(s) if s.ppid > 1 => pid = s.ppid,
                _ => return false,
            }
        }
        false
    };
    all.iter()
        .filter(|(pid, s)| s.tagged && s.state != 'Z' && is_descendant(**pid))
        .map(|(pid, s)| (*pid, s.start))
        .collect()
}

/// Whether the process `pid` started at `start` still runs (a zombie does not).
fn runs(pid: i32, start: u64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        let rest = &stat[stat.rfind(')').map_or(0, |i| i + 2)..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        fields.first() != Some(&"Z") && fields.get(19).and_then(|s| s.parse().ok()) == Some(start)
    })
}

fn become_subreaper() {
    nix::sys::prctl::set_child_subreaper(true).unwrap();
}

/// Starts the parent, waits until its three grandchildren run, sends `sig` to the parent alone,
/// and checks that every tagged descendant is gone within [`ALLOWED`].
fn kill_parent_and_count(sig: Signal) {
    kill_parent_and_count_with(sig, false);
}

fn kill_parent_and_count_with(sig: Signal, no_death_signal: bool) {
    become_subreaper();
    static ROUND: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let round = ROUND.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tag = format!("{}-{sig:?}-{round}", std::process::id());
    let mut parent = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "outlive_parent",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(ROLE, "1")
        .env(TAG, &tag)
        .env(
            if no_death_signal {
                NO_DEATH_SIGNAL
            } else {
                "MULTIPROC_OUTLIVE_UNUSED"
            },
            "1",
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let stdout = parent.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut lines = Vec::new();
    while lines
        .iter()
        .filter(|l: &&String| l.contains("grandchild of"))
        .count()
        < 3
        || !lines.iter().any(|l| l.ends_with("parent ready"))
    {
        match rx.recv_timeout(secs(60)) {
            Ok(line) => lines.push(line),
            Err(_) => {
                let _ = parent.kill();
                let _ = parent.wait();
                panic!("the parent did not get ready: {lines:?}");
            }
        }
    }
    // The parent, 2 pool workers, the Process, the spawn child and 3 `sleep`s. Polled (bounded):
    // a `sleep` caught in the middle of its exec can have no readable environment for a moment.
    let mut before = live_descendants(&tag);
    let seen = Instant::now();
    while before.len() < 8 && seen.elapsed() < secs(10) {
        std::thread::sleep(std::time::Duration::from_millis(10));
        before = live_descendants(&tag);
    }
    assert!(
        before.len() >= 8,
        "{sig:?}: only {before:?} before the kill"
    );

    kill(Pid::from_raw(parent.id() as i32), sig).unwrap();
    let status = parent.wait().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(sig as i32),
        "{sig:?}: the parent did not die of the signal"
    );
    let killed = Instant::now();
    let mut left = before.clone();
    while !left.is_empty() && killed.elapsed() < ALLOWED {
        left.retain(|&(pid, start)| runs(pid, start));
        std::thread::sleep(Duration::from_millis(10));
    }
    let took = killed.elapsed();
    // Reap the orphans that were re-parented to this process (a zombie of ours each).
    for &(pid, _) in &before {
        let _ = nix::sys::wait::waitpid(
            Pid::from_raw(pid),
            Some(nix::sys::wait::WaitPidFlag::WNOHANG),
        );
    }
    let fresh = live_descendants(&tag);
    eprintln!(
        "{sig:?}: {} descendants before, {} left after {took:?}, {} tagged now",
        before.len(),
        left.len(),
        fresh.len()
    );
    for &(pid, start) in left.iter().chain(&fresh) {
        if runs(pid, start) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
    assert!(
        left.is_empty(),
        "{sig:?}: {left:?} still ran {ALLOWED:?} after the parent died"
    );
    assert!(fresh.is_empty(), "{sig:?}: {fresh:?} still run");
}

#[test]
fn sigkill_of_the_parent_leaves_no_process() {
    kill_parent_and_count(Signal::SIGKILL);
}

#[test]
fn sigterm_of_the_parent_leaves_no_process() {
    kill_parent_and_count(Signal::SIGTERM);
}

#[test]
fn sigint_of_the_parent_leaves_no_process() {
    kill_parent_and_count(Signal::SIGINT);
}

/// The second line: with the parent-death signal cleared in every task (as a change of
/// credentials would), the parent's watch pipes closing still ends everything.
#[test]
fn sigkill_of_the_parent_ends_children_that_cleared_their_death_signal() {
    kill_parent_and_count_with(Signal::SIGKILL, true);
}

/// The parent-death signal also comes when only the thread that forked a child ends: the child
/// must ignore it while its parent lives.
#[test]
fn a_child_outlives_the_thread_that_started_it() {
    let (go, done, armed) = (
        Event::new().unwrap(),
        Event::new().unwrap(),
        Event::new().unwrap(),
    );
    let (wait, tell, running) = (go.clone(), done.clone(), armed.clone());
    let (tid, p) = std::thread::spawn(move || {
        let p = Process::new(move || {
            running.set(); // the closure runs once the parent-death signal is armed
            if wait.wait_timeout(secs(30)) {
                tell.set();
            }
        });
        p.start().unwrap();
        assert!(armed.wait_timeout(secs(30)));
        (nix::unistd::gettid().as_raw(), p)
    })
    .join()
    .unwrap();
    // The thread is gone from /proc only after the kernel re-parented its children (and sent
    // them the parent-death signal): the child has the signal pending by then.
    let deadline = Instant::now() + secs(30);
    while std::path::Path::new(&format!("/proc/self/task/{tid}")).exists() {
        assert!(Instant::now() < deadline, "thread {tid} never went away");
        std::thread::sleep(Duration::from_millis(1));
    }
    go.set();
    assert!(
        done.wait_timeout(secs(30)),
        "the child died with its thread"
    );
    assert!(p.join_timeout(secs(30)).unwrap());
    assert_eq!(p.exitcode(), Some(0));
}

/// The heavy version (`cargo test --release --test outlive -- --ignored`): 20 rounds of each
/// signal.
#[test]
#[ignore]
fn twenty_rounds_of_each_signal_leave_no_process() {
    for round in 0..20 {
        for sig in [Signal::SIGKILL, Signal::SIGTERM, Signal::SIGINT] {
            eprintln!("round {round}");
            kill_parent_and_count(sig);
        }
    }
}

//! `Process` and `spawn`: exit codes, timeouts, misuse, typed results, no zombies.

mod common;

use common::{is_our_child, ms, secs};
use multiproc::{Error, Event, Process, Queue, spawn};
use serde::{Deserialize, Serialize};

#[test]
fn exit_codes_follow_python() {
    let ok = Process::new(|| {});
    let panics = Process::new(|| panic!("boom"));
    let exits = Process::new(|| std::process::exit(3));
    for p in [&ok, &panics, &exits] {
        p.start().unwrap();
    }
    for p in [&ok, &panics, &exits] {
        assert!(p.join_timeout(secs(30)).unwrap());
    }
    assert_eq!(ok.exitcode(), Some(0));
    assert_eq!(panics.exitcode(), Some(1));
    assert_eq!(exits.exitcode(), Some(3));
}

#[test]
fn killed_and_terminated_give_minus_signal() {
    let sleepy = || std::thread::sleep(std::time::Duration::from_secs(60));
    let killed = Process::new(sleepy);
    let termed = Process::new(sleepy);
    killed.start().unwrap();
    termed.start().unwrap();
    assert!(killed.is_alive() && termed.is_alive());
    assert_eq!(killed.exitcode(), None);
    killed.kill().unwrap();
    termed.terminate().unwrap();
    assert!(killed.join_timeout(secs(30)).unwrap());
    assert!(termed.join_timeout(secs(30)).unwrap());
    assert_eq!(killed.exitcode(), Some(-9));
    assert_eq!(termed.exitcode(), Some(-15));
    assert!(!killed.is_alive());
    // Signalling an ended process is a no-op.
    killed.kill().unwrap();
}

#[test]
fn join_timeout_returns_false_while_running() {
    let p = Process::new(|| std::thread::sleep(std::time::Duration::from_secs(60)));
    p.start().unwrap();
    let t = std::time::Instant::now();
    assert!(!p.join_timeout(ms(100)).unwrap());
    assert!(t.elapsed() >= ms(100));
    assert_eq!(p.exitcode(), None);
    p.kill().unwrap();
    p.join().unwrap();
    assert_eq!(p.exitcode(), Some(-9));
    // Joining again returns at once.
    assert!(p.join_timeout(ms(0)).unwrap());
}

#[test]
fn misuse_is_an_error_not_a_panic() {
    let p = Process::new(|| {});
    assert!(matches!(p.join(), Err(Error::InvalidState(_))));
    assert!(matches!(
        p.join_timeout(ms(10)),
        Err(Error::InvalidState(_))
    ));
    assert!(matches!(p.terminate(), Err(Error::InvalidState(_))));
    assert!(matches!(p.kill(), Err(Error::InvalidState(_))));
    assert_eq!(p.pid(), None);
    assert!(!p.is_alive());
    p.start().unwrap();
    let err = p.start().unwrap_err();
    assert!(matches!(err, Error::InvalidState(_)));
    assert!(err.to_string().contains("already started"), "{err}");
    p.join().unwrap();
    assert_eq!(p.exitcode(), Some(0));
}

#[test]
fn closure_captures_and_name_becomes_comm() {
    let q: Queue<(String, u64)> = Queue::new().unwrap();
    let data: Vec<u64> = (1..=100).collect();
    let q2 = q.clone();
    let p = Process::new(move || {
        let comm = std::fs::read_to_string("/proc/self/comm").unwrap();
        q2.put(&(comm.trim().to_string(), data.iter().sum()))
            .unwrap();
    })
    .name("square-worker");
    assert_eq!(p.get_name(), "square-worker");
    p.start().unwrap();
    let (comm, sum) = q.get_timeout(secs(30)).unwrap();
    assert_eq!(comm, "square-worker");
    assert_eq!(sum, 5050);
    p.join().unwrap();
}

#[test]
fn dropping_a_running_daemon_process_kills_and_reaps_it() {
    let p = Process::new(|| std::thread::sleep(std::time::Duration::from_secs(60))).daemon(true);
    p.start().unwrap();
    let pid = p.pid().unwrap();
    assert!(is_our_child(pid));
    drop(p);
    assert!(
        !is_our_child(pid),
        "child {pid} left behind (zombie or running)"
    );

    let done = Process::new(|| {});
    done.start().unwrap();
    let pid = done.pid().unwrap();
    assert!(done.join_timeout(secs(30)).unwrap());
    drop(done);
    assert!(!is_our_child(pid), "ended child {pid} left as a zombie");
}

/// Python's rule (issue 11): dropping a started non-daemon `Process` detaches its child, which
/// runs on and is reaped once it ends (here by `active_children`).
#[test]
fn dropping_a_running_non_daemon_process_detaches_it() {
    let go = Event::new().unwrap();
    let ran = Event::new().unwrap();
    let (wait, done) = (go.clone(), ran.clone());
    let p = Process::new(move || {
        if wait.wait_timeout(secs(30)) {
            done.set();
        }
    });
    assert!(!p.is_daemon());
    p.start().unwrap();
    let pid = p.pid().unwrap();
    drop(p);
    assert!(
        is_our_child(pid),
        "the dropped child {pid} was reaped early"
    );
    assert!(multiproc::active_children().contains(&pid));
    go.set();
    assert!(
        ran.wait_timeout(secs(30)),
        "the detached child did not run on"
    );
    let deadline = std::time::Instant::now() + secs(30);
    while is_our_child(pid) && std::time::Instant::now() < deadline {
        assert!(!multiproc::active_children().contains(&pid) || is_our_child(pid));
        std::thread::sleep(ms(5));
    }
    assert!(
        !is_our_child(pid),
        "the detached child {pid} was never reaped"
    );
}

/// A long program that drops thousands of finished processes keeps no zombie: each start reaps
/// every detached child that has ended by then (no `active_children` call needed).
#[test]
fn thousands_of_dropped_processes_do_not_accumulate_zombies() {
    let mut pids = Vec::new();
    for _ in 0..1000 {
        let p = Process::new(|| {});
        p.start().unwrap();
        pids.push(p.pid().unwrap());
    }
    let unreaped = pids.iter().filter(|&&pid| is_our_child(pid)).count();
    // Wait (bounded) until every one of them has ended: each is a zombie or already reaped.
    let deadline = std::time::Instant::now() + secs(60);
    while pids.iter().any(|&pid| running(pid)) {
        assert!(std::time::Instant::now() < deadline, "a child never ended");
        std::thread::sleep(ms(5));
    }
    // One more start reaps them all.
    let last = Process::new(|| {});
    last.start().unwrap();
    let zombies = pids.iter().filter(|&&pid| is_our_child(pid)).count();
    eprintln!(
        "1000 dropped processes: {unreaped} unreaped right after the last start, \
         {zombies} after one more start"
    );
    assert_eq!(zombies, 0, "ended detached children left as zombies");
    assert!(last.join_timeout(secs(30)).unwrap());
}

/// Whether our child `pid` still runs (not a zombie, not reaped).
fn running(pid: i32) -> bool {
    is_our_child(pid) && alive(pid)
}

#[test]
fn current_process_names_the_child_and_daemon_flag() {
    let me = multiproc::current_process();
    assert_eq!(me.name(), "MainProcess");
    assert_eq!(me.pid(), std::process::id() as i32);
    let mut h = spawn(|| {
        let me = multiproc::current_process();
        (me.name().to_string(), me.pid(), std::process::id() as i32)
    })
    .unwrap();
    let (name, pid, real) = h.join_timeout(secs(30)).unwrap();
    assert!(name.starts_with("Process-"), "{name}");
    assert_eq!(pid, real);

    let q: Queue<(String, bool)> = Queue::new().unwrap();
    let tx = q.clone();
    let p = Process::new(move || {
        let me = multiproc::current_process();
        tx.put(&(me.name().to_string(), me.daemon())).unwrap();
    })
    .name("named")
    .daemon(true);
    p.start().unwrap();
    assert_eq!(
        q.get_timeout(secs(30)).unwrap(),
        ("named".to_string(), true)
    );
    assert!(p.join_timeout(secs(30)).unwrap());
}

#[test]
fn terminate_and_kill_reach_what_the_child_started() {
    for terminate in [true, false] {
        let q: Queue<u32> = Queue::new().unwrap();
        let tx = q.clone();
        let p = Process::new(move || {
            let mut child = std::process::Command::new("sleep")
                .arg("30")
                .spawn()
                .unwrap();
            tx.put(&child.id()).unwrap();
            let _ = child.wait();
        });
        p.start().unwrap();
        let grandchild = q.get_timeout(secs(30)).unwrap() as i32;
        if terminate {
            p.terminate().unwrap();
        } else {
            p.kill().unwrap();
        }
        assert!(p.join_timeout(secs(30)).unwrap());
        // The grandchild, orphaned, was adopted by init (or a subreaper) and reaped there.
        let deadline = std::time::Instant::now() + secs(30);
        while alive(grandchild) && std::time::Instant::now() < deadline {
            std::thread::sleep(ms(5));
        }
        assert!(
            !alive(grandchild),
            "grandchild {grandchild} outlived its parent"
        );
    }
}

/// Whether `pid` runs (a zombie does not).
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            let state = s
                .rfind(')')
                .and_then(|i| s[i + 1..].split_whitespace().next());
            !matches!(state, Some("Z" | "X"))
        })
        .unwrap_or(false)
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Stats {
    name: String,
    mean: f64,
    values: Vec<u32>,
}

#[test]
fn spawn_returns_a_struct() {
    let values = vec![1u32, 2, 3, 6];
    let h = spawn(move || Stats {
        name: "demo".into(),
        mean: values.iter().sum::<u32>() as f64 / values.len() as f64,
        values,
    })
    .unwrap();
    let pid = h.pid();
    let stats = h.join().unwrap();
    assert_eq!(
        stats,
        Stats {
            name: "demo".into(),
            mean: 3.0,
            values: vec![1, 2, 3, 6]
        }
    );
    assert!(!is_our_child(pid));
}

#[test]
fn spawn_reports_the_panic_message_and_location() {
    let h = spawn(|| -> u8 { panic!("bad input {}", 42) }).unwrap();
    let err = h.join().unwrap_err();
    let panic = err.panic().expect("TaskPanicked");
    assert_eq!(panic.message, "bad input 42");
    let loc = panic.location.as_deref().unwrap();
    assert!(loc.starts_with("tests/process.rs:"), "{loc}");
    assert!(err.to_string().contains("bad input 42"));
}

#[test]
fn a_panic_after_the_task_replaced_the_hook_is_not_reported_as_an_older_one() {
    let h = spawn(|| -> u8 {
        // A panic caught inside the task goes through multiproc's hook ...
        assert!(std::panic::catch_unwind(|| panic!("first")).is_err());
        // ... which the task then replaces, so the next panic is not recorded.
        std::panic::set_hook(Box::new(|_| {}));
        panic!("second {}", 2)
    })
    .unwrap();
    let panic = h
        .join()
        .unwrap_err()
        .panic()
        .cloned()
        .expect("TaskPanicked");
    assert_eq!(panic.message, "second 2");
    // Not the first panic's location either.
    assert_eq!(panic.location, None);
}

#[test]
fn spawn_reports_signal_and_exit_code() {
    let h = spawn(|| -> u8 {
        nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL).unwrap();
        0
    })
    .unwrap();
    match h.join() {
        Err(Error::WorkerDied {
            signal: Some(9), ..
        }) => {}
        other => panic!("expected WorkerDied by signal 9, got {other:?}"),
    }
    let h = spawn(|| -> u8 { std::process::exit(4) }).unwrap();
    let err = h.join().unwrap_err();
    assert!(
        matches!(
            err,
            Error::WorkerDied {
                code: Some(4),
                signal: None,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("exited with code 4"), "{err}");
}

#[test]
fn spawn_join_timeout_then_join() {
    let mut h = spawn(|| {
        std::thread::sleep(std::time::Duration::from_millis(300));
        vec![7u8; 200_000]
    })
    .unwrap();
    assert!(h.join_timeout(ms(20)).unwrap_err().is_timeout());
    let v = h.join_timeout(secs(30)).unwrap();
    assert_eq!(v.len(), 200_000);
    assert!(v.iter().all(|&b| b == 7));
}

/// A dropped `JoinHandle` follows the non-daemon rule: the child runs on, and is reaped later.
#[test]
fn spawn_dropped_while_running_is_detached_then_reaped() {
    let go = Event::new().unwrap();
    let wait = go.clone();
    let h = spawn(move || wait.wait_timeout(secs(30))).unwrap();
    let pid = h.pid();
    drop(h);
    assert!(is_our_child(pid));
    go.set();
    let deadline = std::time::Instant::now() + secs(30);
    while is_our_child(pid) && std::time::Instant::now() < deadline {
        multiproc::active_children();
        std::thread::sleep(ms(5));
    }
    assert!(
        !is_our_child(pid),
        "detached spawn child {pid} never reaped"
    );
}

/// Another thread holding Rust's stdout or stderr lock at the moment of a fork must not leave the
/// child waiting forever for a lock whose holder does not exist there (the child flushes both
/// before it exits, and may print). A thread keeps taking the locks, waiting on them whenever a
/// fork flushes, while the test forks; every child must end.
#[test]
fn a_fork_while_another_thread_holds_stdout_does_not_hang_the_child() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let stop = Arc::new(AtomicBool::new(false));
    let hammers: Vec<_> = (0..2)
        .map(|k| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let hold = std::time::Duration::from_micros(500);
                    if k == 0 {
                        let _out = std::io::stdout().lock();
                        std::thread::sleep(hold);
                    } else {
                        let _err = std::io::stderr().lock();
                        std::thread::sleep(hold);
                    }
                }
            })
        })
        .collect();
    let mut hung = 0;
    for _ in 0..100 {
        let p = Process::new(|| {});
        p.start().unwrap();
        if !p.join_timeout(secs(5)).unwrap() {
            hung += 1;
            p.kill().unwrap();
            p.join().unwrap();
            break;
        }
        assert_eq!(p.exitcode(), Some(0));
    }
    stop.store(true, Ordering::Relaxed);
    for h in hammers {
        h.join().unwrap();
    }
    assert_eq!(
        hung, 0,
        "a child hung on a stdio lock inherited from another thread"
    );
}

//! Python's non-daemon rule run as a real program (issue 11 §1): the tutorial loop drops each
//! started `Process` at once; every child's output must be there after the program exits, whether
//! `main` returns, calls `std::process::exit`, or panics. Daemon children are killed instead.
//!
//! The program is this test binary run again with `MULTIPROC_TUTORIAL_MODE` set (the test
//! `tutorial_program` is then the program). Each child prints only once its parent waits for
//! children (a thread of the parent in `do_wait`, read from `/proc`): had the parent not waited
//! at exit, the child would have died with it (parent-death signal) and printed nothing.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::secs;
use multiproc::Process;

const MODE: &str = "MULTIPROC_TUTORIAL_MODE";

/// Whether a thread of process `pid` waits for a child (`wait`, `waitid`).
fn waits_for_a_child(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().any(|t| {
        std::fs::read_to_string(t.path().join("wchan")).is_ok_and(|w| w.trim() == "do_wait")
    })
}

/// The tutorial: four workers started in a loop and dropped; a fifth, a daemon, dropped too.
#[test]
fn tutorial_program() {
    let Ok(mode) = std::env::var(MODE) else {
        return; // not the program: an ordinary test run
    };
    for i in 0..4 {
        let p = Process::new(move || {
            let parent = std::os::unix::process::parent_id();
            let deadline = Instant::now() + Duration::from_secs(30);
            while !waits_for_a_child(parent) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(1));
            }
            println!("worker {i} wrote its output");
        });
        p.start().unwrap(); // `p` is dropped at the end of the iteration
    }
    let daemon = Process::new(|| {
        std::thread::sleep(Duration::from_secs(60));
        println!("the daemon was not killed");
    })
    .daemon(true);
    daemon.start().unwrap();
    std::mem::forget(daemon); // not even dropped: the end of the program kills it
    println!("main is done");
    match mode.as_str() {
        "exit" => std::process::exit(0),
        "panic" => panic!("main panics"),
        _ => {}
    }
}

fn run_program(mode: &str) -> (String, Option<i32>) {
    let exe = std::env::current_exe().unwrap();
    let mut child = Command::new(exe)
        .args([
            "--exact",
            "tutorial_program",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(MODE, mode)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut out = String::new();
    let reader = {
        let mut stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            use std::io::Read;
            let mut s = String::new();
            let _ = stdout.read_to_string(&mut s);
            s
        })
    };
    let deadline = Instant::now() + secs(60);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the program in mode {mode} did not end within 60 s");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    out.push_str(&reader.join().unwrap());
    (out, status.code())
}

#[test]
fn every_child_of_the_tutorial_loop_writes_its_output_whatever_the_end_of_main() {
    for (mode, code) in [("return", 0), ("exit", 0), ("panic", 101)] {
        let (out, status) = run_program(mode);
        assert_eq!(status, Some(code), "mode {mode}: {out}");
        assert!(out.contains("main is done"), "mode {mode}: {out}");
        for i in 0..4 {
            assert!(
                out.contains(&format!("worker {i} wrote its output")),
                "mode {mode}: worker {i} missing in:\n{out}"
            );
        }
        assert!(!out.contains("the daemon was not killed"), "mode {mode}");
    }
}

//! `PoolBuilder::progress_bar(true)` (feature `progress`): on a terminal the parent draws
//! done/total, rate and ETA on stderr; on a pipe nothing is drawn. The map runs in a child copy
//! of this test binary (the ignored test `map_with_a_bar`), its stderr a pseudo-terminal made by
//! `script` (util-linux), or a pipe.

use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use multiproc::Pool;

const INPUTS: u64 = 40;

fn square(x: u64) -> u64 {
    x * x
}

#[test]
#[ignore = "the child that the two tests below run, on a terminal and on a pipe"]
fn map_with_a_bar() {
    let pool = Pool::builder()
        .processes(2)
        .chunksize(1)
        .progress_bar(true)
        .build()
        .unwrap();
    let out = pool.map(square, 0..INPUTS).unwrap();
    assert_eq!(out, (0..INPUTS).map(square).collect::<Vec<_>>());
    println!("map done");
}

/// The child's command line: this binary running only `map_with_a_bar`.
fn child_args() -> Vec<String> {
    let exe = std::env::current_exe().unwrap();
    vec![
        exe.to_string_lossy().into_owned(),
        "--ignored".into(),
        "--exact".into(),
        "map_with_a_bar".into(),
        "--nocapture".into(),
        "--test-threads=1".into(),
    ]
}

/// Runs `cmd` with its output captured; panics if it takes more than a minute.
fn run(mut cmd: Command) -> Output {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            panic!("{cmd:?} took more than a minute");
        }
    }
}

#[test]
fn on_a_terminal_the_bar_shows_done_total_rate_and_eta() {
    if Command::new("script").arg("--version").output().is_err() {
        println!("skipped: no `script` command to make a terminal");
        return;
    }
    let mut cmd = Command::new("script");
    cmd.args(["-qec", &child_args().join(" "), "/dev/null"]);
    let out = run(cmd);
    let screen = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{screen}");
    assert!(screen.contains("map done"), "{screen}");
    // The last drawing: `[bar] 40/40 [00:00:00<00:00:00, 1234.5678/s]`.
    let last = screen
        .rsplit('\r')
        .find(|s| s.contains(&format!("{INPUTS}/{INPUTS} [")))
        .unwrap_or_else(|| panic!("no finished bar in {screen:?}"));
    let stats = &last[last.find(" [").unwrap()..];
    assert!(stats.contains('<'), "elapsed<ETA: {stats:?}");
    assert!(stats.contains("/s]"), "rate: {stats:?}");
}

#[test]
fn on_a_pipe_nothing_is_drawn() {
    let args = child_args();
    let mut cmd = Command::new(&args[0]);
    cmd.args(&args[1..]);
    let out = run(cmd);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("map done"), "the map ran: {stdout}");
    assert!(!stderr.contains(&format!("/{INPUTS}")), "{stderr:?}");
    assert!(!stdout.contains(&format!("/{INPUTS}")), "{stdout:?}");
}

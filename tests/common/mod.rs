//! Helpers shared by the integration tests.
#![allow(dead_code, unused_macros)]

/// Runs a test under both start methods: `name::fork` and `name::forkserver` (use the module
/// with `#[macro_use] mod common;`).
macro_rules! both_methods {
    ($name:ident) => {
        mod $name {
            #[test]
            fn fork() {
                super::$name(multiproc::StartMethod::Fork)
            }

            #[test]
            fn forkserver() {
                super::$name(multiproc::StartMethod::ForkServer)
            }
        }
    };
}

use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

static FORK_LOCK: Mutex<()> = Mutex::new(());

/// Serializes tests of one binary that count or reap children process-wide (hold it from the
/// first fork until every child is reaped).
pub(crate) fn fork_lock() -> MutexGuard<'static, ()> {
    FORK_LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// `n` seconds.
/// A `kB` field of this process's `/proc/self/status` (`"VmRSS:"`, `"RssAnon:"`).
pub(crate) fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

pub(crate) fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// `n` milliseconds.
pub(crate) fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Whether `pid` is still a child of this process (running or zombie): a reaped child is gone.
pub(crate) fn is_our_child(pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
        return false;
    };
    let ppid: i32 = rest
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    ppid == std::process::id() as i32
}

/// A small deterministic generator (xorshift64*), so that tests need no `rand`.
#[derive(Clone)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub(crate) fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
    pub(crate) fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }
}

/// Prints where `pid` (and this process) are blocked, for a test that is about to fail on a
/// hang: the kernel wait channel and, if gdb is installed, the user-space stack.
pub(crate) fn dump_stacks(pid: i32) {
    for p in [pid, std::process::id() as i32] {
        let wchan = std::fs::read_to_string(format!("/proc/{p}/wchan")).unwrap_or_default();
        eprintln!("--- process {p}: wchan {wchan}");
        if let Ok(out) = std::process::Command::new("gdb")
            .args([
                "-p",
                &p.to_string(),
                "-batch",
                "-ex",
                "thread apply all bt 15",
            ])
            .output()
        {
            eprintln!("{}", String::from_utf8_lossy(&out.stdout));
        }
    }
}

/// Joins `p` without a bound (so that, for a queue's disconnection check, this process counts as
/// joining it), while a watchdog thread SIGKILLs `p` if it has not ended within `limit`. Whether
/// `p` ended on its own.
pub(crate) fn join_with_watchdog(p: &multiproc::Process, limit: Duration) -> bool {
    let pid = p.pid().expect("started");
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        let fired = done_rx.recv_timeout(limit).is_err();
        if fired {
            // SAFETY: signalling a child this test started and has not reaped yet.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        fired
    });
    p.join().unwrap();
    let _ = done_tx.send(());
    !watchdog.join().unwrap()
}

/// Aborts the test process if a test outlives `limit`: a hang fails, never blocks CI.
pub(crate) struct Watchdog(std::sync::Arc<std::sync::atomic::AtomicBool>);

impl Watchdog {
    pub(crate) fn new(limit: Duration) -> Watchdog {
        use std::sync::atomic::{AtomicBool, Ordering};
        let done = std::sync::Arc::new(AtomicBool::new(false));
        let d = done.clone();
        std::thread::spawn(move || {
            let until = std::time::Instant::now() + limit;
            while std::time::Instant::now() < until {
                if d.load(Ordering::SeqCst) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            eprintln!("a test ran longer than {limit:?}: aborting");
            std::process::abort();
        });
        Watchdog(done)
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Holds the fork lock (pool tests of one binary run one at a time, so that "no child left" can
/// be checked) and a [`Watchdog`] that aborts the binary if the test outlives `limit`: a hang
/// becomes a failure, never a stuck CI job.
pub(crate) fn bounded_fork_lock(limit: Duration) -> (MutexGuard<'static, ()>, Watchdog) {
    (fork_lock(), Watchdog::new(limit))
}

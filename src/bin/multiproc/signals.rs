//! The runner's signal handling: the first SIGINT/SIGTERM/SIGHUP is noted (the runner's loop
//! stops the run), a second one kills every running job's process group and exits at once.

use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};

use nix::sys::signal::{self, SigHandler, SigSet, Signal};

use crate::job::STOP_FLAG;

/// Signals received by the runner (the count) and the last one.
pub(crate) static SIGNALS: AtomicUsize = AtomicUsize::new(0);
pub(crate) static LAST_SIGNAL: AtomicI32 = AtomicI32::new(0);
/// Process groups of running jobs, by slot, for the second-signal kill.
const MAX_TRACKED: usize = 4096;
pub(crate) static GROUPS: [AtomicI32; MAX_TRACKED] = [const { AtomicI32::new(0) }; MAX_TRACKED];

/// The runner's handler: the first signal is noted (the collect loop acts on it); the second
/// kills every running job's group and exits at once. Async-signal-safe: atomics, `kill`,
/// `_exit`.
extern "C" fn runner_signal(sig: libc::c_int) {
    LAST_SIGNAL.store(sig, Ordering::SeqCst);
    let flag = STOP_FLAG.load(Ordering::SeqCst);
    if !flag.is_null() {
        // SAFETY: STOP_FLAG points into a mapping that is never unmapped (`shared_flag`).
        unsafe { (*flag).store(1, Ordering::SeqCst) };
    }
    if SIGNALS.fetch_add(1, Ordering::SeqCst) >= 1 {
        for g in &GROUPS {
            let pgid = g.load(Ordering::SeqCst);
            if pgid > 0 {
                // SAFETY: kill is async-signal-safe and takes plain integers.
                unsafe { libc::kill(-pgid, libc::SIGKILL) };
            }
        }
        // SAFETY: _exit is async-signal-safe; the joblog is flushed after every line.
        unsafe { libc::_exit(128 + sig) };
    }
}

pub(crate) fn install_signal_handlers() {
    let action = signal::SigAction::new(
        SigHandler::Handler(runner_signal),
        signal::SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for sig in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        // SAFETY: the handler only uses async-signal-safe calls (see `runner_signal`).
        let _ = unsafe { signal::sigaction(sig, &action) };
    }
}

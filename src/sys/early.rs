//! The program's early hook: a function the dynamic loader (or the C runtime, for a static
//! binary) calls before `main`, through the ELF `.init_array` section.
//!
//! It does one thing: in a process started as a pool's fork server (see
//! `pool::start::server`), it runs the server and exits, so the user's `main` (or the test
//! harness) never runs there. In every other process it returns at once after one look at the
//! environment.

/// The hook, placed in `.init_array`. `#[used]` keeps it in the object file; the fork server's
/// starter refers to it (see [`keep`]), so the linker keeps that object file in every program
/// that can start a fork server.
#[used]
// SAFETY: `.init_array` holds pointers to functions the loader calls with (argc, argv, envp)
// before `main`; an `extern "C" fn()` ignores those arguments, which the C calling convention
// allows. The function neither unwinds (it aborts on a panic) nor returns into anything but the
// loader.
#[unsafe(link_section = ".init_array")]
static EARLY_HOOK: extern "C" fn() = early_hook;

extern "C" fn early_hook() {
    crate::pool::start::server::enter_if_asked();
}

/// Makes sure the hook is linked into the program (call it where a fork server is started).
pub(crate) fn keep() {
    std::hint::black_box(&EARLY_HOOK);
}

/// Starts `program` with `fd` (close-on-exec in this process) left open in the new program.
pub(crate) fn spawn_keeping_fd(
    cmd: &mut std::process::Command,
    fd: std::os::fd::RawFd,
) -> std::io::Result<std::process::Child> {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the forked child before `exec` and only calls `fcntl`, which is
    // async-signal-safe and allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn()
}

/// Removes an environment variable while the process has a single thread (before `main`).
///
/// # Safety
///
/// No other thread may read or write the environment at the same time.
pub(crate) unsafe fn remove_env_single_threaded(key: &str) {
    // SAFETY: the caller guarantees no other thread touches the environment.
    unsafe { std::env::remove_var(key) }
}

/// Ignores `SIGPIPE`, as Rust's runtime does before `main` (a write to a closed pipe is then an
/// error, not death). For a process that never runs Rust's `main`.
pub(crate) fn ignore_sigpipe() {
    use nix::sys::signal::{SigHandler, Signal, signal};
    // SAFETY: `SIG_IGN` installs no handler code, so no signal-safety rule can be broken.
    let _ = unsafe { signal(Signal::SIGPIPE, SigHandler::SigIgn) };
}

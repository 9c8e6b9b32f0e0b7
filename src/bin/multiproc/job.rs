//! One job: what the runner sends a worker ([`Job`]), what comes back ([`Report`],
//! [`JobOutcome`]), and the worker side that runs it ([`worker_loop`], [`run_job`]).
//!
//! A job runs without a shell (argv straight to `execvp`, through `std::process::Command`) unless
//! it is a [`Program::Shell`] string, in a process group of its own (so a timeout or a signal
//! ends its grandchildren too), with stdin from a file or `/dev/null` and stdout to a file or
//! captured. Captured streams go to unlinked temporary files, read back once the job has ended
//! (or, when big, handed to the runner as files: [`crate::spill`]), so a job that writes a lot
//! never blocks on a full pipe and never fills the runner's memory.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicPtr, AtomicU8, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use multiproc::Queue;
use nix::sys::signal::{self, SigHandler, SigSet, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use crate::flags::OutputMode;
use crate::joblog::Entry;
use crate::spill::{Captured, Captures};
use crate::streams::{self, PipeInput};

/// How long a job has to end after `SIGTERM` before it gets `SIGKILL` (timeouts and shutdown).
pub(crate) const TERM_GRACE: Duration = Duration::from_secs(2);

/// What a job runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Program {
    /// A program and its arguments, run directly (no shell, no quoting traps).
    Argv(Vec<String>),
    /// A command line for `sh -c`.
    Shell(String),
}

/// One job, as the runner hands it to a worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Job {
    /// The job's number, from 1 in input order (`{#}`, the joblog's Seq).
    pub(crate) seq: u64,
    /// The job slot it runs in, from 1 to `-j` (`{%}`); no two running jobs share one.
    pub(crate) slot: usize,
    /// The inputs of this job, one per input source (for `--results` paths).
    pub(crate) args: Vec<String>,
    /// `--tag`/`--tagstring`: what goes before each line of its output (a TAB is added).
    pub(crate) tag: Option<String>,
    /// `--wd`: the directory it runs in.
    pub(crate) wd: Option<String>,
    /// `--pipe`/`--pipepart`: what it reads on stdin.
    pub(crate) pipe: Option<PipeInput>,
    /// What to run.
    pub(crate) program: Program,
    /// The job as a command line that pastes into a shell and runs it (argv words quoted where
    /// needed, `< IN > OUT` for `--stdin`/`--stdout`), for the joblog and `--dry-run`.
    pub(crate) command_line: String,
    /// A file for the job's stdin (`--stdin`); `/dev/null` when `None`.
    pub(crate) stdin: Option<String>,
    /// A file for the job's stdout (`--stdout`), created or truncated; captured when `None`.
    pub(crate) stdout: Option<String>,
    /// Extra environment variables for this job.
    pub(crate) env: Vec<(String, String)>,
}

/// How a job ended, sent back by the worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct JobOutcome {
    /// The job's [`Job::seq`].
    pub(crate) seq: u64,
    /// When it started, in seconds since the Unix epoch.
    pub(crate) start: f64,
    /// How long it ran, in seconds.
    pub(crate) runtime: f64,
    /// Its exit code, as GNU parallel records it: 0 when killed by a signal, -1 when ended by
    /// `--timeout`; 127 when the program was not found, 126 when it could not be run.
    pub(crate) exit: i32,
    /// The signal that killed it, or 0.
    pub(crate) signal: i32,
    /// Whether `--timeout` ended it.
    pub(crate) timed_out: bool,
    /// Its captured stdout (empty when it went to a file).
    pub(crate) stdout: Captured,
    /// Its captured stderr, plus multiproc's own message when the job could not start.
    pub(crate) stderr: Captured,
    /// How many times it ran (`--retries`).
    pub(crate) attempts: u32,
    /// Whether the worker wrote its joblog line (false for a job ended by a stop of the run:
    /// it did not finish, and `--resume` runs it again).
    pub(crate) logged: bool,
}

impl JobOutcome {
    /// Whether the job succeeded: exit code 0 and no signal.
    pub(crate) fn ok(&self) -> bool {
        self.exit == 0 && self.signal == 0
    }
}

/// A message from a worker to the runner.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) enum Report {
    /// A job's process started, as process group `pgid`, in worker `worker`.
    Started {
        /// The job's [`Job::seq`].
        seq: u64,
        /// The job's process group (its pid).
        pgid: i32,
        /// The worker's pid.
        worker: i32,
    },
    /// A job ended.
    Finished(JobOutcome),
}

/// What every job of a run shares, fixed when the workers are forked.
#[derive(Debug, Clone)]
pub(crate) struct WorkerConfig {
    /// The per-job time limit.
    pub(crate) timeout: Option<Duration>,
    /// Environment variables for every job (the thread caps).
    pub(crate) env: Vec<(String, String)>,
    /// Runs of a failing job in all (`--retries`), at least 1.
    pub(crate) max_attempts: u32,
    /// The joblog, already created (header written) by the runner; each worker appends to it.
    pub(crate) joblog: Option<PathBuf>,
    /// Set (by the runner, in memory shared with the workers) once the run is stopping.
    pub(crate) stop: &'static AtomicU8,
    /// The socket that carries big outputs' files to the runner ([`crate::spill`]).
    pub(crate) spill_fd: RawFd,
    /// How the jobs' output is shown.
    pub(crate) output: OutputMode,
    /// `--nice`: the workers' (and so the jobs') niceness.
    pub(crate) nice: Option<i32>,
    /// `-t`: print each job's command line on stderr as it starts.
    pub(crate) print_jobs: bool,
}

/// A flag in memory shared by the runner and the workers it forks afterwards: the runner sets
/// it when the run stops (from its signal handler too), workers read it.
///
/// # Errors
///
/// When the shared page cannot be mapped.
pub(crate) fn shared_flag() -> std::io::Result<&'static AtomicU8> {
    let len = std::num::NonZeroUsize::new(4096).expect("non-zero");
    // SAFETY: a fresh anonymous shared mapping at an address the kernel picks; it is never
    // unmapped, so the reference below stays valid for the life of the process (and of its
    // forked children, which inherit the mapping).
    let ptr = unsafe {
        nix::sys::mman::mmap_anonymous(
            None,
            len,
            nix::sys::mman::ProtFlags::PROT_READ | nix::sys::mman::ProtFlags::PROT_WRITE,
            nix::sys::mman::MapFlags::MAP_SHARED,
        )
    }?;
    // SAFETY: the mapping is zeroed, page-aligned, and lives forever (above); AtomicU8 has no
    // alignment or validity requirement beyond a byte.
    Ok(unsafe { &*ptr.as_ptr().cast::<AtomicU8>() })
}

/// The stop flag's values from [`WORKER_SIGNALLED`] up: a worker got signal `value - 128` while
/// the run was not stopping (the runner sets 1 when it stops the run itself).
pub(crate) const WORKER_SIGNALLED: u8 = 128;

/// The stop flag, for the runner's signal handler.
pub(crate) static STOP_FLAG: AtomicPtr<AtomicU8> = AtomicPtr::new(std::ptr::null_mut());

/// The runner's pid, for the worker's signal handler.
static RUNNER_PID: AtomicI32 = AtomicI32::new(0);
/// The process group of the job the worker runs now, or 0.
static JOB_PGID: AtomicI32 = AtomicI32::new(0);
/// Set when the worker itself got `SIGINT`/`SIGTERM`/`SIGHUP` (as every process of a SLURM job
/// does at its time limit): the run is stopping even if the runner has not said so yet.
static GOT_SIGNAL: AtomicBool = AtomicBool::new(false);
/// Set from the moment a job has been reaped until its joblog line and report are written: a
/// runner death then lets the worker finish that line before it exits (nothing is run twice).
static FINISHING: AtomicBool = AtomicBool::new(false);
/// Set while the worker starts a job (its group is not known yet).
static SPAWNING: AtomicBool = AtomicBool::new(false);
/// Set by the handler when the runner died while [`FINISHING`].
static RUNNER_GONE: AtomicBool = AtomicBool::new(false);

/// The worker's handler for `SIGTERM` (its parent-death signal), `SIGINT` and `SIGHUP`: while
/// the runner lives it notes the signal and raises the shared stop flag with it (the runner
/// decides what happens to jobs, as if it had been signalled itself). Once the
/// runner is gone: a job that ended (reaped, or a zombie not yet reaped) gets its joblog line
/// written first, then the worker exits; a running job's process group is killed and the worker
/// exits at once; a job being spawned is killed right after the spawn (see `run_job`).
/// Async-signal-safe: atomics, `getppid`, `waitid`, `kill` and `_exit` only.
extern "C" fn worker_signal(sig: libc::c_int) {
    GOT_SIGNAL.store(true, Ordering::SeqCst);
    // The whole run stops, even if the runner has not been signalled yet (SLURM signals every
    // process of the job, in no set order): the signal goes into the shared stop flag, where the
    // runner (and, on a node of a multi-node run, the agent) finds it.
    let flag = STOP_FLAG.load(Ordering::SeqCst);
    if !flag.is_null() {
        // SAFETY: STOP_FLAG points into a mapping that is never unmapped (`shared_flag`),
        // inherited from the runner across the fork; an atomic store is async-signal-safe.
        let _ = unsafe { &*flag }.compare_exchange(
            0,
            WORKER_SIGNALLED.saturating_add(u8::try_from(sig).unwrap_or(0)),
            Ordering::SeqCst,
            Ordering::SeqCst,
        );
    }
    // SAFETY: getppid, kill and _exit are async-signal-safe and take plain integers.
    unsafe {
        if libc::getppid() != RUNNER_PID.load(Ordering::SeqCst) {
            if FINISHING.load(Ordering::SeqCst) {
                // A job just ended (reaped): its joblog line is written first, then the worker
                // exits.
                RUNNER_GONE.store(true, Ordering::SeqCst);
                return;
            }
            let pgid = JOB_PGID.load(Ordering::SeqCst);
            if pgid > 0 && !job_has_exited(pgid) {
                libc::kill(-pgid, libc::SIGKILL);
                libc::_exit(1);
            }
            if pgid > 0 {
                // The job ended on its own before the worker woke up: log it first.
                RUNNER_GONE.store(true, Ordering::SeqCst);
                return;
            }
            if SPAWNING.load(Ordering::SeqCst) {
                // `run_job` checks for the runner right after the spawn and ends the job.
                return;
            }
            libc::_exit(1);
        }
    }
}

/// Whether the job (pid `pid`) has exited and waits to be reaped; does not reap it.
/// Async-signal-safe (`waitid`).
fn job_has_exited(pid: i32) -> bool {
    let mut info = std::mem::MaybeUninit::<libc::siginfo_t>::zeroed();
    // SAFETY: waitid writes into `info`, a zeroed siginfo_t; WNOWAIT leaves the child unreaped.
    let rc = unsafe {
        libc::waitid(
            libc::P_PID,
            pid as libc::id_t,
            info.as_mut_ptr(),
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        )
    };
    // SAFETY: zero-initialised, then possibly filled in by waitid: valid either way; with WNOHANG
    // si_pid stays 0 when no child has exited.
    rc == 0 && unsafe { info.assume_init().si_pid() } != 0
}

/// Sets up a freshly forked worker: dies with the runner (parent-death signal), and handles
/// `SIGINT`/`SIGTERM` as [`worker_signal`] says. Returns false if the runner is already gone.
fn worker_setup(runner: i32) -> bool {
    RUNNER_PID.store(runner, Ordering::SeqCst);
    let action = signal::SigAction::new(
        SigHandler::Handler(worker_signal),
        signal::SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for sig in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        // SAFETY: the handler only uses async-signal-safe calls (see `worker_signal`).
        let _ = unsafe { signal::sigaction(sig, &action) };
    }
    let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGTERM);
    // The runner may have died before the parent-death signal was armed.
    nix::unistd::getppid().as_raw() == runner
}

/// A worker's life: take jobs until a pill (or until the runner is gone), run each (again on
/// failure, up to `--retries`), append its joblog line, report.
pub(crate) fn worker_loop(runner: i32, cfg: &WorkerConfig, jobs: &Queue<Job>, out: &Queue<Report>) {
    if !worker_setup(runner) {
        return;
    }
    if let Some(n) = cfg.nice {
        // SAFETY: setpriority takes plain integers; 0 means this process.
        unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, n) };
    }
    let mut log = cfg
        .joblog
        .as_ref()
        .and_then(|p| OpenOptions::new().append(true).open(p).ok());
    let me = std::process::id() as i32;
    let mut captures = Captures::default();
    let stopping = || {
        cfg.stop.load(Ordering::SeqCst) != 0
            || GOT_SIGNAL.load(Ordering::SeqCst)
            || RUNNER_GONE.load(Ordering::SeqCst)
    };
    for job in jobs.iter() {
        let mut outcome = if stopping() {
            not_started(&job)
        } else {
            let mut attempt = 1;
            loop {
                let mut o = run_job(&job, cfg, &mut captures, |pgid| {
                    let _ = out.put(&Report::Started {
                        seq: job.seq,
                        pgid,
                        worker: me,
                    });
                });
                o.attempts = attempt;
                if o.ok() || attempt >= cfg.max_attempts || stopping() {
                    break o;
                }
                attempt += 1;
            }
        };
        if !outcome.ok() && outcome.attempts > 0 && !outcome.timed_out && !stopping() {
            // Killed by a stop signal: SLURM signals every process of the job at once, and on a
            // loaded node the job may die well before the worker or the runner is signalled.
            // Wait (bounded) for the stop to show, so that a job the stop killed is not logged.
            if killed_by_stop_signal(&outcome) {
                let until = Instant::now() + STOP_SIGNAL_GRACE;
                while !stopping() && Instant::now() < until {
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        }
        // A job that failed while the run stops did not finish: not logged, --resume reruns it.
        let interrupted =
            outcome.attempts == 0 || (!outcome.ok() && !outcome.timed_out && stopping());
        if !interrupted && let Some(file) = log.as_mut() {
            outcome.logged = file
                .write_all(entry(&job, &outcome).to_line().as_bytes())
                .is_ok();
        }
        let sent = out.put(&Report::Finished(outcome));
        FINISHING.store(false, Ordering::SeqCst);
        if sent.is_err()
            || RUNNER_GONE.load(Ordering::SeqCst)
            || nix::unistd::getppid().as_raw() != runner
        {
            return;
        }
    }
}

/// How long a worker waits, after its job was killed by a stop signal, for the stop itself to
/// reach it or the runner (see [`killed_by_stop_signal`]).
const STOP_SIGNAL_GRACE: Duration = Duration::from_secs(2);

/// Whether a job died of a signal that stops a run (`SIGINT`, `SIGTERM`, `SIGHUP`, `SIGKILL`,
/// directly or as a shell's `128 + n` exit): such a job may have been killed by the stop (SLURM's
/// time limit signals every process of the job), not by its own fault. A crash (`SIGSEGV`,
/// `SIGABRT`...) is never the stop and is logged at once.
fn killed_by_stop_signal(o: &JobOutcome) -> bool {
    let sig = if o.signal != 0 {
        o.signal
    } else {
        o.exit - 128
    };
    [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGKILL].contains(&sig)
}

/// The joblog line of a finished job.
fn entry(job: &Job, o: &JobOutcome) -> Entry {
    let start = UNIX_EPOCH + Duration::from_secs_f64(o.start.max(0.0));
    let mut e = Entry::local(
        job.seq,
        start,
        Duration::from_secs_f64(o.runtime.max(0.0)),
        job.command_line.clone(),
    );
    e.receive = o.stdout.len();
    e.send = job.pipe.as_ref().map_or(0, PipeInput::len);
    e.exitval = o.exit;
    e.signal = o.signal;
    e
}

/// The outcome of a job the worker did not start because the run is stopping.
fn not_started(job: &Job) -> JobOutcome {
    JobOutcome {
        seq: job.seq,
        start: unix_now(),
        runtime: 0.0,
        exit: -1,
        signal: 0,
        timed_out: false,
        stdout: Captured::default(),
        stderr: Captured::default(),
        attempts: 0,
        logged: false,
    }
}

/// Seconds since the Unix epoch.
pub(crate) fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// A job that could not start: GNU parallel's codes (127 not found, 126 cannot run, 1 other).
fn failed_start(job: &Job, start: f64, what: &str, err: &std::io::Error) -> JobOutcome {
    let exit = match err.kind() {
        std::io::ErrorKind::NotFound if what.starts_with("cannot run") => 127,
        std::io::ErrorKind::PermissionDenied if what.starts_with("cannot run") => 126,
        _ => 1,
    };
    JobOutcome {
        seq: job.seq,
        start,
        runtime: 0.0,
        exit,
        signal: 0,
        timed_out: false,
        stdout: Captured::default(),
        stderr: Captured::bytes(
            format!("multiproc: job {}: {what}: {err}\n", job.seq).into_bytes(),
        ),
        attempts: 1,
        logged: false,
    }
}

/// Runs one job to its end and says how it went. `started` is told the job's process group as
/// soon as it exists.
pub(crate) fn run_job(
    job: &Job,
    cfg: &WorkerConfig,
    captures: &mut Captures,
    started: impl FnOnce(i32),
) -> JobOutcome {
    let start = unix_now();
    let t0 = Instant::now();
    let mut cmd = match &job.program {
        Program::Argv(words) => {
            let mut c = Command::new(&words[0]);
            c.args(&words[1..]);
            c
        }
        Program::Shell(line) => {
            let mut c = Command::new("/bin/sh");
            c.arg("-c").arg(line);
            c
        }
    };
    cmd.process_group(0);
    cmd.envs(cfg.env.iter().map(|(k, v)| (k, v)));
    cmd.envs(job.env.iter().map(|(k, v)| (k, v)));
    if let Some(dir) = &job.wd {
        cmd.current_dir(dir);
    }
    if cfg.print_jobs {
        // One write(2) per line, so that workers' lines do not mix.
        let _ = std::io::stderr().write_all(format!("{}\n", job.command_line).as_bytes());
    }
    let mut wired = match streams::wire(&mut cmd, job, cfg.output, captures) {
        Ok(w) => w,
        Err((what, e)) => return failed_start(job, start, &what, &e),
    };
    // A retry starts a new job: the previous attempt's line is not pending any more.
    FINISHING.store(false, Ordering::SeqCst);
    // While the job starts the handler cannot know its group: it leaves a runner death to the
    // check below (without it, a job started as the runner dies would run on, unlogged).
    SPAWNING.store(true, Ordering::SeqCst);
    let spawned = cmd.spawn();
    if let Ok(child) = &spawned {
        JOB_PGID.store(child.id() as i32, Ordering::SeqCst);
    }
    SPAWNING.store(false, Ordering::SeqCst);
    let runner = RUNNER_PID.load(Ordering::SeqCst);
    if runner != 0 && nix::unistd::getppid().as_raw() != runner {
        if let Ok(child) = &spawned {
            let _ = signal::killpg(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
        }
        // SAFETY: _exit ends the worker at once, as the signal handler would have.
        unsafe { libc::_exit(1) };
    }
    let mut child = match spawned {
        Ok(mut c) => {
            wired.started(job, c.stdin.take(), c.stdout.take(), c.stderr.take());
            c
        }
        Err(e) => {
            let what = match &job.program {
                Program::Argv(words) => format!("cannot run {}", words[0]),
                Program::Shell(_) => "cannot run /bin/sh".to_string(),
            };
            return failed_start(job, start, &what, &e);
        }
    };
    drop(cmd); // closes the parent's copies of the child's stream ends
    let pgid = child.id() as i32;
    started(pgid);
    let (status, timed_out) = wait_with_timeout(&mut child, pgid, cfg.timeout);
    // Reuse the capture files only if nothing of the job's group is left to write to them.
    let reuse = signal::killpg(Pid::from_raw(pgid), None).is_err();
    let (stdout, stderr) = wired.collect(captures, cfg.spill_fd, job.seq, reuse);
    FINISHING.store(true, Ordering::SeqCst);
    JOB_PGID.store(0, Ordering::SeqCst);
    let runtime = t0.elapsed().as_secs_f64();
    let (exit, signal) = match status {
        Some(s) if timed_out => (-1, s.signal().unwrap_or(0)),
        Some(s) => (s.code().unwrap_or(0), s.signal().unwrap_or(0)),
        None => (-1, 0),
    };
    JobOutcome {
        seq: job.seq,
        start,
        runtime,
        exit,
        signal,
        timed_out,
        stdout,
        stderr,
        attempts: 1,
        logged: false,
    }
}

/// Waits for the job; past `timeout`, sends its group `SIGTERM`, then `SIGKILL` after
/// [`TERM_GRACE`]. Returns its status (None if waiting failed) and whether it timed out.
fn wait_with_timeout(
    child: &mut Child,
    pgid: i32,
    timeout: Option<Duration>,
) -> (Option<std::process::ExitStatus>, bool) {
    let Some(limit) = timeout else {
        return (child.wait().ok(), false);
    };
    let pidfd = pidfd_open(child.id() as i32);
    let deadline = Instant::now() + limit;
    if wait_until(child, pidfd.as_ref(), deadline) {
        return (child.wait().ok(), false);
    }
    let group = Pid::from_raw(pgid);
    let _ = signal::killpg(group, Signal::SIGTERM);
    if !wait_until(child, pidfd.as_ref(), Instant::now() + TERM_GRACE) {
        let _ = signal::killpg(group, Signal::SIGKILL);
    }
    let status = child.wait().ok();
    // Grandchildren that outlived the job's own process get no second chance either.
    let _ = signal::killpg(group, Signal::SIGKILL);
    (status, true)
}

/// Waits until the child has exited (true) or `deadline` passed (false); does not reap.
fn wait_until(child: &mut Child, pidfd: Option<&OwnedFd>, deadline: Instant) -> bool {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match pidfd {
            Some(fd) => {
                let mut pfd = libc::pollfd {
                    fd: fd.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                let ms = left.as_millis().min(i32::MAX as u128) as i32;
                // SAFETY: `pfd` is a valid pollfd for the duration of the call; nfds is 1.
                let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
                if rc > 0 {
                    return true;
                }
                if rc == 0 && left.is_zero() {
                    return false;
                }
                if rc == 0 {
                    continue;
                }
            }
            None => {
                if let Ok(Some(_)) = child.try_wait() {
                    return true;
                }
                if left.is_zero() {
                    return false;
                }
                std::thread::sleep(left.min(Duration::from_millis(5)));
            }
        }
    }
}

/// A pidfd for `pid` (Linux 5.3+), or None where the kernel has none.
fn pidfd_open(pid: i32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: the syscall returned a fresh descriptor that nothing else owns.
    Some(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

//! The runner: `-j N` worker [`Process`]es fed through a [`Queue`] (the "mmul queue" pattern).
//!
//! The runner forks the workers first, while it is still single-threaded (a streamed input's
//! reader thread starts after, with the first job asked for), then hands out jobs
//! only as slots free up: a job goes on the jobs queue when fewer than `-j` are in flight, so
//! stopping is simply not putting more. Workers report [`Report::Started`] (the job's process
//! group, so the runner can signal it) and [`Report::Finished`]. A worker runs a failing job
//! again itself (`--retries`) and appends the job's joblog line the moment the job ends, before
//! it reports: so a SIGKILL of the runner loses no finished job's line (a worker that learns of
//! the runner's death while it writes the line finishes the line first; the window left is a
//! job that has written its results but not yet exited). For each finished job the runner prints
//! its output block, moves the progress bar, and checks `--halt`.
//!
//! Stopping (a signal, or `--halt now`): the runner sets a flag in memory shared with the
//! workers, then sends `SIGTERM` to the running jobs' process groups, `SIGKILL` after
//! [`TERM_GRACE`]. A job that fails while the run stops did not finish: the worker does not log
//! it, so `--resume` runs it again. A second signal kills the groups at once and exits. Workers
//! die with the runner (a parent-death signal), killing their job's group.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicI32, AtomicU8, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use multiproc::{Error, Process, Queue};
use nix::sys::signal::{self, SigHandler, SigSet, Signal};
use nix::unistd::Pid;

use crate::args::{HaltOn, HaltWhen};
use crate::job::{
    Job, JobOutcome, Report, STOP_FLAG, TERM_GRACE, WorkerConfig, shared_flag, worker_loop,
};
use crate::output::Output;
use crate::spill::{Captured, Held, SpillSocket, Stream};

/// How often the runner looks up from waiting, to notice signals and dead workers.
const TICK: Duration = Duration::from_millis(50);
/// How often the runner looks for new input while jobs run and a slot is free (streamed input).
const INPUT_POLL: Duration = Duration::from_millis(5);

/// Where the jobs come from, in increasing seq order (a seq it never gives was skipped, e.g. by
/// `--resume`).
pub(crate) trait JobSource {
    /// The next job, made to run in `slot` (`{%}`); waits at most `wait` for input that may
    /// still come.
    fn next_job(&mut self, slot: usize, wait: Duration) -> Next;
}

/// What a [`JobSource`] has next.
#[derive(Debug)]
pub(crate) enum Next {
    /// A job.
    Job(Job),
    /// Nothing yet; more input may come.
    NotYet,
    /// No more jobs: the input ended, or failed (with why).
    End(Result<(), String>),
}

/// `--halt` with any percentage already turned into a count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HaltRule {
    /// Now (kill the running jobs) or soon (let them finish).
    pub(crate) when: HaltWhen,
    /// Which finished jobs count.
    pub(crate) on: HaltOn,
    /// After how many (at least 1).
    pub(crate) count: u64,
}

/// What the runner needs to know, beyond the jobs.
#[derive(Debug, Clone)]
pub(crate) struct EngineOpts {
    /// Jobs at once (`-j`), at least 1.
    pub(crate) jobs: usize,
    /// Runs of a failing job in all (`--retries`), at least 1.
    pub(crate) max_attempts: u32,
    /// Per-job time limit.
    pub(crate) timeout: Option<Duration>,
    /// `--halt`.
    pub(crate) halt: Option<HaltRule>,
    /// Environment for every job (thread caps).
    pub(crate) env: Vec<(String, String)>,
    /// The joblog (created, header written), appended to by the workers.
    pub(crate) joblog: Option<PathBuf>,
}

/// How the run went.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Summary {
    /// Jobs that ended.
    pub(crate) done: u64,
    /// Of those, how many failed.
    pub(crate) failed: u64,
    /// Of those, how many succeeded.
    pub(crate) succeeded: u64,
    /// The signal that stopped the run, if one did.
    pub(crate) interrupted: Option<i32>,
    /// Why the input failed part way (no more jobs were started), if it did.
    pub(crate) input_error: Option<String>,
    /// Whether `--halt` stopped the run.
    pub(crate) halted: bool,
}

/// A progress display, told of each job that ends.
pub(crate) trait Progress {
    /// One more job ended.
    fn tick(&mut self);
    /// The number of jobs this run will report, once the input has ended.
    fn total(&mut self, jobs: u64);
    /// Runs `f` (printing) with the display out of the way.
    fn suspend(&mut self, f: &mut dyn FnMut());
    /// The run is over.
    fn finish(&mut self);
}

/// Where finished jobs go: the runner's [`Output`], or a multi-node agent's link back to its
/// runner ([`crate::agent`]).
pub(crate) trait Sink {
    /// Job `seq` was handed out (in increasing seq order).
    fn expect_up_to(&mut self, seq: u64);
    /// A job ended; `stdout` and `stderr` are its streams as the runner holds them (a big one
    /// still in its spill file, see [`crate::spill`]).
    ///
    /// # Errors
    /// When its output cannot be written.
    fn finished(
        &mut self,
        job: &Job,
        outcome: &JobOutcome,
        stdout: Held,
        stderr: Held,
    ) -> std::io::Result<()>;
    /// The run is over: write what is still held.
    ///
    /// # Errors
    /// As [`Sink::finished`].
    fn flush_rest(&mut self) -> std::io::Result<()>;
}

impl Sink for Output {
    fn expect_up_to(&mut self, seq: u64) {
        Output::expect_up_to(self, seq)
    }
    fn finished(
        &mut self,
        job: &Job,
        _: &JobOutcome,
        stdout: Held,
        stderr: Held,
    ) -> std::io::Result<()> {
        Output::finished(self, job, stdout, stderr)
    }
    fn flush_rest(&mut self) -> std::io::Result<()> {
        Output::flush_rest(self)
    }
}

/// No progress display.
#[derive(Debug)]
pub(crate) struct NoProgress;

impl Progress for NoProgress {
    fn tick(&mut self) {}
    fn total(&mut self, _: u64) {}
    fn suspend(&mut self, f: &mut dyn FnMut()) {
        f()
    }
    fn finish(&mut self) {}
}

/// Signals received by the runner (the count) and the last one.
static SIGNALS: AtomicUsize = AtomicUsize::new(0);
static LAST_SIGNAL: AtomicI32 = AtomicI32::new(0);
/// Process groups of running jobs, by slot, for the second-signal kill.
const MAX_TRACKED: usize = 4096;
static GROUPS: [AtomicI32; MAX_TRACKED] = [const { AtomicI32::new(0) }; MAX_TRACKED];

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

fn install_signal_handlers() {
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

/// A job handed out and not yet finished for good.
#[derive(Debug)]
struct InFlight {
    /// The job as sent.
    job: Job,
    /// Its process group, once started.
    pgid: Option<i32>,
    /// The worker running it, once started.
    worker: Option<i32>,
    /// When it was put on the jobs queue.
    sent: Instant,
}

/// Why dispatching stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// Still dispatching.
    No,
    /// `--halt soon`: let running jobs finish.
    Drain,
    /// A signal or `--halt now`: running jobs are being ended; since when.
    Kill(Instant),
}

/// The runner's state between messages.
struct Runner<'a> {
    /// The run's options.
    opts: &'a EngineOpts,
    /// Shared with the workers: set once the run stops.
    stop_flag: &'static AtomicU8,
    /// Prints finished jobs' output.
    output: &'a mut dyn Sink,
    /// The progress bar, or nothing.
    progress: &'a mut dyn Progress,
    /// Jobs for the workers.
    jobs: Queue<Job>,
    /// Where the jobs come from.
    source: &'a mut dyn JobSource,
    /// Whether the source has no more jobs.
    source_done: bool,
    /// Jobs handed out so far.
    handed_out: u64,
    /// Slots (`{%}`) no running job holds.
    free_slots: BTreeSet<usize>,
    /// Jobs handed out and not finished, by seq.
    in_flight: HashMap<u64, InFlight>,
    /// Whether and how the run is stopping.
    stop: Stop,
    /// Whether the stop has escalated to `SIGKILL`.
    killed_hard: bool,
    /// Counts so far.
    summary: Summary,
    /// Jobs at once: `-j`, less any worker that died.
    capacity: usize,
    /// Where big outputs' files come from.
    spill: SpillSocket,
}

/// Runs the jobs of `source` (`expected`: how many, when known) and reports each as it ends.
///
/// The workers are forked before the first job is asked of `source`, so a source may start a
/// thread then.
///
/// # Errors
///
/// When the workers cannot be started, a queue fails, every worker died, or the joblog or
/// `--results` cannot be written.
pub(crate) fn run(
    opts: &EngineOpts,
    source: &mut dyn JobSource,
    expected: Option<usize>,
    output: &mut dyn Sink,
    progress: &mut dyn Progress,
) -> Result<Summary, Box<dyn std::error::Error>> {
    let stop_flag = shared_flag()?;
    STOP_FLAG.store(std::ptr::from_ref(stop_flag).cast_mut(), Ordering::SeqCst);
    install_signal_handlers();
    let n_workers = opts.jobs.min(expected.unwrap_or(usize::MAX)).max(1);
    let jobs: Queue<Job> = Queue::new()?;
    let results: Queue<Report> = Queue::new()?;
    let spill = SpillSocket::new()?;
    let cfg = WorkerConfig {
        timeout: opts.timeout,
        env: opts.env.clone(),
        max_attempts: opts.max_attempts.max(1),
        joblog: opts.joblog.clone(),
        stop: stop_flag,
        spill_fd: spill.send_fd(),
    };
    let runner = std::process::id() as i32;
    let workers: Vec<Process> = (0..n_workers)
        .map(|i| {
            let (jobs, results, cfg) = (jobs.clone(), results.clone(), cfg.clone());
            Process::new(move || worker_loop(runner, &cfg, &jobs, &results))
                .name(format!("multiproc-w{}", i + 1))
                .daemon(true)
        })
        .collect();
    for w in &workers {
        w.start()?;
    }
    let mut r = Runner {
        opts,
        stop_flag,
        output,
        progress,
        jobs,
        source,
        source_done: false,
        handed_out: 0,
        free_slots: (1..=opts.jobs).collect(),
        in_flight: HashMap::new(),
        stop: Stop::No,
        killed_hard: false,
        summary: Summary::default(),
        capacity: n_workers,
        spill,
    };
    let outcome = r.collect(&results, &workers);
    if outcome.is_err() {
        // The runner gives up: no job may outlive it.
        r.stop_flag.store(1, Ordering::SeqCst);
        for f in r.in_flight.values() {
            if let Some(pgid) = f.pgid {
                let _ = signal::killpg(Pid::from_raw(pgid), Signal::SIGKILL);
            }
        }
    }
    // Every worker gets its pill; a worker that does not stop in time is killed (on drop).
    for _ in &workers {
        let _ = r.jobs.put_pill();
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    for w in &workers {
        let left = deadline.saturating_duration_since(Instant::now());
        if !matches!(w.join_timeout(left), Ok(true)) {
            let _ = w.kill();
        }
    }
    r.progress.finish();
    outcome?;
    r.output.flush_rest()?;
    Ok(r.summary)
}

impl Runner<'_> {
    /// Hands out jobs while slots are free (and the run is not stopping). With nothing in
    /// flight, waits up to a tick for input that may still come.
    fn dispatch(&mut self) -> Result<(), Error> {
        while self.stop == Stop::No && !self.source_done && self.in_flight.len() < self.capacity {
            let slot = *self.free_slots.first().expect("a free slot");
            let wait = if self.in_flight.is_empty() {
                TICK
            } else {
                Duration::ZERO
            };
            let job = match self.source.next_job(slot, wait) {
                Next::Job(job) => job,
                Next::NotYet => break,
                Next::End(end) => {
                    self.source_done = true;
                    self.summary.input_error = end.err();
                    self.progress.total(self.handed_out);
                    break;
                }
            };
            self.free_slots.remove(&slot);
            self.output.expect_up_to(job.seq);
            self.jobs.put(&job)?;
            self.handed_out += 1;
            self.in_flight.insert(
                job.seq,
                InFlight {
                    job,
                    pgid: None,
                    worker: None,
                    sent: Instant::now(),
                },
            );
        }
        Ok(())
    }

    /// The loop: dispatch, wait for a report, act on it, until nothing is in flight.
    fn collect(
        &mut self,
        results: &Queue<Report>,
        workers: &[Process],
    ) -> Result<(), Box<dyn std::error::Error>> {
        loop {
            self.check_signal();
            self.dispatch()?;
            if self.in_flight.is_empty() {
                if self.source_done || self.stop != Stop::No {
                    return Ok(());
                }
                // Waiting for input (`dispatch` waited a tick): look at signals again.
                continue;
            }
            // With a slot free and the input still open, look again soon for new input.
            let wait = if self.in_flight.len() < self.capacity && !self.source_done {
                INPUT_POLL
            } else {
                TICK
            };
            let msg = results.get_timeout(wait);
            match msg {
                Ok(Report::Started { seq, pgid, worker }) => self.started(seq, pgid, worker),
                Ok(Report::Finished(outcome)) => self.finished(outcome)?,
                Err(Error::Timeout { .. }) => self.on_tick(workers)?,
                // The queue's "nobody can put" check may fire while every worker is between a
                // job and its next `get`; whether workers really died is checked here.
                Err(Error::Disconnected(_)) => {
                    std::thread::sleep(TICK / 10);
                    self.on_tick(workers)?;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    fn started(&mut self, seq: u64, pgid: i32, worker: i32) {
        let Some(f) = self.in_flight.get_mut(&seq) else {
            return;
        };
        f.pgid = Some(pgid);
        f.worker = Some(worker);
        if let Some(g) = GROUPS.get(f.job.slot) {
            g.store(pgid, Ordering::SeqCst);
        }
        // A job that starts while the run is being stopped is ended at once.
        if let Stop::Kill(_) = self.stop {
            let sig = if self.killed_hard {
                Signal::SIGKILL
            } else {
                Signal::SIGTERM
            };
            let _ = signal::killpg(Pid::from_raw(pgid), sig);
        }
    }

    fn finished(&mut self, mut outcome: JobOutcome) -> Result<(), Box<dyn std::error::Error>> {
        let Some(f) = self.in_flight.remove(&outcome.seq) else {
            return Ok(());
        };
        if let Some(g) = GROUPS.get(f.job.slot) {
            g.store(0, Ordering::SeqCst);
        }
        self.free_slots.insert(f.job.slot);
        let stopping = matches!(self.stop, Stop::Kill(_));
        if stopping && !outcome.logged && !outcome.ok() {
            // Ended by the stop itself (or never started): not done; --resume runs it again.
            return Ok(());
        }
        self.summary.done += 1;
        if !outcome.ok() {
            self.summary.failed += 1;
        }
        let (output, job) = (&mut *self.output, &f.job);
        let seq = outcome.seq;
        let mut stdout = Some(Held::of(
            std::mem::take(&mut outcome.stdout),
            seq,
            Stream::Stdout,
            &mut self.spill,
        ));
        let mut stderr = Some(Held::of(
            std::mem::take(&mut outcome.stderr),
            seq,
            Stream::Stderr,
            &mut self.spill,
        ));
        let mut res = Ok(());
        self.progress.suspend(&mut || {
            let (out, err) = (stdout.take(), stderr.take());
            if let (Some(out), Some(err)) = (out, err) {
                res = output.finished(job, &outcome, out, err);
            }
        });
        res?;
        self.progress.tick();
        if outcome.ok() {
            self.summary.succeeded += 1;
        }
        if let Some(halt) = self.opts.halt
            && self.stop == Stop::No
            && match halt.on {
                HaltOn::Fail => !outcome.ok() && self.summary.failed >= halt.count,
                HaltOn::Success => outcome.ok() && self.summary.succeeded >= halt.count,
                HaltOn::Done => self.summary.done >= halt.count,
            }
        {
            self.summary.halted = true;
            match halt.when {
                HaltWhen::Soon => self.stop = Stop::Drain,
                HaltWhen::Now => self.begin_kill(),
            }
        }
        Ok(())
    }

    /// Starts ending the running jobs: `SIGTERM` to each started job's process group.
    fn begin_kill(&mut self) {
        self.stop = Stop::Kill(Instant::now());
        self.stop_flag.store(1, Ordering::SeqCst);
        // Jobs still on the queue are not taken back (a second consumer's `try_get` waits while a
        // worker waits in `get`): a worker takes each, and `started` ends it at once.
        for f in self.in_flight.values() {
            if let Some(pgid) = f.pgid {
                let _ = signal::killpg(Pid::from_raw(pgid), Signal::SIGTERM);
            }
        }
    }

    fn check_signal(&mut self) {
        if SIGNALS.load(Ordering::SeqCst) > 0 && self.summary.interrupted.is_none() {
            self.summary.interrupted = Some(LAST_SIGNAL.load(Ordering::SeqCst));
            if !matches!(self.stop, Stop::Kill(_)) {
                self.begin_kill();
            }
        }
    }

    /// Nothing arrived for a tick: escalate a stop that takes too long, and notice dead workers.
    fn on_tick(&mut self, workers: &[Process]) -> Result<(), Box<dyn std::error::Error>> {
        if let Stop::Kill(since) = self.stop {
            if !self.killed_hard && since.elapsed() >= TERM_GRACE {
                self.killed_hard = true;
                for f in self.in_flight.values() {
                    if let Some(pgid) = f.pgid {
                        let _ = signal::killpg(Pid::from_raw(pgid), Signal::SIGKILL);
                    }
                }
            }
            if since.elapsed() >= TERM_GRACE * 2 {
                // Whatever has not reported by now is given up on (not logged).
                self.in_flight.clear();
                return Ok(());
            }
        }
        let dead: Vec<i32> = workers
            .iter()
            .filter(|w| !w.is_alive())
            .filter_map(|w| w.pid())
            .collect();
        if dead.is_empty() {
            return Ok(());
        }
        self.capacity = workers.len() - dead.len();
        // A dead worker's job is lost: fail it (it never finished). A job handed out but not
        // started for a while, with the queue empty, was taken by a dead worker: hand it out again.
        let lost: Vec<u64> = self
            .in_flight
            .iter()
            .filter(|(_, f)| match f.worker {
                Some(w) => dead.contains(&w),
                None => self.jobs.is_empty() && f.sent.elapsed() > Duration::from_secs(1),
            })
            .map(|(&seq, _)| seq)
            .collect();
        for seq in lost {
            let f = &self.in_flight[&seq];
            if f.worker.is_none() {
                self.jobs.put(&f.job)?;
                self.in_flight.get_mut(&seq).expect("in flight").sent = Instant::now();
                continue;
            }
            if let Some(pgid) = f.pgid {
                let _ = signal::killpg(Pid::from_raw(pgid), Signal::SIGKILL);
            }
            let outcome = JobOutcome {
                seq,
                start: crate::job::unix_now(),
                runtime: 0.0,
                exit: -1,
                signal: 9,
                timed_out: false,
                stdout: Captured::default(),
                stderr: Captured::bytes(
                    format!("multiproc: job {seq}: its worker process died\n").into_bytes(),
                ),
                attempts: 1,
                logged: false,
            };
            self.finished(outcome)?;
        }
        if self.capacity == 0 {
            return Err("every worker process died".into());
        }
        Ok(())
    }
}
